//! Moving files into and out of the snapshot store: exporting a snapshot
//! to a portable `.tar.zst` stream and importing one, importing an OCI
//! image archive as a template, and building a template from Debian with
//! `mmdebstrap`. The formats and the hostile-input rules are
//! `hull_fs::archive`'s; this module stages, commits and names.
//!
//! Every import stages its files in the store's staging directory (on its
//! filesystem, so that committing them is a reflink on btrfs; else under
//! `<state>/import`), removed at the end and at every daemon start; it
//! commits them into the store as an *incomplete* snapshot group without holding any lock, and only then,
//! under the snapshot lock, checks that its name is still free and marks
//! the group complete. A daemon killed mid-import leaves an incomplete
//! group that the next start removes: nothing half-made is ever listed.
//!
//! An imported image or Debian build is a snapshot of the built-in
//! `scratch` template (one part, `/`), flattened: its layers are applied in
//! order into one tree, so images share no layers with each other.
//!
//! An exported snapshot holds, for each part, its whole stack of snapshot
//! layers merged into one (so an import has no parent), plus its template's
//! name: `busybox`, `host` and `scratch` are built in everywhere, but
//! `host`'s files are the importing machine's own `/usr`, so a `host`
//! snapshot moved between machines lands over different files.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hull_api::{
    ApiError, BuildEvent, BuildTemplate, ErrorKind, ImageConfig, Snapshot, TemplateInfo,
};
use hull_fs::archive::{self, IdMap, Limits, SnapshotManifest, Whiteouts};
use hull_fs::snapshot::{LabelChanges, Labels, Snapshotter};
use tokio::sync::mpsc;

use crate::snapshots::{
    L_COMPLETE, L_CREATED, L_ID, L_IMAGE, L_NAME, L_ORIGIN, L_PARTS, L_SIZE, L_TEMPLATE,
    L_TEMPLATE_NAME, L_USER, SnapRecord, image_label, part_key, snapshot_error,
};
use crate::{ByteReader, Runtime, container_error, error_chain, new_id, now};

/// How much of a refused upload is read and dropped so that the client
/// gets the answer (64 MiB).
const DRAIN: u64 = 64 << 20;

/// Largest image archive `import_template` takes (64 GiB).
pub const MAX_IMAGE_ARCHIVE: u64 = 64 << 30;

/// The attachment that carries a snapshot's network cassette.
const CASSETTE_ATTACHMENT: &str = "network.hcas";

/// Move `from` to `to` (a rename, else a copy when they are on different
/// filesystems), private to the daemon.
fn place_file(from: &std::path::Path, to: &std::path::Path) -> Result<(), ApiError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| {
        ApiError::internal(format!(
            "placing {} at {}: {e}",
            from.display(),
            to.display()
        ))
    };
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to).map_err(fail)?;
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).map_err(fail)
}

/// The manifest `meta` key naming the snapshot's id where it was exported.
const META_ID: &str = "id";
const META_NAME: &str = "name";
const META_CREATED: &str = "created";
/// Prefix of user labels in the manifest's `meta`.
const META_LABEL: &str = "label.";
const META_IMAGE: &str = "image";
/// On part 0 of an imported snapshot: the id it had where it was exported.
const L_IMPORTED_FROM: &str = "hull.imported-from";

/// Snapshots being exported, so that deleting one waits its turn.
#[derive(Debug, Default, Clone)]
pub(crate) struct Exports(Arc<Mutex<BTreeMap<String, usize>>>);

