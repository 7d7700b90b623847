//! The `keel` binary. `keel serve` runs the server in this process; every other command is a
//! client of a keel server's HTTP API, found with `--server` or `KEEL_SERVER`.
//!
//! Exit codes: 0 on success, 1 when the command failed (or `keel status` found something that
//! needs attention), 2 for usage errors.

mod alert;
mod bench;
mod cluster;
mod dlq;
mod error;
mod limits;
mod output;
mod publish;
mod serve;
mod status;
mod sub;
mod tail;
#[cfg(test)]
mod test_client;
mod token;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::alert::AlertCommand;
use crate::bench::BenchCommand;
use crate::cluster::ClusterCommand;
use keel_client::limits::IDLE_CONNECTIONS_MAX;
use keel_client::{Client, ClientError, DEFAULT_SERVER};

use crate::dlq::DlqCommand;
use crate::error::CliError;
use crate::publish::PublishArgs;
use crate::serve::ServeArgs;
use crate::sub::SubCommand;
use crate::tail::TailArgs;
use crate::token::TokenCommand;
use crate::topic::TopicCommand;

/// keel: a durable event processing engine.
///
/// `keel serve` runs the server; the other commands talk to it over HTTP.
#[derive(Debug, Parser)]
#[command(name = "keel", version, propagate_version = true)]
struct Cli {
    /// URL of the keel server to talk to
    #[arg(
        long,
        global = true,
        env = "KEEL_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL",
        help_heading = "Global options"
    )]
    server: String,
    /// API token to send (`keel token create` makes one; with auth on, every command needs
    /// one)
    #[arg(
        long,
        global = true,
        env = "KEEL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Global options"
    )]
    token: Option<String>,
    /// PEM file of the CA that signed an https:// server's certificate, trusted besides the
    /// system's roots
    #[arg(
        long,
        global = true,
        env = "KEEL_CA_FILE",
        value_name = "FILE",
        help_heading = "Global options"
    )]
    ca_file: Option<std::path::PathBuf>,
    /// Print the server's JSON answers (or a report as JSON) instead of text
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The `keel` commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the keel server in this process until SIGTERM or Ctrl-C
    Serve(ServeArgs),
    /// Create, list, describe and delete topics
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Publish events: one from flags, or JSON Lines from stdin or a file
    Publish(PublishArgs),
    /// Print a topic's records as JSON lines, and with --follow wait for new ones
    Tail(TailArgs),
    /// Load generators: publish or read as fast as the server allows, then report
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Subscriptions: create, list, describe, pause, seek; pull and ack events
    #[command(subcommand, after_help = sub::SUB_EXAMPLES)]
    Sub(SubCommand),
    /// A subscription's dead-letter queue: list, show, redrive, purge
    #[command(subcommand, after_help = dlq::DLQ_EXAMPLES)]
    Dlq(DlqCommand),
    /// Alert rules: set, list, get, delete; transitions go to the topic _keel.alerts
    #[command(subcommand, after_help = alert::ALERT_EXAMPLES)]
    Alert(AlertCommand),
    /// The health of the whole server on one screen, with a next step for each problem;
    /// exits 0 when nothing needs attention, 1 when something does
    #[command(after_help = status::STATUS_HELP)]
    Status,
    /// API tokens: create (shown once), list, revoke; needs the admin scope
    #[command(subcommand, after_help = token::TOKEN_EXAMPLES)]
    Token(TokenCommand),
    /// A keel cluster's nodes and which subscriptions each hosts
    #[command(subcommand, after_help = cluster::CLUSTER_HELP)]
    Cluster(ClusterCommand),
}

/// glibc malloc took about a tenth of the server's CPU on the publish path (perf); mimalloc
/// keeps per-thread free lists and halves that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`keel tail t | head`): nothing left to say.
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let ca_pem = match &cli.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| CliError::Io {
            action: format!("read --ca-file {}", path.display()),
            source,
        })?),
        None => None,
    };
    let target = Target {
        server: cli.server,
        token: cli.token,
        ca_pem,
    };
    let client = || target.connect(IDLE_CONNECTIONS_MAX);
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Topic(command) => topic::run(&client()?, command, cli.json).await,
        Command::Cluster(command) => cluster::run(&client()?, command, cli.json).await,
        Command::Publish(args) => publish::run(&client()?, args, cli.json).await,
        Command::Tail(args) => tail::run(&client()?, args).await,
        Command::Bench(command) => bench::run(&target, command, cli.json).await,
        Command::Sub(command) => sub::run(&client()?, command, cli.json).await,
        Command::Dlq(command) => dlq::run(&client()?, command, cli.json).await,
        Command::Alert(command) => alert::run(&client()?, command, cli.json).await,
        Command::Status => status::run(&client()?, cli.json).await,
        Command::Token(command) => token::run(&client()?, command, cli.json).await,
    }
}

/// The server the client commands talk to, and the token they send.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `--server`.
    pub(crate) server: String,
    /// `--token`.
    pub(crate) token: Option<String>,
    /// The contents of `--ca-file`.
    pub(crate) ca_pem: Option<Vec<u8>>,
}

impl Target {
    /// A client keeping up to `idle_connections_max` idle connections for reuse (`bench`
    /// sizes its pool to its concurrency; other commands take the client's default).
    pub(crate) fn connect(&self, idle_connections_max: usize) -> Result<Client, ClientError> {
        let mut builder = Client::builder(&self.server).idle_connections_max(idle_connections_max);
        if let Some(token) = &self.token {
            builder = builder.token(token);
        }
        if let Some(pem) = &self.ca_pem {
            builder = builder.ca_certificates(pem);
        }
        builder.build()
    }

    /// The same token and CA, for another server (a node of a cluster).
    pub(crate) fn at(&self, server: &str) -> Target {
        Target {
            server: server.to_owned(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definitions_are_consistent() {
        // Goal: clap's own checks (conflicting names, bad references) pass for every command.
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_are_refused_by_clap() {
        // Goal: wrong combinations fail at parse time (exit code 2), not halfway through.
        // Method: a table of argument lists that must not parse.
        let refused: [&[&str]; 7] = [
            &["keel", "publish", "t"],
            &["keel", "publish", "t", "--type", "x"],
            &["keel", "publish", "t", "--stdin", "--type", "x"],
            &["keel", "publish", "t", "--stdin", "--file", "f"],
            &[
                "keel",
                "publish",
                "t",
                "--type",
                "x",
                "--source",
                "s",
                "--data",
                "1",
                "--data-file",
                "f",
            ],
            &[
                "keel",
                "bench",
                "publish",
                "--events",
                "1",
                "--duration",
                "1s",
            ],
            &["keel", "topic", "create", "t", "--partitions", "0"],
        ];
        for args in refused {
            assert!(
                Cli::try_parse_from(args).is_err(),
                "{args:?} must be refused"
            );
        }
    }

    #[test]
    fn global_flags_parse_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["keel", "topic", "list", "--json", "--server", "http://h:1"])
                .unwrap();
        assert!(cli.json);
        assert_eq!(cli.server, "http://h:1");
        let stdin = Cli::try_parse_from(["keel", "publish", "t", "--stdin"]).unwrap();
        assert!(matches!(
            stdin.command,
            Command::Publish(PublishArgs { stdin: true, .. })
        ));
    }
}
