//! Directory upload and download as tar streams.
//!
//! Download (`tar_get`) walks by descriptor without following symlinks
//! (they are stored as symlinks); a directory's entries are named relative
//! to it (`./a`, `sub/b`), a single file by its base name. Upload
//! (`tar_put`) never unpacks by path: each entry's parent is opened beneath
//! the target directory with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so
//! neither `..`, absolute names nor symlinks planted earlier in the archive
//! or in the sandbox lead out of it; entries with absolute names or `..`
//! are refused outright.
//!
//! Limits: regular files, directories, symlinks and hard links (to earlier
//! entries) are unpacked; devices and FIFOs are skipped. Mode bits and
//! mtimes are kept; owners are not (files belong to the agent's user).
//! The archive size is capped by `max_bytes`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path};

use hull_proto::{
    FileType, Frame, GuestError, GuestErrorKind, Response, read_frame_sync, write_frame_sync,
};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use super::files::{self, OpResult, internal};
use super::{os_error, paths};

/// Buffers output into `Data` frames.
struct FrameWriter<'a> {
    conn: &'a mut UnixStream,
    buf: Vec<u8>,
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= hull_proto::CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            write_frame_sync(self.conn, &Frame::Data(chunk)).map_err(io::Error::other)?;
        }
        Ok(())
    }
}

pub(crate) fn get(root: impl AsFd, conn: &mut UnixStream, path: &str) -> OpResult {
    let st = files::stat(&root, path)?;
    let mut w = FrameWriter {
        conn,
        buf: Vec::new(),
    };
    {
        let mut b = tar::Builder::new(&mut w);
        b.follow_symlinks(false);
        match st.kind {
            FileType::Dir => {
                let dir = paths::open_in_root(&root, path, OFlags::RDONLY | OFlags::DIRECTORY)
                    .map_err(|e| os_error(e, path))?;
                add_dir(&mut b, &dir, "", path, 0)?;
            }
            FileType::File | FileType::Symlink => {
                let (dir, name) = paths::open_parent(&root, path)?;
                add_entry(&mut b, &dir, &name, &name, path, 0)?;
            }
            FileType::Other => {
                return Err(GuestError::new(
                    GuestErrorKind::InvalidArgument,
                    format!("{path} is not a file or directory"),
                ));
            }
        }
        b.finish()
            .map_err(|e| internal(format!("writing the archive: {e}")))?;
    }
    w.flush().map_err(|e| internal(e.to_string()))?;
    write_frame_sync(w.conn, &Frame::Eof).map_err(|e| internal(e.to_string()))
}

fn header_for(st: &rustix::fs::Stat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h
}

fn add_entry<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    name: &str,
    rel: &str,
    path: &str,
    depth: u32,
) -> OpResult {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| os_error(e.into(), path))?;
    let mut h = header_for(&st);
    let err = |e: io::Error| internal(format!("archiving {path}: {e}"));
    match files::file_type(st.st_mode) {
        FileType::File => {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(|e| os_error(e.into(), path))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(st.st_size as u64);
            // A file that shrinks while archived would corrupt the stream:
            // read exactly the size announced, padding with zeros.
            let f = std::fs::File::from(fd)
                .take(st.st_size as u64)
                .chain(io::repeat(0))
                .take(st.st_size as u64);
            b.append_data(&mut h, rel, f).map_err(err)
        }
        FileType::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("{rel}/"), io::empty())
                .map_err(err)?;
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| os_error(e.into(), path))?;
            add_dir(b, &fd, rel, path, depth + 1)
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new())
                .map_err(|e| os_error(e.into(), path))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, rel, target.to_string_lossy().as_ref())
                .map_err(err)
        }
        FileType::Other => Ok(()),
    }
}

fn add_dir<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    rel: &str,
    path: &str,
    depth: u32,
) -> OpResult {
    if depth > files::MAX_DEPTH {
        return Err(GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("{path}: directory tree too deep"),
        ));
    }
    let mut names = Vec::new();
    let d = rustix::fs::Dir::read_from(dir).map_err(|e| os_error(e.into(), path))?;
    for ent in d {
        let ent = ent.map_err(|e| os_error(e.into(), path))?;
        let n = ent.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            names.push(n);
        }
    }
    names.sort();
    for n in names {
        let child_rel = if rel.is_empty() {
            n.clone()
        } else {
            format!("{rel}/{n}")
        };
        add_entry(b, dir, &n, &child_rel, &paths::join(path, &n), depth)?;
    }
    Ok(())
}

/// Reads `Data` frames up to `Eof`, enforcing the size cap.
struct FrameReader<'a> {
    conn: &'a mut UnixStream,
    buf: Vec<u8>,
    pos: usize,
    total: u64,
    max: Option<u64>,
    done: bool,
    error: Option<GuestError>,
}

