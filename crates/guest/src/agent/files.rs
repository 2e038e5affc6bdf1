//! File operations, confined to the sandbox root (see [`super::paths`]).
//!
//! Runs on the blocking pool over a blocking socket, one operation per
//! connection. Writes are atomic: data goes to a temporary file created
//! with `O_EXCL | O_NOFOLLOW` next to the target and is renamed over it
//! when complete (not fsynced: a crash of the whole sandbox may lose the
//! last write, never tear it). New files belong to the agent's user (root
//! inside). Removal walks directories by descriptor and never follows
//! symlinks.
//!
//! Limits: listings stop at [`MAX_ENTRIES`] entries (`truncated`), depth at
//! [`MAX_DEPTH`]; recursive removal stops at the same depth.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use hull_proto::{
    FileStat, FileType, Frame, GuestError, GuestErrorKind, Op, Response, read_frame_sync,
    write_frame_sync,
};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::{Agent, os_error, paths, tarball};

/// Entries returned by one listing at most.
pub(crate) const MAX_ENTRIES: usize = 10_000;
/// Deepest listing or removal.
pub(crate) const MAX_DEPTH: u32 = 64;

pub(crate) type OpResult = Result<(), GuestError>;

fn reply(conn: &mut UnixStream, resp: &Response) -> OpResult {
    let f = Frame::control(resp).map_err(|e| internal(e.to_string()))?;
    write_frame_sync(conn, &f).map_err(|e| internal(e.to_string()))
}

pub(crate) fn internal(m: String) -> GuestError {
    GuestError::new(GuestErrorKind::Internal, m)
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
        other => Err(GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("not a file operation: {other:?}"),
        )),
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

/// Stat `name` in `dir` without following a final symlink.
pub(crate) fn stat_at(dir: impl AsFd, name: &str, path: &str) -> Result<FileStat, GuestError> {
    let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| os_error(e.into(), path))?;
    let kind = file_type(st.st_mode);
    let link_target = if kind == FileType::Symlink {
        rustix::fs::readlinkat(&dir, name, Vec::new())
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(FileStat {
        path: path.to_string(),
        kind,
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        link_target,
    })
}

pub(crate) fn stat(root: impl AsFd, path: &str) -> Result<FileStat, GuestError> {
    paths::check(path)?;
    if path.trim_end_matches('/').is_empty() {
        return stat_at(root, ".", "/");
    }
    let (dir, name) = paths::open_parent(&root, path)?;
    stat_at(&dir, &name, path)
}

fn read(
    root: impl AsFd,
    conn: &mut UnixStream,
    path: &str,
    offset: u64,
    limit: Option<u64>,
) -> OpResult {
    paths::check(path)?;
    // NONBLOCK: opening a FIFO must not hang the agent.
    let fd = paths::open_in_root(
        &root,
        path,
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK,
    )
    .map_err(|e| os_error(e, path))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| os_error(e.into(), path))?;
    match file_type(st.st_mode) {
        FileType::File => {}
        FileType::Dir => {
            return Err(GuestError::new(
                GuestErrorKind::InvalidArgument,
                format!("{path} is a directory"),
            ));
        }
        _ => {
            return Err(GuestError::new(
                GuestErrorKind::InvalidArgument,
                format!("{path} is not a regular file"),
            ));
        }
    }
    let fl = rustix::fs::fcntl_getfl(&fd).map_err(|e| os_error(e.into(), path))?;
    let _ = rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK);
    let mut file = std::fs::File::from(fd);
    let info = stat_from_fd(&file, path)?;
    reply(conn, &Response::Stat(info))?;
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

fn stat_from_fd(f: &std::fs::File, path: &str) -> Result<FileStat, GuestError> {
    let st = rustix::fs::fstat(f).map_err(|e| os_error(e.into(), path))?;
    Ok(FileStat {
        path: path.to_string(),
        kind: file_type(st.st_mode),
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        link_target: None,
    })
}

/// A random-enough temporary name next to `name`.
fn temp_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let hex = format!("{:x}{nanos:08x}{n:x}", std::process::id());
    let short: String = name.chars().take(40).collect();
    format!(".{short}.hull-{hex}")
}

/// Receive `Data` frames up to `Eof` into `sink`, refusing more than `max`.
pub(crate) fn receive(
    conn: &mut UnixStream,
    max: Option<u64>,
    mut sink: impl FnMut(&[u8]) -> OpResult,
) -> OpResult {
    let mut total: u64 = 0;
    loop {
        match read_frame_sync(conn) {
            Ok(Frame::Data(d)) => {
                total += d.len() as u64;
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
                return Err(GuestError::new(
                    GuestErrorKind::InvalidArgument,
                    format!("expected data or eof, got a {} frame", other.kind_name()),
                ));
            }
            Err(e) => {
                return Err(GuestError::new(
                    GuestErrorKind::InvalidArgument,
                    format!("reading upload: {e}"),
                ));
            }
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
    if let Ok(st) = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)
        && file_type(st.st_mode) == FileType::Dir
    {
        return Err(GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("{path} is a directory"),
        ));
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
        rustix::fs::renameat(&dir, tmp.as_str(), &dir, name.as_str())
            .map_err(|e| os_error(e.into(), path))
    });
    if let Err(e) = result {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    let st = stat_from_fd(&file, path)?;
    reply(conn, &Response::Stat(st))
}

