//! Directory upload and download as tar streams.
//!
//! Download (`tar_get`) walks by descriptor without following symlinks
//! (they are stored as symlinks). A directory's entries are named relative
//! to it (`a`, `sub/b`); a single file or symlink by its base name. Like
//! `tar --one-file-system`, directories on another mount (a sandbox's
//! `/proc`, `/sys`, `/dev`, `/tmp` when archiving `/`) are stored empty;
//! sockets, FIFOs and devices are left out.
//!
//! Upload (`tar_put`) never unpacks by path and never uses the `tar`
//! crate's own unpacking (it would follow symlinks the sandbox planted).
//! Entries with absolute names or `..` are refused outright; each entry's
//! parent is opened beneath the target directory with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so no symlink, whether in
//! the sandbox already or planted earlier in the archive, leads out of the
//! target directory (such entries are refused). An existing non-directory
//! at an entry's name is replaced, never written through; files are created
//! with `O_EXCL | O_NOFOLLOW`.
//!
//! Limits: regular files (GNU sparse ones expanded), directories, symlinks
//! (stored as they are: they resolve inside the sandbox) and hard links to
//! entries beneath the target directory are unpacked; devices, FIFOs and
//! other kinds are skipped with a logged warning. Mode bits are kept,
//! setuid and setgid included (root inside is sandboxed); mtimes are kept;
//! owners are not (everything belongs to the agent's user, root inside).
//! `max_bytes` caps both the archive read and the bytes unpacked. An upload
//! that fails part-way leaves what it unpacked so far.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};

use hull_proto::{
    FileType, Frame, GuestError, GuestErrorKind, Response, read_frame_sync, write_frame_sync,
};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::files::{self, DIR_NOFOLLOW, OpResult, internal};
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
        while !self.buf.is_empty() {
            let n = self.buf.len().min(hull_proto::CHUNK);
            let chunk: Vec<u8> = self.buf.drain(..n).collect();
            write_frame_sync(self.conn, &Frame::Data(chunk)).map_err(io::Error::other)?;
        }
        Ok(())
    }
}

fn invalid(m: String) -> GuestError {
    GuestError::new(GuestErrorKind::InvalidArgument, m)
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
                let dev = rustix::fs::fstat(&dir)
                    .map_err(|e| os_error(e.into(), path))?
                    .st_dev;
                add_dir(&mut b, &dir, dev, Path::new(""), path, 0)?;
            }
            FileType::File | FileType::Symlink => {
                let (dir, name) = paths::open_parent(&root, path)?;
                let name = OsStr::new(&name);
                add_entry(&mut b, &dir, None, name, Path::new(name), path, 0)?;
            }
            FileType::Other => {
                return Err(invalid(format!("{path} is not a file or directory")));
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
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h
}

/// Append `name` (in `dir`) as `rel`. `dev` is the device of the
/// directory being archived: a directory on another device is stored
/// without its content.
fn add_entry<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    dev: Option<u64>,
    name: &OsStr,
    rel: &Path,
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
            let size = st.st_size as u64;
            h.set_size(size);
            // A file that shrinks while archived would corrupt the stream:
            // read exactly the size announced, padding with zeros.
            let f = std::fs::File::from(fd)
                .take(size)
                .chain(io::repeat(0))
                .take(size);
            b.append_data(&mut h, rel, f).map_err(err)
        }
        FileType::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            // A trailing slash marks directories, as tar(1) writes them.
            b.append_data(&mut h, rel.join(""), io::empty())
                .map_err(err)?;
            if dev.is_some_and(|d| d != st.st_dev) {
                return Ok(());
            }
            let fd = rustix::fs::openat(dir, name, DIR_NOFOLLOW, Mode::empty())
                .map_err(|e| os_error(e.into(), path))?;
            add_dir(b, &fd, st.st_dev, rel, path, depth + 1)
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new())
                .map_err(|e| os_error(e.into(), path))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let target = Path::new(OsStr::from_bytes(target.as_bytes()));
            b.append_link(&mut h, rel, target).map_err(err)
        }
        FileType::Other => Ok(()),
    }
}

