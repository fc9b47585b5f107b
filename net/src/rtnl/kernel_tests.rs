//! Against the kernel, in namespaces of their own.

use super::*;
use crate::testns::TestNs;

#[tokio::test]
async fn a_veth_pair_across_namespaces_with_addresses_and_routes() {
    let (node, pod) = (TestNs::new(), TestNs::new());
    let (n, p) = (node.ns.rtnl().unwrap(), pod.ns.rtnl().unwrap());
    p.add_veth("eth0", "axotest0", &node.ns, Some(1423))
        .await
        .unwrap();
    let eth0 = p.need_link("eth0").await.unwrap();
    let host = n.need_link("axotest0").await.unwrap();
    // Both ends take the MTU asked for (a pod's, lowered for ESP).
    assert_eq!((eth0.mtu, host.mtu), (1423, 1423));
    assert!(
        p.link("axotest0").await.unwrap().is_none(),
        "peer is in node"
    );
    assert_eq!(eth0.mac.len(), 17, "{eth0:?}");
    assert!(!eth0.up);

    p.add_address(eth0.index, "10.9.0.5/32".parse().unwrap(), false)
        .await
        .unwrap();
    p.add_address(eth0.index, "fd09::5/128".parse().unwrap(), true)
        .await
        .unwrap();
    let e = p
        .add_address(eth0.index, "10.9.0.5/32".parse().unwrap(), false)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), Some(nix::libc::EEXIST), "{e}");
    p.set_up(eth0.index).await.unwrap();
    n.set_up(host.index).await.unwrap();
    assert!(p.need_link("eth0").await.unwrap().up);
    n.add_address(host.index, "169.254.1.1/32".parse().unwrap(), false)
        .await
        .unwrap();
    let gw: IpNet = "169.254.1.1/32".parse().unwrap();
    p.add_route(&Route::to(gw).dev(eth0.index).scope_link())
        .await
        .unwrap();
    p.add_route(
        &Route::to("0.0.0.0/0".parse().unwrap())
            .via(gw.addr())
            .dev(eth0.index),
    )
    .await
    .unwrap();
    n.add_route(&Route::to("10.9.0.5/32".parse().unwrap()).dev(host.index))
        .await
        .unwrap();

    let mut addrs = p.addresses(eth0.index).await.unwrap();
    addrs.retain(|a| a.global);
    let nets: Vec<IpNet> = addrs.iter().map(|a| a.net).collect();
    assert!(nets.contains(&"10.9.0.5/32".parse().unwrap()), "{nets:?}");
    assert!(nets.contains(&"fd09::5/128".parse().unwrap()), "{nets:?}");
    let main = u32::from(RouteHeader::RT_TABLE_MAIN);
    let dsts: Vec<_> = p
        .routes(false, main)
        .await
        .unwrap()
        .iter()
        .filter_map(route_destination)
        .collect();
    assert!(dsts.contains(&gw), "{dsts:?}");
    // The default route has no destination attribute.
    assert_eq!(p.routes(false, main).await.unwrap().len(), dsts.len() + 1);

    // A route replaced twice is one route; deleting it twice is fine.
    let r = Route::to("10.8.0.0/24".parse().unwrap()).via("10.9.0.9".parse().unwrap());
    n.add_route(&Route::to("10.9.0.9/32".parse().unwrap()).dev(host.index))
        .await
        .unwrap();
    n.replace_route(&r).await.unwrap();
    n.replace_route(&r).await.unwrap();
    let count = |v: Vec<RouteMessage>| {
        v.iter()
            .filter(|m| route_destination(m) == Some(r.dst))
            .count()
    };
    assert_eq!(count(n.routes(false, main).await.unwrap()), 1);
    assert!(n.del_route(&r).await.unwrap());
    assert!(!n.del_route(&r).await.unwrap());

    // Deleting the host end takes the pod end with it.
    assert!(n.del_link("axotest0").await.unwrap());
    assert!(!n.del_link("axotest0").await.unwrap());
    assert!(p.link("eth0").await.unwrap().is_none());
}

#[tokio::test]
async fn fwmark_rules_and_a_local_table() {
    let node = TestNs::new();
    let n = node.ns.rtnl().unwrap();
    let lo = n.need_link("lo").await.unwrap();
    // A fresh namespace's loopback is down; a node's is up.
    n.set_up(lo.index).await.unwrap();
    for v6 in [false, true] {
        let rule = FwmarkRule {
            v6,
            mark: 1,
            mask: 1,
            table: 100,
        };
        assert!(!n.has_rule(&rule).await.unwrap());
        n.ensure_rule(&rule).await.unwrap();
        n.ensure_rule(&rule).await.unwrap();
        let copies = n
            .rules(v6)
            .await
            .unwrap()
            .iter()
            .filter(|m| rule.matches(m))
            .count();
        assert_eq!(copies, 1, "v6={v6}");
        let any: IpNet = if v6 { "::/0" } else { "0.0.0.0/0" }.parse().unwrap();
        let local = Route::to(any).dev(lo.index).table(100).local();
        n.replace_route(&local).await.unwrap();
        n.replace_route(&local).await.unwrap();
        let table = n.routes(v6, 100).await.unwrap();
        assert_eq!(table.len(), 1, "v6={v6}: {table:?}");
        assert_eq!(table[0].header.kind, RouteType::Local);
        n.flush_table(v6, 100).await.unwrap();
        assert!(n.routes(v6, 100).await.unwrap().is_empty());
        assert!(n.del_rule(&rule).await.unwrap());
        assert!(!n.del_rule(&rule).await.unwrap());
    }
}
