//! File operations, confined to the sandbox root (see [`super::paths`]).
//!
//! Runs on the blocking pool over a blocking socket, one operation per
//! connection. Every operation on a final component (write, mkdir, remove,
//! rename, stat) opens the parent with `openat2(RESOLVE_IN_ROOT)` and acts
//! on the name with `*at` calls, so neither `..` nor symlinks (planted
//! before or swapped in during the call) lead outside the root.
//!
//! `read` and `list` follow a final symlink (inside the root); `stat`
//! reports a symlink itself (lstat) with its target; `write`, `remove` and
//! `rename` act on a final symlink itself, never on what it points to.
//!
//! Writes are atomic: data goes to a temporary file created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` next to the target and is renamed over it
//! when complete; on any failure (size cap, bad frame, closed connection,
//! full disk) the temporary file is removed and the old file is untouched.
//! Writes are not fsynced: a crash of the whole sandbox may lose the last
//! write, never tear it. A written file is a new inode owned by the agent's
//! user (root inside the sandbox), whoever owned the file it replaces.
//! Removal walks directories by descriptor and never follows symlinks.
//!
//! Limits: listings stop at [`MAX_ENTRIES`] entries or [`MAX_LIST_BYTES`]
//! of JSON, whichever comes first (`truncated`), and at depth
//! [`MAX_DEPTH`]; they never descend through symlinks; recursive removal refuses trees deeper than
//! [`MAX_REMOVE_DEPTH`] (what it removed up to then stays removed). Names
//! that are not UTF-8 are handled on disk but shown lossily in answers.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

use hull_proto::{
    FileStat, FileType, Frame, GuestError, GuestErrorKind, Op, Response, read_frame_sync,
    write_frame_sync,
};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::{Agent, os_error, paths, tarball};

/// Entries returned by one listing at most.
pub(crate) const MAX_ENTRIES: usize = 10_000;
/// JSON bytes of entries one listing answers at most (it is one frame).
pub(crate) const MAX_LIST_BYTES: usize = hull_proto::MAX_FRAME - 4096;
/// Deepest listing or tar download.
pub(crate) const MAX_DEPTH: u32 = 64;
/// Deepest tree a recursive removal descends (one descriptor per level).
pub(crate) const MAX_REMOVE_DEPTH: u32 = 256;
/// Names read from a directory at a time while emptying it.
const REMOVE_BATCH: usize = 4096;
/// Flags to open a directory for reading without following a final symlink.
pub(crate) const DIR_NOFOLLOW: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

pub(crate) type OpResult = Result<(), GuestError>;

fn reply(conn: &mut UnixStream, resp: &Response) -> OpResult {
    let f = Frame::control(resp).map_err(|e| internal(e.to_string()))?;
    write_frame_sync(conn, &f).map_err(|e| internal(e.to_string()))
}

pub(crate) fn internal(m: String) -> GuestError {
    GuestError::new(GuestErrorKind::Internal, m)
}

fn invalid(m: String) -> GuestError {
    GuestError::new(GuestErrorKind::InvalidArgument, m)
}

/// Serve one file operation; errors are answered on the connection.
pub(crate) fn serve(agent: &Agent, mut conn: UnixStream, op: Op) {
    let root = agent.root.as_fd();
    let result = match op {
        Op::Read {
            path,
            offset,
            limit,
        } => read(root, &mut conn, &path, offset, limit),
        Op::Write {
            path,
            mode,
            parents,
            max_bytes,
        } => write(root, &mut conn, &path, mode, parents, max_bytes),
        Op::Stat { path } => stat(root, &path).and_then(|s| reply(&mut conn, &Response::Stat(s))),
        Op::List { path, depth } => list(root, &path, depth).and_then(|(entries, truncated)| {
            reply(&mut conn, &Response::Entries { entries, truncated })
        }),
        Op::Mkdir {
            path,
            parents,
            mode,
        } => mkdir(root, &path, parents, mode.unwrap_or(0o755))
            .and_then(|()| reply(&mut conn, &Response::Ok)),
        Op::Remove { path, recursive } => {
            remove(root, &path, recursive).and_then(|()| reply(&mut conn, &Response::Ok))
        }
        Op::Rename { from, to } => {
            rename(root, &from, &to).and_then(|()| reply(&mut conn, &Response::Ok))
        }
        Op::TarGet { path } => tarball::get(root, &mut conn, &path),
        Op::TarPut { path, max_bytes } => tarball::put(root, &mut conn, &path, max_bytes),
        _ => Err(invalid("not a file operation".to_string())),
    };
    if let Err(e) = result {
        let _ = reply(&mut conn, &Response::Error(e));
    }
}

