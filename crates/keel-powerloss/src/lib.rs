//! A test-only, in-memory FUSE filesystem that simulates power loss.
//!
//! keel's crash tests run the real server with its data directory on a [`PowerLossFs`], kill it
//! with `SIGKILL`, call [`PowerLossFs::power_loss`] to drop everything no `fsync` made durable,
//! restart the server on the remounted filesystem and check that nothing acknowledged is lost.
//!
//! Durability follows the strict POSIX model, stricter than ext4:
//! - a file's data and size become durable only by `fsync` or `fdatasync` of that file (or a
//!   write through an `O_SYNC`/`O_DSYNC` descriptor);
//! - a directory entry (create, `mkdir`, unlink, `rmdir`, both sides of a rename) becomes
//!   durable only when its directory is fsynced; each directory's durable entries are
//!   snapshotted by its own `fsyncdir` alone.
//!
//! After a power loss every directory has the entries of its last `fsyncdir` (none if never
//! synced), and only what those entries reach from the root survives: a directory whose own
//! entry was never made durable is gone with its whole subtree, even if it was itself synced.
//! Every surviving file has its data as of its last `fsync` (empty if never synced), and with
//! [`Loss::Torn`] also a seeded random prefix of its later writes and size changes, the last
//! write possibly landing in part.
//!
//! Mounting needs root and `/dev/fuse` (the mount is made with `mount(2)` directly). Locks
//! (`flock`, `fcntl`) are handled by the kernel locally. Symlinks, hard links and extended
//! attributes are not supported (`ENOSYS`); `RENAME_EXCHANGE` fails with `EINVAL`.
//!
//! ```
//! use keel_powerloss::{Loss, PowerLossFs};
//!
//! let dir = tempfile::tempdir()?;
//! let mut fs = PowerLossFs::mount(dir.path())?;
//! std::fs::write(dir.path().join("unsynced"), b"lost")?;
//! let report = fs.power_loss(Loss::Unsynced)?;
//! assert!(!dir.path().join("unsynced").exists());
//! assert_eq!(report.entries_dropped, 1);
//! # Ok::<(), std::io::Error>(())
//! ```

mod fuse;
pub mod limits;
mod loss;
mod state;

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::fuse::FuseAdapter;
use crate::limits::{RELEASE_POLL_MS, RELEASE_WAIT_MS_MAX};
use crate::state::State;

/// A mounted in-memory filesystem that can lose power.
///
/// Dropping it unmounts it. All methods take the caller's word that nothing else mounts at,
/// or unmounts, its mountpoint.
#[derive(Debug)]
pub struct PowerLossFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    /// The running FUSE session; `None` only after a failed unmount or remount.
    session: Option<BackgroundSession>,
}

/// What a power loss drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Everything not made durable: files revert to their last `fsync`, directories to their
    /// last `fsyncdir`.
    Unsynced,
    /// As [`Loss::Unsynced`] for directories, but each file also keeps a random prefix of its
    /// unsynced writes and size changes, in order, the last kept write applied only in part (a
    /// random byte count, possibly zero): a write persisted only in part.
    Torn {
        /// Seeds the random cuts; the same seed and the same history give the same result.
        seed: u64,
    },
}

/// What one power loss dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossReport {
    /// Directory entries added or removed since their directory's last `fsyncdir`, summed over
    /// every directory that existed (a name re-pointed by a rename counts once), plus entries
    /// dropped because they named an already reached directory a second time.
    pub entries_dropped: usize,
    /// Surviving files that lost some of their unsynced writes or size changes.
    pub files_reverted: usize,
    /// Bytes of unsynced writes that did not survive, in surviving and dropped files.
    pub bytes_dropped: u64,
    /// Writes that survived only in part ([`Loss::Torn`] only).
    pub writes_torn: usize,
    /// Files and directories that no durable entry reaches from the root, dropped whole.
    pub inodes_dropped: usize,
}

impl fmt::Display for LossReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "power loss dropped {} directory entries and {} inodes, reverted {} files, \
             dropped {} unsynced bytes, tore {} writes",
            self.entries_dropped,
            self.inodes_dropped,
            self.files_reverted,
            self.bytes_dropped,
            self.writes_torn,
        )
    }
}

