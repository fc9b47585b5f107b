//! XFRM states (SAs) and policies over netlink (`NETLINK_XFRM`), in the
//! network namespace of the calling thread: what `ip xfrm state add` and
//! `ip xfrm policy add` do, without the process. A synchronous socket: each
//! request waits for the kernel's acknowledgement, so an error names the
//! request that failed and the kernel's reason.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_xfrm::constants::{
    AF_INET, AF_INET6, IPPROTO_ESP, XFRM_INF, XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL,
    XFRM_POLICY_ALLOW, XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT,
};
use netlink_packet_xfrm::{
    policy::DelGetMessage as PolicyDel, policy::ModifyMessage as PolicyModify,
    state::DelGetMessage as StateDel, state::ModifyMessage as StateModify, Address, AlgAead, Id,
    LifetimeConfig, Mark, Selector, UserPolicyId, UserPolicyInfo, UserSaId, UserSaInfo,
    UserTemplate, XfrmAttrs, XfrmMessage,
};
use netlink_sys::{protocols::NETLINK_XFRM, Socket, SocketAddr};

use crate::keys::Key;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    #[error("opening the XFRM netlink socket")]
    Socket(#[source] io::Error),
    #[error("{what}")]
    Request {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Tunnel or transport mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Transport,
    Tunnel,
}

impl Mode {
    fn code(self) -> u8 {
        match self {
            Mode::Transport => XFRM_MODE_TRANSPORT,
            Mode::Tunnel => XFRM_MODE_TUNNEL,
        }
    }
}

/// A policy's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    In,
    Out,
    Fwd,
}

impl Dir {
    fn from_code(code: u8) -> Option<Self> {
        [Dir::In, Dir::Out, Dir::Fwd]
            .into_iter()
            .find(|d| d.code() == code)
    }

    fn code(self) -> u8 {
        match self {
            Dir::In => XFRM_POLICY_IN,
            Dir::Out => XFRM_POLICY_OUT,
            Dir::Fwd => XFRM_POLICY_FWD,
        }
    }
}

/// A policy's selector: every packet from `src` to `dst`.
fn selector(src: IpNet, dst: IpNet) -> Selector {
    Selector {
        daddr: Address::from_ip(&dst.network()),
        saddr: Address::from_ip(&src.network()),
        family: family(&src.addr()),
        prefixlen_d: dst.prefix_len(),
        prefixlen_s: src.prefix_len(),
        ..Selector::default()
    }
}

/// An ESP security association with an AEAD key.
#[derive(Debug, Clone)]
pub struct StateSpec<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub spi: u32,
    pub reqid: u32,
    pub key: &'a Key,
    pub mode: Mode,
    /// Only packets with this mark (value, mask) use it.
    pub mark: Option<(u32, u32)>,
}

/// A policy: traffic from `src` to `dst` in `dir` goes through ESP
/// between `tmpl_src` and `tmpl_dst`.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub src: IpNet,
    pub dst: IpNet,
    pub dir: Dir,
    pub tmpl_src: IpAddr,
    pub tmpl_dst: IpAddr,
    pub reqid: u32,
    pub mode: Mode,
    pub mark: Option<(u32, u32)>,
    /// The template may be missing (`level use`): packets that did not
    /// come through ESP pass too. Only inbound policies use it.
    pub optional: bool,
    /// Among policies that match a packet, the lowest value wins.
    pub priority: u32,
}

/// A state as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub spi: u32,
    pub reqid: u32,
    pub mark: Option<(u32, u32)>,
}

/// A state as the kernel lists it, with its AEAD key (root only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedState {
    pub id: StateId,
    pub key: Vec<u8>,
}

/// A policy as the kernel lists it (`reqid`: its first template's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    pub src: IpNet,
    pub dst: IpNet,
    pub dir: Dir,
    pub mark: Option<(u32, u32)>,
    pub reqid: u32,
}

/// The address `a` of `family`.
fn ip(family: u16, a: &Address) -> IpAddr {
    if family == AF_INET6 {
        a.to_ipv6().into()
    } else {
        a.to_ipv4().into()
    }
}

/// The mark attribute among `nlas`, if any.
fn mark_of(nlas: &[XfrmAttrs]) -> Option<(u32, u32)> {
    nlas.iter().find_map(|a| match a {
        XfrmAttrs::Mark(m) => Some((m.value, m.mask)),
        _ => None,
    })
}

