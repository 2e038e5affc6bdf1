//! A strict, streaming tar reader for hostile input.
//!
//! It reads ustar, GNU and PAX archives as OCI layers and `docker save`
//! write them: header checksums are verified; PAX (`x`) and GNU long-name
//! (`L`, `K`) extension headers are applied to the entry they precede and
//! bounded by [`Limits::max_extension_len`]; global PAX headers (`g`) are
//! read and ignored; numeric fields are octal or base-256.
//!
//! Limits: sparse files (GNU `S` entries, `GNU.sparse.*` PAX records),
//! multi-volume and other vendor entry types are refused. Every entry and
//! every byte of entry data is charged to a [`Budget`] before it is read.
//! The archive must end with an end-of-archive (zero) block; at most
//! [`MAX_TRAILER`] bytes after it are read ([`TarReader::drain`]).

use std::io::{self, Read};

use super::input::Budget;
use super::{ArchiveError, Limits, show};

const BLOCK: usize = 512;
/// Most bytes read after the end-of-archive block (tar pads to records of
/// 10 KiB; compressors add a little).
const MAX_TRAILER: usize = 1 << 20;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Fifo,
    CharDevice,
    BlockDevice,
}

/// One entry's header, extensions applied.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Bytes of data that follow.
    pub size: u64,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Symlink or hardlink target.
    pub link: Vec<u8>,
    /// `SCHILY.xattr.*` records, in order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub device: (u64, u64),
}

/// PAX records that change the next entry.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) struct TarReader<'b, R> {
    r: R,
    limits: &'b Limits,
    budget: &'b mut Budget,
    /// Data bytes of the current entry not read yet, then its padding.
    remaining: u64,
    pad: u64,
    /// The current (or last) entry, for messages.
    current: Option<String>,
    done: bool,
}

fn malformed(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Malformed(msg.into())
}

impl<'b, R: Read> TarReader<'b, R> {
    pub fn new(r: R, limits: &'b Limits, budget: &'b mut Budget) -> Self {
        TarReader {
            r,
            limits,
            budget,
            remaining: 0,
            pad: 0,
            current: None,
            done: false,
        }
    }

    fn after(&self) -> String {
        match &self.current {
            Some(c) => format!("after entry {c}"),
            None => "before its first entry".into(),
        }
    }

