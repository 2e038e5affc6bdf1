//! Archives: applying OCI layer tars onto directories, exporting a stack of
//! overlayfs upper directories as one layer tar, importing OCI image
//! archives (`docker save` tarballs and OCI image layouts), and hull's own
//! snapshot export stream.
//!
//! Every input archive is treated as hostile:
//!
//! - the tar stream is read by a strict reader of our own:
//!   checksums are verified, PAX and GNU long-name headers are bounded by
//!   [`Limits::max_extension_len`], sparse files and unknown entry types are
//!   refused, a stream that ends before its end-of-archive block is an
//!   error;
//! - plain, gzip and zstd streams are told apart by their magic bytes; the
//!   total of file data ([`Limits::max_bytes`]), the number of entries
//!   ([`Limits::max_entries`]) and the expansion of a compressed stream
//!   ([`Limits::max_compression_ratio`]) are bounded, and each is checked
//!   before the data it bounds is read, so a bomb fails at once;
//! - paths are normalised (`./` and empty components dropped, a leading `/`
//!   taken as relative to the destination, as docker does) and refused when
//!   they hold a `..` component, a NUL, a name over 255 bytes, or exceed
//!   [`Limits::max_path_len`] / [`Limits::max_depth`];
//! - every file is made beneath the destination: parents are opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, the
//!   final name with `O_NOFOLLOW`/`O_EXCL` or the `*at` calls that don't
//!   follow it. An entry whose parent is a symlink is refused (docker and
//!   containerd instead resolve such a symlink inside the root; layers built
//!   from overlay diffs never need that);
//! - device nodes are refused, hardlinks must name an existing non-directory
//!   beneath the destination, `user.overlay.*` / `trusted.overlay.*`
//!   attributes are refused (they could forge overlay markers), `user.*`
//!   attributes are kept and all others (`security.capability`, ACLs, ...)
//!   dropped and counted.
//!
//! Owners are shifted through an [`IdMap`] into the unprivileged range a
//! sandbox's user namespace maps to, so setuid bits are kept. An id outside
//! the map's range becomes `nobody` (65534) of the range, counted in
//! [`LayerStats::ids_clamped`]; when the range is too small to hold 65534
//! it is refused instead.
//!
//! # Whiteouts
//!
//! Layers use the OCI image spec's whiteouts: an entry `DIR/.wh.NAME`
//! deletes `NAME` from the layers below, an entry `DIR/.wh..wh..opq` makes
//! `DIR` opaque (nothing of the layers below shows in it; entries of the
//! same layer stay, whatever their order relative to the marker). Other
//! `.wh..wh.*` names (aufs bookkeeping) are skipped. [`apply_layer`] either
//! flattens ([`Whiteouts::Flatten`]: the destination is the accumulated
//! root filesystem and whiteouts delete from it) or writes an overlayfs
//! upper directory ([`Whiteouts::Upper`]: whiteouts become character devices
//! 0/0, opaque directories get `user.overlay.opaque=y`, for overlays mounted
//! with `userxattr` as the store's are). overlayfs lists a whiteout in a
//! directory that has nothing below it to merge with, so an upper written
//! without knowing its base ([`write_layers`] collapses a stack and keeps
//! every deletion) may need [`prune_whiteouts`] once the base is known.
//!
//! # The snapshot export format
//!
//! [`export_snapshot`] writes, and [`import_snapshot`] reads, a
//! zstd-compressed tar (`.tar.zst`; the importer also takes it plain or
//! gzipped):
//!
//! 1. The first entry is `hull-snapshot.json`, a regular file of at most
//!    [`MAX_MANIFEST_LEN`] bytes holding a [`SnapshotManifest`]:
//!    `{"format": "hull-snapshot", "version": 1, "template": "<name>",
//!    "parts": ["/", "/usr"], "meta": {"<key>": "<value>"}}`. `parts` lists
//!    1 to [`MAX_PARTS`] mount targets inside the sandbox (absolute, clean,
//!    distinct); `meta` holds at most 64 free-form strings. Unknown fields
//!    are refused; a reader refuses versions it does not know.
//! 2. Then, for each part `n` (its index in `parts`, in decimal without
//!    leading zeros), the entry `parts/<n>/` (the part's root directory) and
//!    entries `parts/<n>/<path>`: the part's stack of layers merged into one
//!    layer ([`write_layers`]) in the OCI layer dialect: `.wh.NAME`
//!    whiteouts and `.wh..wh..opq` opaque markers, owners relative to the id
//!    map (0 is the sandbox's root; ids outside it are written as 65534),
//!    `user.*` attributes as `SCHILY.xattr.<name>` PAX records, modification
//!    times with nanoseconds as PAX `mtime` records, hardlinks naming an
//!    earlier path of the same part. An empty part has no entries.
//! 3. Then, optionally, attachments: regular files `attachments/<name>`,
//!    each name of [`ATTACHMENTS`] at most once, each at most
//!    [`MAX_ATTACHMENT_LEN`] bytes (`network.hcas`: the network cassette
//!    recorded with the snapshot, replayed by sandboxes made from it).
//!
//! Anything else (another name, a part index out of range, a hardlink into
//! another part, a missing or late manifest) is refused. The importer
//! applies part `n` with [`Whiteouts::Upper`] into `<staging>/part<n>`: an
//! upper directory to stack over the template's layers at that target.
//! Run [`prune_whiteouts`] on it against those layers before stacking:
//! whiteouts that hide nothing there would show in directory listings.
//!
//! # Limits
//!
//! A directory's modification time is restored after every change made in
//! it, so it ends as the archive says. File data of all-zero 256 KiB blocks
//! is written as holes. Global PAX headers are read and ignored (as docker
//! does). `user.*` attributes cannot be set on symlinks and FIFOs: on those
//! they are dropped and counted. Sockets in an exported layer are skipped
//! (tar cannot hold them). On error, the destination holds whatever was
//! applied before it: callers discard it.

