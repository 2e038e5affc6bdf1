//! hull's snapshot export stream (the format is described in the
//! documentation of [`super`]): [`export_snapshot`] and
//! [`import_snapshot`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::apply::{Applier, normalize};
use super::input::{Budget, decompress};
use super::reader::{Kind, TarReader};
use super::{ArchiveError, IdMap, Limits, Whiteouts, show, write_layers};

/// The `format` of a snapshot manifest.
pub const SNAPSHOT_FORMAT: &str = "hull-snapshot";
/// The version this hull writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Most parts a snapshot may have.
pub const MAX_PARTS: usize = 16;
/// Largest `hull-snapshot.json`.
pub const MAX_MANIFEST_LEN: u64 = 1 << 20;
/// The manifest's name, the stream's first entry.
const MANIFEST_NAME: &str = "hull-snapshot.json";
const MAX_META: usize = 64;
const MAX_META_KEY: usize = 255;
const MAX_META_VALUE: usize = 4096;
const MAX_TARGET_LEN: usize = 4096;
/// zstd level of exports.
const ZSTD_LEVEL: i32 = 3;
/// The directory of attachments in the stream.
const ATTACHMENT_DIR: &str = "attachments";
/// The files a snapshot may carry besides its parts, as
/// `attachments/<name>`: the network cassette recorded with it.
pub const ATTACHMENTS: &[&str] = &["network.hcas"];
/// Largest attachment (4 GiB).
pub const MAX_ATTACHMENT_LEN: u64 = 4 << 30;

/// The first entry of a snapshot export: what the parts are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotManifest {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// The template the snapshot was taken over.
    pub template: String,
    /// Each part's mount target inside the sandbox (`/`, `/usr`, ...).
    pub parts: Vec<String>,
    /// Free-form strings (at most 64; names up to 255 bytes, values up to
    /// 4096).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

impl SnapshotManifest {
    /// A manifest of the current format and version.
    pub fn new(template: &str, parts: Vec<String>) -> Self {
        SnapshotManifest {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            template: template.into(),
            parts,
            meta: BTreeMap::new(),
        }
    }

