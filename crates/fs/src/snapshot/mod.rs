//! Snapshots: the copy-on-write store every sandbox is born from.
//!
//! A [`Snapshotter`] keeps a set of *snapshots*, each named by a
//! caller-chosen key and of one of three [`Kind`]s:
//!
//! - **active**: a writable layer over a committed parent (or over nothing),
//!   made by [`Snapshotter::prepare`];
//! - **view**: a read-only look at a committed parent, made by
//!   [`Snapshotter::view`];
//! - **committed**: an immutable layer, made from an active snapshot by
//!   [`Snapshotter::commit`] or from an overlayfs upper directory by
//!   [`Snapshotter::commit_from_dir`]. Only committed snapshots can be
//!   parents, so parent chains are immutable below their tip.
//!
//! Active and view snapshots are realised as a list of [`Mount`]s that the
//! caller performs ([`Mount::mount_all`]); the store itself never mounts
//! anything. The contract follows containerd's `snapshots.Snapshotter`, with
//! one difference: `commit_from_dir` exists because hull's sandboxes keep
//! their writable layer on a tmpfs of their own, so "snapshot a running
//! sandbox" is "turn that frozen upper directory into a committed layer".
//!
//! Backends:
//! - [`overlay`]: works on any filesystem; every snapshot is a directory,
//!   chains are stacked with overlayfs. Limits: at most
//!   [`overlay::MAX_CHAIN`] layers in a chain (overlayfs's own limit); cost
//!   of `commit_from_dir` is O(bytes in the upper directory).
//! - [`btrfs`]: every snapshot is a whole tree in a btrfs subvolume;
//!   `prepare`, `view` and `commit` are constant time whatever the tree
//!   holds (a subvolume snapshot, a read-only flag), chains have no depth
//!   limit and every snapshot mounts as one bind mount. Needs the store on
//!   btrfs. Limits: `commit_from_dir` costs O(bytes in the upper
//!   directory); deleting a name the parent has leaves no whiteout, so a
//!   layer below the store that has the name shows it again (see the
//!   module).
//!
//! [`open_auto`] picks the backend for a state directory: btrfs when it is
//! on btrfs or a loop-backed btrfs image can be made there, overlay
//! otherwise, or the one `HULL_SNAPSHOT_BACKEND` forces; [`StoreInfo`] says
//! which, and where the image is.
//!
//! Every backend passes one conformance suite, [`testsuite`]; instantiate it
//! with [`snapshot_conformance!`](crate::snapshot_conformance).
//!
//! Guarantees every backend gives (and the suite checks):
//! - **One transaction per operation.** Metadata lives in SQLite
//!   (`<root>/metadata.db`, WAL mode, see [`meta`]); each operation's
//!   metadata change is one transaction, and the files on disk move in step
//!   with it: new storage is built under a temporary name and renamed into
//!   place while the transaction is open, and deleted only after the
//!   transaction that forgets it has committed.
//! - **Crash consistency.** The process may be killed at any instant.
//!   Opening the store again shows no half-made snapshot and deletes every
//!   file the metadata doesn't know. The instants the suite kills at are
//!   named in [`crash`]. Durability across *power loss* is not promised
//!   (like the sandbox store: `synchronous=NORMAL`, file data not fsynced).
//! - **Concurrency.** A store is `Send + Sync`; operations from any number
//!   of threads are serialised on the metadata connection, and long copies
//!   (`commit_from_dir`) and tree walks (`usage`) run outside that lock.
//!   One process at a time: a second open of the same root is refused with
//!   [`SnapshotError::Locked`].
//! - **Hostile input.** Keys and labels are validated ([`validate_key`],
//!   [`validate_labels`]); directories copied in are read without following
//!   symlinks.
//!
//! Not tracked: whether a snapshot is currently mounted. Callers unmount an
//! active snapshot before committing or removing it.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
use serde::{Deserialize, Serialize};

use hull_api::ErrorKind;

pub mod btrfs;
pub(crate) mod files;
pub mod meta;
pub mod overlay;
mod store;
mod store_dir;
pub mod testsuite;

pub use store::{BackendChoice, ImageInfo, StoreInfo, default_image_bytes, open_auto, open_with};

