//! Snapshots of sandboxes: capture, list, delete, create-from, fork and
//! rollback, over the snapshot store (`hull_fs::snapshot`).
//!
//! A sandbox's files are its template's read-only layers, then (when it was
//! born from a snapshot) that snapshot's layers, then its private writable
//! layer (a tmpfs). A snapshot freezes the sandbox, copies each overlay's
//! writable layer into the store as a committed snapshot whose parent is
//! the matching part of the sandbox's own base snapshot, and thaws it: the
//! cost is O(bytes changed since the base), the sandbox keeps running.
//!
//! One hull snapshot is one store snapshot per overlay of its template
//! ("parts": one for `busybox`, one per host directory for `host`), keyed
//! `<id>.<n>`. Part 0 carries the snapshot's metadata as labels (`hull.*`,
//! user labels as `label.<k>`) and is marked `hull.complete` last, so a
//! daemon killed mid-snapshot leaves an incomplete group that the next
//! start removes; nothing half-made is ever listed.
//!
//! Limits: the writable layer stays a tmpfs (its pages count against the
//! sandbox's memory limit); a snapshot holds files only, not processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hull_api::{
    ApiError, CreateSandbox, CreateSnapshot, ErrorKind, Fork, ImageConfig, Sandbox, SandboxState,
    Snapshot, validate_dns_label,
};
use hull_fs::snapshot::{LabelChanges, Labels, SnapshotError, Snapshotter};

use crate::{Runtime, container_error, error_chain, new_id, now, push_event, state};

/// Most sandboxes one fork makes.
pub const MAX_FORK: u32 = 1024;

pub(crate) const L_ID: &str = "hull.id";
pub(crate) const L_NAME: &str = "hull.name";
pub(crate) const L_TEMPLATE: &str = "hull.template";
pub(crate) const L_PARENT: &str = "hull.parent";
pub(crate) const L_SANDBOX: &str = "hull.sandbox";
pub(crate) const L_PARTS: &str = "hull.parts";
pub(crate) const L_CREATED: &str = "hull.created";
pub(crate) const L_COMPLETE: &str = "hull.complete";
/// On part 0 of a snapshot saved as a template: the template's name.
pub(crate) const L_TEMPLATE_NAME: &str = "hull.template-name";
/// On part 0: the [`ImageConfig`] (JSON) of the imported image or Debian
/// build at the bottom of the snapshot's lineage (inherited by snapshots
/// of sandboxes born from it).
pub(crate) const L_IMAGE: &str = "hull.image";
/// On part 0: bytes of its own files (all parts), measured when it was
/// made (a btrfs store would otherwise walk whole trees to tell).
pub(crate) const L_SIZE: &str = "hull.size";
/// On part 0 of a template made by import (`image`) or build (`debian`):
/// its files exist for the template only, and go when it is removed.
pub(crate) const L_ORIGIN: &str = "hull.origin";
pub(crate) const L_USER: &str = "label.";

pub(crate) fn snapshot_error(e: SnapshotError) -> ApiError {
    let kind = e.kind();
    let msg = error_chain(&e);
    match kind {
        ErrorKind::Internal => ApiError::internal(msg),
        k => ApiError::new(k, msg),
    }
}

/// Names that are routes of their own (`/v1/snapshots/import`,
/// `/v1/templates/import`, `/v1/templates/build`), so no snapshot or
/// template may take them.
const RESERVED: &[&str] = &["import", "build", "export"];

pub(crate) fn refuse_reserved(what: &str, name: &str) -> Result<(), ApiError> {
    if RESERVED.contains(&name) {
        return Err(ApiError::invalid(format!(
            "{name:?} is reserved (an API route); choose another {what} name"
        )));
    }
    Ok(())
}

/// `img` as the [`L_IMAGE`] label's value.
pub(crate) fn image_label(img: &ImageConfig) -> Result<String, ApiError> {
    let j = serde_json::to_string(img).map_err(|e| ApiError::internal(e.to_string()))?;
    if j.len() > hull_fs::snapshot::MAX_LABEL_VALUE_LEN {
        return Err(ApiError::invalid(format!(
            "the image's configuration (environment, entrypoint, ...) is {} bytes as JSON; \
             at most {} are supported",
            j.len(),
            hull_fs::snapshot::MAX_LABEL_VALUE_LEN
        )));
    }
    Ok(j)
}

pub(crate) fn part_key(id: &str, n: usize) -> String {
    format!("{id}.{n}")
}

