//! The `axoneme` command-line tool, as a library so that its commands can be
//! tested; `main.rs` only parses, runs and prints.
//!
//! Standalone mode: every command talks to etcd directly through
//! `axoneme_kvstore::KvStore`, using the key layout of
//! `axoneme_identity::Layout`.

#![forbid(unsafe_code)]

pub mod agent;
pub mod args;
pub mod endpoint;
pub mod error;
pub mod explain;
pub mod identity;
pub mod lifeline;
pub mod node;
pub mod observe;
pub mod output;
pub mod policy;
pub mod service;
pub mod status;

use std::time::Duration;

use axoneme_identity::Layout;
use axoneme_kvstore::{KvArgs, KvStore};

pub use crate::args::Args;
use crate::args::{
    BpfCommand, Command, EncryptCommand, EndpointCommand, IdentityCommand, NodeCommand,
    PolicyCommand, PolicyMapCommand, ServiceCommand,
};
pub use crate::error::{error_line, CliError};
use crate::output::{render, OutputFormat, Render};

/// What a command prints on stdout, and whether it succeeded (exit 0) or
/// found something wrong it has already described (exit 1, e.g. `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub text: String,
    pub ok: bool,
}

impl Report {
    fn new<T: Render>(value: &T, format: OutputFormat, ok: bool) -> Result<Self, CliError> {
        Ok(Report {
            text: render(value, format)?,
            ok,
        })
    }
}

/// What every command needs: the etcd client and the key layout.
#[derive(Clone)]
pub struct Ctx {
    pub kv: KvStore,
    pub layout: Layout,
}

impl Ctx {
    /// Connects lazily: a member that is down fails the first call, not this.
    /// Every call gives up within `timeout` (and within
    /// `--etcd-retry-deadline-s` when shorter), so its error, naming the
    /// member and the cause, comes before the command's own deadline.
    pub async fn connect(kv: &KvArgs, prefix: &str, timeout: Duration) -> Result<Self, CliError> {
        let mut config = kv.to_config().map_err(CliError::Config)?;
        let call = timeout
            .saturating_sub(Duration::from_millis(200))
            .max(Duration::from_millis(100));
        config.retry_deadline = config.retry_deadline.min(call);
        config.request_timeout = config.request_timeout.min(call);
        config.connect_timeout = config.connect_timeout.min(call);
        let kv = KvStore::connect(config).await.map_err(CliError::Connect)?;
        Ok(Ctx {
            kv,
            layout: Layout::new(prefix),
        })
    }
}

/// Runs the command `args` asks for within its `--timeout` (plus its own
/// `--wait`); past that, a [`CliError::Deadline`] naming what it talks to.
pub async fn run(args: Args) -> Result<Report, CliError> {
    let wait = match &args.command {
        Command::Policy(PolicyCommand::Import(i)) => i.wait,
        Command::Endpoint(EndpointCommand::Put(p)) => p.wait,
        _ => None,
    };
    let deadline = args.timeout + Duration::from_secs(wait.unwrap_or(0));
    // Streams print as they go and bound their own calls by --timeout
    // (connecting and, unless following, each answer).
    match &args.command {
        Command::Observe(o) => {
            let text = observe::observe(o, args.output, &args.agent_socket, args.timeout).await?;
            return Ok(Report { text, ok: true });
        }
        Command::Monitor(m) => {
            observe::monitor(m, args.output, &args.agent_socket, args.timeout).await?;
            return Ok(Report {
                text: String::new(),
                ok: true,
            });
        }
        _ => {}
    }
    match tokio::time::timeout(deadline, run_command(&args)).await {
        Ok(r) => r,
        Err(_) => {
            let peer = match &args.command {
                Command::Bpf(_)
                | Command::Encrypt(_)
                | Command::Events(_)
                | Command::Endpoint(EndpointCommand::Config(_))
                | Command::Policy(PolicyCommand::Explain(_)) => {
                    format!("the agent at {}", args.agent_socket.display())
                }
                _ => format!("etcd at {}", args.kv.endpoints.join(",")),
            };
            Err(CliError::Deadline(deadline, peer))
        }
    }
}

