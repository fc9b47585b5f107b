//! The numbered codes both sides read the same way: directions, address
//! families, flags, drop reasons (Cilium's numbers), event kinds, trace
//! points, verdicts, match types, counters and TC actions. Each is a
//! module of constants, re-exported at the crate's root.

/// Traffic direction, as seen from the endpoint (Cilium's `TRAFFIC_DIRECTION`).
pub mod direction {
    /// Traffic entering the endpoint.
    pub const INGRESS: u8 = 0;
    /// Traffic leaving the endpoint.
    pub const EGRESS: u8 = 1;
}

/// Address families in [`IpcacheKey`], [`CtKey`] and [`Event`].
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Bits of [`PolicyValue::flags`].
pub mod policy_flags {
    /// The entry denies the traffic (deny wins over allow).
    pub const DENY: u8 = 1;
}

/// Bits of [`EndpointInfo::flags`].
pub mod endpoint_flags {
    /// Traffic into the endpoint that matches no entry is dropped (133).
    pub const INGRESS_ENFORCED: u8 = 1;
    /// Traffic out of the endpoint that matches no entry is dropped (133).
    pub const EGRESS_ENFORCED: u8 = 2;
    /// Policy audit mode: a new flow the policy would drop is reported
    /// ([`super::verdict::AUDIT`]) and let through.
    pub const AUDIT: u8 = 4;
}

/// Bits of [`CtValue::flags`].
pub mod ct_flags {
    /// A packet in the reply direction was seen.
    pub const SEEN_REPLY: u8 = 1;
    /// A FIN or RST was seen: the entry lives [`super::CT_CLOSE_TIMEOUT_S`].
    pub const CLOSING: u8 = 2;
    /// The flow is one of the node's L7 proxy's upstream connections (its
    /// packets in the original direction carry the proxy's mark). Its
    /// replies are addressed to the proxy's transparent socket, which
    /// holds the client's address: they go up the node's stack to the
    /// proxy, never straight into a local pod that has that address.
    pub const PROXY_UPSTREAM: u8 = 4;
    /// The flow's first packet reached this endpoint's ingress through the
    /// node's stack, not by local delivery: something there may have
    /// translated it (kube-proxy's DNAT of a Service address), so its
    /// replies go back up the stack too, where the translation is undone,
    /// never straight into a local client pod. Also set on flows that
    /// arrived from another node (host routing): their replies leave
    /// through the node's stack all the same.
    pub const VIA_STACK: u8 = 8;
    /// The flow was let in only by policy audit mode: once its endpoint
    /// leaves audit mode, its packets are dropped (133) like any denied
    /// flow's, established or not.
    pub const AUDITED: u8 = 16;
}

/// Drop reasons, numerically identical to Cilium's `DROP_*` codes
/// (`bpf/lib/common.h`, `pkg/monitor/api/drop.go`), so tooling that knows
/// Cilium's codes reads ours.
pub mod drop_reason {
    /// A pod sent from an address that is not its own.
    pub const DROP_INVALID_SIP: u8 = 132;
    /// Policy denied the packet (no allow entry matched).
    pub const DROP_POLICY: u8 = 133;
    /// Invalid packet (e.g. an IPv4 header length below 20).
    pub const DROP_INVALID: u8 = 134;
    /// Packet headers are truncated or invalid for connection tracking.
    pub const DROP_CT_INVALID_HDR: u8 = 135;
    /// The interface is not a known endpoint's (fail closed).
    pub const DROP_NO_ENDPOINT: u8 = 152;
    /// A new connection could not be recorded in the CT map (fail closed).
    pub const DROP_CT_CREATE_FAILED: u8 = 155;
    /// Neither IPv4, IPv6 nor ARP.
    pub const DROP_UNKNOWN_L3: u8 = 139;
    /// An IPv6 extension header chain too long or malformed.
    pub const DROP_INVALID_EXTHDR: u8 = 156;
    /// A non-first IP fragment whose first fragment was not seen.
    pub const DROP_FRAG_NOT_FOUND: u8 = 175;
    /// The packet could not be written (handing it to the L7 proxy).
    pub const DROP_WRITE_ERROR: u8 = 141;
    /// A connection to a service without a usable backend (per-packet LB
    /// at a pod's veth).
    pub const DROP_NO_SERVICE: u8 = 158;
    /// An explicit deny policy matched.
    pub const DROP_POLICY_DENY: u8 = 181;
    /// Pod traffic to an encrypting node with no key in common (strict):
    /// Cilium's `DROP_UNENCRYPTED_TRAFFIC`.
    pub const DROP_UNENCRYPTED: u8 = 195;