pub(crate) fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FileType::File,
        libc::S_IFDIR => FileType::Dir,
        libc::S_IFLNK => FileType::Symlink,
        _ => FileType::Other,
    }
}

/// A name as shown in answers (lossy for names that are not UTF-8).
pub(crate) fn shown(name: &OsStr) -> std::borrow::Cow<'_, str> {
    name.to_string_lossy()
}

fn stat_to_file(st: &rustix::fs::Stat, path: &str, link_target: Option<String>) -> FileStat {
    FileStat {
        path: path.to_string(),
        kind: file_type(st.st_mode),
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        link_target,
    }
}

/// Stat `name` in `dir` without following a final symlink.
pub(crate) fn stat_at<P: rustix::path::Arg + Copy>(
    dir: impl AsFd,
    name: P,
    path: &str,
) -> Result<FileStat, GuestError> {
    let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| os_error(e.into(), path))?;
    let link_target = if file_type(st.st_mode) == FileType::Symlink {
        rustix::fs::readlinkat(&dir, name, Vec::new())
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(stat_to_file(&st, path, link_target))
}

pub(crate) fn stat(root: impl AsFd, path: &str) -> Result<FileStat, GuestError> {
    paths::check(path)?;
    if path.trim_end_matches('/').is_empty() {
        return stat_at(root, ".", "/");
    }
    let (dir, name) = paths::open_parent(&root, path)?;
    stat_at(&dir, name.as_str(), path)
}

fn read(
    root: impl AsFd,
    conn: &mut UnixStream,
    path: &str,
    offset: u64,
    limit: Option<u64>,
) -> OpResult {
    paths::check(path)?;
    // NONBLOCK: opening a FIFO must not hang the agent (it is refused below).
    let fd = paths::open_in_root(
        &root,
        path,
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK,
    )
    .map_err(|e| os_error(e, path))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| os_error(e.into(), path))?;
    match file_type(st.st_mode) {
        FileType::File => {}
        FileType::Dir => return Err(invalid(format!("{path} is a directory"))),
        _ => return Err(invalid(format!("{path} is not a regular file"))),
    }
    let fl = rustix::fs::fcntl_getfl(&fd).map_err(|e| os_error(e.into(), path))?;
    rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK).map_err(|e| os_error(e.into(), path))?;
    let mut file = std::fs::File::from(fd);
    reply(conn, &Response::Stat(stat_to_file(&st, path, None)))?;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| os_error(e, path))?;
    }
    let mut left = limit.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; hull_proto::CHUNK];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).map_err(|e| os_error(e, path))?;
        if n == 0 {
            break;
        }
        left -= n as u64;
        write_frame_sync(conn, &Frame::Data(buf[..n].to_vec()))
            .map_err(|e| internal(e.to_string()))?;
    }
    write_frame_sync(conn, &Frame::Eof).map_err(|e| internal(e.to_string()))
}

/// A name for a temporary file next to `name`, unlikely to exist (it is
/// created with `O_EXCL` anyway).
fn temp_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let short: String = name.chars().take(40).collect();
    format!(".{short}.hull-{:x}-{nanos:08x}-{n:x}", std::process::id())
}

/// Receive `Data` frames up to `Eof` into `sink`, refusing more than `max`
/// bytes as soon as the total passes it.
pub(crate) fn receive(
    conn: &mut UnixStream,
    max: Option<u64>,
    mut sink: impl FnMut(&[u8]) -> OpResult,
) -> OpResult {
    let mut total: u64 = 0;
    loop {
        match read_frame_sync(conn) {
            Ok(Frame::Data(d)) => {
                total = total.saturating_add(d.len() as u64);
                if let Some(m) = max
                    && total > m
                {
                    return Err(GuestError::new(
                        GuestErrorKind::ResourceExhausted,
                        format!("upload is larger than the limit of {m} bytes"),
                    ));
                }
                sink(&d)?;
            }
            Ok(Frame::Eof) => return Ok(()),
            Ok(other) => {
                return Err(invalid(format!(
                    "expected data or eof, got a {} frame",
                    other.kind_name()
                )));
            }
            Err(e) => return Err(invalid(format!("reading upload: {e}"))),
        }
    }
}

