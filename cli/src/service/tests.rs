use super::store::diagnose;
use super::*;
use crate::output::{render, OutputFormat};

const PAYMENTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: payments}
spec:
  type: NodePort
  clusterIPs: [10.96.0.10, \"fd00:96::10\"]
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
endpoints:
- {addresses: [10.200.0.11], nodeName: node-a}
- {addresses: [10.200.0.12], nodeName: node-b, conditions: {ready: false}}
";

fn files(contents: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = contents
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let p = dir.path().join(format!("s{i}.yaml"));
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    (dir, paths)
}

fn human<T: Render>(v: &T) -> String {
    render(v, OutputFormat::Table).unwrap()
}

#[test]
fn valid_files() {
    let (_dir, paths) = files(&[PAYMENTS]);
    let (report, services) = check_files(&paths).unwrap();
    assert!(report.ok());
    assert_eq!(services.len(), 1);
    let file = paths[0].display().to_string();
    assert_eq!(
        human(&report),
        format!("{file}: default/payments: valid (NodePort, 4 frontends, 2 backends)\n")
    );
    let json: serde_json::Value =
        serde_json::from_str(&render(&report, OutputFormat::Json).unwrap()).unwrap();
    assert_eq!(json[0]["service"], "default/payments");
    assert_eq!(json[0]["type"], "NodePort");
    assert_eq!(json[0]["valid"], true);
}

#[test]
fn every_error_of_every_file_one_line_each() {
    let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
               spec: {clusterIP: 10.96.0.2, ports: [{name: a, port: 80}, {name: b, port: 0}]}\n";
    let worse = "kind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.96.0.3, prots: []}\n";
    let (_dir, paths) = files(&[PAYMENTS, bad, worse]);
    let (report, _) = check_files(&paths).unwrap();
    assert!(!report.ok());
    let (f1, f2) = (paths[1].display(), paths[2].display());
    let text = human(&report);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1..],
        [
            format!("{f1}: default/web: spec.ports[1].port: must be 1-65535"),
            format!("{f2}: default/x: apiVersion: is required (v1)"),
            format!(
                "{f2}: default/x: spec.prots: unknown field (known here: type, clusterIP, \
                 clusterIPs, ipFamilies, ipFamilyPolicy, ports, externalIPs, loadBalancerIPs, \
                 sessionAffinity, sessionAffinityConfig, externalTrafficPolicy, \
                 internalTrafficPolicy)"
            ),
            format!("{f2}: default/x: spec.ports: a service needs at least one port"),
        ]
    );
}

#[test]
fn create_and_update_fail_with_every_problem() {
    let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
               spec: {clusterIP: 10.96.0.2, ports: [{name: a, port: 80}, {name: b, port: 0}]}\n";
    let (_dir, paths) = files(&[bad]);
    let f = paths[0].display();
    let e = CliError::InvalidServices(check_files(&paths).unwrap().0.problems());
    assert_eq!(e.exit_code(), crate::error::exit::FAILED);
    assert_eq!(
        crate::error_line(&e),
        format!("{f}: default/web: spec.ports[1].port: must be 1-65535 (nothing written)")
    );
    let worse = bad.replace("port: 80}", "port: 80, protocol: tcp}");
    let (_dir, paths) = files(&[&worse]);
    let f = paths[0].display();
    let e = CliError::InvalidServices(check_files(&paths).unwrap().0.problems());
    assert_eq!(
        e.to_string(),
        format!(
            "2 problems in the service documents, nothing written:\n  \
             {f}: default/web: spec.ports[0].protocol: \"tcp\" is not one of TCP, UDP, SCTP\n  \
             {f}: default/web: spec.ports[1].port: must be 1-65535"
        )
    );
    let (_dir, paths) = files(&[""]);
    assert_eq!(
        check_files(&paths).unwrap().0.problems(),
        ["no Service documents found"]
    );
}

#[test]
fn conflicts_across_files_and_empty_input() {
    let other = PAYMENTS.replace("payments", "other");
    let (_dir, paths) = files(&[PAYMENTS, &other]);
    let (report, _) = check_files(&paths).unwrap();
    assert!(!report.ok());
    let text = human(&report);
    assert!(
        text.contains(": default/other: spec.clusterIPs[0]: 10.96.0.10 is also the cluster IP of default/payments\n"),
        "{text}"
    );
    let (_dir, paths) = files(&["# nothing\n"]);
    let (report, _) = check_files(&paths).unwrap();
    assert!(!report.ok());
    assert_eq!(human(&report), "no Service documents found\n");
    let e = check_files(&[PathBuf::from("/nonexistent/s.yaml")]).unwrap_err();
    assert_eq!(e.exit_code(), crate::error::exit::INVALID_INPUT);
}

fn payments() -> ServiceRecord {
    axoneme_service::parse_documents(PAYMENTS)
        .unwrap()
        .remove(0)
}

