//! Writing a stack of overlayfs upper-style directories as one layer tar:
//! the tree overlayfs would show for the stack, as a diff that keeps its
//! deletions (see [`write_layers`]).

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use tar::{EntryType, Header};

use super::apply::{dir_names, get_xattr, list_xattrs};
use super::{ArchiveError, IdMap, io_error};

/// Deepest directory nesting an export walks.
const MAX_DEPTH: usize = 512;
const OPEN_DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const OPAQUE_NAMES: [&[u8]; 2] = [b"user.overlay.opaque", b"trusted.overlay.opaque"];
const OVERLAY_PREFIXES: [&[u8]; 2] = [b"user.overlay.", b"trusted.overlay."];
/// Bytes of file data between two progress reports.
const PROGRESS_STEP: u64 = 1 << 20;
/// The largest size a ustar header holds in octal.
const USTAR_MAX_SIZE: u64 = 0o77777777777;

/// Write the stack `layers` (overlayfs upper-style directories, nearest
/// first) to `tar` as one layer in the OCI dialect, each path under
/// `prefix` (empty, or a relative path ending in `/`, e.g. `parts/0/`).
///
/// For each path the nearest layer's entry wins. A whiteout (character
/// device 0/0) becomes `.wh.NAME` and hides the name in farther layers; a
/// directory marked opaque (`user.overlay.opaque` or
/// `trusted.overlay.opaque` = `y`) hides farther layers' copies and is
/// written with a `.wh..wh..opq` entry, as is a directory over a
/// non-directory of a farther layer (the layers below the stack must not
/// show through either). Under such a directory no whiteouts are written:
/// nothing below shows through anyway.
///
/// Owners are shifted back through `ids` (ids outside its range become
/// 65534); `user.*` attributes (not overlayfs's own) go in `SCHILY.xattr.`
/// PAX records, nanosecond times in PAX `mtime` records; an inode seen
/// twice becomes a hardlink entry. Sockets are skipped; other device nodes
/// and uppers of overlays with `redirect_dir` or `metacopy` are refused.
/// The root directory is written as `prefix` (or `./`). The directories are
/// read through handles without following symlinks; they should not change
/// meanwhile (a file that shrinks is an error).
///
/// `progress` gets the bytes of file data written so far; the total is
/// returned. The tar is not finished: the caller may append more.
pub fn write_layers<W: Write>(
    layers: &[PathBuf],
    prefix: &str,
    ids: IdMap,
    tar: &mut tar::Builder<W>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ArchiveError> {
    ids.validate()?;
    check_prefix(prefix)?;
    if layers.is_empty() {
        return Ok(0);
    }
    let mut stack = Vec::new();
    let mut opaque = false;
    for (i, l) in layers.iter().enumerate() {
        let fd = rustix::fs::open(l, OPEN_DIR, Mode::empty())
            .map_err(|e| io_error("opening the layer", l)(e.into()))?;
        let op = is_opaque(&fd).map_err(io_error("reading the extended attributes of", l))?;
        stack.push((i, fd));
        if op {
            opaque = true;
            break;
        }
    }
    let mut ex = Exporter {
        tar,
        prefix: prefix.as_bytes().to_vec(),
        ids,
        layers,
        links: HashMap::new(),
        bytes: 0,
        reported: 0,
        progress,
    };
    let root_st =
        rustix::fs::fstat(&stack[0].1).map_err(|e| io_error("reading", &layers[0])(e.into()))?;
    let node = ex.node(&root_st, Some(&stack[0].1), &layers[0])?;
    let root_path = if prefix.is_empty() {
        b"./".to_vec()
    } else {
        prefix.as_bytes().to_vec()
    };
    ex.append(
        &root_path,
        EntryType::Directory,
        &node,
        0,
        None,
        &mut io::empty(),
    )?;
    if opaque {
        ex.opaque_marker(b"", &node)?;
    }
    ex.dir(b"", &stack, opaque, 0)?;
    (ex.progress)(ex.bytes);
    Ok(ex.bytes)
}

/// `prefix` must be empty or a clean relative path ending in `/`.
fn check_prefix(prefix: &str) -> Result<(), ArchiveError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let bad = prefix.starts_with('/')
        || !prefix.ends_with('/')
        || prefix.contains('\0')
        || prefix[..prefix.len() - 1]
            .split('/')
            .any(|c| matches!(c, "" | "." | ".."));
    if bad {
        return Err(ArchiveError::InvalidArgument(format!(
            "tar prefix {prefix:?} must be empty or a relative path of plain names ending in '/'"
        )));
    }
    Ok(())
}