fn add_dir<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &OwnedFd,
    dev: u64,
    rel: &Path,
    path: &str,
    depth: u32,
) -> OpResult {
    if depth > files::MAX_DEPTH {
        return Err(invalid(format!(
            "{path}: directory tree deeper than {} levels",
            files::MAX_DEPTH
        )));
    }
    let mut names = files::read_names(dir, path, usize::MAX)?;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (n, _) in names {
        let child = paths::join(path, &files::shown(&n));
        add_entry(b, dir, Some(dev), &n, &rel.join(&n), &child, depth)?;
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
    /// Why reading stopped, when the stream (not the archive) was at fault.
    error: Option<GuestError>,
}

impl Read for FrameReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            let fail = |this: &mut Self, e: GuestError| {
                let msg = e.message.clone();
                this.error = Some(e);
                Err(io::Error::other(msg))
            };
            match read_frame_sync(self.conn) {
                Ok(Frame::Data(d)) => {
                    self.total = self.total.saturating_add(d.len() as u64);
                    if let Some(m) = self.max
                        && self.total > m
                    {
                        return fail(
                            self,
                            GuestError::new(
                                GuestErrorKind::ResourceExhausted,
                                format!("archive is larger than the limit of {m} bytes"),
                            ),
                        );
                    }
                    self.buf = d;
                    self.pos = 0;
                }
                Ok(Frame::Eof) => self.done = true,
                Ok(other) => {
                    let e = invalid(format!(
                        "expected data or eof, got a {} frame",
                        other.kind_name()
                    ));
                    return fail(self, e);
                }
                Err(e) => return fail(self, invalid(format!("reading the archive: {e}"))),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A relative entry path split into normal components; refuses anything else.
fn components(p: &Path) -> Result<Vec<OsString>, GuestError> {
    let mut v = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => v.push(s.to_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "archive entry {} leaves the target directory (absolute or `..`)",
                    p.display()
                )));
            }
        }
    }
    Ok(v)
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// Open the directory `comps` beneath `base`.
fn open_beneath(base: &OwnedFd, comps: &[OsString], flags: OFlags) -> io::Result<OwnedFd> {
    let mut rel = OsString::from(".");
    for c in comps {
        rel.push("/");
        rel.push(c);
    }
    paths::openat2(base, &rel, flags | OFlags::DIRECTORY, BENEATH)
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
    let result = unpack(&base, &mut reader, path, max);
    if let Err(e) = result {
        // A fault of the stream (size cap, bad frame) explains the failure
        // better than what the archive reader made of it.
        return Err(reader.error.take().unwrap_or(e));
    }
    // Drain to the host's Eof so it reads our answer, not a reset.
    let mut sink = [0u8; 8192];
    loop {
        match reader.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(reader
                    .error
                    .take()
                    .unwrap_or_else(|| internal(e.to_string())));
            }
        }
    }
    let f = Frame::control(&Response::Ok).map_err(|e| internal(e.to_string()))?;
    write_frame_sync(reader.conn, &f).map_err(|e| internal(e.to_string()))
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Remove whatever non-directory is at `name`, so it is replaced rather
/// than written through.
fn clear(dir: &OwnedFd, name: &OsStr, shown: &str) -> OpResult {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if files::file_type(st.st_mode) != FileType::Dir => {
            match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(os_error(e.into(), shown)),
            }
        }
        _ => Ok(()),
    }
}

fn mkdir_at(dir: &OwnedFd, name: &OsStr, shown: &str) -> OpResult {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(os_error(e.into(), shown)),
    }
}

