//! `axoneme policy ...`: policy documents.

use std::io::Read as _;
use std::path::PathBuf;

use axoneme_policy::{parse_documents, PolicyKind};
use serde::Serialize;

use crate::error::CliError;
use crate::output::Render;

/// The verdict on one policy document.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub file: String,
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<PolicyKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<usize>,
    pub valid: bool,
    /// `path: message` per problem.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ValidateReport(pub Vec<Checked>);

impl ValidateReport {
    pub fn ok(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|c| c.valid)
    }
}

impl Render for ValidateReport {
    fn human(&self) -> String {
        let mut out = String::new();
        for c in &self.0 {
            if c.valid {
                out.push_str(&format!(
                    "{}: valid ({}, {} rule{})\n",
                    c.policy,
                    c.kind.map(PolicyKind::as_str).unwrap_or_default(),
                    c.rules.unwrap_or_default(),
                    if c.rules == Some(1) { "" } else { "s" }
                ));
            }
            for e in &c.errors {
                out.push_str(&format!("{}: {e}\n", c.policy));
            }
        }
        if self.0.is_empty() {
            out.push_str("no policy documents found\n");
        }
        out
    }
}

/// Parses and validates every document in `files` (`-` is standard input).
pub fn validate_files(files: &[PathBuf]) -> Result<ValidateReport, CliError> {
    let mut checked = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let text = if name == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|error| CliError::ReadFile {
                    path: name.clone(),
                    error,
                })?;
            s
        } else {
            std::fs::read_to_string(path).map_err(|error| CliError::ReadFile {
                path: name.clone(),
                error,
            })?
        };
        for result in parse_documents(&text) {
            checked.push(match result {
                Ok(p) => Checked {
                    file: name.clone(),
                    policy: p.name,
                    kind: Some(p.kind),
                    rules: Some(p.rules.len()),
                    valid: true,
                    errors: vec![],
                },
                Err(e) => Checked {
                    file: name.clone(),
                    policy: e.policy,
                    kind: None,
                    rules: None,
                    valid: false,
                    errors: e.errors.iter().map(|f| f.to_string()).collect(),
                },
            });
        }
    }
    Ok(ValidateReport(checked))
}
