//! Connection settings, shared by every binary through `KvArgs`.

use std::path::PathBuf;
use std::time::Duration;

use crate::{KvError, Result};

/// How to reach the etcd cluster.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// Per attempt, on one member.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a call keeps retrying across members before it fails.
    pub retry_deadline: Duration,
}

impl KvConfig {
    /// The name TLS checks in the members' certificates, if one is set.
    pub fn server_name(&self) -> Option<String> {
        self.tls.as_ref().and_then(|t| t.domain.clone())
    }

    /// Replaces the members' URLs (e.g. names resolved to addresses),
    /// keeping TLS on `server_name`, the name the certificates carry.
    pub fn set_members(&mut self, endpoints: Vec<String>, server_name: Option<String>) {
        self.endpoints = endpoints;
        if let Some(tls) = &mut self.tls {
            tls.domain = server_name;
        }
    }

    pub fn new(endpoints: Vec<String>) -> Self {
        KvConfig {
            endpoints,
            tls: None,
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            retry_deadline: Duration::from_secs(30),
        }
    }

    /// Checks endpoints and TLS settings without connecting.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(KvError::NoEndpoints);
        }
        for ep in &self.endpoints {
            let rest = ep
                .strip_prefix("http://")
                .or_else(|| ep.strip_prefix("https://"))
                .ok_or_else(|| {
                    KvError::Config(format!(
                        "endpoint {ep:?} must start with http:// or https://"
                    ))
                })?;
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
                KvError::Config(format!(
                    "endpoint {ep:?} has no port (want scheme://host:port)"
                ))
            })?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(KvError::Config(format!(
                    "endpoint {ep:?}: {port:?} is not a valid host:port"
                )));
            }
            if ep.starts_with("https://") && self.tls.is_none() {
                return Err(KvError::Config(format!(
                    "endpoint {ep:?} uses https but no --etcd-ca was given"
                )));
            }
        }
        if self.tls.is_some() && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(KvError::Config(
                "TLS files given but an endpoint uses http://; use https:// for every member"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// PEM files for mutual TLS with etcd (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to check in the server certificate; defaults to the endpoint host.
    pub domain: Option<String>,
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    let data = std::fs::read(path).map_err(|error| KvError::TlsFile {
        path: path.display().to_string(),
        error,
    })?;
    if !data.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(KvError::Config(format!(
            "{} is not a PEM {what} (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(data)
}

impl TlsFiles {
    /// The files as flags name them, for messages (paths only: never what
    /// the files hold).
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("--etcd-ca {}", self.ca.display())];
        if let Some(cert) = &self.cert {
            parts.push(format!("--etcd-cert {}", cert.display()));
        }
        if let Some(key) = &self.key {
            parts.push(format!("--etcd-key {}", key.display()));
        }
        parts.join(", ")
    }

    pub(crate) fn load(&self) -> Result<etcd_client::TlsOptions> {
        use etcd_client::{Certificate, Identity, TlsOptions};
        let mut tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read_pem(&self.ca, "CA certificate")?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read_pem(cert, "certificate")?,
                    read_pem(key, "private key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(KvError::Config(
                    "--etcd-cert and --etcd-key must be given together".into(),
                ))
            }
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }
}

/// Command-line flags for the etcd connection, flattened into every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct KvArgs {
    /// etcd members, comma separated (scheme://host:port).
    #[arg(
        long = "etcd-endpoints",
        env = "AXONEME_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) that signed the etcd members' certificates.
    #[arg(long = "etcd-ca", env = "AXONEME_ETCD_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd --client-cert-auth.
    #[arg(long = "etcd-cert", env = "AXONEME_ETCD_CERT")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long = "etcd-key", env = "AXONEME_ETCD_KEY")]
    pub key: Option<PathBuf>,
    /// Server name to verify in the members' certificates.
    #[arg(long = "etcd-server-name", env = "AXONEME_ETCD_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Timeout of one request to one member, in milliseconds.
    #[arg(
        long = "etcd-request-timeout-ms",
        env = "AXONEME_ETCD_REQUEST_TIMEOUT_MS",
        default_value_t = 3000
    )]
    pub request_timeout_ms: u64,
    /// How long a request keeps retrying across members, in seconds.
    #[arg(
        long = "etcd-retry-deadline-s",
        env = "AXONEME_ETCD_RETRY_DEADLINE_S",
        default_value_t = 30
    )]
    pub retry_deadline_s: u64,
}

impl KvArgs {
    pub fn to_config(&self) -> Result<KvConfig> {
        let tls = match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => None,
            (None, _, _) => {
                return Err(KvError::Config(
                    "--etcd-cert/--etcd-key need --etcd-ca".into(),
                ))
            }
            (Some(ca), cert, key) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                domain: self.server_name.clone(),
            }),
        };
        let mut config = KvConfig::new(
            self.endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
        );
        config.tls = tls;
        config.request_timeout = Duration::from_millis(self.request_timeout_ms.max(1));
        config.retry_deadline = Duration::from_secs(self.retry_deadline_s);
        config.validate()?;
        Ok(config)
    }
}
