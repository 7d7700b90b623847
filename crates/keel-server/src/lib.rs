//! keel's HTTP API: routes mapping HTTP to engine calls, problem+json errors, metrics.
//!
//! STUB: the public API below is the contract the CLI codes against.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of `keel serve`, read from the TOML config file, `KEEL_*` variables and flags.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where everything durable is stored.
    pub data_dir: PathBuf,
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { data_dir: PathBuf::from("keel-data"), listen: SocketAddr::from(([127, 0, 0, 1], 7171)) }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding or serving the socket failed.
    #[error("cannot serve on {listen}: {source}")]
    Listen {
        /// The address.
        listen: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let _ = config;
    todo!()
}
