//! Settings of `keel serve`, read from the TOML config file, `KEEL_*` variables and flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use keel_engine::limits::{
    EVENT_BYTES_MAX, REQUEST_BYTES_MAX, SEGMENT_BYTES_CEILING, SEGMENT_BYTES_MIN,
};
use keel_engine::{EngineError, TopicConfig};

use crate::limits::{
    HEADER_READ_TIMEOUT_DEFAULT, REQUEST_TIMEOUT_DEFAULT, RESPONSE_BYTES_MAX_DEFAULT,
    RESPONSE_BYTES_MAX_MIN, RETENTION_CHECK_INTERVAL_DEFAULT, WRITE_TIMEOUT_DEFAULT,
};

/// Settings of the server. Every field has a default; a config file sets any of them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where everything durable is stored.
    pub data_dir: PathBuf,
    /// Address the HTTP API listens on.
    #[serde(deserialize_with = "deserialize_listen")]
    pub listen: SocketAddr,
    /// Largest event accepted (bytes of its JSON); over it → 413.
    pub event_bytes_max: usize,
    /// Largest request body accepted; over it → 413.
    pub request_bytes_max: usize,
    /// A segment file rolls over at this size.
    pub segment_bytes_max: u64,
    /// How often retention deletes expired segments (`"30s"`).
    #[serde(with = "keel_engine::duration::serde_text")]
    pub retention_check_interval: std::time::Duration,
    /// How long a client may take to send a request head before its connection is closed.
    #[serde(with = "keel_engine::duration::serde_text")]
    pub header_read_timeout: std::time::Duration,
    /// Longest a request may take from its head to its answer (a body that never finishes
    /// arriving gets 408). Must exceed the longest long poll, 30 s.
    #[serde(with = "keel_engine::duration::serde_text")]
    pub request_timeout: std::time::Duration,
    /// How long a write to a client may make no progress (the client stopped reading its
    /// answer) before its connection is closed.
    #[serde(with = "keel_engine::duration::serde_text")]
    pub write_timeout: std::time::Duration,
    /// Bytes of large answers held for clients that have not read them yet; past it,
    /// requests are answered 503 with `Retry-After`.
    pub response_bytes_max: usize,
    /// Topics to create at start if missing (declarative; a conflicting existing topic is an
    /// error at start).
    pub topics: BTreeMap<String, TopicConfig>,
    /// Subscriptions to create at start if missing, after the topics (declarative; a
    /// conflicting existing subscription is an error at start).
    pub subscriptions: BTreeMap<String, keel_engine::subscription::spec::SubscriptionSpec>,
    /// How often every alert rule is evaluated (`"15s"`).
    #[serde(with = "keel_engine::duration::serde_text")]
    pub alert_evaluation_interval: std::time::Duration,
    /// Alert rules to put at start (declarative: a stored rule of the same name is replaced
    /// by the declared one; see `docs/alerts.md`).
    pub alerts: BTreeMap<String, keel_api::alerts::AlertRule>,
    /// Backpressure and resource limits (`[backpressure]`): the disk guard (507) and the
    /// publish queue's high-water mark (429).
    pub backpressure: keel_engine::pressure::PressureConfig,
    /// Cluster mode (`[cluster]`): with NATS servers listed, this node stores everything in
    /// their JetStream and shares the work with the other nodes (`docs/cluster.md`).
    pub cluster: ClusterSettings,
    /// Authentication (`[auth]`): an admin token turns it on (`SECURITY.md`).
    pub auth: AuthSettings,
    /// TLS for the API (`[tls]`): with a certificate and a key, keel serves HTTPS.
    pub tls: TlsSettings,
    /// Push sinks' outgoing requests (`[webhooks]`): where they may connect, which
    /// certificate authorities HTTPS sinks are verified against.
    pub webhooks: WebhooksSettings,
}

