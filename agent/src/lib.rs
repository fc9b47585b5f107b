//! Axoneme node agent.

pub mod announce;
pub mod api;
pub mod config;
pub mod datapath;
pub mod encrypt;
pub mod endpoints;
pub mod events;
pub mod explain;
pub mod heap;
pub mod host;
pub mod ipam;
pub mod k8s;
pub mod kvhealth;
pub mod l7proxy;
pub mod lease;
pub mod metrics;
pub mod netdev;
pub mod node;
pub mod node_status;
pub mod observe;
pub mod reconcile;
pub mod routes;
pub mod run;
pub mod services;
pub mod supervisor;
pub mod views;

/// An error with its causes, on one line each.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    out
}