fn write(
    root: impl AsFd,
    conn: &mut UnixStream,
    path: &str,
    mode: Option<u32>,
    parents: bool,
    max: Option<u64>,
) -> OpResult {
    let (parent, _) = paths::split(path)?;
    if parents {
        mkdir(&root, &parent, true, 0o755)?;
    }
    let (dir, name) = paths::open_parent(&root, path)?;
    if let Ok(st) = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
        && file_type(st.st_mode) == FileType::Dir
    {
        return Err(invalid(format!("{path} is a directory")));
    }
    let mode = mode.unwrap_or(0o644) & 0o7777;
    let tmp = temp_name(&name);
    let fd: OwnedFd = rustix::fs::openat(
        &dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| os_error(e.into(), format!("creating a file next to {path}")))?;
    let mut file = std::fs::File::from(fd);
    let result = receive(conn, max, |d| {
        file.write_all(d).map_err(|e| os_error(e, path))
    })
    .and_then(|()| {
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
            .map_err(|e| os_error(e.into(), path))?;
        rustix::fs::renameat(&dir, tmp.as_str(), &dir, name.as_str()).map_err(|e| match e {
            Errno::ISDIR => invalid(format!("{path} is a directory")),
            e => os_error(e.into(), path),
        })
    });
    if let Err(e) = result {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    let st = rustix::fs::fstat(&file).map_err(|e| os_error(e.into(), path))?;
    reply(conn, &Response::Stat(stat_to_file(&st, path, None)))
}

/// Names in the directory `dir` (opened for reading), without `.` and
/// `..`, at most `cap` of them; `path` names it in errors.
pub(crate) fn read_names(
    dir: &OwnedFd,
    path: &str,
    cap: usize,
) -> Result<Vec<(OsString, rustix::fs::FileType)>, GuestError> {
    let mut names = Vec::new();
    let d = rustix::fs::Dir::read_from(dir).map_err(|e| os_error(e.into(), path))?;
    for ent in d {
        if names.len() >= cap {
            break;
        }
        let ent = ent.map_err(|e| os_error(e.into(), path))?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push((OsStr::from_bytes(name).to_owned(), ent.file_type()));
        }
    }
    Ok(names)
}

pub(crate) fn list(
    root: impl AsFd,
    path: &str,
    depth: u32,
) -> Result<(Vec<FileStat>, bool), GuestError> {
    paths::check(path)?;
    if depth == 0 || depth > MAX_DEPTH {
        return Err(invalid(format!("depth must be 1 to {MAX_DEPTH}")));
    }
    let dir = paths::open_in_root(&root, path, OFlags::RDONLY | OFlags::DIRECTORY)
        .map_err(|e| os_error(e, path))?;
    let base = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    let mut listing = Listing::default();
    walk(&dir, base, depth, &mut listing)?;
    Ok((listing.entries, listing.truncated))
}

/// A listing under construction, bounded in entries and in encoded size.
#[derive(Default)]
struct Listing {
    entries: Vec<FileStat>,
    /// JSON bytes of `entries` so far.
    bytes: usize,
    truncated: bool,
}

impl Listing {
    /// Add `st`; false (and `truncated` set) when it does not fit.
    fn push(&mut self, st: FileStat) -> bool {
        let size = serde_json::to_vec(&st).map_or(usize::MAX, |v| v.len() + 1);
        if self.entries.len() >= MAX_ENTRIES || self.bytes.saturating_add(size) > MAX_LIST_BYTES {
            self.truncated = true;
            return false;
        }
        self.bytes += size;
        self.entries.push(st);
        true
    }
}

fn walk(dir: &OwnedFd, path: &str, depth: u32, listing: &mut Listing) -> OpResult {
    // One name more than fits tells us the listing is cut.
    let cap = MAX_ENTRIES.saturating_sub(listing.entries.len()) + 1;
    let mut names = read_names(dir, path, cap)?;
    let hit_cap = names.len() >= cap;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, _) in names {
        if listing.truncated {
            return Ok(());
        }
        let child = paths::join(path, &shown(&name));
        // Gone since readdir, or unreadable: leave it out.
        let Ok(st) = stat_at(dir, name.as_os_str(), &child) else {
            continue;
        };
        let is_dir = st.kind == FileType::Dir;
        if !listing.push(st) {
            return Ok(());
        }
        if is_dir
            && depth > 1
            && let Ok(sub) = rustix::fs::openat(dir, name.as_os_str(), DIR_NOFOLLOW, Mode::empty())
        {
            walk(&sub, &child, depth - 1, listing)?;
        }
    }
    if hit_cap && listing.entries.len() >= MAX_ENTRIES {
        listing.truncated = true;
    }
    Ok(())
}