/// Labels: free-form `name -> value` strings attached to a snapshot.
pub type Labels = BTreeMap<String, String>;

/// A label update: `Some(value)` sets a label, `None` removes it.
pub type LabelChanges = BTreeMap<String, Option<String>>;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Most labels on one snapshot.
pub const MAX_LABELS: usize = 64;
/// Longest label name, in bytes.
pub const MAX_LABEL_NAME_LEN: usize = 255;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 4096;

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Writable; can be committed.
    Active,
    /// Read-only look at a committed parent; cannot be committed.
    View,
    /// Immutable; the only kind that can be a parent.
    Committed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }

    /// The inverse of [`Kind::as_str`].
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "active" => Some(Kind::Active),
            "view" => Some(Kind::View),
            "committed" => Some(Kind::Committed),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the store knows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The key (for committed snapshots, the name given to `commit`).
    pub key: String,
    pub kind: Kind,
    /// The committed snapshot this one is stacked on, if any.
    pub parent: Option<String>,
    pub labels: Labels,
    /// When the snapshot got its current key and kind (for committed
    /// snapshots: when committed), in seconds since the Unix epoch.
    pub created: u64,
    /// When it last changed (labels), in seconds since the Unix epoch.
    pub updated: u64,
}

/// Disk use of one snapshot's own layer, not of its parents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Allocated bytes (blocks, so sparse files count what they use).
    pub bytes: u64,
    /// Distinct inodes, the layer's root directory included.
    pub inodes: u64,
}

/// One mount that (with the others in its list, in order) realises a
/// snapshot at a target directory; the containerd shape.
///
/// - `fstype: "bind"`: a bind mount of `source`; options `ro`/`rw` and the
///   usual flags (`nosuid`, `nodev`, `noexec`, ...). A read-only bind is
///   made read-only by a remount, as the kernel requires.
/// - `fstype: "overlay"`: `source` is `"overlay"`, options are overlayfs's
///   (`lowerdir=a:b` nearest layer first, `upperdir=`, `workdir=`,
///   `userxattr`, `ro`). [`Mount::mount`] passes lower layers one by one
///   (the new mount API's `lowerdir+`), so a chain is not limited by the
///   one-page limit of `mount(2)`'s data argument; a caller that builds a
///   `mount(2)` data string from these options itself is limited to 4095
///   bytes of options.
/// - anything else: `mount(2)` with `fstype`, known flags as flags and the
///   rest joined with `,` as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mount flags understood in [`Mount::options`] (others go to the
/// filesystem).
const FLAG_OPTIONS: &[(&str, MsFlags, MountAttrFlags)] = &[
    ("ro", MsFlags::MS_RDONLY, MountAttrFlags::MOUNT_ATTR_RDONLY),
    (
        "nosuid",
        MsFlags::MS_NOSUID,
        MountAttrFlags::MOUNT_ATTR_NOSUID,
    ),
    ("nodev", MsFlags::MS_NODEV, MountAttrFlags::MOUNT_ATTR_NODEV),
    (
        "noexec",
        MsFlags::MS_NOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOEXEC,
    ),
    (
        "noatime",
        MsFlags::MS_NOATIME,
        MountAttrFlags::MOUNT_ATTR_NOATIME,
    ),
    (
        "nodiratime",
        MsFlags::MS_NODIRATIME,
        MountAttrFlags::MOUNT_ATTR_NODIRATIME,
    ),
    (
        "relatime",
        MsFlags::MS_RELATIME,
        MountAttrFlags::MOUNT_ATTR_RELATIME,
    ),
    (
        "strictatime",
        MsFlags::MS_STRICTATIME,
        MountAttrFlags::MOUNT_ATTR_STRICTATIME,
    ),
];

impl Mount {
    /// Is this a read-only mount?
    pub fn is_readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// Perform this one mount on `target` (an existing directory).
    pub fn mount(&self, target: &Path) -> Result<(), SnapshotError> {
        let bind =
            self.fstype == "bind" || self.options.iter().any(|o| o == "bind" || o == "rbind");
        if self.fstype == "overlay" {
            self.mount_overlay(target)
        } else if bind {
            self.mount_bind(target)
        } else {
            self.mount_other(target)
        }
    }