    /// Read into `buf` until it is full or the input ends; the count read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(got)
    }

    /// Map a read error, naming the current entry where one of ours lacks it.
    fn read_error(&self, e: io::Error) -> ArchiveError {
        match ArchiveError::from_read(e) {
            ArchiveError::Limit {
                entry: None,
                field,
                detail,
            } => ArchiveError::Limit {
                entry: self.current.clone(),
                field,
                detail,
            },
            other => other,
        }
    }

    /// Skip `n` bytes.
    fn discard(&mut self, mut n: u64) -> Result<(), ArchiveError> {
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let want = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let got = self.fill(&mut scratch[..want])?;
            if got == 0 {
                return Err(ArchiveError::Truncated(format!(
                    "it ends inside entry {}",
                    self.current.as_deref().unwrap_or("?")
                )));
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// The next entry, or `None` at the end of the archive. Skips what is
    /// left of the previous entry's data.
    pub fn next(&mut self) -> Result<Option<Header>, ArchiveError> {
        let rest = self.remaining + self.pad;
        self.remaining = 0;
        self.pad = 0;
        self.discard(rest)?;
        if self.done {
            return Ok(None);
        }
        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut block = [0u8; BLOCK];
            match self.fill(&mut block)? {
                0 => {
                    return Err(ArchiveError::Truncated(format!(
                        "it ends {} without an end-of-archive block",
                        self.after()
                    )));
                }
                BLOCK => {}
                _ => {
                    return Err(ArchiveError::Truncated(format!(
                        "it ends inside a header {}",
                        self.after()
                    )));
                }
            }
            if block.iter().all(|b| *b == 0) {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(malformed(format!(
                        "an extension header {} describes no entry",
                        self.after()
                    )));
                }
                self.done = true;
                return Ok(None);
            }
            check_checksum(&block).map_err(|m| malformed(format!("{m} {}", self.after())))?;
            let typeflag = block[156];
            let size = numeric(&block[124..136])
                .and_then(|n| u64::try_from(n).map_err(|_| "a negative size"))
                .map_err(|m| malformed(format!("{m} in the header {}", self.after())))?;
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if size > self.limits.max_extension_len {
                        return Err(ArchiveError::Limit {
                            entry: Some(format!("{} (an extension header)", self.after())),
                            field: "max_extension_len",
                            detail: format!(
                                "a {} byte extension header (at most {} allowed)",
                                size, self.limits.max_extension_len
                            ),
                        });
                    }
                    let data = self.read_extension(size)?;
                    match typeflag {
                        b'x' => {
                            if pax.is_some() {
                                return Err(malformed(format!(
                                    "two PAX headers for one entry {}",
                                    self.after()
                                )));
                            }
                            pax = Some(parse_pax(&data).map_err(|m| {
                                malformed(format!("a PAX header {}: {m}", self.after()))
                            })?);
                        }
                        b'g' => {
                            // Global headers: validated and charged, not applied.
                            self.charge_entry()?;
                            parse_pax(&data).map_err(|m| {
                                malformed(format!("a global PAX header {}: {m}", self.after()))
                            })?;
                        }
                        b'L' => {
                            if long_name.replace(trim_nul(data)).is_some() {
                                return Err(malformed(format!(
                                    "two long names for one entry {}",
                                    self.after()
                                )));
                            }
                        }
                        _ => {
                            if long_link.replace(trim_nul(data)).is_some() {
                                return Err(malformed(format!(
                                    "two long link names for one entry {}",
                                    self.after()
                                )));
                            }
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let h = self.header(&block, size, pax.take(), long_name.take(), long_link.take())?;
            return Ok(Some(h));
        }
    }

    fn charge_entry(&mut self) -> Result<(), ArchiveError> {
        self.budget.entries += 1;
        if self.budget.entries > self.limits.max_entries {
            return Err(ArchiveError::Limit {
                entry: self.current.clone(),
                field: "max_entries",
                detail: format!("more than {} entries", self.limits.max_entries),
            });
        }
        Ok(())
    }

    /// Read an extension header's data (and its padding).
    fn read_extension(&mut self, size: u64) -> Result<Vec<u8>, ArchiveError> {
        let len = size as usize; // bounded by max_extension_len above
        let mut data = vec![0u8; len];
        if self.fill(&mut data)? < len {
            return Err(ArchiveError::Truncated(format!(
                "it ends inside an extension header {}",
                self.after()
            )));
        }
        self.discard(padding(size))?;
        Ok(data)
    }

    fn header(
        &mut self,
        block: &[u8; BLOCK],
        size: u64,
        pax: Option<Pax>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Header, ArchiveError> {
        let pax = pax.unwrap_or_default();
        let ustar = &block[257..263] == b"ustar\0";
        let path = match (pax.path, long_name) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                let name = field(&block[0..100]);
                let prefix = if ustar { field(&block[345..500]) } else { &[] };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    [prefix, b"/", name].concat()
                }
            }
        };
        let shown = show(&path);
        self.current = Some(shown.clone());
        let bad = |m: &str| malformed(format!("entry {shown}: {m}"));
        let link = match (pax.link, long_link) {
            (Some(l), _) | (None, Some(l)) => l,
            (None, None) => field(&block[157..257]).to_vec(),
        };
        let num = |range: std::ops::Range<usize>, what: &str| {
            numeric(&block[range]).map_err(|m| bad(&format!("{m} in its {what}")))
        };
        let mode =
            u32::try_from(num(100..108, "mode")?).map_err(|_| bad("its mode is invalid"))? & 0o7777;
        let nonneg = |v: i128, what: &str| {
            u64::try_from(v).map_err(|_| bad(&format!("its {what} is negative or too large")))
        };
        let uid = match pax.uid {
            Some(u) => u,
            None => nonneg(num(108..116, "uid")?, "uid")?,
        };
        let gid = match pax.gid {
            Some(g) => g,
            None => nonneg(num(116..124, "gid")?, "gid")?,
        };
        let (mtime, mtime_nsec) = match pax.mtime {
            Some(t) => t,
            None => (
                i64::try_from(num(136..148, "mtime")?).map_err(|_| bad("its mtime is invalid"))?,
                0,
            ),
        };
        let size = pax.size.unwrap_or(size);
        let typeflag = block[156];
        let kind = match typeflag {
            // Pre-POSIX archives mark directories by a trailing slash.
            b'\0' if path.ends_with(b"/") => Kind::Dir,
            b'0' | b'\0' | b'7' => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => {
                return Err(ArchiveError::Entry {
                    entry: shown,
                    reason: "sparse files are not supported".into(),
                });
            }
            other => {
                return Err(ArchiveError::Entry {
                    entry: shown,
                    reason: format!(
                        "entry type {:?} is not supported (only files, directories, symlinks, hardlinks, FIFOs and devices)",
                        other as char
                    ),
                });
            }
        };
        let device = if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
            (
                nonneg(num(329..337, "device major")?, "device major")?,
                nonneg(num(337..345, "device minor")?, "device minor")?,
            )
        } else {
            (0, 0)
        };
        self.charge_entry()?;
        self.budget.bytes = self.budget.bytes.saturating_add(size);
        if self.budget.bytes > self.limits.max_bytes {
            return Err(ArchiveError::Limit {
                entry: Some(shown),
                field: "max_bytes",
                detail: format!(
                    "its {size} bytes bring the total of file data over {}",
                    self.limits.max_bytes
                ),
            });
        }
        self.remaining = size;
        self.pad = padding(size);
        Ok(Header {
            path,
            kind,
            size,
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            link,
            xattrs: pax.xattrs,
            device,
        })
    }

    /// After the end of the archive: read (and drop) what follows, up to
    /// [`MAX_TRAILER`] bytes, so that a compressed stream is read to its
    /// end and its checksum verified. Longer trailers are left unread.
    pub fn drain(&mut self) -> Result<(), ArchiveError> {
        debug_assert!(self.done);
        let mut scratch = [0u8; 8192];
        let mut left = MAX_TRAILER;
        while left > 0 {
            let want = scratch.len().min(left);
            match self.fill(&mut scratch[..want])? {
                0 => break,
                n => left -= n,
            }
        }
        Ok(())
    }

    /// The current entry's data (what is not read of it is skipped by the
    /// next [`Self::next`]).
    pub fn data(&mut self) -> Data<'_, 'b, R> {
        Data { t: self }
    }

    /// Read the current entry's data whole, if it has at most `max` bytes.
    pub fn read_all(&mut self, max: u64) -> Result<Option<Vec<u8>>, ArchiveError> {
        if self.remaining > max {
            return Ok(None);
        }
        let mut v = Vec::with_capacity(self.remaining as usize);
        self.data()
            .read_to_end(&mut v)
            .map_err(ArchiveError::from_read)?;
        Ok(Some(v))
    }
}