pub(crate) fn mkdir(root: impl AsFd, path: &str, parents: bool, mode: u32) -> OpResult {
    paths::check(path)?;
    let mode = Mode::from_raw_mode(mode & 0o7777);
    if !parents {
        let (dir, name) = paths::open_parent(&root, path)?;
        return rustix::fs::mkdirat(&dir, name.as_str(), mode).map_err(|e| match e {
            Errno::EXIST => {
                GuestError::new(GuestErrorKind::Conflict, format!("{path} already exists"))
            }
            e => os_error(e.into(), path),
        });
    }
    // mkdir -p: each prefix in turn, every step resolved in the root.
    let mut prefix = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        prefix.push('/');
        prefix.push_str(comp);
        if comp == ".." {
            continue;
        }
        let (dir, name) = paths::open_parent(&root, &prefix)?;
        match rustix::fs::mkdirat(&dir, name.as_str(), mode) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(os_error(e.into(), &prefix)),
        }
        paths::open_in_root(&root, &prefix, OFlags::PATH | OFlags::DIRECTORY).map_err(|e| {
            // ENOENT: a dangling symlink is in the way.
            if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENOENT)) {
                GuestError::new(
                    GuestErrorKind::Conflict,
                    format!("{prefix} exists and is not a directory"),
                )
            } else {
                os_error(e, &prefix)
            }
        })?;
    }
    Ok(())
}

fn remove(root: impl AsFd, path: &str, recursive: bool) -> OpResult {
    let (dir, name) = paths::open_parent(&root, path)?;
    let st = stat_at(&dir, name.as_str(), path)?;
    if st.kind != FileType::Dir {
        return rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())
            .map_err(|e| os_error(e.into(), path));
    }
    if recursive {
        empty_dir(&dir, OsStr::new(&name), path, 0)?;
    }
    rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::REMOVEDIR).map_err(|e| match e {
        Errno::NOTEMPTY | Errno::EXIST => GuestError::new(
            GuestErrorKind::Conflict,
            format!("{path} is a non-empty directory (remove it recursively)"),
        ),
        e => os_error(e.into(), path),
    })
}

/// Empty the directory `name` in `parent`, never following symlinks: each
/// level is opened by descriptor with `O_NOFOLLOW`, so a symlink swapped in
/// for a directory fails the walk instead of redirecting it.
fn empty_dir(parent: &OwnedFd, name: &OsStr, path: &str, depth: u32) -> OpResult {
    if depth >= MAX_REMOVE_DEPTH {
        return Err(invalid(format!(
            "{path}: directory tree deeper than {MAX_REMOVE_DEPTH} levels"
        )));
    }
    let dir = rustix::fs::openat(parent, name, DIR_NOFOLLOW, Mode::empty())
        .map_err(|e| os_error(e.into(), path))?;
    // In batches, re-reading from the start, so memory stays bounded
    // whatever the directory holds.
    loop {
        let names = read_names(&dir, path, REMOVE_BATCH)?;
        if names.is_empty() {
            return Ok(());
        }
        for (n, ty) in names {
            let child = paths::join(path, &shown(&n));
            remove_entry(&dir, &n, ty, &child, depth)?;
        }
    }
}

fn remove_entry(
    dir: &OwnedFd,
    name: &OsStr,
    ty: rustix::fs::FileType,
    path: &str,
    depth: u32,
) -> OpResult {
    let is_dir = match ty {
        rustix::fs::FileType::Directory => true,
        // Some filesystems don't report types in readdir.
        rustix::fs::FileType::Unknown => rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| file_type(st.st_mode) == FileType::Dir)
            .map_err(|e| os_error(e.into(), path))?,
        _ => false,
    };
    if !is_dir {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            // Replaced by a directory since readdir: remove that instead.
            Err(Errno::ISDIR) => {}
            Err(e) => return Err(os_error(e.into(), path)),
        }
    }
    empty_dir(dir, name, path, depth + 1)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(os_error(e.into(), path)),
    }
}

fn rename(root: impl AsFd, from: &str, to: &str) -> OpResult {
    let (fdir, fname) = paths::open_parent(&root, from)?;
    let (tdir, tname) = paths::open_parent(&root, to)?;
    rustix::fs::renameat_with(
        &fdir,
        fname.as_str(),
        &tdir,
        tname.as_str(),
        RenameFlags::empty(),
    )
    .map_err(|e| match e {
        Errno::NOTEMPTY | Errno::EXIST => GuestError::new(
            GuestErrorKind::Conflict,
            format!("cannot replace {to}: it is a non-empty directory"),
        ),
        Errno::XDEV => invalid(format!(
            "cannot rename {from} to {to}: they are on different filesystems (copy instead)"
        )),
        e => os_error(e.into(), format!("renaming {from} to {to}")),
    })
}