/// `[tls]`: HTTPS for the API. The files are read at start and again on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM: the certificate, then the intermediates of its chain.
    pub cert_file: Option<PathBuf>,
    /// PEM: its private key.
    pub key_file: Option<PathBuf>,
    /// PEM: CA certificates trusted (besides the system's roots) when a node forwards a
    /// request to another node's `https://` advertised URL (cluster mode).
    pub ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// The files, when TLS is on.
    pub fn files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.cert_file.clone()?,
            key: self.key_file.clone()?,
        })
    }

    fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("tls.cert_file and tls.key_file go together: give both (--tls-cert and --tls-key) or neither".to_owned());
        }
        Ok(())
    }
}

/// `[auth]`: who may call the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The admin token: with one, every request needs a token (this one, or one created with
    /// `keel token create`). `KEEL_ADMIN_TOKEN` sets it too, and wins.
    pub admin_token: Option<SecretText>,
    /// Serve without auth beyond loopback (refused otherwise): only behind something else
    /// that authenticates.
    pub allow_insecure: bool,
}

/// A secret in the settings: never shown by `Debug` (nor in any log).
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"(redacted)\"")
    }
}

impl AuthSettings {
    fn validate(&self) -> Result<(), String> {
        let min = crate::auth::ADMIN_TOKEN_CHARS_MIN;
        match &self.admin_token {
            Some(SecretText(token)) if token.chars().count() < min => Err(format!(
                "the admin token (KEEL_ADMIN_TOKEN or auth.admin_token) must be at least {min} characters; make one with `openssl rand -hex 32`"
            )),
            Some(SecretText(token)) if token.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                Err("the admin token (KEEL_ADMIN_TOKEN or auth.admin_token) must not hold spaces or control characters".to_owned())
            }
            _ => Ok(()),
        }
    }
}

/// `[webhooks]`: the outgoing requests of push sinks, their health checks and handshakes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSettings {
    /// Which addresses sink requests may connect to (`docs/configuration.md`, "Webhooks").
    pub egress: keel_engine::egress::EgressPolicy,
    /// A PEM file of certificate authorities trusted for HTTPS sinks, beside the system's.
    pub ca_bundle: Option<PathBuf>,
    /// The name keel gives as its origin in validation handshakes (default: the host name).
    pub origin: Option<String>,
}

impl WebhooksSettings {
    /// The engine's settings for them (the system's resolver).
    pub fn engine_settings(&self) -> keel_engine::webhook::WebhookSettings {
        let defaults = keel_engine::webhook::WebhookSettings::default();
        keel_engine::webhook::WebhookSettings {
            egress: self.egress,
            ca_bundle: self.ca_bundle.clone(),
            origin: self.origin.clone().unwrap_or(defaults.origin.clone()),
            ..defaults
        }
    }
}

/// Replicas of every stream and bucket, by default: a quorum survives one lost server.
pub const CLUSTER_REPLICAS_DEFAULT: usize = 3;
/// Most replicas JetStream takes.
pub const CLUSTER_REPLICAS_MAX: usize = 5;
/// The cluster name by default.
pub const CLUSTER_NAME_DEFAULT: &str = "keel";