/// Does this directory carry overlayfs's opaque marker (`y`, in either
/// namespace)?
pub(crate) fn is_opaque(fd: &OwnedFd) -> io::Result<bool> {
    for name in OPAQUE_NAMES {
        if get_xattr(fd, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Metadata of one node as written.
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    nsec: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Exporter<'a, W: Write> {
    tar: &'a mut tar::Builder<W>,
    prefix: Vec<u8>,
    ids: IdMap,
    layers: &'a [PathBuf],
    /// (dev, ino) of multiply-linked nodes written -> their archive path.
    links: HashMap<(u64, u64), Vec<u8>>,
    bytes: u64,
    reported: u64,
    progress: &'a mut dyn FnMut(u64),
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        name.to_vec()
    } else {
        [rel, b"/", name].concat()
    }
}

impl<W: Write> Exporter<'_, W> {
    fn full(&self, rel: &[u8]) -> Vec<u8> {
        [&self.prefix[..], rel].concat()
    }

    fn host_path(&self, layer: usize, rel: &[u8]) -> PathBuf {
        self.layers[layer].join(OsStr::from_bytes(rel))
    }

    fn node(&self, st: &Stat, fd: Option<&OwnedFd>, path: &Path) -> Result<Node, ArchiveError> {
        let mut xattrs = Vec::new();
        if let Some(fd) = fd {
            let list =
                list_xattrs(fd).map_err(io_error("listing the extended attributes of", path))?;
            for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                if let Some(rest) = OVERLAY_PREFIXES.iter().find_map(|p| name.strip_prefix(*p)) {
                    if matches!(rest, b"redirect" | b"metacopy") {
                        return Err(ArchiveError::InvalidArgument(format!(
                            "{} has overlayfs's {:?} attribute: uppers of overlays mounted with \
                             redirect_dir or metacopy cannot be exported",
                            path.display(),
                            String::from_utf8_lossy(name)
                        )));
                    }
                    continue;
                }
                if !name.starts_with(b"user.") {
                    continue;
                }
                if let Some(v) = get_xattr(fd, name)
                    .map_err(io_error("reading the extended attributes of", path))?
                {
                    xattrs.push((name.to_vec(), v));
                }
            }
        }
        Ok(Node {
            mode: st.st_mode & 0o7777,
            uid: self.ids.to_archive(st.st_uid),
            gid: self.ids.to_archive(st.st_gid),
            mtime: st.st_mtime,
            nsec: st.st_mtime_nsec as u32,
            xattrs,
        })
    }

    fn opaque_marker(&mut self, rel: &[u8], dir: &Node) -> Result<(), ArchiveError> {
        let path = self.full(&join(rel, b".wh..wh..opq"));
        let node = Node {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: dir.mtime,
            nsec: 0,
            xattrs: Vec::new(),
        };
        self.append(&path, EntryType::Regular, &node, 0, None, &mut io::empty())
    }

    /// Write the merged directory `rel`, seen in `stack` (nearest first,
    /// each the directory's handle in one layer). `covered`: an enclosing
    /// directory was written opaque.
    fn dir(
        &mut self,
        rel: &[u8],
        stack: &[(usize, OwnedFd)],
        covered: bool,
        depth: usize,
    ) -> Result<(), ArchiveError> {
        if depth >= MAX_DEPTH {
            return Err(ArchiveError::InvalidArgument(format!(
                "{} is nested more than {MAX_DEPTH} directories deep",
                self.host_path(stack[0].0, rel).display()
            )));
        }
        let mut names = BTreeSet::new();
        for (li, fd) in stack {
            names.extend(dir_names(fd).map_err(io_error("listing", &self.host_path(*li, rel)))?);
        }
        for name in names {
            let child = join(rel, name.to_bytes());
            let mut found = None;
            for (k, (li, fd)) in stack.iter().enumerate() {
                match rustix::fs::statat(fd, &*name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => {
                        found = Some((k, st));
                        break;
                    }
                    Err(Errno::NOENT) => {}
                    Err(e) => {
                        return Err(io_error("reading", &self.host_path(*li, &child))(e.into()));
                    }
                }
            }
            let Some((k, st)) = found else { continue };
            let (li, fd) = (&stack[k].0, &stack[k].1);
            let hpath = self.host_path(*li, &child);
            let ft = FileType::from_raw_mode(st.st_mode);
            match ft {
                FileType::CharacterDevice if st.st_rdev == 0 => {
                    if !covered {
                        let wh = join(rel, &[b".wh.", name.to_bytes()].concat());
                        let node = self.node(&st, None, &hpath)?;
                        let path = self.full(&wh);
                        self.append(&path, EntryType::Regular, &node, 0, None, &mut io::empty())?;
                    }
                }
                FileType::Directory => {
                    let mut sub = Vec::new();
                    let mut hide = false;
                    for (lj, fdj) in &stack[k..] {
                        let sj = match rustix::fs::statat(fdj, &*name, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(s) => s,
                            Err(Errno::NOENT) => continue,
                            Err(e) => {
                                return Err(io_error("reading", &self.host_path(*lj, &child))(
                                    e.into(),
                                ));
                            }
                        };
                        if FileType::from_raw_mode(sj.st_mode) != FileType::Directory {
                            // A farther layer's non-directory (or whiteout)
                            // under this directory: nothing farther merges.
                            hide = true;
                            break;
                        }
                        let sfd = rustix::fs::openat(fdj, &*name, OPEN_DIR, Mode::empty())
                            .map_err(|e| {
                                io_error("opening", &self.host_path(*lj, &child))(e.into())
                            })?;
                        let opaque = is_opaque(&sfd).map_err(io_error(
                            "reading the extended attributes of",
                            &self.host_path(*lj, &child),
                        ))?;
                        sub.push((*lj, sfd));
                        if opaque {
                            hide = true;
                            break;
                        }
                    }
                    let sst = rustix::fs::fstat(&sub[0].1)
                        .map_err(|e| io_error("reading", &hpath)(e.into()))?;
                    if sst.st_ino != st.st_ino || sst.st_dev != st.st_dev {
                        return Err(changed(&hpath));
                    }
                    let node = self.node(&sst, Some(&sub[0].1), &hpath)?;
                    let mut path = self.full(&child);
                    path.push(b'/');
                    self.append(
                        &path,
                        EntryType::Directory,
                        &node,
                        0,
                        None,
                        &mut io::empty(),
                    )?;
                    let mark = hide && !covered;
                    if mark {
                        self.opaque_marker(&child, &node)?;
                    }
                    self.dir(&child, &sub, covered || mark, depth + 1)?;
                }
                FileType::RegularFile | FileType::Symlink | FileType::Fifo => {
                    self.leaf(fd, &name, &st, ft, &child, &hpath)?;
                }
                FileType::Socket => {
                    tracing::debug!(path = %hpath.display(), "skipping a socket: tar cannot hold it");
                }
                _ => {
                    return Err(ArchiveError::InvalidArgument(format!(
                        "{} is a device node; a layer may hold only whiteouts (character devices 0/0)",
                        hpath.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Write a file, symlink or FIFO (or a hardlink to an earlier one).
    fn leaf(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        st: &Stat,
        ft: FileType,
        rel: &[u8],
        hpath: &Path,
    ) -> Result<(), ArchiveError> {
        let path = self.full(rel);
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                let node = self.node(st, None, hpath)?;
                return self.append(
                    &path,
                    EntryType::Link,
                    &node,
                    0,
                    Some(&first),
                    &mut io::empty(),
                );
            }
            self.links.insert(key, path.clone());
        }
        match ft {
            FileType::RegularFile => {
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::NONBLOCK
                        | OFlags::NOCTTY
                        | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_error("opening", hpath)(e.into()))?;
                let fst =
                    rustix::fs::fstat(&fd).map_err(|e| io_error("reading", hpath)(e.into()))?;
                if fst.st_ino != st.st_ino
                    || fst.st_dev != st.st_dev
                    || FileType::from_raw_mode(fst.st_mode) != FileType::RegularFile
                {
                    return Err(changed(hpath));
                }
                let node = self.node(&fst, Some(&fd), hpath)?;
                let size = fst.st_size as u64;
                let mut data = FileData {
                    fd: &fd,
                    off: 0,
                    size,
                    path: hpath,
                };
                let before = self.bytes;
                self.append(&path, EntryType::Regular, &node, size, None, &mut data)?;
                self.bytes = before + size;
                if self.bytes >= self.reported + PROGRESS_STEP {
                    self.reported = self.bytes;
                    (self.progress)(self.bytes);
                }
                Ok(())
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| io_error("reading", hpath)(e.into()))?;
                let node = self.node(st, None, hpath)?;
                self.append(
                    &path,
                    EntryType::Symlink,
                    &node,
                    0,
                    Some(target.as_bytes()),
                    &mut io::empty(),
                )
            }
            _ => {
                let node = self.node(st, None, hpath)?;
                self.append(&path, EntryType::Fifo, &node, 0, None, &mut io::empty())
            }
        }
    }

    /// Append one entry, with a PAX header first when it needs one.
    fn append(
        &mut self,
        path: &[u8],
        ty: EntryType,
        node: &Node,
        size: u64,
        link: Option<&[u8]>,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let mut pax = Vec::new();
        if path.len() > 100 {
            pax_record(&mut pax, b"path", path);
        }
        if let Some(l) = link
            && l.len() > 100
        {
            pax_record(&mut pax, b"linkpath", l);
        }
        if node.nsec != 0 || node.mtime < 0 {
            pax_record(
                &mut pax,
                b"mtime",
                pax_time(node.mtime, node.nsec).as_bytes(),
            );
        }
        if size > USTAR_MAX_SIZE {
            pax_record(&mut pax, b"size", size.to_string().as_bytes());
        }
        for (name, value) in &node.xattrs {
            pax_record(&mut pax, &[b"SCHILY.xattr.", &name[..]].concat(), value);
        }
        if !pax.is_empty() {
            let mut ph = Header::new_ustar();
            copy_field(&mut ph.as_old_mut().name, b"././@PaxHeader");
            ph.set_entry_type(EntryType::XHeader);
            ph.set_size(pax.len() as u64);
            ph.set_mode(0o644);
            ph.set_mtime(0);
            ph.set_cksum();
            self.tar.append(&ph, &pax[..]).map_err(write_error)?;
        }
        let mut h = Header::new_ustar();
        copy_field(&mut h.as_old_mut().name, path);
        if let Some(l) = link {
            copy_field(&mut h.as_old_mut().linkname, l);
        }
        h.set_entry_type(ty);
        h.set_mode(node.mode);
        h.set_uid(u64::from(node.uid));
        h.set_gid(u64::from(node.gid));
        h.set_mtime(node.mtime.max(0) as u64);
        h.set_size(size);
        h.set_cksum();
        self.tar.append(&h, data).map_err(write_error)
    }
}

fn write_error(e: io::Error) -> ArchiveError {
    ArchiveError::unwrap_io(e).unwrap_or_else(ArchiveError::Write)
}

fn changed(path: &Path) -> ArchiveError {
    ArchiveError::InvalidArgument(format!(
        "{} changed while being exported (is the sandbox frozen?)",
        path.display()
    ))
}

/// Copy as much of `value` as fits into a header field (the rest goes in
/// a PAX record).
fn copy_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Append the PAX record `<len> <key>=<value>\n`.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + base.to_string().len();
    if len.to_string().len() + base != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time, `[-]seconds.nanoseconds`.
fn pax_time(sec: i64, nsec: u32) -> String {
    if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else if nsec == 0 {
        format!("{sec}")
    } else {
        format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec)
    }
}

/// Exactly `size` bytes of an open file; an error if it shrank.
struct FileData<'a> {
    fd: &'a OwnedFd,
    off: u64,
    size: u64,
    path: &'a Path,
}

impl Read for FileData<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.off >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.size - self.off).unwrap_or(usize::MAX));
        loop {
            match rustix::io::pread(self.fd, &mut buf[..want], self.off) {
                Ok(0) => return Err(changed(self.path).into_io()),
                Ok(n) => {
                    self.off += n as u64;
                    return Ok(n);
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(io_error("reading", self.path)(e.into()).into_io()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_have_exact_lengths() {
        for (k, v) in [
            ("path", "x".to_string()),
            ("path", "x".repeat(3)),
            ("path", "x".repeat(4)),
            ("path", "x".repeat(89)),
            ("path", "x".repeat(90)),
            ("path", "x".repeat(992)),
            ("path", "x".repeat(993)),
            ("path", "x".repeat(994)),
        ] {
            let mut out = Vec::new();
            pax_record(&mut out, k.as_bytes(), v.as_bytes());
            let sp = out.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(5, 7), "5.000000007");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax_time(-3, 0), "-3");
    }

    #[test]
    fn prefixes() {
        for ok in ["", "parts/0/", "a/"] {
            check_prefix(ok).unwrap();
        }
        for bad in ["/a/", "a", "../", "a//", "./", "a/../"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
