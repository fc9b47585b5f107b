//! Command-line syntax of `axoneme`.

use axoneme_identity::layout::DEFAULT_ROOT;
use axoneme_kvstore::KvArgs;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::output::OutputFormat;

/// axoneme: inspect and change Axoneme's state.
///
/// Standalone mode: the commands talk to etcd directly.
#[derive(Debug, Clone, Parser)]
#[command(name = "axoneme", version)]
pub struct Args {
    #[command(flatten)]
    pub kv: KvArgs,
    /// Root of Axoneme's keys in etcd.
    #[arg(long, env = "AXONEME_KVSTORE_PREFIX", default_value = DEFAULT_ROOT)]
    pub kvstore_prefix: String,
    /// The node agent's API socket (for `bpf ...` and the agent part of
    /// `status`).
    #[arg(
        long,
        env = "AXONEME_AGENT_SOCKET",
        default_value = "/run/axoneme/agent.sock"
    )]
    pub agent_socket: std::path::PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// How long the command may take (plus a command's own `--wait`):
    /// past it, it fails with one line naming what did not answer, exit
    /// code 3. `status` gives each component at most 1 s of it.
    #[arg(long, env = "AXONEME_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 500ms, 5s, 1m)"))?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Endpoints and the identities the operator assigned to them.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Security identities.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Health of etcd, the operator and identity allocation (exit 1 if anything fails).
    Status(StatusArgs),
    /// CiliumNetworkPolicy documents.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Services and their backends (standalone mode): Kubernetes v1
    /// Service documents with an `endpoints` list (docs/services.md).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Nodes, their addresses and pod CIDRs.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The node agent's BPF maps (through its API socket).
    #[command(subcommand)]
    Bpf(BpfCommand),
    /// Transparent IPsec on this node (through the agent's API socket).
    #[command(subcommand)]
    Encrypt(EncryptCommand),
    /// The node agent's most recent events: datapath drops with Cilium's
    /// reason numbers, policy verdicts, and the L7 proxy's HTTP requests.
    Events(EventsArgs),
    /// Flows from the agent's Hubble API, with Hubble's filters: both ends'
    /// pods, labels and identities, the verdict and drop reason, HTTP
    /// details. `--follow` streams new flows.
    Observe(Box<ObserveArgs>),
    /// A live stream of the agent's datapath and L7 events (drops, policy
    /// verdicts, HTTP requests), one line each, like `cilium monitor`.
    Monitor(MonitorArgs),
    /// Prints a completion script for SHELL: every command and flag
    /// completes. Bash: `source <(axoneme completion bash)`; zsh: `axoneme
    /// completion zsh > "${fpath[1]}/_axoneme"`; fish: `axoneme completion
    /// fish > ~/.config/fish/completions/axoneme.fish`.
    Completion(CompletionArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// The shells a completion script is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Only events of this kind.
    #[arg(long = "type", value_parser = ["drop", "trace", "policy-verdict", "http"])]
    pub kind: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 50)]
    pub last: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ObserveArgs {
    /// The agent's Hubble API socket [default: hubble.sock beside --agent-socket].
    #[arg(long, env = "AXONEME_HUBBLE_SOCKET")]
    pub hubble_socket: Option<std::path::PathBuf>,
    /// Flows from pods whose name starts with this (`[namespace/]name`;
    /// namespace `default` when none is given).
    #[arg(long, value_name = "POD")]
    pub from_pod: Vec<String>,
    /// Flows to pods whose name starts with this (`[namespace/]name`).
    #[arg(long, value_name = "POD")]
    pub to_pod: Vec<String>,
    /// Flows from or to these pods.
    #[arg(long, value_name = "POD")]
    pub pod: Vec<String>,
    /// Flows from endpoints matching this label selector (`app=web`,
    /// `k8s:app in (a,b)`).
    #[arg(long, value_name = "SELECTOR")]
    pub from_label: Vec<String>,
    #[arg(long, value_name = "SELECTOR")]
    pub to_label: Vec<String>,
    /// Flows from or to endpoints matching this selector.
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub label: Vec<String>,
    /// Source address or CIDR.
    #[arg(long, value_name = "IP")]
    pub from_ip: Vec<String>,
    #[arg(long, value_name = "IP")]
    pub to_ip: Vec<String>,
    #[arg(long, value_name = "IP")]
    pub ip: Vec<String>,
    /// Source security identity.
    #[arg(long, value_name = "ID")]
    pub from_identity: Vec<u32>,
    #[arg(long, value_name = "ID")]
    pub to_identity: Vec<u32>,
    #[arg(long, value_name = "ID")]
    pub identity: Vec<u32>,
    #[arg(long, value_name = "PORT")]
    pub from_port: Vec<String>,
    #[arg(long, value_name = "PORT")]
    pub to_port: Vec<String>,
    #[arg(long, value_name = "PORT")]
    pub port: Vec<String>,
    /// FORWARDED, DROPPED, ERROR, REDIRECTED, AUDIT, TRACED or TRANSLATED.
    #[arg(long)]
    pub verdict: Vec<String>,
    /// tcp, udp, sctp, icmp, icmpv4, icmpv6 or http.
    #[arg(long)]
    pub protocol: Vec<String>,
    /// Event type: drop, trace, policy-verdict or l7.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    pub types: Vec<String>,
    #[arg(long)]
    pub http_method: Vec<String>,
    /// A regular expression on the request path.
    #[arg(long)]
    pub http_path: Vec<String>,
    /// A status code (404) or class (4+).
    #[arg(long)]
    pub http_status: Vec<String>,
    /// ingress or egress.
    #[arg(long)]
    pub traffic_direction: Vec<String>,
    /// Node name pattern (`*` for any run of characters).
    #[arg(long)]
    pub node_name: Vec<String>,
    /// Flows since this long ago (`5m`) or this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Flows until this long ago or this time.
    #[arg(long)]
    pub until: Option<String>,
    /// The last N matching flows [default: 20 unless --follow, --since or --until].
    #[arg(long, value_name = "N", conflicts_with = "first")]
    pub last: Option<u64>,
    /// The first N matching flows in the agent's buffer.
    #[arg(long, value_name = "N")]
    pub first: Option<u64>,
    /// Keep streaming new flows.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// The agent's Hubble API socket [default: hubble.sock beside --agent-socket].
    #[arg(long, env = "AXONEME_HUBBLE_SOCKET")]
    pub hubble_socket: Option<std::path::PathBuf>,
    /// Only events of this type: drop, trace, policy-verdict or l7.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only events from or to this pod (`[namespace/]name` prefix).
    #[arg(long, value_name = "POD")]
    pub related_to: Vec<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Lists the nodes announced in etcd (and those gone that still hold
    /// pod CIDRs).
    List,
    /// Forgets a node that is gone for good: revokes its node lease, so its
    /// record and its pods' endpoint records vanish and every other node
    /// stops trusting its pods' addresses and routing to it at once
    /// (without this, after its `--node-grace`). Stop its agent first: a
    /// running agent announces the node again.
    Delete {
        /// The node's name.
        name: String,
    },
    /// Sets (`KEY=VALUE`) or removes (`KEY-`) a node's labels in
    /// standalone mode: host policies' `nodeSelector` and
    /// `--encryption-node-selector` select nodes by them (the agent's
    /// `--node-labels` win over them). In Kubernetes mode label the Node.
    Label {
        /// The node's name.
        name: String,
        /// `KEY=VALUE` or `KEY-`.
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum BpfCommand {
    /// The ipcache: address prefix → security identity.
    #[command(subcommand)]
    Ipcache(ListOnly),
    /// Policy-map entries of one endpoint, with their counters.
    #[command(subcommand)]
    Policy(PolicyMapCommand),
    /// Connection tracking entries.
    #[command(subcommand)]
    Ct(ListOnly),
    /// Service load balancing: every frontend and its backends, as this
    /// node's datapath has them.
    #[command(subcommand)]
    Lb(ListOnly),
}

#[derive(Debug, Clone, Subcommand)]
pub enum EncryptCommand {
    /// The mode, the key in use and the keys installed, each other node
    /// that encrypts and the key its pods' traffic is sent with, the XFRM
    /// states and policies, and the kernel's XFRM errors (exit 1 if
    /// anything fails).
    Status,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ListOnly {
    /// Lists every entry.
    List,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyMapCommand {
    /// Entries of ENDPOINT (its name, e.g. the container ID, or its number).
    Get { endpoint: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Checks policy files offline (no cluster, no etcd): multi-document YAML
    /// or JSON, `-` for standard input. Exit 0 if every policy is valid.
    Validate(ValidateArgs),
    /// Stores policies in etcd (standalone mode). Nothing is stored unless
    /// every document is valid.
    Import(ImportArgs),
    /// Lists stored policies with the operator's verdict.
    List,
    /// Shows one stored policy and its status.
    Get(PolicyRefArgs),
    /// Deletes a stored policy.
    Delete(PolicyRefArgs),
    /// The verdict on one flow and exactly what decided it (the policy, the
    /// rule and its peer or port, the deny rule, or the default deny and
    /// why), offline against policy files, as the datapath would judge it.
    Explain(Box<crate::explain::ExplainArgs>),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// Files to import (`-` for standard input).
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// Wait up to this many seconds for the operator's verdict on each policy.
    #[arg(long)]
    pub wait: Option<u64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PolicyRefArgs {
    /// The policy's name.
    pub name: String,
    /// Namespace of a CiliumNetworkPolicy.
    #[arg(
        short = 'n',
        long,
        default_value = "default",
        conflicts_with = "clusterwide"
    )]
    pub namespace: String,
    /// The policy is a CiliumClusterwideNetworkPolicy.
    #[arg(long, conflicts_with = "network_policy")]
    pub clusterwide: bool,
    /// The policy is a Kubernetes NetworkPolicy (networking.k8s.io/v1).
    #[arg(long = "network-policy")]
    pub network_policy: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// Files to check.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ServiceCommand {
    /// Stores new services. Nothing is written unless every document of
    /// every file is valid and no service exists yet; all in one
    /// transaction.
    Create(ServiceFilesArgs),
    /// Replaces stored services. Nothing is written unless every document
    /// of every file is valid and every service exists; all in one
    /// transaction.
    Update(ServiceFilesArgs),
    /// Deletes a stored service.
    Delete(ServiceRefArgs),
    /// Lists stored services: their frontends and how many backends are
    /// ready.
    List(ServiceListArgs),
    /// Shows one stored service, every frontend and its backends.
    Get(ServiceRefArgs),
    /// Checks service files offline (no etcd): exit 0 if every service is
    /// valid.
    Validate(ServiceFilesArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceFilesArgs {
    /// Files of Service documents, multi-document YAML or JSON (`-` for
    /// standard input); repeatable, or several after one `-f`.
    #[arg(short = 'f', long = "file", value_name = "FILE", required = true, num_args = 1..)]
    pub files: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceRefArgs {
    /// The service's name.
    pub name: String,
    /// The service's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceListArgs {
    /// Only services of this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum EndpointCommand {
    /// Writes an endpoint record, as a node's agent does.
    Put(PutArgs),
    /// Deletes an endpoint record (the operator then removes its assignment).
    Delete(EndpointKeyArgs),
    /// Lists endpoints with their identity and assignment status.
    List(ListEndpointsArgs),
    /// Shows one endpoint.
    Get(GetEndpointArgs),
    /// Changes an endpoint's options on this node (through the node
    /// agent's API socket; standalone mode: in Kubernetes mode they come
    /// from the Pod's annotations) and waits until the datapath has them.
    Config(EndpointConfigArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct EndpointConfigArgs {
    /// The endpoint's name on this node (the container ID).
    pub endpoint: String,
    /// Policy audit mode: flows the endpoint's policy would drop are
    /// reported (verdict `audit`) and let through.
    #[arg(long, action = clap::ArgAction::Set, value_name = "true|false", required = true)]
    pub policy_audit_mode: Option<bool>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EndpointKeyArgs {
    /// Node the endpoint runs on.
    #[arg(long)]
    pub node: String,
    /// Endpoint name, unique on its node.
    #[arg(long = "id")]
    pub id: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub key: EndpointKeyArgs,
    /// A label `[source:]key[=value]` (source defaults to k8s); repeatable.
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// An address of the endpoint; repeatable.
    #[arg(long = "address")]
    pub addresses: Vec<String>,
    /// Kubernetes namespace of the endpoint.
    #[arg(long)]
    pub namespace: Option<String>,
    /// The endpoint's host-side interface on its node (where the agent
    /// attaches the datapath).
    #[arg(long)]
    pub interface: Option<String>,
    /// Wait up to this many seconds for the operator's answer and print the
    /// identity (exit 1 if the operator reports an error or does not answer).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListEndpointsArgs {
    /// Only endpoints of this node.
    #[arg(long)]
    pub node: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GetEndpointArgs {
    /// The endpoint as NODE/ENDPOINT.
    pub endpoint: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum IdentityCommand {
    /// Lists identities: the reserved ones and those the operator allocated.
    List(ListIdentitiesArgs),
    /// Shows one identity.
    Get(GetIdentityArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListIdentitiesArgs {
    /// Leave out the reserved identities (1-10).
    #[arg(long)]
    pub allocated_only: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GetIdentityArgs {
    /// The numeric identity.
    pub id: u32,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Also show every etcd member.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Only this host's agent, in one line: `OK`, or what fails (exit 1).
    /// Needs no etcd: what the Helm chart's liveness and readiness probes
    /// run.
    #[arg(long, conflicts_with = "verbose")]
    pub brief: bool,
}

/// The clap command, with every top-level option global so it may also be
/// given after the subcommand (`axoneme endpoint list -o json`); subcommands'
/// help lists them apart from their own.
pub fn command() -> clap::Command {
    Args::command().mut_args(|a| a.global(true).help_heading("Global options"))
}

/// The completion script of [`command`] for `shell`: generated from the
/// same clap definition `axoneme` parses with, so a new command or flag
/// completes without anyone editing a script.
pub fn completion(shell: CompletionShell) -> String {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(), "axoneme", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

impl Args {
    /// Parses `std::env::args`, exiting with clap's message (code 2) on bad
    /// input and 0 for `--help`/`--version`.
    pub fn parse_env() -> Self {
        let mut matches = command().get_matches();
        Args::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
    }

    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut matches = command().try_get_matches_from(args)?;
        Args::from_arg_matches_mut(&mut matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere() {
        let a = Args::try_parse_args([
            "axoneme",
            "endpoint",
            "list",
            "--node",
            "n1",
            "-o",
            "json",
            "--etcd-endpoints",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--kvstore-prefix",
            "t",
        ])
        .unwrap();
        assert_eq!(a.output, OutputFormat::Json);
        assert_eq!(a.kv.endpoints.len(), 2);
        assert_eq!(a.kvstore_prefix, "t");
        assert!(
            matches!(a.command, Command::Endpoint(EndpointCommand::List(l)) if l.node.as_deref() == Some("n1"))
        );
        let a = Args::try_parse_args(["axoneme", "-o", "yaml", "status", "--verbose"]).unwrap();
        assert_eq!(a.output, OutputFormat::Yaml);
        assert!(matches!(a.command, Command::Status(s) if s.verbose));
    }

    #[test]
    fn put_flags() {
        let a = Args::try_parse_args([
            "axoneme",
            "endpoint",
            "put",
            "--node",
            "n",
            "--id",
            "e",
            "--label",
            "k8s:app=x",
            "-l",
            "zone=a",
            "--wait",
            "5",
        ])
        .unwrap();
        let Command::Endpoint(EndpointCommand::Put(p)) = a.command else {
            panic!("not put")
        };
        assert_eq!(p.labels, ["k8s:app=x", "zone=a"]);
        assert_eq!(p.wait, Some(5));
        assert_eq!((p.key.node.as_str(), p.key.id.as_str()), ("n", "e"));
    }

    #[test]
    fn service_flags() {
        let a = Args::try_parse_args([
            "axoneme", "service", "create", "-f", "a.yaml", "b.yaml", "--file", "c.yaml",
        ])
        .unwrap();
        let Command::Service(ServiceCommand::Create(c)) = a.command else {
            panic!("not create")
        };
        assert_eq!(
            c.files,
            ["a.yaml", "b.yaml", "c.yaml"].map(std::path::PathBuf::from)
        );
        let a = Args::try_parse_args([
            "axoneme", "service", "get", "web", "-n", "shop", "-o", "json",
        ])
        .unwrap();
        assert_eq!(a.output, OutputFormat::Json);
        assert!(matches!(a.command, Command::Service(ServiceCommand::Get(r))
            if r.name == "web" && r.namespace == "shop"));
        let a = Args::try_parse_args(["axoneme", "service", "delete", "web"]).unwrap();
        assert!(
            matches!(a.command, Command::Service(ServiceCommand::Delete(r))
            if r.namespace == "default")
        );
        let e = Args::try_parse_args(["axoneme", "service", "update"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "-f is required");
        let e = Args::try_parse_args(["axoneme", "service", "create", "a.yaml"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "files come after -f");
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        let e = Args::try_parse_args(["axoneme", "endpoint", "put", "--node", "n"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Args::try_parse_args(["axoneme", "identity", "get", "abc"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Args::try_parse_args(["axoneme", "-o", "xml", "status"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
