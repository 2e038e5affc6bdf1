//! Making a layer's entries beneath a destination directory (see the
//! module documentation of [`super`] for the rules).
//!
//! Parents are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` from the destination's
//! handle, missing ones made one component at a time (like docker, as
//! directories 0755 owned by the mapped root); final names are made with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` or `*at` calls that don't follow them, so
//! nothing is ever written through a symlink or outside the destination.
//!
//! For opaque markers in [`Whiteouts::Flatten`] mode, the applier remembers
//! every name the layer made, as (parent directory inode, keyed 128-bit
//! hash of the name): 24 bytes an entry, so memory stays bounded by
//! [`Limits::max_entries`] whatever the paths' lengths.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::input::{Budget, decompress};
use super::reader::{Header, Kind, TarReader};
use super::{ArchiveError, IdMap, Limits, Whiteouts, io_error, show};

/// What applying a layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries read (extension headers excepted).
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub fifos: u64,
    /// `.wh.NAME` entries.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries.
    pub opaque_dirs: u64,
    /// Parent directories the layer lacked, made 0755 and root-owned.
    pub implicit_dirs: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Extended attributes dropped: not `user.*`, or on a symlink or FIFO
    /// (which can't carry `user.*`), or refused by the filesystem.
    pub xattrs_dropped: u64,
    /// Owners outside the id map, made `nobody`.
    pub ids_clamped: u64,
    /// aufs bookkeeping entries (`.wh..wh.*`) skipped.
    pub skipped: u64,
}

const OPEN_DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const AUFS_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const USER_OPAQUE: &[u8] = b"user.overlay.opaque";
/// Longest xattr name and value Linux takes.
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;
const NAME_MAX: usize = 255;
/// Chunk of file data read and written at once; all-zero chunks become holes.
const CHUNK: usize = 256 << 10;
/// Input bytes between two progress reports.
const PROGRESS_STEP: u64 = 1 << 20;

/// Normalise an archive path into its components: a leading `/` and
/// empty or `.` components dropped; `..`, NUL, names over 255 bytes and
/// paths over the limits refused. `shown` names the entry in messages.
pub(crate) fn normalize<'p>(
    path: &'p [u8],
    limits: &Limits,
    shown: &str,
) -> Result<Vec<&'p [u8]>, ArchiveError> {
    let refuse = |reason: &str| ArchiveError::Entry {
        entry: shown.to_string(),
        reason: reason.to_string(),
    };
    if path.len() > limits.max_path_len {
        return Err(ArchiveError::Limit {
            entry: Some(shown.to_string()),
            field: "max_path_len",
            detail: format!(
                "a path of {} bytes (at most {} allowed)",
                path.len(),
                limits.max_path_len
            ),
        });
    }
    if path.contains(&0) {
        return Err(refuse("the path contains a NUL byte"));
    }
    let mut comps = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(refuse("the path has a '..' component: refused")),
            // `.wh.` + a name of up to 255 bytes is a whiteout's name.
            c if c.len() > NAME_MAX
                && !(c.starts_with(WHITEOUT_PREFIX)
                    && c.len() <= NAME_MAX + WHITEOUT_PREFIX.len()) =>
            {
                return Err(refuse("the path has a name longer than 255 bytes"));
            }
            c => comps.push(c),
        }
    }
    if comps.len() > limits.max_depth {
        return Err(ArchiveError::Limit {
            entry: Some(shown.to_string()),
            field: "max_depth",
            detail: format!(
                "a path {} components deep (at most {} allowed)",
                comps.len(),
                limits.max_depth
            ),
        });
    }
    Ok(comps)
}

