//! The store directory every snapshot backend keeps, and the parts of the
//! operations that do not depend on what a snapshot's storage is: opening
//! (create, resolve, lock, metadata), recovery at open, staging new
//! storage under `tmp/` and renaming it into place in step with the
//! metadata transaction, and the metadata side of each operation (key and
//! label checks, kind checks, transactions, crash points). What a
//! snapshot's storage is (a directory holding a layer, a btrfs subvolume)
//! and how it is made, deleted and repaired stays with the backend, behind
//! the small [`Storage`] trait.
//!
//! Layout under the store's root (each backend documents what its entries
//! hold):
//!
//! ```text
//! metadata.db        the metadata (see `meta`)
//! lock               flock()ed while a process has the store open
//! snapshots/<id>     a snapshot's storage (<id>: its metadata row id)
//! tmp/               storage being built (or deleted)
//! ```
//!
//! Limits: one process at a time per store (a second open is `Locked`);
//! opening deletes everything under `tmp/` and every entry of `snapshots/`
//! the metadata doesn't know, so nothing else may be kept there.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::files::tree_usage;
use super::meta::{MetaStore, Record, Tx};
use super::{
    Info, Kind, LabelChanges, Labels, SnapshotError, Usage, crash, io_error, validate_key,
    validate_labels,
};

/// What a backend's snapshot storage is, as far as the store directory
/// needs to know: how an entry is deleted and how a known one is repaired
/// at open.
pub(super) trait Storage {
    /// What a staging entry is, in log messages (`"directory"`).
    const STAGED: &'static str;
    /// What an entry of `snapshots/` is, in log messages
    /// (`"snapshot directory"`).
    const SNAPSHOT: &'static str;

    /// Delete `path`, an entry of `tmp/` or `snapshots/`, whatever it holds.
    fn remove(path: &Path) -> Result<(), SnapshotError>;

    /// Delete `path` if it exists.
    fn remove_if_exists(path: &Path) -> Result<(), SnapshotError>;

    /// At open, for each snapshot the metadata knows: make its storage
    /// `dir` agree with its `kind` (or say loudly that it is missing).
    fn repair(id: i64, kind: Kind, dir: &Path) -> Result<(), SnapshotError>;
}

/// An open store directory: its canonical root, its metadata, and the lock
/// held while it is open.
pub(super) struct StoreDir<S> {
    root: PathBuf,
    pub(super) meta: MetaStore,
    _lock: Flock<File>,
    _storage: PhantomData<fn() -> S>,
}