/// The data of the current entry.
pub(crate) struct Data<'t, 'b, R> {
    t: &'t mut TarReader<'b, R>,
}

impl<R: Read> Read for Data<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.t.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.t.remaining).unwrap_or(usize::MAX));
        let n = loop {
            match self.t.r.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.t.read_error(e).into_io()),
            }
        };
        if n == 0 {
            return Err(ArchiveError::Truncated(format!(
                "it ends inside the data of entry {}",
                self.t.current.as_deref().unwrap_or("?")
            ))
            .into_io());
        }
        self.t.remaining -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A NUL-terminated header field.
fn field(f: &[u8]) -> &[u8] {
    match f.iter().position(|b| *b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|b| *b == 0) {
        v.truncate(i);
    }
    v
}

fn check_checksum(block: &[u8; BLOCK]) -> Result<(), &'static str> {
    let stored = numeric(&block[148..156]).map_err(|_| "a header with an unreadable checksum")?;
    let mut unsigned: i128 = 0;
    let mut signed: i128 = 0;
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += i128::from(b);
        signed += i128::from(b as i8);
    }
    if stored != unsigned && stored != signed {
        return Err("a header checksum mismatch (not a tar archive, or corrupt)");
    }
    Ok(())
}

/// A numeric header field: octal digits (space or NUL padded), or
/// base-256 when the first byte's high bit is set.
fn numeric(f: &[u8]) -> Result<i128, &'static str> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        if f.len() > 12 {
            return Err("an oversized base-256 number");
        }
        let negative = f[0] & 0x40 != 0;
        let mut v: i128 = i128::from(f[0] & 0x3f);
        if negative {
            v -= 0x40;
        }
        for b in &f[1..] {
            v = v * 256 + i128::from(*b);
        }
        return Ok(v);
    }
    let lead = f.iter().take_while(|b| **b == b' ').count();
    let body = &f[lead..];
    let used = body.iter().take_while(|b| **b != 0 && **b != b' ').count();
    let mut v: i128 = 0;
    for b in &body[..used] {
        if !(b'0'..=b'7').contains(b) {
            return Err("a number that is not octal");
        }
        v = v * 8 + i128::from(b - b'0');
    }
    // Only padding may follow the digits.
    if body[used..].iter().any(|b| *b != 0 && *b != b' ') {
        return Err("a number with trailing garbage");
    }
    Ok(v)
}