    /// Check it as an importer does.
    pub fn validate(&self) -> Result<(), ArchiveError> {
        let bad = |m: String| Err(ArchiveError::Snapshot(m));
        if self.format != SNAPSHOT_FORMAT {
            return bad(format!(
                "format {:?} is not {SNAPSHOT_FORMAT:?}",
                self.format.chars().take(64).collect::<String>()
            ));
        }
        if self.version != SNAPSHOT_VERSION {
            return bad(format!(
                "version {} is not supported (this hull reads version {SNAPSHOT_VERSION})",
                self.version
            ));
        }
        if self.template.is_empty()
            || self.template.len() > 255
            || self.template.chars().any(char::is_control)
        {
            return bad(
                "the template name must be 1 to 255 bytes without control characters".into(),
            );
        }
        if self.parts.is_empty() || self.parts.len() > MAX_PARTS {
            return bad(format!(
                "it has {} parts; 1 to {MAX_PARTS} are allowed",
                self.parts.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for t in &self.parts {
            if !clean_target(t) {
                return bad(format!(
                    "part target {:?} is not a clean absolute path",
                    t.chars().take(64).collect::<String>()
                ));
            }
            if !seen.insert(t) {
                return bad(format!("part target {t:?} is listed twice"));
            }
        }
        if self.meta.len() > MAX_META {
            return bad(format!(
                "it has {} meta entries; at most {MAX_META}",
                self.meta.len()
            ));
        }
        for (k, v) in &self.meta {
            if k.is_empty() || k.len() > MAX_META_KEY || k.chars().any(char::is_control) {
                return bad(format!(
                    "meta name {:?} must be 1 to {MAX_META_KEY} bytes without control characters",
                    k.chars().take(64).collect::<String>()
                ));
            }
            if v.len() > MAX_META_VALUE || v.contains('\0') {
                return bad(format!(
                    "meta value of {k:?} must be at most {MAX_META_VALUE} bytes without NUL"
                ));
            }
        }
        Ok(())
    }
}

/// `/`, or `/` and plain names joined by single `/`s.
fn clean_target(t: &str) -> bool {
    if t == "/" {
        return true;
    }
    t.len() <= MAX_TARGET_LEN
        && t.starts_with('/')
        && !t.contains('\0')
        && t[1..].split('/').all(|c| !matches!(c, "" | "." | ".."))
}

/// Counts the bytes written through it.
struct Counted<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write a snapshot export to `out`: `manifest`, then for part `n` the
/// stack `parts[n]` (layer directories, nearest first; see
/// [`write_layers`]), then each attachment (a name of [`ATTACHMENTS`] and
/// the file to read it from), zstd-compressed. `progress` gets the bytes of file
/// data written so far; returns the bytes written to `out`.
pub fn export_snapshot<W: Write>(
    manifest: &SnapshotManifest,
    parts: &[Vec<PathBuf>],
    attachments: &[(&str, &Path)],
    ids: IdMap,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ArchiveError> {
    manifest
        .validate()
        .map_err(|e| ArchiveError::InvalidArgument(format!("the manifest to export: {e}")))?;
    if parts.len() != manifest.parts.len() {
        return Err(ArchiveError::InvalidArgument(format!(
            "{} layer stacks given for the manifest's {} parts",
            parts.len(),
            manifest.parts.len()
        )));
    }
    for (i, (name, _)) in attachments.iter().enumerate() {
        if !ATTACHMENTS.contains(name) || attachments[..i].iter().any(|(n, _)| n == name) {
            return Err(ArchiveError::InvalidArgument(format!(
                "attachment {name:?}: a snapshot carries each of {ATTACHMENTS:?} at most once"
            )));
        }
    }
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| ArchiveError::InvalidArgument(format!("the manifest: {e}")))?;
    let enc = zstd::Encoder::new(Counted { inner: out, n: 0 }, ZSTD_LEVEL)
        .map_err(ArchiveError::Write)?;
    let mut tar = tar::Builder::new(enc);
    let mut h = tar::Header::new_ustar();
    h.set_path(MANIFEST_NAME).map_err(ArchiveError::Write)?;
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    tar.append(&h, &json[..]).map_err(ArchiveError::Write)?;
    let mut done = 0;
    for (i, layers) in parts.iter().enumerate() {
        let base = done;
        done += write_layers(layers, &format!("parts/{i}/"), ids, &mut tar, &mut |b| {
            progress(base + b)
        })?;
    }
    for (name, path) in attachments {
        let mut f = fs::File::open(path).map_err(super::io_error("opening", path))?;
        let len = f
            .metadata()
            .map_err(super::io_error("reading", path))?
            .len();
        if len > MAX_ATTACHMENT_LEN {
            return Err(ArchiveError::InvalidArgument(format!(
                "attachment {name} holds {len} bytes; at most {MAX_ATTACHMENT_LEN} are allowed"
            )));
        }
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("{ATTACHMENT_DIR}/{name}"))
            .map_err(ArchiveError::Write)?;
        h.set_size(len);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        // Exactly `len` bytes: a file that grew meanwhile is cut there.
        tar.append(&h, (&mut f).take(len))
            .map_err(ArchiveError::Write)?;
        done += len;
        progress(done);
    }
    let enc = tar.into_inner().map_err(ArchiveError::Write)?;
    let mut counted = enc.finish().map_err(ArchiveError::Write)?;
    counted.flush().map_err(ArchiveError::Write)?;
    Ok(counted.n)
}

/// Read a snapshot export from `input` into `staging`, an existing empty
/// directory: part `n` becomes the overlayfs upper directory
/// `staging/part<n>` ([`Whiteouts::Upper`]), an attachment the file
/// `staging/attachments/<name>`. Returns the manifest, those directories
/// in part order, and the attachments (name, file). `progress` gets the input bytes
/// consumed so far. On error, the part directories are removed again.
///
/// The parts keep every whiteout of the export; run
/// [`prune_whiteouts`](super::prune_whiteouts) on each against the layers
/// it will be stacked over, or overlayfs lists those that hide nothing.
pub fn import_snapshot<R: Read>(
    input: R,
    staging: &Path,
    ids: IdMap,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<Imported, ArchiveError> {
    ids.validate()?;
    limits.validate()?;
    let mut entries = fs::read_dir(staging).map_err(|e| {
        ArchiveError::InvalidArgument(format!(
            "the staging directory {} must be an existing empty directory: {e}",
            staging.display()
        ))
    })?;
    if entries.next().is_some() {
        return Err(ArchiveError::InvalidArgument(format!(
            "the staging directory {} is not empty",
            staging.display()
        )));
    }
    let mut made = PartDirs(Vec::new());
    let result = read_snapshot(input, staging, ids, limits, progress, &mut made);
    if result.is_ok() {
        made.0.clear(); // keep them
    }
    result
}

/// What [`import_snapshot`] read: the manifest, the part directories in
/// part order, and the attachments (name, file).
pub type Imported = (SnapshotManifest, Vec<PathBuf>, Vec<(String, PathBuf)>);

/// Removes the part directories made so far when dropped (unless emptied).
struct PartDirs(Vec<PathBuf>);

impl Drop for PartDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            if let Err(e) = fs::remove_dir_all(d) {
                tracing::warn!(path = %d.display(), error = %e, "removing a part of a failed import");
            }
        }
    }
}

