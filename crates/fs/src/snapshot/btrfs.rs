//! The `btrfs` backend: every snapshot is a whole tree in a btrfs
//! subvolume, so making one from a parent is a subvolume snapshot —
//! constant time whatever the tree holds — and chains are not stacked at
//! all: their depth is unlimited and a view or `prepare` of any snapshot is
//! one bind mount.
//!
//! The store's root must be on btrfs ([`BtrfsSnapshotter::open`] says so
//! when it is not; [`open_auto`](super::open_auto) makes a sparse
//! loop-backed btrfs image when the state directory is elsewhere). Layout:
//!
//! ```text
//! metadata.db        the metadata (see `meta`)
//! lock               flock()ed while a process has the store open
//! snapshots/<id>     a snapshot's subvolume (<id>: its metadata row id);
//!                    read-only unless the snapshot is active
//! tmp/               subvolumes being built
//! staging/           callers' trees to commit (`Snapshotter::staging_dir`)
//! ```
//!
//! The operations:
//! - `prepare`: a writable snapshot of the parent's subvolume (or a new,
//!   empty one, mode 0755); its mounts are one read-write bind mount.
//! - `view`: a read-only snapshot of the parent (or an empty read-only
//!   subvolume); one read-only bind mount.
//! - `commit`: the active subvolume is made read-only in place (one ioctl,
//!   no data copied, nothing renamed) in step with the metadata.
//! - `commit_from_dir`: a writable snapshot of the parent, onto which the
//!   sandbox's overlayfs upper directory is applied (its files replace the
//!   parent's, whiteouts delete, opaque directories replace; see
//!   `files::apply_upper`), then made read-only: O(bytes in the upper).
//! - `remove`: the subvolume is deleted once the metadata transaction has
//!   committed; the kernel frees its extents in the background.
//! - [`Snapshotter::layers`]: one directory, the snapshot's subvolume.
//! - `usage`: with btrfs quotas enabled on the filesystem, `bytes` is the
//!   subvolume's qgroup *exclusive* bytes (after a `sync`, so the numbers
//!   are fresh): what deleting it would free. A parent's exclusive bytes
//!   shrink to almost nothing once a child shares its extents. Without
//!   quotas, the tree is walked like overlay's layers, counting only
//!   entries that are not the same unchanged inode as in the parent's
//!   subvolume (a changed file counts whole, as overlayfs would copy it
//!   up). `inodes` always comes from that walk.
//!
//! New subvolumes are built writable under `tmp/` and renamed into
//! `snapshots/` while the metadata transaction is open (btrfs refuses to
//! move a read-only subvolume to another directory, so views and
//! `commit_from_dir` snapshots are made read-only after the rename, still
//! inside the transaction). Opening the store deletes everything under
//! `tmp/`, every entry of `snapshots/` the metadata doesn't know, and sets
//! each known subvolume's read-only flag from its kind (a `commit` killed
//! before its transaction committed leaves an active subvolume read-only).
//!
//! Limits:
//! - Whiteouts and opaque markers: a snapshot made by `commit_from_dir`
//!   is the tree the sandbox saw plus a whiteout (character device 0/0)
//!   for each name the sandbox deleted, and the `user.overlay.opaque`
//!   marker on each directory it replaced or made opaque (outside
//!   directories already opaque): those hide names in layers below the
//!   store (the template's) when the runtime stacks the snapshot over
//!   them. Views and actives are plain bind mounts, so the markers show
//!   there as character devices 0/0 and xattrs
//!   ([`Snapshotter::views_show_markers`]).
//! - Subvolumes created inside an active snapshot (btrfs lets any user do
//!   that) are not part of snapshots made from it (they show as empty
//!   directories there); they are deleted with it.
//! - Deleting frees space asynchronously: a full filesystem gets its space
//!   back some seconds after `remove`.
//! - The root's path may hold any byte; the mounts are bind mounts.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hull_sys::btrfs::{self, BtrfsError};
use nix::errno::Errno;

use super::files::{apply_upper, unique_name};
use super::meta::Record;
use super::store_dir::{Storage, StoreDir, measure, refuse_if_mounted};
use super::{
    Info, Kind, LabelChanges, Labels, Mount, SnapshotError, Snapshotter, Usage, crash, io_error,
};

/// Deepest directory nesting `commit_from_dir` copies and `usage` walks.
pub use super::files::MAX_DEPTH;

/// The `btrfs` snapshotter. See the module documentation.
pub struct BtrfsSnapshotter {
    store: StoreDir<Subvolumes>,
}

impl std::fmt::Debug for BtrfsSnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtrfsSnapshotter")
            .field("root", &self.store.root())
            .finish()
    }
}

/// Snapshot storage as btrfs subvolumes, read-only unless active.
struct Subvolumes;

