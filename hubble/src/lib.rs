//! Hubble's flow and observer API as Axoneme speaks it: the protobuf types
//! and gRPC service generated from `proto/` (Hubble's package, message and
//! field names and numbers, so Hubble clients work against the agent), the
//! protobuf-JSON mapping Hubble's `-o json` uses, and Hubble's filter
//! semantics ([`filter`]) shared by the agent (which filters) and the CLI
//! (which builds filters from flags).

pub mod client;
pub mod filter;
pub mod selector;

/// Hubble's `flow` package.
#[allow(
    clippy::all,
    clippy::cast_possible_truncation,
    rust_2018_idioms,
    missing_docs
)]
pub mod flow {
    include!(concat!(env!("OUT_DIR"), "/flow.rs"));
    include!(concat!(env!("OUT_DIR"), "/flow.serde.rs"));
}

/// Hubble's `observer` package: the request and response messages and the
/// `Observer` service's client and server.
#[allow(
    clippy::all,
    clippy::cast_possible_truncation,
    rust_2018_idioms,
    missing_docs
)]
pub mod observer {
    include!(concat!(env!("OUT_DIR"), "/observer.rs"));
    include!(concat!(env!("OUT_DIR"), "/observer.serde.rs"));
}

pub use pbjson_types::{BoolValue, Timestamp, UInt32Value};

/// Cilium's monitor message types, which Hubble's `event_type` carries and
/// its `--type` filter names.
pub mod message_type {
    pub const DROP: i32 = 1;
    pub const TRACE: i32 = 4;
    pub const POLICY_VERDICT: i32 = 5;
    pub const ACCESS_LOG: i32 = 129;

    /// The type for a name as `hubble observe --type` and `axoneme monitor
    /// --type` accept it.
    pub fn by_name(name: &str) -> Option<i32> {
        Some(match name {
            "drop" => DROP,
            "trace" => TRACE,
            "policy-verdict" => POLICY_VERDICT,
            "l7" | "http" => ACCESS_LOG,
            _ => return None,
        })
    }

    /// The names [`by_name`] accepts.
    pub const NAMES: &[&str] = &["drop", "trace", "policy-verdict", "l7"];
}

/// A timestamp from Unix milliseconds.
pub fn timestamp_ms(ms: u64) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        // < 1e9 by construction.
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// Unix milliseconds of a timestamp (0 before the epoch).
pub fn timestamp_to_ms(t: &Timestamp) -> u64 {
    let s = u64::try_from(t.seconds).unwrap_or(0);
    let ms = u64::try_from(t.nanos / 1_000_000).unwrap_or(0);
    s.saturating_mul(1000).saturating_add(ms)
}
