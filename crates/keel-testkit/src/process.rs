//! The real `keel` binary as a child process, for tests that kill or signal it.
//!
//! Only the crate that builds the binary knows where it is, so the path comes in from there:
//!
//! ```no_run
//! use keel_testkit::process::KeelBinary;
//!
//! // In a keel-cli integration test:
//! // const KEEL: KeelBinary = KeelBinary::new(env!("CARGO_BIN_EXE_keel"));
//! const KEEL: KeelBinary = KeelBinary::new("target/debug/keel");
//! # async fn example(data_dir: &std::path::Path) {
//! let keel = KEEL.start(data_dir).await;
//! keel.kill9();
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::readiness::{READY_WAIT, Readiness, wait_ready};

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `keel` binary under test, and how to run `keel serve` with it.
#[derive(Debug, Clone, Copy)]
pub struct KeelBinary {
    path: &'static str,
    /// A program and its arguments that run keel in turn (empty: keel runs directly).
    wrapper: &'static [&'static str],
}

impl KeelBinary {
    /// The binary at `path`: `env!("CARGO_BIN_EXE_keel")` in keel-cli's tests.
    pub const fn new(path: &'static str) -> KeelBinary {
        KeelBinary { path, wrapper: &[] }
    }

    /// The same binary, run through `wrapper`: a program and its arguments, which then runs
    /// keel, e.g. `["fiu-run", "-x"]` for fault injection. A wrapper that execs keel (as
    /// fiu-run does) keeps [`KeelProcess::pid`] keel's.
    pub const fn wrapped_in(self, wrapper: &'static [&'static str]) -> KeelBinary {
        KeelBinary {
            path: self.path,
            wrapper,
        }
    }

    /// `keel serve --data-dir DATA_DIR --listen LISTEN` (through the wrapper, if any), not
    /// started.
    pub fn serve_command(&self, data_dir: &Path, listen: &str) -> Command {
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(self.path);
                command
            }
            None => Command::new(self.path),
        };
        command.args([
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            listen,
        ]);
        command
    }

    /// Starts `keel serve` on a free port and waits until it is ready.
    pub async fn start(&self, data_dir: &Path) -> KeelProcess {
        self.start_on(data_dir, &format!("127.0.0.1:{}", free_port()))
            .await
    }

    /// Starts `keel serve` on `listen`, logging beside the data dir, and waits until it is
    /// ready.
    pub async fn start_on(&self, data_dir: &Path, listen: &str) -> KeelProcess {
        let log_path = data_dir.with_extension("log");
        let process = self.spawn_with(data_dir, listen, &log_path, &[]);
        process.wait_ready().await;
        process
    }

    /// Starts `keel serve` on `listen` with `extra_args`, appending its output to `log_path`,
    /// without waiting for it to be ready (for a test that kills it while it starts; then
    /// [`KeelProcess::wait_ready`]).
    pub fn spawn_with(
        &self,
        data_dir: &Path,
        listen: &str,
        log_path: &Path,
        extra_args: &[&str],
    ) -> KeelProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .unwrap();
        let child = self
            .serve_command(data_dir, listen)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start keel");
        KeelProcess {
            url: format!("http://{listen}"),
            listen: listen.to_owned(),
            data_dir: data_dir.to_owned(),
            log: log_path.to_owned(),
            child,
        }
    }
}

/// A `keel serve` child process; dropping it kills it.
pub struct KeelProcess {
    /// `http://LISTEN`.
    pub url: String,
    /// The address it listens on, `HOST:PORT`.
    pub listen: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
}

impl KeelProcess {
    /// Waits until /readyz answers 200; fails at once if keel reports its data damaged.
    pub async fn wait_ready(&self) {
        let readiness = wait_ready(&reqwest::Client::new(), &self.url).await;
        match readiness {
            Some(Readiness::Ready) => {}
            // A damaged data directory stays 503: no point waiting.
            Some(Readiness::Damaged(body)) => panic!(
                "keel at {} started damaged: {body}; its log: {}",
                self.url,
                self.log_text()
            ),
            None => panic!(
                "keel at {} not ready after {READY_WAIT:?}; its log: {}",
                self.url,
                self.log_text()
            ),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or fsync anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }

    /// What it logged so far (empty if the log cannot be read).
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        // A test that failed first must not leave a server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