impl Storage for Subvolumes {
    const STAGED: &'static str = "subvolume";
    const SNAPSHOT: &'static str = "snapshot";

    fn remove(path: &Path) -> Result<(), SnapshotError> {
        remove_any(path)
    }

    fn remove_if_exists(path: &Path) -> Result<(), SnapshotError> {
        remove_any(path)
    }

    fn repair(id: i64, kind: Kind, dir: &Path) -> Result<(), SnapshotError> {
        if !btrfs::is_subvolume(dir).unwrap_or(false) {
            // Only a power failure can do this (metadata durable, the
            // subvolume not): mounts of this snapshot will fail, loudly.
            tracing::error!(id, dir = %dir.display(), "snapshot subvolume is missing");
            return Ok(());
        }
        let readonly = kind != Kind::Active;
        if btrfs::is_readonly(dir)? != readonly {
            tracing::info!(id, readonly, dir = %dir.display(), "setting a snapshot's read-only flag from its kind");
            btrfs::set_readonly(dir, readonly)?;
        }
        Ok(())
    }
}

impl BtrfsSnapshotter {
    /// `commit_from_dir`, keeping whiteouts only where `below` (when
    /// known) has the name.
    fn commit_upper(
        &self,
        name: &str,
        parent: Option<&str>,
        upper: &Path,
        below: Option<&[PathBuf]>,
        labels: &Labels,
    ) -> Result<Info, SnapshotError> {
        // Fail fast, before copying what may be gigabytes.
        let parent_id = {
            let (_tx, parent) = self.store.check_new(name, parent, labels)?;
            parent.map(|p| p.id)
        };
        let stage = self
            .stage(&unique_name("copy"), parent_id)
            .map_err(|e| self.parent_changed(parent, parent_id).unwrap_or(e))?;
        apply_upper(upper, &stage.path, below)?;
        crash::point(crash::STAGED);

        let (tx, parent_rec) = self.store.begin_new(name, parent, labels)?;
        if parent_rec.as_ref().map(|p| p.id) != parent_id {
            // Removed and made again while we copied: ours is of the old one.
            return Err(SnapshotError::NotFound {
                key: parent.unwrap_or_default().into(),
            });
        }
        let rec: Record = tx.insert(name, Kind::Committed, parent_rec.as_ref(), labels)?;
        stage.install(&self.store.dir(rec.id), tx, |dir| {
            Ok(btrfs::set_readonly(dir, true)?)
        })?;
        Ok(rec.info)
    }

    /// Open (or create) the store at `root`, which must be on btrfs
    /// (`Unavailable` otherwise), then remove whatever an interrupted
    /// operation left behind (see the module documentation). `Locked` if
    /// another process has it open.
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        let existed = root.exists();
        let check = |root: &Path| {
            check_btrfs(root).inspect_err(|_| {
                if !existed {
                    let _ = fs::remove_dir(root);
                }
            })
        };
        Ok(Self {
            store: StoreDir::open(root, check)?,
        })
    }

    /// The store's root directory (canonical).
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// A new writable subvolume `tmp/<name>`: a snapshot of snapshot
    /// `parent`'s subvolume, or empty (mode 0755). Deleted again unless
    /// placed.
    fn stage(&self, name: &str, parent: Option<i64>) -> Result<Staging, SnapshotError> {
        let tmp = self.store.tmp();
        self.store.stage(name, |path| {
            match parent {
                Some(p) => btrfs::snapshot(&self.store.dir(p), &tmp, name, false)?,
                None => {
                    btrfs::create_subvolume(&tmp, name)?;
                    // 0755 whatever the process's umask.
                    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                        .map_err(io_error("setting the mode of", path))?;
                }
            }
            Ok(())
        })
    }

    fn mounts_for(&self, kind: Kind, id: i64) -> Vec<Mount> {
        let mode = if kind == Kind::Active { "rw" } else { "ro" };
        vec![Mount {
            fstype: "bind".into(),
            source: self.store.dir(id).to_string_lossy().into_owned(),
            options: vec!["bind".into(), mode.into()],
        }]
    }

    /// `prepare` and `view`.
    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let (tx, parent) = self.store.begin_new(key, parent, labels)?;
        let rec = tx.insert(key, kind, parent.as_ref(), labels)?;
        let stage = self.stage(&format!("new-{}", rec.id), parent.map(|p| p.id))?;
        crash::point(crash::STAGED);
        stage.install(&self.store.dir(rec.id), tx, |dir| {
            if kind == Kind::View {
                btrfs::set_readonly(dir, true)?;
            }
            Ok(())
        })?;
        Ok(self.mounts_for(kind, rec.id))
    }

    /// The error for a `commit_from_dir` whose parent `key` (row
    /// `expected`) was removed, or removed and made again, while its
    /// snapshot was being built.
    fn parent_changed(&self, key: Option<&str>, expected: Option<i64>) -> Option<SnapshotError> {
        let key = key?;
        let now = self.store.meta.read().ok()?.get(key).ok()?.map(|r| r.id);
        (now != expected).then(|| SnapshotError::NotFound { key: key.into() })
    }
}

