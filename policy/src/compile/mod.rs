//! Per-endpoint policy computation: from policies and identities to the
//! policy-map entries the datapath looks up.
//!
//! Keys are Cilium's `{identity, direction, protocol, port}` with port ranges
//! as prefix blocks (`port/prefix`, prefix 0 = any port, 16 = one port), and
//! identity 0 / protocol 0 meaning ANY. A lookup probes, in order:
//! `id/proto/port`, `ANY/proto/port`, `id/proto/ANY`, `ANY/proto/ANY`,
//! `id/ANY/ANY`, `ANY/ANY/ANY` (the port probes longest-prefix first).
//!
//! The first entry found must carry the right verdict for every flow it
//! covers, so the entry set is closed under intersection:
//! - where two allow entries overlap, the overlap gets the union of their L7
//!   rules (an L4-only allow means "any request", absorbing L7 rules);
//! - where a deny entry overlaps an allow entry, the overlap is a deny.
//!   Deny always beats allow.
//!
//! Since an intersection is at least as specific as each side in every
//! dimension, and the probe order never visits a less specific entry before
//! a more specific one that contains the same flow, the first hit is the
//! intersection of every entry containing the flow.

mod compute;
mod keys;
mod peers;

pub use compute::{compute, compute_for_peer, compute_for_peers, EnforcementMode};
pub use keys::{
    port_blocks, Decision, DenyReason, Direction, DirectionPolicy, EndpointPolicy, Key, Verdict,
    ANY_IDENTITY, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};
pub use peers::{
    add_cidr_identities, changed_peers, cidr_identities, cidr_labels, undeclared_named_ports,
};
