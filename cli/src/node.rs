//! `axoneme node label`: a node's labels in standalone mode (Kubernetes
//! mode mirrors the Node's, and the operator owns them there). Host
//! policies' `nodeSelector` and `--encryption-node-selector` select by
//! them; the agents pick a change up at once.

use std::collections::BTreeMap;

use axoneme_identity::{Label, NodeLabels, Source};
use serde::Serialize;

use crate::error::CliError;
use crate::output::Render;
use crate::Ctx;

/// A node's labels after `node label`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLabelsView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl Render for NodeLabelsView {
    fn human(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "node {} labels: {}\n",
            self.name,
            if labels.is_empty() {
                "(none)".to_string()
            } else {
                labels.join(",")
            }
        )
    }
}

/// One change: `key=value` sets, `key-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set(String, String),
    Remove(String),
}

/// Parses `key=value` / `key-`, checking the label as selectors see it.
pub fn parse_change(arg: &str) -> Result<Change, CliError> {
    let bad = |why: String| CliError::InvalidArgument(format!("label {arg:?}: {why}"));
    let change = match (arg.split_once('='), arg.strip_suffix('-')) {
        (Some((k, v)), _) => Change::Set(k.to_string(), v.to_string()),
        (None, Some(k)) => Change::Remove(k.to_string()),
        (None, None) => return Err(bad("want KEY=VALUE to set or KEY- to remove".into())),
    };
    let (k, v) = match &change {
        Change::Set(k, v) => (k, v.as_str()),
        Change::Remove(k) => (k, ""),
    };
    Label::new(Source::K8s, k, v).map_err(|e| bad(e.to_string()))?;
    Ok(change)
}

/// Applies `changes` to node `name`'s stored labels.
pub async fn label(ctx: &Ctx, name: &str, changes: &[Change]) -> Result<NodeLabelsView, CliError> {
    let kv_err = |what: String| move |source| CliError::Kv { what, source };
    let key = ctx.layout.node_labels(name);
    let stored = ctx
        .kv
        .get(&key)
        .await
        .map_err(kv_err(format!("reading node {name}'s labels")))?;
    let mut labels = stored
        .and_then(|kv| serde_json::from_slice::<NodeLabels>(&kv.value).ok())
        .map(|l| l.labels)
        .unwrap_or_default();
    for c in changes {
        match c {
            Change::Set(k, v) => {
                labels.insert(k.clone(), v.clone());
            }
            Change::Remove(k) => {
                labels.remove(k);
            }
        }
    }
    let record = NodeLabels {
        name: name.to_string(),
        labels: labels.clone(),
    };
    let value = serde_json::to_vec(&record).expect("labels serialize");
    ctx.kv
        .put(&key, value, 0)
        .await
        .map_err(kv_err(format!("writing node {name}'s labels")))?;
    Ok(NodeLabelsView {
        name: name.to_string(),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_set_or_remove_and_bad_ones_are_named() {
        assert_eq!(
            parse_change("env=dev").unwrap(),
            Change::Set("env".into(), "dev".into())
        );
        assert_eq!(parse_change("env-").unwrap(), Change::Remove("env".into()));
        for bad in ["env", "b@d=x", "env=not valid"] {
            let e = parse_change(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