    /// Perform `mounts` in order on `target`. On failure, the ones already
    /// made are undone.
    pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), SnapshotError> {
        for (i, m) in mounts.iter().enumerate() {
            if let Err(e) = m.mount(target) {
                for _ in 0..i {
                    let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn mount_bind(&self, target: &Path) -> Result<(), SnapshotError> {
        let mut flags = MsFlags::MS_BIND;
        if self.options.iter().any(|o| o == "rbind") {
            flags |= MsFlags::MS_REC;
        }
        let mut remount = MsFlags::empty();
        for o in &self.options {
            if let Some((_, f, _)) = FLAG_OPTIONS.iter().find(|(n, _, _)| n == o) {
                remount |= *f;
            }
        }
        nix::mount::mount(
            Some(self.source.as_str()),
            target,
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| mount_error(self, target, e.into(), String::new()))?;
        if !remount.is_empty() {
            // A bind mount ignores flags; they take effect on a remount.
            let r = nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | remount,
                None::<&str>,
            );
            if let Err(e) = r {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                return Err(mount_error(self, target, e.into(), String::new()));
            }
        }
        Ok(())
    }

    fn mount_other(&self, target: &Path) -> Result<(), SnapshotError> {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        for o in &self.options {
            match FLAG_OPTIONS.iter().find(|(n, _, _)| n == o) {
                Some((_, f, _)) => flags |= *f,
                None if o == "rw" => {}
                None => data.push(o.as_str()),
            }
        }
        let data = data.join(",");
        nix::mount::mount(
            Some(self.source.as_str()),
            target,
            Some(self.fstype.as_str()),
            flags,
            Some(data.as_str()).filter(|d| !d.is_empty()),
        )
        .map_err(|e| mount_error(self, target, e.into(), String::new()))
    }

    /// Overlay through the new mount API: lower layers are added one at a
    /// time, so their number is limited by overlayfs (500), not by a page.
    /// Kernels before 6.8 have no `lowerdir+`: there, `mount(2)` with the
    /// whole option string, which must fit in a page.
    fn mount_overlay(&self, target: &Path) -> Result<(), SnapshotError> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|e| mount_error(self, target, e.into(), String::new()))?;
        let failed = |e: rustix::io::Errno| mount_error(self, target, e.into(), fs_log(&fs));
        rustix::mount::fsconfig_set_string(&fs, "source", self.source.as_str()).map_err(failed)?;
        let mut attrs = MountAttrFlags::empty();
        for o in &self.options {
            if let Some((_, _, a)) = FLAG_OPTIONS.iter().find(|(n, _, _)| n == o) {
                attrs |= *a;
            } else if o == "rw" {
            } else if let Some(lower) = o.strip_prefix("lowerdir=") {
                for (i, layer) in lower.split(':').enumerate() {
                    match rustix::mount::fsconfig_set_string(&fs, "lowerdir+", layer) {
                        Err(rustix::io::Errno::INVAL) if i == 0 => {
                            return self.mount_overlay_legacy(target);
                        }
                        r => r.map_err(failed)?,
                    }
                }
            } else if let Some((k, v)) = o.split_once('=') {
                rustix::mount::fsconfig_set_string(&fs, k, v).map_err(failed)?;
            } else {
                rustix::mount::fsconfig_set_flag(&fs, o.as_str()).map_err(failed)?;
            }
        }
        rustix::mount::fsconfig_create(&fs).map_err(failed)?;
        let mnt =
            rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(failed)?;
        rustix::mount::move_mount(
            mnt.as_fd(),
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(failed)
    }

    fn mount_overlay_legacy(&self, target: &Path) -> Result<(), SnapshotError> {
        let data: usize = self.options.iter().map(|o| o.len() + 1).sum();
        if data > 4095 {
            return Err(SnapshotError::Mount {
                fstype: self.fstype.clone(),
                target: target.display().to_string(),
                log: format!(
                    "this kernel has no overlayfs `lowerdir+` (Linux < 6.8), and {data} bytes \
                     of options exceed mount(2)'s one page: the chain is too long"
                ),
                source: io::Error::from_raw_os_error(Errno::E2BIG as i32),
            });
        }
        self.mount_other(target)
    }
}

/// The messages a filesystem context logged (overlayfs says there why a
/// mount was refused), one per line.
fn fs_log(fs: &impl AsFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => out.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    out.join("; ")
}

fn mount_error(m: &Mount, target: &Path, source: io::Error, log: String) -> SnapshotError {
    SnapshotError::Mount {
        fstype: m.fstype.clone(),
        target: target.display().to_string(),
        log,
        source,
    }
}

/// Unmount everything mounted on `target` (stacked mounts included). A
/// busy mount is detached lazily. Not being a mount point is not an error.
pub fn unmount(target: &Path) -> Result<(), SnapshotError> {
    for _ in 0..64 {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(Errno::EINVAL) => return Ok(()),
                Err(e) => return Err(io_error("unmounting", target)(e.into())),
            },
            Err(e) => return Err(io_error("unmounting", target)(e.into())),
        }
    }
    Err(SnapshotError::Io {
        what: "unmounting (still mounted after 64 unmounts)",
        path: target.display().to_string(),
        source: io::Error::from(io::ErrorKind::ResourceBusy),
    })
}

