//! The `overlay` backend: snapshots as plain directories stacked with
//! overlayfs. Works on any filesystem that can hold an overlay upper layer
//! (ext4, xfs, btrfs, tmpfs).
//!
//! Layout under the store's root:
//!
//! ```text
//! metadata.db        the metadata (see `meta`)
//! lock               flock()ed while a process has the store open
//! snapshots/<id>/fs  a snapshot's own layer (<id>: its metadata row id)
//! snapshots/<id>/work  overlayfs's work directory, active snapshots only
//! tmp/               snapshots being built, and removed ones being deleted
//! ```
//!
//! How snapshots are realised ([`Mount`]s):
//! - active without a parent: a bind mount of its `fs`;
//! - active with a parent: overlayfs with `lowerdir` = the parent chain's
//!   `fs` directories (nearest first), `upperdir` = its `fs`, `workdir` =
//!   its `work`;
//! - view of a one-layer parent: a read-only bind of that layer; of a
//!   deeper chain: a read-only, lower-only overlayfs; of nothing: a
//!   read-only bind of an empty directory.
//!
//! Overlay mounts use `userxattr`, like the sandboxes' own overlays (which
//! are mounted inside a user namespace): the store's layers mark opaque
//! directories with `user.overlay.opaque`, so a sandbox's upper directory
//! can become a layer as it is, and a layer means the same in the store's
//! mounts and in a sandbox. Whiteouts are character devices 0/0.
//!
//! `commit` freezes the layer in place (its `work/` is dropped; no data is
//! copied). [`Snapshotter::commit_from_dir`] copies a sandbox's upper
//! directory into a new layer with [`copy_layer`]: O(bytes in the upper).
//!
//! Limits:
//! - A chain holds at most [`MAX_CHAIN`] layers (overlayfs stacks at most
//!   500 lower layers); a deeper `prepare`, `view` or `commit_from_dir` is
//!   refused with `InvalidArgument`. Lower layers are passed to the kernel
//!   one by one, so there is no page-size limit on the option string when
//!   mounting with [`Mount::mount`].
//! - The root's path must be UTF-8 without `,`, `:` or `\` (they would
//!   break overlayfs's option syntax).
//! - Copied trees may be at most [`MAX_DEPTH`] directories deep; device
//!   nodes other than whiteouts are refused.
//! - Needs overlayfs with `userxattr` (Linux 5.11) and a store filesystem
//!   with `user.*` xattrs (ext4, xfs, btrfs; tmpfs from Linux 6.6).
//! - Deleting a file from a lower layer costs a whiteout inode; renaming a
//!   lower-layer directory is refused by overlayfs (`EXDEV`; tools fall
//!   back to copying), as `redirect_dir` is off.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::meta::{MetaStore, Record};
use super::{
    Info, Kind, LabelChanges, Labels, Mount, SnapshotError, Snapshotter, Usage, crash, io_error,
    validate_key, validate_labels,
};

/// Most layers in one chain (a snapshot and its ancestors): overlayfs
/// stacks at most 500 lower layers.
pub const MAX_CHAIN: usize = 500;

/// Deepest directory nesting [`copy_layer`] and `usage` walk.
pub const MAX_DEPTH: usize = 512;

/// The `overlay` snapshotter. See the module documentation.
pub struct OverlaySnapshotter {
    root: PathBuf,
    meta: MetaStore,
    _lock: Flock<File>,
}

impl std::fmt::Debug for OverlaySnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlaySnapshotter")
            .field("root", &self.root)
            .finish()
    }
}

