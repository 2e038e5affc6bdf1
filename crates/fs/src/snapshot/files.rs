//! Tree work shared by the snapshot backends: copying an overlayfs upper
//! directory as a layer of its own (the `overlay` backend's
//! [`copy_layer`](super::overlay::copy_layer)) or applying it onto a whole
//! tree ([`apply_upper`], the `btrfs` backend's `commit_from_dir`),
//! deleting trees, and measuring a snapshot's own files ([`tree_usage`]).
//!
//! Every walk goes from directory handles with `openat(O_NOFOLLOW)`, so a
//! hostile tree cannot make it follow a symlink out of itself.
//!
//! Limits: trees nested deeper than [`MAX_DEPTH`] directories are refused;
//! hardlinks are made by path, so a hardlinked file deeper than `PATH_MAX`
//! is an error.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::{SnapshotError, Usage, io_error};

/// Deepest directory nesting the copies, deletions and usage walks go to.
pub const MAX_DEPTH: usize = 512;

/// The opaque-directory marker the store writes (its overlays, like the
/// sandboxes', are mounted with `userxattr`).
const USER_OPAQUE: &[u8] = b"user.overlay.opaque";
const TRUSTED_OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// Prefixes of overlayfs's own xattrs, in both namespaces it uses.
const OVERLAY_PREFIXES: [&[u8]; 2] = [b"user.overlay.", b"trusted.overlay."];

/// A name for a staging entry no other call in this process uses.
pub(super) fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Allocated bytes and distinct inodes of the tree at `root`, its root
/// directory included.
///
/// With `base` (the tree `root` was snapshotted from), an entry that is the
/// same inode as the entry at the same path under `base` and unchanged
/// since (same type and change time) is not counted: a btrfs snapshot
/// shares it with its parent. What is left is what the tree has of its own:
/// new and changed files, counted whole, as overlayfs would have copied
/// them up. Directories are walked either way.
pub(super) fn tree_usage(root: &Path, base: Option<&Path>) -> io::Result<Usage> {
    let fd = rustix::fs::open(root, OPEN_DIR, Mode::empty())?;
    let base = match base {
        Some(b) => Some(rustix::fs::open(b, OPEN_DIR, Mode::empty())?),
        None => None,
    };
    let st = rustix::fs::fstat(&fd)?;
    let mut u = Usage {
        bytes: st.st_blocks as u64 * 512,
        inodes: 1,
    };
    let mut linked = HashSet::new();
    usage_dir(&fd, base.as_ref(), 0, &mut linked, &mut u)?;
    Ok(u)
}

fn unchanged(st: &rustix::fs::Stat, base: &rustix::fs::Stat) -> bool {
    st.st_ino == base.st_ino
        && FileType::from_raw_mode(st.st_mode) == FileType::from_raw_mode(base.st_mode)
        && st.st_ctime == base.st_ctime
        && st.st_ctime_nsec == base.st_ctime_nsec
}

fn usage_dir(
    dir: &OwnedFd,
    base: Option<&OwnedFd>,
    depth: usize,
    linked: &mut HashSet<(u64, u64)>,
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
        let bst = base.and_then(|b| rustix::fs::statat(b, &name, AtFlags::SYMLINK_NOFOLLOW).ok());
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        let own = !bst.as_ref().is_some_and(|b| unchanged(&st, b));
        if own && (is_dir || st.st_nlink <= 1 || linked.insert((st.st_dev, st.st_ino))) {
            u.bytes += st.st_blocks as u64 * 512;
            u.inodes += 1;
        }
        if is_dir {
            let sub = match rustix::fs::openat(dir, &name, OPEN_DIR, Mode::empty()) {
                Ok(sub) => sub,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(e.into()),
            };
            let bsub = match (base, &bst) {
                (Some(b), Some(bst))
                    if FileType::from_raw_mode(bst.st_mode) == FileType::Directory =>
                {
                    rustix::fs::openat(b, &name, OPEN_DIR, Mode::empty()).ok()
                }
                _ => None,
            };
            usage_dir(&sub, bsub.as_ref(), depth + 1, linked, u)?;
        }
    }
    Ok(())
}

/// The entries of an open directory, without `.` and `..`.
pub(crate) fn dir_names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
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

