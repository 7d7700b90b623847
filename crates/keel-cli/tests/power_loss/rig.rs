//! The rig every power-loss test runs on: a [`PowerLossFs`] mounted in a temporary directory,
//! the real `keel` binary serving a data directory on it (started and killed through the test
//! kit's `KeelProcess`), the losses, and the environment knobs.

use std::fs::File;
use std::path::{Path, PathBuf};

use keel_powerloss::{Loss, LossReport, PowerLossFs, Stats};
use tokio::task::JoinHandle;

use crate::api::Api;
use keel_testkit::process::{KeelProcess, free_port};
use keel_testkit::random::splitmix64;

use crate::support::KEEL;

/// Whether this machine can mount the test filesystem; `false` only when told to skip (and
/// then it says so: a power-loss test never passes silently).
pub(crate) fn fuse_available() -> bool {
    if std::env::var("KEEL_POWERLOSS").as_deref() == Ok("skip") {
        eprintln!("SKIPPED: the power-loss tests (KEEL_POWERLOSS=skip)");
        return false;
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "the power-loss tests need /dev/fuse and root (as CI has); set KEEL_POWERLOSS=skip to \
         skip them on this machine"
    );
    true
}

/// The seed of a test's random choices: `KEEL_TEST_SEED`, else the clock. Printed, so that a
/// failing run can be replayed.
pub(crate) fn seed() -> u64 {
    let seed = env_number("KEEL_TEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!("power loss: KEEL_TEST_SEED={seed}");
    seed
}

/// How many crash cycles (or kill points) a test runs: `KEEL_POWERLOSS_CYCLES`, else
/// `default`, which keeps the whole binary within CI's budget.
pub(crate) fn cycles(default: u64) -> u64 {
    env_number("KEEL_POWERLOSS_CYCLES").unwrap_or(default)
}

/// How many times a test tries to land a kill in a window a few filesystem calls wide, when
/// told: `KEEL_POWERLOSS_ATTEMPTS`.
pub(crate) fn attempts() -> Option<u64> {
    env_number("KEEL_POWERLOSS_ATTEMPTS")
}

/// `KEEL_POWERLOSS_KILL_ONLY=1`: every loss is skipped, leaving kill -9 alone. For diagnosis:
/// a failure that stays is a crash bug, one that goes is a missing fsync.
pub(crate) fn kill_only() -> bool {
    std::env::var("KEEL_POWERLOSS_KILL_ONLY").is_ok_and(|value| value == "1")
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value}: not a number")),
    )
}

/// The loss of crash cycle `cycle`: even cycles drop everything unsynced, odd ones keep a
/// torn, seeded part of it.
fn loss_for(cycle: u64, seed: u64) -> Loss {
    if cycle.is_multiple_of(2) {
        Loss::Unsynced
    } else {
        Loss::Torn {
            seed: splitmix64(seed.wrapping_add(cycle)),
        }
    }
}

/// A power-loss filesystem and the keel that runs on it: where keel keeps its data, log and
/// config, and the keel process while one runs.
pub(crate) struct Rig {
    /// Declared first: killed before the filesystem is unmounted.
    keel: Option<KeelProcess>,
    /// Declared before `dir`: unmounted before the directory is removed.
    fs: PowerLossFs,
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    log: PathBuf,
    listen: String,
    config: PathBuf,
    /// Seeds the torn losses of [`Rig::crash`].
    seed: u64,
    /// Crashes so far.
    crashes: u64,
    /// Every loss so far, summed.
    losses: LossReport,
}

impl Rig {
    /// Mounts a fresh filesystem; keel will run with `config` (TOML) as its config file and
    /// the losses of [`Rig::crash`] will be seeded by `seed`. keel creates its data directory
    /// itself, so that creation is under test too.
    pub(crate) fn mount(config: &str, seed: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let fs = PowerLossFs::mount(&mountpoint).expect("mount the power-loss filesystem");
        let config_path = dir.path().join("keel.toml");
        std::fs::write(&config_path, config).unwrap();
        Rig {
            keel: None,
            fs,
            data_dir: mountpoint.join("keel-data"),
            log: dir.path().join("keel.log"),
            listen: format!("127.0.0.1:{}", free_port()),
            config: config_path,
            dir,
            seed,
            crashes: 0,
            losses: LossReport::default(),
        }
    }

    /// A client of the keel this rig runs (the address stays across restarts).
    pub(crate) fn api(&self) -> Api {
        Api::new(format!("http://{}", self.listen))
    }

    /// Starts keel and waits until it is ready (never "damaged").
    pub(crate) async fn start(&mut self) {
        self.spawn();
        self.keel.as_ref().unwrap().wait_ready().await;
    }

