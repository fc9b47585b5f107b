//! The managed etcd's members found through the API server, not cluster
//! DNS. The chart names them `https://axoneme-etcd-N.axoneme-etcd.NS.svc:2379`;
//! resolving that needs CoreDNS, whose pods need pod networking, which
//! needs the agents, which need etcd: on a new cluster nobody would start.
//! So in Kubernetes mode the agent and the operator ask the API server
//! (reachable without DNS) for the member's Pod — a StatefulSet member's
//! name is its hostname — and connect to its address (the node's: the
//! members run on the host network). TLS still checks the DNS name: the
//! certificate names the members, not their addresses.

use std::future::Future;

use k8s_openapi::api::core::v1::Pod;

/// A client URL naming a StatefulSet member through its headless Service:
/// `<member>.<service>.<namespace>.svc[.cluster.local]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub scheme: String,
    pub pod: String,
    pub service: String,
    pub namespace: String,
    pub port: Option<u16>,
    /// The host as written (the name TLS checks).
    pub host: String,
}

impl Member {
    /// Parses `url`; `None` when it is not a member's `.svc` name (an IP,
    /// or an external DNS name left to the system resolver).
    pub fn parse(url: &str) -> Option<Member> {
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split('/').next()?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p.parse().ok()?)),
            _ => (authority, None),
        };
        let trimmed = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))?;
        let labels: Vec<&str> = trimmed.split('.').collect();
        let [pod, service, namespace] = labels[..] else {
            return None;
        };
        Some(Member {
            scheme: scheme.to_string(),
            pod: pod.to_string(),
            service: service.to_string(),
            namespace: namespace.to_string(),
            port,
            host: host.to_string(),
        })
    }

    /// The URL with the host replaced by `ip`.
    fn with_ip(&self, ip: &str) -> String {
        let ip = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        match self.port {
            Some(p) => format!("{}://{ip}:{p}", self.scheme),
            None => format!("{}://{ip}", self.scheme),
        }
    }
}

/// The endpoints with every member name replaced by its Pod's address,
/// and the name TLS must check (the given one, else the first member's
/// name). `lookup(namespace, pod)` fetches a Pod. A member whose Pod is
/// missing, is not that Service's member, or has no address yet is an
/// error naming it: the caller retries or fails; it never guesses.
pub async fn members<F, Fut>(
    endpoints: &[String],
    server_name: Option<String>,
    lookup: F,
) -> Result<(Vec<String>, Option<String>), String>
where
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = Result<Option<Pod>, String>>,
{
    let mut out = Vec::with_capacity(endpoints.len());
    let mut name = server_name;
    for e in endpoints {
        let Some(m) = Member::parse(e) else {
            out.push(e.clone());
            continue;
        };
        let what = format!("etcd member {} (Pod {}/{})", m.host, m.namespace, m.pod);
        let pod = lookup(m.namespace.clone(), m.pod.clone())
            .await
            .map_err(|err| format!("{what}: {err}"))?
            .ok_or_else(|| format!("{what}: no such Pod"))?;
        let spec = pod.spec.unwrap_or_default();
        if spec.subdomain.as_deref() != Some(m.service.as_str()) {
            return Err(format!(
                "{what}: the Pod is not a member of Service {} (its subdomain is {:?})",
                m.service, spec.subdomain
            ));
        }
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| format!("{what}: the Pod has no address yet"))?;
        out.push(m.with_ip(&ip));
        name.get_or_insert(m.host);
    }
    Ok((out, name))
}

/// [`members`] with Pods read from the API server.
pub async fn members_from_api(
    client: &kube::Client,
    endpoints: &[String],
    server_name: Option<String>,
) -> Result<(Vec<String>, Option<String>), String> {
    members(endpoints, server_name, |ns, pod| {
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
        async move { api.get_opt(&pod).await.map_err(|e| e.to_string()) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};

    fn pod(subdomain: &str, ip: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                subdomain: Some(subdomain.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        // No runtime needed: the lookups below are ready at once.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn member_names_parse_and_others_are_left_alone() {
        let m = Member::parse("https://axoneme-etcd-1.axoneme-etcd.kube-system.svc:2379").unwrap();
        assert_eq!(
            (
                m.pod.as_str(),
                m.service.as_str(),
                m.namespace.as_str(),
                m.port
            ),
            ("axoneme-etcd-1", "axoneme-etcd", "kube-system", Some(2379))
        );
        assert_eq!(m.with_ip("10.0.0.7"), "https://10.0.0.7:2379");
        assert_eq!(m.with_ip("fd00::7"), "https://[fd00::7]:2379");
        let m = Member::parse("http://e-0.e.ns.svc.cluster.local").unwrap();
        assert_eq!((m.pod.as_str(), m.port), ("e-0", None));
        for other in [
            "https://10.0.0.1:2379",
            "https://etcd.example.com:2379",
            "https://axoneme-etcd.kube-system.svc:2379",
            "http://[fd00::1]:2379",
            "not a url",
        ] {
            assert_eq!(Member::parse(other), None, "{other}");
        }
    }

    #[test]
    fn members_become_their_pods_addresses_and_tls_keeps_the_name() {
        let endpoints = vec![
            "https://e-0.e.ns.svc:2379".to_string(),
            "https://10.1.1.1:2379".to_string(),
        ];
        let got = block_on(members(&endpoints, None, |ns, name| async move {
            assert_eq!((ns.as_str(), name.as_str()), ("ns", "e-0"));
            Ok(Some(pod("e", Some("192.0.2.10"))))
        }))
        .unwrap();
        assert_eq!(
            got,
            (
                vec![
                    "https://192.0.2.10:2379".to_string(),
                    "https://10.1.1.1:2379".to_string()
                ],
                Some("e-0.e.ns.svc".to_string())
            )
        );
        // A name given by flag wins.
        let got = block_on(members(&endpoints, Some("etcd".into()), |_, _| async {
            Ok(Some(pod("e", Some("192.0.2.10"))))
        }))
        .unwrap();
        assert_eq!(got.1.as_deref(), Some("etcd"));
    }

    #[test]
    fn what_cannot_be_resolved_is_named() {
        let endpoints = vec!["https://e-0.e.ns.svc:2379".to_string()];
        for (answer, want) in [
            (Ok(None), "no such Pod"),
            (
                Ok(Some(pod("other", Some("192.0.2.1")))),
                "not a member of Service e",
            ),
            (Ok(Some(pod("e", None))), "has no address yet"),
            (Err("forbidden".to_string()), ": forbidden"),
        ] {
            let e = block_on(members(&endpoints, None, |_, _| {
                let answer = answer.clone();
                async move { answer }
            }))
            .unwrap_err();
            assert!(
                e.starts_with("etcd member e-0.e.ns.svc (Pod ns/e-0)") && e.contains(want),
                "{e}"
            );
        }
    }
}
