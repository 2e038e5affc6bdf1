//! Choosing a backend and opening the store under a state directory.
//!
//! [`open_auto`] (and [`open_with`], for a choice from configuration)
//! opens the snapshot store under `root` with the best backend the host
//! allows, or the one forced by [`BackendChoice::ENV`]
//! (`HULL_SNAPSHOT_BACKEND=auto|overlay|btrfs`). Each backend has its own
//! directory, so forcing the other one never mixes their snapshots (they
//! just don't see each other's):
//!
//! ```text
//! <root>/btrfs/      the btrfs store: a plain directory when <root> is on
//!                    btrfs, else the mount point of
//! <root>/btrfs.img   a sparse loop-backed btrfs image (made on first use,
//!                    `image_size` bytes; never resized afterwards)
//! <root>/overlay/    the overlay store
//! ```
//!
//! `auto` picks, in order:
//! 1. the backend of a store made before: `<root>/btrfs.img` or
//!    `<root>/btrfs/metadata.db` means btrfs, `<root>/overlay/metadata.db`
//!    overlay (switching silently would hide the existing snapshots);
//! 2. btrfs when `<root>` is on btrfs;
//! 3. btrfs in a loop image when `mkfs.btrfs` (Debian's `btrfs-progs`) is
//!    installed, `/dev/loop-control` exists and the filesystem has
//!    `image_size` bytes free; if making or mounting the image fails, what
//!    this call created is removed and overlay is used;
//! 4. overlay.
//!
//! Forced `btrfs` is 2 or 3, and an `Unavailable` error saying why when
//! neither works; forced `overlay` is overlay. [`StoreInfo`] says what was
//! chosen and why, and for a loop image its path and size (for
//! `hull info`).
//!
//! The loop image's mount outlives the process, so a restarted daemon
//! finds it mounted; [`StoreInfo::release`] unmounts it (after the store
//! is dropped), which frees the loop device too.
//!
//! Limits: mounting the image needs `CAP_SYS_ADMIN`; the image never
//! grows, so a full one fails writes with `ENOSPC` (`NoSpace`) until
//! snapshots are removed (btrfs frees their space some seconds later).

use std::fmt;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use hull_sys::btrfs::{self, LoopImage};
use serde::Serialize;

use super::btrfs::BtrfsSnapshotter;
use super::overlay::OverlaySnapshotter;
use super::{SnapshotError, Snapshotter, io_error};

/// Which backend to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// The best one the host allows (see the module documentation).
    Auto,
    Overlay,
    Btrfs,
}

impl BackendChoice {
    /// The environment variable [`open_auto`] reads.
    pub const ENV: &'static str = "HULL_SNAPSHOT_BACKEND";

    /// `auto` (or empty), `overlay` or `btrfs`.
    pub fn parse(s: &str) -> Result<Self, SnapshotError> {
        match s.trim() {
            "" | "auto" => Ok(Self::Auto),
            "overlay" => Ok(Self::Overlay),
            "btrfs" => Ok(Self::Btrfs),
            other => Err(SnapshotError::InvalidArgument(format!(
                "snapshot backend {:?} is not one of auto, overlay, btrfs",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }

    /// From [`Self::ENV`]; `Auto` when it is unset.
    pub fn from_env() -> Result<Self, SnapshotError> {
        match std::env::var(Self::ENV) {
            Ok(v) => Self::parse(&v)
                .map_err(|e| SnapshotError::InvalidArgument(format!("{}: {e}", Self::ENV))),
            Err(std::env::VarError::NotPresent) => Ok(Self::Auto),
            Err(std::env::VarError::NotUnicode(_)) => Err(SnapshotError::InvalidArgument(format!(
                "{} is not UTF-8",
                Self::ENV
            ))),
        }
    }
}

/// What [`open_auto`] opened, for `hull info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreInfo {
    /// `"btrfs"` or `"overlay"`.
    pub backend: &'static str,
    /// The store's root directory.
    pub root: PathBuf,
    /// The loop-backed image holding a btrfs store, when there is one.
    pub image: Option<ImageInfo>,
    /// Why this backend, in words.
    pub reason: String,
}

/// A loop-backed btrfs image holding the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The sparse image file.
    pub path: PathBuf,
    /// Its size (apparent; the file is sparse), fixed when it was made.
    pub size_bytes: u64,
    /// Where it is mounted (the store's root).
    pub mountpoint: PathBuf,
    /// The loop device, e.g. `/dev/loop3`.
    pub device: PathBuf,
    /// This open formatted it (a new, empty store).
    pub formatted: bool,
}

impl StoreInfo {
    /// Unmount the loop-backed image, if any, freeing its loop device. Drop
    /// the store first (an open store keeps the filesystem busy).
    pub fn release(&self) -> Result<(), SnapshotError> {
        match &self.image {
            Some(img) => Ok(btrfs::unmount(&img.mountpoint)?),
            None => Ok(()),
        }
    }
}

impl fmt::Display for StoreInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.backend, self.root.display())?;
        if let Some(img) = &self.image {
            let size = if img.size_bytes >= 1 << 30 {
                format!("{:.1} GiB", img.size_bytes as f64 / (1u64 << 30) as f64)
            } else {
                format!("{} MiB", img.size_bytes >> 20)
            };
            write!(
                f,
                " (a loop-backed btrfs image: {}, {size} sparse, on {})",
                img.path.display(),
                img.device.display()
            )?;
        }
        write!(f, "; {}", self.reason)
    }
}

