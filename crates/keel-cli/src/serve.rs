//! `keel serve`: the server in this process. Settings come from the TOML file (`--config`),
//! then `KEEL_*` variables and flags override them; logs go to stderr, filtered by `KEEL_LOG`.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::Args;
use keel_server::ServerConfig;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::CliError;

/// The environment variable holding the log filter, e.g. `info` or `warn,keel_engine=debug`.
const LOG_FILTER_VARIABLE: &str = "KEEL_LOG";

/// The environment variable holding the admin token (turns auth on).
const ADMIN_TOKEN_VARIABLE: &str = "KEEL_ADMIN_TOKEN";

/// The log filter when `KEEL_LOG` is not set.
const LOG_FILTER_DEFAULT: &str = "info";

/// Arguments of `keel serve`; each overrides the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Directory where everything durable is stored [config default: ./keel-data]
    #[arg(long, env = "KEEL_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address the HTTP API listens on [config default: 127.0.0.1:7171]
    #[arg(long, env = "KEEL_LISTEN", value_name = "HOST:PORT")]
    pub(crate) listen: Option<String>,
    /// TOML file of server settings (log filter: KEEL_LOG, e.g. "info,keel_engine=debug")
    #[arg(long, env = "KEEL_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Log lines as readable text, or as one JSON object per line (fields, spans and trace ids
    /// as members) for a log collector
    #[arg(long, env = "KEEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Serve without auth beyond loopback (refused otherwise): only behind something that
    /// authenticates. Auth is on when KEEL_ADMIN_TOKEN (or auth.admin_token) is set
    /// [config: auth.allow_insecure]
    #[arg(long, env = "KEEL_ALLOW_INSECURE", help_heading = "Security")]
    pub(crate) allow_insecure: bool,
    /// Serve HTTPS with this PEM certificate (chain); read again on SIGHUP
    /// [config: tls.cert_file]
    #[arg(
        long,
        env = "KEEL_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert [config: tls.key_file]
    #[arg(
        long,
        env = "KEEL_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub(crate) tls_key: Option<PathBuf>,
    /// Run as a node of a keel cluster on these NATS servers (comma-separated client URLs,
    /// nats://HOST:4222): everything is stored in their JetStream, not in --data-dir
    /// [config: cluster.servers]
    #[arg(
        long,
        env = "KEEL_CLUSTER",
        value_name = "URLS",
        help_heading = "Cluster mode"
    )]
    pub(crate) cluster: Option<String>,
    /// This node's id, unique in the cluster [config default: HOSTNAME-PORT]
    #[arg(
        long,
        env = "KEEL_NODE_ID",
        value_name = "ID",
        help_heading = "Cluster mode"
    )]
    pub(crate) node_id: Option<String>,
    /// The cluster's name, shared by its nodes [config default: keel]
    #[arg(
        long,
        env = "KEEL_CLUSTER_NAME",
        value_name = "NAME",
        help_heading = "Cluster mode"
    )]
    pub(crate) cluster_name: Option<String>,
    /// This node's HTTP API as the other nodes reach it [config default: http://LISTEN]
    #[arg(
        long,
        env = "KEEL_ADVERTISE_URL",
        value_name = "URL",
        help_heading = "Cluster mode"
    )]
    pub(crate) advertise_url: Option<String>,
    /// Replicas of every JetStream stream and bucket, 1 to 5 [config default: 3]
    #[arg(
        long,
        env = "KEEL_REPLICAS",
        value_name = "N",
        help_heading = "Cluster mode"
    )]
    pub(crate) replicas: Option<usize>,
    /// PEM CA certificates the NATS servers' certificates are verified against; TLS to NATS
    /// is then required [config: cluster.tls_ca_file]
    #[arg(
        long,
        env = "KEEL_NATS_CA",
        value_name = "FILE",
        help_heading = "Cluster mode"
    )]
    pub(crate) nats_ca: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients [config:
    /// cluster.tls_cert_file]
    #[arg(
        long,
        env = "KEEL_NATS_CERT",
        value_name = "FILE",
        requires = "nats_key",
        help_heading = "Cluster mode"
    )]
    pub(crate) nats_cert: Option<PathBuf>,
    /// The PEM private key of --nats-cert [config: cluster.tls_key_file]
    #[arg(
        long,
        env = "KEEL_NATS_KEY",
        value_name = "FILE",
        requires = "nats_cert",
        help_heading = "Cluster mode"
    )]
    pub(crate) nats_key: Option<PathBuf>,
    /// How long a lease lasts without renewal; a dead node's work moves within about twice
    /// this [config default: 5s]
    #[arg(long, env = "KEEL_LEASE_TTL", value_name = "DURATION", value_parser = keel_engine::duration::parse, help_heading = "Cluster mode")]
    pub(crate) lease_ttl: Option<std::time::Duration>,
    /// Which addresses push sinks may connect to: standard (no link-local or cloud metadata
    /// addresses), strict (public addresses only, for multi-tenant setups) or open
    /// [config: webhooks.egress, default: standard]
    #[arg(
        long,
        env = "KEEL_WEBHOOK_EGRESS",
        value_name = "POLICY",
        value_parser = str::parse::<keel_engine::egress::EgressPolicy>,
        help_heading = "Webhooks"
    )]
    pub(crate) webhook_egress: Option<keel_engine::egress::EgressPolicy>,
    /// A PEM file of certificate authorities trusted for HTTPS sinks, beside the system's
    /// roots [config: webhooks.ca_bundle]
    #[arg(
        long,
        env = "KEEL_WEBHOOK_CA_BUNDLE",
        value_name = "FILE",
        help_heading = "Webhooks"
    )]
    pub(crate) webhook_ca_bundle: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Runs the server until SIGTERM or SIGINT; returns once it has shut down gracefully.
