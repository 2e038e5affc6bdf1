//! Image archives for `hull bench --snapshots`: a `docker save`-style tar
//! holding one layer with busybox and a generated tree of `files` files
//! totalling `bytes` bytes, spread over nested directories, written to disk
//! as it is generated (memory stays at a few MiB whatever the size).
//!
//! File data is real bytes (a pseudo-random pattern, never all-zero
//! blocks, which an importer could store as holes); it is not meant to be
//! incompressible and files share content at different offsets. Sizes
//! vary between half and one and a half times the mean, in pairs, so the
//! total is exact.
//!
//! The layer is written once: into the final archive after a placeholder
//! header that is filled in when the layer's size and digest are known.
//! Digests come from `sha256sum` (coreutils) fed through a pipe as the
//! layer is written, since this crate has no hashing dependency. Limits:
//! one layer, an uncompressed archive, paths under 100 bytes (ustar).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context, bail};

/// Files per leaf directory of the generated tree.
const FILES_PER_DIR: u64 = 100;
/// Leaf directories per middle directory.
const DIRS_PER_DIR: u64 = 16;
/// The repeating source of file data.
const PATTERN_LEN: usize = 8 << 20;
/// Modification time of every entry (a fixed instant: reproducible archives).
const MTIME: u64 = 1_700_000_000;
/// Busybox applets linked in `/bin` (enough for the benchmark's scripts).
const APPLETS: &[&str] = &[
    "sh", "true", "false", "head", "cat", "wc", "mkdir", "rm", "ls", "echo", "sync", "test", "[",
    "du", "find", "stat", "sleep", "env", "id", "pwd", "md5sum",
];

/// What to put in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeSpec {
    /// Bytes of file data in the generated tree (busybox not counted).
    pub bytes: u64,
    /// Number of files in the generated tree.
    pub files: u64,
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStats {
    /// Size of the archive file.
    pub archive_bytes: u64,
    /// `sha256:<hex>` of the layer (its diff id).
    pub layer_digest: String,
    /// Regular files in the layer, busybox and `/etc` included.
    pub files: u64,
}

/// `sha256sum` as a [`Write`]: bytes written are piped to it;
/// [`Sha256Sum::finish`] returns the hex digest.
pub struct Sha256Sum {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Sha256Sum {
    pub fn new() -> anyhow::Result<Sha256Sum> {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running sha256sum (coreutils)")?;
        let stdin = child.stdin.take();
        Ok(Sha256Sum { child, stdin })
    }

    pub fn finish(mut self) -> anyhow::Result<String> {
        drop(self.stdin.take());
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out)
                .context("reading sha256sum's output")?;
        }
        let st = self.child.wait().context("waiting for sha256sum")?;
        let hex = out.split_whitespace().next().unwrap_or_default();
        if !st.success() || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("sha256sum failed ({st}): {out:?}");
        }
        Ok(hex.to_ascii_lowercase())
    }
}

impl Write for Sha256Sum {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stdin {
            Some(s) => s.write(buf),
            None => Err(io::Error::other("sha256sum already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Sha256Sum {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The sha256 of a small buffer, as hex.
fn sha256_hex(data: &[u8]) -> anyhow::Result<String> {
    let mut h = Sha256Sum::new()?;
    h.write_all(data).context("piping to sha256sum")?;
    h.finish()
}

/// Writes to a file and to a hasher, counting.
struct Tee<'a> {
    file: &'a mut BufWriter<File>,
    hash: BufWriter<Sha256Sum>,
    n: u64,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.write_all(&buf[..n])?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.hash.flush()
    }
}

/// A pseudo-random buffer (xorshift64*): the source of every file's data.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `left` bytes of `buf` read cyclically from `pos`.
pub(crate) struct Cyclic<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u64,
}

impl<'a> Cyclic<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize, left: u64) -> Self {
        Cyclic {
            buf,
            pos: pos % buf.len(),
            left,
        }
    }
}

impl Read for Cyclic<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = (self.buf.len() - self.pos)
            .min(out.len())
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.buf.len();
        self.left -= n as u64;
        Ok(n)
    }
}

