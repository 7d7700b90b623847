//! The one error type of the `keel` binary, and the exit code each kind maps to.

use std::path::PathBuf;
use std::process::ExitCode;

use keel_client::ClientError;

/// Everything that makes a `keel` command fail. Each message reads well after `error: `.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A call to the server failed: unreachable, or an error answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A batch of JSON Lines input was refused; the message names the lines it held.
    #[error("{source} ({origin} lines {first_line}-{last_line})")]
    Batch {
        /// Where the lines came from: a file name or `stdin`.
        origin: String,
        /// Line number (1-based) of the batch's first event.
        first_line: u64,
        /// Line number (1-based) of the batch's last event.
        last_line: u64,
        /// The server's answer.
        #[source]
        source: ClientError,
    },
    /// A line of JSON Lines input is not a JSON object.
    #[error("{origin} line {line}: {detail}")]
    Line {
        /// Where the line came from: a file name or `stdin`.
        origin: String,
        /// Line number, 1-based.
        line: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading or writing a file or a stream failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done, e.g. `read /tmp/events.jsonl`.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server config file is not valid TOML for keel's settings.
    #[error("invalid config file {}: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        #[source]
        source: toml::de::Error,
    },
    /// An argument clap accepted is wrong for the command (exit code 2, like clap's own).
    #[error("{0}")]
    Usage(String),
    /// Some `bench` requests failed; the report was printed before this.
    #[error("{failed} of {requests} requests failed; first: {first}")]
    BenchFailures {
        /// Requests that failed.
        failed: u64,
        /// All requests sent.
        requests: u64,
        /// The first failure's message.
        first: String,
    },
    /// `keel status` found problems; the report naming them was printed before this.
    #[error("{} (listed above)", crate::status::needs_attention(*problems))]
    NeedsAttention {
        /// How many.
        problems: usize,
    },
    /// The embedded server failed to start or stopped with an error.
    #[error(transparent)]
    Server(#[from] keel_server::ServerError),
}

impl CliError {
    /// Builds an [`CliError::Io`] from what was being done and its cause.
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            action: action.into(),
            source,
        }
    }

    /// The process exit code: 2 for usage errors (as clap uses), 1 otherwise.
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }

    /// True when stdout was closed by its reader (`keel tail t | head`): not worth a message.
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// The output of a joined task. A task that panicked is a bug: its panic continues here.
pub(crate) fn joined<T>(outcome: Result<T, tokio::task::JoinError>) -> T {
    match outcome {
        Ok(output) => output,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("a task was cancelled while its JoinSet was being joined: {error}"),
    }
}