/// A policy's message: its info and attributes (template, mark).
fn policy_message(p: &PolicySpec) -> (UserPolicyInfo, Vec<XfrmAttrs>) {
    let mut nlas = vec![XfrmAttrs::Template(vec![UserTemplate {
        id: Id {
            daddr: Address::from_ip(&p.tmpl_dst),
            spi: 0,
            proto: IPPROTO_ESP,
        },
        family: family(&p.tmpl_src),
        saddr: Address::from_ip(&p.tmpl_src),
        reqid: p.reqid,
        mode: p.mode.code(),
        optional: u8::from(p.optional),
        // Any algorithm (`ip xfrm`'s default).
        aalgos: u32::MAX,
        ealgos: u32::MAX,
        calgos: u32::MAX,
        ..UserTemplate::default()
    }])];
    nlas.extend(mark_attr(p.mark));
    let info = UserPolicyInfo {
        selector: selector(p.src, p.dst),
        lifetime_cfg: unlimited(),
        direction: p.dir.code(),
        action: XFRM_POLICY_ALLOW,
        priority: p.priority,
        ..UserPolicyInfo::default()
    };
    (info, nlas)
}

fn family(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

/// The mark attribute of a state or policy that has one.
fn mark_attr(mark: Option<(u32, u32)>) -> Option<XfrmAttrs> {
    mark.map(|(value, mask)| XfrmAttrs::Mark(Mark { value, mask }))
}

/// No byte, packet or time limit (`ip xfrm`'s default).
fn unlimited() -> LifetimeConfig {
    LifetimeConfig {
        soft_byte_limit: XFRM_INF,
        hard_byte_limit: XFRM_INF,
        soft_packet_limit: XFRM_INF,
        hard_packet_limit: XFRM_INF,
        ..LifetimeConfig::default()
    }
}

/// The XFRM netlink socket of one network namespace.
pub struct Xfrm {
    socket: Socket,
    seq: u32,
}

impl Xfrm {
    /// Opens it in the calling thread's network namespace.
    pub fn open() -> Result<Self, XfrmError> {
        let mut socket = Socket::new(NETLINK_XFRM).map_err(XfrmError::Socket)?;
        socket.bind_auto().map_err(XfrmError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(XfrmError::Socket)?;
        Ok(Xfrm { socket, seq: 0 })
    }

    /// Adds a state (an error if one with the same id exists).
    pub fn add_state(&mut self, s: &StateSpec<'_>) -> Result<(), XfrmError> {
        let mut alg_name = [0u8; 64];
        let name = s.key.algorithm.as_bytes();
        alg_name[..name.len()].copy_from_slice(name);
        let mut nlas = vec![XfrmAttrs::EncryptionAlgAead(AlgAead {
            alg_name,
            alg_key_len: u32::try_from(s.key.key.len() * 8).expect("keys are short"),
            alg_icv_len: u32::from(s.key.icv_bits),
            alg_key: s.key.key.clone(),
        })];
        nlas.extend(mark_attr(s.mark));
        let info = UserSaInfo {
            selector: Selector {
                family: family(&s.src),
                ..Selector::default()
            },
            id: Id {
                daddr: Address::from_ip(&s.dst),
                spi: s.spi,
                proto: IPPROTO_ESP,
            },
            saddr: Address::from_ip(&s.src),
            lifetime_cfg: unlimited(),
            reqid: s.reqid,
            family: family(&s.src),
            mode: s.mode.code(),
            replay_window: 32,
            ..UserSaInfo::default()
        };
        let what = format!("adding the XFRM state {} -> {} SPI {}", s.src, s.dst, s.spi);
        self.request(
            XfrmMessage::AddSa(StateModify {
                user_sa_info: info,
                nlas,
            }),
            NLM_F_CREATE | NLM_F_EXCL,
            what,
        )
    }

    /// Adds a policy (an error if one with the same selector exists).
    pub fn add_policy(&mut self, p: &PolicySpec) -> Result<(), XfrmError> {
        self.write_policy(p, false)
    }

    /// Replaces the policy with `p`'s selector, direction and mark, or adds
    /// it (no moment without one).
    pub fn upsert_policy(&mut self, p: &PolicySpec) -> Result<(), XfrmError> {
        self.write_policy(p, true)
    }

    fn write_policy(&mut self, p: &PolicySpec, update: bool) -> Result<(), XfrmError> {
        let (info, nlas) = policy_message(p);
        let msg = PolicyModify {
            user_policy_info: info,
            nlas,
        };
        let (msg, flags, verb) = if update {
            (XfrmMessage::UpdatePolicy(msg), NLM_F_CREATE, "updating")
        } else {
            (
                XfrmMessage::AddPolicy(msg),
                NLM_F_CREATE | NLM_F_EXCL,
                "adding",
            )
        };
        let what = format!(
            "{verb} the XFRM policy {} -> {} ({:?})",
            p.src, p.dst, p.dir
        );
        self.request(msg, flags, what)
    }

    /// Deletes the state `spi` towards `dst` (with `mark`, as added).
    pub fn delete_state(
        &mut self,
        dst: IpAddr,
        spi: u32,
        mark: Option<(u32, u32)>,
    ) -> Result<(), XfrmError> {
        let nlas = mark_attr(mark).into_iter().collect();
        self.request(
            XfrmMessage::DeleteSa(StateDel {
                user_sa_id: UserSaId {
                    daddr: Address::from_ip(&dst),
                    spi,
                    family: family(&dst),
                    proto: IPPROTO_ESP,
                },
                nlas,
            }),
            0,
            format!("deleting the XFRM state towards {dst} SPI {spi}"),
        )
    }

    /// Deletes the policy `src` → `dst` in `dir` (with `mark`, as added).
    pub fn delete_policy(
        &mut self,
        src: IpNet,
        dst: IpNet,
        dir: Dir,
        mark: Option<(u32, u32)>,
    ) -> Result<(), XfrmError> {
        let nlas = mark_attr(mark).into_iter().collect();
        self.request(
            XfrmMessage::DeletePolicy(PolicyDel {
                user_policy_id: UserPolicyId {
                    selector: selector(src, dst),
                    index: 0,
                    direction: dir.code(),
                },
                nlas,
            }),
            0,
            format!("deleting the XFRM policy {src} -> {dst} ({dir:?})"),
        )
    }

    /// Every state of the namespace.
    pub fn states(&mut self) -> Result<Vec<ListedState>, XfrmError> {
        let mut out = Vec::new();
        let msg = XfrmMessage::GetDumpSa(netlink_packet_xfrm::state::GetDumpMessage::default());
        for reply in self.dump(msg, "listing the XFRM states")? {
            if let XfrmMessage::AddSa(m) = reply {
                let i = &m.user_sa_info;
                let key = m
                    .nlas
                    .iter()
                    .find_map(|a| match a {
                        XfrmAttrs::EncryptionAlgAead(k) => Some(k.alg_key.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                out.push(ListedState {
                    id: StateId {
                        src: ip(i.family, &i.saddr),
                        dst: ip(i.family, &i.id.daddr),
                        spi: i.id.spi,
                        reqid: i.reqid,
                        mark: mark_of(&m.nlas),
                    },
                    key,
                });
            }
        }
        Ok(out)
    }

    /// Every policy of the namespace (the kernel's own per-socket ones
    /// aside).
    pub fn policies(&mut self) -> Result<Vec<PolicyId>, XfrmError> {
        let mut out = Vec::new();
        let msg = XfrmMessage::GetPolicy(PolicyDel::default());
        for reply in self.dump(msg, "listing the XFRM policies")? {
            if let XfrmMessage::AddPolicy(m) = reply {
                let i = &m.user_policy_info;
                let Some(dir) = Dir::from_code(i.direction) else {
                    continue;
                };
                let sel = &i.selector;
                let net = |a: &Address, len: u8| {
                    IpNet::new(ip(sel.family, a), len).unwrap_or_else(|_| ip(sel.family, a).into())
                };
                let reqid = m.nlas.iter().find_map(|a| match a {
                    XfrmAttrs::Template(t) => t.first().map(|t| t.reqid),
                    _ => None,
                });
                out.push(PolicyId {
                    src: net(&sel.saddr, sel.prefixlen_s),
                    dst: net(&sel.daddr, sel.prefixlen_d),
                    dir,
                    mark: mark_of(&m.nlas),
                    reqid: reqid.unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    /// Sends `msg` with `flags` (and `NLM_F_REQUEST`) under the next
    /// sequence number.
    fn send(&mut self, msg: XfrmMessage, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map(|_| ())
    }

    /// Sends a dump request and collects the answers until the end.
    fn dump(&mut self, msg: XfrmMessage, what: &str) -> Result<Vec<XfrmMessage>, XfrmError> {
        let fail = |source: io::Error| XfrmError::Request {
            what: what.to_string(),
            source,
        };
        self.send(msg, NLM_F_DUMP).map_err(fail)?;
        let mut out = Vec::new();
        let mut answer = vec![0u8; 64 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut answer[..], 0).map_err(fail)?;
            let mut at = 0;
            while at < n {
                let reply = NetlinkMessage::<XfrmMessage>::deserialize(&answer[at..n])
                    .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(fail(e.to_io())),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends `msg` and waits for the kernel's acknowledgement.
    fn request(&mut self, msg: XfrmMessage, flags: u16, what: String) -> Result<(), XfrmError> {
        let fail = |source: io::Error| XfrmError::Request {
            what: what.clone(),
            source,
        };
        self.send(msg, NLM_F_ACK | flags).map_err(fail)?;
        let mut answer = vec![0u8; 64 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut answer[..], 0).map_err(fail)?;
            let reply = NetlinkMessage::<XfrmMessage>::deserialize(&answer[..n])
                .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
            if reply.header.sequence_number != self.seq {
                continue;
            }
            return match reply.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => Err(fail(e.to_io())),
                NetlinkPayload::Error(_) => Ok(()),
                other => Err(fail(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected answer {other:?}"),
                ))),
            };
        }
    }
}
