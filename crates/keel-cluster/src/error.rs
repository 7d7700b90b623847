//! Why cluster mode failed to start or to reach JetStream.

use keel_engine::storage::StorageError;

/// A failure of cluster mode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The runtime of the NATS client could not start.
    #[error("cannot start the NATS client's runtime: {source}")]
    Runtime {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No NATS server of the list answered.
    #[error(
        "cannot connect to NATS at {urls}: {detail}. Check that the servers run and that --cluster lists their client URLs (nats://HOST:4222); servers that require TLS need --nats-ca with the CA that signed their certificates (or tls:// URLs, verified against the system's roots)"
    )]
    Connect {
        /// The URLs tried.
        urls: String,
        /// What the client said.
        detail: String,
    },
    /// The cluster name would break JetStream's names.
    #[error(
        "cluster name {name:?} is invalid: it is 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidClusterName {
        /// The name given.
        name: String,
    },
    /// The node id is invalid.
    #[error("node id {id:?} is invalid: it is 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidNodeId {
        /// The id given.
        id: String,
    },
    /// A JetStream request failed.
    #[error("JetStream {op}: {detail}")]
    JetStream {
        /// What was being done.
        op: String,
        /// What the server or client said, and what to do.
        detail: String,
    },
}

impl ClusterError {
    /// A failed JetStream request, with what was being done.
    pub(crate) fn jetstream(op: impl Into<String>, error: impl std::fmt::Display) -> ClusterError {
        ClusterError::JetStream {
            op: op.into(),
            detail: error.to_string(),
        }
    }
}

impl From<ClusterError> for StorageError {
    fn from(error: ClusterError) -> StorageError {
        StorageError::Backend(Box::new(error))
    }
}
