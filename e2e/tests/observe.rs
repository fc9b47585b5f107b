//! Flows end to end, on the 2-node cluster with the seed scenario: the
//! agents' Hubble API names both ends of the intruder's dropped probes
//! (identities, labels, pods) and of checkout's 403s; `axoneme observe`
//! filters as Hubble does and `--follow` streams a new drop within a
//! second; `axoneme monitor` prints it as `cilium monitor` would; bad
//! filters and a missing agent fail in one line; and the real `hubble` CLI
//! (built by `cargo xtask setup` from Cilium's Go module) reads the same
//! flows from the same socket, and over TCP with mutual TLS. Under a flood
//! of denied packets the counters count every packet while flows are
//! shed, counted, and bounded.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axoneme_e2e::expect::seed_policy;
use axoneme_e2e::expect::wait_for;
use axoneme_e2e::{Cluster, ClusterConfig, CniPod, Proc};
use serde_json::Value;

/// The JSON lines of `axoneme observe -o json ...` on node `node`'s agent:
/// each a Hubble `GetFlowsResponse`.
fn observe(c: &Cluster, node: usize, filters: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec!["observe", "-o", "json", "--last", "1000"];
    args.extend_from_slice(filters);
    let out = c.cli(node, &args)?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// `hubble observe`'s filter for the intruder's drops, as JSON lines.
const INTRUDER_DROPS: [&str; 8] = [
    "--verdict",
    "DROPPED",
    "--from-pod",
    "default/intruder",
    "-o",
    "json",
    "--last",
    "1000",
];

fn has_label(ep: &Value, label: &str) -> bool {
    ep["labels"]
        .as_array()
        .is_some_and(|l| l.iter().any(|x| x == label))
}

/// Whether a flow is the intruder's probe of payments, dropped by policy.
fn intruder_drop(r: &Value, intruder: &CniPod, payments: &CniPod) -> bool {
    let f = &r["flow"];
    f["verdict"] == "DROPPED"
        && f["source"]["pod_name"] == "intruder"
        && f["destination"]["pod_name"] == "payments"
        && f["IP"]["source"] == intruder.ip.to_string().as_str()
        && f["IP"]["destination"] == payments.ip.to_string().as_str()
}

/// Waits for a line of `proc`'s output that satisfies `want`.
fn line_in(proc: &Proc, within: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Some(l) = proc.log_text().lines().find(|l| want(l)) {
            return Ok(l.to_string());
        }
        if start.elapsed() > within {
            bail!(
                "no such line within {within:?}; output:\n{}",
                proc.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn flows_name_both_ends_and_follow_streams_new_drops() -> Result<()> {
    let mut c = Cluster::start(&ClusterConfig::default())?;
    let axoneme_e2e::SeedPods {
        payments,
        checkout,
        intruder,
    } = c.seed_pods()?;
    let pay4 = payments.ip.to_string();
    let seed = seed_policy();
    c.import_policy(0, &seed)?;
    wait_for("the intruder blocked", Duration::from_secs(10), || {
        Ok(intruder.http("POST", &pay4, 8080, "/v1/charge").is_none())
    })?;
    assert_eq!(checkout.http("POST", &pay4, 8080, "/v1/charge"), Some(200));
    assert_eq!(checkout.http("GET", &pay4, 8080, "/v1/charge"), Some(403));
    assert_eq!(checkout.http("POST", &pay4, 8080, "/v1/refund"), Some(403));

    // The intruder's drop, on payments' node, with both ends named.
    let mut drops = Vec::new();
    wait_for(
        "the intruder's drop among the flows",
        Duration::from_secs(10),
        || {
            drops = observe(&c, 0, &["--verdict", "DROPPED", "--from-pod", "intruder"])?;
            Ok(drops.iter().any(|r| intruder_drop(r, &intruder, &payments)))
        },
    )?;
    let d = drops
        .iter()
        .find(|r| intruder_drop(r, &intruder, &payments))
        .expect("found above");
    let f = &d["flow"];
    assert!(f["source"]["identity"].as_u64().unwrap_or(0) >= 256, "{f}");
    assert!(
        f["destination"]["identity"].as_u64().unwrap_or(0) >= 256,
        "{f}"
    );
    assert_ne!(f["source"]["identity"], f["destination"]["identity"]);
    assert!(has_label(&f["source"], "k8s:app=intruder"), "{f}");
    assert!(has_label(&f["destination"], "k8s:app=payments"), "{f}");
    assert_eq!(f["source"]["namespace"], "default");
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(f["traffic_direction"], "INGRESS");
    assert_eq!(f["node_name"], c.nodes[0].name.as_str());
    assert_eq!(d["node_name"], c.nodes[0].name.as_str());
    assert_eq!(f["l4"]["TCP"]["destination_port"], 8080);
    // The filter kept only the intruder's dropped flows.
    for r in &drops {
        assert_eq!(r["flow"]["verdict"], "DROPPED", "{r}");
        assert_eq!(r["flow"]["source"]["pod_name"], "intruder", "{r}");
    }

    // checkout's connections traced as new flows: on payments' node
    // handed to the L7 proxy (redirected), on checkout's node leaving it.
    let traced = |node: usize, point: &str| -> Result<usize> {
        Ok(
            observe(&c, node, &["--type", "trace", "--from-pod", "checkout"])?
                .iter()
                .filter(|r| {
                    let f = &r["flow"];
                    f["trace_observation_point"] == point
                        && f["event_type"]["type"] == 4
                        && f["destination"]["pod_name"] == "payments"
                        && f["l4"]["TCP"]["destination_port"] == 8080
                })
                .count(),
        )
    };
    wait_for("checkout's flows traced", Duration::from_secs(10), || {
        Ok(traced(0, "TO_PROXY")? >= 3 && traced(1, "FROM_ENDPOINT")? >= 3)
    })?;
    // Handed to the proxy: redirected. The proxy's own connection to
    // payments keeps checkout's address (transparent) and is delivered:
    // traced to the endpoint, forwarded.
    for r in observe(&c, 0, &["--type", "trace", "--from-pod", "checkout"])? {
        let f = &r["flow"];
        let want = match f["trace_observation_point"].as_str() {
            Some("TO_PROXY") => "REDIRECTED",
            Some("TO_ENDPOINT") => "FORWARDED",
            other => panic!("checkout traced at {other:?} on payments' node: {f}"),
        };
        assert_eq!(f["verdict"], want, "{f}");
    }

    // checkout's two 403s, as L7 flows with the request.
    let denied = observe(&c, 0, &["--protocol", "http", "--http-status", "4+"])?;
    let mut seen: Vec<(String, String)> = denied
        .iter()
        .map(|r| {
            let h = &r["flow"]["l7"]["http"];
            assert_eq!(h["code"], 403, "{r}");
            assert_eq!(r["flow"]["source"]["pod_name"], "checkout", "{r}");
            assert_eq!(r["flow"]["Type"], "L7", "{r}");
            (
                h["method"].as_str().unwrap_or("").to_string(),
                h["url"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("GET".to_string(), format!("http://{pay4}:8080/v1/charge")),
            ("POST".to_string(), format!("http://{pay4}:8080/v1/refund")),
        ]
    );
    // Filters combine as Hubble's do: fields AND, either-side flags OR.
    let post_denied = observe(&c, 0, &["--http-method", "POST", "--http-status", "403"])?;
    assert_eq!(post_denied.len(), 1, "{post_denied:?}");
    let checkout_any = observe(&c, 0, &["--pod", "checkout", "--protocol", "http"])?;
    assert_eq!(checkout_any.len(), 3, "{checkout_any:?}");

    // The pipeline counts what it turned into flows (Hubble's family).
    let text = c.agent_metrics(0)?;
    let count = |labels: &str| -> f64 {
        let series = format!("axoneme_hubble_flows_processed_total{{{labels}}} ");
        axoneme_e2e::cluster::sum_samples(&text, &series)
    };
    assert!(
        count(r#"type="L3_L4",subtype="drop",verdict="DROPPED""#) >= 1.0,
        "{text}"
    );
    assert_eq!(
        count(r#"type="L7",subtype="http",verdict="DROPPED""#),
        2.0,
        "{text}"
    );
    assert_eq!(
        count(r#"type="L7",subtype="http",verdict="FORWARDED""#),
        1.0,
        "{text}"
    );

    // The table names the pods.
    let table = c.cli(0, &["observe", "--from-pod", "intruder", "--last", "1"])?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("TIMESTAMP"), "{table}");
    assert!(table.contains("default/intruder:"), "{table}");
    assert!(table.contains("default/payments:8080"), "{table}");

    // --follow streams a new drop within a second of the probe.
    let dir = &c.dir;
    let follow = Proc::spawn(
        "observe-follow",
        c.cli_command(
            0,
            &[
                "observe",
                "-f",
                "--from-pod",
                "intruder",
                "--verdict",
                "DROPPED",
                "-o",
                "json",
            ],
        ),
        &dir.join("observe-follow.log"),
    )?;
    let monitor = Proc::spawn(
        "monitor",
        c.cli_command(
            0,
            &["monitor", "--type", "drop", "--related-to", "intruder"],
        ),
        &dir.join("monitor.log"),
    )?;
    // Both subscribed before the probe (the stream then starts with nothing).
    std::thread::sleep(Duration::from_millis(500));
    assert!(follow.log_text().is_empty(), "{}", follow.log_text());
    let sent = Instant::now();
    let (i2, p2) = (&intruder, pay4.clone());
    std::thread::scope(|s| -> Result<()> {
        s.spawn(move || i2.http("POST", &p2, 8080, "/v1/charge"));
        let line = line_in(&follow, Duration::from_secs(1), |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|r| intruder_drop(&r, &intruder, &payments))
        })?;
        let took = sent.elapsed();
        eprintln!("follow: the drop streamed {took:?} after the probe was sent");
        assert!(
            took < Duration::from_secs(1),
            "streamed after {took:?}: {line}"
        );
        let m = line_in(&monitor, Duration::from_secs(2), |l| {
            l.contains(&intruder.ip.to_string())
        })?;
        assert!(m.starts_with("xx drop (POLICY_DENIED) ifindex "), "{m}");
        assert!(m.contains(":8080"), "{m}");
        Ok(())
    })?;
    drop((follow, monitor));

    // Bad input: one line naming it, exit 2, before any connection.
    let out = c
        .cli_command(0, &["observe", "--from-ip", "10.0.0.300"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("invalid filter source_ip \"10.0.0.300\""),
        "{err}"
    );
    // No agent there: one line within the timeout, exit 3.
    let start = Instant::now();
    let out = c
        .cli_command(
            0,
            &[
                "--timeout",
                "1s",
                "observe",
                "--hubble-socket",
                "/nonexistent/hubble.sock",
            ],
        )
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/hubble.sock"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));

    // The real Hubble CLI against the same socket.
    let hubble = axoneme_e2e::hubble::binary();
    let socket = c.nodes[0].socket.with_file_name("hubble.sock");
    let out = std::process::Command::new(&hubble)
        .args([
            "observe",
            "--server",
            &format!("unix://{}", socket.display()),
        ])
        .args(INTRUDER_DROPS)
        .output()
        .with_context(|| format!("running {} (cargo xtask setup builds it)", hubble.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hubble observe: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<_>>()?;
    assert!(
        flows.iter().any(|r| intruder_drop(r, &intruder, &payments)),
        "hubble observe did not list the intruder's drop:\n{text}"
    );
    let status = std::process::Command::new(&hubble)
        .args([
            "status",
            "--server",
            &format!("unix://{}", socket.display()),
        ])
        .output()?;
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "hubble status: {status_text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(status_text.contains("Flows"), "{status_text}");
    Ok(())
}

/// Sums the samples of `family{labels}` in an agent's `/metrics`.
fn agent_sample(c: &Cluster, node: usize, series: &str) -> Result<f64> {
    let text = c.agent_metrics(node)?;
    Ok(axoneme_e2e::cluster::sum_samples(
        &text,
        &format!("{series} "),
    ))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// A flood of denied packets with the datapath's event limit lifted and a
/// tiny queue and ring: the datapath's counters still count every packet,
/// the queue's overflow is counted as lost, the ring keeps only its newest
/// flows, and the agent's memory stays bounded.
#[test]
fn an_event_flood_is_counted_bounded_and_lossy_only_in_flows() -> Result<()> {
    let config = ClusterConfig {
        agent_args: [
            "--event-rate",
            "1000000",
            "--event-burst",
            "1000000",
            "--hubble-event-queue-size",
            "256",
            "--hubble-event-buffer-capacity",
            "64",
        ]
        .map(String::from)
        .to_vec(),
        ..ClusterConfig::default()
    };
    let c = Cluster::start(&config)?;
    let payments = c.add_pod(0, "payments", &[("app", "payments")])?;
    let intruder = c.add_pod(1, "intruder", &[("app", "intruder")])?;
    let seed = seed_policy();
    c.import_policy(0, &seed)?;
    wait_for("the intruder blocked", Duration::from_secs(10), || {
        Ok(intruder
            .http("GET", &payments.ip.to_string(), 8080, "/")
            .is_none())
    })?;
    const DENIED: &str = r#"axoneme_drop_count_total{reason="Policy denied",direction="INGRESS"}"#;
    const LOST: &str = r#"axoneme_hubble_lost_events_total{source="observer_events_queue"}"#;
    let before = agent_sample(&c, 0, DENIED)?;
    let pid = c.nodes[0].agent.as_ref().context("agent 0")?.pid();
    let rss_before = rss_kib(pid)?;

    // 100,000 UDP datagrams to a port nobody may reach, as fast as one
    // socket sends them from the intruder's namespace.
    const PACKETS: u64 = 100_000;
    let target = std::net::SocketAddr::new(payments.ip.into(), 9999);
    let started = Instant::now();
    intruder.ns.enter(|| -> Result<()> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let payload = [0u8; 32];
        let mut sent = 0;
        while sent < PACKETS {
            match s.send_to(&payload, target) {
                Ok(_) => sent += 1,
                // A full socket buffer: let the kernel drain it.
                Err(e) if e.raw_os_error() == Some(libc_enobufs()) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })??;
    let rate = PACKETS as f64 / started.elapsed().as_secs_f64();

    // Every packet counted by the datapath, whatever happened to events.
    wait_for("every packet counted", Duration::from_secs(10), || {
        Ok(agent_sample(&c, 0, DENIED)? - before >= PACKETS as f64)
    })
    .with_context(|| format!("sent at {rate:.0}/s"))?;
    // The queue overflowed and said so; the ring kept its newest 64.
    wait_for("lost events counted", Duration::from_secs(10), || {
        Ok(agent_sample(&c, 0, LOST)? > 0.0)
    })?;
    let hubble = axoneme_e2e::hubble::binary();
    let socket = c.nodes[0].socket.with_file_name("hubble.sock");
    let out = std::process::Command::new(&hubble)
        .args([
            "status",
            "-o",
            "json",
            "--server",
            &format!("unix://{}", socket.display()),
        ])
        .output()?;
    let status: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("hubble status: {}", String::from_utf8_lossy(&out.stderr)))?;
    // Hubble's JSON writes 64-bit numbers as strings.
    let num = |k: &str| {
        status[k]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(num("max_flows"), 64, "{status}");
    assert_eq!(num("num_flows"), 64, "{status}");
    assert!(num("seen_flows") > 64, "{status}");
    let grown = rss_kib(pid)?.saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "the agent grew by {grown} KiB under the flood"
    );
    eprintln!(
        "flood: {PACKETS} packets at {rate:.0}/s; lost events {}; seen flows {}; RSS +{grown} KiB",
        agent_sample(&c, 0, LOST)?,
        num("seen_flows")
    );
    Ok(())
}

/// ENOBUFS: a datagram socket's send buffer is full.
fn libc_enobufs() -> i32 {
    105
}

/// Hubble's API on TCP (`--hubble-listen-address :4244`) with mutual TLS:
/// the real `hubble` CLI inside node 0's namespace lists the intruder's
/// drop with the CA and a client certificate; without a client
/// certificate, and in clear text, it gets nothing.
#[test]
fn the_hubble_api_on_tcp_takes_mutual_tls_only() -> Result<()> {
    let certs_dir = tempfile::tempdir()?;
    let certs = axoneme_e2e::tls::TestCerts::generate(certs_dir.path())?;
    let path = |p: &std::path::Path| p.display().to_string();
    let mut c = Cluster::start(&ClusterConfig {
        agent_args: vec![
            "--hubble-listen-address".into(),
            ":4244".into(),
            "--hubble-tls-cert-file".into(),
            path(&certs.server_cert),
            "--hubble-tls-key-file".into(),
            path(&certs.server_key),
            "--hubble-tls-client-ca-files".into(),
            path(&certs.ca_cert),
        ],
        ..ClusterConfig::default()
    })?;
    let axoneme_e2e::SeedPods {
        payments, intruder, ..
    } = c.seed_pods()?;
    let pay4 = payments.ip.to_string();
    c.import_policy(0, &seed_policy())?;
    wait_for("the intruder blocked", Duration::from_secs(10), || {
        Ok(intruder.http("POST", &pay4, 8080, "/v1/charge").is_none())
    })?;

    let hubble = axoneme_e2e::hubble::binary();
    let hubble = hubble.to_str().context("UTF-8 path")?;
    let observe = |tls: &[&str]| -> Result<std::process::Output> {
        let mut args = vec![
            hubble,
            "observe",
            "--server",
            "127.0.0.1:4244",
            "--timeout",
            "5s",
        ];
        args.extend_from_slice(&INTRUDER_DROPS);
        args.extend_from_slice(tls);
        Ok(c.nodes[0].ns.command(&args).output()?)
    };
    let (ca, cert, key) = (
        path(&certs.ca_cert),
        path(&certs.client_cert),
        path(&certs.client_key),
    );
    let mutual = [
        "--tls",
        "--tls-ca-cert-files",
        &ca,
        "--tls-client-cert-file",
        &cert,
        "--tls-client-key-file",
        &key,
    ];
    let mut listed = String::new();
    wait_for("hubble over mutual TLS", Duration::from_secs(10), || {
        let out = observe(&mutual)?;
        listed = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(out.status.success()
            && listed.lines().any(|l| {
                serde_json::from_str::<Value>(l)
                    .is_ok_and(|r| intruder_drop(&r, &intruder, &payments))
            }))
    })
    .with_context(|| format!("hubble observe over TLS listed: {listed}"))?;

    for (what, tls) in [
        (
            "no client certificate",
            &["--tls", "--tls-ca-cert-files", &ca][..],
        ),
        ("clear text", &[][..]),
    ] {
        let out = observe(tls)?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && !text.contains("intruder"),
            "{what}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
