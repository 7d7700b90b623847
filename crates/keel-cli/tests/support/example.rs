//! The Python reference examples of `examples/` as child processes, each started by exactly
//! the one command its docstring opens with, so that the documentation cannot drift from what
//! the tests run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `examples/{file}`.
pub fn example_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(file)
}

/// Fails the test clearly when python3 cannot run.
pub fn require_python3() {
    let version = Command::new("python3").arg("--version").output();
    match version {
        Ok(output) if output.status.success() => {}
        other => panic!(
            "this test runs a Python example of examples/ and needs python3 on the PATH \
             (apt-get install python3; scripts/install-test-deps.sh installs it): {other:?}"
        ),
    }
}

/// The example's one command, the first line of its docstring: `python3 examples/{file} ...`,
/// with arguments split on spaces.
pub fn documented_command(file: &str) -> Vec<String> {
    let source = std::fs::read_to_string(example_path(file)).unwrap();
    let prefix = format!("python3 examples/{file} ");
    let line = source
        .lines()
        .find_map(|line| line.strip_prefix("\"\"\""))
        .filter(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{file}'s docstring starts with the command that runs it"));
    line.split_whitespace().map(str::to_owned).collect()
}

/// The value that follows `flag` in `command`, parsed.
pub fn argument<T: std::str::FromStr>(command: &[String], flag: &str) -> T {
    let position = command.iter().position(|a| a == flag);
    let value = position.and_then(|p| command.get(p + 1));
    let value = value.unwrap_or_else(|| panic!("{command:?} has no {flag} VALUE"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{flag} {value} does not parse"))
}

/// An example started with its documented command against a keel at `url` (the command's
/// `--server` value replaced), plus `extra` arguments; stdout and stderr go to `log`. Killed
/// when dropped.
pub struct Example {
    file: String,
    child: Child,
    log: PathBuf,
}

impl Example {
    pub fn start(file: &str, url: &str, log: &Path, extra: &[&str]) -> Example {
        let command = documented_command(file);
        let mut args: Vec<String> = command[1..].to_vec();
        let server = args.iter().position(|a| a == "--server").unwrap() + 1;
        args[server] = url.to_owned();
        args[0] = example_path(file).to_str().unwrap().to_owned();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let output = std::fs::File::create(log).unwrap();
        let child = Command::new(&command[0])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|error| panic!("start python3 examples/{file}: {error}"));
        Example {
            file: file.to_owned(),
            child,
            log: log.to_owned(),
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with its output if it exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited ({status}); its output:\n{}",
                self.file,
                self.output()
            );
        }
    }

    /// Waits for it to exit on its own; returns its exit status and output. Panics if it runs
    /// longer than `limit`.
    pub async fn exit(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {limit:?}:\n{}",
                self.file,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for it to exit on its own and asserts it succeeded; returns its output.
    pub async fn finish(self, limit: Duration) -> String {
        let file = self.file.clone();
        let (status, output) = self.exit(limit).await;
        assert!(status.success(), "{file} failed ({status}):\n{output}");
        output
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        // A consumer that runs forever would outlive a failed test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