pub(crate) async fn run(args: ServeArgs) -> Result<(), CliError> {
    let config = load_config(&args)?;
    let log_filter = std::env::var(LOG_FILTER_VARIABLE).ok();
    init_tracing(
        log_filter.as_deref().unwrap_or(LOG_FILTER_DEFAULT),
        args.log_format,
    )?;
    let cluster = if config.cluster.enabled() {
        config
            .validate()
            .map_err(|error| CliError::Usage(format!("invalid configuration: {error}")))?;
        let (settings, listen) = (config.cluster.clone(), config.listen);
        let https = config.tls.files().is_some();
        let joined =
            tokio::task::spawn_blocking(move || crate::cluster::join(&settings, listen, https))
                .await
                .map_err(|_| CliError::Usage("joining the cluster was interrupted".into()))??;
        Some(joined)
    } else {
        None
    };
    keel_server::run_member(config, cluster).await?;
    Ok(())
}

/// The config file's settings (defaults without one), with the flags applied over them.
fn load_config(args: &ServeArgs) -> Result<ServerConfig, CliError> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                CliError::io(format!("read config file {}", path.display()), error)
            })?;
            parse_config(path, &text)?
        }
        None => ServerConfig::default(),
    };
    if let Some(data_dir) = &args.data_dir {
        config.data_dir = data_dir.clone();
    }
    if let Some(listen) = &args.listen {
        config.listen = resolve_listen(listen)?;
    }
    // Read from the environment only: a flag would show the token in `ps`.
    if let Ok(token) = std::env::var(ADMIN_TOKEN_VARIABLE) {
        config.auth.admin_token = Some(keel_server::SecretText(token));
    }
    if args.allow_insecure {
        config.auth.allow_insecure = true;
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls.cert_file = Some(cert.clone());
        config.tls.key_file = Some(key.clone());
    }
    let cluster = &mut config.cluster;
    if let Some(servers) = &args.cluster {
        cluster.servers = servers
            .split(',')
            .map(str::trim)
            .filter(|server| !server.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(node_id) = &args.node_id {
        cluster.node_id = Some(node_id.clone());
    }
    if let Some(name) = &args.cluster_name {
        cluster.name = name.clone();
    }
    if let Some(url) = &args.advertise_url {
        cluster.advertise_url = Some(url.clone());
    }
    if let Some(replicas) = args.replicas {
        cluster.replicas = replicas;
    }
    if let Some(ttl) = args.lease_ttl {
        cluster.lease_ttl = ttl;
    }
    if let Some(ca) = &args.nats_ca {
        cluster.tls_ca_file = Some(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&args.nats_cert, &args.nats_key) {
        cluster.tls_cert_file = Some(cert.clone());
        cluster.tls_key_file = Some(key.clone());
    }
    if let Some(policy) = args.webhook_egress {
        config.webhooks.egress = policy;
    }
    if let Some(bundle) = &args.webhook_ca_bundle {
        config.webhooks.ca_bundle = Some(bundle.clone());
    }
    Ok(config)
}

/// Parses the config file's text; errors name the file and the place in it.
fn parse_config(path: &Path, text: &str) -> Result<ServerConfig, CliError> {
    toml::from_str(text).map_err(|source| CliError::Config {
        path: path.to_owned(),
        source,
    })
}

/// `HOST:PORT` as a socket address: an IP address as is, a host name looked up (first
/// address wins, so `localhost:7171` works).
fn resolve_listen(listen: &str) -> Result<SocketAddr, CliError> {
    if let Ok(address) = listen.parse() {
        return Ok(address);
    }
    let invalid = |detail: String| {
        CliError::Usage(format!(
            "invalid --listen (or KEEL_LISTEN) {listen:?}: {detail}"
        ))
    };
    let mut addresses = listen
        .to_socket_addrs()
        .map_err(|error| invalid(error.to_string()))?;
    addresses
        .next()
        .ok_or_else(|| invalid("the host has no address".to_owned()))
}

/// Sends logs to stderr in `format`, filtered by `filter` (`tracing_subscriber` targets
/// syntax). Every line carries its fields as key/value pairs, and the fields of the spans it
/// is in (a push attempt's `trace_id`, for one).
fn init_tracing(filter: &str, format: LogFormat) -> Result<(), CliError> {
    let targets: Targets = filter.parse().map_err(|error| {
        CliError::Usage(format!("invalid {LOG_FILTER_VARIABLE} {filter:?}: {error}"))
    })?;
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(lines)
        .with(targets)
        .try_init()
        .map_err(|error| CliError::Usage(format!("cannot set up logging: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>, data_dir: Option<&str>, listen: Option<&str>) -> ServeArgs {
        ServeArgs {
            data_dir: data_dir.map(PathBuf::from),
            listen: listen.map(str::to_owned),
            config,
            log_format: LogFormat::Text,
            cluster: None,
            node_id: None,
            cluster_name: None,
            advertise_url: None,
            replicas: None,
            lease_ttl: None,
            allow_insecure: false,
            tls_cert: None,
            tls_key: None,
            nats_ca: None,
            nats_cert: None,
            nats_key: None,
            webhook_egress: None,
            webhook_ca_bundle: None,
        }
    }

    #[test]
    fn flags_override_the_config_file() {
        // Goal: file < flags, per field. Method: a file setting both, a flag overriding one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        std::fs::write(
            &path,
            "data_dir = \"/var/lib/keel\"\nlisten = \"0.0.0.0:9000\"\n",
        )
        .unwrap();
        let from_file = load_config(&args(Some(path.clone()), None, None)).unwrap();
        assert_eq!(from_file.data_dir, PathBuf::from("/var/lib/keel"));
        assert_eq!(from_file.listen, "0.0.0.0:9000".parse().unwrap());
        let overridden = load_config(&args(Some(path), None, Some("127.0.0.1:17171"))).unwrap();
        assert_eq!(overridden.data_dir, PathBuf::from("/var/lib/keel"));
        assert_eq!(overridden.listen, "127.0.0.1:17171".parse().unwrap());
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let config = load_config(&args(None, Some("/tmp/k"), None)).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/k"));
        assert_eq!(config.listen, ServerConfig::default().listen);
    }

    #[test]
    fn bad_config_names_the_file_and_the_problem() {
        let error = parse_config(Path::new("keel.toml"), "colour = \"blue\"\n").unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("invalid config file keel.toml: "),
            "{message}"
        );
        assert!(message.contains("colour"), "{message}");
        let missing = load_config(&args(Some("/nonexistent/keel.toml".into()), None, None));
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .starts_with("cannot read config file")
        );
    }

    #[test]
    fn listen_accepts_addresses_and_host_names() {
        assert_eq!(
            resolve_listen("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(resolve_listen("localhost:80").unwrap().port(), 80);
        assert!(resolve_listen("no-port").is_err());
    }

    /// The configuration reference, which the tests below hold to the code.
    const REFERENCE: &str = include_str!("../../../docs/configuration.md");

    /// Every TOML example of the reference.
    fn reference_examples() -> Vec<&'static str> {
        REFERENCE
            .split("```toml\n")
            .skip(1)
            .map(|block| block.split("```").next().expect("split yields one part"))
            .collect()
    }

    // Goal: every TOML example of `docs/configuration.md` parses and passes the start-up
    // checks, the alert rules' numbers included.
    #[test]
    fn reference_examples_parse_and_pass_the_checks() {
        let examples = reference_examples();
        assert!(examples.len() >= 4, "{} TOML examples", examples.len());
        for example in examples {
            let config = parse_config(Path::new("keel.toml"), example)
                .unwrap_or_else(|error| panic!("{error}\n{example}"));
            config
                .validate()
                .unwrap_or_else(|error| panic!("{error}\n{example}"));
            if let Some(rule) = config.alerts.get("billing-lag") {
                assert_eq!(rule.value, Some(10000.0));
            }
        }
    }

    // Goal: the reference names every flag and variable of `keel serve`, and every key of the
    // file, of `[backpressure]`, of a topic, of a subscription and of its sink. Method: the flags and variables from clap; the
    // keys from serde's unknown-field error, which lists them (an empty list fails, so a
    // change of that wording cannot pass silently).
    #[test]
    fn reference_names_every_flag_variable_and_key() {
        use clap::Args as _;
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        // Each name as written after a backtick (or, for a table, after `[`).
        let mut names = vec![
            format!("{LOG_FILTER_VARIABLE}`"),
            format!("{}`", keel_engine::faults::FAULTS_VARIABLE),
            format!("{ADMIN_TOKEN_VARIABLE}`"),
        ];
        for arg in command.get_arguments() {
            names.extend(arg.get_long().map(|long| format!("--{long}")));
            names.extend(
                arg.get_env()
                    .map(|env| format!("{}`", env.to_string_lossy())),
            );
        }
        let fields = |error: String| -> Vec<String> {
            // "expected one of `a`, `b`", or with two "expected `a` or `b`".
            let (_, listed) = error.split_once("expected ").expect(&error);
            let fields: Vec<String> = listed
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            assert!(!fields.is_empty(), "{error}");
            fields
        };
        let unknown = r#"{"unknown-key": 0}"#;
        names.extend(fields(
            serde_json::from_str::<ServerConfig>(unknown)
                .unwrap_err()
                .to_string(),
        ));
        names.extend(fields(
            serde_json::from_str::<keel_engine::pressure::PressureConfig>(unknown)
                .unwrap_err()
                .to_string(),
        ));
        names.extend(fields(
            serde_json::from_str::<keel_server::ClusterSettings>(unknown)
                .unwrap_err()
                .to_string(),
        ));
        names.extend(fields(
            serde_json::from_str::<keel_server::TlsSettings>(unknown)
                .unwrap_err()
                .to_string(),
        ));
        names.extend(fields(
            serde_json::from_str::<keel_server::AuthSettings>(unknown)
                .unwrap_err()
                .to_string(),
        ));
        names.extend(fields(
            serde_json::from_str::<keel_server::WebhooksSettings>(unknown)
                .unwrap_err()
                .to_string(),
        ));
        names.extend(fields(
            serde_json::from_str::<keel_engine::TopicConfig>(unknown)
                .unwrap_err()
                .to_string(),
        ));
        names.extend(fields(
            serde_json::from_str::<keel_api::subscriptions::SubscriptionSpec>(
                r#"{"topic": "t", "unknown-key": 0}"#,
            )
            .unwrap_err()
            .to_string(),
        ));
        names.extend(fields(
            serde_json::from_str::<keel_api::subscriptions::SinkSpec>(unknown)
                .unwrap_err()
                .to_string(),
        ));
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| {
                !REFERENCE.contains(&format!("`{name}")) && !REFERENCE.contains(&format!("[{name}"))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "docs/configuration.md does not name {missing:?}"
        );
    }

    #[test]
    fn log_filter_must_parse() {
        assert!(init_tracing("info,keel_engine=[", LogFormat::Json).is_err());
    }
}