fn decimal(v: &[u8]) -> Result<u64, String> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "{:?} is not a decimal number",
            String::from_utf8_lossy(v)
        ));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{:?} is out of range", String::from_utf8_lossy(v)))
}

/// A PAX time: `[-]seconds[.fraction]`.
fn pax_time(v: &[u8]) -> Result<(i64, u32), String> {
    let bad = || format!("{:?} is not a time", String::from_utf8_lossy(v));
    let (negative, rest) = match v.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, v),
    };
    let (secs, frac) = match rest.iter().position(|b| *b == b'.') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let secs = decimal(secs).map_err(|_| bad())?;
    let secs = i64::try_from(secs).map_err(|_| bad())?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let mut nsec: u32 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    Ok(match (negative, nsec) {
        (false, _) => (secs, nsec),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Parse PAX records (`<len> <key>=<value>\n`).
fn parse_pax(data: &[u8]) -> Result<Pax, String> {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .take(21)
            .position(|b| *b == b' ')
            .ok_or("a record without a length")?;
        let len = decimal(&rest[..sp])? as usize;
        if len <= sp + 1 || len > rest.len() {
            return Err(format!("a record length of {len} does not fit"));
        }
        let record = &rest[sp + 1..len];
        rest = &rest[len..];
        let record = record
            .strip_suffix(b"\n")
            .ok_or("a record not ending in a newline")?;
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
            if name.is_empty() {
                return Err("an xattr record without a name".into());
            }
            pax.xattrs.push((name.to_vec(), value.to_vec()));
            continue;
        }
        if key.starts_with(b"GNU.sparse.") {
            return Err("sparse files are not supported".into());
        }
        // An empty value unsets the key (POSIX).
        let value = (!value.is_empty()).then_some(value);
        match key {
            b"path" => pax.path = value.map(<[u8]>::to_vec),
            b"linkpath" => pax.link = value.map(<[u8]>::to_vec),
            b"size" => pax.size = value.map(decimal).transpose()?,
            b"uid" => pax.uid = value.map(decimal).transpose()?,
            b"gid" => pax.gid = value.map(decimal).transpose()?,
            b"mtime" => pax.mtime = value.map(pax_time).transpose()?,
            _ => {} // atime, ctime, uname, gname, comment, vendor records
        }
    }
    Ok(pax)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(data: &[u8], limits: &Limits) -> Result<Vec<(Header, Vec<u8>)>, ArchiveError> {
        let mut budget = Budget::default();
        let mut t = TarReader::new(data, limits, &mut budget);
        let mut out = Vec::new();
        while let Some(h) = t.next()? {
            let mut d = Vec::new();
            t.data()
                .read_to_end(&mut d)
                .map_err(ArchiveError::from_read)?;
            out.push((h, d));
        }
        Ok(out)
    }

    fn gnu(path: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o4755);
        h.set_uid(3_000_000);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn reads_gnu_long_names_and_large_ids() {
        let long = format!("{}/file", "d".repeat(300));
        let data = gnu(&long, b"content");
        let entries = read_all(&data, &Limits::default()).unwrap();
        assert_eq!(entries.len(), 1);
        let (h, d) = &entries[0];
        assert_eq!(h.path, long.as_bytes());
        assert_eq!(h.kind, Kind::File);
        assert_eq!(h.mode, 0o4755);
        assert_eq!(h.uid, 3_000_000);
        assert_eq!(h.mtime, 1_700_000_000);
        assert_eq!(d, b"content");
    }

    #[test]
    fn pax_records() {
        let p = parse_pax(
            b"30 mtime=1700000000.123456789\n20 path=x/y/zzzzzzz\n\
              27 SCHILY.xattr.user.a=1\0b\n12 uid=4242\n11 gid=777\n",
        )
        .unwrap();
        assert_eq!(p.mtime, Some((1_700_000_000, 123_456_789)));
        assert_eq!(p.path.as_deref(), Some(&b"x/y/zzzzzzz"[..]));
        assert_eq!(p.xattrs, vec![(b"user.a".to_vec(), b"1\0b".to_vec())]);
        assert_eq!((p.uid, p.gid), (Some(4242), Some(777)));
        assert_eq!(pax_time(b"-1.5").unwrap(), (-2, 500_000_000));
        assert_eq!(pax_time(b"-3").unwrap(), (-3, 0));
        for bad in [
            &b"5 a=b\n"[..],
            b"99 path=x\n",
            b"x path=y\n",
            b"10 pathx\n",
            b"11 size=1x\n",
            b"23 GNU.sparse.size=100\n",
        ] {
            assert!(
                parse_pax(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(numeric(b"0000644\0").unwrap(), 0o644);
        assert_eq!(numeric(b"  755 \0\0").unwrap(), 0o755);
        assert_eq!(numeric(b"\0\0\0\0").unwrap(), 0);
        assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert_eq!(numeric(&[0xff; 8]).unwrap(), -1);
        assert!(numeric(b"0009\0").is_err());
        assert!(numeric(b"07 x\0").is_err());
    }

    #[test]
    fn checksum_mismatch_and_truncation() {
        let mut data = gnu("a", b"hello");
        data[0] ^= 1;
        let e = read_all(&data, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");

        let data = gnu("a", &[7u8; 2000]);
        let e = read_all(&data[..1500], &Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::Truncated(_)), "{e}");
        assert!(e.to_string().contains("\"a\""), "{e}");
        // Without the end-of-archive block.
        let e = read_all(&data[..512 + 2048], &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("end-of-archive"), "{e}");
        let e = read_all(b"", &Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::Truncated(_)), "{e}");
    }

    #[test]
    fn extension_headers_are_bounded() {
        let long = "n".repeat(5000);
        let data = gnu(&long, b"");
        let limits = Limits {
            max_extension_len: 4096,
            ..Limits::default()
        };
        let e = read_all(&data, &limits).unwrap_err();
        assert!(e.to_string().contains("max_extension_len"), "{e}");
    }

    #[test]
    fn sizes_are_charged_before_reading() {
        // A header claiming 1 TiB, with no data at all behind it.
        let mut h = tar::Header::new_gnu();
        h.set_path("big").unwrap();
        h.set_size(1 << 40);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[0u8; 1024]);
        let e = read_all(&data, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("max_bytes"), "{e}");
        assert!(e.to_string().contains("\"big\""), "{e}");
    }
}