fn read_snapshot(
    input: impl Read,
    staging: &Path,
    ids: IdMap,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
    made: &mut PartDirs,
) -> Result<Imported, ArchiveError> {
    let input = decompress(input, limits)?;
    let consumed = input.consumed.clone();
    let mut budget = Budget::default();
    let mut tar = TarReader::new(input.reader, limits, &mut budget);
    let first = tar.next()?.ok_or_else(|| {
        ArchiveError::Snapshot(format!("the archive is empty: it has no {MANIFEST_NAME}"))
    })?;
    let first_shown = show(&first.path);
    if normalize(&first.path, limits, &first_shown)?.as_slice() != [MANIFEST_NAME.as_bytes()]
        || first.kind != Kind::File
    {
        return Err(ArchiveError::Snapshot(format!(
            "the first entry must be the file {MANIFEST_NAME}, not {first_shown}"
        )));
    }
    let json = tar.read_all(MAX_MANIFEST_LEN)?.ok_or_else(|| {
        ArchiveError::Snapshot(format!(
            "{MANIFEST_NAME} holds {} bytes; at most {MAX_MANIFEST_LEN} are allowed",
            first.size
        ))
    })?;
    let manifest: SnapshotManifest = serde_json::from_slice(&json)
        .map_err(|e| ArchiveError::Snapshot(format!("{MANIFEST_NAME} is invalid: {e}")))?;
    manifest.validate()?;

    let mut dirs = Vec::new();
    for i in 0..manifest.parts.len() {
        let d = staging.join(format!("part{i}"));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&d)
            .map_err(super::io_error("creating", &d))?;
        made.0.push(d.clone());
        dirs.push(d);
    }
    let mut appliers = dirs
        .iter()
        .map(|d| Applier::open(d, Whiteouts::Upper, ids, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let mut last = 0;
    let mut tick = || {
        let c = consumed.get();
        if c >= last + (1 << 20) {
            last = c;
            progress(c);
        }
    };
    let mut attached: Vec<(String, PathBuf)> = Vec::new();
    while let Some(h) = tar.next()? {
        let shown = show(&h.path);
        let comps = normalize(&h.path, limits, &shown)?;
        if comps.first() == Some(&ATTACHMENT_DIR.as_bytes()) {
            let name = attachment_name(&comps, h.kind, &attached, &shown)?;
            if h.size > MAX_ATTACHMENT_LEN {
                return Err(ArchiveError::Entry {
                    entry: shown,
                    reason: format!(
                        "it holds {} bytes; an attachment may hold at most {MAX_ATTACHMENT_LEN}",
                        h.size
                    ),
                });
            }
            let dir = staging.join(ATTACHMENT_DIR);
            if attached.is_empty() {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(super::io_error("creating", &dir))?;
                made.0.push(dir.clone());
            }
            let path = dir.join(name);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(super::io_error("creating", &path))?;
            io::copy(&mut tar.data(), &mut f).map_err(ArchiveError::from_read)?;
            attached.push((name.to_string(), path));
            tick();
            continue;
        }
        let part = part_of(&comps, manifest.parts.len(), &shown)?;
        let link = match h.kind {
            Kind::Hardlink => {
                let target = normalize(&h.link, limits, &shown)?;
                if part_of(&target, manifest.parts.len(), &shown).ok() != Some(part) {
                    return Err(ArchiveError::Entry {
                        entry: shown,
                        reason: format!(
                            "its hardlink target {} is not in part {part}",
                            show(&h.link)
                        ),
                    });
                }
                Some(target[2..].to_vec())
            }
            _ => None,
        };
        appliers[part].apply(
            &h,
            &comps[2..],
            link.as_deref(),
            &shown,
            &mut tar.data(),
            &mut tick,
        )?;
        tick();
    }
    tar.drain()?;
    progress(consumed.get());
    Ok((manifest, dirs, attached))
}

/// The name of an attachment entry `attachments/<name>`: a regular file
/// named in [`ATTACHMENTS`], once.
fn attachment_name(
    comps: &[&[u8]],
    kind: Kind,
    seen: &[(String, PathBuf)],
    shown: &str,
) -> Result<&'static str, ArchiveError> {
    let refuse = |reason: String| ArchiveError::Entry {
        entry: shown.to_string(),
        reason,
    };
    let [_, name] = comps else {
        return Err(refuse(format!(
            "{ATTACHMENT_DIR}/ holds only the files {ATTACHMENTS:?}"
        )));
    };
    let Some(name) = ATTACHMENTS.iter().find(|a| a.as_bytes() == *name) else {
        return Err(refuse(format!(
            "unknown attachment: {ATTACHMENT_DIR}/ holds only the files {ATTACHMENTS:?}"
        )));
    };
    if kind != Kind::File {
        return Err(refuse("an attachment must be a regular file".into()));
    }
    if seen.iter().any(|(n, _)| n == name) {
        return Err(refuse("the attachment appears twice".into()));
    }
    Ok(name)
}

