//! The control plane's credentials: its PKI (a CA, serving and client
//! certificates, the ServiceAccount signing key) and the kubeconfigs that
//! use them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

use super::FIRST_SERVICE_IP;
use crate::tls::openssl;

/// The control plane's certificates and keys, made with the openssl CLI as
/// `crate::tls` does.
pub(super) struct Pki {
    pub(super) ca_cert: PathBuf,
    pub(super) apiserver_cert: PathBuf,
    pub(super) apiserver_key: PathBuf,
    pub(super) kcm_serving_cert: PathBuf,
    pub(super) kcm_serving_key: PathBuf,
    pub(super) admin_cert: PathBuf,
    pub(super) admin_key: PathBuf,
    pub(super) kcm_client_cert: PathBuf,
    pub(super) kcm_client_key: PathBuf,
    pub(super) sa_key: PathBuf,
    pub(super) sa_pub: PathBuf,
}

impl Pki {
    pub(super) fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=axoneme-kube-ca",
        ]);
        openssl(dir, &args)?;
        let issue = |name: &str, subj: &str, ext: &str| -> Result<()> {
            std::fs::write(dir.join(format!("{name}.ext")), ext)?;
            let (key, csr, crt, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", subj]);
            openssl(dir, &args)?;
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "30",
                    "-extfile",
                    &extfile,
                ],
            )
        };
        issue(
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:{FIRST_SERVICE_IP},\
                 DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
                 DNS:kubernetes.default.svc.cluster.local\n\
                 extendedKeyUsage=serverAuth\n"
            ),
        )?;
        issue(
            "kcm-serving",
            "/CN=kube-controller-manager",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        let client = "extendedKeyUsage=clientAuth\n";
        issue("admin", "/O=system:masters/CN=axoneme-admin", client)?;
        // The user RBAC's bootstrap policy grants the controller manager.
        issue("kcm-client", "/CN=system:kube-controller-manager", client)?;
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "sa.key",
            ],
        )?;
        openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(Pki {
            ca_cert: dir.join("ca.crt"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            kcm_serving_cert: dir.join("kcm-serving.crt"),
            kcm_serving_key: dir.join("kcm-serving.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            kcm_client_cert: dir.join("kcm-client.crt"),
            kcm_client_key: dir.join("kcm-client.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        })
    }
}

/// How a kubeconfig's user authenticates.
pub(super) enum Credentials<'a> {
    Cert { cert: &'a Path, key: &'a Path },
    Token(&'a str),
}

/// Writes a kubeconfig (as JSON, which is YAML) for one cluster and user.
pub(super) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    creds: Credentials<'_>,
    namespace: &str,
) -> Result<()> {
    let user_entry = match creds {
        Credentials::Cert { cert, key } => json!({
            "client-certificate": cert,
            "client-key": key,
        }),
        Credentials::Token(token) => json!({ "token": token }),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "axoneme",
            "cluster": { "server": server, "certificate-authority": ca },
        }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{
            "name": "axoneme",
            "context": { "cluster": "axoneme", "user": user, "namespace": namespace },
        }],
        "current-context": "axoneme",
    });
    std::fs::write(path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}
