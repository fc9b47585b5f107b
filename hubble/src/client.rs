//! A client of the agent's Hubble API on its UNIX socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::observer::observer_client::ObserverClient;

/// Where an agent serves the Hubble API by default: `hubble.sock` in the
/// directory of its API socket (what the agent and the CLI both assume).
pub fn socket_beside(api_socket: &Path) -> PathBuf {
    api_socket
        .parent()
        .unwrap_or(Path::new("/"))
        .join("hubble.sock")
}

/// Connects to the socket at `path`, giving up after `timeout`.
pub async fn connect(
    path: &Path,
    timeout: Duration,
) -> Result<ObserverClient<Channel>, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://hubble.sock")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?;
    Ok(ObserverClient::new(channel))
}