impl OverlaySnapshotter {
    /// Open (or create) the store at `root`, then remove whatever an
    /// interrupted operation left behind: everything under `tmp/`,
    /// directories under `snapshots/` the metadata doesn't know, and the
    /// `work/` of committed snapshots. `Locked` if another process has it
    /// open.
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_error("creating", root))?;
        let root = root.canonicalize().map_err(io_error("resolving", root))?;
        check_root(&root)?;
        let lock_path = root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("opening", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                SnapshotError::Locked {
                    root: root.display().to_string(),
                }
            } else {
                io_error("locking", &lock_path)(e.into())
            }
        })?;
        for d in ["snapshots", "tmp"] {
            let p = root.join(d);
            match fs::DirBuilder::new().mode(0o700).create(&p) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_error("creating", &p)(e));
                }
                _ => {}
            }
        }
        let meta = MetaStore::open(&root.join("metadata.db"))?;
        let s = Self {
            root,
            meta,
            _lock: lock,
        };
        s.recover()?;
        Ok(s)
    }

    /// The store's root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: i64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Make the files agree with the metadata (see [`Self::open`]).
    fn recover(&self) -> Result<(), SnapshotError> {
        let tmp = self.tmp();
        for entry in fs::read_dir(&tmp).map_err(io_error("listing", &tmp))? {
            let entry = entry.map_err(io_error("listing", &tmp))?;
            remove_tree(&entry.path())?;
        }
        let known: HashMap<i64, Kind> = self
            .meta
            .read()?
            .list()?
            .into_iter()
            .map(|r| (r.id, r.info.kind))
            .collect();
        let snapshots = self.root.join("snapshots");
        for entry in fs::read_dir(&snapshots).map_err(io_error("listing", &snapshots))? {
            let entry = entry.map_err(io_error("listing", &snapshots))?;
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok());
            if !id.is_some_and(|id| known.contains_key(&id)) {
                tracing::info!(path = %entry.path().display(), "removing a snapshot directory the metadata doesn't know");
                remove_tree(&entry.path())?;
            }
        }
        for (id, kind) in known {
            let dir = self.dir(id);
            if !dir.join("fs").is_dir() {
                // Only a power failure can do this (metadata durable, rename
                // not): mounts of this snapshot will fail, loudly.
                tracing::error!(id, dir = %dir.display(), "snapshot directory is missing");
            } else if kind == Kind::Committed {
                remove_tree_if_exists(&dir.join("work"))?;
            }
        }
        Ok(())
    }

    /// A new directory under `tmp/`, removed again unless placed.
    fn staging(&self, name: &str) -> Result<Staging, SnapshotError> {
        let path = self.tmp().join(name);
        remove_tree_if_exists(&path)?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_error("creating", &path))?;
        Ok(Staging { path, armed: true })
    }

    fn fs_path(&self, id: i64) -> String {
        // The root is checked to be UTF-8 at open.
        self.dir(id).join("fs").to_string_lossy().into_owned()
    }

    /// The mounts realising snapshot `id` of `kind` over `lowers` (row ids,
    /// nearest first).
    fn mounts_for(&self, kind: Kind, id: i64, lowers: &[i64]) -> Vec<Mount> {
        let bind = |source: String, mode: &str| Mount {
            fstype: "bind".into(),
            source,
            options: vec!["bind".into(), mode.into()],
        };
        let lowerdir = || {
            let dirs: Vec<String> = lowers.iter().map(|l| self.fs_path(*l)).collect();
            format!("lowerdir={}", dirs.join(":"))
        };
        match (kind, lowers) {
            (Kind::Active, []) => vec![bind(self.fs_path(id), "rw")],
            (Kind::Active, _) => vec![Mount {
                fstype: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "userxattr".into(),
                    lowerdir(),
                    format!("upperdir={}", self.fs_path(id)),
                    format!("workdir={}", self.dir(id).join("work").to_string_lossy()),
                ],
            }],
            (_, []) => vec![bind(self.fs_path(id), "ro")],
            (_, [one]) => vec![bind(self.fs_path(*one), "ro")],
            (_, _) => vec![Mount {
                fstype: "overlay".into(),
                source: "overlay".into(),
                options: vec!["ro".into(), "userxattr".into(), lowerdir()],
            }],
        }
    }

    /// `prepare` and `view`.
    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        validate_key(key)?;
        validate_labels(labels)?;
        let tx = self.meta.write()?;
        tx.ensure_free(key)?;
        let parent = tx.committed_parent(parent)?;
        let lowers = match &parent {
            Some(p) => chain_within_limit(&tx.chain(p.id)?, &p.info.key, kind)?,
            None => Vec::new(),
        };
        let rec = tx.insert(key, kind, parent.as_ref(), labels)?;

        let stage = self.staging(&format!("new-{}", rec.id))?;
        let layer = stage.path.join("fs");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&layer)
            .map_err(io_error("creating", &layer))?;
        if let Some(top) = lowers.first() {
            // The merged root takes its owner and mode from the upper layer:
            // make them the parent's.
            let top = self.dir(*top).join("fs");
            let m = fs::metadata(&top).map_err(io_error("reading", &top))?;
            std::os::unix::fs::chown(&layer, Some(m.uid()), Some(m.gid()))
                .map_err(io_error("setting the owner of", &layer))?;
            fs::set_permissions(&layer, fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(io_error("setting the mode of", &layer))?;
            if kind == Kind::Active {
                let work = stage.path.join("work");
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&work)
                    .map_err(io_error("creating", &work))?;
            }
        } else {
            // 0755 whatever the process's umask.
            fs::set_permissions(&layer, fs::Permissions::from_mode(0o755))
                .map_err(io_error("setting the mode of", &layer))?;
        }
        crash::point(crash::STAGED);
        let dir = self.dir(rec.id);
        stage.place(&dir)?;
        crash::point(crash::PLACED);
        if let Err(e) = tx.commit() {
            let _ = remove_tree(&dir);
            return Err(e);
        }
        Ok(self.mounts_for(kind, rec.id, &lowers))
    }
}

