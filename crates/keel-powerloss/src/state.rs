//! The in-memory filesystem: inodes, directory entries, open handles, and for each file and
//! directory what a power loss would keep.
//!
//! Durability follows the strict POSIX model:
//! - a file's data and size are durable only as of its last `fsync` (`FileBody::durable`); what
//!   changed since is kept, in order, in `FileBody::unsynced`;
//! - a directory's entries are durable only as of its own last `fsyncdir`
//!   (`DirBody::durable`), whatever happened to its parent.
//!
//! Invariants, kept by every operation below:
//! - every live entry (`DirBody::entries`) and every durable entry (`DirBody::durable`) names an
//!   inode present in `State::inodes`;
//! - `Inode::links` counts the live entries naming the inode, `Inode::durable_links` the durable
//!   ones, and an inode is dropped only when both are zero, no handle has it open and the kernel
//!   holds no lookup of it (see `State::drop_if_unused`);
//! - replaying `FileBody::unsynced` onto `FileBody::durable` gives `FileBody::data`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo, RenameFlags, TimeOrNow};

use crate::Stats;
use crate::limits::{BLOCK_BYTES, FILE_BYTES_MAX, NAME_BYTES_MAX};

/// The root directory's inode number (FUSE fixes it).
pub(crate) const ROOT: u64 = INodeNo::ROOT.0;

/// One change to a file's data or size that no `fsync` has made durable yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FileOp {
    /// `bytes` written at `offset`, extending the file with zeros up to `offset` if needed.
    Write {
        /// Where the write starts, in bytes from the file's start.
        offset: u64,
        /// What was written.
        bytes: Vec<u8>,
    },
    /// The file's size set to `size` (truncate, extend, or `fallocate`).
    SetLen {
        /// The new size, in bytes.
        size: u64,
    },
}

impl FileOp {
    /// Applies this change to `data`, as the file's write or size change did.
    pub(crate) fn apply(&self, data: &mut Vec<u8>) {
        match self {
            FileOp::Write { offset, bytes } => write_at(data, *offset, bytes),
            FileOp::SetLen { size } => set_len(data, *size),
        }
    }

    /// The bytes this change wrote (zero for a size change).
    pub(crate) fn written_bytes(&self) -> u64 {
        match self {
            FileOp::Write { bytes, .. } => bytes.len() as u64,
            FileOp::SetLen { .. } => 0,
        }
    }
}

/// Writes `bytes` at `offset`, zero-filling any gap past the end.
pub(crate) fn write_at(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    if bytes.is_empty() {
        // Writing nothing changes nothing, not even the size past a gap.
        return;
    }
    let start = usize::try_from(offset).expect("offsets are checked against FILE_BYTES_MAX");
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

/// Truncates or zero-extends `data` to `size` bytes.
fn set_len(data: &mut Vec<u8>, size: u64) {
    let size = usize::try_from(size).expect("sizes are checked against FILE_BYTES_MAX");
    data.resize(size, 0);
    // A file cut to a fraction of its size gives the memory back.
    if data.capacity() > 2 * size.max(4096) {
        data.shrink_to_fit();
    }
}

/// A regular file's contents: what readers see and what survives a power loss.
#[derive(Debug, Default)]
pub(crate) struct FileBody {
    /// The current contents.
    pub(crate) data: Vec<u8>,
    /// The contents as of the last `fsync` (empty if never synced).
    pub(crate) durable: Vec<u8>,
    /// The changes since the last `fsync`, oldest first.
    pub(crate) unsynced: Vec<FileOp>,
}

impl FileBody {
    /// Makes the current contents durable: the crash this survives is any power loss after it.
    fn sync(&mut self) {
        for op in self.unsynced.drain(..) {
            op.apply(&mut self.durable);
        }
        debug_assert_eq!(self.durable.len(), self.data.len());
    }

    fn record(&mut self, op: FileOp) {
        op.apply(&mut self.data);
        self.unsynced.push(op);
    }
}

/// A directory's entries: the live ones and the ones its last `fsyncdir` made durable.
#[derive(Debug)]
pub(crate) struct DirBody {
    /// The live entries, name to inode number.
    pub(crate) entries: BTreeMap<OsString, u64>,
    /// The entries as of this directory's last `fsyncdir` (empty if never synced).
    pub(crate) durable: BTreeMap<OsString, u64>,
    /// The directory holding the live entry of this one (the root is its own parent).
    pub(crate) parent: u64,
}

/// What an inode is.
#[derive(Debug)]
pub(crate) enum Body {
    /// A regular file.
    File(FileBody),
    /// A directory.
    Dir(DirBody),
}

/// One file or directory.
#[derive(Debug)]
pub(crate) struct Inode {
    pub(crate) body: Body,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: SystemTime,
    pub(crate) mtime: SystemTime,
    pub(crate) ctime: SystemTime,
    /// Live directory entries naming this inode.
    pub(crate) links: u32,
    /// Durable directory entries (`DirBody::durable`) naming this inode.
    pub(crate) durable_links: u32,
    /// Open file or directory handles on this inode.
    pub(crate) handles_open: u32,
    /// Lookups the kernel holds (entry replies minus forgets).
    pub(crate) lookups: u64,
}

impl Inode {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            body,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 1,
            durable_links: 0,
            handles_open: 0,
            lookups: 0,
        }
    }

    fn kind(&self) -> FileType {
        match self.body {
            Body::File(_) => FileType::RegularFile,
            Body::Dir(_) => FileType::Directory,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// An open file or directory.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) ino: u64,
    /// Opened with `O_APPEND`: every write goes to the end.
    append: bool,
    /// A directory's listing, taken when `readdir` starts at offset 0.
    listing: Vec<(OsString, u64, FileType)>,
}

/// The owner and permissions of a new inode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// The permission bits, `umask` already applied.
    pub(crate) perm: u16,
}

