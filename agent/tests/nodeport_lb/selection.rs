//! Backend selection: Maglev across nodes and under backend removal, and
//! `ClientIP` affinity.

use super::*;

/// Forgets every translated flow (as if they had all ended).
pub(super) fn forget_flows(dp: &TestDatapath) -> Result<()> {
    use axoneme_bpf_common::lb::{NatFwd, NatTuple};
    let data = aya::maps::MapData::from_pin(dp.pin(axoneme_bpf_common::map_names::LB_NAT_FWD))?;
    let mut map: aya::maps::HashMap<_, NatTuple, NatFwd> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))?;
    let keys: Vec<NatTuple> = map.keys().collect::<Result<_, _>>()?;
    for k in keys {
        map.remove(&k)?;
    }
    Ok(())
}

/// The backend (last address byte) each client port gets through `node`.
pub(super) fn picks(
    dp: &TestDatapath,
    node: [u8; 4],
    ports: std::ops::Range<u16>,
) -> Result<Vec<u8>> {
    ports
        .map(|port| {
            let (action, out) =
                dp.test_run_packet(NODEPORT_INGRESS, &tcp4(CLIENT, port, node, 30080))?;
            anyhow::ensure!(action == TC_ACT_OK, "port {port}: {action}");
            Ok(check(&out).dst[3])
        })
        .collect()
}

/// Ten backends, .1 to .10.
pub(super) fn ten_backends() -> Vec<[u8; 4]> {
    (1..=10).map(|i| [10, 200, 0, i]).collect()
}

/// The programs with Maglev tables of `M` entries at the node's address,
/// the LB maps, and the services unit's ids and table.
pub(super) fn with_maglev() -> Result<(TestDatapath, LbMaps, Ids, Table)> {
    let mut dp = load();
    dp.set_node_addrs(&[NODE.into()], M)?;
    let lb = dp.take_lb_maps()?;
    let ids = Ids::default().with_maglev(Maglev { m: M, seed: 7 });
    Ok((dp, lb, ids, Table::default()))
}

/// The Maglev table size of these tests.
pub(super) const M: u32 = 1021;

#[test]
pub(super) fn maglev_picks_the_same_backend_on_every_node_and_moves_few() -> Result<()> {
    const NODE2: [u8; 4] = [192, 168, 7, 2];
    let (dp, mut lb, mut ids, mut have) = with_maglev()?;
    let ten = ten_backends();
    // One NodePort, at both of the node's addresses (as two nodes would
    // have it: the same backends, another frontend address).
    let nodes = [NODE.into(), NODE2.into()];
    let f = frontend(
        FrontendKind::NodePort,
        "0.0.0.0",
        30080,
        Protocol::Tcp,
        &ten,
    );
    let want = build(std::slice::from_ref(&f), "node-a", &nodes, &mut ids)?;
    assert_eq!(want.maglev.len(), 2, "a row per frontend address");
    sync(&mut lb, &mut have, &want)?;

    let ports = 20000..21000;
    let first = picks(&dp, NODE, ports.clone())?;
    let mut per = std::collections::BTreeMap::new();
    for b in &first {
        *per.entry(*b).or_insert(0) += 1;
    }
    eprintln!("1,000 clients over 10 backends: {per:?}");
    assert_eq!(per.len(), 10, "{per:?}");
    assert!(per.values().all(|n| (50..=150).contains(n)), "{per:?}");
    // The same clients through the other address: the same backends.
    assert_eq!(picks(&dp, NODE2, ports.clone())?, first);
    // Their flows forgotten, they come back to the same backends.
    forget_flows(&dp)?;
    assert_eq!(picks(&dp, NODE, ports.clone())?, first);

    // Backend .4 leaves: its clients move, few others do.
    let nine: Vec<[u8; 4]> = ten.iter().copied().filter(|b| b[3] != 4).collect();
    let f = frontend(
        FrontendKind::NodePort,
        "0.0.0.0",
        30080,
        Protocol::Tcp,
        &nine,
    );
    let want = build(std::slice::from_ref(&f), "node-a", &nodes, &mut ids)?;
    let changes = sync(&mut lb, &mut have, &want)?;
    forget_flows(&dp)?;
    let after = picks(&dp, NODE, ports)?;
    let moved_others = first
        .iter()
        .zip(&after)
        .filter(|(a, b)| **a != 4 && a != b)
        .count();
    eprintln!(
        "one of 10 removed: {} map writes; {} of {} other clients moved",
        changes.written,
        moved_others,
        first.iter().filter(|b| **b != 4).count()
    );
    assert!(after.iter().all(|b| *b != 4));
    assert!(
        moved_others <= 30,
        "{moved_others} of ~900 moved (Maglev: a few %)"
    );
    Ok(())
}

#[test]
pub(super) fn client_ip_affinity_holds_a_client_address_until_it_expires() -> Result<()> {
    const TIMEOUT_S: u32 = 1;
    let (dp, mut lb, mut ids, mut have) = with_maglev()?;
    let mut f = frontend(
        FrontendKind::NodePort,
        "0.0.0.0",
        30080,
        Protocol::Tcp,
        &ten_backends(),
    );
    f.affinity_timeout = Some(TIMEOUT_S);
    let want = build(std::slice::from_ref(&f), "node-a", &[NODE.into()], &mut ids)?;
    sync(&mut lb, &mut have, &want)?;

    // 50 flows of one client (Maglev alone spreads such ports over all
    // ten, see above): one backend.
    let first = picks(&dp, NODE, 20000..20050)?;
    let held = first[0];
    assert!(first.iter().all(|b| *b == held), "{first:?}");

    // Its backend leaves: the client moves, to one backend again.
    f.backends
        .retain(|b| b.addr != std::net::IpAddr::from([10, 200, 0, held]));
    let want = build(std::slice::from_ref(&f), "node-a", &[NODE.into()], &mut ids)?;
    sync(&mut lb, &mut have, &want)?;
    forget_flows(&dp)?;
    let moved = picks(&dp, NODE, 20100..20150)?;
    assert!(moved[0] != held, "{moved:?}");
    assert!(moved.iter().all(|b| *b == moved[0]), "{moved:?}");

    // Unused for longer than the timeout, the client picks anew: a flow
    // whose Maglev entry is another backend gets that one (tried port by
    // port: an entry may be the held backend by chance).
    let now_held = moved[0];
    let mut released = false;
    for port in 20200..20203 {
        std::thread::sleep(std::time::Duration::from_millis(
            u64::from(TIMEOUT_S) * 1000 + 1200,
        ));
        if picks(&dp, NODE, port..port + 1)?[0] != now_held {
            released = true;
            break;
        }
    }
    assert!(
        released,
        "the client stayed on backend .{now_held} past its timeout"
    );
    Ok(())
}
