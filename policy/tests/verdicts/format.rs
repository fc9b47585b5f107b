//! The corpus files' format (see the crate's doc): peers, flows with their
//! requests and expected verdicts, and pods' named ports.

use super::*;

const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Peer {
    Pod(LabelSet),
    Reserved(NumericIdentity),
    Cidr(IpNet),
    Ip(IpAddr),
}

#[derive(Debug, Clone)]
pub(super) struct Req {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) host: String,
    pub(super) headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Allow,
    Deny,
    Deny181,
    DenyL7,
    Redirect,
}

#[derive(Debug, Clone)]
pub(super) struct Flow {
    pub(super) line: usize,
    pub(super) text: String,
    pub(super) src: Peer,
    pub(super) dst: Peer,
    pub(super) proto: u8,
    pub(super) port: u16,
    pub(super) request: Option<Req>,
    pub(super) expect: Expect,
}

pub(super) fn parse_peer(s: &str) -> Result<Peer, String> {
    if let Some(name) = s.strip_prefix("reserved:") {
        return ReservedIdentity::from_name(name)
            .filter(|r| *r != ReservedIdentity::Unknown)
            .map(|r| Peer::Reserved(r.id()))
            .ok_or_else(|| format!("{s}: not a reserved identity"));
    }
    if let Some(net) = s.strip_prefix("cidr:") {
        return net
            .parse::<IpNet>()
            .map(Peer::Cidr)
            .map_err(|e| format!("{s}: {e}"));
    }
    if let Some(ip) = s.strip_prefix("ip:") {
        return ip
            .parse::<IpAddr>()
            .map(Peer::Ip)
            .map_err(|e| format!("{s}: {e}"));
    }
    let mut items: Vec<String> = s
        .split(',')
        .map(|l| match l.strip_prefix("ns=") {
            Some(ns) => format!("{NAMESPACE_LABEL}={ns}"),
            None => l.to_string(),
        })
        .collect();
    if !items
        .iter()
        .any(|l| l.starts_with(&format!("{NAMESPACE_LABEL}=")))
    {
        items.push(format!("{NAMESPACE_LABEL}=default"));
    }
    LabelSet::parse(&items, Source::K8s)
        .map(Peer::Pod)
        .map_err(|e| format!("{s}: {e}"))
}

pub(super) fn parse_flow(line: usize, text: &str) -> Result<Flow, String> {
    let (left, expect) = text.rsplit_once("=>").ok_or("no `=> verdict` at the end")?;
    let expect = match expect.trim() {
        "allow" => Expect::Allow,
        "deny" => Expect::Deny,
        "deny-181" => Expect::Deny181,
        "deny-l7" => Expect::DenyL7,
        "redirect" => Expect::Redirect,
        other => return Err(format!("{other:?} is not a verdict")),
    };
    let tokens: Vec<&str> = left.split_whitespace().collect();
    if tokens.len() < 4 || tokens[1] != "->" {
        return Err("want `<src> -> <dst> <proto>/<port> ...`".into());
    }
    let (proto, port) = proto_port(tokens[3], &["tcp", "udp", "sctp", "icmp", "icmpv6"])?;
    let request = match &tokens[4..] {
        [] => None,
        [_] => return Err("a request needs a method and a path".into()),
        [method, path, rest @ ..] => {
            let mut req = Req {
                method: method.to_string(),
                path: path.to_string(),
                host: String::new(),
                headers: Vec::new(),
            };
            for t in rest {
                let (k, v) = t
                    .split_once('=')
                    .ok_or_else(|| format!("{t:?}: want host=HOST or Name=value"))?;
                if k == "host" {
                    req.host = v.to_string();
                } else {
                    req.headers.push((k.to_string(), v.to_string()));
                }
            }
            Some(req)
        }
    };
    if request.is_some() && expect == Expect::Redirect {
        return Err("`redirect` is for flows without a request".into());
    }
    if request.is_none() && expect == Expect::DenyL7 {
        return Err("`deny-l7` needs a request".into());
    }
    Ok(Flow {
        line,
        text: text.trim().to_string(),
        src: parse_peer(tokens[0])?,
        dst: parse_peer(tokens[2])?,
        proto,
        port,
        request,
        expect,
    })
}

/// `<proto>/<port>`, the protocol one of `allowed`.
pub(super) fn proto_port(text: &str, allowed: &[&str]) -> Result<(u8, u16), String> {
    let (proto, port) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: want <proto>/<port>"))?;
    let number = match proto {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmpv6" => 58,
        _ => 0,
    };
    if number == 0 || !allowed.contains(&proto) {
        return Err(format!("{proto:?} is not one of {}", allowed.join(", ")));
    }
    let port = port
        .parse::<u16>()
        .map_err(|e| format!("port {port:?}: {e}"))?;
    Ok((number, port))
}

/// `# ports: <pod> name=proto/port,...`.
pub(super) fn parse_ports(text: &str) -> Result<(LabelSet, PortNames), String> {
    let (pod, list) = text
        .trim()
        .split_once(' ')
        .ok_or("want `<pod> <name>=<proto>/<port>,...`")?;
    let Peer::Pod(labels) = parse_peer(pod)? else {
        return Err(format!("{pod}: named ports are a pod's"));
    };
    let mut ports = PortNames::new();
    for item in list.trim().split(',') {
        let (name, pp) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: want <name>=<proto>/<port>"))?;
        let (proto, port) = proto_port(pp, &["tcp", "udp", "sctp"])?;
        ports.insert(name, proto, port);
    }
    Ok((labels, ports))
}