/// Read a layer tar from `r` and apply it onto `dest`.
pub(crate) fn apply_stream(
    r: impl Read,
    dest: &Path,
    mode: Whiteouts,
    ids: IdMap,
    limits: &Limits,
    budget: &mut Budget,
    progress: &mut dyn FnMut(u64),
) -> Result<LayerStats, ArchiveError> {
    let mut app = Applier::open(dest, mode, ids, limits)?;
    let input = decompress(r, limits)?;
    tracing::debug!(dest = %dest.display(), compression = ?input.compression, ?mode, "applying a layer");
    let consumed = input.consumed.clone();
    let mut tar = TarReader::new(input.reader, limits, budget);
    let mut last = 0;
    let mut tick = || {
        let c = consumed.get();
        if c >= last + PROGRESS_STEP {
            last = c;
            progress(c);
        }
    };
    while let Some(h) = tar.next()? {
        let shown = show(&h.path);
        let comps = normalize(&h.path, limits, &shown)?;
        let link = match h.kind {
            Kind::Hardlink => Some(normalize(&h.link, limits, &shown)?),
            _ => None,
        };
        app.apply(
            &h,
            &comps,
            link.as_deref(),
            &shown,
            &mut tar.data(),
            &mut tick,
        )?;
        tick();
    }
    tar.drain()?;
    progress(consumed.get());
    Ok(app.finish())
}

/// An open directory beneath the destination.
struct Dir {
    fd: OwnedFd,
    ino: u64,
}

pub(crate) struct Applier<'l> {
    root: Dir,
    dest: PathBuf,
    mode: Whiteouts,
    ids: IdMap,
    limits: &'l Limits,
    stats: LayerStats,
    /// Names this layer made or touched: (parent inode, name hash).
    ours: HashSet<(u64, u64, u64)>,
    hashers: (RandomState, RandomState),
    /// Times of directories this layer set, by inode: set again after
    /// every change inside them.
    dir_times: HashMap<u64, (i64, u32)>,
    /// The last parent opened, by its components.
    cache: Option<(Vec<Vec<u8>>, Dir)>,
    /// A directory was deleted while handling the current entry (the
    /// cached parent may be gone).
    removed_dir: bool,
    buf: Vec<u8>,
}

/// Metadata to give a node.
struct Meta<'h> {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, u32),
    xattrs: Vec<(&'h [u8], &'h [u8])>,
}