/// The attribute changes of one `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttrChange {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<TimeOrNow>,
    pub(crate) mtime: Option<TimeOrNow>,
}

/// The whole filesystem.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) inodes: BTreeMap<u64, Inode>,
    pub(crate) handles: HashMap<u64, Handle>,
    /// The next inode number; numbers are never reused.
    ino_next: u64,
    fh_next: u64,
    pub(crate) stats: Stats,
}

impl State {
    /// An empty filesystem whose root belongs to `uid`:`gid`.
    pub(crate) fn new(uid: u32, gid: u32) -> State {
        let root = DirBody {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            parent: ROOT,
        };
        let root = Inode::new(Body::Dir(root), 0o755, uid, gid);
        State {
            inodes: BTreeMap::from([(ROOT, root)]),
            handles: HashMap::new(),
            ino_next: ROOT + 1,
            fh_next: 1,
            stats: Stats::default(),
        }
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileBody, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(file) => Ok(file),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn dir(&self, ino: u64) -> Result<&DirBody, Errno> {
        match &self.inode(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirBody, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(dir) => Ok(dir),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// The inode that `name` names in directory `parent`.
    pub(crate) fn entry(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// The attributes the kernel is told of `ino`.
    pub(crate) fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inode = self.inode(ino)?;
        let (size, nlink) = match &inode.body {
            Body::File(file) => (file.data.len() as u64, inode.links),
            Body::Dir(_) => (u64::from(BLOCK_BYTES), 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.ctime,
            kind: inode.kind(),
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: BLOCK_BYTES,
            flags: 0,
        })
    }

    /// Looks `name` up in `parent`; the kernel now holds one more lookup of the result.
    pub(crate) fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let ino = self.entry(parent, name)?;
        self.inode_mut(ino)?.lookups += 1;
        self.attr(ino)
    }

    /// The kernel dropped `count` lookups of `ino`.
    pub(crate) fn forget(&mut self, ino: u64, count: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(count);
            self.drop_if_unused(ino);
        }
    }

    /// Applies one `setattr`; a size change is an unsynced change of the file.
    pub(crate) fn set_attr(&mut self, ino: u64, change: AttrChange) -> Result<FileAttr, Errno> {
        if let Some(size) = change.size {
            self.set_file_len(ino, size)?;
        }
        let inode = self.inode_mut(ino)?;
        let now = SystemTime::now();
        if let Some(mode) = change.mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        inode.uid = change.uid.unwrap_or(inode.uid);
        inode.gid = change.gid.unwrap_or(inode.gid);
        let resolve = |time: TimeOrNow| match time {
            TimeOrNow::SpecificTime(time) => time,
            TimeOrNow::Now => now,
        };
        inode.atime = change.atime.map_or(inode.atime, resolve);
        inode.mtime = change.mtime.map_or(inode.mtime, resolve);
        inode.ctime = now;
        self.attr(ino)
    }

    fn set_file_len(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        if size > FILE_BYTES_MAX {
            return Err(Errno::EFBIG);
        }
        self.file_mut(ino)?.record(FileOp::SetLen { size });
        self.inode_mut(ino)?.touch();
        Ok(())
    }

    /// Adds a new inode as `name` in `parent` (`EEXIST` if the name is taken).
    fn insert(
        &mut self,
        parent: u64,
        name: &OsStr,
        body: Body,
        owner: Owner,
    ) -> Result<u64, Errno> {
        check_name(name)?;
        if self.inode(parent)?.links == 0 {
            // The directory was removed: nothing may be created in it.
            return Err(Errno::ENOENT);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.ino_next;
        self.ino_next += 1;
        let mut inode = Inode::new(body, owner.perm, owner.uid, owner.gid);
        inode.lookups = 1;
        self.inodes.insert(ino, inode);
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.inode_mut(parent)?.touch();
        self.stats.entries_created += 1;
        Ok(ino)
    }

    /// Creates an empty regular file (`mknod`).
    pub(crate) fn make_file(
        &mut self,
        parent: u64,
        name: &OsStr,
        owner: Owner,
    ) -> Result<FileAttr, Errno> {
        let ino = self.insert(parent, name, Body::File(FileBody::default()), owner)?;
        self.attr(ino)
    }

    /// Creates a directory (`mkdir`).
    pub(crate) fn make_dir(
        &mut self,
        parent: u64,
        name: &OsStr,
        owner: Owner,
    ) -> Result<FileAttr, Errno> {
        let body = DirBody {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            parent,
        };
        let ino = self.insert(parent, name, Body::Dir(body), owner)?;
        self.attr(ino)
    }

    /// Creates and opens a file, or opens the existing one unless `O_EXCL` is in `flags`.
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        owner: Owner,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let ino = match self.dir(parent)?.entries.get(name) {
            // The kernel checks O_EXCL after its own lookup; this covers a create racing it.
            Some(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
            Some(&ino) => {
                self.inode_mut(ino)?.lookups += 1;
                ino
            }
            None => self.insert(parent, name, Body::File(FileBody::default()), owner)?,
        };
        let fh = self.open(ino, flags)?;
        Ok((self.attr(ino)?, fh))
    }

    /// Opens a file; `O_TRUNC` empties it.
    pub(crate) fn open(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        self.file_mut(ino)?;
        if flags & libc::O_TRUNC != 0 {
            self.set_file_len(ino, 0)?;
        }
        Ok(self.add_handle(ino, flags & libc::O_APPEND != 0))
    }

    /// Opens a directory.
    pub(crate) fn open_dir(&mut self, ino: u64) -> Result<u64, Errno> {
        self.dir(ino)?;
        Ok(self.add_handle(ino, false))
    }

    fn add_handle(&mut self, ino: u64, append: bool) -> u64 {
        let fh = self.fh_next;
        self.fh_next += 1;
        self.handles.insert(
            fh,
            Handle {
                ino,
                append,
                listing: Vec::new(),
            },
        );
        self.inodes
            .get_mut(&ino)
            .expect("the caller checked the inode")
            .handles_open += 1;
        fh
    }

    /// Closes a file or directory handle.
    pub(crate) fn release(&mut self, fh: u64) -> Result<(), Errno> {
        let handle = self.handles.remove(&fh).ok_or(Errno::EBADF)?;
        let inode = self.inode_mut(handle.ino)?;
        inode.handles_open -= 1;
        self.drop_if_unused(handle.ino);
        Ok(())
    }

    /// Up to `size` bytes of the file from `offset` (fewer at the end of the file).
    pub(crate) fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let data = &self.file_mut(ino)?.data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    /// Writes `bytes` at `offset`, or at the end when the file was opened with `O_APPEND`
    /// (`flags` are the file's open flags as the kernel sends them with each write).
    pub(crate) fn write(
        &mut self,
        fh: u64,
        offset: u64,
        bytes: &[u8],
        flags: i32,
    ) -> Result<u32, Errno> {
        let handle = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        let ino = handle.ino;
        let append = handle.append || flags & libc::O_APPEND != 0;
        let file = self.file_mut(ino)?;
        let offset = if append {
            file.data.len() as u64
        } else {
            offset
        };
        if offset.saturating_add(bytes.len() as u64) > FILE_BYTES_MAX {
            return Err(Errno::EFBIG);
        }
        file.record(FileOp::Write {
            offset,
            bytes: bytes.to_vec(),
        });
        if flags & libc::O_DSYNC != 0 {
            // O_SYNC and O_DSYNC (O_SYNC includes its bit) make a write durable on return.
            file.sync();
            self.stats.file_syncs += 1;
        }
        self.inode_mut(ino)?.touch();
        self.stats.writes += 1;
        self.stats.bytes_written += bytes.len() as u64;
        u32::try_from(bytes.len()).map_err(|_| Errno::EINVAL)
    }

    /// `fallocate`: mode 0 extends the file to cover the range; `FALLOC_FL_KEEP_SIZE` alone
    /// changes nothing visible; other modes are not supported.
    pub(crate) fn allocate(
        &mut self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let size = self.file_mut(ino)?.data.len() as u64;
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        match mode {
            0 if end > size => self.set_file_len(ino, end),
            0 => Ok(()),
            libc::FALLOC_FL_KEEP_SIZE if end <= FILE_BYTES_MAX => Ok(()),
            libc::FALLOC_FL_KEEP_SIZE => Err(Errno::EFBIG),
            _ => Err(Errno::ENOTSUP),
        }
    }

    /// `fsync`/`fdatasync` of a file, or `fsyncdir` of a directory: the crash this survives is
    /// any power loss after it, for this inode's data or entries only.
    pub(crate) fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(file) => {
                file.sync();
                self.stats.file_syncs += 1;
            }
            Body::Dir(_) => {
                self.sync_dir(ino)?;
                self.stats.dir_syncs += 1;
            }
        }
        Ok(())
    }