/// Bytes available to unprivileged users on `dir`'s filesystem (0 when it
/// can't be told).
fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .unwrap_or(0)
}

/// A size for a new loop-backed image under `dir` when none is configured:
/// half the free space of `dir`'s filesystem, between 1 and 64 GiB, in
/// whole GiB. (A sparse image larger than the free space fails with I/O
/// errors, not `ENOSPC`, once the disk below it fills.)
pub fn default_image_bytes(dir: &Path) -> u64 {
    const GIB: u64 = 1 << 30;
    (free_bytes(dir) / 2).clamp(GIB, 64 * GIB) / GIB * GIB
}

/// Open the store under `root` with the backend [`BackendChoice::ENV`]
/// asks for (`auto` when unset); `image_size` is the size of a loop image
/// made now. See the module documentation.
pub fn open_auto(
    root: &Path,
    image_size: u64,
) -> Result<(Box<dyn Snapshotter>, StoreInfo), SnapshotError> {
    open_with(root, image_size, BackendChoice::from_env()?)
}

/// [`open_auto`] with the choice given (from configuration, say).
pub fn open_with(
    root: &Path,
    image_size: u64,
    choice: BackendChoice,
) -> Result<(Box<dyn Snapshotter>, StoreInfo), SnapshotError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io_error("creating", root))?;
    let root = root.canonicalize().map_err(io_error("resolving", root))?;
    let l = Layout::new(&root);
    let opened = match choice {
        BackendChoice::Overlay => {
            l.overlay("forced by configuration (snapshot backend overlay)".to_string())
        }
        BackendChoice::Btrfs => {
            return l.btrfs(image_size).map_err(|e| match e {
                Fallback::Image(e) => SnapshotError::Unavailable(format!(
                    "the btrfs snapshot backend is forced by configuration \
                     (--snapshot-backend, {} or [snapshots] backend), but {} is on {} and a \
                     loop-backed btrfs image could not be made: {}",
                    BackendChoice::ENV,
                    root.display(),
                    fs_of(&root),
                    chain(&e)
                )),
                Fallback::Other(e) => e,
            });
        }
        BackendChoice::Auto => l.auto(image_size),
    };
    Ok(opened?)
}

/// The directories under a state directory.
struct Layout {
    root: PathBuf,
    btrfs: PathBuf,
    image: PathBuf,
    overlay: PathBuf,
}

/// Why opening a btrfs store failed: making or mounting its image (auto
/// falls back to overlay) or anything else (it doesn't).
#[derive(Debug)]
enum Fallback {
    Image(SnapshotError),
    Other(SnapshotError),
}

impl From<Fallback> for SnapshotError {
    fn from(f: Fallback) -> Self {
        match f {
            Fallback::Image(e) | Fallback::Other(e) => e,
        }
    }
}

impl From<SnapshotError> for Fallback {
    fn from(e: SnapshotError) -> Self {
        Fallback::Other(e)
    }
}

type Opened = (Box<dyn Snapshotter>, StoreInfo);

