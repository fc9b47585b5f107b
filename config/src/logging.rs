//! How both binaries log: `--log-format text|json` (`AXONEME_LOG_FORMAT`)
//! and the `RUST_LOG` filter (default `info`), on stderr.
//!
//! It lives here, beside the configuration directory, because the format
//! is a flag like any other (a `log-format` key of the mounted ConfigMap
//! sets it) and so is known only once [`crate::parse`] has merged the
//! command line, the environment and the directory: the binaries parse
//! first, then build the subscriber, then log what the directory set.

use std::fmt::Display;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// tracing's human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, the event's
    /// fields, its span and every enclosing span with their fields, as log
    /// collectors of a DaemonSet's output expect.
    Json,
}

/// The flag, for `#[command(flatten)]` into each binary's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr: `text`, or `json` (one object per line with
    /// the span fields) for log collectors.
    #[arg(long, env = "AXONEME_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The filter: `RUST_LOG`, else `info`.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// A subscriber writing `format` to `writer` (tests give a buffer).
fn subscriber<W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_ansi(false)
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// Installs the process's subscriber: `format` on stderr.
pub fn init(format: LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing::subscriber::set_global_default(subscriber(format, std::io::stderr, ansi))
        .expect("the log subscriber is installed once, at start");
}

/// Reports the error that ends `binary`: in the text format the usual
/// `binary: error: ...` line; in JSON an error event, so that every line
/// of the output stays an object a collector can parse.
pub fn fatal(format: LogFormat, binary: &str, err: &dyn Display) {
    match format {
        LogFormat::Text => eprintln!("{binary}: error: {err}"),
        LogFormat::Json => tracing::error!(error = %err, "{binary} exiting"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    fn logged(format: LogFormat) -> String {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber(format, buf.clone(), false), || {
            let span = tracing::info_span!("operator", id = "op-a");
            let _in = span.enter();
            tracing::info!(identities = 3, "leading");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        out
    }

    #[test]
    fn json_is_one_object_per_line_with_the_span_fields() {
        let out = logged(LogFormat::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["message"], "leading");
        assert_eq!(v["fields"]["identities"], 3);
        assert_eq!(v["span"]["name"], "operator");
        assert_eq!(v["span"]["id"], "op-a");
        assert_eq!(v["spans"][0]["id"], "op-a");
        assert!(v["timestamp"].is_string(), "{v}");
    }

    #[test]
    fn text_is_tracing_s_line() {
        let out = logged(LogFormat::Text);
        assert!(out.contains("INFO operator{id=\"op-a\"}"), "{out}");
        assert!(out.contains("leading identities=3"), "{out}");
        assert!(serde_json::from_str::<serde_json::Value>(out.trim()).is_err());
    }

    #[test]
    fn a_bad_format_names_the_flag_and_the_choices() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            log: LogArgs,
        }
        assert_eq!(Cli::parse_from(["x"]).log.log_format, LogFormat::Text);
        let cli = Cli::parse_from(["x", "--log-format", "json"]);
        assert_eq!(cli.log.log_format, LogFormat::Json);
        let err = Cli::try_parse_from(["x", "--log-format", "xml"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid value 'xml' for '--log-format <LOG_FORMAT>'"),
            "{err}"
        );
        assert!(err.contains("[possible values: text, json]"), "{err}");
    }
}
