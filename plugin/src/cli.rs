//! The command line: kubectl's own flags (`-n`, `-A`, `--context`,
//! `--kubeconfig`, `-o`) and one subcommand per task.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # Every endpoint of the current namespace, or of all of them
  kubectl hookline list
  kubectl hookline list -A -o yaml

  # Send a sample event, signed with the endpoint's Secret as its provider signs
  kubectl hookline send stripe --type invoice.paid
  kubectl hookline send stripe --file event.json --wait

  # Through a port-forward when the endpoint has no Ingress (no status.url)
  kubectl port-forward svc/stripe-receiver 8080:80 &
  kubectl hookline send stripe --url http://localhost:8080
  kubectl hookline send stripe --via-port-forward

  # A forged signature, to see the receiver refuse it (401)
  kubectl hookline send stripe --bad-signature

  # Dead letters, replayed through the consumer pod (no database access needed)
  kubectl hookline dead-letters stripe
  kubectl hookline replay stripe --event-id evt_1MqqbKLt4dXK03v5
  kubectl hookline replay stripe --since 2026-01-31T00:00:00Z

  # Follow newly stored events until Ctrl-C
  kubectl hookline tail stripe";

/// Hookline's WebhookEndpoints from kubectl: list them, send signed test
/// events, list and replay dead letters, follow stored events.
#[derive(Debug, Parser)]
#[command(name = "kubectl hookline", bin_name = "kubectl hookline", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Every namespace (`list`).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig context (default: the current one).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every endpoint: ready, URL, pending events, last event, and why not ready.
    List(ListArgs),
    /// Send a signed sample event (or a body of your own) to an endpoint.
    Send(SendArgs),
    /// The endpoint's dead letters, read by its consumer pod.
    DeadLetters(DeadLettersArgs),
    /// Publish dead letters again (same event ids), from the consumer pod.
    Replay(ReplayArgs),
    /// Follow newly stored events until Ctrl-C, from the consumer pod.
    Tail(TailArgs),
}

/// How `list` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// How the consumer's commands print (one JSON object a line with `json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Table => "table",
            Format::Json => "json",
        })
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The WebhookEndpoint.
    pub name: String,
    /// The event type (default: a usual one of the provider, e.g. invoice.paid).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Send this file's bytes as the body instead of the sample.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Sign with a wrong key: the receiver must answer 401.
    #[arg(long)]
    pub bad_signature: bool,
    /// Post here instead of status.url (a port-forward: http://localhost:8080;
    /// without a path the endpoint's own path is added).
    #[arg(long, value_name = "URL", conflicts_with = "via_port_forward")]
    pub url: Option<String>,
    /// Post through a port-forward to a receiver pod (through the API
    /// server, as `kubectl port-forward` does): for an endpoint whose URL
    /// this machine cannot reach. Needs `pods/portforward`.
    #[arg(long)]
    pub via_port_forward: bool,
    /// Then wait until the consumer stored the event (runs
    /// `hookline-consumer event` in the consumer pod: needs `pods/exec`).
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    hookline_api::resolve::parse_duration(text)
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// The WebhookEndpoint.
    pub name: String,
    /// Also those replayed already.
    #[arg(long)]
    pub all: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["all", "event_id", "since"]))]
pub struct ReplayArgs {
    /// The WebhookEndpoint.
    pub name: String,
    /// Every dead letter not replayed yet.
    #[arg(long, conflicts_with_all = ["event_id", "since", "until"])]
    pub all: bool,
    /// Only this event id (repeatable).
    #[arg(long = "event-id", value_name = "ID")]
    pub event_id: Vec<String>,
    /// Only dead letters that failed at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only dead letters that failed before this RFC 3339 time (with --since).
    #[arg(long, value_name = "TIME", requires = "since")]
    pub until: Option<String>,
}

impl ReplayArgs {
    /// The `hookline-consumer replay …` arguments.
    pub fn consumer_args(&self) -> Vec<String> {
        let mut argv = vec!["replay".to_owned()];
        if self.all {
            argv.push("--all".into());
        }
        for id in &self.event_id {
            argv.extend(["--event-id".into(), id.clone()]);
        }
        if let Some(since) = &self.since {
            argv.extend(["--since".into(), since.clone()]);
        }
        if let Some(until) = &self.until {
            argv.extend(["--until".into(), until.clone()]);
        }
        argv
    }
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The WebhookEndpoint.
    pub name: String,
    /// Output format (`json`: one object a line).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_flags_go_before_or_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["kubectl-hookline", "list", "-A", "-o", "json"]).expect("parses");
        assert!(cli.all_namespaces);
        let cli = Cli::try_parse_from(["kubectl-hookline", "-n", "shop", "send", "stripe"])
            .expect("parses");
        assert_eq!(cli.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn replay_needs_a_selection() {
        assert!(Cli::try_parse_from(["kubectl-hookline", "replay", "stripe"]).is_err());
        assert!(
            Cli::try_parse_from([
                "kubectl-hookline",
                "replay",
                "stripe",
                "--all",
                "--event-id",
                "a"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from([
            "kubectl-hookline",
            "replay",
            "stripe",
            "--since",
            "2026-01-01T00:00:00Z",
        ])
        .expect("parses");
        let Command::Replay(args) = cli.command else {
            panic!("replay")
        };
        assert_eq!(
            args.consumer_args(),
            ["replay", "--since", "2026-01-01T00:00:00Z"]
        );
    }
}