fn timestamps((sec, nsec): (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: i64::from(nsec),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn cstr(name: &[u8]) -> CString {
    // Normalised names hold no NUL.
    CString::new(name).expect("names are checked for NUL")
}

impl<'l> Applier<'l> {
    pub fn open(
        dest: &Path,
        mode: Whiteouts,
        ids: IdMap,
        limits: &'l Limits,
    ) -> Result<Self, ArchiveError> {
        let fd = rustix::fs::open(dest, OPEN_DIR, Mode::empty())
            .map_err(|e| io_error("opening the destination", dest)(e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_error("reading", dest)(e.into()))?;
        Ok(Applier {
            root: Dir { fd, ino: st.st_ino },
            dest: dest.to_path_buf(),
            mode,
            ids,
            limits,
            stats: LayerStats::default(),
            ours: HashSet::new(),
            hashers: (RandomState::new(), RandomState::new()),
            dir_times: HashMap::new(),
            cache: None,
            removed_dir: false,
            buf: Vec::new(),
        })
    }

    pub fn finish(self) -> LayerStats {
        self.stats
    }

    fn key(&self, parent: u64, name: &[u8]) -> (u64, u64, u64) {
        (
            parent,
            self.hashers.0.hash_one(name),
            self.hashers.1.hash_one(name),
        )
    }

    fn path_of(&self, comps: &[&[u8]]) -> PathBuf {
        let mut p = self.dest.clone();
        for c in comps {
            p.push(OsStr::from_bytes(c));
        }
        p
    }

    fn refuse(shown: &str, reason: impl Into<String>) -> ArchiveError {
        ArchiveError::Entry {
            entry: shown.to_string(),
            reason: reason.into(),
        }
    }

    fn through_symlink(shown: &str, parent: &str) -> ArchiveError {
        Self::refuse(
            shown,
            format!("its parent {parent} is a symlink: writing through symlinks is refused"),
        )
    }

    fn host_id(&mut self, id: u64, what: &'static str, shown: &str) -> Result<u32, ArchiveError> {
        if let Some(h) = self.ids.to_host(id) {
            return Ok(h);
        }
        match self.ids.to_host(u64::from(IdMap::NOBODY)) {
            Some(nobody) => {
                self.stats.ids_clamped += 1;
                Ok(nobody)
            }
            None => Err(ArchiveError::IdOutOfRange {
                entry: shown.to_string(),
                what,
                id,
                range: self.ids.range,
            }),
        }
    }

    /// The entry's metadata: ids mapped, xattrs sorted into kept (`user.*`),
    /// refused (overlayfs's own) and dropped (the rest, counted).
    fn meta<'h>(&mut self, h: &'h Header, shown: &str) -> Result<Meta<'h>, ArchiveError> {
        let uid = self.host_id(h.uid, "uid", shown)?;
        let gid = self.host_id(h.gid, "gid", shown)?;
        let mut xattrs = Vec::new();
        for (name, value) in &h.xattrs {
            if name.starts_with(b"user.overlay.") || name.starts_with(b"trusted.overlay.") {
                return Err(Self::refuse(
                    shown,
                    format!(
                        "it carries overlayfs's own attribute {}: refused, it could forge overlay markers",
                        show(name)
                    ),
                ));
            }
            if name.starts_with(b"user.") && name.len() > 5 {
                if name.len() > XATTR_NAME_MAX || value.len() > XATTR_SIZE_MAX || name.contains(&0)
                {
                    return Err(Self::refuse(
                        shown,
                        format!("its attribute {} is too large or malformed", show(name)),
                    ));
                }
                xattrs.push((&name[..], &value[..]));
            } else {
                self.stats.xattrs_dropped += 1;
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode: h.mode,
            mtime: (h.mtime, h.mtime_nsec),
            xattrs,
        })
    }

    /// Apply one entry; `comps` is its normalised path relative to the
    /// destination, `link` a hardlink's normalised target, `shown` its name
    /// in messages, `data` its data, `tick` called as data is written.
    pub fn apply(
        &mut self,
        h: &Header,
        comps: &[&[u8]],
        link: Option<&[&[u8]]>,
        shown: &str,
        data: &mut dyn Read,
        tick: &mut dyn FnMut(),
    ) -> Result<(), ArchiveError> {
        self.stats.entries += 1;
        if matches!(h.kind, Kind::CharDevice | Kind::BlockDevice) {
            return Err(Self::refuse(
                shown,
                format!(
                    "device nodes are refused (a {} device {}:{}); an image layer has no use for them",
                    if h.kind == Kind::CharDevice {
                        "character"
                    } else {
                        "block"
                    },
                    h.device.0,
                    h.device.1
                ),
            ));
        }
        let meta = self.meta(h, shown)?;
        let Some((name, parents)) = comps.split_last() else {
            if h.kind != Kind::Dir {
                return Err(Self::refuse(
                    shown,
                    "it names the root of the layer, which must be a directory",
                ));
            }
            let root = Dir {
                fd: self
                    .root
                    .fd
                    .try_clone()
                    .map_err(io_error("opening", &self.dest))?,
                ino: self.root.ino,
            };
            self.set_dir_meta(&root, &meta, &self.dest.clone())?;
            self.stats.dirs += 1;
            return Ok(());
        };
        if let Some(c) = parents.iter().find(|c| c.starts_with(WHITEOUT_PREFIX)) {
            if c.starts_with(AUFS_PREFIX) {
                self.stats.skipped += 1;
                return Ok(());
            }
            return Err(Self::refuse(
                shown,
                format!("the whiteout name {} is used as a directory", show(c)),
            ));
        }
        self.removed_dir = false;
        let result = self.apply_named(h, parents, name, link, meta, shown, data, tick);
        if self.removed_dir {
            self.cache = None;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_named(
        &mut self,
        h: &Header,
        parents: &[&[u8]],
        name: &[u8],
        link: Option<&[&[u8]]>,
        meta: Meta<'_>,
        shown: &str,
        data: &mut dyn Read,
        tick: &mut dyn FnMut(),
    ) -> Result<(), ArchiveError> {
        if name == OPAQUE_MARKER {
            return self.opaque(parents, shown);
        }
        if name.starts_with(AUFS_PREFIX) {
            self.stats.skipped += 1;
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            if matches!(target, b"" | b"." | b"..") {
                return Err(Self::refuse(shown, "a whiteout must name an entry"));
            }
            return self.whiteout(parents, target, &meta, shown);
        }
        let parent = self
            .parent(parents, true, shown)?
            .expect("parents are made when missing");
        let r = self.make(&parent, parents, name, h, link, &meta, shown, data, tick);
        if r.is_ok() {
            let key = self.key(parent.ino, name);
            self.ours.insert(key);
            self.touched(&parent, parents)?;
        }
        if !self.removed_dir {
            self.cache = Some((parents.iter().map(|c| c.to_vec()).collect(), parent));
        }
        r
    }

    /// Open the directory `comps` beneath the destination; missing
    /// components are made (with `create`) or `None` is returned.
    fn parent(
        &mut self,
        comps: &[&[u8]],
        create: bool,
        shown: &str,
    ) -> Result<Option<Dir>, ArchiveError> {
        if let Some((key, dir)) = self.cache.take()
            && key.len() == comps.len()
            && key.iter().zip(comps).all(|(a, b)| a == b)
        {
            return Ok(Some(dir));
        }
        let path = self.path_of(comps);
        let stat = |fd: OwnedFd, path: &Path| -> Result<Dir, ArchiveError> {
            let st = rustix::fs::fstat(&fd).map_err(|e| io_error("reading", path)(e.into()))?;
            Ok(Dir { fd, ino: st.st_ino })
        };
        if comps.is_empty() {
            let fd = self
                .root
                .fd
                .try_clone()
                .map_err(io_error("opening", &path))?;
            return Ok(Some(Dir {
                fd,
                ino: self.root.ino,
            }));
        }
        let joined = comps.join(&b'/');
        match rustix::fs::openat2(&self.root.fd, &*joined, OPEN_DIR, Mode::empty(), BENEATH) {
            Ok(fd) => return Ok(Some(stat(fd, &path)?)),
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV | Errno::AGAIN) => {}
            Err(e) => return Err(io_error("opening", &path)(e.into())),
        }
        // One component at a time, making what is missing and naming what
        // is in the way.
        let mut cur = Dir {
            fd: self
                .root
                .fd
                .try_clone()
                .map_err(io_error("opening", &self.dest))?,
            ino: self.root.ino,
        };
        for (i, c) in comps.iter().enumerate() {
            let here = &comps[..=i];
            let shown_here = show(&here.join(&b'/'));
            let hpath = self.path_of(here);
            let name = cstr(c);
            let fd = loop {
                match rustix::fs::openat2(&cur.fd, &*name, OPEN_DIR, Mode::empty(), BENEATH) {
                    Ok(fd) => break fd,
                    Err(Errno::AGAIN | Errno::INTR) => continue,
                    Err(Errno::NOENT) if create => {
                        self.make_implicit_dir(&cur, &comps[..i], &name, &hpath)?;
                    }
                    Err(Errno::NOENT) => return Ok(None),
                    Err(Errno::LOOP) => return Err(Self::through_symlink(shown, &shown_here)),
                    // O_DIRECTORY | O_NOFOLLOW on a symlink fails so too.
                    Err(Errno::NOTDIR)
                        if rustix::fs::statat(&cur.fd, &*name, AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| {
                                FileType::from_raw_mode(st.st_mode) == FileType::Symlink
                            }) =>
                    {
                        return Err(Self::through_symlink(shown, &shown_here));
                    }
                    Err(Errno::NOTDIR) => {
                        return Err(Self::refuse(
                            shown,
                            format!("its parent {shown_here} is not a directory"),
                        ));
                    }
                    Err(Errno::XDEV) => {
                        return Err(Self::refuse(
                            shown,
                            format!("its parent {shown_here} is a mount point"),
                        ));
                    }
                    Err(e) => return Err(io_error("opening", &hpath)(e.into())),
                }
            };
            cur = stat(fd, &hpath)?;
        }
        Ok(Some(cur))
    }

    fn make_implicit_dir(
        &mut self,
        parent: &Dir,
        parent_comps: &[&[u8]],
        name: &CStr,
        path: &Path,
    ) -> Result<(), ArchiveError> {
        rustix::fs::mkdirat(&parent.fd, name, Mode::from_raw_mode(0o700))
            .map_err(|e| io_error("creating", path)(e.into()))?;
        let fd = rustix::fs::openat(&parent.fd, name, OPEN_DIR, Mode::empty())
            .map_err(|e| io_error("opening", path)(e.into()))?;
        let root = self.ids.offset;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(root)),
            Some(rustix::fs::Gid::from_raw(root)),
        )
        .map_err(|e| io_error("setting the owner of", path)(e.into()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
            .map_err(|e| io_error("setting the mode of", path)(e.into()))?;
        self.stats.implicit_dirs += 1;
        let key = self.key(parent.ino, name.to_bytes());
        self.ours.insert(key);
        self.touched(parent, parent_comps)
    }

    /// Set a directory's times again if this layer set them.
    fn touched(&self, dir: &Dir, comps: &[&[u8]]) -> Result<(), ArchiveError> {
        if let Some(t) = self.dir_times.get(&dir.ino) {
            rustix::fs::futimens(&dir.fd, &timestamps(*t))
                .map_err(|e| io_error("setting the times of", &self.path_of(comps))(e.into()))?;
        }
        Ok(())
    }

    /// Delete `name` from `dir` (its whole tree if a directory), if there.
    fn remove(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &Path,
        depth: usize,
    ) -> Result<(), ArchiveError> {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::ISDIR) => {}
            Err(e) => return Err(io_error("deleting", path)(e.into())),
        }
        if depth > self.limits.max_depth {
            return Err(ArchiveError::Limit {
                entry: None,
                field: "max_depth",
                detail: format!(
                    "deleting {}, nested more than {} directories deep",
                    path.display(),
                    self.limits.max_depth
                ),
            });
        }
        self.removed_dir = true;
        let sub = rustix::fs::openat(dir, name, OPEN_DIR, Mode::empty())
            .map_err(|e| io_error("opening", path)(e.into()))?;
        for child in dir_names(&sub).map_err(io_error("listing", path))? {
            let p = path.join(OsStr::from_bytes(child.to_bytes()));
            self.remove(sub.as_fd(), &child, &p, depth + 1)?;
        }
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_error("deleting", path)(e.into())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &mut self,
        parent: &Dir,
        parents: &[&[u8]],
        name: &[u8],
        h: &Header,
        link: Option<&[&[u8]]>,
        meta: &Meta<'_>,
        shown: &str,
        data: &mut dyn Read,
        tick: &mut dyn FnMut(),
    ) -> Result<(), ArchiveError> {
        let cname = cstr(name);
        let path = self.path_of(parents).join(OsStr::from_bytes(name));
        let perr = |what| {
            let path = path.clone();
            move |e: Errno| io_error(what, &path)(e.into())
        };
        let existing = match rustix::fs::statat(&parent.fd, &*cname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(perr("reading")(e)),
        };
        let existing_dir =
            existing.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
        match h.kind {
            Kind::Dir => {
                if !existing_dir {
                    if existing.is_some() {
                        self.remove(parent.fd.as_fd(), &cname, &path, parents.len() + 1)?;
                    }
                    rustix::fs::mkdirat(&parent.fd, &*cname, Mode::from_raw_mode(0o700))
                        .map_err(perr("creating"))?;
                }
                let fd = rustix::fs::openat(&parent.fd, &*cname, OPEN_DIR, Mode::empty())
                    .map_err(perr("opening"))?;
                let st = rustix::fs::fstat(&fd).map_err(perr("reading"))?;
                self.set_dir_meta(&Dir { fd, ino: st.st_ino }, meta, &path)?;
                self.stats.dirs += 1;
            }
            Kind::File => {
                if existing.is_some() {
                    self.remove(parent.fd.as_fd(), &cname, &path, parents.len() + 1)?;
                }
                let fd = rustix::fs::openat(
                    &parent.fd,
                    &*cname,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(perr("creating"))?;
                self.write_data(&fd, h.size, data, &path, tick)?;
                self.set_fd_meta(&fd, meta, &path, false)?;
                self.stats.files += 1;
                self.stats.bytes += h.size;
            }
            Kind::Symlink => {
                if h.link.is_empty()
                    || h.link.contains(&0)
                    || h.link.len() > self.limits.max_path_len
                {
                    return Err(Self::refuse(
                        shown,
                        "its symlink target is empty, holds a NUL or is too long",
                    ));
                }
                if existing.is_some() {
                    self.remove(parent.fd.as_fd(), &cname, &path, parents.len() + 1)?;
                }
                rustix::fs::symlinkat(&*cstr(&h.link), &parent.fd, &*cname)
                    .map_err(perr("creating"))?;
                self.set_at_meta(parent, &cname, meta, &path, true)?;
                self.stats.symlinks += 1;
            }
            Kind::Fifo => {
                if existing.is_some() {
                    self.remove(parent.fd.as_fd(), &cname, &path, parents.len() + 1)?;
                }
                rustix::fs::mknodat(
                    &parent.fd,
                    &*cname,
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(perr("creating"))?;
                self.set_at_meta(parent, &cname, meta, &path, false)?;
                self.stats.fifos += 1;
            }
            Kind::Hardlink => {
                let target = link.expect("hardlinks come with their target");
                self.hardlink(
                    parent,
                    parents,
                    &cname,
                    existing.as_ref(),
                    target,
                    &path,
                    shown,
                )?;
                self.stats.hardlinks += 1;
            }
            Kind::CharDevice | Kind::BlockDevice => unreachable!("refused in apply"),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn hardlink(
        &mut self,
        parent: &Dir,
        parents: &[&[u8]],
        cname: &CStr,
        existing: Option<&rustix::fs::Stat>,
        target: &[&[u8]],
        path: &Path,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let tshown = show(&target.join(&b'/'));
        let Some((tname, tparents)) = target.split_last() else {
            return Err(Self::refuse(
                shown,
                "its hardlink target is the root directory",
            ));
        };
        let missing = || {
            Self::refuse(
                shown,
                format!(
                    "its hardlink target {tshown} does not exist (a hardlink must name an earlier entry)"
                ),
            )
        };
        let tdir = match self.parent(tparents, false, shown) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(missing()),
            Err(ArchiveError::Entry { reason, .. }) => {
                return Err(Self::refuse(
                    shown,
                    format!("its hardlink target: {reason}"),
                ));
            }
            Err(e) => return Err(e),
        };
        let tcname = cstr(tname);
        let tst = match rustix::fs::statat(&tdir.fd, &*tcname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(io_error("reading", &self.path_of(target))(e.into())),
        };
        if FileType::from_raw_mode(tst.st_mode) == FileType::Directory {
            return Err(Self::refuse(
                shown,
                format!("its hardlink target {tshown} is a directory"),
            ));
        }
        if let Some(st) = existing {
            if st.st_ino == tst.st_ino && st.st_dev == tst.st_dev {
                return Ok(()); // already that file
            }
            self.remove(parent.fd.as_fd(), cname, path, parents.len() + 1)?;
        }
        match rustix::fs::linkat(&tdir.fd, &*tcname, &parent.fd, cname, AtFlags::empty()) {
            Ok(()) => Ok(()),
            // Removing what was at the name removed the target.
            Err(Errno::NOENT) => Err(missing()),
            Err(e) => Err(io_error("hardlinking", path)(e.into())),
        }
    }

    /// Copy `size` bytes of entry data into `fd`, all-zero chunks as holes.
    fn write_data(
        &mut self,
        fd: &OwnedFd,
        size: u64,
        data: &mut dyn Read,
        path: &Path,
        tick: &mut dyn FnMut(),
    ) -> Result<(), ArchiveError> {
        self.buf.resize(CHUNK, 0);
        let mut off = 0u64;
        while off < size {
            let want = usize::try_from(size - off).unwrap_or(usize::MAX).min(CHUNK);
            let chunk = &mut self.buf[..want];
            data.read_exact(chunk).map_err(ArchiveError::from_read)?;
            if chunk.iter().any(|b| *b != 0) {
                let mut done = 0;
                while done < want {
                    match rustix::io::pwrite(fd, &chunk[done..], off + done as u64) {
                        Ok(n) => done += n,
                        Err(Errno::INTR) => {}
                        Err(e) => return Err(io_error("writing", path)(e.into())),
                    }
                }
            }
            off += want as u64;
            tick();
        }
        rustix::fs::ftruncate(fd, size).map_err(|e| io_error("writing", path)(e.into()))
    }

    fn set_xattr(
        &mut self,
        fd: &OwnedFd,
        name: &[u8],
        value: &[u8],
        path: &Path,
    ) -> Result<(), ArchiveError> {
        match rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::NOTSUP | Errno::PERM) => {
                tracing::warn!(
                    path = %path.display(),
                    xattr = %String::from_utf8_lossy(name),
                    "the filesystem refuses this extended attribute; dropped"
                );
                self.stats.xattrs_dropped += 1;
                Ok(())
            }
            Err(e) => Err(ArchiveError::Io {
                what: "setting an extended attribute on",
                path: format!("{} ({})", path.display(), String::from_utf8_lossy(name)),
                source: e.into(),
            }),
        }
    }

    /// Owner, mode, xattrs, then times (chown clears setuid bits and file
    /// capabilities, so it goes first).
    fn set_fd_meta(
        &mut self,
        fd: &OwnedFd,
        meta: &Meta<'_>,
        path: &Path,
        is_dir: bool,
    ) -> Result<(), ArchiveError> {
        let err = |what| move |e: Errno| io_error(what, path)(e.into());
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .map_err(err("setting the owner of"))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(err("setting the mode of"))?;
        for (name, value) in &meta.xattrs {
            self.set_xattr(fd, name, value, path)?;
        }
        if is_dir {
            // A directory over a directory takes the entry's user.* set.
            let list =
                list_xattrs(fd).map_err(io_error("listing the extended attributes of", path))?;
            for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                if name.starts_with(b"user.")
                    && !name.starts_with(b"user.overlay.")
                    && !meta.xattrs.iter().any(|(n, _)| *n == name)
                {
                    rustix::fs::fremovexattr(fd, name).map_err(|e| ArchiveError::Io {
                        what: "removing an extended attribute from",
                        path: format!("{} ({})", path.display(), String::from_utf8_lossy(name)),
                        source: e.into(),
                    })?;
                }
            }
        }
        rustix::fs::futimens(fd, &timestamps(meta.mtime)).map_err(err("setting the times of"))
    }

    fn set_dir_meta(
        &mut self,
        dir: &Dir,
        meta: &Meta<'_>,
        path: &Path,
    ) -> Result<(), ArchiveError> {
        self.set_fd_meta(&dir.fd, meta, path, true)?;
        self.dir_times.insert(dir.ino, meta.mtime);
        Ok(())
    }

    /// Metadata of a node that can't be opened (symlink, FIFO, whiteout),
    /// by name; it can't carry `user.*` xattrs, so those are dropped.
    fn set_at_meta(
        &mut self,
        parent: &Dir,
        name: &CStr,
        meta: &Meta<'_>,
        path: &Path,
        symlink: bool,
    ) -> Result<(), ArchiveError> {
        let err = |what| move |e: Errno| io_error(what, path)(e.into());
        rustix::fs::chownat(
            &parent.fd,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(err("setting the owner of"))?;
        if !symlink {
            // The name was just made as a FIFO or device: not a symlink.
            rustix::fs::chmodat(
                &parent.fd,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(err("setting the mode of"))?;
        }
        self.stats.xattrs_dropped += meta.xattrs.len() as u64;
        rustix::fs::utimensat(
            &parent.fd,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(err("setting the times of"))
    }

    fn whiteout(
        &mut self,
        parents: &[&[u8]],
        target: &[u8],
        meta: &Meta<'_>,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        self.stats.whiteouts += 1;
        let create = self.mode == Whiteouts::Upper;
        let Some(parent) = self.parent(parents, create, shown)? else {
            return Ok(()); // nothing there to delete
        };
        let cname = cstr(target);
        let path = self.path_of(parents).join(OsStr::from_bytes(target));
        self.remove(parent.fd.as_fd(), &cname, &path, parents.len() + 1)?;
        if self.mode == Whiteouts::Upper {
            rustix::fs::mknodat(
                &parent.fd,
                &*cname,
                FileType::CharacterDevice,
                Mode::empty(),
                0,
            )
            .map_err(|e| io_error("creating the whiteout", &path)(e.into()))?;
            let meta = Meta {
                xattrs: Vec::new(),
                ..*meta
            };
            self.set_at_meta(&parent, &cname, &meta, &path, false)?;
            let key = self.key(parent.ino, target);
            self.ours.insert(key);
        }
        self.touched(&parent, parents)?;
        if !self.removed_dir {
            self.cache = Some((parents.iter().map(|c| c.to_vec()).collect(), parent));
        }
        Ok(())
    }

    fn opaque(&mut self, parents: &[&[u8]], shown: &str) -> Result<(), ArchiveError> {
        self.stats.opaque_dirs += 1;
        let dir = self
            .parent(parents, true, shown)?
            .expect("parents are made when missing");
        let path = self.path_of(parents);
        match self.mode {
            Whiteouts::Upper => {
                rustix::fs::fsetxattr(&dir.fd, USER_OPAQUE, b"y", XattrFlags::empty())
                    .map_err(|e| io_error("marking opaque", &path)(e.into()))?;
            }
            Whiteouts::Flatten => {
                self.prune(&dir, parents.len(), &path)?;
                self.touched(&dir, parents)?;
            }
        }
        if !self.removed_dir {
            self.cache = Some((parents.iter().map(|c| c.to_vec()).collect(), dir));
        }
        Ok(())
    }

    /// Delete from `dir`, recursively, everything this layer did not make.
    fn prune(&mut self, dir: &Dir, depth: usize, path: &Path) -> Result<(), ArchiveError> {
        for name in dir_names(&dir.fd).map_err(io_error("listing", path))? {
            let p = path.join(OsStr::from_bytes(name.to_bytes()));
            if !self.ours.contains(&self.key(dir.ino, name.to_bytes())) {
                self.remove(dir.fd.as_fd(), &name, &p, depth + 1)?;
                continue;
            }
            let sub = match rustix::fs::openat(&dir.fd, &*name, OPEN_DIR, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(io_error("opening", &p)(e.into())),
            };
            if depth + 1 > self.limits.max_depth {
                return Err(ArchiveError::Limit {
                    entry: None,
                    field: "max_depth",
                    detail: format!("{} is nested too deep", p.display()),
                });
            }
            let st = rustix::fs::fstat(&sub).map_err(|e| io_error("reading", &p)(e.into()))?;
            let sub = Dir {
                fd: sub,
                ino: st.st_ino,
            };
            self.prune(&sub, depth + 1, &p)?;
            if let Some(t) = self.dir_times.get(&sub.ino) {
                rustix::fs::futimens(&sub.fd, &timestamps(*t))
                    .map_err(|e| io_error("setting the times of", &p)(e.into()))?;
            }
        }
        Ok(())
    }
}

pub(crate) use crate::snapshot::files::dir_names;

/// The NUL-separated names of an open node's extended attributes.
pub(crate) fn list_xattrs(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    loop {
        let size = match rustix::fs::flistxattr_query(fd) {
            Ok(s) => s,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::flistxattr(fd, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One extended attribute of an open node, if it has it.
pub(crate) fn get_xattr(fd: &OwnedFd, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    loop {
        let size = match rustix::fs::fgetxattr_query(fd, name) {
            Ok(s) => s,
            Err(Errno::NODATA | Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; size];
        if size == 0 {
            return Ok(Some(buf));
        }
        match rustix::fs::fgetxattr(fd, name, &mut buf[..]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<Vec<String>, ArchiveError> {
        normalize(p.as_bytes(), &Limits::default(), &show(p.as_bytes())).map(|c| {
            c.into_iter()
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(norm("./etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(norm("/etc//passwd/").unwrap(), ["etc", "passwd"]);
        assert_eq!(norm("etc/./x").unwrap(), ["etc", "x"]);
        assert!(norm("./").unwrap().is_empty());
        assert!(norm("").unwrap().is_empty());
        for bad in ["../x", "a/../b", "a/..", "/..", "a\0b"] {
            let e = norm(bad).unwrap_err();
            assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument);
            assert!(e.to_string().contains("entry"), "{e}");
        }
        assert!(norm(&"n".repeat(256)).is_err());
        assert!(norm(&format!(".wh.{}", "n".repeat(255))).is_ok());
        assert!(norm(&format!(".wh.{}", "n".repeat(256))).is_err());
        let deep = "d/".repeat(300);
        assert!(norm(&deep).unwrap_err().to_string().contains("max_depth"));
        let long = "d".repeat(200) + "/" + &"e/".repeat(2000);
        assert!(
            norm(&long)
                .unwrap_err()
                .to_string()
                .contains("max_path_len")
        );
    }
}