impl Exports {
    pub(crate) fn busy(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    fn hold(&self, id: &str) -> ExportGuard {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default() += 1;
        ExportGuard(self.clone(), id.to_string())
    }
}

struct ExportGuard(Exports, String);

impl Drop for ExportGuard {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// A staging directory under `<state>/import`, removed on drop.
struct Staging(PathBuf);

impl Staging {
    /// On the store's filesystem where it has a staging directory (a
    /// commit from there is a reflink on btrfs), else `<state>/import`.
    fn new(rt: &Runtime, id: &str) -> Result<Self, ApiError> {
        let base = rt.store()?.staging_dir().unwrap_or_else(|| rt.import_dir());
        let dir = base.join(id);
        std::fs::create_dir_all(&dir).map_err(|e| {
            ApiError::internal(format!("creating staging directory {}: {e}", dir.display()))
        })?;
        Ok(Staging(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %e, "removing staging directory");
        }
    }
}

pub(crate) fn archive_error(e: archive::ArchiveError) -> ApiError {
    let msg = error_chain(&e);
    match e.kind() {
        ErrorKind::Internal => ApiError::internal(msg),
        k => ApiError::new(k, msg),
    }
}

fn debian_error(e: hull_fs::debian::DebianError) -> ApiError {
    use hull_fs::debian::DebianError as D;
    let msg = error_chain(&e);
    match e {
        D::NotInstalled => ApiError::unavailable(msg),
        D::Io { .. } => ApiError::internal(msg),
        D::Cancelled => ApiError::unavailable(msg),
        D::Failed { .. }
            if msg.contains("Unable to locate package")
                || msg.contains("has no installation candidate")
                || msg.contains("unable to find") =>
        {
            ApiError::invalid(msg)
        }
        D::Failed { .. } => ApiError::unavailable(msg),
        _ => ApiError::invalid(msg),
    }
}

fn build_spec(req: &BuildTemplate) -> hull_fs::debian::BuildSpec {
    hull_fs::debian::BuildSpec {
        suite: req.debian.clone(),
        packages: req.packages.clone(),
        mirror: req.mirror.clone(),
        variant: hull_fs::debian::Variant::Minbase,
        architecture: None,
    }
}

/// A writer that sends what it is given down a channel, in chunks.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client stopped reading the export",
            )
        })
    }
}

/// Convert an image's OCI configuration into sandbox defaults.
fn image_defaults(c: &archive::ImageConfig, source: String) -> Result<ImageConfig, ApiError> {
    let mut env = BTreeMap::new();
    for kv in &c.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    crate::validate_env(&env).map_err(|e| {
        ApiError::invalid(format!(
            "the image's environment is unusable: {}",
            e.message
        ))
    })?;
    let user = c.user.clone().filter(|u| !u.is_empty());
    if let Some(u) = &user
        && (u.len() > 64 || u.contains(['\0', '/', '\n']))
    {
        return Err(ApiError::invalid(format!(
            "the image's user {u:?} is invalid"
        )));
    }
    let workdir = c.workdir.clone().filter(|w| !w.is_empty()).map(|w| {
        if w.starts_with('/') {
            w
        } else {
            format!("/{w}")
        }
    });
    if let Some(w) = &workdir
        && (w.contains('\0') || w.len() > 4096)
    {
        return Err(ApiError::invalid(
            "the image's working directory is invalid",
        ));
    }
    Ok(ImageConfig {
        env,
        user,
        workdir,
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        source: Some(source),
    })
}

impl Runtime {
    /// Where imports stage their files (`<state>/import`).
    pub(crate) fn import_dir(&self) -> PathBuf {
        self.config.state_dir.join("import")
    }

