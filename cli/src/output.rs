//! Output of every command: an aligned table (like `kubectl get`), JSON or YAML.
//!
//! A command returns a value that is both `Serialize` (for `-o json|yaml`)
//! and `Render` (for the default human form); `render` picks the form.

use std::fmt::Write as _;

use serde::Serialize;

use crate::error::CliError;

/// `-o/--output` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header line.
    #[default]
    Table,
    /// JSON, pretty-printed.
    Json,
    /// YAML.
    Yaml,
    /// One line per item where a command streams (`observe`); the table
    /// elsewhere.
    Compact,
}

/// The human form of a command's result.
pub trait Render: Serialize {
    fn human(&self) -> String;
}

/// Renders `value` in `format`; the text always ends with a newline.
pub fn render<T: Render>(value: &T, format: OutputFormat) -> Result<String, CliError> {
    let mut text = match format {
        OutputFormat::Table | OutputFormat::Compact => value.human(),
        OutputFormat::Json => {
            serde_json::to_string_pretty(value).map_err(|e| CliError::Encode(e.to_string()))?
        }
        OutputFormat::Yaml => {
            serde_yaml::to_string(value).map_err(|e| CliError::Encode(e.to_string()))?
        }
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// Columns padded to their widest cell, separated by three spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
    indent: usize,
}

const GAP: &str = "   ";

impl Table {
    /// A table whose first line names the columns.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: Some(header.iter().map(|h| h.to_string()).collect()),
            ..Table::default()
        }
    }

    /// A table without a header line (aligned key/value lines).
    pub fn headerless() -> Self {
        Table::default()
    }

    /// Indents every line by `n` spaces.
    pub fn indent(mut self, n: usize) -> Self {
        self.indent = n;
        self
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<&Vec<String>> = self.header.iter().chain(self.rows.iter()).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in &lines {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        for line in lines {
            let mut out = " ".repeat(self.indent);
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    out.push_str(GAP);
                }
                let _ = write!(out, "{cell:<width$}", width = widths[i]);
            }
            writeln!(f, "{}", out.trim_end())?;
        }
        Ok(())
    }
}

/// `-` for an absent value, as `kubectl` prints `<none>`.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Item {
        name: String,
        n: u32,
    }

    impl Render for Vec<Item> {
        fn human(&self) -> String {
            let mut t = Table::new(&["NAME", "N"]);
            for i in self {
                t.row([i.name.clone(), i.n.to_string()]);
            }
            t.to_string()
        }
    }

    fn items() -> Vec<Item> {
        vec![
            Item {
                name: "a".into(),
                n: 100,
            },
            Item {
                name: "longer-name".into(),
                n: 2,
            },
        ]
    }

    #[test]
    fn table_aligns_columns_and_trims_line_ends() {
        let text = render(&items(), OutputFormat::Table).unwrap();
        assert_eq!(
            text,
            "NAME          N\n\
             a             100\n\
             longer-name   2\n"
        );
    }

    #[test]
    fn headerless_and_indented() {
        let mut t = Table::headerless().indent(2);
        t.row(["KVStore:", "OK", "fine"]);
        t.row(["Operator:", "FAIL", "no leader"]);
        assert_eq!(
            t.to_string(),
            "  KVStore:    OK     fine\n  Operator:   FAIL   no leader\n"
        );
        assert!(Table::new(&["X"]).is_empty());
    }

    #[test]
    fn json_and_yaml() {
        let json = render(&items(), OutputFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[1]["name"], "longer-name");
        let yaml = render(&items(), OutputFormat::Yaml).unwrap();
        assert!(yaml.contains("- name: a\n  n: 100\n"), "{yaml}");
    }
}
