//! The L7 proxy's TPROXY redirect as one nftables table, written over
//! `NETLINK_NETFILTER` in one batch: the kernel applies the batch as a
//! transaction, so the table is replaced atomically (an earlier copy is
//! deleted in the same batch) and never seen half-built. No `nft` or
//! iptables process.
//!
//! ```text
//! table inet axoneme_proxy {
//!   chain prerouting {
//!     type filter hook prerouting priority dstnat + 1; policy accept;
//!     meta l4proto tcp meta mark & MASK == MARK tproxy to :PORT meta mark set meta mark | 0x1 accept
//!     meta l4proto tcp socket transparent 1 meta mark set meta mark | 0x1
//!   }
//! }
//! ```
//!
//! `netlink-packet-netfilter` has the table, chain, rule, `meta`, `cmp`,
//! `bitwise` and `immediate` messages; the `tproxy` and `socket`
//! expressions are written here from `linux/netfilter/nf_tables.h`.

use std::time::Duration;

use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    Hook, Immediate, InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator,
    Register, RuleAttribute, RuleMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use rtnetlink::packet_core::{
    DefaultNla, Emitable, NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};
use rtnetlink::sys::{constants::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::{Error, Netns};

/// The table's name (family `inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "axoneme_proxy";
/// Its one chain.
pub const CHAIN: &str = "prerouting";

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NF_ACCEPT` as an nftables verdict code.
const NF_ACCEPT: u32 = 1;
/// Just after `NF_IP_PRI_NAT_DST` (-100; IPv6's is the same): a packet
/// another DNAT (kube-proxy's) translated is matched, and its socket looked
/// up, by the addresses it has after it, which the proxy's accepted socket
/// has too.
const PRIORITY_AFTER_DSTNAT: i32 = -99;
// From linux/netfilter/nf_tables.h.
const NFTA_TPROXY_FAMILY: u16 = 1;
const NFTA_TPROXY_REG_PORT: u16 = 3;
const NFTA_SOCKET_KEY: u16 = 1;
const NFTA_SOCKET_DREG: u16 = 2;
const NFT_SOCKET_TRANSPARENT: u32 = 0;
const NFPROTO_UNSPEC: u32 = 0;
const NFT_REG_1: u32 = 1;
/// `NFT_MSG_NEWRULE` in the nftables subsystem.
const NEWRULE_TYPE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 6;
/// `NFT_MSG_NEWTABLE`.
const NEWTABLE_TYPE: u16 = NFNL_SUBSYS_NFTABLES << 8;

/// What the redirect table does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TproxyRedirect {
    /// TCP packets whose `mark & mark_mask == mark` go to the transparent
    /// socket on `port` (any local address).
    pub mark: u32,
    pub mark_mask: u32,
    pub port: u16,
    /// Set (`mark & !mask ^ value`) on what the socket takes, and on the
    /// answers to transparent sockets; the routing rule for local
    /// delivery matches it.
    pub set_mark: u32,
    pub set_mask: u32,
}

fn expr(e: Expressions) -> ListAttribute<ExpressionAttribute> {
    e.into()
}

fn other(name: &str, attributes: Vec<(u16, u32)>) -> ListAttribute<ExpressionAttribute> {
    expr(Expressions::Other {
        expression_type: name.to_string(),
        attributes: attributes
            .into_iter()
            .map(|(kind, v)| DefaultNla::new(kind, v.to_be_bytes().to_vec()))
            .collect(),
    })
}

/// `meta l4proto tcp`
fn tcp_only() -> Vec<ListAttribute<ExpressionAttribute>> {
    vec![
        expr(Expressions::Meta(vec![
            Meta::DestinationRegister(Register::Reg1),
            Meta::Key(MetaKey::L4Proto),
        ])),
        expr(Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(Operator::Equal),
            Cmp::Data(DataAttribute::Value(vec![6])),
        ])),
    ]
}

/// `meta mark set meta mark & ~mask ^ value` (the mark is in host order).
fn set_mark(value: u32, mask: u32) -> Vec<ListAttribute<ExpressionAttribute>> {
    vec![
        expr(Expressions::Meta(vec![
            Meta::DestinationRegister(Register::Reg1),
            Meta::Key(MetaKey::Mark),
        ])),
        expr(Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(4),
            Bitwise::Mask(DataAttribute::Value((!mask).to_ne_bytes().to_vec())),
            Bitwise::Xor(DataAttribute::Value(value.to_ne_bytes().to_vec())),
        ])),
        expr(Expressions::Meta(vec![
            Meta::Key(MetaKey::Mark),
            Meta::SourceRegister(Register::Reg1),
        ])),
    ]
}

impl TproxyRedirect {
    /// Rule 1: marked TCP to the proxy's socket.
    fn tproxy_rule(&self) -> Vec<ListAttribute<ExpressionAttribute>> {
        let mut e = tcp_only();
        e.extend([
            expr(Expressions::Meta(vec![
                Meta::DestinationRegister(Register::Reg1),
                Meta::Key(MetaKey::Mark),
            ])),
            expr(Expressions::Bitwise(vec![
                Bitwise::SourceRegister(Register::Reg1),
                Bitwise::DestinationRegister(Register::Reg1),
                Bitwise::Length(4),
                Bitwise::Mask(DataAttribute::Value(self.mark_mask.to_ne_bytes().to_vec())),
                Bitwise::Xor(DataAttribute::Value(0u32.to_ne_bytes().to_vec())),
            ])),
            expr(Expressions::Cmp(vec![
                Cmp::SourceRegister(Register::Reg1),
                Cmp::Op(Operator::Equal),
                Cmp::Data(DataAttribute::Value(self.mark.to_ne_bytes().to_vec())),
            ])),
            // The port, in network order, for tproxy.
            expr(Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Reg1),
                Immediate::Data(DataAttribute::Value(self.port.to_be_bytes().to_vec())),
            ])),
            other(
                "tproxy",
                vec![
                    (NFTA_TPROXY_FAMILY, NFPROTO_UNSPEC),
                    (NFTA_TPROXY_REG_PORT, NFT_REG_1),
                ],
            ),
        ]);
        e.extend(set_mark(self.set_mark, self.set_mask));
        e.push(expr(Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Verdict),
            Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                Verdict::Other(NF_ACCEPT),
            )])),
        ])));
        e
    }

    /// Rule 2: answers to transparent sockets are marked for local
    /// delivery.
    fn socket_rule(&self) -> Vec<ListAttribute<ExpressionAttribute>> {
        let mut e = tcp_only();
        e.extend([
            other(
                "socket",
                vec![
                    (NFTA_SOCKET_KEY, NFT_SOCKET_TRANSPARENT),
                    (NFTA_SOCKET_DREG, NFT_REG_1),
                ],
            ),
            expr(Expressions::Cmp(vec![
                Cmp::SourceRegister(Register::Reg1),
                Cmp::Op(Operator::Equal),
                Cmp::Data(DataAttribute::Value(vec![1])),
            ])),
        ]);
        e.extend(set_mark(self.set_mark, self.set_mask));
        e
    }

    /// The batch: create the table (so deleting it cannot fail), delete
    /// it, and make it anew with its chain and rules.
    fn batch(&self) -> Vec<NetlinkMessage<NetfilterMessage>> {
        let table = || TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.into())],
        };
        let rule = |expressions| {
            NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(TABLE.into()),
                    RuleAttribute::Chain(CHAIN.into()),
                    RuleAttribute::Expressions(expressions),
                ],
            })
        };
        let create = NLM_F_CREATE;
        let body = [
            (NfTablesMessage::NewTable(table()), create),
            (NfTablesMessage::DeleteTable(table()), 0),
            (NfTablesMessage::NewTable(table()), create),
            (
                NfTablesMessage::NewChain(ChainMessage {
                    attributes: vec![
                        ChainAttribute::Table(TABLE.into()),
                        ChainAttribute::Name(CHAIN.into()),
                        ChainAttribute::Type("filter".into()),
                        ChainAttribute::Hook(vec![
                            Hook::Number(InetHookNumber::PreRouting.into()),
                            Hook::Priority(PRIORITY_AFTER_DSTNAT as u32),
                        ]),
                        ChainAttribute::Policy(NF_ACCEPT),
                    ],
                }),
                create,
            ),
            (rule(self.tproxy_rule()), create | NLM_F_APPEND),
            (rule(self.socket_rule()), create | NLM_F_APPEND),
        ];
        let mut out = vec![control(ControlMessage::BatchBegin)];
        for (m, flags) in body {
            let mut m = NetlinkMessage::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
                m,
            ));
            m.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            out.push(m);
        }
        out.push(control(ControlMessage::BatchEnd));
        out
    }

    /// Replaces the table in `ns` (atomically) with this redirect.
    pub fn apply(&self, ns: &Netns) -> Result<(), Error> {
        let batch = self.batch();
        ns.run(|| transact(batch))?
    }
}

fn control(m: ControlMessage) -> NetlinkMessage<NetfilterMessage> {
    let mut m = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        m,
    ));
    m.header.flags = NLM_F_REQUEST;
    m
}

fn io(op: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        op: op.to_string(),
        source,
    }
}

/// A netfilter socket in the calling thread's namespace.
fn socket() -> Result<Socket, Error> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(io("opening a netfilter socket"))?;
    s.bind_auto().map_err(io("binding a netfilter socket"))?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(io("connecting a netfilter socket"))?;
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(5, 0),
    )
    .map_err(|e| io("setting a receive timeout")(e.into()))?;
    Ok(s)
}

/// Sends the messages with sequence numbers and returns every answer (a
/// dump's parts, acknowledgements, errors) until `done` says so.
fn exchange(
    s: &Socket,
    mut msgs: Vec<NetlinkMessage<NetfilterMessage>>,
    mut done: impl FnMut(&[u8]) -> Result<bool, Error>,
) -> Result<(), Error> {
    let mut buf = Vec::new();
    for (seq, m) in (1..).zip(msgs.iter_mut()) {
        m.header.sequence_number = seq;
        m.finalize();
        let start = buf.len();
        buf.resize(start + m.buffer_len(), 0);
        m.emit(&mut buf[start..]);
    }
    s.send(&buf, 0).map_err(io("sending to netfilter"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (data, _) = s.recv_from_full().map_err(io("receiving from netfilter"))?;
        let mut off = 0;
        while off < data.len() {
            let nl = NetlinkBuffer::new_checked(&data[off..])
                .map_err(|e| Error::Invalid(format!("netfilter answer: {e}")))?;
            let len = (nl.length() as usize).clamp(16, data.len() - off);
            if done(&data[off..off + len])? {
                return Ok(());
            }
            off += len.next_multiple_of(4);
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Invalid("netfilter answers never ended".into()));
        }
    }
}

/// The error of an answer, if it is one (`NLMSG_ERROR` with a code).
fn answer_error(raw: &[u8]) -> Option<(u32, i32)> {
    let msg = NetlinkMessage::<NetfilterMessage>::deserialize(raw).ok()?;
    match msg.payload {
        NetlinkPayload::Error(e) => Some((msg.header.sequence_number, e.raw_code())),
        _ => None,
    }
}

/// Sends one batch and waits for every acknowledgement; the first error
/// fails it (the kernel then applied none of it).
fn transact(batch: Vec<NetlinkMessage<NetfilterMessage>>) -> Result<(), Error> {
    let s = socket()?;
    // Every message between BEGIN and END asks for an acknowledgement.
    let want = batch.len() - 2;
    let kinds: Vec<String> = batch.iter().map(|m| format!("{:?}", kind(m))).collect();
    let (mut acked, mut first_error) = (0usize, None);
    exchange(&s, batch, |nl| {
        if let Some((seq, code)) = answer_error(nl) {
            acked += 1;
            if code != 0 && first_error.is_none() {
                first_error = Some((seq, -code));
            }
        }
        // After an error the kernel applies nothing: no need to wait for
        // the rest.
        Ok(acked >= want || first_error.is_some())
    })?;
    match first_error {
        None => Ok(()),
        Some((seq, errno)) => {
            let what = kinds
                .get(seq as usize - 1)
                .map(String::as_str)
                .unwrap_or("?");
            Err(Error::Io {
                op: format!("nftables table {TABLE}: {what} (message {seq}) refused"),
                source: std::io::Error::from_raw_os_error(errno),
            })
        }
    }
}

fn kind(m: &NetlinkMessage<NetfilterMessage>) -> &'static str {
    match &m.payload {
        NetlinkPayload::InnerMessage(n) => match &n.inner {
            netlink_packet_netfilter::NetfilterMessageInner::NfTables(t) => match t {
                NfTablesMessage::NewTable(_) => "add table",
                NfTablesMessage::DeleteTable(_) => "delete table",
                NfTablesMessage::NewChain(_) => "add chain",
                NfTablesMessage::NewRule(_) => "add rule",
                _ => "nftables message",
            },
            _ => "batch",
        },
        _ => "message",
    }
}

/// Whether the table exists in the calling thread's namespace.
fn table_exists() -> Result<bool, Error> {
    let s = socket()?;
    let mut m = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.into())],
        }),
    ));
    m.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut exists = None;
    exchange(&s, vec![m], |raw| {
        if NetlinkBuffer::new(raw).message_type() == NEWTABLE_TYPE {
            exists = Some(true);
            return Ok(false);
        }
        match answer_error(raw) {
            Some((_, 0)) => Ok(true),
            Some((_, code)) if -code == nix::libc::ENOENT => {
                exists = Some(false);
                Ok(true)
            }
            Some((_, code)) => Err(Error::Io {
                op: format!("looking up table {TABLE}"),
                source: std::io::Error::from_raw_os_error(-code),
            }),
            None => Ok(false),
        }
    })?;
    Ok(exists == Some(true))
}

/// The number of rules in the table in `ns`; `None` when there is no
/// such table.
pub fn rule_count(ns: &Netns) -> Result<Option<usize>, Error> {
    ns.run(|| {
        if !table_exists()? {
            return Ok(None);
        }
        let s = socket()?;
        let mut m = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
            NfTablesMessage::GetRule(RuleMessage {
                attributes: vec![RuleAttribute::Table(TABLE.into())],
            }),
        ));
        m.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut rules = 0;
        exchange(&s, vec![m], |raw| {
            let kind = NetlinkBuffer::new(raw).message_type();
            if kind == NEWRULE_TYPE {
                rules += 1;
                return Ok(false);
            }
            if let Some((_, code)) = answer_error(raw) {
                if code != 0 {
                    return Err(Error::Io {
                        op: format!("listing the rules of {TABLE}"),
                        source: std::io::Error::from_raw_os_error(-code),
                    });
                }
            }
            // NLMSG_DONE ends the dump.
            Ok(kind == 3)
        })?;
        Ok(Some(rules))
    })?
}

/// Deletes the table in `ns`; `false` when there was none.
pub fn remove(ns: &Netns) -> Result<bool, Error> {
    if rule_count(ns)?.is_none() {
        return Ok(false);
    }
    let mut del = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        NfTablesMessage::DeleteTable(TableMessage {
            attributes: vec![TableAttribute::Name(TABLE.into())],
        }),
    ));
    del.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let batch = vec![
        control(ControlMessage::BatchBegin),
        del,
        control(ControlMessage::BatchEnd),
    ];
    ns.run(|| transact(batch))??;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> TproxyRedirect {
        TproxyRedirect {
            mark: 0x200,
            mark_mask: 0xf00,
            port: 15001,
            set_mark: 1,
            set_mask: 1,
        }
    }

    #[test]
    fn the_batch_replaces_the_table_in_one_transaction() {
        let b = redirect().batch();
        let kinds: Vec<_> = b.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                "batch",
                "add table",
                "delete table",
                "add table",
                "add chain",
                "add rule",
                "add rule",
                "batch"
            ]
        );
        for m in &b[1..b.len() - 1] {
            assert_ne!(m.header.flags & NLM_F_ACK, 0);
        }
    }

    #[test]
    fn the_tproxy_rule_loads_the_port_in_network_order() {
        let rule = redirect().tproxy_rule();
        assert!(rule.contains(&expr(Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Reg1),
            Immediate::Data(DataAttribute::Value(vec![0x3a, 0x99])),
        ]))));
    }
}

/// Against the kernel, in a namespace of its own.
#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::testns::TestNs;

    #[test]
    fn the_table_is_replaced_whole_and_removed() {
        let t = TestNs::new();
        assert_eq!(rule_count(&t.ns).unwrap(), None);
        let mut r = TproxyRedirect {
            mark: 0x200,
            mark_mask: 0xf00,
            port: 15001,
            set_mark: 1,
            set_mask: 1,
        };
        r.apply(&t.ns).unwrap();
        assert_eq!(rule_count(&t.ns).unwrap(), Some(2));
        r.port = 15002;
        r.apply(&t.ns).unwrap();
        assert_eq!(rule_count(&t.ns).unwrap(), Some(2), "replaced, not added");
        assert!(remove(&t.ns).unwrap());
        assert!(!remove(&t.ns).unwrap());
        assert_eq!(rule_count(&t.ns).unwrap(), None);
    }
}