    /// Every reason the datapath reports (each has a text and a Hubble
    /// `DropReason`: tested where both are known).
    pub const ALL: [u8; 13] = [
        DROP_INVALID_SIP,
        DROP_POLICY,
        DROP_INVALID,
        DROP_CT_INVALID_HDR,
        DROP_UNKNOWN_L3,
        DROP_NO_ENDPOINT,
        DROP_CT_CREATE_FAILED,
        DROP_INVALID_EXTHDR,
        DROP_FRAG_NOT_FOUND,
        DROP_WRITE_ERROR,
        DROP_NO_SERVICE,
        DROP_POLICY_DENY,
        DROP_UNENCRYPTED,
    ];
}

/// [`MetricsKey::kind`] values.
pub mod metrics_kind {
    /// The packet went on (passed, delivered, or handed to the L7 proxy).
    pub const FORWARD: u8 = 0;
    /// The packet was dropped, with a [`super::drop_reason`].
    pub const DROP: u8 = 1;
}

/// [`Event::kind`] values: Cilium's monitor message types.
pub mod event_kind {
    /// A dropped packet, with [`super::drop_reason`] in `reason`.
    pub const DROP: u8 = 1;
    /// A new flow allowed on its way, with a [`super::trace_point`] in
    /// `reason`.
    pub const TRACE: u8 = 4;
    /// A policy decision on a new flow.
    pub const POLICY_VERDICT: u8 = 5;
}

/// Where a [`event_kind::TRACE`] was observed (Cilium's `TRACE_*`
/// observation points, with its numbers).
pub mod trace_point {
    /// Delivered to the endpoint.
    pub const TO_ENDPOINT: u8 = 0;
    /// Sent to the L7 proxy.
    pub const TO_PROXY: u8 = 1;
    /// Left the endpoint (on its way to the stack).
    pub const FROM_ENDPOINT: u8 = 5;

    /// Its name (Cilium's monitor and Hubble's words).
    pub const fn name(p: u8) -> &'static str {
        match p {
            TO_ENDPOINT => "to-endpoint",
            TO_PROXY => "to-proxy",
            FROM_ENDPOINT => "from-endpoint",
            _ => "unknown",
        }
    }
}

/// [`Event::verdict`] values.
pub mod verdict {
    pub const ALLOWED: u8 = 1;
    pub const DENIED: u8 = 2;
    /// Allowed at L3/L4 and sent to the L7 proxy.
    pub const REDIRECTED: u8 = 3;
    /// Denied by policy but let through: the endpoint is in policy audit
    /// mode (Hubble's `AUDIT`).
    pub const AUDIT: u8 = 4;
}

/// [`Event::match_type`] values: which kind of entry decided (Cilium's
/// `POLICY_MATCH_*`).
pub mod match_type {
    /// No entry matched (the direction's default applied).
    pub const NONE: u8 = 0;
    /// Peer identity, any protocol and port.
    pub const L3_ONLY: u8 = 1;
    /// Peer identity and protocol (and port or range).
    pub const L3_L4: u8 = 2;
    /// Any peer, a protocol (and port or range).
    pub const L4_ONLY: u8 = 3;
    /// Any peer, any protocol.
    pub const ALL: u8 = 4;

    /// Its name in flows and `bpf policy get` (Cilium's words).
    pub const fn name(m: u8) -> &'static str {
        match m {
            L3_ONLY => "L3-only",
            L3_L4 => "L3-L4",
            L4_ONLY => "L4-only",
            ALL => "all",
            _ => "none",
        }
    }
}

/// Indices of the per-CPU [`COUNTERS`](counter) array.
pub mod counter {
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 0;
    /// Events not written because the rate limit was exhausted.
    pub const EVENTS_RATE_LIMITED: u32 = 1;
    /// Events not written because the ring buffer was full.
    pub const EVENTS_RINGBUF_FULL: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// TC actions returned by SCHED_CLS programs (`linux/pkt_cls.h`).
pub mod tc_action {
    /// Continue processing the packet.
    pub const TC_ACT_OK: i32 = 0;
    /// Drop the packet.
    pub const TC_ACT_SHOT: i32 = 2;
    /// Redirected (what `bpf_redirect` returns): the L7 proxy gets it.
    pub const TC_ACT_REDIRECT: i32 = 7;
}