    /// Remove what imports a killed daemon left staged.
    pub(crate) fn clear_imports(&self) {
        let dir = self.import_dir();
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing staged imports");
        }
    }

    fn id_map(&self) -> IdMap {
        IdMap {
            offset: self.host.instance().uid_base,
            range: hull_container::ID_RANGE,
        }
    }

    /// Fail early when `name` can't become a template (checked again when
    /// the import is published).
    fn check_template_name(&self, name: &str) -> Result<(), ApiError> {
        hull_api::validate_dns_label("template name", name)?;
        crate::snapshots::refuse_reserved("template", name)?;
        if self.host.templates().names().contains(&name) {
            return Err(ApiError::conflict(format!("{name} is a built-in template")));
        }
        if self.saved_template(name)?.is_some() {
            return Err(ApiError::conflict(format!(
                "a template named {name:?} already exists (hull template rm {name} first)"
            )));
        }
        Ok(())
    }

    /// Commit staged upper directories as the parts of the new, still
    /// incomplete snapshot `sid` (part 0 carries `meta`). Blocking. On error
    /// the parts made are removed.
    fn commit_parts(
        store: &dyn Snapshotter,
        sid: &str,
        uppers: &[PathBuf],
        below: &[PathBuf],
        meta: &Labels,
    ) -> Result<(), ApiError> {
        let mut size = 0;
        for upper in uppers {
            size += hull_fs::snapshot::dir_usage(upper)
                .map_err(snapshot_error)?
                .bytes;
        }
        let mut meta = meta.clone();
        meta.insert(L_SIZE.into(), size.to_string());
        let r = uppers.iter().enumerate().try_for_each(|(n, upper)| {
            let labels = if n == 0 {
                meta.clone()
            } else {
                BTreeMap::from([(L_ID.to_string(), sid.to_string())])
            };
            store
                .commit_from_dir_over(
                    &part_key(sid, n),
                    None,
                    upper,
                    std::slice::from_ref(&below[n]),
                    &labels,
                )
                .map(|_| ())
                .map_err(snapshot_error)
        });
        if r.is_err() {
            for n in 0..uppers.len() {
                let _ = store.remove(&part_key(sid, n));
            }
        }
        r
    }

    /// Under the snapshot lock: check that the names are still free, then
    /// mark the group complete (and a template, with `template`). On error
    /// the group is removed.
    async fn publish(
        &self,
        sid: &str,
        parts: usize,
        name: Option<&str>,
        template: Option<&str>,
    ) -> Result<SnapRecord, ApiError> {
        let _w = self.snap_lock.write().await;
        let store = self.store()?;
        let checked = (|| {
            if let Some(t) = template {
                self.check_template_name(t)?;
            }
            if let Some(n) = name
                && self
                    .snap_records()?
                    .iter()
                    .any(|r| r.name.as_deref() == Some(n))
            {
                return Err(ApiError::conflict(format!(
                    "a snapshot named {n:?} already exists"
                )));
            }
            let mut set: LabelChanges = BTreeMap::from([(L_COMPLETE.into(), Some("1".into()))]);
            if let Some(t) = template {
                set.insert(L_TEMPLATE_NAME.into(), Some(t.to_string()));
            }
            let info = store
                .update_labels(&part_key(sid, 0), &set)
                .map_err(snapshot_error)?;
            SnapRecord::from_labels(&info.labels)
                .ok_or_else(|| ApiError::internal(format!("snapshot {sid}: incomplete labels")))
        })();
        if checked.is_err() {
            for n in 0..parts {
                let _ = store.remove(&part_key(sid, n));
            }
        }
        checked
    }

    /// Stream snapshot `id_or_name` as a `.tar.zst` (see the module
    /// documentation). The snapshot can't be deleted until the stream ends.
    pub async fn export_snapshot(
        &self,
        id_or_name: &str,
    ) -> Result<(Snapshot, mpsc::Receiver<Result<Bytes, std::io::Error>>), ApiError> {
        let _r = self.snap_lock.read().await;
        let rec = self.snap_lookup(id_or_name)?;
        let layers = self.snap_layers(&rec)?;
        let template = self
            .host
            .templates()
            .get(&rec.template)
            .map_err(|e| container_error(e.into()))?;
        let mut meta = BTreeMap::from([
            (META_ID.to_string(), rec.id.clone()),
            (META_CREATED.to_string(), rec.created_at.to_string()),
        ]);
        if let Some(n) = &rec.name {
            meta.insert(META_NAME.into(), n.clone());
        }
        if let Some(img) = &rec.image {
            meta.insert(META_IMAGE.into(), image_label(img)?);
        }
        for (k, v) in &rec.labels {
            meta.insert(format!("{META_LABEL}{k}"), v.clone());
        }
        let manifest = SnapshotManifest {
            format: archive::SNAPSHOT_FORMAT.into(),
            version: archive::SNAPSHOT_VERSION,
            template: rec.template.clone(),
            parts: template.layers.iter().map(|l| l.target.clone()).collect(),
            meta,
        };
        let guard = self.exports.hold(&rec.id);
        let ids = self.id_map();
        let (tx, rx) = mpsc::channel(8);
        let id = rec.id.clone();
        let cassette = hull_net::cassette::snapshot_path(&self.net.state_dir, &rec.id);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mut w = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::new(),
            };
            let attachments: Vec<(&str, &std::path::Path)> = if cassette.is_file() {
                vec![(CASSETTE_ATTACHMENT, cassette.as_path())]
            } else {
                Vec::new()
            };
            let r = archive::export_snapshot(
                &manifest,
                &layers,
                &attachments,
                ids,
                &mut w,
                &mut |_| {},
            )
            .map_err(|e| std::io::Error::other(error_chain(&e)))
            .and_then(|_| w.flush());
            match r {
                Ok(()) => tracing::info!(snapshot = %id, "exported"),
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "export failed");
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        let snap = self.to_api(&rec);
        Ok((snap, rx))
    }

    /// Import a snapshot exported by [`Self::export_snapshot`] (here or on
    /// another machine) from `input`. It is named `name`, else the name it
    /// had if that is free here, else nothing.
    pub async fn import_snapshot(
        &self,
        input: ByteReader,
        name: Option<String>,
    ) -> Result<Snapshot, ApiError> {
        if let Some(n) = &name {
            hull_api::validate_dns_label("snapshot name", n)?;
            crate::snapshots::refuse_reserved("snapshot", n)?;
        }
        let sid = new_id();
        let staging = Staging::new(self, &sid)?;
        let ids = self.id_map();
        let store = self.store()?;
        let templates = self.host.templates().clone();
        let (sid2, dir) = (sid.clone(), staging.0.clone());
        let mut input = tokio_util::io::SyncIoBridge::new(input);
        let cassette = hull_net::cassette::snapshot_path(&self.net.state_dir, &sid);
        let (manifest, parts) = tokio::task::spawn_blocking(move || {
            let (manifest, uppers, attached) =
                archive::import_snapshot(&mut input, &dir, ids, &Limits::default(), &mut |_| {})
                    .map_err(|e| {
                        // Read (and drop) a bounded rest of the upload, so
                        // a client still sending gets this answer rather
                        // than a broken pipe.
                        let _ = std::io::copy(&mut (&mut input).take(DRAIN), &mut std::io::sink());
                        archive_error(e)
                    })?;
            let template = templates.get(&manifest.template).map_err(|e| {
                ApiError::invalid(format!(
                    "the snapshot's template is unusable here: {}",
                    error_chain(&e)
                ))
            })?;
            let targets: Vec<&str> = template.layers.iter().map(|l| l.target.as_str()).collect();
            if manifest
                .parts
                .iter()
                .map(String::as_str)
                .ne(targets.iter().copied())
            {
                return Err(ApiError::invalid(format!(
                    "the snapshot's parts {:?} don't match template {}'s {:?} on this machine",
                    manifest.parts, manifest.template, targets
                )));
            }
            let below: Vec<PathBuf> = template.layers.iter().map(|l| l.source.clone()).collect();
            // The archive keeps every deletion of the lineage; only those
            // of names the template here has are needed (overlayfs lists
            // the others as names that can't be opened).
            for (upper, b) in uppers.iter().zip(&below) {
                archive::prune_whiteouts(upper, std::slice::from_ref(b)).map_err(archive_error)?;
            }
            let mut meta: Labels = BTreeMap::from([
                (L_ID.to_string(), sid2.clone()),
                (L_TEMPLATE.to_string(), manifest.template.clone()),
                (L_PARTS.to_string(), uppers.len().to_string()),
                (L_CREATED.to_string(), now().to_string()),
            ]);
            if let Some(from) = manifest.meta.get(META_ID)
                && hull_api::validate_dns_label("id", from).is_ok()
            {
                meta.insert(L_IMPORTED_FROM.into(), from.clone());
            }
            if let Some(img) = manifest.meta.get(META_IMAGE) {
                let img: ImageConfig = serde_json::from_str(img).map_err(|e| {
                    ApiError::invalid(format!("the snapshot's image configuration: {e}"))
                })?;
                meta.insert(L_IMAGE.into(), image_label(&img)?);
            }
            let mut labels = BTreeMap::new();
            for (k, v) in &manifest.meta {
                if let Some(k) = k.strip_prefix(META_LABEL) {
                    labels.insert(k.to_string(), v.clone());
                    meta.insert(format!("{L_USER}{k}"), v.clone());
                }
            }
            crate::validate_labels(&labels)
                .map_err(|e| ApiError::invalid(format!("the snapshot's labels: {}", e.message)))?;
            // The cassette first: once the parts are committed the
            // snapshot exists, and a replay from it must find it.
            for (name, file) in &attached {
                if name == CASSETTE_ATTACHMENT {
                    place_file(file, &cassette)?;
                }
            }
            if let Err(e) = Runtime::commit_parts(&*store, &sid2, &uppers, &below, &meta) {
                let _ = std::fs::remove_file(&cassette);
                return Err(e);
            }
            Ok((manifest, uppers.len()))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        drop(staging);
        // Its old name, when that is free here.
        let name = match name {
            Some(n) => Some(n),
            None => manifest
                .meta
                .get(META_NAME)
                .filter(|n| hull_api::validate_dns_label("name", n).is_ok())
                .filter(|n| {
                    self.snap_records()
                        .map(|all| all.iter().all(|r| r.name.as_deref() != Some(n.as_str())))
                        .unwrap_or(false)
                })
                .cloned(),
        };
        let published = async {
            if let Some(n) = &name {
                let set: LabelChanges = BTreeMap::from([(L_NAME.into(), Some(n.clone()))]);
                self.store()?
                    .update_labels(&part_key(&sid, 0), &set)
                    .map_err(snapshot_error)?;
            }
            self.publish(&sid, parts, name.as_deref(), None).await
        };
        let rec = match published.await {
            Ok(rec) => rec,
            Err(e) => {
                // The incomplete snapshot goes at the next start; its
                // cassette must not stay behind it.
                let _ = std::fs::remove_file(hull_net::cassette::snapshot_path(
                    &self.net.state_dir,
                    &sid,
                ));
                return Err(e);
            }
        };
        tracing::info!(snapshot = %sid, "imported");
        Ok(self.to_api(&rec))
    }

    /// Import an OCI image archive (an image layout in a tar, or a `docker
    /// save` tarball, at most [`MAX_IMAGE_ARCHIVE`] bytes) read from
    /// `input` as template `name`. `reference` picks one image of several;
    /// `source` says where it came from.
    pub async fn import_template(
        &self,
        name: &str,
        input: ByteReader,
        reference: Option<String>,
        source: String,
    ) -> Result<TemplateInfo, ApiError> {
        self.check_template_name(name)?;
        let sid = new_id();
        let staging = Staging::new(self, &sid)?;
        let ids = self.id_map();
        let store = self.store()?;
        let (sid2, dir) = (sid.clone(), staging.0.clone());
        let scratch = self.scratch_root()?;
        let mut input = tokio_util::io::SyncIoBridge::new(input);
        let img = tokio::task::spawn_blocking(move || {
            // The image's blobs are read in the order its manifest names
            // them, so the archive is kept whole first.
            let path = dir.join("image.tar");
            let mut file = std::fs::File::create(&path)
                .map_err(|e| ApiError::internal(format!("creating {}: {e}", path.display())))?;
            let n = std::io::copy(&mut (&mut input).take(MAX_IMAGE_ARCHIVE + 1), &mut file)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::StorageFull => ApiError::new(
                        ErrorKind::ResourceExhausted,
                        format!("no space left for the image archive in {}", dir.display()),
                    ),
                    _ => ApiError::invalid(format!("reading the image archive: {e}")),
                })?;
            if n > MAX_IMAGE_ARCHIVE {
                return Err(ApiError::invalid(format!(
                    "the image archive is larger than {MAX_IMAGE_ARCHIVE} bytes"
                )));
            }
            drop(file);
            let root = dir.join("rootfs");
            std::fs::create_dir(&root)
                .map_err(|e| ApiError::internal(format!("creating {}: {e}", root.display())))?;
            let config = archive::import_image(
                &path,
                reference.as_deref(),
                &root,
                ids,
                &Limits::default(),
                &mut |_| {},
            )
            .map_err(archive_error)?;
            let img = image_defaults(&config, source)?;
            Runtime::commit_scratch(&*store, &sid2, root, scratch, &img, "image")?;
            Ok::<_, ApiError>(img)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        drop(staging);
        tracing::info!(template = %name, snapshot = %sid, "image imported");
        self.publish_template(&sid, name, img).await
    }

    /// Commit `root` (a whole tree) as the one part of the new snapshot
    /// `sid` of `scratch` (still incomplete). Blocking.
    fn commit_scratch(
        store: &dyn Snapshotter,
        sid: &str,
        root: PathBuf,
        scratch: PathBuf,
        img: &ImageConfig,
        origin: &str,
    ) -> Result<(), ApiError> {
        let meta = Runtime::scratch_meta(sid, img, origin)?;
        Runtime::commit_parts(store, sid, &[root], &[scratch], &meta)
    }

    /// Publish the snapshot `sid` of `scratch` as template `name`.
    async fn publish_template(
        &self,
        sid: &str,
        name: &str,
        img: ImageConfig,
    ) -> Result<TemplateInfo, ApiError> {
        let rec = self.publish(sid, 1, None, Some(name)).await?;
        Ok(TemplateInfo {
            name: name.into(),
            available: true,
            description: rec.describe(),
            note: None,
            snapshot: Some(rec.id),
            config: Some(img),
        })
    }

    /// The `scratch` template's root directory.
    fn scratch_root(&self) -> Result<PathBuf, ApiError> {
        let t = self
            .host
            .templates()
            .get(hull_fs::SCRATCH)
            .map_err(|e| container_error(e.into()))?;
        Ok(t.layers[0].source.clone())
    }

    /// Part 0's labels for a new snapshot of `scratch` holding an image
    /// (`origin`: `image` or `debian`).
    fn scratch_meta(sid: &str, img: &ImageConfig, origin: &str) -> Result<Labels, ApiError> {
        Ok(BTreeMap::from([
            (L_ORIGIN.to_string(), origin.to_string()),
            (L_ID.to_string(), sid.to_string()),
            (L_TEMPLATE.to_string(), hull_fs::SCRATCH.to_string()),
            (L_PARTS.to_string(), "1".to_string()),
            (L_CREATED.to_string(), now().to_string()),
            (L_IMAGE.to_string(), image_label(img)?),
        ]))
    }

    /// Build template `req.name` from Debian with `mmdebstrap`, reporting
    /// progress on `events`. Setting `cancel` stops the build.
    pub async fn build_template(
        &self,
        req: BuildTemplate,
        events: mpsc::Sender<BuildEvent>,
        cancel: Arc<AtomicBool>,
    ) -> Result<TemplateInfo, ApiError> {
        self.check_build(&req)?;
        let spec = build_spec(&req);
        let sid = new_id();
        let staging = Staging::new(self, &sid)?;
        let ids = self.id_map();
        let store = self.store()?;
        let (sid2, dir) = (sid.clone(), staging.0.clone());
        let scratch = self.scratch_root()?;
        let source = if req.packages.is_empty() {
            format!("debian {} (minbase)", req.debian)
        } else {
            format!(
                "debian {} (minbase) + {}",
                req.debian,
                req.packages.join(", ")
            )
        };
        let img = tokio::task::spawn_blocking(move || {
            let tar = dir.join("rootfs.tar");
            let mut on_event = |e: hull_fs::debian::BuildEvent| {
                use hull_fs::debian::BuildEvent as E;
                let ev = match e {
                    E::Phase(p) => BuildEvent::Phase { phase: p },
                    E::Line(l) => BuildEvent::Log { line: l },
                    E::Progress { done, total } => BuildEvent::Progress { done, total },
                };
                let _ = events.blocking_send(ev);
            };
            let mirror = spec
                .mirror
                .clone()
                .unwrap_or_else(hull_fs::debian::default_mirror);
            on_event(hull_fs::debian::BuildEvent::Phase(format!(
                "checking the mirror {mirror}"
            )));
            hull_fs::debian::probe_mirror(&mirror, &spec.suite).map_err(|e| {
                ApiError::unavailable(format!("the Debian mirror is not usable: {e}"))
            })?;
            hull_fs::debian::build_rootfs_tar(&spec, &tar, Some(&cancel), &mut on_event)
                .map_err(debian_error)?;
            on_event(hull_fs::debian::BuildEvent::Phase("importing".into()));
            let root = dir.join("rootfs");
            std::fs::create_dir(&root)
                .map_err(|e| ApiError::internal(format!("creating {}: {e}", root.display())))?;
            let file = std::fs::File::open(&tar)
                .map_err(|e| ApiError::internal(format!("opening {}: {e}", tar.display())))?;
            archive::apply_layer(
                std::io::BufReader::new(file),
                &root,
                Whiteouts::Flatten,
                ids,
                &Limits::default(),
                &mut |_| {},
            )
            .map_err(archive_error)?;
            let _ = std::fs::remove_file(&tar);
            let img = ImageConfig {
                env: BTreeMap::from([(
                    "PATH".to_string(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                )]),
                source: Some(source),
                ..Default::default()
            };
            Runtime::commit_scratch(&*store, &sid2, root, scratch, &img, "debian")?;
            Ok::<_, ApiError>(img)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        drop(staging);
        tracing::info!(template = %req.name, snapshot = %sid, "debian template built");
        self.publish_template(&sid, &req.name, img).await
    }

    /// Everything about a build request that can be checked before it
    /// starts (the server answers these with a plain error status).
    pub fn check_build(&self, req: &BuildTemplate) -> Result<(), ApiError> {
        self.check_template_name(&req.name)?;
        hull_fs::debian::validate(&build_spec(req)).map_err(debian_error)?;
        hull_fs::debian::mmdebstrap_available().map_err(debian_error)?;
        Ok(())
    }
}
