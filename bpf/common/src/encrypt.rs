//! Transparent IPsec's part of the datapath's contract: the marks the
//! programs set for XFRM, and the encryption maps' sizes and values.

/// `skb->mark` of pod packets to encrypt (Cilium's `MARK_MAGIC_ENCRYPT`):
/// the key's SPI goes in bits 12-15, and the node's XFRM policy and
/// state for that SPI match the mark under [`MARK_ENCRYPT_MASK`].
pub const MARK_ENCRYPT: u32 = 0x0e00;
/// Of an encrypt mark: the magic and the SPI.
pub const MARK_ENCRYPT_MASK: u32 = 0xff00;
/// `skb->mark` of ESP packets arriving from another node (Cilium's
/// `MARK_MAGIC_DECRYPT`), with the sending node's index (this node's
/// numbering, [`ENCRYPT_NODES`](crate::map_names::ENCRYPT_NODES)) in bits 16-31:
/// the inbound XFRM state of that node is chosen by it, so each pair of
/// nodes can have keys of its own.
pub const MARK_DECRYPT: u32 = 0x0d00;
/// Of a decrypt mark: the magic and the node index.
pub const MARK_DECRYPT_MASK: u32 = 0xffff_0f00;

/// The SPI of an encrypt mark.
pub const fn encrypt_mark(spi: u8) -> u32 {
    MARK_ENCRYPT | ((spi as u32 & 0xf) << 12)
}

/// The decrypt mark of ESP from the node numbered `index`.
pub const fn decrypt_mark(index: u16) -> u32 {
    MARK_DECRYPT | ((index as u32) << 16)
}

/// Other nodes' pod CIDRs that encryption covers (`ENCRYPT`), and other
/// nodes' underlay addresses (`ENCRYPT_NODES`).
pub const ENCRYPT_MAX: u32 = 16 * 1024;
pub const ENCRYPT_NODES_MAX: u32 = 16 * 1024;

/// What encryption does with pod traffic to a prefix of another node's
/// pods (`ENCRYPT`, keyed like the ipcache).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EncryptValue {
    /// The SPI of the key to encrypt with (1-15); 0: the node encrypts but
    /// no key is shared with it yet, so the packet is dropped
    /// ([`DROP_UNENCRYPTED`](crate::drop_reason::DROP_UNENCRYPTED)).
    pub spi: u8,
    pub pad: u8,
    /// The node whose pods the prefix holds: its index in decrypt marks
    /// (0: none), which a packet decrypted from it carries.
    pub node: u16,
}

impl EncryptValue {
    pub const fn new(spi: u8, node: u16) -> Self {
        EncryptValue { spi, pad: 0, node }
    }
}