/// Every snapshotter error. [`SnapshotError::kind`] maps each to the API's
/// error kinds.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid snapshot key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("snapshot {key:?} does not exist")]
    NotFound { key: String },
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },
    /// The snapshot is the parent of others; remove them first.
    #[error("snapshot {key:?} is in use as the parent of {children:?}; remove those first")]
    InUse { key: String, children: Vec<String> },
    /// An operation needs a snapshot of another kind (commit of a view, a
    /// parent that is not committed, mounts of a committed snapshot).
    #[error("snapshot {key:?} is {kind}; {needs}")]
    WrongKind {
        key: String,
        kind: Kind,
        needs: &'static str,
    },
    /// Another process has the store open.
    #[error("snapshot store {root} is in use by another process")]
    Locked { root: String },
    /// The disk (or a quota) is full.
    #[error("no space left {what} {path}")]
    NoSpace {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("mounting {fstype} on {target}{}", if log.is_empty() { String::new() } else { format!(" ({log})") })]
    Mount {
        fstype: String,
        target: String,
        /// What the filesystem logged about the failure, if anything.
        log: String,
        #[source]
        source: io::Error,
    },
    /// The backend cannot work here (the btrfs backend on another
    /// filesystem, a forced backend that is unavailable).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Btrfs(#[from] hull_sys::btrfs::BtrfsError),
    #[error("snapshot metadata database")]
    Metadata(#[from] rusqlite::Error),
    #[error("snapshot metadata is inconsistent: {0}")]
    Corrupt(String),
}

impl SnapshotError {
    /// The API error kind this error is served as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::InvalidKey { .. }
            | SnapshotError::InvalidArgument(_)
            | SnapshotError::WrongKind { .. } => ErrorKind::InvalidArgument,
            SnapshotError::NotFound { .. } => ErrorKind::NotFound,
            SnapshotError::AlreadyExists { .. }
            | SnapshotError::InUse { .. }
            | SnapshotError::Locked { .. } => ErrorKind::Conflict,
            SnapshotError::NoSpace { .. } => ErrorKind::ResourceExhausted,
            SnapshotError::Mount { source, .. } if is_no_space(source) => {
                ErrorKind::ResourceExhausted
            }
            SnapshotError::Metadata(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                ErrorKind::ResourceExhausted
            }
            SnapshotError::Btrfs(e)
                if e.raw_os_error()
                    .is_some_and(|n| n == Errno::ENOSPC as i32 || n == Errno::EDQUOT as i32) =>
            {
                ErrorKind::ResourceExhausted
            }
            SnapshotError::Unavailable(_) => ErrorKind::Unavailable,
            SnapshotError::Io { .. }
            | SnapshotError::Mount { .. }
            | SnapshotError::Metadata(_)
            | SnapshotError::Btrfs(_)
            | SnapshotError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc_errno) if libc_errno == Errno::ENOSPC as i32 || libc_errno == Errno::EDQUOT as i32)
}

/// An `io::Error` mapper naming what was done to which path; ENOSPC and
/// EDQUOT become [`SnapshotError::NoSpace`].
pub(crate) fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.display().to_string();
    move |source| {
        if is_no_space(&source) {
            SnapshotError::NoSpace { what, path, source }
        } else {
            SnapshotError::Io { what, path, source }
        }
    }
}