/// The size of file `i` of `spec`: pairs of files deviate from the mean by
/// the same amount in opposite directions; the remainder goes to file 0.
pub fn file_size(spec: TreeSpec, i: u64) -> u64 {
    let mean = spec.bytes / spec.files;
    let extra = spec.bytes % spec.files;
    let pair = i / 2;
    let delta = if mean < 2 || (spec.files % 2 == 1 && i == spec.files - 1) {
        0
    } else {
        pair.wrapping_mul(2_654_435_761) % (mean / 2)
    };
    let base = if i.is_multiple_of(2) {
        mean - delta
    } else {
        mean + delta
    };
    base + if i == 0 { extra } else { 0 }
}

/// The directory of file `i` (no trailing slash), and the file's path.
fn file_path(i: u64) -> (String, String) {
    let leaf = i / FILES_PER_DIR;
    let dir = format!(
        "data/d{:03}/d{:02}",
        leaf / DIRS_PER_DIR,
        leaf % DIRS_PER_DIR
    );
    let path = format!("{dir}/f{i:06}");
    (dir, path)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, path, io::empty())
}

fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, size);
    b.append_data(&mut h, path, data)
}

/// The layer's entries: busybox and its applets, `/etc/passwd` and
/// `/etc/group`, then the tree. Returns the number of regular files.
fn write_layer<W: Write>(b: &mut tar::Builder<W>, spec: TreeSpec) -> anyhow::Result<u64> {
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (apt-get install busybox-static)")?;
    append_dir(b, "bin")?;
    append_file(b, "bin/busybox", 0o755, busybox.len() as u64, &busybox[..])?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    append_dir(b, "etc")?;
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    append_file(b, "etc/passwd", 0o644, passwd.len() as u64, &passwd[..])?;
    let group = b"root:x:0:\n";
    append_file(b, "etc/group", 0o644, group.len() as u64, &group[..])?;
    append_dir(b, "root")?;
    append_dir(b, "data")?;
    let pat = pattern(PATTERN_LEN);
    let (mut top, mut leaf) = (String::new(), String::new());
    for i in 0..spec.files {
        let (dir, path) = file_path(i);
        if dir != leaf {
            let t = &dir[..dir.rfind('/').unwrap_or(dir.len())];
            if t != top {
                append_dir(b, t)?;
                top = t.to_string();
            }
            append_dir(b, &dir)?;
            leaf = dir;
        }
        let size = file_size(spec, i);
        // Offsets a multiple of 8 apart, different for every file.
        let pos = (i.wrapping_mul(1_000_003) as usize * 8) % PATTERN_LEN;
        let data = Cyclic::new(&pat, pos, size);
        append_file(b, &path, 0o644, size, data)?;
    }
    Ok(spec.files + 3)
}