    /// Snapshots a directory's live entries as its durable ones, moving the durable links.
    fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        let dir = self.dir_mut(ino)?;
        let old = std::mem::replace(&mut dir.durable, dir.entries.clone());
        let new: Vec<u64> = dir.durable.values().copied().collect();
        for child in &new {
            self.inode_mut(*child)?.durable_links += 1;
        }
        for child in old.into_values() {
            self.inode_mut(child)?.durable_links -= 1;
            self.drop_if_unused(child);
        }
        Ok(())
    }

    /// Removes the file `name` from `parent`.
    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.entry(parent, name)?;
        if let Body::Dir(_) = self.inode(ino)?.body {
            return Err(Errno::EISDIR);
        }
        self.remove_entry(parent, name, ino)
    }

    /// Removes the empty directory `name` from `parent`.
    pub(crate) fn remove_dir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.entry(parent, name)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove_entry(parent, name, ino)
    }

    fn remove_entry(&mut self, parent: u64, name: &OsStr, ino: u64) -> Result<(), Errno> {
        self.dir_mut(parent)?.entries.remove(name);
        self.inode_mut(parent)?.touch();
        self.unlink_inode(ino);
        self.stats.entries_removed += 1;
        Ok(())
    }

    fn unlink_inode(&mut self, ino: u64) {
        let inode = self
            .inodes
            .get_mut(&ino)
            .expect("a live entry names a live inode");
        inode.links -= 1;
        inode.ctime = SystemTime::now();
        self.drop_if_unused(ino);
    }

    /// Renames `parent`/`name` to `new_parent`/`new_name`, replacing a file or an empty
    /// directory there unless `RENAME_NOREPLACE`; `RENAME_EXCHANGE` is not supported.
    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        check_name(new_name)?;
        let ino = self.entry(parent, name)?;
        if self.inode(new_parent)?.links == 0 {
            return Err(Errno::ENOENT);
        }
        let target = self.dir(new_parent)?.entries.get(new_name).copied();
        if let Some(target) = target {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            if target == ino {
                // Both names are the same file: POSIX says rename does nothing.
                return Ok(());
            }
            self.check_replaceable(ino, target)?;
        }
        if matches!(self.inode(ino)?.body, Body::Dir(_)) && self.is_within(new_parent, ino)? {
            return Err(Errno::EINVAL);
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.dir_mut(new_parent)?
            .entries
            .insert(new_name.to_owned(), ino);
        if let Body::Dir(dir) = &mut self.inode_mut(ino)?.body {
            dir.parent = new_parent;
        }
        self.inode_mut(parent)?.touch();
        self.inode_mut(new_parent)?.touch();
        self.inode_mut(ino)?.ctime = SystemTime::now();
        if let Some(target) = target {
            self.unlink_inode(target);
        }
        self.stats.renames += 1;
        Ok(())
    }

    /// Whether `source` may replace `target` in a rename.
    fn check_replaceable(&self, source: u64, target: u64) -> Result<(), Errno> {
        match (&self.inode(source)?.body, &self.inode(target)?.body) {
            (Body::File(_), Body::File(_)) => Ok(()),
            (Body::Dir(_), Body::Dir(dir)) if dir.entries.is_empty() => Ok(()),
            (Body::Dir(_), Body::Dir(_)) => Err(Errno::ENOTEMPTY),
            (Body::Dir(_), Body::File(_)) => Err(Errno::ENOTDIR),
            (Body::File(_), Body::Dir(_)) => Err(Errno::EISDIR),
        }
    }

    /// Whether directory `dir` is `ancestor` or lies below it.
    fn is_within(&self, dir: u64, ancestor: u64) -> Result<bool, Errno> {
        let mut current = dir;
        // Each step climbs one level, so the walk ends within one step per inode.
        for _ in 0..=self.inodes.len() {
            if current == ancestor {
                return Ok(true);
            }
            if current == ROOT {
                return Ok(false);
            }
            current = self.dir(current)?.parent;
        }
        unreachable!("parent links form a tree rooted at ROOT")
    }

    /// Up to the entries that fit of directory handle `fh`'s listing, from `offset`; the
    /// listing (`.`, `..`, then the entries by name) is taken afresh at offset 0.
    pub(crate) fn read_dir(
        &mut self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Result<(), Errno> {
        let ino = self.handles.get(&fh).ok_or(Errno::EBADF)?.ino;
        if offset == 0 {
            let listing = self.listing(ino)?;
            self.handles.get_mut(&fh).ok_or(Errno::EBADF)?.listing = listing;
        }
        let handle = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (name, child, kind)) in handle.listing.iter().enumerate().skip(skip) {
            if add(*child, index as u64 + 1, *kind, name) {
                break;
            }
        }
        Ok(())
    }

    fn listing(&self, ino: u64) -> Result<Vec<(OsString, u64, FileType)>, Errno> {
        let dir = self.dir(ino)?;
        let mut listing = vec![
            (OsString::from("."), ino, FileType::Directory),
            (OsString::from(".."), dir.parent, FileType::Directory),
        ];
        for (name, child) in &dir.entries {
            let kind = self
                .inode(*child)
                .expect("a live entry names a live inode")
                .kind();
            listing.push((name.clone(), *child, kind));
        }
        Ok(listing)
    }

    /// Whether `ino` exists (for `access`; permissions are not checked).
    pub(crate) fn exists(&self, ino: u64) -> Result<(), Errno> {
        self.inode(ino).map(|_| ())
    }

    /// Drops `ino` if nothing can reach it any more: no live or durable entry, no open handle,
    /// no kernel lookup. A dropped directory's durable entries stop holding their inodes.
    pub(crate) fn drop_if_unused(&mut self, ino: u64) {
        let mut candidates = vec![ino];
        // Each round drops one inode, so the loop ends within one round per inode.
        while let Some(ino) = candidates.pop() {
            let Some(inode) = self.inodes.get(&ino) else {
                continue;
            };
            let unused = inode.links == 0
                && inode.durable_links == 0
                && inode.handles_open == 0
                && inode.lookups == 0;
            if ino == ROOT || !unused {
                continue;
            }
            let inode = self.inodes.remove(&ino).expect("just looked up");
            if let Body::Dir(dir) = inode.body {
                debug_assert!(dir.entries.is_empty(), "only an empty directory is removed");
                for child in dir.durable.into_values() {
                    let child_inode = self.inodes.get_mut(&child).expect("durable entry is live");
                    child_inode.durable_links -= 1;
                    candidates.push(child);
                }
            }
        }
    }

    /// How many file and directory handles are open.
    pub(crate) fn handles_open(&self) -> usize {
        self.handles.len()
    }
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            uid: 0,
            gid: 0,
            perm: 0o644,
        }
    }

    // Goal: syncing a file replays its unsynced changes onto the durable copy, which then
    // equals the live data; method: mixed writes and size changes, then sync.
    #[test]
    fn sync_makes_durable_equal_to_data() {
        let mut state = State::new(0, 0);
        let (attr, fh) = state
            .create(ROOT, OsStr::new("f"), owner(), libc::O_RDWR)
            .unwrap();
        let ino = attr.ino.0;
        state.write(fh, 0, b"hello world", 0).unwrap();
        state
            .set_attr(
                ino,
                AttrChange {
                    size: Some(5),
                    ..AttrChange::default()
                },
            )
            .unwrap();
        state.write(fh, 8, b"xy", 0).unwrap();
        state.sync(ino).unwrap();
        let Body::File(file) = &state.inodes[&ino].body else {
            panic!("a file")
        };
        assert_eq!(file.data, b"hello\0\0\0xy");
        assert_eq!(file.durable, file.data);
        assert!(file.unsynced.is_empty());
    }

    // Goal: an unlinked file whose entry is still durable is kept for a power loss, and dropped
    // once a directory sync forgets the entry; method: follow the inode table.
    #[test]
    fn unlinked_inode_lives_until_its_durable_entry_goes() {
        let mut state = State::new(0, 0);
        let ino = state
            .make_file(ROOT, OsStr::new("f"), owner())
            .unwrap()
            .ino
            .0;
        state.forget(ino, 1);
        state.sync(ROOT).unwrap();
        state.unlink(ROOT, OsStr::new("f")).unwrap();
        assert!(
            state.inodes.contains_key(&ino),
            "a power loss would bring the entry back"
        );
        state.sync(ROOT).unwrap();
        assert!(!state.inodes.contains_key(&ino));
    }

    // Goal: rename refuses what POSIX refuses; method: one case per rule.
    #[test]
    fn rename_refuses_invalid_targets() {
        let mut state = State::new(0, 0);
        let a = state
            .make_dir(ROOT, OsStr::new("a"), owner())
            .unwrap()
            .ino
            .0;
        state.make_dir(a, OsStr::new("b"), owner()).unwrap();
        state.make_file(ROOT, OsStr::new("f"), owner()).unwrap();
        let none = RenameFlags::empty();
        let cases = [
            (ROOT, "a", a, "x", none, Errno::EINVAL),
            (ROOT, "f", ROOT, "a", none, Errno::EISDIR),
            (ROOT, "a", ROOT, "f", none, Errno::ENOTDIR),
            (
                ROOT,
                "f",
                ROOT,
                "a",
                RenameFlags::RENAME_NOREPLACE,
                Errno::EEXIST,
            ),
            (
                ROOT,
                "f",
                ROOT,
                "g",
                RenameFlags::RENAME_EXCHANGE,
                Errno::EINVAL,
            ),
            (ROOT, "missing", ROOT, "g", none, Errno::ENOENT),
        ];
        for (parent, name, new_parent, new_name, flags, errno) in cases {
            let result = state.rename(
                parent,
                OsStr::new(name),
                new_parent,
                OsStr::new(new_name),
                flags,
            );
            assert_eq!(result, Err(errno), "{name} -> {new_name}");
        }
        state.make_dir(ROOT, OsStr::new("empty"), owner()).unwrap();
        state
            .rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("empty"), none)
            .unwrap();
        assert_eq!(state.entry(ROOT, OsStr::new("empty")), Ok(a));
    }
}