    /// Starts keel without waiting for it to be ready.
    pub(crate) fn spawn(&mut self) {
        assert!(self.keel.is_none(), "keel is running already");
        let args = ["--config", self.config.to_str().unwrap()];
        let keel = KEEL.spawn_with(&self.data_dir, &self.listen, &self.log, &args);
        self.keel = Some(keel);
    }

    /// Kills keel with SIGKILL: no chance to flush or fsync anything.
    pub(crate) fn kill(&mut self) {
        self.keel.take().expect("keel is running").kill9();
    }

    /// Kills keel and waits for `clients` (each ends at the first request keel does not
    /// answer, so none outlives this keel).
    pub(crate) async fn kill_under(&mut self, clients: Vec<JoinHandle<()>>) {
        self.kill();
        for client in clients {
            client.await.unwrap();
        }
    }

    /// Drops what `loss` says (nothing under `KEEL_POWERLOSS_KILL_ONLY=1`); keel must be dead.
    pub(crate) fn power_loss(&mut self, loss: Loss) -> LossReport {
        assert!(self.keel.is_none(), "power loss with keel running");
        if kill_only() {
            eprintln!("{loss:?} skipped (KEEL_POWERLOSS_KILL_ONLY=1)");
            return LossReport::default();
        }
        let report = self.fs.power_loss(loss).expect("power loss");
        eprintln!("{loss:?}: {report}");
        add(&mut self.losses, &report);
        report
    }

    /// Kills keel under `clients` ([`Rig::kill_under`]), drops what is unsynced (every other
    /// crash keeping a torn, seeded part of it), and starts keel again.
    pub(crate) async fn crash(&mut self, clients: Vec<JoinHandle<()>>) {
        self.kill_under(clients).await;
        self.power_loss(loss_for(self.crashes, self.seed));
        self.crashes += 1;
        self.start().await;
    }

    /// Every loss so far, summed.
    pub(crate) fn losses(&self) -> LossReport {
        self.losses
    }

    /// The filesystem's counters since it was mounted.
    pub(crate) fn stats(&self) -> Stats {
        self.fs.stats()
    }

    /// Spins (without yielding the thread) until `reached` holds for the filesystem's
    /// counters, for at most 10 s; the counters that reached it. For a kill that must land
    /// within a few filesystem calls of an operation.
    pub(crate) fn spin_until(&self, reached: impl Fn(&Stats) -> bool) -> Option<Stats> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        tokio::task::block_in_place(|| {
            loop {
                let stats = self.fs.stats();
                if reached(&stats) {
                    return Some(stats);
                }
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::hint::spin_loop();
            }
        })
    }

    /// How many lines of keel's log (every run on this rig) contain `message`.
    pub(crate) fn log_lines(&self, message: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|line| line.contains(message)).count()
    }

    /// Whether keel's data directory exists.
    pub(crate) fn data_dir_exists(&self) -> bool {
        self.data_dir.exists()
    }

    /// Copies the data directory (keel not running) to `to`, off the power-loss filesystem.
    pub(crate) fn save_data_dir(&self, to: &Path) {
        assert!(
            self.keel.is_none(),
            "saving a data directory keel is writing"
        );
        copy_tree(&self.data_dir, to, false);
    }

    /// Makes a copy saved by [`Rig::save_data_dir`] the data directory, every file and
    /// directory of it fsynced: as if keel had written it all durably.
    pub(crate) fn restore_data_dir(&self, from: &Path) {
        copy_tree(from, &self.data_dir, true);
        File::open(self.fs.mountpoint())
            .and_then(|mountpoint| mountpoint.sync_all())
            .unwrap();
    }

    /// Kills keel if it runs and unmounts the filesystem, failing on an unmount error.
    pub(crate) fn unmount(mut self) {
        if let Some(keel) = self.keel.take() {
            keel.kill9();
        }
        self.fs.unmount().expect("unmount");
        drop(self.dir);
    }
}

/// Copies the tree at `from` to `to` (which must not exist); `durably`: fsyncs every file
/// and directory written.
fn copy_tree(from: &Path, to: &Path, durably: bool) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target, durably);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            if durably {
                File::open(&target).unwrap().sync_all().unwrap();
            }
        }
    }
    if durably {
        File::open(to).unwrap().sync_all().unwrap();
    }
}

fn add(total: &mut LossReport, report: &LossReport) {
    total.entries_dropped += report.entries_dropped;
    total.files_reverted += report.files_reverted;
    total.bytes_dropped += report.bytes_dropped;
    total.writes_torn += report.writes_torn;
    total.inodes_dropped += report.inodes_dropped;
}