mod apply;
mod export;
mod image;
mod input;
mod prune;
mod reader;
mod snapshot;

use std::io;
use std::path::Path;

use hull_api::ErrorKind;
use rustix::io::Errno;

pub use apply::LayerStats;
pub use export::write_layers;
pub use image::{ImageConfig, ImportProgress, import_image};
pub use prune::prune_whiteouts;
pub use snapshot::{
    ATTACHMENTS, Imported, MAX_ATTACHMENT_LEN, MAX_MANIFEST_LEN, MAX_PARTS, SNAPSHOT_FORMAT,
    SNAPSHOT_VERSION, SnapshotManifest, export_snapshot, import_snapshot,
};

/// How ids in an archive relate to ids on the host: archive id `n` is host
/// id `offset + n`, for `n < range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub offset: u32,
    pub range: u32,
}

impl IdMap {
    /// Archive ids are host ids (for tests and trusted tooling).
    pub const IDENTITY: IdMap = IdMap {
        offset: 0,
        range: u32::MAX,
    };

    /// The id that ids outside the range become (inside the range).
    pub const NOBODY: u32 = 65534;

    /// The host id of archive id `id`, if it is in the range.
    pub fn to_host(&self, id: u64) -> Option<u32> {
        (id < u64::from(self.range)).then(|| self.offset + id as u32)
    }

    /// The archive id of host id `id`: its place in the range, or
    /// [`Self::NOBODY`] outside it.
    pub fn to_archive(&self, id: u32) -> u32 {
        match id.checked_sub(self.offset) {
            Some(n) if n < self.range => n,
            _ => Self::NOBODY,
        }
    }

    fn validate(&self) -> Result<(), ArchiveError> {
        // u32::MAX is chown's "leave unchanged"; the range must stop below it.
        if self.range == 0 || self.offset.checked_add(self.range).is_none() {
            return Err(ArchiveError::InvalidArgument(format!(
                "id map {}+{} is invalid: the range must be 1 or more and end below 2^32-1",
                self.offset, self.range
            )));
        }
        Ok(())
    }
}

/// What [`apply_layer`] makes of whiteouts (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// The destination is the accumulated root filesystem: whiteouts delete
    /// from it.
    Flatten,
    /// The destination is an overlayfs upper directory: whiteouts become
    /// character devices 0/0, opaque directories `user.overlay.opaque=y`.
    Upper,
}

/// Bounds on what one archive may make us do. For an image import they
/// bound the outer archive and, separately, the sum over all its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Entries (each header, extension headers excepted).
    pub max_entries: u64,
    /// Total bytes of entry data (file contents), uncompressed.
    pub max_bytes: u64,
    /// Longest path of an entry or link target, in bytes.
    pub max_path_len: usize,
    /// Largest PAX or GNU long-name extension header, in bytes.
    pub max_extension_len: u64,
    /// Most components of a path.
    pub max_depth: usize,
    /// Largest expansion of a compressed stream (uncompressed bytes per
    /// compressed byte), checked once more than [`RATIO_FLOOR`] bytes came
    /// out; 0 turns the check off. gzip cannot exceed ~1032, so this
    /// bounds zstd; the byte and entry limits bound both.
    pub max_compression_ratio: u64,
}