/// Delete `name` in the directory `dir` (`path` names it in messages) and,
/// if it is a directory, everything under it, never following a symlink.
fn remove_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
    depth: usize,
) -> Result<(), SnapshotError> {
    let err = |what| move |e: Errno| io_error(what, path)(e.into());
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(err("deleting")(e)),
    }
    if depth >= MAX_DEPTH {
        return Err(SnapshotError::InvalidArgument(format!(
            "{} is nested more than {MAX_DEPTH} directories deep",
            path.display()
        )));
    }
    let sub = rustix::fs::openat(dir, name, OPEN_DIR, Mode::empty()).map_err(err("opening"))?;
    for child in dir_names(&sub).map_err(io_error("listing", path))? {
        let p = path.join(OsStr::from_bytes(child.to_bytes()));
        remove_at(sub.as_fd(), &child, &p, depth + 1)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err("deleting")(e)),
    }
}

/// Apply the overlayfs upper directory `upper` onto `dst`, a writable copy
/// of the parent's whole tree, so that `dst` becomes what the sandbox saw
/// (over the parent) — a whole tree again, not a layer:
///
/// - files, symlinks, FIFOs and sockets replace what `dst` has at their
///   name (a directory there is deleted with its contents), with owners,
///   modes, times, xattrs and hardlinks within the upper (as
///   [`copy_layer`](super::overlay::copy_layer) keeps them);
/// - a directory is merged into `dst`'s directory of that name (its owner,
///   mode, times and xattrs become the upper's); an opaque one (xattr
///   `user.overlay.opaque` or `trusted.overlay.opaque` = `y`) replaces it;
/// - a whiteout (character device 0/0) deletes the name from `dst`.
///
/// Layers below the store (the template's read-only directories) may hold
/// the same names. So a whiteout stays in `dst` (in place of what `dst`
/// had there, if anything; with `below`, only where a layer below has the
/// name), and a directory that must hide what lies below
/// keeps (or gets) the `user.overlay.opaque` marker: an opaque directory,
/// or one replacing a non-directory or a whiteout. Neither is needed, or
/// written, under a directory that is already opaque.
///
/// overlayfs's own xattrs (`user.overlay.*`, `trusted.overlay.*`: origin,
/// impure, ...) are not copied, escaped ones (`*.overlay.overlay.x`, Linux
/// 6.7+) are unescaped; uppers of overlays mounted with `redirect_dir` or
/// `metacopy` are refused. `upper` is read, never changed.
///
/// With `below` (the layer directories that will lie under the tree when it
/// is stacked, nearest first), a whiteout is kept only where one of them
/// has the name: overlayfs lists a whiteout as a name that can't be
/// opened when its directory exists in no other layer.
pub(super) fn apply_upper(
    upper: &Path,
    dst: &Path,
    below: Option<&[PathBuf]>,
) -> Result<(), SnapshotError> {
    let mut c = Copier::new(Xattrs::Merged);
    if let Some(below) = below {
        let mut fds = Vec::with_capacity(below.len());
        for b in below {
            fds.push(
                rustix::fs::open(b, OPEN_DIR, Mode::empty())
                    .map_err(|e| io_error("opening the layer below", b)(e.into()))?,
            );
        }
        c.below = Some(Below {
            root: dst.to_path_buf(),
            dirs: fds,
        });
    }
    let sfd = rustix::fs::open(upper, OPEN_DIR, Mode::empty())
        .map_err(|e| io_error("opening the directory to copy", upper)(e.into()))?;
    let st = rustix::fs::fstat(&sfd).map_err(|e| io_error("reading", upper)(e.into()))?;
    let dfd = rustix::fs::open(dst, OPEN_DIR, Mode::empty())
        .map_err(|e| io_error("opening", dst)(e.into()))?;
    c.apply_dir(&sfd, &dfd, upper, dst, 0, false)?;
    c.finish(&sfd, &dfd, &st, true, dst)
}

/// What a copy does with overlayfs's own extended attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Xattrs {
    /// Keep every xattr (the copy is an overlayfs layer); with
    /// `user_opaque`, also mark `trusted.overlay.opaque` directories
    /// `user.overlay.opaque` (the store mounts with `userxattr`).
    Layer { user_opaque: bool },
    /// The copy is merged into a whole tree (see [`apply_upper`]).
    Merged,
}

/// What a whole tree has at a name the upper also has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Old {
    /// A directory, with or without the opaque marker.
    Dir {
        opaque: bool,
    },
    Whiteout,
    Other,
}

fn is_whiteout(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// How [`Xattrs::Merged`] copies xattr `name`: `None` for overlayfs's own
/// (dropped), the unescaped name for escaped ones, else `name`.
fn merged_name(name: &[u8]) -> Option<Cow<'_, [u8]>> {
    for prefix in OVERLAY_PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rest
                .strip_prefix(b"overlay.".as_slice())
                .map(|inner| Cow::Owned([prefix, inner].concat()));
        }
    }
    Some(Cow::Borrowed(name))
}

