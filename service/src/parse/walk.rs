//! The strict reader under the parser: [`Walk`] reads JSON values as the
//! types a field wants (string, port, address, one of some names, an
//! object with only the fields it names), and records every mismatch as
//! a shape error with its field path instead of stopping at the first.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value};

use crate::model::Protocol;

/// Kubernetes fields this model does not take, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "spec.selector",
        "is not supported: standalone mode selects no pods; list the backends under \
         `endpoints` (beside `spec`)",
    ),
    (
        "spec.externalName",
        "ExternalName services are not supported",
    ),
    (
        "spec.loadBalancerIP",
        "is not supported: give the addresses in spec.loadBalancerIPs",
    ),
    ("spec.loadBalancerSourceRanges", "is not supported yet"),
    ("spec.loadBalancerClass", "is not supported yet"),
    ("spec.allocateLoadBalancerNodePorts", "is not supported yet"),
    ("spec.healthCheckNodePort", "is not supported yet"),
    ("spec.publishNotReadyAddresses", "is not supported yet"),
    ("spec.trafficDistribution", "is not supported yet"),
    (
        "status",
        "is not supported: give load balancer addresses in spec.loadBalancerIPs",
    ),
];

/// Shape errors of one document, as `(path, message)`.
#[derive(Default)]
pub(super) struct Walk {
    pub(super) errors: Vec<(String, String)>,
}

pub(super) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Walk {
    pub(super) fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push((path.to_string(), message.into()));
    }

    /// An object with only `fields`; other keys are errors.
    pub(super) fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        fields: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = v.as_object() else {
            self.err(path, "must be an object");
            return None;
        };
        for key in map.keys() {
            if fields.contains(&key.as_str()) {
                continue;
            }
            let p = child(path, key);
            if let Some((_, why)) = UNSUPPORTED.iter().find(|(f, _)| *f == p) {
                self.err(&p, *why);
            } else if let Some(f) = fields.iter().find(|f| f.eq_ignore_ascii_case(key)) {
                self.err(&p, format!("unknown field (did you mean {f}?)"));
            } else {
                self.err(
                    &p,
                    format!("unknown field (known here: {})", fields.join(", ")),
                );
            }
        }
        Some(map)
    }

    pub(super) fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.err(path, "must be a string");
                None
            }
        }
    }

    pub(super) fn bool(&mut self, v: &Value, path: &str) -> Option<bool> {
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.err(path, "must be true or false");
                None
            }
        }
    }

    /// 0-65535 (0 is left to validation, which says "must be 1-65535").
    pub(super) fn port(&mut self, v: &Value, path: &str) -> Option<u16> {
        match v.as_i64() {
            Some(n) => match u16::try_from(n) {
                Ok(p) => Some(p),
                Err(_) => {
                    self.err(path, "must be 1-65535");
                    None
                }
            },
            None => {
                self.err(path, "must be a port number 1-65535");
                None
            }
        }
    }

    pub(super) fn u32(&mut self, v: &Value, path: &str) -> Option<u32> {
        match v.as_i64().map(u32::try_from) {
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                self.err(path, format!("{v} is out of range"));
                None
            }
            None => {
                self.err(path, "must be a number");
                None
            }
        }
    }

    pub(super) fn ip(&mut self, v: &Value, path: &str) -> Option<IpAddr> {
        let s = self.string(v, path)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(path, format!("{s:?} is not an IP address"));
                None
            }
        }
    }

    /// A list; `null` (a key with nothing after it) is an empty one.
    pub(super) fn list<'v>(&mut self, v: &'v Value, path: &str) -> &'v [Value] {
        match v.as_array() {
            Some(l) => l,
            None if v.is_null() => &[],
            None => {
                self.err(path, "must be a list");
                &[]
            }
        }
    }

    /// A list of addresses; a bad one stays as `0.0.0.0` (its error is
    /// reported) so that the others keep their indices.
    pub(super) fn ips(&mut self, v: &Value, path: &str) -> Vec<IpAddr> {
        self.list(v, path)
            .iter()
            .enumerate()
            .map(|(i, a)| {
                self.ip(a, &format!("{path}[{i}]"))
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            })
            .collect()
    }

    pub(super) fn choice<T: Copy>(
        &mut self,
        v: &Value,
        path: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(v, path)?;
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.err(path, format!("{s:?} is not one of {}", names.join(", ")));
                None
            }
        }
    }

    pub(super) fn protocol(&mut self, v: Option<&Value>, path: &str) -> Protocol {
        let Some(v) = v else {
            return Protocol::Tcp;
        };
        self.choice(
            v,
            path,
            &[
                ("TCP", Protocol::Tcp),
                ("UDP", Protocol::Udp),
                ("SCTP", Protocol::Sctp),
            ],
        )
        .unwrap_or_default()
    }
}