impl<S: Storage> StoreDir<S> {
    /// Open (or create, mode 0700) the store at `root`: resolve it, let
    /// `check` refuse it, lock it (`Locked` if another process has it
    /// open), make `snapshots/` and `tmp/`, open the metadata and recover
    /// (see [`Self::recover`]).
    pub(super) fn open(
        root: &Path,
        check: impl FnOnce(&Path) -> Result<(), SnapshotError>,
    ) -> Result<Self, SnapshotError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_error("creating", root))?;
        let root = root.canonicalize().map_err(io_error("resolving", root))?;
        check(&root)?;
        let lock = lock_root(&root)?;
        make_dirs(&root, &["snapshots", "tmp", "staging"])?;
        let meta = MetaStore::open(&root.join("metadata.db"))?;
        let s = Self {
            root,
            meta,
            _lock: lock,
            _storage: PhantomData,
        };
        s.recover()?;
        Ok(s)
    }

    /// The store's root directory (canonical).
    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    /// Snapshot `id`'s storage.
    pub(super) fn dir(&self, id: i64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    pub(super) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `staging/`: where callers build trees to commit (see
    /// [`Snapshotter::staging_dir`](super::Snapshotter::staging_dir));
    /// emptied when the store is opened.
    pub(super) fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Make the files agree with the metadata: delete everything under
    /// `tmp/` and `staging/`, every entry of `snapshots/` the metadata doesn't know,
    /// then [`Storage::repair`] each snapshot it knows.
    fn recover(&self) -> Result<(), SnapshotError> {
        for dir in [self.tmp(), self.staging()] {
            for entry in fs::read_dir(&dir).map_err(io_error("listing", &dir))? {
                let entry = entry.map_err(io_error("listing", &dir))?;
                S::remove(&entry.path())?;
            }
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
                tracing::info!(path = %entry.path().display(), "removing a {} the metadata doesn't know", S::SNAPSHOT);
                S::remove(&entry.path())?;
            }
        }
        for (id, kind) in known {
            S::repair(id, kind, &self.dir(id))?;
        }
        Ok(())
    }

    /// A new entry `tmp/<name>`, made by `make` once a leftover of that
    /// name is deleted; deleted again unless placed.
    pub(super) fn stage(
        &self,
        name: &str,
        make: impl FnOnce(&Path) -> Result<(), SnapshotError>,
    ) -> Result<Staging<S>, SnapshotError> {
        let path = self.tmp().join(name);
        S::remove_if_exists(&path)?;
        make(&path)?;
        Ok(Staging {
            path,
            armed: true,
            _storage: PhantomData,
        })
    }

    /// The start of making snapshot `key` on `parent` (`prepare`, `view`,
    /// `commit_from_dir`): `key` and `labels` checked, then, in a write
    /// transaction, `key` free and `parent` (if any) committed.
    pub(super) fn begin_new(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<(Tx<'_>, Option<Record>), SnapshotError> {
        self.new_in(key, parent, labels, MetaStore::write)
    }

    /// The checks of [`Self::begin_new`] in a read transaction, for
    /// `commit_from_dir` to fail fast before it copies anything.
    pub(super) fn check_new(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<(Tx<'_>, Option<Record>), SnapshotError> {
        self.new_in(key, parent, labels, MetaStore::read)
    }

    fn new_in<'a>(
        &'a self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
        open: fn(&'a MetaStore) -> Result<Tx<'a>, SnapshotError>,
    ) -> Result<(Tx<'a>, Option<Record>), SnapshotError> {
        validate_key(key)?;
        validate_labels(labels)?;
        let tx = open(&self.meta)?;
        tx.ensure_free(key)?;
        let parent = tx.committed_parent(parent)?;
        Ok((tx, parent))
    }

    /// The metadata half of `commit`, not yet committed: active snapshot
    /// `key` becomes committed snapshot `name` with `labels`. Returns the
    /// write transaction, the snapshot's row id (its storage keeps its
    /// place) and what it is once the transaction commits.
    pub(super) fn begin_commit(
        &self,
        name: &str,
        key: &str,
        labels: &Labels,
    ) -> Result<(Tx<'_>, i64, Info), SnapshotError> {
        validate_key(name)?;
        validate_key(key)?;
        validate_labels(labels)?;
        let tx = self.meta.write()?;
        let rec = require_kind(
            &tx,
            key,
            |k| k == Kind::Active,
            "only active snapshots can be committed",
        )?;
        if name != key {
            tx.ensure_free(name)?;
        }
        let done = tx.commit_active(rec.id, name, labels)?;
        Ok((tx, rec.id, done.info))
    }

    /// For `layers`: committed snapshot `key`, with the read transaction
    /// that found it.
    pub(super) fn for_layers(&self, key: &str) -> Result<(Tx<'_>, Record), SnapshotError> {
        validate_key(key)?;
        let tx = self.meta.read()?;
        let rec = require_kind(
            &tx,
            key,
            |k| k == Kind::Committed,
            "only committed snapshots have layers",
        )?;
        Ok((tx, rec))
    }

    /// For `mounts`: active or view snapshot `key`, with the read
    /// transaction that found it.
    pub(super) fn for_mounts(&self, key: &str) -> Result<(Tx<'_>, Record), SnapshotError> {
        validate_key(key)?;
        let tx = self.meta.read()?;
        let rec = require_kind(
            &tx,
            key,
            |k| k != Kind::Committed,
            "committed snapshots have no mounts; make a view of it",
        )?;
        Ok((tx, rec))
    }

    /// `key`'s record.
    pub(super) fn record(&self, key: &str) -> Result<Record, SnapshotError> {
        validate_key(key)?;
        self.meta.read()?.require(key)
    }

    /// `update_labels`.
    pub(super) fn update_labels(
        &self,
        key: &str,
        changes: &LabelChanges,
    ) -> Result<Info, SnapshotError> {
        validate_key(key)?;
        let tx = self.meta.write()?;
        let rec = tx.require(key)?;
        let rec = tx.update_labels(rec.id, changes)?;
        tx.commit()?;
        Ok(rec.info)
    }

    /// `walk`.
    pub(super) fn walk(&self) -> Result<Vec<Info>, SnapshotError> {
        Ok(self
            .meta
            .read()?
            .list()?
            .into_iter()
            .map(|r| r.info)
            .collect())
    }

    /// The metadata half of `remove`: forget `key` in one transaction, then
    /// crash point `REMOVED`. Returns the row id whose storage the caller
    /// deletes: the metadata no longer knows it (ids are never reused), so
    /// that needs no lock, and what fails is deleted by the next open.
    pub(super) fn forget(&self, key: &str) -> Result<i64, SnapshotError> {
        validate_key(key)?;
        let tx = self.meta.write()?;
        let rec = tx.require(key)?;
        tx.delete(&rec)?;
        tx.commit()?;
        crash::point(crash::REMOVED);
        Ok(rec.id)
    }
}

/// `key`'s record in `tx` if `ok` accepts its kind; `WrongKind` saying what
/// it `needs` otherwise.
fn require_kind(
    tx: &Tx<'_>,
    key: &str,
    ok: impl FnOnce(Kind) -> bool,
    needs: &'static str,
) -> Result<Record, SnapshotError> {
    let rec = tx.require(key)?;
    if !ok(rec.info.kind) {
        return Err(SnapshotError::WrongKind {
            key: key.into(),
            kind: rec.info.kind,
            needs,
        });
    }
    Ok(rec)
}

/// [`tree_usage`] of snapshot `key`'s tree at `dir` (`base`: see there),
/// walked without the metadata lock: a tree a concurrent `remove` deleted
/// is `NotFound`.
pub(super) fn measure(key: &str, dir: &Path, base: Option<&Path>) -> Result<Usage, SnapshotError> {
    tree_usage(dir, base).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            SnapshotError::NotFound { key: key.into() }
        } else {
            io_error("measuring", dir)(e)
        }
    })
}

