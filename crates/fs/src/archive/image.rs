//! Importing an OCI image archive into a flattened root filesystem.
//!
//! Two archive shapes are read (plain, gzip or zstd):
//!
//! - an OCI image layout in a tar: `oci-layout`, `index.json` and blobs in
//!   `blobs/sha256/<hex>`. The index's manifest may be an image index (or a
//!   docker manifest list) itself, up to [`MAX_NESTING`] deep: the image
//!   for this host's architecture on Linux is taken, or the only one.
//!   Docker 25 and later write this shape (with a `manifest.json` too);
//! - a `docker save` tarball: `manifest.json` naming each image's config
//!   (`<hex>.json`) and layers (`<hex>/layer.tar`, or blobs as above).
//!   Docker's `layer.tar` symlinks to a shared layer are followed within
//!   the archive's names.
//!
//! With several images, the first is taken, or the one whose
//! `org.opencontainers.image.ref.name` / `io.containerd.image.name`
//! annotation (OCI) or `RepoTags` entry (docker) names `reference`
//! (compared as docker does: `alpine` is `docker.io/library/alpine:latest`).
//!
//! The archive is read once, in order, into a private staging directory
//! next to the destination (`.<dest>.import-<pid>-<n>`, removed afterwards,
//! on errors too): only the names above are kept, each under a numbered
//! file name and hashed on the way (anything else is read and dropped,
//! within the limits); links, devices and FIFOs in the archive are
//! refused. Every blob used is checked against its digest and size, and
//! each docker layer against the config's `diff_ids`; unknown media types
//! are refused. Then the layers are applied in order with
//! [`Whiteouts::Flatten`], all of them together within one set of
//! [`Limits`] (the archive itself gets another).
//!
//! Limits: only sha256 digests; JSON documents of at most [`MAX_JSON`]
//! bytes; at most [`MAX_LAYERS`] layers; only Linux images. The config's
//! architecture is reported, not checked.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::apply::{apply_stream, normalize};
use super::input::{Budget, decompress};
use super::reader::{Kind, TarReader};
use super::{ArchiveError, IdMap, Limits, Whiteouts, io_error, show};

/// Largest JSON document (index, manifest, config) read.
pub const MAX_JSON: u64 = 4 << 20;
/// Most layers an image may have.
pub const MAX_LAYERS: usize = 1024;
/// Deepest nesting of image indexes.
pub const MAX_NESTING: usize = 4;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Input bytes between two progress reports while staging.
const PROGRESS_STEP: u64 = 1 << 20;

/// What an image says about running it (from its config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `NAME=value` strings.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
}

/// How far an import is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportProgress {
    /// Reading the archive into the staging directory: `bytes` of the
    /// archive file's `total` read.
    Reading { bytes: u64, total: u64 },
    /// Applying layer `layer` (from 0) of `layers`: `bytes` of the layer
    /// blob's `total` read.
    Applying {
        layer: usize,
        layers: usize,
        bytes: u64,
        total: u64,
    },
}