/// Write a `docker save`-style archive (blobs under `blobs/sha256/`, as
/// docker 25 writes them) of one image named `hull-bench/<tag>:latest`
/// holding [`write_layer`]'s layer, to `out`.
pub fn write_image(out: &Path, tag: &str, spec: TreeSpec) -> anyhow::Result<ImageStats> {
    anyhow::ensure!(spec.files >= 1, "the tree needs at least one file");
    let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    // The layer's header, filled in below.
    w.write_all(&[0u8; 512])?;
    let tee = Tee {
        file: &mut w,
        hash: BufWriter::with_capacity(1 << 20, Sha256Sum::new()?),
        n: 0,
    };
    let mut layer = tar::Builder::new(tee);
    let files = write_layer(&mut layer, spec)
        .with_context(|| format!("writing the layer to {}", out.display()))?;
    let tee = layer.into_inner()?;
    let layer_len = tee.n;
    let hex = tee
        .hash
        .into_inner()
        .map_err(|e| anyhow::anyhow!("piping to sha256sum: {}", e.error()))?
        .finish()?;
    let pad = (512 - layer_len % 512) % 512;
    w.write_all(&vec![0u8; pad as usize])?;
    let mut f = w.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(0))?;
    let mut h = header(tar::EntryType::Regular, 0o644, layer_len);
    h.set_path(format!("blobs/sha256/{hex}"))?;
    h.set_cksum();
    f.write_all(h.as_bytes())?;
    f.seek(SeekFrom::End(0))?;

    let diff_id = format!("sha256:{hex}");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string()
    .into_bytes();
    let config_hex = sha256_hex(&config)?;
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{config_hex}"),
        "RepoTags": [format!("hull-bench/{tag}:latest")],
        "Layers": [format!("blobs/sha256/{hex}")],
    }])
    .to_string()
    .into_bytes();
    let mut rest = tar::Builder::new(BufWriter::new(f));
    append_file(
        &mut rest,
        &format!("blobs/sha256/{config_hex}"),
        0o644,
        config.len() as u64,
        &config[..],
    )?;
    append_file(
        &mut rest,
        "manifest.json",
        0o644,
        manifest.len() as u64,
        &manifest[..],
    )?;
    let mut f = rest
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    f.flush()?;
    let archive_bytes = f.stream_position()?;
    Ok(ImageStats {
        archive_bytes,
        layer_digest: diff_id,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_add_up_and_vary() {
        for (bytes, files) in [(1u64 << 30, 20_000u64), (10 << 20, 195), (1000, 7), (5, 9)] {
            let spec = TreeSpec { bytes, files };
            let sizes: Vec<u64> = (0..files).map(|i| file_size(spec, i)).collect();
            assert_eq!(sizes.iter().sum::<u64>(), bytes, "{spec:?}");
        }
        let spec = TreeSpec {
            bytes: 1 << 30,
            files: 20_000,
        };
        let (min, max) = (0..spec.files)
            .map(|i| file_size(spec, i))
            .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
        let mean = spec.bytes / spec.files;
        assert!(
            min >= mean / 2 && max <= mean * 3 / 2 + spec.files,
            "{min} {max}"
        );
        assert!(max - min > mean / 2, "sizes should vary: {min} {max}");
    }

    #[test]
    fn paths_nest() {
        assert_eq!(file_path(0).1, "data/d000/d00/f000000");
        assert_eq!(file_path(1_650).1, "data/d001/d00/f001650");
        assert!(file_path(19_999).1.len() < 100);
    }

    #[test]
    fn sha256sum_of_abc() {
        assert_eq!(
            sha256_hex(b"abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// The archive reads back: a manifest naming the config and layer by
    /// digest, a layer whose digest matches and whose tree has the files
    /// and bytes asked for, with no all-zero file.
    #[test]
    fn image_reads_back() {
        if !Path::new("/bin/busybox").exists() {
            eprintln!("skipped: no /bin/busybox");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.tar");
        let spec = TreeSpec {
            bytes: 300_000,
            files: 250,
        };
        let st = write_image(&out, "t", spec).unwrap();
        assert_eq!(st.archive_bytes, std::fs::metadata(&out).unwrap().len());
        assert_eq!(st.files, 253);
        let mut ar = tar::Archive::new(File::open(&out).unwrap());
        let mut names = Vec::new();
        let mut layer = Vec::new();
        let mut manifest = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            if name == format!("blobs/sha256/{}", &st.layer_digest[7..]) {
                e.read_to_end(&mut layer).unwrap();
            } else if name == "manifest.json" {
                e.read_to_end(&mut manifest).unwrap();
            }
            names.push(name);
        }
        assert_eq!(names.len(), 3, "{names:?}");
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(
            m[0]["Layers"][0],
            format!("blobs/sha256/{}", &st.layer_digest[7..])
        );
        assert_eq!(sha256_hex(&layer).unwrap(), st.layer_digest[7..]);
        let mut inner = tar::Archive::new(&layer[..]);
        let (mut files, mut bytes, mut dirs) = (0, 0, 0);
        for e in inner.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            match e.header().entry_type() {
                tar::EntryType::Directory => dirs += 1,
                tar::EntryType::Regular if path.starts_with("data/") => {
                    let mut d = Vec::new();
                    e.read_to_end(&mut d).unwrap();
                    assert!(d.iter().any(|b| *b != 0), "{path} is all zeros");
                    files += 1;
                    bytes += d.len() as u64;
                }
                _ => {}
            }
        }
        assert_eq!((files, bytes), (spec.files, spec.bytes));
        // bin, etc, root, data, data/d000, data/d000/d00..d02.
        assert_eq!(dirs, 8);
    }
}