/// A snapshot as the runtime knows it (from part 0's labels).
#[derive(Debug, Clone)]
pub(crate) struct SnapRecord {
    pub id: String,
    pub name: Option<String>,
    pub template: String,
    pub parent: Option<String>,
    pub sandbox: String,
    pub created_at: u64,
    pub labels: BTreeMap<String, String>,
    pub parts: usize,
    /// The template name it is saved as, if any.
    pub saved_as: Option<String>,
    /// Defaults from the image it descends from.
    pub image: Option<ImageConfig>,
    /// Bytes of its own files, when recorded.
    pub size: Option<u64>,
    /// `image` or `debian` for a template imported or built as such.
    pub origin: Option<String>,
}

impl SnapRecord {
    /// How `hull template ls` describes it as a template.
    pub(crate) fn describe(&self) -> String {
        match self.image.as_ref().and_then(|i| i.source.as_ref()) {
            Some(src) => format!("{src} (snapshot {})", self.id),
            None => format!("snapshot {} of template {}", self.id, self.template),
        }
    }

    pub(crate) fn from_labels(labels: &Labels) -> Option<SnapRecord> {
        if labels.get(L_COMPLETE).map(String::as_str) != Some("1") {
            return None;
        }
        Some(SnapRecord {
            id: labels.get(L_ID)?.clone(),
            name: labels.get(L_NAME).cloned(),
            template: labels.get(L_TEMPLATE)?.clone(),
            parent: labels.get(L_PARENT).cloned(),
            sandbox: labels.get(L_SANDBOX).cloned().unwrap_or_default(),
            created_at: labels.get(L_CREATED)?.parse().ok()?,
            labels: labels
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(L_USER)?.to_string(), v.clone())))
                .collect(),
            parts: labels.get(L_PARTS)?.parse().ok()?,
            saved_as: labels.get(L_TEMPLATE_NAME).cloned(),
            image: labels
                .get(L_IMAGE)
                .and_then(|j| serde_json::from_str(j).ok()),
            size: labels.get(L_SIZE).and_then(|v| v.parse().ok()),
            origin: labels.get(L_ORIGIN).cloned(),
        })
    }
}

