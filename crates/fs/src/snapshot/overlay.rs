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
//! staging/           callers' trees to commit (`Snapshotter::staging_dir`)
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

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::files::{Copier, Xattrs, unique_name};
use super::meta::Record;
use super::store_dir::{Storage, StoreDir, measure, refuse_if_mounted};
use super::{
    Info, Kind, LabelChanges, Labels, Mount, SnapshotError, Snapshotter, Usage, crash, io_error,
};

/// Most layers in one chain (a snapshot and its ancestors): overlayfs
/// stacks at most 500 lower layers.
pub const MAX_CHAIN: usize = 500;

/// Deepest directory nesting [`copy_layer`] and `usage` walk.
pub use super::files::MAX_DEPTH;

/// The `overlay` snapshotter. See the module documentation.
pub struct OverlaySnapshotter {
    store: StoreDir<Dirs>,
}

impl std::fmt::Debug for OverlaySnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlaySnapshotter")
            .field("root", &self.store.root())
            .finish()
    }
}

/// Snapshot storage as plain directories (`fs/`, and `work/` while active).
struct Dirs;

impl Storage for Dirs {
    const STAGED: &'static str = "directory";
    const SNAPSHOT: &'static str = "snapshot directory";

    fn remove(path: &Path) -> Result<(), SnapshotError> {
        remove_tree(path)
    }

    fn remove_if_exists(path: &Path) -> Result<(), SnapshotError> {
        remove_tree_if_exists(path)
    }

    fn repair(id: i64, kind: Kind, dir: &Path) -> Result<(), SnapshotError> {
        if !dir.join("fs").is_dir() {
            // Only a power failure can do this (metadata durable, rename
            // not): mounts of this snapshot will fail, loudly.
            tracing::error!(id, dir = %dir.display(), "snapshot directory is missing");
        } else if kind == Kind::Committed {
            remove_tree_if_exists(&dir.join("work"))?;
        }
        Ok(())
    }
}

impl OverlaySnapshotter {
    /// Open (or create) the store at `root`, then remove whatever an
    /// interrupted operation left behind: everything under `tmp/`,
    /// directories under `snapshots/` the metadata doesn't know, and the
    /// `work/` of committed snapshots. `Locked` if another process has it
    /// open.
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        Ok(Self {
            store: StoreDir::open(root, check_root)?,
        })
    }

    /// The store's root directory (canonical).
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// A new directory under `tmp/` (mode 0700), removed again unless
    /// placed.
    fn staging(&self, name: &str) -> Result<Staging, SnapshotError> {
        self.store.stage(name, |path| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .map_err(io_error("creating", path))
        })
    }

    fn fs_path(&self, id: i64) -> String {
        // The root is checked to be UTF-8 at open.
        self.store.dir(id).join("fs").to_string_lossy().into_owned()
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
                    format!(
                        "workdir={}",
                        self.store.dir(id).join("work").to_string_lossy()
                    ),
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
        let (tx, parent) = self.store.begin_new(key, parent, labels)?;
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
            let top = self.store.dir(*top).join("fs");
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
        stage.install(&self.store.dir(rec.id), tx, |_| Ok(()))?;
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
type Staging = super::store_dir::Staging<Dirs>;

/// Remove a directory tree, refusing to descend into anything mounted
/// inside it.
fn remove_tree(path: &Path) -> Result<(), SnapshotError> {
    refuse_if_mounted(path)?;
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

    fn layers(&self, key: &str) -> Result<Vec<PathBuf>, SnapshotError> {
        let (tx, rec) = self.store.for_layers(key)?;
        Ok(tx
            .chain(rec.id)?
            .into_iter()
            .map(|id| self.store.dir(id).join("fs"))
            .collect())
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let (tx, rec) = self.store.for_mounts(key)?;
        let lowers = match rec.parent_id {
            Some(p) => tx.chain(p)?,
            None => Vec::new(),
        };
        Ok(self.mounts_for(rec.info.kind, rec.id, &lowers))
    }

    fn commit(&self, name: &str, key: &str, labels: &Labels) -> Result<Info, SnapshotError> {
        let (tx, id, done) = self.store.begin_commit(name, key, labels)?;
        crash::point(crash::COMMITTING);
        tx.commit()?;
        crash::point(crash::COMMITTED);
        // Freeze: without a work directory the layer can't be mounted
        // writable again. A failure here is repaired by the next open.
        if let Err(e) = remove_tree_if_exists(&self.store.dir(id).join("work")) {
            tracing::warn!(key = name, error = %e, "could not drop a committed snapshot's work directory");
        }
        Ok(done)
    }

    fn commit_from_dir(
        &self,
        name: &str,
        parent: Option<&str>,
        upper: &Path,
        labels: &Labels,
    ) -> Result<Info, SnapshotError> {
        // Fail fast, before copying what may be gigabytes.
        {
            let (tx, parent) = self.store.check_new(name, parent, labels)?;
            if let Some(p) = parent {
                chain_within_limit(&tx.chain(p.id)?, &p.info.key, Kind::Committed)?;
            }
        }
        let stage = self.staging(&unique_name("copy"))?;
        Copier::new(Xattrs::Layer { user_opaque: true }).copy(upper, &stage.path.join("fs"))?;
        crash::point(crash::STAGED);

        let (tx, parent) = self.store.begin_new(name, parent, labels)?;
        if let Some(p) = &parent {
            chain_within_limit(&tx.chain(p.id)?, &p.info.key, Kind::Committed)?;
        }
        let rec: Record = tx.insert(name, Kind::Committed, parent.as_ref(), labels)?;
        stage.install(&self.store.dir(rec.id), tx, |_| Ok(()))?;
        Ok(rec.info)
    }

    fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        Ok(self.store.record(key)?.info)
    }

    fn update_labels(&self, key: &str, changes: &LabelChanges) -> Result<Info, SnapshotError> {
        self.store.update_labels(key, changes)
    }

    fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let id = self.store.record(key)?.id;
        // Walked without the lock: a concurrent remove shows as NotFound.
        measure(key, &self.store.dir(id).join("fs"), None)
    }

    fn staging_dir(&self) -> Option<PathBuf> {
        Some(self.store.staging())
    }

    fn walk(&self) -> Result<Vec<Info>, SnapshotError> {
        self.store.walk()
    }

    fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let id = self.store.forget(key)?;
        let dir = self.store.dir(id);
        let trash = self.store.tmp().join(format!("rm-{id}"));
        let r = fs::rename(&dir, &trash)
            .map_err(io_error("moving out", &dir))
            .and_then(|()| remove_tree(&trash));
        if let Err(e) = r {
            tracing::warn!(key, error = %e, "snapshot removed; its files are left for the next open to delete");
        }
        Ok(())
    }
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
    Copier::new(Xattrs::Layer { user_opaque: false }).copy(src_upper, dst)
}

#[cfg(test)]
mod tests {
    //! Unprivileged tests: mount shapes, recovery and limits. The
    //! conformance suite (with real mounts) is in tests/snapshot_overlay.rs.
    use std::fs::File;

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
        s.store.meta.read().unwrap().require(key).unwrap().id
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
