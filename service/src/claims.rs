//! What a service claims in the frontend index: the names under which a
//! writer records that a cluster IP or a frontend is taken, so that a new
//! service is checked against the few services it could conflict with
//! instead of every stored one (see `cli/src/service/index.rs`).
//!
//! Each name is held by one service. A service holds its cluster IPs
//! (`ip/<addr>`) and its NodePort, ExternalIP and LoadBalancer frontends
//! (`fe/<addr>/<port>/<protocol>`); its ClusterIP frontends need no name of
//! their own (another service on the same address would hold the same
//! cluster IP, or hold that address's frontend). So a service also
//! *probes*: the frontend names of its ClusterIP frontends, and the
//! cluster-IP names of its other frontends' addresses. Every service that
//! [`crate::validate::conflicts`] could report against a new one holds a
//! name the new one holds or probes; the owners found are then checked
//! with `conflicts` itself, which decides.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::{FrontendKind, Protocol, ServiceRecord};

/// A service's names in the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Names this service holds.
    pub held: BTreeSet<String>,
    /// Names it reads but does not hold.
    pub probed: BTreeSet<String>,
}

impl Claims {
    /// Every name to read when checking this service.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.held.iter().chain(self.probed.iter())
    }
}

fn ip(addr: IpAddr) -> String {
    format!("ip/{addr}")
}

fn frontend(addr: IpAddr, port: u16, protocol: Protocol) -> String {
    format!("fe/{addr}/{port}/{protocol}")
}

/// The names `r` holds and probes.
pub fn claims(r: &ServiceRecord) -> Claims {
    let mut c = Claims::default();
    for a in &r.spec.cluster_ips {
        c.held.insert(ip(*a));
    }
    for f in r.frontends() {
        let name = frontend(f.addr, f.port, f.protocol);
        if f.kind == FrontendKind::ClusterIP {
            c.probed.insert(name);
        } else {
            c.held.insert(name);
            if !f.addr.is_unspecified() {
                c.probed.insert(ip(f.addr));
            }
        }
    }
    c.probed.retain(|n| !c.held.contains(n));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(yaml: &str) -> ServiceRecord {
        crate::parse_documents(yaml).unwrap().remove(0)
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_service_holds_its_cluster_ips_and_outside_frontends_and_probes_the_rest() {
        let r = record(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
             type: NodePort\n  clusterIPs: [10.96.0.1, \"fd00::1\"]\n  externalIPs: [192.0.2.7]\n  \
             ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 53, protocol: UDP, nodePort: 30053}]\n",
        );
        let c = claims(&r);
        assert_eq!(
            names(&c.held),
            [
                "fe/0.0.0.0/30053/UDP",
                "fe/0.0.0.0/30080/TCP",
                "fe/192.0.2.7/53/UDP",
                "fe/192.0.2.7/80/TCP",
                "fe/::/30053/UDP",
                "fe/::/30080/TCP",
                "ip/10.96.0.1",
                "ip/fd00::1",
            ]
        );
        assert_eq!(
            names(&c.probed),
            [
                "fe/10.96.0.1/53/UDP",
                "fe/10.96.0.1/80/TCP",
                "fe/fd00::1/53/UDP",
                "fe/fd00::1/80/TCP",
                "ip/192.0.2.7",
            ]
        );
    }

    /// Whenever `conflicts` reports two services, one holds a name the
    /// other holds or probes.
    #[test]
    fn every_conflict_meets_in_a_name() {
        let docs = [
            "spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
            "spec: {clusterIP: 10.96.0.1, ports: [{port: 81}]}",
            "spec: {clusterIP: 10.96.0.2, externalIPs: [10.96.0.1], ports: [{port: 80}]}",
            "spec: {clusterIP: 10.96.0.3, externalIPs: [10.96.0.1], ports: [{port: 99}]}",
            "spec: {clusterIP: 10.96.0.4, externalIPs: [192.0.2.1], ports: [{port: 80}]}",
            "spec: {clusterIP: 10.96.0.5, externalIPs: [192.0.2.1], ports: [{port: 80}]}",
            "spec: {clusterIP: 10.96.0.6, externalIPs: [192.0.2.1], ports: [{port: 8080}]}",
            "spec: {type: NodePort, clusterIP: 10.96.0.7, ports: [{port: 80, nodePort: 30000}]}",
            "spec: {type: NodePort, clusterIP: 10.96.0.8, ports: [{port: 81, nodePort: 30000}]}",
            "spec: {type: LoadBalancer, clusterIP: 10.96.0.9, loadBalancerIPs: [10.96.0.4], \
             ports: [{port: 80}]}",
        ];
        let records: Vec<ServiceRecord> = docs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                record(&format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n{spec}\n"
                ))
            })
            .collect();
        let mut met = 0;
        for (i, a) in records.iter().enumerate() {
            for (j, b) in records.iter().enumerate() {
                if i == j {
                    continue;
                }
                let conflict =
                    !crate::validate::conflicts(std::slice::from_ref(a), std::slice::from_ref(b))
                        .is_empty();
                let (ca, cb) = (claims(a), claims(b));
                let meet = ca.all().any(|n| cb.held.contains(n));
                if conflict {
                    met += 1;
                    assert!(
                        meet,
                        "{} and {} conflict without a shared name",
                        a.id(),
                        b.id()
                    );
                }
            }
        }
        // s0/s1 (cluster IP), s0/s2 (address:port), s4/s5, s7/s8, s4/s9: both ways.
        assert_eq!(met, 10);
    }
}
