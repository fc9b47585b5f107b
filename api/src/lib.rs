//! The agent's API: JSON over HTTP/1.1 on a UNIX socket (mode 0600, by
//! default `/run/axoneme/<node>/agent.sock`). The CNI plugin and the CLI
//! use it; the types here are the contract.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/cni/add` | [`AddRequest`] | [`AddResponse`] |
//! | `POST /v1/cni/del` | [`DelRequest`] | `{}` (idempotent) |
//! | `POST /v1/cni/check` | [`CheckRequest`] | `{}` |
//! | `GET /v1/status` | | [`Status`] |
//! | `GET /v1/endpoints` | | [`EndpointView`] list |
//! | `POST /v1/endpoints/{name}/config` | [`EndpointConfig`] | `{}` |
//! | `POST /v1/policy/explain` | [`ExplainRequest`] | `axoneme_policy::explain::ExplainReport` |
//! | `GET /v1/bpf/ipcache` | | [`IpcacheEntry`] list |
//! | `GET /v1/bpf/policy/{endpoint}` | | [`PolicyEntry`] list |
//! | `GET /v1/bpf/ct` | | [`CtEntry`] list |
//! | `GET /v1/events` | | the most recent [`EventView`]s, oldest first |
//! | `GET /v1/services` | | [`ServicesView`] |
//! | `GET /v1/encrypt` | | [`EncryptStatus`] |
//!
//! Every error is an [`ApiError`] with a non-2xx status; its `code` is a
//! CNI error code, so the plugin passes it through unchanged.

mod client;
mod encrypt;
pub mod names;
mod services;
mod types;

pub use client::{Client, ClientError};
pub use encrypt::EncryptStatus;
pub use services::{BackendView, FrontendView, ServicesView};
pub use types::*;