/// The chain `ids` of `parent` if a new snapshot may use it: a view adds
/// no layer of its own, an active or committed snapshot one.
fn chain_within_limit(ids: &[i64], parent: &str, kind: Kind) -> Result<Vec<i64>, SnapshotError> {
    let own = usize::from(kind != Kind::View);
    if ids.len() + own > MAX_CHAIN {
        return Err(SnapshotError::InvalidArgument(format!(
            "snapshot {parent:?} is {} layers deep; the overlay backend stacks at most \
             {MAX_CHAIN} layers in a chain (overlayfs's limit)",
            ids.len()
        )));
    }
    Ok(ids.to_vec())
}

fn check_root(root: &Path) -> Result<(), SnapshotError> {
    match root.to_str() {
        Some(s) if !s.contains([',', ':', '\\']) && !s.chars().any(char::is_control) => Ok(()),
        _ => Err(SnapshotError::InvalidArgument(format!(
            "the overlay store's path {} must be UTF-8 without ',', ':', '\\' or control \
             characters (they would break overlayfs's options)",
            root.display()
        ))),
    }
}

/// A directory being built under `tmp/`; removed on drop unless placed.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Staging {
    /// Rename into place at `dst` (replacing leftovers of a failed attempt
    /// that the metadata doesn't know; the caller holds the write lock).
    fn place(mut self, dst: &Path) -> Result<(), SnapshotError> {
        remove_tree_if_exists(dst)?;
        fs::rename(&self.path, dst).map_err(io_error("renaming into place", dst))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove_tree(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "leaving a staging directory for the next open to remove");
        }
    }
}

/// Remove a directory tree, refusing to descend into anything mounted
/// inside it.
fn remove_tree(path: &Path) -> Result<(), SnapshotError> {
    let mounted = hull_sys::mount::mounts_under(path);
    if !mounted.is_empty() {
        return Err(SnapshotError::Io {
            what: "refusing to delete (something is mounted inside it)",
            path: path.display().to_string(),
            source: io::Error::from(io::ErrorKind::ResourceBusy),
        });
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    }
    .map_err(io_error("deleting", path))
}

fn remove_tree_if_exists(path: &Path) -> Result<(), SnapshotError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => remove_tree(path),
    }
}

/// A name for a staging directory no other call in this process uses.
fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Snapshotter for OverlaySnapshotter {
    fn backend(&self) -> &'static str {
        "overlay"
    }

    fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        validate_key(key)?;
        let tx = self.meta.read()?;
        let rec = tx.require(key)?;
        if rec.info.kind == Kind::Committed {
            return Err(SnapshotError::WrongKind {
                key: key.into(),
                kind: rec.info.kind,
                needs: "committed snapshots have no mounts; make a view of it",
            });
        }
        let lowers = match rec.parent_id {
            Some(p) => tx.chain(p)?,
            None => Vec::new(),
        };
        Ok(self.mounts_for(rec.info.kind, rec.id, &lowers))
    }

    fn commit(&self, name: &str, key: &str, labels: &Labels) -> Result<Info, SnapshotError> {
        validate_key(name)?;
        validate_key(key)?;
        validate_labels(labels)?;
        let tx = self.meta.write()?;
        let rec = tx.require(key)?;
        if rec.info.kind != Kind::Active {
            return Err(SnapshotError::WrongKind {
                key: key.into(),
                kind: rec.info.kind,
                needs: "only active snapshots can be committed",
            });
        }
        if name != key {
            tx.ensure_free(name)?;
        }
        let done = tx.commit_active(rec.id, name, labels)?;
        crash::point(crash::COMMITTING);
        tx.commit()?;
        crash::point(crash::COMMITTED);
        // Freeze: without a work directory the layer can't be mounted
        // writable again. A failure here is repaired by the next open.
        if let Err(e) = remove_tree_if_exists(&self.dir(rec.id).join("work")) {
            tracing::warn!(key = name, error = %e, "could not drop a committed snapshot's work directory");
        }
        Ok(done.info)
    }

    fn commit_from_dir(
        &self,
        name: &str,
        parent: Option<&str>,
        upper: &Path,
        labels: &Labels,
    ) -> Result<Info, SnapshotError> {
        validate_key(name)?;
        validate_labels(labels)?;
        // Fail fast, before copying what may be gigabytes.
        {
            let tx = self.meta.read()?;
            tx.ensure_free(name)?;
            if let Some(p) = tx.committed_parent(parent)? {
                chain_within_limit(&tx.chain(p.id)?, &p.info.key, Kind::Committed)?;
            }
        }
        let stage = self.staging(&unique_name("copy"))?;
        Copier::new(true).copy(upper, &stage.path.join("fs"))?;
        crash::point(crash::STAGED);

        let tx = self.meta.write()?;
        tx.ensure_free(name)?;
        let parent = tx.committed_parent(parent)?;
        if let Some(p) = &parent {
            chain_within_limit(&tx.chain(p.id)?, &p.info.key, Kind::Committed)?;
        }
        let rec: Record = tx.insert(name, Kind::Committed, parent.as_ref(), labels)?;
        let dir = self.dir(rec.id);
        stage.place(&dir)?;
        crash::point(crash::PLACED);
        if let Err(e) = tx.commit() {
            let _ = remove_tree(&dir);
            return Err(e);
        }
        Ok(rec.info)
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        validate_key(key)?;
        Ok(self.meta.read()?.require(key)?.info)
    }

    fn update_labels(&self, key: &str, changes: &LabelChanges) -> Result<Info, SnapshotError> {
        validate_key(key)?;
        let tx = self.meta.write()?;
        let rec = tx.require(key)?;
        let rec = tx.update_labels(rec.id, changes)?;
        tx.commit()?;
        Ok(rec.info)
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        validate_key(key)?;
        let id = self.meta.read()?.require(key)?.id;
        // Walked without the lock: a concurrent remove shows as NotFound.
        let layer = self.dir(id).join("fs");
        tree_usage(&layer).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                SnapshotError::NotFound { key: key.into() }
            } else {
                io_error("measuring", &layer)(e)
            }
        })
    }

    fn walk(&self) -> Result<Vec<Info>, SnapshotError> {
        Ok(self
            .meta
            .read()?
            .list()?
            .into_iter()
            .map(|r| r.info)
            .collect())
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        validate_key(key)?;
        let tx = self.meta.write()?;
        let rec = tx.require(key)?;
        tx.delete(&rec)?;
        tx.commit()?;
        crash::point(crash::REMOVED);
        // The metadata no longer knows the id (never reused), so deleting
        // needs no lock; what fails here is deleted by the next open.
        let dir = self.dir(rec.id);
        let trash = self.tmp().join(format!("rm-{}", rec.id));
        let r = fs::rename(&dir, &trash)
            .map_err(io_error("moving out", &dir))
            .and_then(|()| remove_tree(&trash));
        if let Err(e) = r {
            tracing::warn!(key, error = %e, "snapshot removed; its files are left for the next open to delete");
        }
        Ok(())
    }
}