/// `[cluster]`: cluster mode on NATS JetStream. Without `servers`, keel runs alone on its
/// data directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// The NATS servers' client URLs (`nats://host:4222`); empty: not a cluster.
    pub servers: Vec<String>,
    /// The cluster's name: the nodes of one cluster share it; several clusters may share a
    /// NATS account.
    pub name: String,
    /// This node's id, unique in the cluster (default: the host name and the listen port).
    pub node_id: Option<String>,
    /// This node's HTTP API as the other nodes reach it (default: `http://` and `listen`,
    /// which must then not be an unspecified address such as `0.0.0.0`).
    pub advertise_url: Option<String>,
    /// Replicas of every stream and bucket (1 to 5; at most the NATS servers there are).
    pub replicas: usize,
    /// How long a lease (and a heartbeat) lasts without renewal: a dead node's work moves
    /// within about twice this.
    #[serde(with = "keel_engine::duration::serde_text")]
    pub lease_ttl: std::time::Duration,
    /// PEM: the CA certificates the NATS servers' certificates are verified against; with
    /// it, TLS to NATS is required (`tls://` URLs turn TLS on against the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM: this node's client certificate, for NATS servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM: the client certificate's private key.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            name: CLUSTER_NAME_DEFAULT.to_owned(),
            node_id: None,
            advertise_url: None,
            replicas: CLUSTER_REPLICAS_DEFAULT,
            lease_ttl: std::time::Duration::from_secs(5),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl ClusterSettings {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.replicas == 0 || self.replicas > CLUSTER_REPLICAS_MAX {
            return Err(format!(
                "cluster.replicas must be between 1 and {CLUSTER_REPLICAS_MAX}, got {}",
                self.replicas
            ));
        }
        if self.lease_ttl < std::time::Duration::from_secs(2) {
            return Err(format!(
                "cluster.lease_ttl must be at least 2s, got {}",
                keel_engine::duration::format(self.lease_ttl)
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("cluster.tls_cert_file and cluster.tls_key_file go together: give both (--nats-cert and --nats-key) or neither".to_owned());
        }
        for server in &self.servers {
            if !server.starts_with("nats://") && !server.starts_with("tls://") {
                return Err(format!(
                    "cluster.servers: {server:?} is not a NATS URL like \"nats://host:4222\""
                ));
            }
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Checks the limits against keel's ceilings; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        use keel_engine::limits::{EVENT_BYTES_CEILING, REQUEST_BYTES_CEILING};
        if self.request_bytes_max == 0 || self.request_bytes_max > REQUEST_BYTES_CEILING {
            return Err(format!(
                "request_bytes_max must be between 1 and {REQUEST_BYTES_CEILING}, got {}",
                self.request_bytes_max
            ));
        }
        if self.event_bytes_max == 0 || self.event_bytes_max > EVENT_BYTES_CEILING {
            return Err(format!(
                "event_bytes_max must be between 1 and {EVENT_BYTES_CEILING}, got {}",
                self.event_bytes_max
            ));
        }
        let long_poll_max = std::time::Duration::from_millis(keel_engine::limits::READ_WAIT_MS_MAX);
        if self.request_timeout <= long_poll_max {
            return Err(format!(
                "request_timeout must be longer than the longest long poll ({}), got {}",
                keel_engine::duration::format(long_poll_max),
                keel_engine::duration::format(self.request_timeout)
            ));
        }
        let evaluation_min = keel_engine::limits::ALERT_EVALUATION_INTERVAL_MIN;
        if self.alert_evaluation_interval < evaluation_min {
            return Err(format!(
                "alert_evaluation_interval must be at least {}, got {}",
                keel_engine::duration::format(evaluation_min),
                keel_engine::duration::format(self.alert_evaluation_interval)
            ));
        }
        let segment_bytes = SEGMENT_BYTES_MIN..=SEGMENT_BYTES_CEILING;
        if !segment_bytes.contains(&self.segment_bytes_max) {
            return Err(format!(
                "segment_bytes_max must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_CEILING}, got {}",
                self.segment_bytes_max
            ));
        }
        for (setting, interval) in [
            ("retention_check_interval", self.retention_check_interval),
            ("header_read_timeout", self.header_read_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if interval.is_zero() {
                return Err(format!("{setting} must be longer than 0"));
            }
        }
        if self.response_bytes_max < RESPONSE_BYTES_MAX_MIN {
            return Err(format!(
                "response_bytes_max must be at least {RESPONSE_BYTES_MAX_MIN} (16 MiB), got {}",
                self.response_bytes_max
            ));
        }
        self.backpressure.validate()?;
        self.cluster.validate()?;
        self.auth.validate()?;
        self.tls.validate()?;
        self.validate_declared()
    }

    /// Checks the declared topics, subscriptions and alert rules as creating them would, so
    /// that a bad one stops the start before anything is written (not after the ones before
    /// it were created). Only a subscription's topic is left to creation: it may exist already.
    fn validate_declared(&self) -> Result<(), String> {
        use keel_engine::config::{validate_topic_config, validate_topic_name};
        use keel_engine::subscription::spec::{
            validate_egress, validate_subscription_name, validate_subscription_spec,
        };
        let named = |section: &str, name: &str, checked: Result<(), EngineError>| {
            checked.map_err(|error| format!("[{section}.{name}]: {error}"))
        };
        for (name, topic) in &self.topics {
            let checked = validate_topic_name(name).and_then(|()| validate_topic_config(topic));
            named("topics", name, checked)?;
        }
        for (name, spec) in &self.subscriptions {
            let checked = validate_subscription_name(name)
                .and_then(|()| validate_subscription_spec(spec))
                .and_then(|()| validate_egress(spec, self.webhooks.egress));
            named("subscriptions", name, checked)?;
        }
        for (name, rule) in &self.alerts {
            let checked = keel_engine::validate_alert_name(name)
                .and_then(|()| keel_engine::validate_alert_rule(name, rule));
            named("alerts", name, checked)?;
        }
        Ok(())
    }
}

/// `listen` as an IP address and port; the error says what is expected (the file takes no
/// host name: resolving one is the flag's, at start).
fn deserialize_listen<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "listen {text:?} is not an IP address and port, like \"127.0.0.1:7171\" or \"[::]:7171\" (a host name is taken by --listen and KEEL_LISTEN, not by the file)"
        ))
    })
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("keel-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7171)),
            event_bytes_max: EVENT_BYTES_MAX,
            request_bytes_max: REQUEST_BYTES_MAX,
            segment_bytes_max: keel_engine::limits::SEGMENT_BYTES_DEFAULT,
            retention_check_interval: RETENTION_CHECK_INTERVAL_DEFAULT,
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            write_timeout: WRITE_TIMEOUT_DEFAULT,
            response_bytes_max: RESPONSE_BYTES_MAX_DEFAULT,
            topics: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            alert_evaluation_interval: keel_engine::limits::ALERT_EVALUATION_INTERVAL_DEFAULT,
            alerts: BTreeMap::new(),
            backpressure: keel_engine::pressure::PressureConfig::default(),
            cluster: ClusterSettings::default(),
            auth: AuthSettings::default(),
            tls: TlsSettings::default(),
            webhooks: WebhooksSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a config file with topics and subscriptions parses, and a misspelt key is
    // refused by name.
    #[test]
    fn config_file_parses_and_refuses_unknown_keys() {
        let config: ServerConfig = toml_like(
            r#"{"listen": "127.0.0.1:9000", "topics": {"orders": {"partitions": 4}},
                "subscriptions": {"billing": {"topic": "orders", "ordering": "key",
                    "filters": [{"exact": {"type": "order.created"}}]}}}"#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.topics["orders"].partitions, 4);
        assert_eq!(config.subscriptions["billing"].filters.len(), 1);
        let error = toml_like(r#"{"listne": "x"}"#).unwrap_err();
        assert!(error.to_string().contains("listne"), "{error}");
    }

    // Goal: limits beyond keel's ceilings, and a request timeout that would cut long polls
    // short, are refused at start with the setting named.
    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
        for (json, needle) in [
            (r#"{"request_bytes_max": 104857600}"#, "request_bytes_max"),
            (r#"{"event_bytes_max": 0}"#, "event_bytes_max"),
            (r#"{"request_timeout": "10s"}"#, "request_timeout"),
            (r#"{"header_read_timeout": "0s"}"#, "header_read_timeout"),
            (
                r#"{"alert_evaluation_interval": "1ms"}"#,
                "alert_evaluation_interval",
            ),
            (
                r#"{"backpressure": {"data_dir_bytes_max": 0}}"#,
                "backpressure.data_dir_bytes_max",
            ),
            (
                r#"{"backpressure": {"disk_check_interval": "2m"}}"#,
                "backpressure.disk_check_interval",
            ),
            (
                r#"{"backpressure": {"publish_queue_bytes_max": 0}}"#,
                "backpressure.publish_queue_bytes_max",
            ),
            (r#"{"segment_bytes_max": 10}"#, "segment_bytes_max"),
            (
                r#"{"retention_check_interval": "0s"}"#,
                "retention_check_interval",
            ),
        ] {
            let error = toml_like(json).unwrap().validate().unwrap_err();
            assert!(error.contains(needle), "{json}: {error}");
        }
    }

    // Goal: a declared topic, subscription or alert rule that creating it would refuse is
    // refused by `validate`, before anything is written, with its table and member named.
    #[test]
    fn invalid_declarations_are_refused_by_table_and_member() {
        for (json, needle) in [
            (
                r#"{"topics": {"orders": {"partitions": 5000}}}"#,
                "[topics.orders]: invalid topic configuration: partitions must be between 1 and 1024",
            ),
            (
                r#"{"topics": {"bad name": {}}}"#,
                "[topics.bad name]: invalid topic name",
            ),
            (
                r#"{"subscriptions": {"audit": {"topic": "orders", "max_in_flight": 0}}}"#,
                "[subscriptions.audit]: invalid subscription: max_in_flight",
            ),
            (
                r#"{"subscriptions": {"audit": {"topic": "orders",
                    "sink": {"endpoints": [{"url": "http://a.test/hooks"}]}}}}"#,
                "[subscriptions.audit]: invalid subscription: sink.endpoints: a group has at least 2",
            ),
            (
                r#"{"subscriptions": {"audit": {"topic": "orders", "sink": {"url": "http://a.test/",
                    "health_check": {"interval": "1s", "timeout": "2s"}}}}}"#,
                "sink.health_check.timeout",
            ),
            (
                r#"{"webhooks": {"egress": "strict"}, "subscriptions": {"audit": {"topic": "orders",
                    "sink": {"url": "http://10.1.2.3/hooks"}}}}"#,
                "[subscriptions.audit]: invalid subscription: sink.url: sink address 10.1.2.3 is private, denied by the strict egress policy",
            ),
            (
                r#"{"subscriptions": {".hidden": {"topic": "orders"}}}"#,
                "[subscriptions..hidden]: invalid subscription: invalid subscription name",
            ),
            (
                r#"{"alerts": {"lag": {"kind": "threshold", "metric": "keel_subscription_lag",
                    "op": ">"}}}"#,
                "[alerts.lag]: invalid alert rule \"lag\": a threshold rule needs value",
            ),
            (
                r#"{"alerts": {"-lag": {"kind": "threshold", "metric": "m", "op": ">", "value": 1}}}"#,
                "[alerts.-lag]: invalid alert rule name",
            ),
        ] {
            let error = toml_like(json).unwrap().validate().unwrap_err();
            assert!(error.contains(needle), "{json}: {error}");
        }
    }

    // Goal: a host name in the file's `listen` is refused with what is expected, not with
    // the standard library's "invalid socket address syntax".
    #[test]
    fn listen_in_the_file_says_it_takes_an_ip_address() {
        let error = toml_like(r#"{"listen": "localhost:7171"}"#).unwrap_err();
        assert!(
            error.to_string().contains("is not an IP address and port"),
            "{error}"
        );
        let parsed = toml_like(r#"{"listen": "[::]:7171"}"#).unwrap();
        assert_eq!(parsed.listen.port(), 7171);
    }

    fn toml_like(json: &str) -> Result<ServerConfig, serde_json::Error> {
        serde_json::from_str(json)
    }
}