/// Import the image archive at `archive` (see the module documentation)
/// into `dest`, an existing empty directory that receives the flattened
/// root filesystem, and return the image's config. `reference` picks one
/// of several images. On error `dest` holds a partial tree: discard it.
pub fn import_image(
    archive: &Path,
    reference: Option<&str>,
    dest: &Path,
    ids: IdMap,
    limits: &Limits,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImageConfig, ArchiveError> {
    ids.validate()?;
    limits.validate()?;
    let mut entries = fs::read_dir(dest).map_err(|e| {
        ArchiveError::InvalidArgument(format!(
            "the destination {} must be an existing empty directory: {e}",
            dest.display()
        ))
    })?;
    if entries.next().is_some() {
        return Err(ArchiveError::InvalidArgument(format!(
            "the destination {} is not empty",
            dest.display()
        )));
    }
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(ArchiveError::InvalidArgument(format!(
            "the destination {} has no parent directory to stage the archive in",
            dest.display()
        )));
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let staging = parent.join(format!(
        ".{}.import-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_error("creating the staging directory", &staging))?;
    let guard = StagingDir(staging);
    let file = File::open(archive).map_err(io_error("opening", archive))?;
    let total = file.metadata().map_err(io_error("reading", archive))?.len();
    let mut stage = Stage::new(guard.0.clone());
    stage.read(file, total, limits, progress)?;

    let image = if stage.files.contains_key("index.json") {
        stage.oci(reference)?
    } else if stage.files.contains_key("manifest.json") {
        stage.docker(reference)?
    } else {
        return Err(ArchiveError::Image(
            "it is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)"
                .into(),
        ));
    };
    let layers = image.layers.len();
    let mut budget = Budget::default();
    for (i, layer) in image.layers.iter().enumerate() {
        let f = File::open(&layer.file).map_err(io_error("opening", &layer.file))?;
        let total = layer.size;
        progress(ImportProgress::Applying {
            layer: i,
            layers,
            bytes: 0,
            total,
        });
        apply_stream(
            io::BufReader::with_capacity(256 << 10, f),
            dest,
            Whiteouts::Flatten,
            ids,
            limits,
            &mut budget,
            &mut |bytes| {
                progress(ImportProgress::Applying {
                    layer: i,
                    layers,
                    bytes,
                    total,
                })
            },
        )
        .map_err(|e| in_layer(e, i, &layer.digest))?;
    }
    drop(guard);
    Ok(image.config)
}

/// Say which layer an error of applying one is about.
fn in_layer(e: ArchiveError, i: usize, digest: &str) -> ArchiveError {
    let ctx = format!("layer {i} ({digest}): ");
    match e {
        ArchiveError::Entry { entry, reason } => ArchiveError::Entry {
            entry: format!("{entry} of layer {i} ({digest})"),
            reason,
        },
        ArchiveError::Malformed(m) => ArchiveError::Malformed(ctx + &m),
        ArchiveError::Truncated(m) => ArchiveError::Truncated(ctx + &m),
        ArchiveError::Limit {
            entry,
            field,
            detail,
        } => ArchiveError::Limit {
            entry: Some(match entry {
                Some(e) => format!("{e} of layer {i} ({digest})"),
                None => format!("layer {i} ({digest})"),
            }),
            field,
            detail,
        },
        other => other,
    }
}

/// Removes the staging directory when dropped.
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "removing the staging directory");
        }
    }
}

/// A file kept from the archive.
#[derive(Debug, Clone)]
struct Staged {
    file: PathBuf,
    size: u64,
    sha256: String,
}

/// What is kept of an archive entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A top-level JSON document, or a docker config.
    Json,
    /// `blobs/sha256/<hex>` or a docker `layer.tar`.
    Blob,
    Skip,
}