fn unpack(base: &OwnedFd, reader: &mut FrameReader<'_>, path: &str, max: Option<u64>) -> OpResult {
    let bad = |e: io::Error| invalid(format!("reading the archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut dirs: Vec<(Vec<OsString>, u32, u64)> = Vec::new();
    let mut written: u64 = 0;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let entry_path: PathBuf = entry.path().map_err(bad)?.into_owned();
        let comps = components(&entry_path)?;
        let Some((name, parent)) = comps.split_last() else {
            // The target directory itself (`./`).
            continue;
        };
        let name = name.as_os_str();
        let shown = paths::join(path, &entry_path.to_string_lossy());
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let kind = h.entry_type();
        // Parents may be missing from the archive: create them.
        for i in 0..parent.len() {
            let d =
                open_beneath(base, &parent[..i], OFlags::PATH).map_err(|e| os_error(e, &shown))?;
            mkdir_at(&d, &parent[i], &shown)?;
        }
        let dir = open_beneath(base, parent, OFlags::PATH).map_err(|e| os_error(e, &shown))?;
        match kind {
            tar::EntryType::Directory => {
                clear(&dir, name, &shown)?;
                mkdir_at(&dir, name, &shown)?;
                dirs.push((comps.clone(), mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                clear(&dir, name, &shown)?;
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| match e {
                    Errno::EXIST => GuestError::new(
                        GuestErrorKind::Conflict,
                        format!("{shown}: a directory is in the way"),
                    ),
                    e => os_error(e.into(), &shown),
                })?;
                let mut f = std::fs::File::from(fd);
                let size = entry.size();
                let mut got: u64 = 0;
                let mut buf = vec![0u8; hull_proto::CHUNK];
                loop {
                    let n = entry.read(&mut buf).map_err(bad)?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                    written = written.saturating_add(n as u64);
                    if let Some(m) = max
                        && written > m
                    {
                        return Err(GuestError::new(
                            GuestErrorKind::ResourceExhausted,
                            format!("archive unpacks to more than the limit of {m} bytes"),
                        ));
                    }
                    f.write_all(&buf[..n]).map_err(|e| os_error(e, &shown))?;
                }
                if got != size {
                    return Err(invalid(format!(
                        "the archive ends inside {shown} ({got} of {size} bytes)"
                    )));
                }
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))
                    .map_err(|e| os_error(e.into(), &shown))?;
                rustix::fs::futimens(&f, &timestamps(mtime))
                    .map_err(|e| os_error(e.into(), &shown))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| invalid(format!("{shown}: symlink without a target")))?;
                clear(&dir, name, &shown)?;
                rustix::fs::symlinkat(target.as_ref(), &dir, name)
                    .map_err(|e| os_error(e.into(), &shown))?;
                // Best effort: not every filesystem keeps symlink times.
                let _ = rustix::fs::utimensat(
                    &dir,
                    name,
                    &timestamps(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| invalid(format!("{shown}: hard link without a target")))?;
                let tcomps = components(&target)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(invalid(format!("{shown}: empty hard link target")));
                };
                let tdir =
                    open_beneath(base, tparent, OFlags::PATH).map_err(|e| os_error(e, &shown))?;
                clear(&dir, name, &shown)?;
                // Without AT_SYMLINK_FOLLOW: a link to a symlink links the
                // symlink itself, never what it points to.
                rustix::fs::linkat(&tdir, tname.as_os_str(), &dir, name, AtFlags::empty())
                    .map_err(|e| os_error(e.into(), &shown))?;
            }
            other => {
                tracing::warn!(entry = %shown, kind = ?other, "skipping an archive entry that is not a file, directory or link");
            }
        }
    }
    // Directory modes and times last, so a read-only directory does not
    // block its own entries and adding entries does not bump its mtime.
    for (comps, mode, mtime) in dirs {
        let shown = paths::join(path, &PathBuf::from_iter(&comps).to_string_lossy());
        let d = open_beneath(base, &comps, OFlags::RDONLY | OFlags::NOFOLLOW)
            .map_err(|e| os_error(e, &shown))?;
        rustix::fs::fchmod(&d, Mode::from_raw_mode(mode))
            .map_err(|e| os_error(e.into(), &shown))?;
        rustix::fs::futimens(&d, &timestamps(mtime)).map_err(|e| os_error(e.into(), &shown))?;
    }
    Ok(())
}