/// Counters since [`PowerLossFs::mount`], across power losses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fsync` and `fdatasync` calls on files, and writes through `O_SYNC`/`O_DSYNC`.
    pub file_syncs: u64,
    /// `fsync` calls on directories.
    pub dir_syncs: u64,
    /// Write requests the kernel sent (one `write(2)` can become several).
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Files and directories created.
    pub entries_created: u64,
    /// Files and directories removed (unlink and `rmdir`; not those replaced by a rename).
    pub entries_removed: u64,
    /// Renames.
    pub renames: u64,
    /// Power losses simulated.
    pub power_losses: u64,
}

impl PowerLossFs {
    /// Mounts a new, empty filesystem at `mountpoint` (an existing empty directory), owned by
    /// the mountpoint's owner.
    ///
    /// # Errors
    /// When `mountpoint` cannot be read or the mount fails (not root, no `/dev/fuse`).
    pub fn mount(mountpoint: &Path) -> io::Result<PowerLossFs> {
        let metadata = std::fs::metadata(mountpoint)?;
        let state = Arc::new(Mutex::new(State::new(metadata.uid(), metadata.gid())));
        let session = spawn(&state, mountpoint)?;
        Ok(PowerLossFs {
            state,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// Simulates a power loss: unmounts (the caller has already killed every process using
    /// the filesystem), drops what `loss` says, and mounts what survives again at the same
    /// mountpoint. Returns what was lost.
    ///
    /// # Errors
    /// `ResourceBusy`, with nothing changed, when files stay open longer than
    /// [`RELEASE_WAIT_MS_MAX`] after the call; `NotConnected` after an earlier failed
    /// remount; the unmount's or the mount's error otherwise.
    pub fn power_loss(&mut self, loss: Loss) -> io::Result<LossReport> {
        self.wait_for_release()?;
        let session = self.session.take().ok_or_else(not_mounted)?;
        session.umount_and_join()?;
        let report = {
            let mut state = self.state();
            state.stats.power_losses += 1;
            loss::apply(&mut state, loss)
        };
        self.session = Some(spawn(&self.state, &self.mountpoint)?);
        Ok(report)
    }

    /// Counters since [`PowerLossFs::mount`].
    pub fn stats(&self) -> Stats {
        self.state().stats
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts the filesystem, dropping its contents, and reports an unmount error that
    /// dropping it would ignore.
    ///
    /// # Errors
    /// When the unmount fails, as when a file on the filesystem is still open
    /// [`RELEASE_WAIT_MS_MAX`] after the call.
    pub fn unmount(mut self) -> io::Result<()> {
        // The kernel releases the files of a killed process a little after it dies; an
        // unmount before that aborts the connection instead of ending it.
        self.wait_for_release()?;
        let session = self.session.take().ok_or_else(not_mounted)?;
        session.umount_and_join()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the kernel to release every handle, as it does soon after the processes
    /// holding them die.
    fn wait_for_release(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(RELEASE_WAIT_MS_MAX);
        loop {
            let open = self.state().handles_open();
            if open == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let message = format!(
                    "{open} files or directories on {} are still open {RELEASE_WAIT_MS_MAX} ms \
                     after the power loss was asked for; kill every process using it first",
                    self.mountpoint.display()
                );
                return Err(io::Error::new(io::ErrorKind::ResourceBusy, message));
            }
            std::thread::sleep(Duration::from_millis(RELEASE_POLL_MS));
        }
    }
}

impl Drop for PowerLossFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Drop has no one to report to; a failed unmount (a file still open) leaves the
            // mount served by its thread until the process exits.
            let _ = session.umount_and_join();
        }
    }
}

fn not_mounted() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the power-loss filesystem is not mounted",
    )
}

/// Mounts `state` at `mountpoint`, served by a background thread.
fn spawn(state: &Arc<Mutex<State>>, mountpoint: &Path) -> io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("keel-powerloss".to_owned()),
        MountOption::NoAtime,
    ];
    // Any user may use it, as a test may run the server under another uid.
    config.acl = SessionACL::All;
    fuser::spawn_mount(
        FuseAdapter {
            state: Arc::clone(state),
        },
        mountpoint,
        &config,
    )
}