/// Runs the command. Input that can be checked without etcd is checked
/// before connecting.
async fn run_command(args: &Args) -> Result<Report, CliError> {
    let format = args.output;
    let timeout = args.timeout;
    let ctx = || Ctx::connect(&args.kv, &args.kvstore_prefix, timeout);
    let agent = agent::Agent {
        socket: args.agent_socket.clone(),
        timeout,
    };
    match &args.command {
        // Needs neither etcd nor the agent; `-o` does not apply to a script.
        Command::Completion(c) => Ok(Report {
            text: args::completion(c.shell),
            ok: true,
        }),
        Command::Endpoint(EndpointCommand::Put(put)) => {
            let record = endpoint::record_from_args(put)?;
            let view = endpoint::put(&ctx().await?, record, put.wait).await?;
            Report::new(&view, format, true)
        }
        Command::Endpoint(EndpointCommand::Delete(key)) => {
            endpoint::check_name("node", &key.node)?;
            endpoint::check_name("endpoint", &key.id)?;
            let deleted = endpoint::delete(&ctx().await?, &key.node, &key.id).await?;
            Report::new(&deleted, format, true)
        }
        Command::Endpoint(EndpointCommand::List(list)) => {
            if let Some(node) = &list.node {
                endpoint::check_name("node", node)?;
            }
            let views = endpoint::list(&ctx().await?, list.node.as_deref()).await?;
            Report::new(&views, format, true)
        }
        Command::Endpoint(EndpointCommand::Get(get)) => {
            let (node, id) = endpoint::parse_ref(&get.endpoint)?;
            let view = endpoint::get(&ctx().await?, node, id).await?;
            Report::new(&view, format, true)
        }
        Command::Endpoint(EndpointCommand::Config(c)) => {
            let done = agent::configure_endpoint(&agent, c).await?;
            Report::new(&done, format, true)
        }
        Command::Identity(IdentityCommand::List(list)) => {
            let views = identity::list(&ctx().await?, list.allocated_only).await?;
            Report::new(&views, format, true)
        }
        Command::Identity(IdentityCommand::Get(get)) => {
            let view = identity::get(&ctx().await?, get.id).await?;
            Report::new(&view, format, true)
        }
        Command::Policy(PolicyCommand::Validate(v)) => {
            let report = policy::validate_files(&v.files)?;
            let ok = report.ok();
            Report::new(&report, format, ok)
        }
        Command::Policy(PolicyCommand::Import(i)) => {
            let report = policy::validate_files(&i.files)?;
            if !report.ok() {
                return Report::new(&report, format, false);
            }
            let ctx = ctx().await?;
            let stored = policy::import(&ctx, &i.files, i.wait).await?;
            for w in lifeline::warnings(&ctx).await? {
                eprintln!("warning: {w}");
            }
            let ok = stored.ok();
            Report::new(&stored, format, ok)
        }
        Command::Policy(PolicyCommand::Explain(e)) => {
            Report::new(&explain::explain(e, &agent).await?, format, true)
        }
        Command::Policy(PolicyCommand::List) => {
            let list = policy::list(&ctx().await?).await?;
            Report::new(&list, format, true)
        }
        Command::Policy(PolicyCommand::Get(r)) => {
            let view = policy::get(&ctx().await?, r).await?;
            Report::new(&view, format, true)
        }
        Command::Policy(PolicyCommand::Delete(r)) => {
            let deleted = policy::delete(&ctx().await?, r).await?;
            Report::new(&deleted, format, true)
        }
        Command::Service(ServiceCommand::Validate(v)) => {
            let (report, _) = service::check_files(&v.files)?;
            let ok = report.ok();
            Report::new(&report, format, ok)
        }
        Command::Service(c @ (ServiceCommand::Create(files) | ServiceCommand::Update(files))) => {
            let (report, services) = service::check_files(&files.files)?;
            if !report.ok() {
                return Err(CliError::InvalidServices(report.problems()));
            }
            let mode = match c {
                ServiceCommand::Create(_) => service::Mode::Create,
                _ => service::Mode::Update,
            };
            let stored = service::store(&ctx().await?, &services, mode).await?;
            Report::new(&stored, format, true)
        }
        Command::Service(ServiceCommand::List(l)) => {
            if let Some(ns) = &l.namespace {
                service::check_namespace(ns)?;
            }
            let mut list = service::list(&ctx().await?, l.namespace.as_deref()).await?;
            service::add_node_view(&mut list.0, &agent).await;
            Report::new(&list, format, true)
        }
        Command::Service(ServiceCommand::Get(r)) => {
            service::check_ref(&r.namespace, &r.name)?;
            let mut view = service::get(&ctx().await?, &r.namespace, &r.name).await?;
            service::add_node_view(std::slice::from_mut(&mut view), &agent).await;
            Report::new(&view, format, true)
        }
        Command::Service(ServiceCommand::Delete(r)) => {
            service::check_ref(&r.namespace, &r.name)?;
            let deleted = service::delete(&ctx().await?, &r.namespace, &r.name).await?;
            Report::new(&deleted, format, true)
        }
        Command::Node(NodeCommand::List) => {
            let nodes = agent::nodes(&ctx().await?).await?;
            Report::new(&nodes, format, true)
        }
        Command::Node(NodeCommand::Label { name, labels }) => {
            let changes = labels
                .iter()
                .map(|l| node::parse_change(l))
                .collect::<Result<Vec<_>, _>>()?;
            let view = node::label(&ctx().await?, name, &changes).await?;
            Report::new(&view, format, true)
        }
        Command::Node(NodeCommand::Delete { name }) => {
            let deleted = agent::delete_node(&ctx().await?, name).await?;
            Report::new(&deleted, format, true)
        }
        Command::Bpf(BpfCommand::Ipcache(_)) => {
            Report::new(&agent::ipcache(&agent).await?, format, true)
        }
        Command::Bpf(BpfCommand::Policy(PolicyMapCommand::Get { endpoint })) => {
            Report::new(&agent::policy(&agent, endpoint).await?, format, true)
        }
        Command::Events(e) => Report::new(
            &agent::events(&agent, e.kind.as_deref(), e.last).await?,
            format,
            true,
        ),
        Command::Observe(_) | Command::Monitor(_) => unreachable!("streams run in `run`"),
        Command::Bpf(BpfCommand::Ct(_)) => Report::new(&agent::ct(&agent).await?, format, true),
        Command::Bpf(BpfCommand::Lb(_)) => Report::new(&agent::lb(&agent).await?, format, true),
        Command::Encrypt(EncryptCommand::Status) => {
            let st = agent::encrypt(&agent).await?;
            let ok = agent::encrypt_ok(&st.0);
            Report::new(&st, format, ok)
        }
        Command::Status(s) if s.brief => {
            let part = status::brief(&agent, timeout).await;
            let ok = part.ok;
            Report::new(&part, format, ok)
        }
        Command::Status(status_args) => {
            let report = status::check(
                &ctx().await?,
                &agent,
                status_args.verbose,
                timeout.min(status::STATUS_DEADLINE),
            )
            .await;
            let ok = report.ok;
            Report::new(&report, format, ok)
        }
    }
}