impl Runtime {
    pub(crate) fn store(&self) -> Result<Arc<dyn Snapshotter>, ApiError> {
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| ApiError::unavailable("the daemon is shutting down"))
    }

    /// Every complete snapshot.
    pub(crate) fn snap_records(&self) -> Result<Vec<SnapRecord>, ApiError> {
        let all = self.store()?.walk().map_err(snapshot_error)?;
        Ok(all
            .iter()
            .filter(|i| i.key.ends_with(".0"))
            .filter_map(|i| SnapRecord::from_labels(&i.labels))
            .collect())
    }

    /// Find a snapshot by id or name.
    pub(crate) fn snap_lookup(&self, id_or_name: &str) -> Result<SnapRecord, ApiError> {
        if id_or_name.is_empty() || id_or_name.len() > 63 {
            return Err(ApiError::not_found(format!("no snapshot {id_or_name:?}")));
        }
        // An id is one key lookup (a fork of 100 does 100 of these); a
        // name needs the walk. Ids win over names.
        if hull_api::validate_dns_label("id", id_or_name).is_ok()
            && let Ok(info) = self.store()?.stat(&part_key(id_or_name, 0))
            && let Some(r) = SnapRecord::from_labels(&info.labels)
            && r.id == id_or_name
        {
            return Ok(r);
        }
        self.snap_records()?
            .into_iter()
            .find(|r| r.id == id_or_name || r.name.as_deref() == Some(id_or_name))
            .ok_or_else(|| {
                ApiError::not_found(format!("no snapshot with id or name {id_or_name:?}"))
            })
    }

    /// The layer directories of each part of `snap`, for a new container.
    pub(crate) fn snap_layers(&self, snap: &SnapRecord) -> Result<Vec<Vec<PathBuf>>, ApiError> {
        let store = self.store()?;
        (0..snap.parts)
            .map(|n| store.layers(&part_key(&snap.id, n)).map_err(snapshot_error))
            .collect()
    }

    pub(crate) fn to_api(&self, r: &SnapRecord) -> Snapshot {
        let store = self.store().ok();
        // Snapshots made before the size was recorded are measured now.
        let size_bytes = r.size.unwrap_or_else(|| {
            (0..r.parts)
                .filter_map(|n| store.as_ref()?.usage(&part_key(&r.id, n)).ok())
                .map(|u| u.bytes)
                .sum()
        });
        let backend = store.as_ref().map(|s| s.backend()).unwrap_or("closed");
        Snapshot {
            id: r.id.clone(),
            name: r.name.clone(),
            template: r.template.clone(),
            parent: r.parent.clone(),
            sandbox: r.sandbox.clone(),
            created_at: r.created_at,
            labels: r.labels.clone(),
            size_bytes,
            backend: backend.into(),
        }
    }

    /// Remove the parts of snapshots a killed daemon left incomplete.
    pub(crate) fn snap_recover(&self) -> Result<(), ApiError> {
        let store = self.store()?;
        let all = store.walk().map_err(snapshot_error)?;
        let complete: Vec<String> = all
            .iter()
            .filter(|i| i.key.ends_with(".0"))
            .filter_map(|i| SnapRecord::from_labels(&i.labels))
            .map(|r| r.id)
            .collect();
        for info in all {
            let id = info.labels.get(L_ID).cloned().unwrap_or_default();
            if !complete.contains(&id) {
                tracing::info!(key = %info.key, "removing part of an incomplete snapshot");
                store.remove(&info.key).map_err(snapshot_error)?;
            }
        }
        Ok(())
    }

    /// Capture a running (or paused) sandbox's files; it keeps running.
    pub async fn snapshot(&self, id: &str, req: CreateSnapshot) -> Result<Snapshot, ApiError> {
        if let Some(n) = &req.name {
            validate_dns_label("snapshot name", n)?;
            refuse_reserved("snapshot", n)?;
        }
        crate::validate_labels(&req.labels)?;
        // Lock order everywhere: the snapshot lock, then a sandbox's lock.
        let _names = self.snap_lock.write().await;
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        let (sid_sandbox, state, template, base) = {
            let r = e.record();
            (
                r.sandbox.id.clone(),
                r.sandbox.state,
                r.sandbox.template.clone(),
                r.sandbox.snapshot.clone(),
            )
        };
        if !matches!(state, SandboxState::Running | SandboxState::Paused) {
            return Err(ApiError::conflict(state::refusal(
                &sid_sandbox,
                state,
                "snapshot",
            )));
        }
        if let Some(n) = &req.name
            && self
                .snap_records()?
                .iter()
                .any(|r| r.name.as_deref() == Some(n))
        {
            return Err(ApiError::conflict(format!(
                "a snapshot named {n:?} already exists"
            )));
        }
        let container = e.container().ok_or_else(|| {
            ApiError::conflict(format!("sandbox {sid_sandbox} has no running processes"))
        })?;
        // Each part lies over the template's layer of the same index.
        let below: Vec<PathBuf> = self
            .host
            .templates()
            .get(&template)
            .map_err(|e| container_error(e.into()))?
            .layers
            .into_iter()
            .map(|l| l.source)
            .collect();
        let parts = below.len();
        let parent = match &base {
            Some(b) => Some(self.snap_lookup(b).map_err(|_| {
                ApiError::internal(format!(
                    "sandbox {sid_sandbox} was born from snapshot {b}, which is gone"
                ))
            })?),
            None => None,
        };
        if let Some(p) = &parent
            && p.parts != parts
        {
            return Err(ApiError::internal(format!(
                "snapshot {} has {} parts, template {template} {parts}",
                p.id, p.parts
            )));
        }
        let sid = new_id();
        let created = now();
        let mut meta: Labels = BTreeMap::new();
        meta.insert(L_ID.into(), sid.clone());
        meta.insert(L_TEMPLATE.into(), template.clone());
        meta.insert(L_SANDBOX.into(), sid_sandbox.clone());
        meta.insert(L_PARTS.into(), parts.to_string());
        meta.insert(L_CREATED.into(), created.to_string());
        if let Some(n) = &req.name {
            meta.insert(L_NAME.into(), n.clone());
        }
        if let Some(p) = &parent {
            meta.insert(L_PARENT.into(), p.id.clone());
            if let Some(img) = &p.image {
                meta.insert(L_IMAGE.into(), image_label(img)?);
            }
        }
        for (k, v) in &req.labels {
            meta.insert(format!("{L_USER}{k}"), v.clone());
        }
        // What part 0's labels will say once complete: the new snapshot's
        // record, without walking the store again to read it back.
        let mut complete = meta.clone();
        complete.insert(L_COMPLETE.into(), "1".into());
        let store = self.store()?;
        let host = self.host.clone();
        let was_running = state == SandboxState::Running;
        // A `record` (or `replay`) sandbox's cassette goes with it.
        let cassette = self
            .net_cassette_source(&e)
            .map(|src| (src, self.net_snapshot_cassette(&sid)));
        let cassette_dst = cassette.as_ref().map(|(_, d)| d.clone());
        let sandbox_id = sid_sandbox.clone();
        let (sid2, parent_id) = (sid.clone(), parent.as_ref().map(|p| p.id.clone()));
        let result = tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
            if was_running {
                host.freeze(&container.id).map_err(container_error)?;
            }
            let copied = (|| {
                let mut size = 0;
                for (n, below) in below.iter().enumerate() {
                    let upper = host.upper_dir(&container, n).map_err(container_error)?;
                    // Measured here, while frozen: the store may not be
                    // able to tell cheaply later (btrfs: whole trees).
                    size += hull_fs::snapshot::dir_usage(&upper)
                        .map_err(snapshot_error)?
                        .bytes;
                    let labels = if n == 0 {
                        meta.clone()
                    } else {
                        BTreeMap::from([(L_ID.to_string(), sid2.clone())])
                    };
                    let parent_key = parent_id.as_ref().map(|p| part_key(p, n));
                    store
                        .commit_from_dir_over(
                            &part_key(&sid2, n),
                            parent_key.as_deref(),
                            &upper,
                            std::slice::from_ref(below),
                            &labels,
                        )
                        .map_err(snapshot_error)?;
                }
                if let Some((src, dst)) = &cassette {
                    hull_net::cassette::attach_to_snapshot(src, dst, &sandbox_id).map_err(|e| {
                        ApiError::internal(format!(
                            "attaching the network cassette: {}",
                            crate::error_chain(&e)
                        ))
                    })?;
                }
                Ok(size)
            })();
            if was_running {
                let _ = host.thaw(&container.id);
            }
            let size = copied?;
            let done: LabelChanges = BTreeMap::from([
                (L_COMPLETE.into(), Some("1".into())),
                (L_SIZE.into(), Some(size.to_string())),
            ]);
            store
                .update_labels(&part_key(&sid2, 0), &done)
                .map_err(snapshot_error)?;
            Ok(size)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
        .and_then(|r| r);
        let size = match result {
            Ok(size) => size,
            Err(err) => {
                let store = self.store()?;
                for n in 0..parts {
                    let _ = store.remove(&part_key(&sid, n));
                }
                if let Some(d) = &cassette_dst {
                    let _ = std::fs::remove_file(d);
                }
                return Err(err);
            }
        };
        complete.insert(L_SIZE.into(), size.to_string());
        self.touch(&e);
        let r = SnapRecord::from_labels(&complete)
            .ok_or_else(|| ApiError::internal(format!("snapshot {sid}: incomplete labels")))?;
        Ok(self.to_api(&r))
    }

    pub async fn list_snapshots(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Snapshot>, ApiError> {
        let mut v: Vec<Snapshot> = self
            .snap_records()?
            .iter()
            .filter(|r| labels.iter().all(|(k, val)| r.labels.get(k) == Some(val)))
            .map(|r| self.to_api(r))
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(v)
    }

    pub async fn get_snapshot(&self, id_or_name: &str) -> Result<Snapshot, ApiError> {
        let r = self.snap_lookup(id_or_name)?;
        Ok(self.to_api(&r))
    }

    /// Delete a snapshot nothing depends on (no sandbox born from it, no
    /// snapshot taken on top of it).
    pub async fn delete_snapshot(&self, id_or_name: &str) -> Result<(), ApiError> {
        let _names = self.snap_lock.write().await;
        let r = self.snap_lookup(id_or_name)?;
        if let Some(t) = &r.saved_as {
            return Err(ApiError::conflict(format!(
                "snapshot {} is template {t}: remove the template first (hull template rm {t})",
                r.id
            )));
        }
        self.check_unused(&r)?;
        self.remove_parts(&r)
    }

    /// Refuse (`conflict`) to delete `r` while something depends on it.
    /// Under the snapshot lock.
    fn check_unused(&self, r: &SnapRecord) -> Result<(), ApiError> {
        let users: Vec<String> = self
            .sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|e| e.record().sandbox.snapshot.as_deref() == Some(r.id.as_str()))
            .map(|e| e.id())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "snapshot {} is in use by sandboxes {}: remove them (or roll them back to another snapshot) first",
                r.id,
                users.join(", ")
            )));
        }
        if self.exports.busy(&r.id) {
            return Err(ApiError::conflict(format!(
                "snapshot {} is being exported; try again when the export has finished",
                r.id
            )));
        }
        let children: Vec<String> = self
            .snap_records()?
            .into_iter()
            .filter(|c| c.parent.as_deref() == Some(r.id.as_str()))
            .map(|c| c.id)
            .collect();
        if !children.is_empty() {
            return Err(ApiError::conflict(format!(
                "snapshot {} has snapshots taken on top of it: {}; delete those first",
                r.id,
                children.join(", ")
            )));
        }
        Ok(())
    }

    /// Delete `r`'s parts (checked with [`Self::check_unused`], under the
    /// snapshot lock).
    fn remove_parts(&self, r: &SnapRecord) -> Result<(), ApiError> {
        let store = self.store()?;
        let own: Vec<PathBuf> = (0..r.parts)
            .filter_map(|n| store.layers(&part_key(&r.id, n)).ok())
            .filter_map(|l| l.into_iter().next())
            .collect();
        self.host.release_layers(&own);
        // Unmark part 0 first: a crash from here on leaves an incomplete
        // group that the next start removes, never a listed snapshot with
        // parts missing.
        let undone: LabelChanges = BTreeMap::from([(L_COMPLETE.into(), None)]);
        store
            .update_labels(&part_key(&r.id, 0), &undone)
            .map_err(snapshot_error)?;
        for n in 0..r.parts {
            store.remove(&part_key(&r.id, n)).map_err(snapshot_error)?;
        }
        let cassette = self.net_snapshot_cassette(&r.id);
        match std::fs::remove_file(&cassette) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(snapshot = %r.id, error = %e, "removing the snapshot's network cassette")
            }
        }
        Ok(())
    }

    /// Templates saved from snapshots.
    pub(crate) fn saved_templates(&self) -> Result<Vec<hull_api::TemplateInfo>, ApiError> {
        let mut v: Vec<hull_api::TemplateInfo> = self
            .snap_records()?
            .into_iter()
            .filter_map(|r| {
                Some(hull_api::TemplateInfo {
                    name: r.saved_as.clone()?,
                    available: true,
                    description: r.describe(),
                    note: None,
                    snapshot: Some(r.id),
                    config: r.image.clone(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// The snapshot behind saved template `name`, if there is one.
    pub(crate) fn saved_template(&self, name: &str) -> Result<Option<SnapRecord>, ApiError> {
        Ok(self
            .snap_records()?
            .into_iter()
            .find(|r| r.saved_as.as_deref() == Some(name)))
    }

    /// Every template: the built-in ones, then those saved from snapshots.
    pub async fn templates(&self) -> Result<Vec<hull_api::TemplateInfo>, ApiError> {
        Ok(self.host_info().templates)
    }

    /// Make snapshot `snapshot` usable as template `name`
    /// (`create --template NAME` is then `create --from SNAPSHOT`).
    pub async fn save_template(
        &self,
        name: &str,
        snapshot: &str,
    ) -> Result<hull_api::TemplateInfo, ApiError> {
        validate_dns_label("template name", name)?;
        refuse_reserved("template", name)?;
        let _w = self.snap_lock.write().await;
        if self.host.templates().names().contains(&name) {
            return Err(ApiError::conflict(format!("{name} is a built-in template")));
        }
        if self.saved_template(name)?.is_some() {
            return Err(ApiError::conflict(format!(
                "a template named {name:?} already exists"
            )));
        }
        let r = self.snap_lookup(snapshot)?;
        if let Some(t) = &r.saved_as {
            return Err(ApiError::conflict(format!(
                "snapshot {} is already template {t}",
                r.id
            )));
        }
        let set: LabelChanges = BTreeMap::from([(L_TEMPLATE_NAME.into(), Some(name.to_string()))]);
        self.store()?
            .update_labels(&part_key(&r.id, 0), &set)
            .map_err(snapshot_error)?;
        Ok(hull_api::TemplateInfo {
            name: name.into(),
            available: true,
            description: r.describe(),
            note: None,
            snapshot: Some(r.id.clone()),
            config: r.image.clone(),
        })
    }

    /// Remove a template. One imported or built deletes its snapshot too
    /// (refused while sandboxes or snapshots use it); one saved from a
    /// snapshot only forgets the name (the snapshot stays).
    pub async fn remove_template(&self, name: &str) -> Result<(), ApiError> {
        let _w = self.snap_lock.write().await;
        if self.host.templates().names().contains(&name) {
            return Err(ApiError::invalid(format!(
                "{name} is a built-in template and cannot be removed"
            )));
        }
        let r = self
            .saved_template(name)?
            .ok_or_else(|| ApiError::not_found(format!("no template named {name:?}")))?;
        // An imported image or a Debian build exists only as the template:
        // its files go with it (once nothing uses them). A template saved
        // from a snapshot leaves that snapshot.
        let owned = r.origin.is_some();
        if owned {
            self.check_unused(&r).map_err(|e| {
                ApiError::conflict(format!("template {name} is still used: {}", e.message))
            })?;
        }
        let unset: LabelChanges = BTreeMap::from([(L_TEMPLATE_NAME.into(), None)]);
        self.store()?
            .update_labels(&part_key(&r.id, 0), &unset)
            .map_err(snapshot_error)?;
        if owned {
            self.remove_parts(&r)?;
        }
        Ok(())
    }

    /// `n` new sandboxes from one snapshot.
    pub async fn fork(&self, id_or_name: &str, req: Fork) -> Result<Vec<Sandbox>, ApiError> {
        if req.n == 0 || req.n > MAX_FORK {
            return Err(ApiError::invalid(format!(
                "n must be 1 to {MAX_FORK} (got {})",
                req.n
            )));
        }
        let snap = self.snap_lookup(id_or_name)?;
        let mut made: Vec<Sandbox> = Vec::with_capacity(req.n as usize);
        for _ in 0..req.n {
            let r = self
                .create(CreateSandbox {
                    from: Some(snap.id.clone()),
                    profile: req.profile,
                    labels: req.labels.clone(),
                    limits: req.limits,
                    ttl_seconds: req.ttl_seconds,
                    network: req.network.clone(),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(s) => made.push(s),
                Err(err) => {
                    // All or nothing.
                    for s in &made {
                        let _ = self.destroy(&s.id).await;
                    }
                    return Err(err);
                }
            }
        }
        Ok(made)
    }

    /// Replace a sandbox's files with a snapshot's: its processes are
    /// killed and its PID 1 restarted over the snapshot (same id, name,
    /// limits, labels and TTL).
    pub async fn rollback(&self, id: &str, snapshot: &str) -> Result<Sandbox, ApiError> {
        let _snap_guard = self.snap_lock.read().await;
        let snap = self.snap_lookup(snapshot)?;
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        let (sid, st, template) = {
            let r = e.record();
            (
                r.sandbox.id.clone(),
                r.sandbox.state,
                r.sandbox.template.clone(),
            )
        };
        if template != snap.template {
            return Err(ApiError::invalid(format!(
                "snapshot {} holds template {}, sandbox {sid} template {template}",
                snap.id, snap.template
            )));
        }
        if st == SandboxState::Creating || st == SandboxState::Stopping {
            return Err(ApiError::conflict(state::refusal(&sid, st, "roll back")));
        }
        let layers = self.snap_layers(&snap)?;
        if st != SandboxState::Stopped {
            self.teardown(&e).await?;
            e.record().sandbox.state = SandboxState::Stopped;
        }
        debug_assert!(state::valid_transition(
            SandboxState::Stopped,
            SandboxState::Creating
        ));
        {
            let mut r = e.record();
            r.sandbox.state = SandboxState::Creating;
            r.sandbox.pid = None;
            r.sandbox.snapshot = Some(snap.id.clone());
        }
        self.persist(&e)?;
        let spec = self.container_spec(&e, layers);
        let started = self.start_container(&e, spec).await;
        if let Err(err) = started {
            {
                let mut r = e.record();
                r.sandbox.state = SandboxState::Failed;
                r.sandbox.error = Some(err.message.clone());
                push_event(
                    &mut r,
                    "guest_lost",
                    format!("rollback failed: {}", err.message),
                );
            }
            let _ = self.persist(&e);
            return Err(err);
        }
        {
            let mut r = e.record();
            push_event(
                &mut r,
                "rolled_back",
                format!(
                    "files replaced by snapshot {}; processes restarted",
                    snap.id
                ),
            );
        }
        self.persist(&e)?;
        self.touch(&e);
        Ok(e.sandbox())
    }
}