/// `ResourceBusy` if something is mounted at or inside `path`: deleting
/// would reach into the mounted filesystem.
pub(super) fn refuse_if_mounted(path: &Path) -> Result<(), SnapshotError> {
    if hull_sys::mount::mounts_under(path).is_empty() {
        return Ok(());
    }
    Err(SnapshotError::Io {
        what: "refusing to delete (something is mounted inside it)",
        path: path.display().to_string(),
        source: io::Error::from(io::ErrorKind::ResourceBusy),
    })
}

/// An entry being built under `tmp/`; deleted on drop unless placed.
pub(super) struct Staging<S: Storage> {
    pub(super) path: PathBuf,
    armed: bool,
    _storage: PhantomData<fn() -> S>,
}

impl<S: Storage> Staging<S> {
    /// Rename into place at `dst` (replacing leftovers of a failed attempt
    /// that the metadata doesn't know; the caller holds the write lock).
    fn place(mut self, dst: &Path) -> Result<(), SnapshotError> {
        S::remove_if_exists(dst)?;
        fs::rename(&self.path, dst).map_err(io_error("renaming into place", dst))?;
        self.armed = false;
        Ok(())
    }

    /// Rename into place at `dst`, the storage of the snapshot `tx` inserts,
    /// then run `finish` on it, reach crash point `PLACED` and commit `tx`.
    /// A failure after the rename deletes `dst` again.
    pub(super) fn install(
        self,
        dst: &Path,
        tx: Tx<'_>,
        finish: impl FnOnce(&Path) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        self.place(dst)?;
        let placed = || -> Result<(), SnapshotError> {
            finish(dst)?;
            crash::point(crash::PLACED);
            tx.commit()
        };
        if let Err(e) = placed() {
            let _ = S::remove(dst);
            return Err(e);
        }
        Ok(())
    }
}

impl<S: Storage> Drop for Staging<S> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = S::remove(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "leaving a staging {} for the next open to remove", S::STAGED);
        }
    }
}

/// Take the store's lock: an exclusive `flock` of `<root>/lock` (created if
/// missing), held as long as the returned value lives. `Locked` if another
/// process holds it.
fn lock_root(root: &Path) -> Result<Flock<File>, SnapshotError> {
    let lock_path = root.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("opening", &lock_path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            SnapshotError::Locked {
                root: root.display().to_string(),
            }
        } else {
            io_error("locking", &lock_path)(e.into())
        }
    })
}

/// Create the directories `names` (mode 0700) under `root` unless they exist.
fn make_dirs(root: &Path, names: &[&str]) -> Result<(), SnapshotError> {
    for d in names {
        let p = root.join(d);
        match fs::DirBuilder::new().mode(0o700).create(&p) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_error("creating", &p)(e));
            }
            _ => {}
        }
    }
    Ok(())
}
