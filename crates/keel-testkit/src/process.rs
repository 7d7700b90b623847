//! The real `keel` binary as a child process, for tests that kill or signal it, and any
//! other program that serves keel's HTTP API (one that embeds keel) the same way.
//!
//! Only the crate that builds the binary knows where it is, so the path comes in from there
//! (or, in another package's tests, from [`KeelBinary::from_workspace`]):
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

/// The resident set size (`VmRSS` of `/proc/PID/status`) of process `pid`, in bytes; pass
/// [`std::process::id`] for the test's own process.
pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

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
        let mut command = self.serve_command(data_dir, listen);
        command.args(extra_args);
        KeelProcess::spawn(command, data_dir, listen, log_path)
    }

    /// The `keel` binary of this workspace's build, for the tests of another package than
    /// keel-cli (cargo names a binary to the tests of its own package only): see
    /// [`workspace_binary`].
    pub fn from_workspace() -> KeelBinary {
        static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let path = PATH.get_or_init(|| {
            let path = workspace_binary("keel-cli", "keel");
            path.to_str().expect("a UTF-8 target path").to_owned()
        });
        KeelBinary::new(path)
    }
}

/// The binary `name` of the workspace's package `package`, for tests of another package
/// (cargo's `CARGO_BIN_EXE_<name>` covers only the binaries of the test's own package): the
/// one in the running test's own target directory and profile. When it is not there yet, it
/// is built first with `cargo build -p PACKAGE --bin NAME`.
///
/// A binary already there is taken as it is, so it is only as fresh as the last build of
/// the workspace: `cargo nextest run --workspace` (what scripts/test.sh runs) builds every
/// binary before any test starts; a test run of one package alone does not rebuild the
/// binaries of another.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    // The test runs as TARGET/PROFILE/deps/TEST-HASH.
    let test = std::env::current_exe().expect("the test's own path");
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from TARGET/PROFILE/deps");
    let binary = profile_dir.join(name);
    if binary.exists() {
        return binary;
    }
    let target_dir = profile_dir.parent().expect("TARGET/PROFILE has a parent");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile directory above {}", test.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", package, "--bin", name, "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .status()
        .expect("run cargo build");
    assert!(
        status.success() && binary.exists(),
        "cargo build -p {package} --bin {name} failed ({status}), or built no {}",
        binary.display()
    );
    binary
}

/// Starts `command` with no stdin, appending its stdout and stderr to `log_path`.
pub(crate) fn spawn_logged(command: &mut Command, log_path: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|error| panic!("open {}: {error}", log_path.display()));
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("start {command:?}: {error}"))
}

/// Sends `signal` (a name `kill` knows: `TERM`, `STOP`, `CONT`) to process `pid`, with the
/// `kill` command: the workspace forbids the `unsafe` a `libc::kill` call needs.
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap_or_else(|error| panic!("run kill -{signal} {pid}: {error}"));
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    if signal == "STOP" {
        wait_stopped(pid);
    }
}

/// Waits until every thread of `pid` has stopped: a SIGSTOP takes effect as each thread next
/// enters the kernel, so a thread running on another core can still answer a request sent
/// right after `kill` returned.
fn wait_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let task_dir = format!("/proc/{pid}/task");
    loop {
        let states: Vec<char> = std::fs::read_dir(&task_dir)
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
                    // The state follows the command's closing parenthesis.
                    .filter_map(|stat| {
                        stat.rsplit_once(") ")
                            .and_then(|(_, rest)| rest.chars().next())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !states.is_empty() && states.iter().all(|state| *state == 'T') {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not stop within 5 s after SIGSTOP: {states:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A child process serving keel's HTTP API (`keel serve`, or a program embedding keel);
/// dropping it kills it.
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
    /// Starts `command`, a program that serves keel's HTTP API on `listen` from `data_dir`
    /// (`keel serve`, or a program that embeds keel and serves it), appending its output to
    /// `log_path`, without waiting for it to be ready (then [`KeelProcess::wait_ready`]).
    pub fn spawn(
        mut command: Command,
        data_dir: &Path,
        listen: &str,
        log_path: &Path,
    ) -> KeelProcess {
        let child = spawn_logged(&mut command, log_path);
        KeelProcess {
            url: format!("http://{listen}"),
            listen: listen.to_owned(),
            data_dir: data_dir.to_owned(),
            log: log_path.to_owned(),
            child,
        }
    }

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

    /// SIGSTOP: it stops where it is, holding everything (a long GC pause, a frozen VM).
    pub fn pause(&self) {
        send_signal(self.child.id(), "STOP");
    }

    /// SIGCONT after [`KeelProcess::pause`].
    pub fn resume(&self) {
        send_signal(self.child.id(), "CONT");
    }

    /// SIGHUP: keel reads its TLS certificate and key again.
    pub fn hang_up(&self) {
        send_signal(self.child.id(), "HUP");
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        send_signal(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }

    /// What it logged so far (empty if the log cannot be read).
    pub fn log_text(&self) -> String {
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
