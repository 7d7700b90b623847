//! Every bound of the filesystem as a named constant.

/// The longest name of one directory entry, in bytes (as on ext4).
pub const NAME_BYTES_MAX: usize = 255;

/// The largest size of one file, in bytes.
///
/// A write or size change past it fails with `EFBIG`, so a stray offset cannot make the
/// filesystem allocate unbounded memory. keel's segments stay far below it.
pub const FILE_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// How long [`PowerLossFs::power_loss`](crate::PowerLossFs::power_loss) waits for the kernel
/// to release the files and directories that the killed processes held open, in milliseconds.
///
/// The kernel sends those releases asynchronously after a process dies; a handle still open
/// after this wait means a process still uses the filesystem, and the power loss is refused.
pub const RELEASE_WAIT_MS_MAX: u64 = 5_000;

/// How often that wait looks at the open handles again, in milliseconds.
pub const RELEASE_POLL_MS: u64 = 5;

/// The block size that `statfs` and `stat` report, in bytes.
pub const BLOCK_BYTES: u32 = 4096;

/// The total and free blocks that `statfs` reports (16 TiB), so writers never see a full disk.
pub const STATFS_BLOCKS: u64 = 1 << 32;

/// The total and free inodes that `statfs` reports.
pub const STATFS_FILES: u64 = 1 << 32;

const _: () = assert!(
    FILE_BYTES_MAX <= usize::MAX as u64,
    "file offsets must fit in usize"
);
const _: () = assert!(RELEASE_POLL_MS > 0 && RELEASE_POLL_MS <= RELEASE_WAIT_MS_MAX);
const _: () = assert!(STATFS_BLOCKS * BLOCK_BYTES as u64 > FILE_BYTES_MAX);