/// The part an entry belongs to: `parts/<n>/...` with `n` in decimal
/// without leading zeros, below `count`.
fn part_of(comps: &[&[u8]], count: usize, shown: &str) -> Result<usize, ArchiveError> {
    let refuse = |reason: String| ArchiveError::Entry {
        entry: shown.to_string(),
        reason,
    };
    let outside = || {
        refuse(format!(
            "a snapshot archive holds only {MANIFEST_NAME}, entries under parts/<n>/ and {ATTACHMENT_DIR}/<name>"
        ))
    };
    let [first, n, ..] = comps else {
        return Err(outside());
    };
    if *first != b"parts" {
        return Err(outside());
    }
    let canonical = !n.is_empty()
        && n.len() <= 2
        && n.iter().all(u8::is_ascii_digit)
        && (n.len() == 1 || n[0] != b'0');
    let index = canonical
        .then(|| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
        .flatten();
    match index {
        Some(i) if i < count => Ok(i),
        _ => Err(refuse(format!(
            "part {} does not exist: the manifest lists {count} part(s), numbered from 0",
            show(n)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> SnapshotManifest {
        SnapshotManifest::new("base", vec!["/".into(), "/usr".into()])
    }

    #[test]
    fn manifests_validate() {
        manifest().validate().unwrap();
        type Change = Box<dyn Fn(&mut SnapshotManifest)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|m| m.format = "tar".into()), "format"),
            (Box::new(|m| m.version = 2), "version 2"),
            (Box::new(|m| m.template = String::new()), "template"),
            (Box::new(|m| m.parts.clear()), "0 parts"),
            (
                Box::new(|m| m.parts = (0..17).map(|i| format!("/p{i}")).collect()),
                "17 parts",
            ),
            (Box::new(|m| m.parts[1] = "usr".into()), "clean absolute"),
            (Box::new(|m| m.parts[1] = "/usr/".into()), "clean absolute"),
            (
                Box::new(|m| m.parts[1] = "/a/../b".into()),
                "clean absolute",
            ),
            (Box::new(|m| m.parts[1] = "/".into()), "twice"),
            (
                Box::new(|m| {
                    m.meta.insert("k".into(), "v\0".into());
                }),
                "NUL",
            ),
        ];
        for (change, want) in cases {
            let mut m = manifest();
            change(&mut m);
            let e = m.validate().unwrap_err();
            assert!(e.to_string().contains(want), "{e} (wanted {want})");
            assert_eq!(e.kind(), hull_api::ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<SnapshotManifest>(
            r#"{"format":"hull-snapshot","version":1,"template":"t","parts":["/"],"extra":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("extra"), "{e}");
    }

    #[test]
    fn part_indexes() {
        let p = |s: &str| {
            let c: Vec<&[u8]> = s.as_bytes().split(|b| *b == b'/').collect();
            part_of(&c, 3, "x")
        };
        assert_eq!(p("parts/0/a").unwrap(), 0);
        assert_eq!(p("parts/2").unwrap(), 2);
        for bad in [
            "parts/3/a",
            "parts/01/a",
            "parts/-1",
            "parts",
            "other/0",
            "parts/x",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