#[test]
fn list_and_get_render() {
    let list = ServiceList(vec![ServiceView::of(&payments(), 7, false)]);
    assert_eq!(
        human(&list),
        "NAMESPACE   NAME       TYPE       FRONTENDS                                                          BACKENDS   NODE\n\
         default     payments   NodePort   10.96.0.10:80/TCP,[fd00:96::10]:80/TCP,*:30080/TCP,[*]:30080/TCP   1/2        -\n"
    );
    // With the agent asked, NODE is programmed/frontends on this node.
    let mut seen = ServiceView::of(&payments(), 7, false);
    seen.node = Some("4/4".into());
    assert!(human(&ServiceList(vec![seen]))
        .lines()
        .nth(1)
        .unwrap()
        .ends_with("1/2        4/4"),);
    assert_eq!(human(&ServiceList(vec![])), "No services found.\n");
    let json: serde_json::Value =
        serde_json::from_str(&render(&list, OutputFormat::Json).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "namespace": "default", "name": "payments", "type": "NodePort",
            "frontends": ["10.96.0.10:80/TCP", "[fd00:96::10]:80/TCP", "*:30080/TCP", "[*]:30080/TCP"],
            "backends": {"active": 1, "total": 2}, "revision": 7
        }])
    );

    let view = ServiceView::of(&payments(), 7, true);
    let text = human(&view);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>()[..4],
        ["FRONTEND", "KIND", "PORT", "OPTIONS"]
    );
    assert_eq!(
        lines[4],
        "10.96.0.10:80/TCP      ClusterIP   http   affinity ClientIP 10800s   \
         10.200.0.11:8080 (node-a), 10.200.0.12:8080 (node-b, not ready)"
    );
    assert!(lines[5].starts_with("[fd00:96::10]:80/TCP   ClusterIP   http"));
    assert!(lines[5].ends_with("none"));
    assert!(lines[6].starts_with("*:30080/TCP            NodePort    http"));
    let json: serde_json::Value =
        serde_json::from_str(&render(&view, OutputFormat::Json).unwrap()).unwrap();
    assert_eq!(json["record"]["spec"]["clusterIPs"][1], "fd00:96::10");
    assert_eq!(json["resolved"][2]["kind"], "NodePort");
    assert_eq!(json["resolved"][2]["addr"], "0.0.0.0");
    assert_eq!(json["resolved"][0]["backends"][1]["state"], "NotReady");
    // Back to the model: what `get -o json` prints is the stored record.
    let back: ServiceRecord = serde_json::from_value(json["record"].clone()).unwrap();
    assert_eq!(back, payments());
}

fn kv(key: &str, value: &[u8], mod_revision: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.to_vec(),
        create_revision: mod_revision,
        mod_revision,
        version: 1,
        lease: 0,
    }
}

#[test]
fn a_failed_write_is_explained() {
    let services = vec![FromFile {
        file: "f".into(),
        record: payments(),
    }];
    let ours = serde_json::to_vec(&payments()).unwrap();
    let writes = vec![("k".to_string(), ours.clone())];
    // Create: the key exists with another value, or was written by someone
    // else at the same time.
    let e = diagnose(
        &services,
        &writes,
        &[vec![kv("k", b"{}", 12)]],
        10,
        Mode::Create,
    );
    assert!(matches!(e, Err(CliError::ServiceExists(id)) if id == "default/payments"));
    // Update: the key is gone.
    let e = diagnose(&services, &writes, &[vec![]], 10, Mode::Update);
    assert!(matches!(e, Err(CliError::ServiceNotFound(_))));
    // Update: the key is there, so another service changed.
    let e = diagnose(
        &services,
        &writes,
        &[vec![kv("k", b"{}", 9)]],
        10,
        Mode::Update,
    );
    assert!(matches!(e, Err(CliError::ServicesChanged(10))));
    // Our own write, committed by an attempt whose answer was lost.
    assert_eq!(
        diagnose(
            &services,
            &writes,
            &[vec![kv("k", &ours, 11)]],
            10,
            Mode::Create
        )
        .unwrap(),
        11
    );
    // The same value, but from before the read: not ours.
    let e = diagnose(
        &services,
        &writes,
        &[vec![kv("k", &ours, 9)]],
        10,
        Mode::Create,
    );
    assert!(matches!(e, Err(CliError::ServiceExists(_))));
}

#[test]
fn names_given_on_the_command_line() {
    assert!(check_ref("default", "payments").is_ok());
    let e = check_ref("default", "Payments").unwrap_err();
    assert_eq!(e.exit_code(), crate::error::exit::INVALID_INPUT);
    assert!(
        e.to_string()
            .starts_with("invalid service name \"Payments\""),
        "{e}"
    );
    assert!(check_namespace("a_b").is_err());
}