fn is_hex64(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn classify(comps: &[&[u8]]) -> Want {
    match comps {
        [b"oci-layout" | b"index.json" | b"manifest.json" | b"repositories"] => Want::Json,
        [b"blobs", b"sha256", hex] if is_hex64(hex) => Want::Blob,
        [dir, b"layer.tar"] if is_hex64(dir) => Want::Blob,
        [name] if name.strip_suffix(b".json").is_some_and(is_hex64) => Want::Json,
        _ => Want::Skip,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The archive's kept files, by their names in it.
struct Stage {
    dir: PathBuf,
    files: HashMap<String, Staged>,
    /// Link names to the names they point at.
    aliases: HashMap<String, String>,
    next: u64,
}

/// A layer to apply.
struct LayerBlob {
    file: PathBuf,
    size: u64,
    digest: String,
}

struct Image {
    config: ImageConfig,
    layers: Vec<LayerBlob>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(Deserialize)]
struct DockerImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn image_err(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Image(msg.into())
}

/// The hex of a `sha256:<hex>` digest.
fn sha256_hex(digest: &str) -> Result<&str, ArchiveError> {
    match digest.split_once(':') {
        Some(("sha256", h)) if is_hex64(h.as_bytes()) => Ok(h),
        Some((alg, _)) if alg != "sha256" => Err(image_err(format!(
            "digest {digest:?} uses {alg:?}; only sha256 is supported"
        ))),
        _ => Err(image_err(format!("{digest:?} is not a valid digest"))),
    }
}

impl Stage {
    fn new(dir: PathBuf) -> Self {
        Stage {
            dir,
            files: HashMap::new(),
            aliases: HashMap::new(),
            next: 0,
        }
    }

    /// Read the archive, keeping what an image needs.
    fn read(
        &mut self,
        file: File,
        total: u64,
        limits: &Limits,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<(), ArchiveError> {
        progress(ImportProgress::Reading { bytes: 0, total });
        let input = decompress(io::BufReader::with_capacity(256 << 10, file), limits)?;
        let consumed = input.consumed.clone();
        let mut budget = Budget::default();
        let mut tar = TarReader::new(input.reader, limits, &mut budget);
        let mut last = 0;
        let mut tick = || {
            let c = consumed.get();
            if c >= last + PROGRESS_STEP {
                last = c;
                progress(ImportProgress::Reading { bytes: c, total });
            }
        };
        while let Some(h) = tar.next()? {
            let shown = show(&h.path);
            let comps = normalize(&h.path, limits, &shown)?;
            let name = String::from_utf8_lossy(&comps.join(&b'/')).into_owned();
            let want = classify(&comps);
            match h.kind {
                Kind::Dir => {}
                Kind::File if want == Want::Skip => {}
                Kind::File => {
                    if want == Want::Json && h.size > MAX_JSON {
                        return Err(image_err(format!(
                            "{shown} holds {} bytes; JSON documents may have at most {MAX_JSON}",
                            h.size
                        )));
                    }
                    let staged = self.copy_in(&mut tar.data(), h.size, &mut tick)?;
                    self.aliases.remove(&name);
                    if let Some(old) = self.files.insert(name, staged) {
                        let _ = fs::remove_file(old.file);
                    }
                }
                Kind::Symlink | Kind::Hardlink if want == Want::Blob => {
                    let target = if h.kind == Kind::Symlink {
                        resolve_symlink(&comps, &h.link)
                    } else {
                        normalize(&h.link, limits, &shown)
                            .ok()
                            .map(|c| String::from_utf8_lossy(&c.join(&b'/')).into_owned())
                    };
                    let Some(target) = target.filter(|t| {
                        let parts: Vec<&[u8]> = t.as_bytes().split(|b| *b == b'/').collect();
                        classify(&parts) == Want::Blob
                    }) else {
                        return Err(ArchiveError::Entry {
                            entry: shown,
                            reason: format!(
                                "a link to {} in an image archive: only links between layer blobs are allowed",
                                show(&h.link)
                            ),
                        });
                    };
                    if let Some(old) = self.files.remove(&name) {
                        let _ = fs::remove_file(old.file);
                    }
                    self.aliases.insert(name, target);
                }
                _ => {
                    return Err(ArchiveError::Entry {
                        entry: shown,
                        reason: "an image archive may hold only files and directories".into(),
                    });
                }
            }
            tick();
        }
        tar.drain()?;
        progress(ImportProgress::Reading {
            bytes: total,
            total,
        });
        Ok(())
    }

    /// Copy an entry's data into a new staging file, hashing it.
    fn copy_in(
        &mut self,
        data: &mut dyn Read,
        size: u64,
        tick: &mut dyn FnMut(),
    ) -> Result<Staged, ArchiveError> {
        let path = self.dir.join(self.next.to_string());
        self.next += 1;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("creating", &path))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            data.read_exact(&mut buf[..want])
                .map_err(ArchiveError::from_read)?;
            hash.update(&buf[..want]);
            out.write_all(&buf[..want])
                .map_err(io_error("writing", &path))?;
            left -= want as u64;
            tick();
        }
        Ok(Staged {
            file: path,
            size,
            sha256: hex(&hash.finalize()),
        })
    }

    /// A kept file by its name in the archive, links followed.
    fn get(&self, name: &str) -> Option<&Staged> {
        let mut name = name;
        for _ in 0..8 {
            if let Some(s) = self.files.get(name) {
                return Some(s);
            }
            name = self.aliases.get(name)?;
        }
        None
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        staged: &Staged,
        what: &str,
    ) -> Result<T, ArchiveError> {
        if staged.size > MAX_JSON {
            return Err(image_err(format!(
                "{what} holds {} bytes; JSON documents may have at most {MAX_JSON}",
                staged.size
            )));
        }
        let bytes = fs::read(&staged.file).map_err(io_error("reading", &staged.file))?;
        serde_json::from_slice(&bytes).map_err(|e| image_err(format!("{what} is invalid: {e}")))
    }

    /// The blob a descriptor names, checked against its digest and size.
    fn blob(&self, d: &Descriptor) -> Result<&Staged, ArchiveError> {
        let hex = sha256_hex(&d.digest)?;
        let s =
            self.get(&format!("blobs/sha256/{hex}"))
                .ok_or_else(|| ArchiveError::MissingBlob {
                    digest: d.digest.clone(),
                })?;
        if s.sha256 != hex {
            return Err(ArchiveError::DigestMismatch {
                digest: d.digest.clone(),
                actual: s.sha256.clone(),
            });
        }
        if s.size != d.size {
            return Err(ArchiveError::SizeMismatch {
                digest: d.digest.clone(),
                expected: d.size,
                actual: s.size,
            });
        }
        Ok(s)
    }

    fn oci(&self, reference: Option<&str>) -> Result<Image, ArchiveError> {
        if let Some(l) = self.get("oci-layout") {
            let layout: Layout = self.read_json(l, "oci-layout")?;
            if !layout.version.starts_with("1.") {
                return Err(image_err(format!(
                    "OCI image layout version {:?} is not supported (1.x is)",
                    layout.version
                )));
            }
        }
        let index: Index =
            self.read_json(self.get("index.json").expect("checked"), "index.json")?;
        if index.manifests.is_empty() {
            return Err(image_err("index.json lists no images"));
        }
        let top = match reference {
            None => &index.manifests[0],
            Some(r) => index
                .manifests
                .iter()
                .find(|d| {
                    [REF_NAME, CONTAINERD_NAME]
                        .iter()
                        .filter_map(|k| d.annotations.get(*k))
                        .any(|n| same_reference(n, r))
                })
                .ok_or_else(|| ArchiveError::NoSuchImage {
                    reference: r.to_string(),
                    available: list_names(index.manifests.iter().filter_map(|d| {
                        d.annotations
                            .get(CONTAINERD_NAME)
                            .or_else(|| d.annotations.get(REF_NAME))
                            .cloned()
                    })),
                })?,
        };
        let manifest = self.manifest(top, 0)?;
        if manifest.layers.len() > MAX_LAYERS {
            return Err(image_err(format!(
                "the image has {} layers; at most {MAX_LAYERS} are supported",
                manifest.layers.len()
            )));
        }
        if !matches!(
            manifest.config.media_type.as_str(),
            OCI_CONFIG | DOCKER_CONFIG | ""
        ) {
            return Err(image_err(format!(
                "config media type {:?} is not an image config",
                manifest.config.media_type
            )));
        }
        let cfg = self.blob(&manifest.config)?;
        let config: ConfigFile =
            self.read_json(cfg, &format!("config {}", manifest.config.digest))?;
        let mut layers = Vec::new();
        for l in &manifest.layers {
            if !LAYER_TYPES.contains(&l.media_type.as_str()) {
                return Err(image_err(format!(
                    "layer {} has media type {:?}, which is not a layer type this importer knows (tar, tar+gzip, tar+zstd)",
                    l.digest, l.media_type
                )));
            }
            let s = self.blob(l)?;
            layers.push(LayerBlob {
                file: s.file.clone(),
                size: s.size,
                digest: l.digest.clone(),
            });
        }
        Ok(Image {
            config: image_config(config)?,
            layers,
        })
    }

    /// The image manifest behind `d`, through nested indexes.
    fn manifest(&self, d: &Descriptor, depth: usize) -> Result<Manifest, ArchiveError> {
        if depth > MAX_NESTING {
            return Err(image_err(format!(
                "image indexes are nested more than {MAX_NESTING} deep"
            )));
        }
        let s = self.blob(d)?;
        let what = format!("manifest {}", d.digest);
        let kind = match d.media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => "index",
            OCI_MANIFEST | DOCKER_MANIFEST => "manifest",
            "" => {
                // Older indexes may omit media types: look inside.
                let v: serde_json::Value = self.read_json(s, &what)?;
                if v.get("manifests").is_some() {
                    "index"
                } else {
                    "manifest"
                }
            }
            other => {
                return Err(image_err(format!(
                    "{what} has media type {other:?}, which is neither an image manifest nor an index"
                )));
            }
        };
        if kind == "manifest" {
            return self.read_json(s, &what);
        }
        let index: Index = self.read_json(s, &what)?;
        let candidates: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|m| {
                let unknown = m
                    .platform
                    .as_ref()
                    .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown");
                let attestation = m
                    .annotations
                    .get("vnd.docker.reference.type")
                    .map(String::as_str)
                    == Some("attestation-manifest");
                !unknown && !attestation
            })
            .collect();
        let arch = host_arch();
        let chosen = match candidates.as_slice() {
            [] => return Err(image_err(format!("{what} lists no images"))),
            [only] => *only,
            many => many
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .copied()
                .ok_or_else(|| {
                    image_err(format!(
                        "{what} has no linux/{arch} image (it has: {})",
                        list_names(many.iter().map(|m| match &m.platform {
                            Some(p) => format!("{}/{}", p.os, p.architecture),
                            None => "unknown".into(),
                        }))
                    ))
                })?,
        };
        self.manifest(chosen, depth + 1)
    }

    fn docker(&self, reference: Option<&str>) -> Result<Image, ArchiveError> {
        let images: Vec<DockerImage> =
            self.read_json(self.get("manifest.json").expect("checked"), "manifest.json")?;
        if images.is_empty() {
            return Err(image_err("manifest.json lists no images"));
        }
        let image = match reference {
            None => &images[0],
            Some(r) => images
                .iter()
                .find(|i| i.repo_tags.iter().flatten().any(|t| same_reference(t, r)))
                .ok_or_else(|| ArchiveError::NoSuchImage {
                    reference: r.to_string(),
                    available: list_names(
                        images
                            .iter()
                            .flat_map(|i| i.repo_tags.iter().flatten().cloned()),
                    ),
                })?,
        };
        if image.layers.len() > MAX_LAYERS {
            return Err(image_err(format!(
                "the image has {} layers; at most {MAX_LAYERS} are supported",
                image.layers.len()
            )));
        }
        let (cfg, cfg_name) = self.docker_file(&image.config)?;
        // A config named by its digest must match it.
        let expect = cfg_name
            .strip_prefix("blobs/sha256/")
            .or_else(|| cfg_name.strip_suffix(".json"));
        if let Some(hex) = expect
            && cfg.sha256 != hex
        {
            return Err(ArchiveError::DigestMismatch {
                digest: format!("sha256:{hex}"),
                actual: cfg.sha256.clone(),
            });
        }
        let config: ConfigFile = self.read_json(cfg, &format!("config {}", image.config))?;
        let diff_ids = config
            .rootfs
            .as_ref()
            .map(|r| r.diff_ids.clone())
            .unwrap_or_default();
        if diff_ids.len() != image.layers.len() {
            return Err(image_err(format!(
                "manifest.json lists {} layers but the config's rootfs.diff_ids has {}",
                image.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in image.layers.iter().zip(&diff_ids) {
            let (s, name) = self.docker_file(path)?;
            // docker save layers are uncompressed: their digest is the diff_id.
            let want = match name.strip_prefix("blobs/sha256/") {
                Some(hex) => hex.to_string(),
                None => sha256_hex(diff_id)?.to_string(),
            };
            if s.sha256 != want {
                return Err(ArchiveError::DigestMismatch {
                    digest: format!("sha256:{want}"),
                    actual: s.sha256.clone(),
                });
            }
            layers.push(LayerBlob {
                file: s.file.clone(),
                size: s.size,
                digest: format!("sha256:{want}"),
            });
        }
        Ok(Image {
            config: image_config(config)?,
            layers,
        })
    }

    /// A file manifest.json names, and its normalised name.
    fn docker_file(&self, path: &str) -> Result<(&Staged, String), ArchiveError> {
        let comps: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let name = comps.join("/");
        if comps.contains(&"..") {
            return Err(image_err(format!(
                "manifest.json names {path:?}, which leaves the archive"
            )));
        }
        match self.get(&name) {
            Some(s) => Ok((s, name)),
            None => Err(ArchiveError::MissingBlob {
                digest: path.to_string(),
            }),
        }
    }
}

/// A symlink's target, as a name in the archive (`None` if it leaves it).
fn resolve_symlink(link: &[&[u8]], target: &[u8]) -> Option<String> {
    if target.starts_with(b"/") {
        return None;
    }
    let mut out: Vec<&[u8]> = link[..link.len().saturating_sub(1)].to_vec();
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(String::from_utf8_lossy(&out.join(&b'/')).into_owned())
}

fn list_names(names: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = names.take(20).map(|n| format!("{n:?}")).collect();
    if v.is_empty() {
        "no named images".into()
    } else {
        v.join(", ")
    }
}

fn image_config(c: ConfigFile) -> Result<ImageConfig, ArchiveError> {
    if let Some(os) = &c.os
        && os != "linux"
    {
        return Err(image_err(format!("the image is for {os:?}, not linux")));
    }
    let run = c.config.unwrap_or(RunConfig {
        env: None,
        working_dir: None,
        user: None,
        entrypoint: None,
        cmd: None,
        labels: None,
    });
    Ok(ImageConfig {
        env: run.env.unwrap_or_default(),
        workdir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        labels: run.labels.unwrap_or_default(),
        architecture: c.architecture,
        os: c.os,
    })
}

/// This host's architecture as OCI names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Whether two image references name the same image, as docker reads
/// them (default registry `docker.io`, namespace `library`, tag `latest`).
fn same_reference(a: &str, b: &str) -> bool {
    a == b || normalize_reference(a) == normalize_reference(b)
}

fn normalize_reference(r: &str) -> String {
    let (name, suffix) = match r.split_once('@') {
        Some((n, d)) => (n, format!("@{d}")),
        None => {
            let slash = r.rfind('/').map_or(0, |i| i + 1);
            match r[slash..].rfind(':') {
                Some(i) => (&r[..slash + i], format!(":{}", &r[slash + i + 1..])),
                None => (r, ":latest".to_string()),
            }
        }
    };
    let (domain, rest) = match name.split_once('/') {
        Some((d, rest)) if d.contains('.') || d.contains(':') || d == "localhost" => (d, rest),
        _ => ("docker.io", name),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let rest = if domain == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest.to_string()
    };
    format!("{domain}/{rest}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            normalize_reference("alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            normalize_reference("docker.io/library/alpine:3.19"),
            "docker.io/library/alpine:3.19"
        );
        assert_eq!(
            normalize_reference("localhost:5000/x/y"),
            "localhost:5000/x/y:latest"
        );
        assert_eq!(normalize_reference("me/app:1"), "docker.io/me/app:1");
        assert!(same_reference("alpine:latest", "alpine"));
        assert!(same_reference(
            "docker.io/library/busybox:latest",
            "busybox"
        ));
        assert!(!same_reference("alpine:3.18", "alpine"));
        assert!(same_reference("latest", "latest"));
    }

    #[test]
    fn names_kept() {
        let c = |s: &str| {
            let parts: Vec<&[u8]> = s.as_bytes().split(|b| *b == b'/').collect();
            classify(&parts)
        };
        let h = "a".repeat(64);
        assert_eq!(c("index.json"), Want::Json);
        assert_eq!(c(&format!("blobs/sha256/{h}")), Want::Blob);
        assert_eq!(c(&format!("{h}/layer.tar")), Want::Blob);
        assert_eq!(c(&format!("{h}.json")), Want::Json);
        assert_eq!(c(&format!("{h}/json")), Want::Skip);
        assert_eq!(c("blobs/sha512/abc"), Want::Skip);
        assert_eq!(c(&format!("blobs/sha256/{}", "A".repeat(64))), Want::Skip);
        assert_eq!(c("etc/passwd"), Want::Skip);
    }

    #[test]
    fn symlink_targets_stay_in_the_archive() {
        let link: Vec<&[u8]> = vec![b"aa", b"layer.tar"];
        assert_eq!(
            resolve_symlink(&link, b"../bb/layer.tar").as_deref(),
            Some("bb/layer.tar")
        );
        assert_eq!(resolve_symlink(&link, b"../../x"), None);
        assert_eq!(resolve_symlink(&link, b"/etc/passwd"), None);
    }

    #[test]
    fn digests() {
        let h = "0".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{h}")).unwrap(), h);
        assert!(
            sha256_hex("sha512:abc")
                .unwrap_err()
                .to_string()
                .contains("only sha256")
        );
        assert!(sha256_hex("sha256:xyz").is_err());
        assert!(sha256_hex("nothing").is_err());
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