impl Layout {
    fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
            btrfs: root.join("btrfs"),
            image: root.join("btrfs.img"),
            overlay: root.join("overlay"),
        }
    }

    fn auto(&self, image_size: u64) -> Result<Opened, Fallback> {
        let root = &self.root;
        if self.image.exists() || self.btrfs.join("metadata.db").exists() {
            return self.btrfs(image_size);
        }
        if self.overlay.join("metadata.db").exists() {
            return self.overlay("an overlay store already exists here".into());
        }
        if btrfs::is_btrfs(root).map_err(io_error("inspecting", root))? {
            return self.btrfs(image_size);
        }
        if let Some(missing) = loop_image_missing() {
            return self.overlay(format!(
                "{} is on {} and a loop-backed btrfs image can't be made: {missing}",
                root.display(),
                fs_of(root)
            ));
        }
        // A sparse image the disk can't hold fails with I/O errors once the
        // disk fills, not ENOSPC: only make one with room for it.
        let free = free_bytes(root);
        if free < image_size {
            return self.overlay(format!(
                "{} is on {} with {} MiB free, less than a {} MiB loop-backed btrfs image needs",
                root.display(),
                fs_of(root),
                free >> 20,
                image_size >> 20
            ));
        }
        match self.btrfs(image_size) {
            Err(Fallback::Image(e)) => {
                let why = format!(
                    "{} is on {} and making a loop-backed btrfs image failed: {}",
                    root.display(),
                    fs_of(root),
                    chain(&e)
                );
                tracing::warn!(reason = %why, "using the overlay snapshot backend");
                self.overlay(why)
            }
            r => r,
        }
    }

    fn overlay(&self, reason: String) -> Result<Opened, Fallback> {
        let s = OverlaySnapshotter::open(&self.overlay)?;
        let info = StoreInfo {
            backend: "overlay",
            root: s.root().to_path_buf(),
            image: None,
            reason,
        };
        Ok((Box::new(s), info))
    }

    fn btrfs(&self, image_size: u64) -> Result<Opened, Fallback> {
        if btrfs::is_btrfs(&self.root).map_err(io_error("inspecting", &self.root))? {
            let s = BtrfsSnapshotter::open(&self.btrfs)?;
            let info = StoreInfo {
                backend: "btrfs",
                root: s.root().to_path_buf(),
                image: None,
                reason: format!("{} is on btrfs", self.root.display()),
            };
            return Ok((Box::new(s), info));
        }
        let made_image = !self.image.exists();
        let made_mountpoint = !self.btrfs.exists();
        let undo = || {
            if made_image {
                let _ = fs::remove_file(&self.image);
            }
            if made_mountpoint {
                let _ = fs::remove_dir(&self.btrfs);
            }
        };
        let li = match LoopImage::ensure(&self.image, image_size, &self.btrfs) {
            Ok(li) => li,
            Err(e) => {
                undo();
                return Err(Fallback::Image(e.into()));
            }
        };
        let s = match BtrfsSnapshotter::open(li.mountpoint()) {
            Ok(s) => s,
            Err(e) => {
                if !li.already_mounted() {
                    let _ = li.unmount();
                    undo();
                }
                return Err(Fallback::Other(e));
            }
        };
        let size_bytes = fs::metadata(&self.image).map(|m| m.len()).unwrap_or(0);
        let info = StoreInfo {
            backend: "btrfs",
            root: s.root().to_path_buf(),
            image: Some(ImageInfo {
                path: self.image.clone(),
                size_bytes,
                mountpoint: li.mountpoint().to_path_buf(),
                device: li.device().to_path_buf(),
                formatted: li.formatted(),
            }),
            reason: format!(
                "{} is on {}, so the store is in a loop-backed btrfs image",
                self.root.display(),
                fs_of(&self.root)
            ),
        };
        Ok((Box::new(s), info))
    }
}

/// What a loop-backed btrfs image needs that this host lacks, if anything.
fn loop_image_missing() -> Option<String> {
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing (no loop device support)".into());
    }
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = in_path
        .iter()
        .map(PathBuf::as_path)
        .chain([Path::new("/usr/sbin"), Path::new("/sbin")])
        .any(|d| d.join("mkfs.btrfs").is_file());
    (!found).then(|| "mkfs.btrfs is not installed (Debian package btrfs-progs)".into())
}

fn fs_of(path: &Path) -> String {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => super::btrfs::fs_name(st.filesystem_type()),
        Err(_) => "an unknown filesystem".into(),
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!(BackendChoice::parse("").unwrap(), BackendChoice::Auto);
        assert_eq!(BackendChoice::parse("auto").unwrap(), BackendChoice::Auto);
        assert_eq!(
            BackendChoice::parse("overlay").unwrap(),
            BackendChoice::Overlay
        );
        assert_eq!(
            BackendChoice::parse(" btrfs\n").unwrap(),
            BackendChoice::Btrfs
        );
        let e = BackendChoice::parse("zfs").unwrap_err();
        assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("auto, overlay, btrfs"), "{e}");
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let inner = std::io::Error::other("disk on fire");
        let e = SnapshotError::Io {
            what: "writing",
            path: "/x".into(),
            source: inner,
        };
        assert_eq!(chain(&e), "writing /x: disk on fire");
    }
}
