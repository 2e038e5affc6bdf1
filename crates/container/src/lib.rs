//! The container substrate, host side: start a sandbox as a guest agent in
//! fresh Linux namespaces, limit it with cgroups, pause it with the freezer,
//! and tear it down leaving nothing behind.
//!
//! Per daemon instance (named by an id kept in the state directory) this
//! holds a host uid/gid range that sandbox root maps to, a cgroup parent
//! `hull-<instance>`, a user namespace with that mapping, and idmapped
//! read-only mounts of each template's layers under `<state>/mnt/`. Per
//! sandbox it creates `<state>/sandboxes/<id>/` (mount point of the writable
//! layer, the agent's socket) and a cgroup; everything else the sandbox
//! mounts lives in its own mount namespace and vanishes with it.
//!
//! Limits: all sandboxes of one daemon share its uid range (they are kept
//! apart by their mount, pid and ipc namespaces, not by uids). The writable
//! layer is a tmpfs: it lives in memory and is lost when the sandbox ends.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hull_api::Limits;
use hull_fs::{Template, TemplateError, TemplateStore};
use hull_proto::init::{InitPlan, InitStatus, OverlaySpec, PLAN_FD, STATUS_FD};
use hull_sys::cgroup::{Cgroup, CgroupLimits, CgroupManager};
use serde::{Deserialize, Serialize};