fn check_btrfs(root: &Path) -> Result<(), SnapshotError> {
    let st = nix::sys::statfs::statfs(root).map_err(|e| io_error("inspecting", root)(e.into()))?;
    if st.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC {
        return Ok(());
    }
    Err(SnapshotError::Unavailable(format!(
        "{} is on {}, not btrfs: the btrfs snapshot backend needs a btrfs filesystem. \
         hull can make one in a sparse loop-backed image file (hull_sys::btrfs::LoopImage; \
         hull_fs::snapshot::open_auto does it when the state directory is not on btrfs), \
         or use the overlay backend",
        root.display(),
        fs_name(st.filesystem_type())
    )))
}

/// A filesystem's name from its `statfs` magic, for messages.
pub(crate) fn fs_name(t: nix::sys::statfs::FsType) -> String {
    use nix::sys::statfs as s;
    let known = [
        (s::EXT4_SUPER_MAGIC, "ext4"),
        (s::XFS_SUPER_MAGIC, "xfs"),
        (s::TMPFS_MAGIC, "tmpfs"),
        (s::OVERLAYFS_SUPER_MAGIC, "overlayfs"),
        (s::NFS_SUPER_MAGIC, "nfs"),
        (s::BTRFS_SUPER_MAGIC, "btrfs"),
    ];
    match known.iter().find(|(m, _)| *m == t) {
        Some((_, name)) => (*name).to_string(),
        None => format!("a filesystem of type {:#x}", t.0),
    }
}

/// A subvolume being built under `tmp/`; deleted on drop unless placed.
type Staging = super::store_dir::Staging<Subvolumes>;

/// Delete `path` if it exists, whatever it is: a subvolume (with the
/// subvolumes made inside it), a directory tree (with any subvolumes in
/// it) or a file. Refuses to touch a tree something is mounted inside.
fn remove_any(path: &Path) -> Result<(), SnapshotError> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("inspecting", path)(e)),
    };
    refuse_if_mounted(path)?;
    if !md.is_dir() {
        return fs::remove_file(path).map_err(io_error("deleting", path));
    }
    if md.ino() == btrfs::SUBVOLUME_ROOT_INO {
        return delete_subvolume(path, 0);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    // Something in it is a subvolume (or read-only): one entry at a time.
    for entry in fs::read_dir(path).map_err(io_error("listing", path))? {
        remove_any(&entry.map_err(io_error("listing", path))?.path())?;
    }
    fs::remove_dir(path).map_err(io_error("deleting", path))
}

/// Delete subvolume `path`, and first the subvolumes made inside it, if
/// any (`ENOTEMPTY`).
fn delete_subvolume(path: &Path, depth: usize) -> Result<(), SnapshotError> {
    match btrfs::delete_subvolume(path) {
        Err(e) if e.raw_os_error() == Some(Errno::ENOTEMPTY as i32) && depth < MAX_DEPTH => {
            btrfs::set_readonly(path, false)?;
            for nested in nested_subvolumes(path)? {
                delete_subvolume(&nested, depth + 1)?;
            }
            Ok(btrfs::delete_subvolume(path)?)
        }
        r => Ok(r?),
    }
}

