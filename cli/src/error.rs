//! Errors of the CLI's commands.

use axoneme_identity::LabelError;
use axoneme_kvstore::KvError;

/// Why a command failed. The binary prints it as `axoneme: error: ...` and
/// exits 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("etcd settings")]
    Config(#[source] KvError),
    #[error("connecting to etcd")]
    Connect(#[source] KvError),
    /// An etcd call failed; `what` says what the command was doing.
    #[error("{what}")]
    Kv {
        what: String,
        #[source]
        source: KvError,
    },
    #[error("invalid label {label:?}")]
    InvalidLabel {
        label: String,
        #[source]
        source: LabelError,
    },
    #[error(transparent)]
    Agent(axoneme_api::ClientError),
    /// The command's `--timeout` passed with no answer.
    #[error("no answer within {0:?} (--timeout) from {1}")]
    Deadline(std::time::Duration, String),
    #[error("invalid label set")]
    InvalidLabelSet(#[source] LabelError),
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// A flag's value that cannot be used, naming the flag and why.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("invalid endpoint {0:?}: want NODE/ENDPOINT")]
    EndpointRef(String),
    #[error("identity {0} not found")]
    IdentityNotFound(u32),
    #[error("policy {0} not found")]
    PolicyNotFound(String),
    #[error("timed out after {0}s waiting for the operator's verdict on {1}")]
    PolicyWait(u64, String),
    /// Invalid service documents, or services that conflict with stored
    /// ones: one `file: namespace/name: path: message` per problem.
    #[error("{}", invalid_services(.0))]
    InvalidServices(Vec<String>),
    #[error("service {0} already exists (change it with `axoneme service update`)")]
    ServiceExists(String),
    #[error("service {0} not found")]
    ServiceNotFound(String),
    #[error(
        "services changed in etcd while this command ran (after revision {0}); nothing was \
         written: run it again"
    )]
    ServicesChanged(i64),
    #[error(
        "{services} services in one command need {operations} operations in one etcd \
         transaction (a record and the index's names per service): at most {max}, etcd's \
         default --max-txn-ops; give fewer services per command",
        max = axoneme_kvstore::MAX_TXN_OPS
    )]
    TooManyServices { services: usize, operations: usize },
    #[error("the stored record of service {id} cannot be read: {error}")]
    BadRecord { id: String, error: String },
    #[error("reading {path}: {error}")]
    ReadFile { path: String, error: std::io::Error },
    #[error("endpoint {node}/{endpoint} not found")]
    EndpointNotFound { node: String, endpoint: String },
    #[error("the operator assigned no identity to {node}/{endpoint}: {error}")]
    Rejected {
        node: String,
        endpoint: String,
        error: String,
    },
    #[error(
        "timed out after {secs}s waiting for the operator to answer {node}/{endpoint} \
         at revision {revision} (is an operator running and leading? see `axoneme status`)"
    )]
    WaitTimeout {
        node: String,
        endpoint: String,
        revision: i64,
        secs: u64,
    },
    #[error(
        "endpoint {node}/{endpoint} changed again (revision {seen}) before the operator \
         answered revision {revision}"
    )]
    Superseded {
        node: String,
        endpoint: String,
        revision: i64,
        seen: i64,
    },
    #[error("endpoint {node}/{endpoint} was deleted before the operator answered")]
    DeletedWhileWaiting { node: String, endpoint: String },
    #[error(transparent)]
    Filter(#[from] axoneme_hubble::filter::FilterError),
    /// The agent's Hubble API refused the request or could not be reached.
    #[error("the Hubble API at {path}: {message}")]
    Hubble {
        path: String,
        message: String,
        /// The request was invalid (else the API was unavailable).
        invalid: bool,
    },
    #[error("encoding output: {0}")]
    Encode(String),
}

/// One problem on one line; several under a line that counts them.
fn invalid_services(problems: &[String]) -> String {
    match problems {
        [one] => format!("{one} (nothing written)"),
        many => format!(
            "{} problems in the service documents, nothing written:\n  {}",
            many.len(),
            many.join("\n  ")
        ),
    }
}

/// Exit codes: what a script can tell apart.
pub mod exit {
    /// Something the command found wrong or refused (not found, a failing
    /// `status`, an invalid policy in `policy validate`).
    pub const FAILED: u8 = 1;
    /// Invalid input: flags (clap's own exit code), labels, names, files.
    pub const INVALID_INPUT: u8 = 2;
    /// etcd or the agent could not be reached or did not answer in time.
    pub const UNAVAILABLE: u8 = 3;
}

impl CliError {
    /// The exit code this error stands for (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        use axoneme_api::ClientError as A;
        match self {
            CliError::Config(_)
            | CliError::InvalidLabel { .. }
            | CliError::InvalidLabelSet(_)
            | CliError::InvalidName { .. }
            | CliError::EndpointRef(_)
            | CliError::Filter(_)
            | CliError::TooManyServices { .. }
            | CliError::InvalidArgument(_)
            | CliError::ReadFile { .. } => exit::INVALID_INPUT,
            CliError::Connect(_) | CliError::Deadline(..) => exit::UNAVAILABLE,
            CliError::Hubble { invalid: true, .. } => exit::INVALID_INPUT,
            CliError::Hubble { .. } => exit::UNAVAILABLE,
            CliError::Kv { source, .. }
                if source.is_retryable() || matches!(source, KvError::Exhausted { .. }) =>
            {
                exit::UNAVAILABLE
            }
            CliError::Agent(A::Connect { .. } | A::Timeout(..) | A::Http { .. }) => {
                exit::UNAVAILABLE
            }
            _ => exit::FAILED,
        }
    }

    pub(crate) fn kv(what: impl Into<String>) -> impl FnOnce(KvError) -> CliError {
        let what = what.into();
        move |source| CliError::Kv { what, source }
    }
}

/// An error and its sources as one line, `a: b: c`, leaving out a source
/// whose text the line already contains (some errors print their source in
/// their own message too).
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_skips_repeated_sources() {
        let e = CliError::Kv {
            what: "listing endpoints".into(),
            source: KvError::Exhausted {
                op: "get_prefix",
                endpoint: "http://127.0.0.1:1".into(),
                elapsed: std::time::Duration::from_secs(2),
                last: Box::new(KvError::Timeout {
                    op: "get_prefix",
                    timeout: std::time::Duration::from_secs(1),
                }),
            },
        };
        let line = error_line(&e);
        assert_eq!(
            line,
            "listing endpoints: etcd unavailable: get_prefix failed on every member for 2.0s; \
             last error from http://127.0.0.1:1: etcd get_prefix timed out after 1s"
        );
        let e = CliError::InvalidLabel {
            label: "k8s:-x".into(),
            source: LabelError::UnknownSource("x".into()),
        };
        assert!(error_line(&e).starts_with("invalid label \"k8s:-x\": unknown label source"));
    }
}