/// Walk a layer: allocated bytes and distinct inodes.
fn tree_usage(root: &Path) -> io::Result<Usage> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    let mut u = Usage {
        bytes: st.st_blocks as u64 * 512,
        inodes: 1,
    };
    let mut linked = std::collections::HashSet::new();
    usage_dir(&fd, 0, &mut linked, &mut u)?;
    Ok(u)
}

fn usage_dir(
    dir: &OwnedFd,
    depth: usize,
    linked: &mut std::collections::HashSet<(u64, u64)>,
    u: &mut Usage,
) -> io::Result<()> {
    if depth >= MAX_DEPTH {
        return Err(io::Error::other(format!(
            "directories nested deeper than {MAX_DEPTH}"
        )));
    }
    for name in dir_names(dir)? {
        let st = match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir || st.st_nlink <= 1 || linked.insert((st.st_dev, st.st_ino)) {
            u.bytes += st.st_blocks as u64 * 512;
            u.inodes += 1;
        }
        if is_dir {
            match rustix::fs::openat(
                dir,
                &name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(sub) => usage_dir(&sub, depth + 1, linked, u)?,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The entries of an open directory, without `.` and `..`.
fn dir_names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let n = entry.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    Ok(names)
}

/// Copy an overlayfs upper directory `src_upper` to `dst` (which must not
/// exist), keeping everything a layer means: regular files (holes stay
/// holes), directories, symlinks, hardlinks within the tree, FIFOs and
/// sockets, whiteouts (character devices 0/0), owners (uid/gid as stored),
/// modes (setuid/setgid/sticky included), access and modification times,
/// and every extended attribute (`trusted.overlay.*`, `user.overlay.*`,
/// `security.capability`, ...).
///
/// `src_upper` is hostile input: nothing in it is followed through a
/// symlink (it is walked with `openat(O_NOFOLLOW)` from directory handles),
/// a file replaced while being copied is an error, and device nodes other
/// than whiteouts are refused. It should be quiescent (the sandbox
/// frozen); a tree that changes during the copy gives an error or a copy of
/// some mix of its states, never anything from outside it.
///
/// Needs root (or the capabilities to chown, mknod whiteouts and set
/// `trusted.*` xattrs) when the tree has such things. Hardlinks are made by
/// path, so a hardlinked file deeper than `PATH_MAX` is an error. Uppers of
/// overlays mounted with `metacopy=on` are not supported (a metadata-only
/// copy-up has no data of its own); hull never mounts with it.
pub fn copy_layer(src_upper: &Path, dst: &Path) -> Result<(), SnapshotError> {
    Copier::new(false).copy(src_upper, dst)
}

struct Copier {
    /// (dev, ino) of multiply-linked sources -> the first copy's path.
    links: HashMap<(u64, u64), PathBuf>,
    /// Also mark `trusted.overlay.opaque` directories `user.overlay.opaque`
    /// (the store mounts with `userxattr`).
    user_opaque: bool,
    buf: Vec<u8>,
}

const OPEN_DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A source or destination of extended attributes.
#[derive(Clone, Copy)]
enum Node<'a> {
    Fd(BorrowedFd<'a>),
    /// `name` in the directory `dir`, not followed if a symlink.
    At(BorrowedFd<'a>, &'a CStr),
}

impl Node<'_> {
    /// A path naming the node through /proc, so symlinks, devices and
    /// FIFOs (which can't be opened for xattrs) are reached without
    /// resolving anything in the copied tree.
    fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        p.push(OsStr::from_bytes(name.to_bytes()));
        p
    }

    fn list(self) -> io::Result<Vec<u8>> {
        loop {
            let size = match self {
                Node::Fd(fd) => rustix::fs::flistxattr_query(fd),
                Node::At(d, n) => rustix::fs::llistxattr_query(Self::proc_path(d, n)),
            };
            let size = match size {
                Ok(s) => s,
                Err(Errno::NOTSUP) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            if size == 0 {
                return Ok(Vec::new());
            }
            let mut buf = vec![0u8; size];
            let r = match self {
                Node::Fd(fd) => rustix::fs::flistxattr(fd, &mut buf[..]),
                Node::At(d, n) => rustix::fs::llistxattr(Self::proc_path(d, n), &mut buf[..]),
            };
            match r {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn get(self, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        loop {
            let size = match self {
                Node::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
                Node::At(d, n) => rustix::fs::lgetxattr_query(Self::proc_path(d, n), name),
            };
            let size = match size {
                Ok(s) => s,
                Err(Errno::NODATA) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut buf = vec![0u8; size];
            if size == 0 {
                return Ok(Some(buf));
            }
            let r = match self {
                Node::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut buf[..]),
                Node::At(d, n) => rustix::fs::lgetxattr(Self::proc_path(d, n), name, &mut buf[..]),
            };
            match r {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn set(self, name: &[u8], value: &[u8]) -> io::Result<()> {
        match self {
            Node::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
            Node::At(d, n) => {
                rustix::fs::lsetxattr(Self::proc_path(d, n), name, value, XattrFlags::empty())
            }
        }
        .map_err(Into::into)
    }
}

fn timestamps(st: &rustix::fs::Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

fn owner(st: &rustix::fs::Stat) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )
}

fn perms(st: &rustix::fs::Stat) -> Mode {
    Mode::from_raw_mode(st.st_mode & 0o7777)
}

fn same_inode(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

impl Copier {
    fn new(user_opaque: bool) -> Self {
        Self {
            links: HashMap::new(),
            user_opaque,
            buf: Vec::new(),
        }
    }

    fn copy(&mut self, src: &Path, dst: &Path) -> Result<(), SnapshotError> {
        let sfd = rustix::fs::open(src, OPEN_DIR, Mode::empty())
            .map_err(|e| io_error("opening the directory to copy", src)(e.into()))?;
        let st = rustix::fs::fstat(&sfd).map_err(|e| io_error("reading", src)(e.into()))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dst)
            .map_err(io_error("creating", dst))?;
        let dfd = rustix::fs::open(dst, OPEN_DIR, Mode::empty())
            .map_err(|e| io_error("opening", dst)(e.into()))?;
        self.copy_dir(&sfd, &dfd, src, dst, 0)?;
        self.finish(Node::Fd(sfd.as_fd()), Node::Fd(dfd.as_fd()), &st, true, dst)
    }

    /// Copy the entries of `sdir` into `ddir` (paths are for messages and
    /// hardlinks).
    fn copy_dir(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        spath: &Path,
        dpath: &Path,
        depth: usize,
    ) -> Result<(), SnapshotError> {
        if depth >= MAX_DEPTH {
            return Err(SnapshotError::InvalidArgument(format!(
                "{} is nested more than {MAX_DEPTH} directories deep",
                spath.display()
            )));
        }
        let names = dir_names(sdir).map_err(io_error("listing", spath))?;
        for name in names {
            let os = OsStr::from_bytes(name.to_bytes());
            let (sp, dp) = (spath.join(os), dpath.join(os));
            let sp_ref: &Path = &sp;
            let rerr = |what| move |e: Errno| io_error(what, sp_ref)(e.into());
            let st = rustix::fs::statat(sdir, &*name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(rerr("reading"))?;
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft != FileType::Directory && st.st_nlink > 1 {
                if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                    rustix::fs::linkat(rustix::fs::CWD, first, ddir, &*name, AtFlags::empty())
                        .map_err(|e| io_error("hardlinking", &dp)(e.into()))?;
                    continue;
                }
                self.links.insert((st.st_dev, st.st_ino), dp.clone());
            }
            let dnode = Node::At(ddir.as_fd(), &name);
            match ft {
                FileType::Directory => {
                    let sub = rustix::fs::openat(sdir, &*name, OPEN_DIR, Mode::empty())
                        .map_err(rerr("opening"))?;
                    let sst = rustix::fs::fstat(&sub).map_err(rerr("reading"))?;
                    if !same_inode(&st, &sst) {
                        return Err(changed(&sp));
                    }
                    rustix::fs::mkdirat(ddir, &*name, Mode::from_raw_mode(0o700))
                        .map_err(|e| io_error("creating", &dp)(e.into()))?;
                    let dsub = rustix::fs::openat(ddir, &*name, OPEN_DIR, Mode::empty())
                        .map_err(|e| io_error("opening", &dp)(e.into()))?;
                    self.copy_dir(&sub, &dsub, &sp, &dp, depth + 1)?;
                    self.finish(
                        Node::Fd(sub.as_fd()),
                        Node::Fd(dsub.as_fd()),
                        &sst,
                        true,
                        &dp,
                    )?;
                }
                FileType::RegularFile => {
                    let src = rustix::fs::openat(
                        sdir,
                        &*name,
                        OFlags::RDONLY
                            | OFlags::NOFOLLOW
                            | OFlags::NONBLOCK
                            | OFlags::NOCTTY
                            | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(rerr("opening"))?;
                    let sst = rustix::fs::fstat(&src).map_err(rerr("reading"))?;
                    if !same_inode(&st, &sst) || FileType::from_raw_mode(sst.st_mode) != ft {
                        return Err(changed(&sp));
                    }
                    let dst = rustix::fs::openat(
                        ddir,
                        &*name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|e| io_error("creating", &dp)(e.into()))?;
                    self.copy_data(&src, &dst, sst.st_size as u64)
                        .map_err(io_error("copying", &sp))?;
                    self.finish(
                        Node::Fd(src.as_fd()),
                        Node::Fd(dst.as_fd()),
                        &sst,
                        false,
                        &dp,
                    )?;
                }
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(sdir, &*name, Vec::new())
                        .map_err(rerr("reading"))?;
                    rustix::fs::symlinkat(&*target, ddir, &*name)
                        .map_err(|e| io_error("creating", &dp)(e.into()))?;
                    self.finish_at(sdir, &name, &st, dnode, &dp)?;
                }
                FileType::CharacterDevice | FileType::Fifo | FileType::Socket => {
                    if ft == FileType::CharacterDevice && st.st_rdev != 0 {
                        return Err(device(&sp));
                    }
                    rustix::fs::mknodat(ddir, &*name, ft, Mode::from_raw_mode(0o600), st.st_rdev)
                        .map_err(|e| io_error("creating", &dp)(e.into()))?;
                    self.finish_at(sdir, &name, &st, dnode, &dp)?;
                }
                FileType::BlockDevice | FileType::Unknown => return Err(device(&sp)),
            }
        }
        Ok(())
    }

    /// Owner, mode, xattrs, then times (in that order: chown clears
    /// setuid bits and file capabilities) of an opened copy.
    fn finish(
        &mut self,
        src: Node<'_>,
        dst: Node<'_>,
        st: &rustix::fs::Stat,
        is_dir: bool,
        dpath: &Path,
    ) -> Result<(), SnapshotError> {
        let Node::Fd(dfd) = dst else {
            unreachable!("finish() is for opened files")
        };
        let err = |what| move |e: Errno| io_error(what, dpath)(e.into());
        let (uid, gid) = owner(st);
        rustix::fs::fchown(dfd, uid, gid).map_err(err("setting the owner of"))?;
        rustix::fs::fchmod(dfd, perms(st)).map_err(err("setting the mode of"))?;
        self.copy_xattrs(src, dst, is_dir, dpath)?;
        rustix::fs::futimens(dfd, &timestamps(st)).map_err(err("setting the times of"))
    }

    /// [`Self::finish`] for nodes that can't be opened (symlinks, FIFOs,
    /// sockets, whiteouts): by name in their directory.
    fn finish_at(
        &mut self,
        sdir: &OwnedFd,
        name: &CStr,
        st: &rustix::fs::Stat,
        dst: Node<'_>,
        dpath: &Path,
    ) -> Result<(), SnapshotError> {
        let Node::At(ddir, dname) = dst else {
            unreachable!("finish_at() is for nodes by name")
        };
        let err = |what| move |e: Errno| io_error(what, dpath)(e.into());
        let (uid, gid) = owner(st);
        rustix::fs::chownat(ddir, dname, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err("setting the owner of"))?;
        let symlink = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
        if !symlink {
            rustix::fs::chmodat(ddir, dname, perms(st), AtFlags::empty())
                .map_err(err("setting the mode of"))?;
        }
        self.copy_xattrs(Node::At(sdir.as_fd(), name), dst, false, dpath)?;
        rustix::fs::utimensat(ddir, dname, &timestamps(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err("setting the times of"))
    }

    fn copy_xattrs(
        &mut self,
        src: Node<'_>,
        dst: Node<'_>,
        is_dir: bool,
        dpath: &Path,
    ) -> Result<(), SnapshotError> {
        let list = src
            .list()
            .map_err(io_error("listing the extended attributes of", dpath))?;
        let mut trusted_opaque = false;
        let mut user_opaque = false;
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let Some(value) = src
                .get(name)
                .map_err(io_error("reading the extended attributes of", dpath))?
            else {
                continue;
            };
            trusted_opaque |= name == b"trusted.overlay.opaque" && value == b"y";
            user_opaque |= name == b"user.overlay.opaque";
            dst.set(name, &value).map_err(|e| SnapshotError::Io {
                what: "setting an extended attribute on",
                path: format!("{} ({})", dpath.display(), String::from_utf8_lossy(name)),
                source: e,
            })?;
        }
        if self.user_opaque && is_dir && trusted_opaque && !user_opaque {
            dst.set(b"user.overlay.opaque", b"y")
                .map_err(io_error("marking opaque", dpath))?;
        }
        Ok(())
    }

    /// Copy `size` bytes, skipping holes (SEEK_DATA/SEEK_HOLE), with
    /// copy_file_range where the kernel can (same filesystem type) and
    /// pread/pwrite otherwise.
    fn copy_data(&mut self, src: &OwnedFd, dst: &OwnedFd, size: u64) -> io::Result<()> {
        let mut pos = 0;
        while pos < size {
            let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            if data >= size {
                break;
            }
            let hole = rustix::fs::seek(src, SeekFrom::Hole(data))
                .unwrap_or(size)
                .min(size);
            if hole <= data {
                break;
            }
            self.copy_range(src, dst, data, hole)?;
            pos = hole;
        }
        rustix::fs::ftruncate(dst, size)?;
        Ok(())
    }

    fn copy_range(&mut self, src: &OwnedFd, dst: &OwnedFd, start: u64, end: u64) -> io::Result<()> {
        let (mut i, mut o) = (start, start);
        while i < end {
            let len = usize::try_from(end - i).unwrap_or(usize::MAX).min(1 << 30);
            match rustix::fs::copy_file_range(src, Some(&mut i), dst, Some(&mut o), len) {
                Ok(0) => return Ok(()), // the file shrank under us
                Ok(_) => {}
                Err(Errno::INTR) => {}
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    return self.copy_range_rw(src, dst, i, end);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn copy_range_rw(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        mut pos: u64,
        end: u64,
    ) -> io::Result<()> {
        self.buf.resize(256 * 1024, 0);
        while pos < end {
            let want = usize::try_from(end - pos)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match rustix::io::pread(src, &mut self.buf[..want], pos) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut done = 0;
            while done < n {
                match rustix::io::pwrite(dst, &self.buf[done..n], pos + done as u64) {
                    Ok(w) => done += w,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            pos += n as u64;
        }
        Ok(())
    }
}

fn changed(path: &Path) -> SnapshotError {
    SnapshotError::InvalidArgument(format!(
        "{} changed while being copied (is the sandbox frozen?)",
        path.display()
    ))
}

fn device(path: &Path) -> SnapshotError {
    SnapshotError::InvalidArgument(format!(
        "{} is a device node; a layer may hold only whiteouts (character devices 0/0)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    //! Unprivileged tests: mount shapes, recovery and limits. The
    //! conformance suite (with real mounts) is in tests/snapshot_overlay.rs.
    use super::*;

    fn open() -> (tempfile::TempDir, OverlaySnapshotter) {
        let dir = tempfile::tempdir().unwrap();
        let s = OverlaySnapshotter::open(&dir.path().join("store")).unwrap();
        (dir, s)
    }

    fn none() -> Labels {
        Labels::new()
    }

    fn id_of(s: &OverlaySnapshotter, key: &str) -> i64 {
        s.meta.read().unwrap().require(key).unwrap().id
    }

    #[test]
    fn mount_shapes() {
        let (_d, s) = open();
        let root = s.root().join("snapshots");
        let fs_of = |k: &str| root.join(id_of(&s, k).to_string()).join("fs");
        let m = s.prepare("a", None, &none()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].fstype, "bind");
        assert_eq!(m[0].source, fs_of("a").to_str().unwrap());
        assert!(!m[0].is_readonly());
        s.commit("c1", "a", &none()).unwrap();
        assert!(!fs_of("c1").parent().unwrap().join("work").exists());

        // View of one layer: a read-only bind of it.
        let v = s.view("v1", Some("c1"), &none()).unwrap();
        assert_eq!(v[0].fstype, "bind");
        assert_eq!(v[0].source, fs_of("c1").to_str().unwrap());
        assert!(v[0].is_readonly());

        // Active over one layer: overlay with upper and work.
        let m = s.prepare("b", Some("c1"), &none()).unwrap();
        assert_eq!(m[0].fstype, "overlay");
        let opts = &m[0].options;
        assert!(opts.contains(&format!("lowerdir={}", fs_of("c1").display())));
        assert!(opts.contains(&format!("upperdir={}", fs_of("b").display())));
        assert!(opts.iter().any(|o| o.starts_with("workdir=")));
        assert!(opts.contains(&"userxattr".to_string()));
        assert_eq!(s.mounts("b").unwrap(), m);
        s.commit("c2", "b", &none()).unwrap();

        // View of two layers: lower-only overlay, nearest first.
        let v = s.view("v2", Some("c2"), &none()).unwrap();
        assert_eq!(v[0].fstype, "overlay");
        assert!(v[0].is_readonly());
        assert!(v[0].options.contains(&format!(
            "lowerdir={}:{}",
            fs_of("c2").display(),
            fs_of("c1").display()
        )));
        assert!(!v[0].options.iter().any(|o| o.starts_with("upperdir=")));

        // View of nothing: a read-only bind of an empty directory.
        let v = s.view("empty", None, &none()).unwrap();
        assert_eq!(v[0].fstype, "bind");
        assert!(v[0].is_readonly());
        assert!(matches!(
            s.mounts("c2"),
            Err(SnapshotError::WrongKind { .. })
        ));
    }

    #[test]
    fn chain_limit() {
        let (_d, s) = open();
        let mut parent: Option<String> = None;
        for i in 0..MAX_CHAIN {
            s.prepare("next", parent.as_deref(), &none()).unwrap();
            let name = format!("l{i}");
            s.commit(&name, "next", &none()).unwrap();
            parent = Some(name);
        }
        let top = parent.unwrap();
        // A view of the deepest chain is fine (500 lower layers) ...
        let v = s.view("v", Some(&top), &none()).unwrap();
        let lower = v[0]
            .options
            .iter()
            .find(|o| o.starts_with("lowerdir="))
            .unwrap();
        assert_eq!(lower.split(':').count(), MAX_CHAIN);
        // ... one more layer is refused, clearly.
        let e = s.prepare("too-deep", Some(&top), &none()).unwrap_err();
        assert!(matches!(e, SnapshotError::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("at most 500"), "{e}");
        let e = s
            .commit_from_dir("too-deep", Some(&top), Path::new("/nonexistent"), &none())
            .unwrap_err();
        assert!(matches!(e, SnapshotError::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn open_removes_what_metadata_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        {
            let s = OverlaySnapshotter::open(&root).unwrap();
            s.prepare("a", None, &none()).unwrap();
            s.commit("c", "a", &none()).unwrap();
            s.prepare("b", Some("c"), &none()).unwrap();
        }
        let snaps = root.join("snapshots");
        let c_dir = snaps.join("1");
        assert!(c_dir.join("fs").is_dir());
        // Leftovers of interrupted operations.
        fs::create_dir_all(root.join("tmp/new-7/fs/x")).unwrap();
        fs::create_dir_all(snaps.join("99/fs")).unwrap();
        fs::create_dir_all(snaps.join("junk")).unwrap();
        fs::write(snaps.join("stray-file"), b"x").unwrap();
        fs::create_dir_all(c_dir.join("work/work")).unwrap();

        let s = OverlaySnapshotter::open(&root).unwrap();
        let mut left: Vec<_> = fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["1", "2"]);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        assert!(
            !c_dir.join("work").exists(),
            "a committed layer has no work dir"
        );
        assert!(snaps.join("2/work").is_dir(), "an active one keeps it");
        assert_eq!(s.walk().unwrap().len(), 2);
    }

    #[test]
    fn second_open_is_refused() {
        let (_d, s) = open();
        let e = OverlaySnapshotter::open(s.root()).unwrap_err();
        assert!(matches!(e, SnapshotError::Locked { .. }), "{e}");
        let root = s.root().to_path_buf();
        drop(s);
        OverlaySnapshotter::open(&root).unwrap();
    }

    #[test]
    fn root_path_must_suit_overlay_options() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["a,b", "a:b"] {
            let e = OverlaySnapshotter::open(&dir.path().join(bad)).unwrap_err();
            assert!(matches!(e, SnapshotError::InvalidArgument(_)), "{e}");
        }
    }

    #[test]
    fn usage_counts_blocks_and_inodes_once() {
        let (_d, s) = open();
        s.prepare("a", None, &none()).unwrap();
        let layer = s
            .root()
            .join("snapshots")
            .join(id_of(&s, "a").to_string())
            .join("fs");
        let empty = s.usage("a").unwrap();
        assert_eq!(empty.inodes, 1);
        fs::create_dir(layer.join("d")).unwrap();
        fs::write(layer.join("d/f"), vec![7u8; 64 * 1024]).unwrap();
        fs::hard_link(layer.join("d/f"), layer.join("f2")).unwrap();
        let f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(layer.join("sparse"))
            .unwrap();
        f.set_len(1 << 30).unwrap();
        let u = s.usage("a").unwrap();
        assert_eq!(u.inodes, 4, "root, d, f (twice linked), sparse");
        assert!(u.bytes >= empty.bytes + 64 * 1024, "{u:?}");
        assert!(u.bytes < 1 << 20, "holes are not usage: {u:?}");
    }
}
