//! Runs a parsed [`Command`]: VERSION locally, the others against the
//! node's agent over its UNIX socket.

use axoneme_api::{cni_code, AddResponse, Client, ClientError};
use serde_json::Value;

use crate::command::{AgentTarget, Command};
use crate::error::CniError;
use crate::result;

/// Executes `cmd`; `Ok(Some(json))` is what to print on stdout (ADD and
/// VERSION), `Ok(None)` is a silent success (DEL and CHECK).
pub fn run(cmd: Command) -> Result<Option<Value>, CniError> {
    if cmd == Command::Version {
        return Ok(Some(result::version_info()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                cni_code::IO_FAILURE,
                "cannot start the plugin's I/O runtime",
                e.to_string(),
            )
        })?;
    rt.block_on(call(cmd))
}

async fn call(cmd: Command) -> Result<Option<Value>, CniError> {
    match cmd {
        Command::Version => Ok(Some(result::version_info())),
        Command::Add {
            cni_version,
            agent,
            request,
        } => {
            let resp: AddResponse = client(&agent)
                .post("/v1/cni/add", &request)
                .await
                .map_err(|e| client_error(&agent, e))?;
            Ok(Some(result::add_result(
                &cni_version,
                &request.ifname,
                &request.netns,
                &resp,
            )))
        }
        Command::Del { agent, request } => {
            match client(&agent)
                .post::<_, Value>("/v1/cni/del", &request)
                .await
            {
                Ok(_) => Ok(None),
                // Already gone: DEL is idempotent (the agent should answer
                // `{}` itself; this covers an agent that reports it).
                Err(ClientError::Api(e)) if e.code == cni_code::UNKNOWN_CONTAINER => Ok(None),
                // Agent unreachable: code 11, not success. The runtime
                // does not call DEL again after a success, so succeeding
                // here would leak whatever the endpoint holds (its address,
                // its veth, its etcd entry, its identity reference) when
                // the agent is merely restarting. With 11 the runtime
                // retries the DEL (the kubelet keeps retrying the sandbox
                // teardown) until the agent answers. The price is that a
                // node whose agent is gone for good cannot tear pods down
                // until it is back; that is the agent being down, which
                // must be fixed anyway.
                Err(e) => Err(client_error(&agent, e)),
            }
        }
        Command::Check { agent, request } => {
            client(&agent)
                .post::<_, Value>("/v1/cni/check", &request)
                .await
                .map_err(|e| client_error(&agent, e))?;
            Ok(None)
        }
    }
}

fn client(agent: &AgentTarget) -> Client {
    Client::new(&agent.socket, agent.timeout)
}

/// The agent's own errors pass through unchanged (their codes are CNI
/// codes); not reaching it, or it not answering in time, is code 11; an
/// answer the plugin cannot read is code 5.
fn client_error(agent: &AgentTarget, e: ClientError) -> CniError {
    let path = agent.socket.display();
    match e {
        ClientError::Api(e) => e.into(),
        ClientError::Connect { source, .. } => CniError::new(
            cni_code::TRY_AGAIN_LATER,
            format!("cannot reach the Axoneme agent at {path}"),
            format!("{source} (is the agent running on this node?)"),
        ),
        ClientError::Timeout(_, after) => CniError::new(
            cni_code::TRY_AGAIN_LATER,
            format!("the Axoneme agent at {path} did not answer within {after:?}"),
            "",
        ),
        // The connection broke mid-request: most likely the agent
        // restarting, so transient too.
        ClientError::Http { message, .. } => CniError::new(
            cni_code::TRY_AGAIN_LATER,
            format!("talking to the Axoneme agent at {path} failed"),
            message,
        ),
        ClientError::Decode { status, message } => CniError::new(
            cni_code::IO_FAILURE,
            format!(
                "unexpected answer from the Axoneme agent at {path} (HTTP {status}); \
                 are the plugin and the agent the same version?"
            ),
            message,
        ),
    }
}