/// Uncompressed bytes a stream may produce before its compression ratio is
/// checked.
pub const RATIO_FLOOR: u64 = 64 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 4_000_000,
            max_bytes: 64 << 30,
            max_path_len: 4096,
            max_extension_len: 1 << 20,
            max_depth: 256,
            max_compression_ratio: 2048,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), ArchiveError> {
        if self.max_entries == 0
            || self.max_path_len == 0
            || self.max_extension_len == 0
            || self.max_depth == 0
        {
            return Err(ArchiveError::InvalidArgument(
                "limits max_entries, max_path_len, max_extension_len and max_depth must be 1 or more"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Why an archive could not be read, applied or written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry breaks a rule: an unsafe path, a refused type or attribute,
    /// a bad link.
    #[error("entry {entry}: {reason}")]
    Entry { entry: String, reason: String },
    /// The tar stream is not well formed.
    #[error("malformed archive: {0}")]
    Malformed(String),
    /// The stream ends before the archive does.
    #[error("the archive is truncated: {0}")]
    Truncated(String),
    /// A [`Limits`] bound was hit.
    #[error("{}the archive exceeds Limits::{field}: {detail}; raise the limit if the archive is legitimate", at(.entry))]
    Limit {
        entry: Option<String>,
        field: &'static str,
        detail: String,
    },
    /// An owner outside the id map, where it cannot become `nobody`.
    #[error(
        "entry {entry}: {what} {id} is outside the id map's range of {range} ids (and so is 65534, which it would otherwise become)"
    )]
    IdOutOfRange {
        entry: String,
        what: &'static str,
        id: u64,
        range: u32,
    },
    /// The compressed stream does not decompress.
    #[error("the compressed stream is corrupt")]
    Corrupt(#[source] io::Error),
    /// An image's index, manifest or configuration is invalid or
    /// unsupported.
    #[error("image archive: {0}")]
    Image(String),
    #[error("image archive: blob {digest} is missing")]
    MissingBlob { digest: String },
    #[error("image archive: blob {digest} is corrupt: its content hashes to sha256:{actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("image archive: blob {digest} holds {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    /// The archive holds images, but none by the name asked for.
    #[error("image archive: no image is named {reference:?} (it has: {available})")]
    NoSuchImage {
        reference: String,
        available: String,
    },
    /// A snapshot export stream breaks its format.
    #[error("snapshot archive: {0}")]
    Snapshot(String),
    /// The caller's arguments are wrong (not the archive).
    #[error("{0}")]
    InvalidArgument(String),
    /// Reading the input failed.
    #[error("reading the archive")]
    Read(#[source] io::Error),
    /// Writing the output failed.
    #[error("writing the archive")]
    Write(#[source] io::Error),
    /// A filesystem operation failed.
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// The filesystem is full (ENOSPC) or the quota is used up (EDQUOT).
    #[error("no space left {what} {path}")]
    NoSpace {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn at(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!("entry {e}: "))
        .unwrap_or_default()
}

impl ArchiveError {
    /// The API error kind: hostile or broken input is `InvalidArgument`, a
    /// full disk `ResourceExhausted`, a missing image `NotFound`, the rest
    /// `Internal`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::Entry { .. }
            | ArchiveError::Malformed(_)
            | ArchiveError::Truncated(_)
            | ArchiveError::Limit { .. }
            | ArchiveError::IdOutOfRange { .. }
            | ArchiveError::Corrupt(_)
            | ArchiveError::Image(_)
            | ArchiveError::MissingBlob { .. }
            | ArchiveError::DigestMismatch { .. }
            | ArchiveError::SizeMismatch { .. }
            | ArchiveError::Snapshot(_)
            | ArchiveError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ArchiveError::NoSuchImage { .. } => ErrorKind::NotFound,
            ArchiveError::NoSpace { .. } => ErrorKind::ResourceExhausted,
            ArchiveError::Write(e) if is_no_space(e) => ErrorKind::ResourceExhausted,
            ArchiveError::Read(_) | ArchiveError::Write(_) | ArchiveError::Io { .. } => {
                ErrorKind::Internal
            }
        }
    }

    /// Wrap for passing through an `io::Read`/`io::Write` implementation.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// Unwrap an error made by [`Self::into_io`], or map a plain one: data
    /// errors of a decompressor are [`ArchiveError::Corrupt`], others
    /// [`ArchiveError::Read`].
    pub(crate) fn from_read(e: io::Error) -> ArchiveError {
        match Self::unwrap_io(e) {
            Ok(a) => a,
            Err(e) if matches!(e.kind(), io::ErrorKind::InvalidData) => ArchiveError::Corrupt(e),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                ArchiveError::Truncated("the compressed stream ends early".into())
            }
            Err(e) => ArchiveError::Read(e),
        }
    }

    /// An error of ours carried in an `io::Error`, or the `io::Error`.
    pub(crate) fn unwrap_io(e: io::Error) -> Result<ArchiveError, io::Error> {
        if e.get_ref().is_some_and(|i| i.is::<ArchiveError>()) {
            let inner = e.into_inner().expect("checked above");
            return Ok(*inner.downcast::<ArchiveError>().expect("checked above"));
        }
        Err(e)
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(n) if n == Errno::NOSPC.raw_os_error() || n == Errno::DQUOT.raw_os_error())
}

/// An `io::Error` mapper naming what was done to which path; ENOSPC and
/// EDQUOT become [`ArchiveError::NoSpace`].
pub(crate) fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.display().to_string();
    move |source| {
        if is_no_space(&source) {
            ArchiveError::NoSpace { what, path, source }
        } else {
            ArchiveError::Io { what, path, source }
        }
    }
}

/// Longest rendering of an entry's path in messages.
const SHOWN_MAX: usize = 200;

/// An entry's path as messages show it: quoted, control characters
/// escaped, invalid UTF-8 replaced, cut after [`SHOWN_MAX`] characters.
pub(crate) fn show(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path);
    let mut cut: String = s.chars().take(SHOWN_MAX).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Apply one layer tar (plain, gzip or zstd) read from `r` onto the
/// directory `dest`, which must exist. `progress` is called with the count
/// of (compressed) input bytes consumed so far, every MiB or so and once at
/// the end.
///
/// Later entries replace earlier ones (and what `dest` had): a file over a
/// directory deletes the directory's tree, a directory over a directory
/// keeps its content and takes the entry's owner, mode, times and `user.*`
/// attributes. See the module documentation for what is refused.
pub fn apply_layer(
    r: impl io::Read,
    dest: &Path,
    mode: Whiteouts,
    ids: IdMap,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<LayerStats, ArchiveError> {
    ids.validate()?;
    limits.validate()?;
    let mut budget = input::Budget::default();
    apply::apply_stream(r, dest, mode, ids, limits, &mut budget, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps() {
        let m = IdMap {
            offset: 100_000,
            range: 65536,
        };
        m.validate().unwrap();
        assert_eq!(m.to_host(0), Some(100_000));
        assert_eq!(m.to_host(65535), Some(165_535));
        assert_eq!(m.to_host(65536), None);
        assert_eq!(m.to_host(u64::MAX), None);
        assert_eq!(m.to_archive(100_005), 5);
        assert_eq!(m.to_archive(99_999), IdMap::NOBODY);
        assert_eq!(m.to_archive(165_536), IdMap::NOBODY);
        IdMap::IDENTITY.validate().unwrap();
        assert_eq!(IdMap::IDENTITY.to_host(u64::from(u32::MAX)), None);
        for bad in [
            IdMap {
                offset: 0,
                range: 0,
            },
            IdMap {
                offset: u32::MAX - 10,
                range: 11,
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_kinds() {
        let nospace = io_error("writing", Path::new("/x"))(io::Error::from_raw_os_error(
            Errno::NOSPC.raw_os_error(),
        ));
        assert_eq!(nospace.kind(), ErrorKind::ResourceExhausted);
        let quota = io_error("writing", Path::new("/x"))(io::Error::from_raw_os_error(
            Errno::DQUOT.raw_os_error(),
        ));
        assert_eq!(quota.kind(), ErrorKind::ResourceExhausted);
        let eio = io_error("writing", Path::new("/x"))(io::Error::from_raw_os_error(
            Errno::IO.raw_os_error(),
        ));
        assert_eq!(eio.kind(), ErrorKind::Internal);
        assert_eq!(
            ArchiveError::Write(io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error())).kind(),
            ErrorKind::ResourceExhausted
        );
        let limit = ArchiveError::Limit {
            entry: Some("\"a\"".into()),
            field: "max_bytes",
            detail: "x".into(),
        };
        assert_eq!(limit.kind(), ErrorKind::InvalidArgument);
        assert!(
            limit
                .to_string()
                .starts_with("entry \"a\": the archive exceeds Limits::max_bytes")
        );
        assert_eq!(
            ArchiveError::NoSuchImage {
                reference: "x".into(),
                available: String::new()
            }
            .kind(),
            ErrorKind::NotFound
        );
        // Our errors survive a trip through io::Error.
        let back = ArchiveError::from_read(ArchiveError::Malformed("m".into()).into_io());
        assert!(matches!(back, ArchiveError::Malformed(_)));
        let corrupt = ArchiveError::from_read(io::Error::new(io::ErrorKind::InvalidData, "bad"));
        assert!(matches!(corrupt, ArchiveError::Corrupt(_)));
    }

    #[test]
    fn shown_paths_are_bounded_and_escaped() {
        assert_eq!(show(b"a/b"), "\"a/b\"");
        assert_eq!(show(b"a\nb"), "\"a\\nb\"");
        let long = show(&[b'x'; 1000]);
        assert!(long.chars().count() < SHOWN_MAX + 10, "{long}");
        assert!(long.contains('…'));
    }
}