/// Is `name` one of overlayfs's own xattrs (not an escaped user one)?
fn is_overlay_private(name: &[u8]) -> bool {
    OVERLAY_PREFIXES.iter().any(|p| {
        name.strip_prefix(*p)
            .is_some_and(|rest| !rest.starts_with(b"overlay."))
    })
}

pub(super) struct Copier {
    /// (dev, ino) of multiply-linked sources -> the first copy's path.
    links: HashMap<(u64, u64), PathBuf>,
    xattrs: Xattrs,
    buf: Vec<u8>,
    /// [`apply_upper`]'s layers below the tree.
    below: Option<Below>,
}

/// The layers a merged tree will be stacked over.
pub(super) struct Below {
    /// The tree's root (paths under it are looked up below).
    root: PathBuf,
    dirs: Vec<OwnedFd>,
}

impl Below {
    /// Does a layer below have an entry at `path` (a path under the tree's
    /// root), reached without following symlinks?
    fn has(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return true;
        };
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return true;
        };
        let how = rustix::fs::ResolveFlags::BENEATH
            | rustix::fs::ResolveFlags::NO_SYMLINKS
            | rustix::fs::ResolveFlags::NO_MAGICLINKS;
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        self.dirs.iter().any(|d| {
            match rustix::fs::openat2(d, parent, OPEN_DIR | OFlags::PATH, Mode::empty(), how) {
                Ok(p) => rustix::fs::statat(&p, name, AtFlags::SYMLINK_NOFOLLOW).is_ok(),
                // Unsure: keep the whiteout (harmless where the directory
                // is merged).
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => false,
                Err(_) => true,
            }
        })
    }
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

    fn remove(self, name: &[u8]) -> io::Result<()> {
        match self {
            Node::Fd(fd) => rustix::fs::fremovexattr(fd, name),
            Node::At(d, n) => rustix::fs::lremovexattr(Self::proc_path(d, n), name),
        }
        .map_err(Into::into)
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
    pub(super) fn new(xattrs: Xattrs) -> Self {
        Self {
            links: HashMap::new(),
            xattrs,
            buf: Vec::new(),
            below: None,
        }
    }

    /// Copy the directory `src` to `dst`, which must not exist.
    pub(super) fn copy(&mut self, src: &Path, dst: &Path) -> Result<(), SnapshotError> {
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
        self.finish(&sfd, &dfd, &st, true, dst)
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
        check_depth(spath, depth)?;
        let names = dir_names(sdir).map_err(io_error("listing", spath))?;
        for name in names {
            let os = OsStr::from_bytes(name.to_bytes());
            let (sp, dp) = (spath.join(os), dpath.join(os));
            let st = rustix::fs::statat(sdir, &*name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_error("reading", &sp)(e.into()))?;
            self.copy_entry(sdir, &name, &st, ddir, &sp, &dp, depth)?;
        }
        Ok(())
    }

    /// Apply the entries of the upper directory `sdir` onto the tree's
    /// directory `ddir` (see [`apply_upper`]). `covered`: an enclosing
    /// directory of the tree is opaque, so nothing below the store shows
    /// through here.
    fn apply_dir(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        spath: &Path,
        dpath: &Path,
        depth: usize,
        covered: bool,
    ) -> Result<(), SnapshotError> {
        check_depth(spath, depth)?;
        let names = dir_names(sdir).map_err(io_error("listing", spath))?;
        for name in names {
            let os = OsStr::from_bytes(name.to_bytes());
            let (sp, dp) = (spath.join(os), dpath.join(os));
            let sp_ref: &Path = &sp;
            let rerr = |what| move |e: Errno| io_error(what, sp_ref)(e.into());
            let st = rustix::fs::statat(sdir, &*name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(rerr("reading"))?;
            let old = match rustix::fs::statat(ddir, &*name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(o) if FileType::from_raw_mode(o.st_mode) == FileType::Directory => {
                    let marker = Node::At(ddir.as_fd(), &name)
                        .get(USER_OPAQUE)
                        .map_err(io_error("reading the extended attributes of", &dp))?;
                    Some(Old::Dir {
                        opaque: marker.as_deref() == Some(b"y"),
                    })
                }
                Ok(o) if is_whiteout(&o) => Some(Old::Whiteout),
                Ok(_) => Some(Old::Other),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(io_error("reading", &dp)(e.into())),
            };
            if is_whiteout(&st) {
                // Outside an opaque directory, keep the whiteout even where
                // the tree had the name: a layer below the store (the
                // template's) may have it too, and must stay hidden.
                let needed = !covered && self.below.as_ref().is_none_or(|b| b.has(&dp));
                match old {
                    Some(Old::Whiteout) if needed => {}
                    Some(_) => {
                        remove_at(ddir.as_fd(), &name, &dp, depth)?;
                        if needed {
                            self.copy_entry(sdir, &name, &st, ddir, &sp, &dp, depth)?;
                        }
                    }
                    None if needed => self.copy_entry(sdir, &name, &st, ddir, &sp, &dp, depth)?,
                    None => {}
                }
                continue;
            }
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                if old.is_some() {
                    remove_at(ddir.as_fd(), &name, &dp, depth)?;
                }
                self.copy_entry(sdir, &name, &st, ddir, &sp, &dp, depth)?;
                continue;
            }
            let sub = rustix::fs::openat(sdir, &*name, OPEN_DIR, Mode::empty())
                .map_err(rerr("opening"))?;
            let sst = rustix::fs::fstat(&sub).map_err(rerr("reading"))?;
            if !same_inode(&st, &sst) {
                return Err(changed(&sp));
            }
            let opaque = is_opaque(Node::Fd(sub.as_fd()))
                .map_err(io_error("reading the extended attributes of", &sp))?;
            // Merge into the old directory, or start afresh; and whether
            // the result must hide what lies below the store.
            let (merge, mark) = match (old, opaque) {
                (Some(Old::Dir { opaque: was }), false) => (Some(was), false),
                // Replacing a directory: the new one must hide what
                // layers below the store have at its path too.
                (Some(Old::Dir { .. }), true) => (None, true),
                (Some(Old::Whiteout | Old::Other), _) => (None, true),
                (None, opaque) => (None, opaque),
            };
            let mark = mark && !covered;
            if merge.is_none() {
                if old.is_some() {
                    remove_at(ddir.as_fd(), &name, &dp, depth)?;
                }
                rustix::fs::mkdirat(ddir, &*name, Mode::from_raw_mode(0o700))
                    .map_err(|e| io_error("creating", &dp)(e.into()))?;
            }
            let dsub = rustix::fs::openat(ddir, &*name, OPEN_DIR, Mode::empty())
                .map_err(|e| io_error("opening", &dp)(e.into()))?;
            if mark {
                Node::Fd(dsub.as_fd())
                    .set(USER_OPAQUE, b"y")
                    .map_err(io_error("marking opaque", &dp))?;
            }
            let covered_below = covered || mark || merge == Some(true);
            self.apply_dir(&sub, &dsub, &sp, &dp, depth + 1, covered_below)?;
            self.finish(&sub, &dsub, &sst, true, &dp)?;
        }
        Ok(())
    }

    /// Copy one entry `name` of `sdir` (`st`: its `lstat`) into `ddir`,
    /// where nothing has that name.
    #[allow(clippy::too_many_arguments)]
    fn copy_entry(
        &mut self,
        sdir: &OwnedFd,
        name: &CStr,
        st: &rustix::fs::Stat,
        ddir: &OwnedFd,
        sp: &Path,
        dp: &Path,
        depth: usize,
    ) -> Result<(), SnapshotError> {
        let rerr = |what| move |e: Errno| io_error(what, sp)(e.into());
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::Directory && st.st_nlink > 1 {
            if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                rustix::fs::linkat(rustix::fs::CWD, first, ddir, name, AtFlags::empty())
                    .map_err(|e| io_error("hardlinking", dp)(e.into()))?;
                return Ok(());
            }
            self.links.insert((st.st_dev, st.st_ino), dp.to_path_buf());
        }
        match ft {
            FileType::Directory => {
                let sub = rustix::fs::openat(sdir, name, OPEN_DIR, Mode::empty())
                    .map_err(rerr("opening"))?;
                let sst = rustix::fs::fstat(&sub).map_err(rerr("reading"))?;
                if !same_inode(st, &sst) {
                    return Err(changed(sp));
                }
                rustix::fs::mkdirat(ddir, name, Mode::from_raw_mode(0o700))
                    .map_err(|e| io_error("creating", dp)(e.into()))?;
                let dsub = rustix::fs::openat(ddir, name, OPEN_DIR, Mode::empty())
                    .map_err(|e| io_error("opening", dp)(e.into()))?;
                self.copy_dir(&sub, &dsub, sp, dp, depth + 1)?;
                self.finish(&sub, &dsub, &sst, true, dp)?;
            }
            FileType::RegularFile => {
                let src = rustix::fs::openat(
                    sdir,
                    name,
                    OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::NONBLOCK
                        | OFlags::NOCTTY
                        | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(rerr("opening"))?;
                let sst = rustix::fs::fstat(&src).map_err(rerr("reading"))?;
                if !same_inode(st, &sst) || FileType::from_raw_mode(sst.st_mode) != ft {
                    return Err(changed(sp));
                }
                let dst = rustix::fs::openat(
                    ddir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_error("creating", dp)(e.into()))?;
                self.copy_data(&src, &dst, sst.st_size as u64)
                    .map_err(io_error("copying", sp))?;
                self.finish(&src, &dst, &sst, false, dp)?;
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(sdir, name, Vec::new()).map_err(rerr("reading"))?;
                rustix::fs::symlinkat(&*target, ddir, name)
                    .map_err(|e| io_error("creating", dp)(e.into()))?;
                self.finish_at(sdir, name, st, ddir, dp)?;
            }
            FileType::CharacterDevice | FileType::Fifo | FileType::Socket => {
                if ft == FileType::CharacterDevice && st.st_rdev != 0 {
                    return Err(device(sp));
                }
                rustix::fs::mknodat(ddir, name, ft, Mode::from_raw_mode(0o600), st.st_rdev)
                    .map_err(|e| io_error("creating", dp)(e.into()))?;
                self.finish_at(sdir, name, st, ddir, dp)?;
            }
            FileType::BlockDevice | FileType::Unknown => return Err(device(sp)),
        }
        Ok(())
    }

    /// Owner, mode, xattrs, then times (in that order: chown clears
    /// setuid bits and file capabilities) of an opened copy.
    fn finish(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        st: &rustix::fs::Stat,
        is_dir: bool,
        dpath: &Path,
    ) -> Result<(), SnapshotError> {
        let err = |what| move |e: Errno| io_error(what, dpath)(e.into());
        let (uid, gid) = owner(st);
        rustix::fs::fchown(dst, uid, gid).map_err(err("setting the owner of"))?;
        rustix::fs::fchmod(dst, perms(st)).map_err(err("setting the mode of"))?;
        self.copy_xattrs(Node::Fd(src.as_fd()), Node::Fd(dst.as_fd()), is_dir, dpath)?;
        rustix::fs::futimens(dst, &timestamps(st)).map_err(err("setting the times of"))
    }

    /// [`Self::finish`] for nodes that can't be opened (symlinks, FIFOs,
    /// sockets, whiteouts): by `name` in their directories.
    fn finish_at(
        &mut self,
        sdir: &OwnedFd,
        name: &CStr,
        st: &rustix::fs::Stat,
        ddir: &OwnedFd,
        dpath: &Path,
    ) -> Result<(), SnapshotError> {
        let err = |what| move |e: Errno| io_error(what, dpath)(e.into());
        let (uid, gid) = owner(st);
        rustix::fs::chownat(ddir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err("setting the owner of"))?;
        let symlink = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
        if !symlink {
            rustix::fs::chmodat(ddir, name, perms(st), AtFlags::empty())
                .map_err(err("setting the mode of"))?;
        }
        self.copy_xattrs(
            Node::At(sdir.as_fd(), name),
            Node::At(ddir.as_fd(), name),
            false,
            dpath,
        )?;
        rustix::fs::utimensat(ddir, name, &timestamps(st), AtFlags::SYMLINK_NOFOLLOW)
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
        let mut kept: HashSet<Vec<u8>> = HashSet::new();
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let Some(value) = src
                .get(name)
                .map_err(io_error("reading the extended attributes of", dpath))?
            else {
                continue;
            };
            trusted_opaque |= name == TRUSTED_OPAQUE && value == b"y";
            user_opaque |= name == USER_OPAQUE;
            let name = match self.xattrs {
                Xattrs::Layer { .. } => Cow::Borrowed(name),
                Xattrs::Merged => {
                    if let Some(rest) = OVERLAY_PREFIXES.iter().find_map(|p| name.strip_prefix(*p))
                        && matches!(rest, b"redirect" | b"metacopy")
                    {
                        return Err(SnapshotError::InvalidArgument(format!(
                            "{} has overlayfs's {:?} attribute: uppers of overlays mounted \
                             with redirect_dir or metacopy are not supported",
                            dpath.display(),
                            String::from_utf8_lossy(name)
                        )));
                    }
                    match merged_name(name) {
                        Some(n) => n,
                        None => continue,
                    }
                }
            };
            dst.set(&name, &value).map_err(|e| SnapshotError::Io {
                what: "setting an extended attribute on",
                path: format!("{} ({})", dpath.display(), String::from_utf8_lossy(&name)),
                source: e,
            })?;
            if self.xattrs == Xattrs::Merged && is_dir {
                kept.insert(name.into_owned());
            }
        }
        match self.xattrs {
            Xattrs::Layer { user_opaque: mark } => {
                if mark && is_dir && trusted_opaque && !user_opaque {
                    dst.set(USER_OPAQUE, b"y")
                        .map_err(io_error("marking opaque", dpath))?;
                }
            }
            // A merged directory's xattrs become the upper's: drop the
            // others, but keep the tree's own overlayfs markers.
            Xattrs::Merged if is_dir => {
                let old = dst
                    .list()
                    .map_err(io_error("listing the extended attributes of", dpath))?;
                for name in old.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                    if !kept.contains(name) && !is_overlay_private(name) {
                        dst.remove(name).map_err(|e| SnapshotError::Io {
                            what: "removing an extended attribute from",
                            path: format!(
                                "{} ({})",
                                dpath.display(),
                                String::from_utf8_lossy(name)
                            ),
                            source: e,
                        })?;
                    }
                }
            }
            Xattrs::Merged => {}
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

fn check_depth(path: &Path, depth: usize) -> Result<(), SnapshotError> {
    if depth >= MAX_DEPTH {
        return Err(SnapshotError::InvalidArgument(format!(
            "{} is nested more than {MAX_DEPTH} directories deep",
            path.display()
        )));
    }
    Ok(())
}

/// Does this upper directory carry overlayfs's opaque marker (in either
/// namespace)?
fn is_opaque(node: Node<'_>) -> io::Result<bool> {
    for name in [USER_OPAQUE, TRUSTED_OPAQUE] {
        if node.get(name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
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
    use super::*;

    #[test]
    fn merged_trees_drop_overlayfs_xattrs_and_unescape_users() {
        let merged =
            |n: &str| merged_name(n.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap());
        assert_eq!(merged("user.note").as_deref(), Some("user.note"));
        assert_eq!(
            merged("security.capability").as_deref(),
            Some("security.capability")
        );
        assert_eq!(merged("trusted.other").as_deref(), Some("trusted.other"));
        for private in [
            "user.overlay.opaque",
            "user.overlay.origin",
            "user.overlay.impure",
            "trusted.overlay.opaque",
            "trusted.overlay.redirect",
        ] {
            assert_eq!(merged(private), None, "{private}");
            assert!(is_overlay_private(private.as_bytes()), "{private}");
        }
        assert_eq!(
            merged("user.overlay.overlay.note").as_deref(),
            Some("user.overlay.note")
        );
        assert_eq!(
            merged("trusted.overlay.overlay.x").as_deref(),
            Some("trusted.overlay.x")
        );
        assert!(!is_overlay_private(b"user.overlay.overlay.note"));
        assert!(!is_overlay_private(b"user.note"));
    }

    #[test]
    fn usage_skips_what_the_base_shares() {
        let dir = tempfile::tempdir().unwrap();
        let (base, tree) = (dir.path().join("base"), dir.path().join("tree"));
        fs::create_dir_all(base.join("d")).unwrap();
        fs::write(base.join("d/same"), vec![1u8; 64 * 1024]).unwrap();
        fs::write(base.join("changed"), b"old").unwrap();
        // A "snapshot": the same inodes, reached through a second name.
        fs::create_dir(&tree).unwrap();
        fs::create_dir(tree.join("d")).unwrap();
        fs::hard_link(base.join("d/same"), tree.join("d/same")).unwrap();
        fs::write(tree.join("changed"), vec![2u8; 128 * 1024]).unwrap();
        let own = tree_usage(&tree, Some(&base)).unwrap();
        let all = tree_usage(&tree, None).unwrap();
        // root, d (a different inode here) and changed; not d/same.
        assert_eq!(own.inodes, 3, "{own:?}");
        assert_eq!(all.inodes, 4, "{all:?}");
        assert!(
            own.bytes >= 128 * 1024 && own.bytes < all.bytes,
            "{own:?} {all:?}"
        );
    }
}
