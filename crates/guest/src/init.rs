//! Container init: turn a freshly cloned process (new user, mount, pid, uts,
//! ipc and net namespaces, already placed in its cgroups and id-mapped by
//! the host) into a sandbox, then serve the agent as its PID 1.
//!
//! Steps, each reported by name if it fails: become root of the user
//! namespace; enter a new cgroup namespace; make every mount private; mount
//! the writable layer (a size-capped tmpfs) and the overlays over the
//! template's idmapped read-only layers; mount `/proc`, `/sys` (read-only),
//! a minimal `/dev` and `/dev/pts`; mask sensitive `/proc` and `/sys` paths;
//! bind the agent's socket on the host path; `pivot_root` and detach the old
//! root; set the hostname and bring up loopback; drop capabilities to the
//! default set, set `no_new_privs`, install the seccomp allowlist; report.
//!
//! Limits: init trusts its plan (it comes from the daemon over a pipe only
//! the daemon holds); it does not trust anything inside the sandbox.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use hull_proto::init::{InitPlan, InitStatus, PLAN_FD, RW_FD, STATUS_FD, SYSFS_FD};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{Gid, Uid};

use crate::agent::{AgentConfig, serve};

/// Files bound over with an empty file (as Docker and runc do).
const MASKED_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/interrupts",
];
/// Directories hidden under an empty read-only tmpfs.
const MASKED_DIRS: &[&str] = &["/proc/acpi", "/proc/scsi", "/sys/firmware", "/proc/asound"];
/// Paths made read-only.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Host device nodes bound into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Errors of one setup step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct InitError {
    step: &'static str,
    message: String,
}

