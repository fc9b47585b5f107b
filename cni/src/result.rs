//! The success results printed on stdout (CNI spec, "Success" and
//! "Version" results).

use std::net::IpAddr;

use axoneme_api::AddResponse;
use serde_json::{json, Value};

use crate::config::SUPPORTED_VERSIONS;

/// VERSION's answer: the plugin's own, whatever the runtime's config says
/// (as libcni's reference `skel` does).
pub fn version_info() -> Value {
    json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS})
}

/// ADD's result in `cni_version`: the host-side veth (index 0), the pod's
/// interface (index 1, in the sandbox), the addresses on the pod's
/// interface, the routes and no DNS.
pub fn add_result(cni_version: &str, ifname: &str, netns: &str, resp: &AddResponse) -> Value {
    let ips: Vec<Value> = resp
        .ips
        .iter()
        .map(|ip| {
            let mut v = json!({
                "address": ip.address,
                "gateway": ip.gateway,
                "interface": 1,
            });
            // 0.4.0 results carry the family ("4" or "6"); 1.0.0 dropped it.
            if cni_version == "0.4.0" {
                v["version"] = json!(ip_family(&ip.address));
            }
            v
        })
        .collect();
    let routes: Vec<Value> = resp
        .routes
        .iter()
        .map(|r| match &r.gw {
            Some(gw) => json!({"dst": r.dst, "gw": gw}),
            None => json!({"dst": r.dst}),
        })
        .collect();
    json!({
        "cniVersion": cni_version,
        "interfaces": [
            {"name": resp.host_interface, "mac": resp.host_mac},
            {"name": ifname, "mac": resp.mac, "sandbox": netns},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

/// "4" or "6" for an address in CIDR notation (or a bare address).
fn ip_family(cidr: &str) -> &'static str {
    let addr = cidr.split('/').next().unwrap_or(cidr);
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "4",
        Ok(IpAddr::V6(_)) => "6",
        // Not for the plugin to judge; the only hint left is the syntax.
        Err(_) if addr.contains(':') => "6",
        Err(_) => "4",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axoneme_api::{IpConfig, RouteConfig};

    fn resp() -> AddResponse {
        AddResponse {
            endpoint: "endpoints/v1/node-1/ep".into(),
            identity: 1234,
            host_interface: "lxc1a2b".into(),
            host_mac: "aa:aa:aa:aa:aa:01".into(),
            mac: "bb:bb:bb:bb:bb:02".into(),
            ips: vec![
                IpConfig {
                    address: "10.200.1.7/32".into(),
                    gateway: "10.200.1.1".into(),
                },
                IpConfig {
                    address: "fd00::ac8:107/128".into(),
                    gateway: "fe80::1".into(),
                },
            ],
            routes: vec![
                RouteConfig {
                    dst: "0.0.0.0/0".into(),
                    gw: Some("10.200.1.1".into()),
                },
                RouteConfig {
                    dst: "10.200.1.1/32".into(),
                    gw: None,
                },
            ],
        }
    }

    #[test]
    fn add_result_1_0_0() {
        assert_eq!(
            add_result("1.0.0", "eth0", "/var/run/netns/p", &resp()),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "lxc1a2b", "mac": "aa:aa:aa:aa:aa:01"},
                    {"name": "eth0", "mac": "bb:bb:bb:bb:bb:02", "sandbox": "/var/run/netns/p"}
                ],
                "ips": [
                    {"address": "10.200.1.7/32", "gateway": "10.200.1.1", "interface": 1},
                    {"address": "fd00::ac8:107/128", "gateway": "fe80::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.200.1.1"},
                    {"dst": "10.200.1.1/32"}
                ],
                "dns": {}
            })
        );
    }

    #[test]
    fn add_result_0_4_0_has_ip_versions() {
        let r = add_result("0.4.0", "eth0", "/ns", &resp());
        assert_eq!(r["cniVersion"], "0.4.0");
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["ips"][1]["version"], "6");
    }

    #[test]
    fn families() {
        assert_eq!(ip_family("10.0.0.1/32"), "4");
        assert_eq!(ip_family("10.0.0.1"), "4");
        assert_eq!(ip_family("fd00::1/128"), "6");
        assert_eq!(ip_family("weird:thing"), "6");
    }

    #[test]
    fn version_info_shape() {
        assert_eq!(
            version_info().to_string(),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#
        );
    }
}
