//! Services (issue 18, the kube-proxy replacement): the stored model of a
//! service and its endpoints, the frontends and backends the datapath
//! programs, service documents with field-path validation, and Maglev
//! lookup tables. Pure Rust: no etcd, no kernel, no Kubernetes types.

#![forbid(unsafe_code)]

pub mod claims;
pub mod maglev;
pub mod model;
pub mod parse;
pub mod validate;

pub use model::{
    Backend, BackendState, Conditions, Endpoint, EndpointPort, Frontend, FrontendKind, Protocol,
    ServicePort, ServiceRecord, ServiceSpec, ServiceType, SessionAffinity, TargetPort,
    TrafficPolicy,
};
pub use parse::parse_documents;
pub use validate::FieldError;