trait Step<T> {
    fn step(self, step: &'static str) -> Result<T, InitError>;
}
impl<T, E: std::fmt::Display> Step<T> for Result<T, E> {
    fn step(self, step: &'static str) -> Result<T, InitError> {
        self.map_err(|e| InitError {
            step,
            message: e.to_string(),
        })
    }
}

/// Entry point of `hull-guest init`. Never returns on success.
pub fn run() -> i32 {
    let Some(plan_fd) = hull_sys::ns::take_inherited_fd(PLAN_FD) else {
        eprintln!(
            "hull-guest init: no plan on fd {PLAN_FD}; this mode is started by the hull daemon"
        );
        return 2;
    };
    let status_fd = hull_sys::ns::take_inherited_fd(STATUS_FD);
    let sysfs_fd = hull_sys::ns::take_inherited_fd(SYSFS_FD);
    let result = read_plan(plan_fd).and_then(|plan| setup(&plan, sysfs_fd).map(|l| (plan, l)));
    let status = match &result {
        Ok(_) => InitStatus {
            ok: true,
            error: None,
        },
        Err(e) => InitStatus {
            ok: false,
            error: Some(e.to_string()),
        },
    };
    if let Some(fd) = status_fd {
        let mut f = fs::File::from(fd);
        let _ = f.write_all(&serde_json::to_vec(&status).unwrap_or_default());
    }
    match result {
        Ok((plan, listener)) => {
            let config = AgentConfig {
                root: PathBuf::from("/"),
                base_env: plan.env.clone(),
                default_user: plan.user.clone(),
                default_cwd: plan.workdir.clone(),
                pid1: true,
            };
            match serve(listener, config) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("hull-guest: agent stopped: {e}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("hull-guest init: {e}");
            1
        }
    }
}

fn read_plan(fd: OwnedFd) -> Result<InitPlan, InitError> {
    let mut buf = Vec::new();
    fs::File::from(fd)
        .take(1 << 20)
        .read_to_end(&mut buf)
        .step("reading the plan")?;
    serde_json::from_slice(&buf).step("parsing the plan")
}

fn setup(plan: &InitPlan, sysfs: Option<OwnedFd>) -> Result<UnixListener, InitError> {
    // The host has written our id maps: become root of the user namespace.
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .step("setresgid")?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .step("setresuid")?;
    nix::unistd::setgroups(&[]).step("setgroups")?;
    // The host placed us in our cgroups; make them our cgroup root.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .step("entering a cgroup namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .step("making mounts private")?;

    let rw = plan.sandbox_dir.join("rw");
    let data = format!("size={},mode=0755", plan.disk_bytes);
    mount(
        Some("tmpfs"),
        &rw,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .step("mounting the writable layer")?;
    keep_writable_layer(&rw).step("keeping the writable layer open")?;
    let root = rw.join("root");
    mkdir(&root, 0o755).step("creating the root mount point")?;
    for (i, o) in plan.overlays.iter().enumerate() {
        let upper = rw.join(format!("upper{i}"));
        let work = rw.join(format!("work{i}"));
        mkdir(&upper, 0o755).step("creating an upper layer")?;
        mkdir(&work, 0o755).step("creating a work directory")?;
        let target = if o.target == "/" {
            root.clone()
        } else {
            root.join(o.target.trim_start_matches('/'))
        };
        let lower = o
            .lower
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let opts = format!(
            "lowerdir={lower},upperdir={},workdir={},userxattr",
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .step("mounting the root filesystem overlay")?;
    }

    mount_system_dirs(&root, sysfs)?;
    mask_paths(&root)?;

    let listener = bind_socket(&plan.socket_path).step("binding the agent socket")?;

    // Enter the new root and drop the old one.
    nix::unistd::chdir(&root).step("entering the new root")?;
    nix::unistd::pivot_root(".", ".").step("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).step("detaching the old root")?;
    nix::unistd::chdir("/").step("chdir /")?;

    nix::unistd::sethostname(&plan.hostname).step("setting the hostname")?;
    hull_sys::net::loopback_up().step("bringing up loopback")?;

    hull_sys::caps::drop_to_default_set().step("dropping capabilities")?;
    hull_sys::seccomp::set_no_new_privs().step("setting no_new_privs")?;
    if plan.seccomp {
        let filter = hull_sys::seccomp::sandbox_filter().step("building the seccomp filter")?;
        hull_sys::seccomp::install(&filter).step("installing the seccomp filter")?;
    }
    // Sandbox processes share our uid: without this they could open our
    // descriptors through /proc/1/fd (the writable layer's root, the
    // agent's connections) or ptrace us. The host keeps access (it has
    // CAP_SYS_PTRACE where it counts).
    nix::sys::prctl::set_dumpable(false).step("making init non-dumpable")?;
    Ok(listener)
}

/// Hold the writable layer's root at [`RW_FD`] for the host (see there).
fn keep_writable_layer(rw: &Path) -> std::io::Result<()> {
    let dir = rustix::fs::open(
        rw,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    hull_sys::ns::pin_fd(dir, RW_FD)
}

fn mkdir(p: &Path, mode: u32) -> std::io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(p) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

fn ensure_dir(root: &Path, rel: &str, mode: u32) -> Result<PathBuf, InitError> {
    let p = root.join(rel);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(&p)
        .step("creating a mount point")?;
    Ok(p)
}

fn mount_system_dirs(root: &Path, sysfs: Option<OwnedFd>) -> Result<(), InitError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc = ensure_dir(root, "proc", 0o555)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        nosuid_nodev_noexec,
        None::<&str>,
    )
    .step("mounting /proc")?;
    let sys = ensure_dir(root, "sys", 0o555)?;
    // Read-only either way. In a namespace of our own we mount it; in one
    // the host made (networked sandboxes) only the host may, and it hands
    // over a detached mount of it.
    let placed = match sysfs {
        Some(fd) => rustix::mount::move_mount(
            fd.as_fd(),
            "",
            rustix::fs::CWD,
            &sys,
            rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| e.to_string()),
        None => mount(
            Some("sysfs"),
            &sys,
            Some("sysfs"),
            nosuid_nodev_noexec | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| e.to_string()),
    };
    if let Err(e) = placed {
        tracing::debug!(error = %e, "sysfs not mountable; /sys stays empty");
    }

    let dev = ensure_dir(root, "dev", 0o755)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=65536"),
    )
    .step("mounting /dev")?;
    for name in DEVICES {
        let target = dev.join(name);
        fs::File::create(&target).step("creating a device mount point")?;
        let src = Path::new("/dev").join(name);
        mount(
            Some(&src),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .step("binding a device node")?;
    }
    let pts = ensure_dir(&dev, "pts", 0o755)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .step("mounting /dev/pts")?;
    let shm = ensure_dir(&dev, "shm", 0o1777)?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=67108864"),
    )
    .step("mounting /dev/shm")?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link)).step("creating /dev links")?;
    }
    for (dir, mode) in [
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("root", 0o700),
        ("run", 0o755),
    ] {
        let p = ensure_dir(root, dir, mode)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .step("setting directory modes")?;
    }
    Ok(())
}

fn mask_paths(root: &Path) -> Result<(), InitError> {
    let null = root.join("dev/null");
    for f in MASKED_FILES {
        let p = root.join(f.trim_start_matches('/'));
        if p.exists() {
            mount(
                Some(&null),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .step("masking a /proc file")?;
        }
    }
    for d in MASKED_DIRS {
        let p = root.join(d.trim_start_matches('/'));
        if p.is_dir() {
            mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
            .step("masking a directory")?;
        }
    }
    for r in READONLY_PATHS {
        let p = root.join(r.trim_start_matches('/'));
        if !p.exists() {
            continue;
        }
        mount(
            Some(&p),
            &p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .step("binding a read-only path")?;
        // A remount inside a user namespace must keep the flags the mount is locked with.
        let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            None::<&str>,
            &p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
            None::<&str>,
        )
        .step("making a path read-only")?;
    }
    Ok(())
}

fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}
