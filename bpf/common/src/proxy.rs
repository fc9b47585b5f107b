//! The L7 proxy's part of the datapath's contract: the `skb->mark`
//! values the programs and the node's redirect rules agree on.

/// `skb->mark` of the L7 proxy's upstream packets: their request was
/// judged at L7 already (Cilium uses a magic mark the same way).
pub const MARK_PROXY: u32 = 0x0a00;

/// `skb->mark` of packets the datapath hands to the L7 proxy: the node's
/// TPROXY rule matches it (under [`MARK_MASK`]) and delivers them to the
/// proxy's transparent socket (Cilium's `MARK_MAGIC_TO_PROXY` scheme).
pub const MARK_TO_PROXY: u32 = 0x0200;

/// The bits of `skb->mark` Axoneme uses.
pub const MARK_MASK: u32 = 0x0f00;