impl Read for FrameReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match read_frame_sync(self.conn) {
                Ok(Frame::Data(d)) => {
                    self.total += d.len() as u64;
                    if let Some(m) = self.max
                        && self.total > m
                    {
                        self.error = Some(GuestError::new(
                            GuestErrorKind::ResourceExhausted,
                            format!("archive is larger than the limit of {m} bytes"),
                        ));
                        return Err(io::Error::other("archive too large"));
                    }
                    self.buf = d;
                    self.pos = 0;
                }
                Ok(Frame::Eof) => self.done = true,
                Ok(other) => {
                    return Err(io::Error::other(format!(
                        "expected data or eof, got a {} frame",
                        other.kind_name()
                    )));
                }
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A relative entry path split into normal components; refuses anything else.
fn components(p: &Path) -> Result<Vec<String>, GuestError> {
    let mut v = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => v.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => {
                return Err(GuestError::new(
                    GuestErrorKind::InvalidArgument,
                    format!(
                        "archive entry {} leaves the target directory (absolute or `..`)",
                        p.display()
                    ),
                ));
            }
        }
    }
    Ok(v)
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// Open the directory `comps` beneath `base`.
fn open_beneath(base: &OwnedFd, comps: &[String]) -> io::Result<OwnedFd> {
    let rel = if comps.is_empty() {
        ".".to_string()
    } else {
        comps.join("/")
    };
    Ok(rustix::fs::openat2(
        base,
        rel.as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )?)
}

pub(crate) fn put(
    root: impl AsFd,
    conn: &mut UnixStream,
    path: &str,
    max: Option<u64>,
) -> OpResult {
    files::mkdir(&root, path, true, 0o755)?;
    let base = paths::open_in_root(&root, path, OFlags::PATH | OFlags::DIRECTORY)
        .map_err(|e| os_error(e, path))?;
    let mut reader = FrameReader {
        conn,
        buf: Vec::new(),
        pos: 0,
        total: 0,
        max,
        done: false,
        error: None,
    };
    let result = unpack(&base, &mut reader, path);
    let result = match (result, reader.error.take()) {
        (Err(_), Some(e)) => Err(e),
        (r, _) => r,
    };
    result?;
    // Drain to the end so the host sees our answer, not a reset.
    let mut sink = [0u8; 8192];
    while reader
        .read(&mut sink)
        .map_err(|e| internal(e.to_string()))?
        > 0
    {}
    let conn = reader.conn;
    let f = Frame::control(&Response::Ok).map_err(|e| internal(e.to_string()))?;
    write_frame_sync(conn, &f).map_err(|e| internal(e.to_string()))
}

fn unpack(base: &OwnedFd, reader: &mut FrameReader<'_>, path: &str) -> OpResult {
    let bad = |e: io::Error| {
        GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("reading the archive: {e}"),
        )
    };
    let mut archive = tar::Archive::new(reader);
    let mut dir_modes: Vec<(Vec<String>, u32)> = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let entry_path = entry.path().map_err(bad)?.into_owned();
        let comps = components(&entry_path)?;
        let Some((name, parent)) = comps.split_last() else {
            continue;
        };
        let shown = paths::join(path, &comps.join("/"));
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let kind = h.entry_type();
        // Parents may be missing from the archive: create them.
        let mut cur = Vec::new();
        for c in parent {
            cur.push(c.clone());
            let d = open_beneath(base, &cur[..cur.len() - 1]).map_err(|e| os_error(e, &shown))?;
            match rustix::fs::mkdirat(&d, c.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(os_error(e.into(), &shown)),
            }
        }
        let dir = open_beneath(base, parent).map_err(|e| os_error(e, &shown))?;
        let replace = |dir: &OwnedFd| {
            if let Ok(st) = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                && files::file_type(st.st_mode) != FileType::Dir
            {
                let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
            }
        };
        match kind {
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(os_error(e.into(), &shown)),
                }
                dir_modes.push((comps.clone(), mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                replace(&dir);
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::TRUNC
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| os_error(e.into(), &shown))?;
                let mut f = std::fs::File::from(fd);
                io::copy(&mut entry, &mut f).map_err(bad)?;
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
                    .map_err(|e| os_error(e.into(), &shown))?;
                let t = rustix::fs::Timespec {
                    tv_sec: mtime as i64,
                    tv_nsec: 0,
                };
                let _ = rustix::fs::futimens(
                    &f,
                    &rustix::fs::Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                );
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| bad(io::Error::other("symlink without target")))?;
                replace(&dir);
                rustix::fs::symlinkat(target.as_ref(), &dir, name.as_str())
                    .map_err(|e| os_error(e.into(), &shown))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| bad(io::Error::other("hard link without target")))?;
                let tcomps = components(&target)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(GuestError::new(
                        GuestErrorKind::InvalidArgument,
                        format!("{shown}: empty hard link target"),
                    ));
                };
                let tdir = open_beneath(base, tparent).map_err(|e| os_error(e, &shown))?;
                replace(&dir);
                rustix::fs::linkat(&tdir, tname.as_str(), &dir, name.as_str(), AtFlags::empty())
                    .map_err(|e| os_error(e.into(), &shown))?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                tracing::warn!(entry = %shown, kind = ?other, "skipping an archive entry that is not a file, directory or link")
            }
        }
    }
    // Directory modes last, so a read-only directory doesn't block its own entries.
    for (comps, mode) in dir_modes {
        if let Ok(d) = open_beneath(base, &comps) {
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&d));
            let _ =
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode));
        }
    }
    Ok(())
}
