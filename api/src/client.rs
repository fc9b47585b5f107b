//! A small client: one HTTP/1.1 request per connection over the socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use crate::types::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent at {0} did not answer within {1:?}")]
    Timeout(PathBuf, Duration),
    #[error("talking to the agent at {path}: {message}")]
    Http { path: PathBuf, message: String },
    #[error("the agent's answer is not what was expected ({status}): {message}")]
    Decode { status: StatusCode, message: String },
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// A client for one agent socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// `timeout` bounds each whole request (connect, send, answer).
    pub fn new(path: impl AsRef<Path>, timeout: Duration) -> Self {
        Client {
            path: path.as_ref().to_path_buf(),
            timeout,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, self.call_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(self.path.clone(), self.timeout)),
        }
    }

    async fn call_inner<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let http = |e: &dyn std::fmt::Display| ClientError::Http {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        let conn = tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| http(&e))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "axoneme-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| http(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes();
        conn.abort();
        if status.is_success() {
            serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
                status,
                message: e.to_string(),
            })
        } else {
            match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => Err(ClientError::Api(e)),
                Err(_) => Err(ClientError::Decode {
                    status,
                    message: String::from_utf8_lossy(&body).into_owned(),
                }),
            }
        }
    }
}