/// Size of the uid/gid range each daemon instance maps sandbox ids onto.
pub const ID_RANGE: u32 = 65536;
/// How long a sandbox's init may take to report ready.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{what}: {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup setup failed")]
    Cgroup(#[from] hull_sys::cgroup::CgroupError),
    #[error("starting the sandbox's init failed")]
    Spawn(#[from] hull_sys::ns::NsError),
    #[error("preparing template layers failed")]
    Mount(#[from] hull_sys::mount::MountError),
    #[error("sandbox init failed: {0}")]
    Init(String),
    #[error("this host cannot run containers: {0}")]
    Unsupported(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Identity of one daemon instance, kept in `<state>/instance.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Instance {
    /// 8 lowercase hex digits; names the cgroup parent and (later) nft tables.
    pub id: String,
    /// First host uid/gid sandbox root maps to.
    pub uid_base: u32,
}

impl Instance {
    /// Load the instance of `state_dir`, creating it on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, ContainerError> {
        let path = state_dir.join("instance.json");
        if let Ok(text) = fs::read_to_string(&path)
            && let Ok(i) = serde_json::from_str::<Instance>(&text)
        {
            return Ok(i);
        }
        let mut b = [0u8; 4];
        getrandom_fill(&mut b);
        let n = u32::from_be_bytes(b);
        let id = format!("{n:08x}");
        // 16384 slots of 65536 ids from 2^30: well above any real user's uid.
        let uid_base = 0x4000_0000 + (n % 16384) * ID_RANGE;
        let inst = Instance { id, uid_base };
        let tmp = state_dir.join("instance.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(&inst).unwrap_or_default())
            .map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("writing", &path))?;
        Ok(inst)
    }
}

fn getrandom_fill(b: &mut [u8]) {
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let x = t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32);
        for (i, v) in b.iter_mut().enumerate() {
            *v = (x >> (i * 8)) as u8;
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub id: String,
    pub template: String,
    /// Snapshot layers stacked over the template's layers: for each of the
    /// template's overlays (in the template's order), host directories
    /// holding a snapshot's files for that target, nearest first. Empty for
    /// a sandbox born straight from its template.
    pub snapshot_layers: Vec<Vec<PathBuf>>,
    pub limits: Limits,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Start in this network namespace (a pooled one the daemon made, see
    /// `hull_net::pool`) instead of a fresh one with only `lo`.
    pub netns: Option<std::sync::Arc<OwnedFd>>,
}

/// A running container as the host tracks it.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// Host pid of the sandbox's init.
    pub pid: i32,
    /// Start time of that pid (clock ticks since boot), to detect pid reuse.
    pub start_time: u64,
    pub socket: PathBuf,
    pub pidfd: OwnedFd,
    /// Whether `pid` is our child (we must reap it).
    pub our_child: bool,
}

impl Container {
    /// Has its init exited?
    pub fn exited(&self) -> bool {
        hull_sys::ns::pidfd_exited(self.pidfd.as_fd())
    }
}

/// The substrate for one daemon instance.
pub struct ContainerHost {
    state_dir: PathBuf,
    guest_binary: PathBuf,
    instance: Instance,
    userns: OwnedFd,
    cgroups: CgroupManager,
    templates: TemplateStore,
    /// Template name -> lower layer paths (idmapped mounts), prepared once.
    lowers: Mutex<HashMap<String, Vec<OverlaySpec>>>,
    /// Snapshot layer directory -> its idmapped read-only mount.
    layer_mounts: Mutex<HashMap<PathBuf, PathBuf>>,
    /// Whether `<state>/sandboxes` is ready (see [`RUNTIME_FS_OPTIONS`]).
    runtime_fs: Mutex<bool>,
}

/// Each sandbox's runtime files (the agent's socket, the guest log, the
/// mount point of its writable layer) live in `<state>/sandboxes/<id>` on a
/// tmpfs the daemon mounts there: creating and removing a few directories
/// on a disk filesystem costs milliseconds (ext4 on this machine kind:
/// ~1.9 ms per sandbox), on tmpfs tens of microseconds. Nothing there needs
/// to outlive a reboot; sandboxes don't either. The mount stays while the
/// daemon runs (and while sandboxes live on without it); `system reset`,
/// and a daemon stopping with no sandbox left, unmount it.
const RUNTIME_FS_OPTIONS: &str = "mode=0711,size=256m,nr_inodes=262144";

impl ContainerHost {
    /// Set up the instance: uid range, user namespace, cgroup parent.
    pub fn open(state_dir: &Path, guest_binary: PathBuf) -> Result<Self, ContainerError> {
        if !guest_binary.is_file() {
            return Err(ContainerError::Unsupported(format!(
                "guest agent binary {} not found (install hull-guest next to hull, or set guest_binary)",
                guest_binary.display()
            )));
        }
        let s = state_dir.display().to_string();
        if s.contains([',', ':', '\n']) || s.len() > 60 {
            return Err(ContainerError::Unsupported(format!(
                "state directory {s:?} must be an absolute path of at most 60 characters without ',' or ':' (overlayfs options and socket paths are built from it)"
            )));
        }
        for d in ["sandboxes", "mnt"] {
            let p = state_dir.join(d);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&p)
                .map_err(io_err("creating", &p))?;
        }
        let instance = Instance::load_or_create(state_dir)?;
        let userns = hull_sys::ns::userns_fd(instance.uid_base, ID_RANGE)?;
        let cgroups = CgroupManager::detect(&format!("hull-{}", instance.id))?;
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            guest_binary,
            templates: TemplateStore::new(state_dir),
            instance,
            userns,
            cgroups,
            lowers: Mutex::new(HashMap::new()),
            runtime_fs: Mutex::new(false),
            layer_mounts: Mutex::new(HashMap::new()),
        })
    }

    /// Mount the tmpfs for sandbox runtime directories unless it is there.
    /// A directory that already holds sandboxes on disk (a state directory
    /// from before this layout) is used as it is, with a warning.
    fn ensure_runtime_fs(&self) -> Result<(), ContainerError> {
        let mut ready = self.runtime_fs.lock().unwrap_or_else(|e| e.into_inner());
        if *ready {
            return Ok(());
        }
        let dir = self.state_dir.join("sandboxes");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&dir)
            .map_err(io_err("creating", &dir))?;
        if !hull_sys::mount::is_mountpoint(&dir) {
            let empty = fs::read_dir(&dir)
                .map_err(io_err("listing", &dir))?
                .next()
                .is_none();
            if empty {
                nix::mount::mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOEXEC,
                    Some(RUNTIME_FS_OPTIONS),
                )
                .map_err(|e| io_err("mounting a tmpfs on", &dir)(e.into()))?;
            } else {
                tracing::warn!(
                    dir = %dir.display(),
                    "sandbox runtime directories stay on disk: the directory is not empty"
                );
            }
        }
        *ready = true;
        Ok(())
    }

    /// Unmount the runtime tmpfs (only when no sandbox is left).
    fn release_runtime_fs(&self) {
        let mut ready = self.runtime_fs.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.state_dir.join("sandboxes");
        if hull_sys::mount::is_mountpoint(&dir) {
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        }
        *ready = false;
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }
    pub fn templates(&self) -> &TemplateStore {
        &self.templates
    }
    pub fn cgroups(&self) -> &CgroupManager {
        &self.cgroups
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("sandboxes").join(id)
    }

    /// A read-only bind mount of one snapshot layer directory, made on first
    /// use at `<state>/mnt/layers/<hash of the path>` (it survives daemon
    /// restarts and is found again). Not idmapped: a layer's files keep the
    /// host ids they had in the sandbox's writable layer (`uid_base + n`),
    /// which the sandbox's user namespace shows as `n` again. The bind gives
    /// init a path it may traverse, whatever the store's own permissions.
    fn layer_mount(&self, source: &Path) -> Result<PathBuf, ContainerError> {
        let mut cache = self.layer_mounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.get(source) {
            return Ok(m.clone());
        }
        let mnt = self.layer_mount_path(source);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&mnt)
            .map_err(io_err("creating", &mnt))?;
        if !hull_sys::mount::is_mountpoint(&mnt) {
            use nix::mount::MsFlags;
            let bind = |flags: MsFlags| {
                nix::mount::mount(
                    Some(source),
                    &mnt,
                    None::<&str>,
                    MsFlags::MS_BIND | flags,
                    None::<&str>,
                )
                .map_err(|e| io_err("binding a snapshot layer at", &mnt)(e.into()))
            };
            bind(MsFlags::empty())?;
            if let Err(e) = bind(
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            ) {
                // Never leave a writable bind behind: the next call would
                // find the mount point and use it as it is.
                let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
                return Err(e);
            }
        }
        cache.insert(source.to_path_buf(), mnt.clone());
        Ok(mnt)
    }

    /// Where [`Self::layer_mount`] mounts `source`.
    fn layer_mount_path(&self, source: &Path) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        self.state_dir
            .join("mnt")
            .join("layers")
            .join(format!("{:016x}", h.finish()))
    }

    /// Undo [`Self::layer_mount`] for layers that are going away (a deleted
    /// snapshot). Sandboxes still using them keep their own references.
    /// Also finds mounts an earlier daemon made (not in this one's cache).
    pub fn release_layers(&self, sources: &[PathBuf]) {
        let mut cache = self.layer_mounts.lock().unwrap_or_else(|e| e.into_inner());
        for src in sources {
            let mnt = cache
                .remove(src)
                .unwrap_or_else(|| self.layer_mount_path(src));
            if hull_sys::mount::is_mountpoint(&mnt) {
                let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = fs::remove_dir(&mnt);
        }
    }

    /// Where the host reads overlay `index`'s upper directory of a running
    /// (ideally frozen) sandbox: through the descriptor its PID 1 keeps on
    /// the writable layer ([`hull_proto::init::RW_FD`]).
    pub fn upper_dir(&self, c: &Container, index: usize) -> Result<PathBuf, ContainerError> {
        let rw = PathBuf::from(format!("/proc/{}/fd/{}", c.pid, hull_proto::init::RW_FD));
        let st = nix::sys::statfs::statfs(&rw).map_err(|e| io_err("reading", &rw)(e.into()))?;
        if st.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
            return Err(ContainerError::Init(format!(
                "sandbox {}: its writable layer is not where it should be",
                c.id
            )));
        }
        Ok(rw.join(format!("upper{index}")))
    }

    /// Idmapped read-only mounts of a template's layers (made once per daemon
    /// state directory; they survive daemon restarts and are reused).
    fn overlays_for(&self, template: &Template) -> Result<Vec<OverlaySpec>, ContainerError> {
        let mut cache = self.lowers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = cache.get(&template.name) {
            return Ok(o.clone());
        }
        let mut overlays = Vec::new();
        for (i, layer) in template.layers.iter().enumerate() {
            let mnt = self
                .state_dir
                .join("mnt")
                .join(&template.name)
                .join(i.to_string());
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&mnt)
                .map_err(io_err("creating", &mnt))?;
            if !hull_sys::mount::is_mountpoint(&mnt) {
                hull_sys::mount::idmapped_bind(&layer.source, &mnt, self.userns.as_fd(), true)?;
            }
            overlays.push(OverlaySpec {
                target: layer.target.clone(),
                lower: vec![mnt],
            });
        }
        cache.insert(template.name.clone(), overlays.clone());
        Ok(overlays)
    }

    /// Start a sandbox and wait until its agent listens. Blocking.
    pub fn create(&self, spec: &ContainerSpec) -> Result<Container, ContainerError> {
        self.ensure_runtime_fs()?;
        let template = self.templates.get(&spec.template)?;
        let mut overlays = self.overlays_for(&template)?;
        if !spec.snapshot_layers.is_empty() {
            if spec.snapshot_layers.len() != overlays.len() {
                return Err(ContainerError::Init(format!(
                    "the snapshot has {} layer sets, template {} has {} overlays",
                    spec.snapshot_layers.len(),
                    template.name,
                    overlays.len()
                )));
            }
            for (o, layers) in overlays.iter_mut().zip(&spec.snapshot_layers) {
                let mut lower = Vec::with_capacity(layers.len() + o.lower.len());
                for l in layers {
                    lower.push(self.layer_mount(l)?);
                }
                lower.append(&mut o.lower);
                o.lower = lower;
            }
        }
        let dir = self.sandbox_dir(&spec.id);
        let result = self.start(spec, &template, overlays, &dir);
        if result.is_err() {
            let _ = self.cleanup(&spec.id);
        }
        result
    }

    fn start(
        &self,
        spec: &ContainerSpec,
        template: &Template,
        overlays: Vec<OverlaySpec>,
        dir: &Path,
    ) -> Result<Container, ContainerError> {
        fs::DirBuilder::new()
            .mode(0o711)
            .create(dir)
            .map_err(io_err("creating", dir))?;
        let rw = dir.join("rw");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&rw)
            .map_err(io_err("creating", &rw))?;
        // The agent (root of the sandbox, an unprivileged uid here) binds its socket in run/.
        let run = dir.join("run");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&run)
            .map_err(io_err("creating", &run))?;
        std::os::unix::fs::chown(
            &run,
            Some(self.instance.uid_base),
            Some(self.instance.uid_base),
        )
        .map_err(io_err("chown", &run))?;
        let socket = run.join("agent.sock");

        let cg = self.cgroups.create(
            &spec.id,
            &CgroupLimits {
                memory_bytes: spec.limits.memory_bytes,
                cpus: spec.limits.cpus,
                pids: u64::from(spec.limits.pids),
            },
        )?;

        let mut env: Vec<(String, String)> = template.env.clone();
        for (k, v) in &spec.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let plan = InitPlan {
            sandbox_id: spec.id.clone(),
            hostname: spec.id.clone(),
            sandbox_dir: dir.to_path_buf(),
            socket_path: socket.clone(),
            disk_bytes: spec.limits.disk_bytes,
            overlays,
            env,
            user: spec.user.clone(),
            workdir: spec.workdir.clone(),
            seccomp: true,
        };
        let (plan_r, plan_w) = pipe().map_err(io_err("creating a pipe", dir))?;
        let (status_r, status_w) = pipe().map_err(io_err("creating a pipe", dir))?;
        let (go_r, go_w) = pipe().map_err(io_err("creating a pipe", dir))?;
        // The guest's own diagnostics go to a file in the sandbox directory,
        // never to the daemon's stdio (a sandbox must not hold its terminal).
        let null =
            fs::File::open("/dev/null").map_err(io_err("opening", Path::new("/dev/null")))?;
        let log_path = dir.join("guest.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io_err("creating", &log_path))?;
        let cg_fd = cg.v2_dir_fd();
        let argv = [OsStr::new("hull-guest"), OsStr::new("init")];
        let namespaces = match spec.netns {
            Some(_) => hull_sys::ns::SANDBOX_NAMESPACES & !(libc_clone_newnet()),
            None => hull_sys::ns::SANDBOX_NAMESPACES,
        };
        let spawn_spec = hull_sys::ns::SpawnSpec {
            program: &self.guest_binary,
            argv: &argv,
            env: &[("HULL_SANDBOX", spec.id.as_str())],
            namespaces,
            cgroup: cg_fd.as_ref().map(|f| f.as_fd()),
            fds: &[
                (null.as_fd(), 0),
                (log.as_fd(), 1),
                (log.as_fd(), 2),
                (plan_r.as_fd(), PLAN_FD),
                (status_w.as_fd(), STATUS_FD),
            ],
            wait_before_exec: Some(go_r.as_fd()),
            become_root: true,
        };
        // A pooled namespace: this thread enters it just for the clone, so
        // the child inherits it (owned by the initial user namespace: root
        // in the sandbox gets no CAP_NET_ADMIN over it).
        let spawned = match &spec.netns {
            Some(ns) => hull_sys::netns::run_in(ns.as_fd(), || {
                // Its sysfs, made while in it: the sandbox can't mount one.
                let sysfs = hull_sys::mount::detached_sysfs()
                    .inspect_err(|e| {
                        tracing::debug!(error = %e, "no sysfs for the sandbox's /sys");
                    })
                    .ok();
                let mut fds = spawn_spec.fds.to_vec();
                if let Some(fd) = &sysfs {
                    fds.push((fd.as_fd(), hull_proto::init::SYSFS_FD));
                }
                hull_sys::ns::spawn(&hull_sys::ns::SpawnSpec {
                    fds: &fds,
                    ..spawn_spec
                })
            })
            .map_err(|source| ContainerError::Io {
                what: "entering the sandbox's network namespace",
                path: dir.display().to_string(),
                source,
            })??,
            None => hull_sys::ns::spawn(&spawn_spec)?,
        };
        drop(go_r);
        drop(plan_r);
        drop(status_w);
        let pid = spawned.pid;
        let container = Container {
            id: spec.id.clone(),
            pid,
            start_time: hull_sys::ns::process_start_time(pid).unwrap_or(0),
            socket,
            pidfd: spawned.pidfd,
            our_child: true,
        };
        let handshake = (|| {
            if cg_fd.is_none() {
                cg.add_pid(pid)?;
            }
            hull_sys::ns::write_id_maps(pid, self.instance.uid_base, ID_RANGE)?;
            // Keep the agent out of the OOM killer's way; its children reset this.
            let _ = fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000");
            // Maps and cgroups are in place: let the child exec.
            fs::File::from(go_w)
                .write_all(b"x")
                .map_err(io_err("releasing init", dir))?;
            let mut w = fs::File::from(plan_w);
            w.write_all(&serde_json::to_vec(&plan).unwrap_or_default())
                .map_err(io_err("sending the plan to init", dir))?;
            drop(w);
            let status = read_status(status_r).map_err(|e| match e {
                ContainerError::Init(m) if m.starts_with("init did not report") => {
                    ContainerError::Init(format!("{m} ({})", describe_stuck(pid, &log_path)))
                }
                e => e,
            })?;
            if !status.ok {
                return Err(ContainerError::Init(
                    status.error.unwrap_or_else(|| "unknown error".into()),
                ));
            }
            Ok(())
        })();
        if let Err(e) = handshake {
            let _ = hull_sys::ns::pidfd_kill(container.pidfd.as_fd(), libc_sigkill());
            hull_sys::ns::wait_pid(pid);
            return Err(e);
        }
        Ok(container)
    }

    /// Re-adopt a sandbox after a daemon restart: the process must still be
    /// the one we started (same pid and start time) and its socket present.
    pub fn adopt(&self, id: &str, pid: i32, start_time: u64) -> Option<Container> {
        let socket = self.sandbox_dir(id).join("run").join("agent.sock");
        if hull_sys::ns::process_start_time(pid)? != start_time || !socket.exists() {
            return None;
        }
        let pidfd = hull_sys::ns::pidfd_open(pid).ok()?;
        let c = Container {
            id: id.into(),
            pid,
            start_time,
            socket,
            pidfd,
            our_child: false,
        };
        (!c.exited()).then_some(c)
    }

    /// Kill a sandbox's processes and remove its cgroup and directory.
    /// Idempotent; safe on half-created sandboxes. Blocking.
    pub fn destroy(&self, container: Option<&Container>) -> Result<(), ContainerError> {
        if let Some(c) = container {
            let _ = hull_sys::ns::pidfd_kill(c.pidfd.as_fd(), libc_sigkill());
            hull_sys::ns::pidfd_wait_exit(c.pidfd.as_fd(), Duration::from_secs(10));
            if c.our_child {
                hull_sys::ns::wait_pid(c.pid);
            }
            return self.cleanup(&c.id);
        }
        Ok(())
    }

    /// Reap our child if it exited (after it died on its own).
    pub fn reap(&self, c: &Container) {
        if c.our_child {
            let _ = hull_sys::ns::try_wait_pid(c.pid);
        }
    }

    /// Remove what a sandbox left on the host: processes in its cgroup, the
    /// cgroup, its directory. Idempotent.
    pub fn cleanup(&self, id: &str) -> Result<(), ContainerError> {
        if let Some(cg) = self.cgroups.open(id)? {
            cg.remove()?;
        }
        let dir = self.sandbox_dir(id);
        // Mounts live in the sandbox's mount namespace; this only matters if
        // something leaked into ours.
        hull_sys::mount::unmount_all_under(&dir);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ContainerError::Io {
                what: "removing",
                path: dir.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Ids with a directory or cgroup on the host (for startup cleanup).
    pub fn leftovers(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(self.state_dir.join("sandboxes"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.extend(self.cgroups.list().unwrap_or_default());
        ids.sort();
        ids.dedup();
        ids
    }

    fn cgroup(&self, id: &str) -> Result<Cgroup, ContainerError> {
        self.cgroups
            .open(id)?
            .ok_or_else(|| ContainerError::Init(format!("cgroup of {id} is gone")))
    }

    pub fn freeze(&self, id: &str) -> Result<(), ContainerError> {
        Ok(self.cgroup(id)?.freeze()?)
    }

    pub fn thaw(&self, id: &str) -> Result<(), ContainerError> {
        Ok(self.cgroup(id)?.thaw()?)
    }

    /// How many processes the OOM killer has killed in the sandbox so far.
    pub fn oom_kills(&self, id: &str) -> u64 {
        self.cgroups
            .open(id)
            .ok()
            .flatten()
            .and_then(|c| c.oom_kills().ok())
            .unwrap_or(0)
    }

    /// For a daemon that is stopping: when no sandbox is left, undo the
    /// host-wide setup (template mounts, the cgroup parent), so a stopped
    /// daemon leaves nothing on the host. With sandboxes alive it keeps
    /// everything for them (they outlive the daemon) and returns `false`.
    pub fn release_if_idle(&self) -> Result<bool, ContainerError> {
        if !self.leftovers().is_empty() {
            return Ok(false);
        }
        let mut lowers = self.lowers.lock().unwrap_or_else(|e| e.into_inner());
        hull_sys::mount::unmount_all_under(&self.state_dir.join("mnt"));
        lowers.clear();
        drop(lowers);
        self.layer_mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.release_runtime_fs();
        Ok(self.cgroups.remove_parent_if_empty()?)
    }

    /// Remove everything this instance made on the host: every sandbox's
    /// processes and cgroup, the cgroup parent, the template mounts, the
    /// built templates, the sandbox directories.
    pub fn reset(&self) -> Result<Vec<String>, ContainerError> {
        let mut removed = Vec::new();
        for id in self.leftovers() {
            self.cleanup(&id)?;
            removed.push(format!("sandbox {id}"));
        }
        self.cgroups.remove_all()?;
        removed.push(format!("cgroup parent hull-{}", self.instance.id));
        self.release_runtime_fs();
        let mnt = self.state_dir.join("mnt");
        let n = hull_sys::mount::unmount_all_under(&mnt);
        if n > 0 {
            removed.push(format!("{n} template mounts"));
        }
        self.lowers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.layer_mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let _ = fs::remove_dir_all(&mnt);
        let _ = fs::DirBuilder::new().mode(0o711).create(&mnt);
        self.templates
            .clear()
            .map_err(io_err("removing templates", &self.state_dir))?;
        Ok(removed)
    }
}

fn libc_clone_newnet() -> u64 {
    nix::sched::CloneFlags::CLONE_NEWNET.bits() as u64
}

fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(io::Error::from)
}

/// What a stuck init is doing, for the error that reports it.
fn describe_stuck(pid: i32, log: &Path) -> String {
    let read = |f: &str| fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let state = read("status")
        .lines()
        .find(|l| l.starts_with("State:"))
        .map(|l| l.trim_start_matches("State:").trim().to_string())
        .unwrap_or_else(|| "gone".into());
    let cmd = read("cmdline").replace('\0', " ");
    let log_tail = fs::read_to_string(log)
        .ok()
        .and_then(|t| t.lines().last().map(str::to_string))
        .unwrap_or_default();
    format!(
        "pid {pid} {state}, waiting in {:?}, running {:?}; guest log: {:?}",
        read("wchan"),
        cmd.trim(),
        log_tail
    )
}

fn read_status(fd: OwnedFd) -> Result<InitStatus, ContainerError> {
    // The pipe closes when init reports or dies; bound the wait anyway.
    let mut f = fs::File::from(fd);
    let deadline = Instant::now() + INIT_TIMEOUT;
    let mut buf = Vec::new();
    let mut pfd = [rustix::event::PollFd::new(&f, rustix::event::PollFlags::IN)];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ContainerError::Init(format!(
                "init did not report within {INIT_TIMEOUT:?}"
            )));
        }
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as i64,
        };
        match rustix::event::poll(&mut pfd, Some(&ts)) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(ContainerError::Init(format!("waiting for init: {e}"))),
        }
    }
    let _ = pfd;
    f.read_to_end(&mut buf)
        .map_err(|e| ContainerError::Init(format!("reading init's status: {e}")))?;
    if buf.is_empty() {
        return Err(ContainerError::Init(
            "init exited before reporting (see the daemon log)".into(),
        ));
    }
    serde_json::from_slice(&buf)
        .map_err(|e| ContainerError::Init(format!("malformed status from init: {e}")))
}