/// The subvolumes directly inside subvolume `root` (not inside those).
fn nested_subvolumes(root: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), SnapshotError> {
        if depth >= MAX_DEPTH {
            return Err(SnapshotError::InvalidArgument(format!(
                "{} is nested more than {MAX_DEPTH} directories deep",
                dir.display()
            )));
        }
        for entry in fs::read_dir(dir).map_err(io_error("listing", dir))? {
            let entry = entry.map_err(io_error("listing", dir))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = entry.path();
            let md = fs::symlink_metadata(&p).map_err(io_error("inspecting", &p))?;
            if md.ino() == btrfs::SUBVOLUME_ROOT_INO {
                out.push(p);
            } else {
                walk(&p, depth + 1, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, 0, &mut out)?;
    Ok(out)
}

/// Qgroup exclusive bytes of subvolume `dir` when quotas are enabled on its
/// filesystem, after a sync so they are current; `None` without quotas.
fn exclusive_bytes(dir: &Path) -> Result<Option<u64>, BtrfsError> {
    match btrfs::qgroup_usage(dir) {
        Err(BtrfsError::QuotaDisabled { .. } | BtrfsError::NoQgroup { .. }) => Ok(None),
        Err(e) => Err(e),
        Ok(_) => {
            btrfs::sync(dir)?;
            Ok(Some(btrfs::qgroup_usage(dir)?.1))
        }
    }
}

impl Snapshotter for BtrfsSnapshotter {
    fn backend(&self) -> &'static str {
        "btrfs"
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

    fn views_show_markers(&self) -> bool {
        true
    }

    fn layers(&self, key: &str) -> Result<Vec<PathBuf>, SnapshotError> {
        let (_, rec) = self.store.for_layers(key)?;
        Ok(vec![self.store.dir(rec.id)])
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let (_, rec) = self.store.for_mounts(key)?;
        Ok(self.mounts_for(rec.info.kind, rec.id))
    }

    fn commit(&self, name: &str, key: &str, labels: &Labels) -> Result<Info, SnapshotError> {
        let (tx, id, done) = self.store.begin_commit(name, key, labels)?;
        // Freeze in place: no data is copied and nothing moves.
        let dir = self.store.dir(id);
        btrfs::set_readonly(&dir, true)?;
        crash::point(crash::COMMITTING);
        if let Err(e) = tx.commit() {
            if let Err(undo) = btrfs::set_readonly(&dir, false) {
                tracing::warn!(key, error = %undo, "commit failed; the active snapshot stays read-only until the store is opened again");
            }
            return Err(e);
        }
        crash::point(crash::COMMITTED);
        Ok(done)
    }

    fn commit_from_dir(
        &self,
        name: &str,
        parent: Option<&str>,
        upper: &Path,
        labels: &Labels,
    ) -> Result<Info, SnapshotError> {
        self.commit_upper(name, parent, upper, None, labels)
    }

    fn commit_from_dir_over(
        &self,
        name: &str,
        parent: Option<&str>,
        upper: &Path,
        below: &[PathBuf],
        labels: &Labels,
    ) -> Result<Info, SnapshotError> {
        self.commit_upper(name, parent, upper, Some(below), labels)
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        Ok(self.store.record(key)?.info)
    }

    fn update_labels(&self, key: &str, changes: &LabelChanges) -> Result<Info, SnapshotError> {
        self.store.update_labels(key, changes)
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let rec = self.store.record(key)?;
        // Measured without the lock: a concurrent remove shows as NotFound.
        // The parent outlives the snapshot (the metadata sees to it).
        let dir = self.store.dir(rec.id);
        let gone = |dir: &Path| !dir.exists();
        let base = rec.parent_id.map(|p| self.store.dir(p));
        let mut u = measure(key, &dir, base.as_deref())?;
        match exclusive_bytes(&dir) {
            Ok(Some(bytes)) => u.bytes = bytes,
            Ok(None) => {}
            Err(_) if gone(&dir) => return Err(SnapshotError::NotFound { key: key.into() }),
            Err(e) => return Err(e.into()),
        }
        Ok(u)
    }

    fn staging_dir(&self) -> Option<PathBuf> {
        Some(self.store.staging())
    }

    fn walk(&self) -> Result<Vec<Info>, SnapshotError> {
        self.store.walk()
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let id = self.store.forget(key)?;
        if let Err(e) = remove_any(&self.store.dir(id)) {
            tracing::warn!(key, error = %e, "snapshot removed; its subvolume is left for the next open to delete");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! What runs without btrfs. The conformance suite and the btrfs-specific
    //! tests (on loop-backed images) are in tests/snapshot_btrfs.rs.
    use super::*;

    #[test]
    fn open_refuses_other_filesystems_clearly() {
        let dir = tempfile::tempdir().unwrap();
        if btrfs::is_btrfs(dir.path()).unwrap() {
            return;
        }
        let root = dir.path().join("store");
        let e = BtrfsSnapshotter::open(&root).unwrap_err();
        assert_eq!(e.kind(), hull_api::ErrorKind::Unavailable, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("not btrfs"), "{msg}");
        assert!(msg.contains("loop-backed image"), "{msg}");
        assert!(msg.contains("LoopImage"), "{msg}");
        assert!(!root.exists(), "a refused open leaves nothing behind");
    }

    #[test]
    fn full_filesystems_are_resource_exhausted() {
        let btrfs = |errno: Errno| {
            SnapshotError::from(BtrfsError::Sys {
                what: "snapshotting",
                path: "/x".into(),
                source: io::Error::from_raw_os_error(errno as i32),
            })
            .kind()
        };
        use hull_api::ErrorKind;
        assert_eq!(btrfs(Errno::ENOSPC), ErrorKind::ResourceExhausted);
        assert_eq!(btrfs(Errno::EDQUOT), ErrorKind::ResourceExhausted);
        assert_eq!(btrfs(Errno::EIO), ErrorKind::Internal);
    }
}