pub(crate) fn list(
    root: impl AsFd,
    path: &str,
    depth: u32,
) -> Result<(Vec<FileStat>, bool), GuestError> {
    paths::check(path)?;
    if depth == 0 || depth > MAX_DEPTH {
        return Err(GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("depth must be 1 to {MAX_DEPTH}"),
        ));
    }
    let dir = paths::open_in_root(&root, path, OFlags::RDONLY | OFlags::DIRECTORY)
        .map_err(|e| os_error(e, path))?;
    let mut out = Vec::new();
    let mut truncated = false;
    let base = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        "/"
    };
    walk(dir, base, depth, &mut out, &mut truncated)?;
    Ok((out, truncated))
}

fn walk(
    dir: OwnedFd,
    path: &str,
    depth: u32,
    out: &mut Vec<FileStat>,
    truncated: &mut bool,
) -> OpResult {
    let mut names: Vec<String> = Vec::new();
    let d = rustix::fs::Dir::read_from(&dir).map_err(|e| os_error(e.into(), path))?;
    for ent in d {
        let ent = ent.map_err(|e| os_error(e.into(), path))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        if out.len() >= MAX_ENTRIES {
            *truncated = true;
            return Ok(());
        }
        let child = paths::join(path, &name);
        let Ok(st) = stat_at(&dir, &name, &child) else {
            continue;
        };
        let is_dir = st.kind == FileType::Dir;
        out.push(st);
        if is_dir && depth > 1 {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            if let Ok(sub) = rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty()) {
                walk(sub, &child, depth - 1, out, truncated)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn mkdir(root: impl AsFd, path: &str, parents: bool, mode: u32) -> OpResult {
    paths::check(path)?;
    let mode = Mode::from_raw_mode(mode & 0o7777);
    if !parents {
        let (dir, name) = paths::open_parent(&root, path)?;
        return rustix::fs::mkdirat(&dir, name.as_str(), mode).map_err(|e| match e {
            rustix::io::Errno::EXIST => {
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
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(os_error(e.into(), &prefix)),
        }
        paths::open_in_root(&root, &prefix, OFlags::PATH | OFlags::DIRECTORY).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTDIR) {
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
    let st = stat_at(&dir, &name, path)?;
    if st.kind != FileType::Dir {
        return rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())
            .map_err(|e| os_error(e.into(), path));
    }
    if recursive {
        remove_tree(&dir, &name, path, 0)?;
    }
    rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::REMOVEDIR).map_err(|e| match e {
        rustix::io::Errno::NOTEMPTY => GuestError::new(
            GuestErrorKind::Conflict,
            format!("{path} is a non-empty directory (remove it recursively)"),
        ),
        e => os_error(e.into(), path),
    })
}

/// Empty the directory `name` in `parent`, never following symlinks.
fn remove_tree(parent: impl AsFd, name: &str, path: &str, depth: u32) -> OpResult {
    if depth > MAX_DEPTH {
        return Err(GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("{path}: directory tree too deep"),
        ));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::openat(&parent, name, flags, Mode::empty())
        .map_err(|e| os_error(e.into(), path))?;
    let mut names = Vec::new();
    let d = rustix::fs::Dir::read_from(&dir).map_err(|e| os_error(e.into(), path))?;
    for ent in d {
        let ent = ent.map_err(|e| os_error(e.into(), path))?;
        let n = ent.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            names.push((n, ent.file_type()));
        }
    }
    for (n, ty) in names {
        let child = paths::join(path, &n);
        if ty == rustix::fs::FileType::Directory {
            remove_tree(&dir, &n, &child, depth + 1)?;
            rustix::fs::unlinkat(&dir, n.as_str(), AtFlags::REMOVEDIR)
                .map_err(|e| os_error(e.into(), &child))?;
        } else {
            rustix::fs::unlinkat(&dir, n.as_str(), AtFlags::empty())
                .map_err(|e| os_error(e.into(), &child))?;
        }
    }
    Ok(())
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
        rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST => GuestError::new(
            GuestErrorKind::Conflict,
            format!("cannot replace {to}: it is a non-empty directory"),
        ),
        e => os_error(e.into(), format!("renaming {from} to {to}")),
    })
}
