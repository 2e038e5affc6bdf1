//! The plan the host hands a container's init (the guest agent started in
//! fresh namespaces) on fd 3, and the status it answers on fd 4.
//!
//! Paths in the plan are host paths: init resolves them before it pivots
//! into the sandbox's root and never sees the host again afterwards.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// File descriptor on which init reads its [`InitPlan`] (JSON, until EOF).
pub const PLAN_FD: i32 = 3;
/// File descriptor on which init writes one [`InitStatus`] (JSON) and closes.
pub const STATUS_FD: i32 = 4;
/// For a sandbox in a namespace the host made (networked sandboxes): a
/// detached read-only sysfs mount of that namespace, made by the host (only
/// a holder of `CAP_SYS_ADMIN` over the namespace's owner may mount sysfs
/// for it), which init moves onto `/sys`. Absent otherwise: init mounts
/// sysfs itself.
pub const SYSFS_FD: i32 = 5;
/// Descriptor the guest keeps open on its writable layer's root (the tmpfs
/// holding `upper<i>`/`work<i>` for each overlay, in the sandbox's own mount
/// namespace, where no path reaches it after `pivot_root`). The host reads
/// a frozen sandbox's changes through `/proc/<pid>/fd/<RW_FD>/upper<i>`
/// (snapshots). High, so that it is free when init takes it; close-on-exec.
pub const RW_FD: i32 = 100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InitPlan {
    pub sandbox_id: String,
    pub hostname: String,
    /// A host directory private to this sandbox; init mounts its writable
    /// layer (a tmpfs) on `<dir>/rw` and the root filesystem under it.
    pub sandbox_dir: PathBuf,
    /// Where init binds the agent's listening socket (a host path).
    pub socket_path: PathBuf,
    /// Size cap of the writable layer in bytes.
    pub disk_bytes: u64,
    /// Overlay mounts, the root (`/`) first.
    pub overlays: Vec<OverlaySpec>,
    /// Environment every process in the sandbox starts with.
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Install the seccomp allowlist (always on outside tests of the filter itself).
    pub seccomp: bool,
}

/// One overlay: read-only `lower` layers (top first) merged at `target`
/// (a path inside the sandbox), with a private writable upper layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OverlaySpec {
    pub target: String,
    pub lower: Vec<PathBuf>,
}

/// What init reports once set up (or when setup failed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InitStatus {
    pub ok: bool,
    /// The setup step that failed and why.
    #[serde(default)]
    pub error: Option<String>,
}