/// Check a key (or name, or parent): 1 to 255 bytes of `[A-Za-z0-9._:-]`,
/// not starting with `.`.
pub fn validate_key(key: &str) -> Result<(), SnapshotError> {
    let bad = |reason| {
        Err(SnapshotError::InvalidKey {
            key: key.chars().take(MAX_KEY_LEN + 1).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("it is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("it is longer than 255 bytes");
    }
    if key.starts_with('.') {
        return bad("it starts with '.'");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return bad("only letters, digits and . _ : - are allowed");
    }
    Ok(())
}

/// Check labels: at most [`MAX_LABELS`], names 1 to 255 bytes without
/// control characters, values at most 4096 bytes without NUL.
pub fn validate_labels(labels: &Labels) -> Result<(), SnapshotError> {
    if labels.len() > MAX_LABELS {
        return Err(SnapshotError::InvalidArgument(format!(
            "{} labels given; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    labels
        .iter()
        .try_for_each(|(k, v)| validate_label(k, Some(v)))
}

/// Check one label name and (if set) value.
pub fn validate_label(name: &str, value: Option<&str>) -> Result<(), SnapshotError> {
    if name.is_empty() || name.len() > MAX_LABEL_NAME_LEN || name.chars().any(char::is_control) {
        return Err(SnapshotError::InvalidArgument(format!(
            "label name {:?} must be 1 to {MAX_LABEL_NAME_LEN} bytes without control characters",
            name.chars().take(64).collect::<String>()
        )));
    }
    if let Some(v) = value
        && (v.len() > MAX_LABEL_VALUE_LEN || v.contains('\0'))
    {
        return Err(SnapshotError::InvalidArgument(format!(
            "value of label {name:?} must be at most {MAX_LABEL_VALUE_LEN} bytes without NUL"
        )));
    }
    Ok(())
}

/// The snapshotter contract. Every method is one atomic operation (see the
/// module documentation for the guarantees).
///
/// Keys, names and parents share one namespace and are checked with
/// [`validate_key`]; labels with [`validate_labels`].
pub trait Snapshotter: Send + Sync {
    /// The backend's name (`"overlay"`, `"btrfs"`).
    fn backend(&self) -> &'static str;

    /// Make an active (writable) snapshot `key` on top of the committed
    /// `parent` (or empty), and return the mounts that realise it.
    ///
    /// Errors: `InvalidKey`; `AlreadyExists` if `key` exists; `NotFound` if
    /// `parent` doesn't; `WrongKind` if `parent` is not committed;
    /// `InvalidArgument` if the backend cannot stack that deep.
    fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<Vec<Mount>, SnapshotError>;

    /// Make a read-only view `key` of the committed `parent` (or of an
    /// empty directory), and return its mounts. Errors as for `prepare`.
    fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: &Labels,
    ) -> Result<Vec<Mount>, SnapshotError>;

    /// The mounts of an active or view snapshot, again. `WrongKind` for a
    /// committed one (make a view of it instead).
    fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError>;

    /// Turn the active snapshot `key` into the committed snapshot `name`,
    /// with the same parent and the given labels (the active snapshot's
    /// labels are not carried over); `key` no longer exists afterwards.
    /// `name` may equal `key`. Unmount `key` first.
    ///
    /// Errors: `WrongKind` if `key` is a view or committed; `NotFound`;
    /// `AlreadyExists` if `name` is taken by another snapshot.
    fn commit(&self, name: &str, key: &str, labels: &Labels) -> Result<Info, SnapshotError>;

    /// Make the committed snapshot `name` on top of `parent` from `upper`,
    /// an overlayfs upper directory taken from a quiescent (frozen)
    /// sandbox: its content over the parent's, where a character device
    /// 0/0 is a whiteout (the name is deleted) and a directory with the
    /// xattr `user.overlay.opaque` (or `trusted.overlay.opaque`) = `"y"`
    /// hides the parent's directory of that name. `upper` is read, never
    /// changed, and never followed through symlinks.
    ///
    /// Errors as for `prepare`, plus `InvalidArgument` for device nodes
    /// other than whiteouts and for trees deeper than the backend copies.
    fn commit_from_dir(
        &self,
        name: &str,
        parent: Option<&str>,
        upper: &Path,
        labels: &Labels,
    ) -> Result<Info, SnapshotError>;

    /// [`Self::commit_from_dir`] for a snapshot that will be stacked over
    /// `below` (layer directories outside the store, nearest first: the
    /// template's). A backend whose snapshots are whole trees keeps a
    /// whiteout only where `below` has the name (overlayfs would list the
    /// others); others ignore `below`.
    fn commit_from_dir_over(
        &self,
        name: &str,
        parent: Option<&str>,
        upper: &Path,
        below: &[std::path::PathBuf],
        labels: &Labels,
    ) -> Result<Info, SnapshotError> {
        let _ = below;
        self.commit_from_dir(name, parent, upper, labels)
    }

    /// What the store knows about `key`.
    fn stat(&self, key: &str) -> Result<Info, SnapshotError>;

    /// Set (`Some`) or remove (`None`) labels of `key`; returns the result.
    fn update_labels(&self, key: &str, changes: &LabelChanges) -> Result<Info, SnapshotError>;

    /// Disk use of `key`'s own layer (not its parents'). For an active
    /// snapshot this walks its files, so it costs time proportional to them.
    fn usage(&self, key: &str) -> Result<Usage, SnapshotError>;

    /// Every snapshot, ordered by key.
    fn walk(&self) -> Result<Vec<Info>, SnapshotError>;

    /// The directories holding committed snapshot `key`'s tree, nearest
    /// first: stacked as overlayfs lower layers they show it (one directory
    /// for a backend whose snapshots are whole trees). For callers that
    /// stack a snapshot under a writable layer of their own (the runtime's
    /// sandboxes) without making a view. `WrongKind` unless committed.
    fn layers(&self, key: &str) -> Result<Vec<std::path::PathBuf>, SnapshotError> {
        let _ = key;
        Err(SnapshotError::InvalidArgument(format!(
            "the {} backend cannot list layer directories",
            self.backend()
        )))
    }

    /// A directory on the store's own filesystem where callers may build
    /// trees they will pass to [`Self::commit_from_dir`] (an import's
    /// files): committing from there copies with reflinks where the
    /// filesystem has them (btrfs). The caller names and removes its
    /// entries; the store empties it when opened. `None` when the backend
    /// has no such place.
    fn staging_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Whether views and active snapshots show the whiteouts and opaque
    /// markers a committed tree keeps for layers below the store (the
    /// `btrfs` backend's plain bind mounts do; overlay mounts hide them).
    fn views_show_markers(&self) -> bool {
        false
    }

    /// Remove `key` and its files. `InUse` while other snapshots name it as
    /// their parent; `NotFound` if it doesn't exist.
    fn remove(&self, key: &str) -> Result<(), SnapshotError>;
}

/// Disk use of the tree at `dir` (an upper directory about to be
/// committed, say): allocated bytes and distinct inodes, never following
/// symlinks. Costs a walk of the tree.
pub fn dir_usage(dir: &Path) -> Result<Usage, SnapshotError> {
    files::tree_usage(dir, None).map_err(io_error("measuring", dir))
}

/// Named instants inside multi-step operations at which a backend lets a
/// test kill the process (the conformance suite does, in a child process,
/// to prove crash consistency). A backend calls [`crash::point`] at each;
/// it does nothing unless the environment variable [`crash::ENV`] names
/// that point, and then the process is SIGKILLed on the spot.
pub mod crash {
    use std::sync::OnceLock;

    /// The environment variable naming the point to die at.
    pub const ENV: &str = "HULL_SNAPSHOT_CRASH_AT";
    /// A new snapshot's storage is complete under a temporary name; the
    /// metadata knows nothing of it yet.
    pub const STAGED: &str = "staged";
    /// A new snapshot's storage is under its final name and its metadata
    /// is written in a transaction that has not committed.
    pub const PLACED: &str = "placed";
    /// `commit`: the metadata change is written in a transaction that has
    /// not committed.
    pub const COMMITTING: &str = "committing";
    /// `commit`: the transaction has committed; the backend's clean-up of
    /// the former active snapshot (overlay: its `work/`) is not done.
    pub const COMMITTED: &str = "committed";
    /// `remove`: the transaction that forgets the snapshot has committed;
    /// its storage is not deleted yet.
    pub const REMOVED: &str = "removed";

    /// Die here if [`ENV`] names `name`.
    pub fn point(name: &str) {
        static AT: OnceLock<Option<String>> = OnceLock::new();
        let at = AT.get_or_init(|| std::env::var(ENV).ok());
        if at.as_deref() == Some(name) {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            std::process::abort();
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a", "base", "sb-1:step.2_x", "A9", "k".repeat(255).as_str()] {
            validate_key(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "/abs",
            "a b",
            "é",
            "a\0b",
            "a\n",
            "k".repeat(256).as_str(),
        ] {
            let e = validate_key(bad).unwrap_err();
            assert!(
                matches!(e, SnapshotError::InvalidKey { .. }),
                "{bad:?}: {e}"
            );
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn labels() {
        let mut l = Labels::new();
        l.insert("hull.dev/sandbox".into(), "sb-1".into());
        l.insert("note".into(), "any text, even ünïcode".into());
        validate_labels(&l).unwrap();
        for (k, v) in [
            ("", "x"),
            ("a\nb", "x"),
            (&*"n".repeat(256), "x"),
            ("ok", &*"v".repeat(4097)),
            ("ok", "a\0b"),
        ] {
            let l = Labels::from([(k.to_string(), v.to_string())]);
            assert!(matches!(
                validate_labels(&l),
                Err(SnapshotError::InvalidArgument(_))
            ));
        }
        let many: Labels = (0..=MAX_LABELS)
            .map(|i| (format!("l{i}"), String::new()))
            .collect();
        assert!(validate_labels(&many).is_err());
    }

    #[test]
    fn error_kinds() {
        let no_space = io_error("writing", Path::new("/x"))(io::Error::from_raw_os_error(
            Errno::ENOSPC as i32,
        ));
        assert_eq!(no_space.kind(), ErrorKind::ResourceExhausted);
        let quota = io_error("writing", Path::new("/x"))(io::Error::from_raw_os_error(
            Errno::EDQUOT as i32,
        ));
        assert_eq!(quota.kind(), ErrorKind::ResourceExhausted);
        let other =
            io_error("writing", Path::new("/x"))(io::Error::from_raw_os_error(Errno::EIO as i32));
        assert_eq!(other.kind(), ErrorKind::Internal);
        let in_use = SnapshotError::InUse {
            key: "base".into(),
            children: vec!["a".into()],
        };
        assert_eq!(in_use.kind(), ErrorKind::Conflict);
        assert!(in_use.to_string().contains("remove those first"));
        assert_eq!(
            SnapshotError::NotFound { key: "x".into() }.kind(),
            ErrorKind::NotFound
        );
    }

    /// The `mount(2)` path for kernels without `lowerdir+`.
    #[test]
    fn overlay_without_lowerdir_plus() {
        if !testsuite::privileged("overlay_without_lowerdir_plus") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["l1", "l2", "upper", "work", "target"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("l2/f"), b"low").unwrap();
        std::fs::write(d.join("l1/f"), b"high").unwrap();
        let m = Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "userxattr".into(),
                format!(
                    "lowerdir={}:{}",
                    d.join("l1").display(),
                    d.join("l2").display()
                ),
                format!("upperdir={}", d.join("upper").display()),
                format!("workdir={}", d.join("work").display()),
            ],
        };
        let target = d.join("target");
        m.mount_overlay_legacy(&target).unwrap();
        let seen = std::fs::read(target.join("f"));
        unmount(&target).unwrap();
        assert_eq!(seen.unwrap(), b"high");
        assert!(!hull_sys::mount::is_mountpoint(&target));

        let long = Mount {
            options: vec![format!(
                "lowerdir={}",
                vec![d.display().to_string(); 400].join(":")
            )],
            ..m
        };
        let e = long.mount_overlay_legacy(&target).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        assert!(!hull_sys::mount::is_mountpoint(&target));
    }

    #[test]
    fn kinds_round_trip() {
        for k in [Kind::Active, Kind::View, Kind::Committed] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert_eq!(Kind::parse("snapshot"), None);
    }
}
