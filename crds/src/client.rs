//! The API client the agent and the operator build in Kubernetes mode, and
//! the etcd members they find through it before connecting to etcd
//! ([`crate::resolve`]).

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client for `kubeconfig`, or the environment's (`KUBECONFIG`,
/// `~/.kube/config`, then the in-cluster service account).
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    Client::try_from(config(kubeconfig).await?).context("--kubernetes: building the API client")
}

/// The API server's URL, as [`connect`] finds it.
pub async fn api_server_url(kubeconfig: Option<&Path>) -> anyhow::Result<String> {
    Ok(config(kubeconfig).await?.cluster_url.to_string())
}

async fn config(kubeconfig: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("--kubernetes: no --kubeconfig, KUBECONFIG or in-cluster config")?,
    })
}

/// [`connect`], then etcd's `endpoints` with the managed etcd's member
/// names replaced by their Pods' addresses, and the name TLS must check.
pub async fn connect_and_find_etcd(
    kubeconfig: Option<&Path>,
    endpoints: &[String],
    server_name: Option<String>,
) -> anyhow::Result<(Client, Vec<String>, Option<String>)> {
    let client = connect(kubeconfig).await?;
    let (members, name) = crate::resolve::members_from_api(&client, endpoints, server_name)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((client, members, name))
}
