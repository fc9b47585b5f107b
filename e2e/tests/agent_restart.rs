//! An agent restart under load, across two nodes: node 0's agent (the one
//! whose proxy judges the seed policy's L7 rule) is killed (-9) and
//! started again while three flows run:
//!
//! - a cross-node L3/L4 stream (payments on node 0 to a server on node 1):
//!   never stalls, the pinned datapath keeps enforcing without its agent;
//! - checkout's allowed `POST /v1/charge` across nodes through node 0's
//!   proxy: fails closed while the proxy is down, and only then (the
//!   outage is bounded by the restart; measured and printed);
//! - the intruder's denied connections: never get through.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axoneme_e2e::expect::seed_policy;
use axoneme_e2e::{Cluster, ClusterConfig};

const ECHO_PORT: u16 = 9090;

#[test]
fn an_agent_restart_costs_l3_l4_nothing_and_l7_only_the_restart() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let checkout = c.add_pod(1, "checkout", &[("app", "checkout")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    c.logging_backend(&payments, 8080)?;
    let seed = seed_policy();
    c.import_policy(0, &seed)?;
    let pay = payments.ip.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while intruder.http("POST", &pay, 8080, "/v1/charge").is_some()
        || checkout.http("POST", &pay, 8080, "/v1/charge") != Some(200)
    {
        assert!(Instant::now() < deadline, "the seed policy is not enforced");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An echo server on checkout's node, reached from payments' node.
    let listener = checkout
        .ns
        .enter(|| TcpListener::bind(("0.0.0.0", ECHO_PORT)))??;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    if writeln!(out, "ok {line}").is_err() {
                        break;
                    }
                }
            });
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let max_gap_ms = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(AtomicU64::new(0));
    let to = checkout.ip;
    let stream = {
        let (stop, max_gap_ms, answers) = (stop.clone(), max_gap_ms.clone(), answers.clone());
        payments.ns.spawn(move || -> std::io::Result<()> {
            let mut conn = TcpStream::connect((to, ECHO_PORT))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut reader = BufReader::new(conn.try_clone()?);
            let mut last = Instant::now();
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(b"tick\n")?;
                line.clear();
                reader.read_line(&mut line)?;
                assert_eq!(line, "ok tick\n");
                let gap = u64::try_from(last.elapsed().as_millis()).unwrap_or(u64::MAX);
                max_gap_ms.fetch_max(gap, Ordering::Relaxed);
                answers.fetch_add(1, Ordering::Relaxed);
                last = Instant::now();
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };
    let breaches = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(AtomicU64::new(0));
    let payments_ip = payments.ip;
    let probe = {
        let (stop, breaches, probes) = (stop.clone(), breaches.clone(), probes.clone());
        intruder.ns.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let addr = SocketAddr::from((payments_ip, 8080));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    breaches.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    // checkout's allowed L7 request, every 100 ms: (time, status).
    let l7: Mutex<Vec<(Instant, Option<u16>)>> = Mutex::default();
    let (killed, restarted) = std::thread::scope(|scope| -> Result<(Instant, Instant)> {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let got = checkout.http("POST", &pay, 8080, "/v1/charge");
                l7.lock().unwrap().push((Instant::now(), got));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut run = || -> Result<(Instant, Instant)> {
            std::thread::sleep(Duration::from_secs(1));
            let killed = Instant::now();
            c.nodes[0].agent.as_mut().context("agent 0")?.kill9();
            std::thread::sleep(Duration::from_secs(3));
            let restarted = Instant::now();
            c.start_agent(0)?;
            c.wait_node_ready(0, Duration::from_secs(20))?;
            std::thread::sleep(Duration::from_secs(2));
            Ok((killed, restarted))
        };
        let result = run();
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    stream.join().expect("stream thread")??;
    probe.join().expect("probe thread")?;

    let gap = max_gap_ms.load(Ordering::Relaxed);
    let n = answers.load(Ordering::Relaxed);
    let l7 = l7.into_inner().unwrap();
    let failed: Vec<Instant> = l7
        .iter()
        .filter(|(_, s)| *s != Some(200))
        .map(|(t, _)| *t)
        .collect();
    let first_ok_after = l7
        .iter()
        .find(|(t, s)| *t > restarted && *s == Some(200))
        .map(|(t, _)| *t);
    eprintln!(
        "restart: L3/L4 stream {n} answers, longest gap {gap} ms; L7: {} of {} requests failed, \
         the first allowed one {:?} after the kill ({:?} after the restart began); \
         {} denied probes, {} got through",
        failed.len(),
        l7.len(),
        first_ok_after.map(|t| t - killed),
        first_ok_after.map(|t| t - restarted),
        probes.load(Ordering::Relaxed),
        breaches.load(Ordering::Relaxed)
    );
    assert!(n > 50, "the stream ran ({n} answers)");
    assert!(gap < 1000, "the cross-node stream stalled {gap} ms");
    assert_eq!(
        breaches.load(Ordering::Relaxed),
        0,
        "a denied connection got through"
    );
    assert!(probes.load(Ordering::Relaxed) > 10);
    // L7 requests fail only while node 0's agent is down (a request that
    // started just before the kill may fail too), and pass again once it
    // is back.
    let first_ok_after = first_ok_after.context("no L7 request passed after the restart")?;
    for t in &failed {
        assert!(
            *t >= killed && *t <= first_ok_after,
            "an L7 request failed {:?} after the kill, outside the outage",
            *t - killed
        );
    }
    assert!(
        first_ok_after - restarted < Duration::from_secs(10),
        "the proxy took {:?} to serve again",
        first_ok_after - restarted
    );
    assert!(l7.iter().any(|(t, s)| *t < killed && *s == Some(200)));
    Ok(())
}
