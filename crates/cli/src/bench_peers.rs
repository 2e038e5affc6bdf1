//! Peers for `hull bench`: the same one-shot container start with `bwrap`
//! and `crun` (Debian packages), on the same busybox root filesystem, with
//! isolation flags as close to hull's defaults as each tool allows.
//!
//! Limits: `bwrap` 0.8 has no overlay support, so its root is a read-only
//! bind of the rootfs plus a tmpfs `/tmp` (hull: an overlay with a tmpfs
//! upper layer); it takes no cgroup limits. `crun` gets user, mount, pid,
//! uts, ipc, net and cgroup namespaces, an id map, memory/pids/cpu limits and
//! its default masked paths. crun refuses hybrid cgroup hosts (v1 controllers
//! beside a v2 hierarchy), so on those it runs in a private mount namespace
//! where the empty v2 hierarchy is unmounted (the `bench-peer` subcommand).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A busybox root filesystem in a temporary directory.
pub struct Rootfs {
    pub dir: tempfile::TempDir,
}

impl Rootfs {
    pub fn new() -> anyhow::Result<Rootfs> {
        let dir = tempfile::Builder::new().prefix("hull-bench").tempdir()?;
        let root = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "tmp", "sys", "etc"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .context("copying /bin/busybox (apt-get install busybox-static)")?;
        for l in ["true", "sh"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(l))?;
        }
        Ok(Rootfs { dir })
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// An OCI bundle for crun around the rootfs.
    pub fn write_oci_config(&self) -> anyhow::Result<PathBuf> {
        let config = serde_json::json!({
            "ociVersion": "1.0.0",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/true"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS,
                    "permitted": DEFAULT_CAPS, "inheritable": DEFAULT_CAPS
                },
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "bench",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1g"]}
            ],
            "linux": {
                "uidMappings": [{"containerID": 0, "hostID": 1_000_000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 1_000_000, "size": 65536}],
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                    {"type": "user"}, {"type": "mount"}, {"type": "cgroup"}
                ],
                "resources": {
                    "memory": {"limit": 1_u64 << 30},
                    "pids": {"limit": 1024},
                    "cpu": {"quota": 100_000, "period": 100_000}
                },
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/latency_stats", "/proc/acpi", "/proc/scsi", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        });
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        Ok(self.dir.path().to_path_buf())
    }
}

const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Time `n` runs of `bwrap ... /bin/true`. `None` when bwrap is missing.
pub fn bwrap(rootfs: &Rootfs, n: usize) -> anyhow::Result<Option<Vec<Duration>>> {
    let Some(bwrap) = which("bwrap") else {
        return Ok(None);
    };
    let root = rootfs.root();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = Command::new(&bwrap)
            .args([
                "--unshare-all",
                "--uid",
                "0",
                "--gid",
                "0",
                "--die-with-parent",
                "--new-session",
            ])
            .arg("--ro-bind")
            .arg(&root)
            .arg("/")
            .args([
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--hostname",
                "bench",
            ])
            .args(["--cap-drop", "ALL", "--", "/bin/true"])
            .stdin(Stdio::null())
            .status()?;
        times.push(t.elapsed());
        if !st.success() {
            bail!("bwrap failed: {st}");
        }
    }
    Ok(Some(times))
}

/// True when cgroup v1 controllers sit beside a mounted v2 hierarchy (crun
/// refuses to run there unless the v2 mount is hidden).
fn hybrid_cgroups() -> bool {
    Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
}

/// Time `n` runs of `crun run`, through the `bench-peer crun` subcommand of
/// this binary (single-threaded, so it may enter a private mount
/// namespace on hybrid hosts). `None` when crun is missing.
pub fn crun(rootfs: &Rootfs, n: usize) -> anyhow::Result<Option<Vec<Duration>>> {
    if which("crun").is_none() {
        return Ok(None);
    }
    let bundle = rootfs.write_oci_config()?;
    let out = Command::new(std::env::current_exe()?)
        .args(["bench-peer", "--bundle"])
        .arg(&bundle)
        .args(["-n", &n.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("crun benchmark failed");
    }
    let times: Vec<Duration> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .map(Duration::from_nanos)
        .collect();
    if times.len() != n {
        bail!(
            "crun benchmark returned {} timings, expected {n}",
            times.len()
        );
    }
    Ok(Some(times))
}

/// The `bench-peer crun` subcommand: runs in a fresh single-threaded
/// process; prints one duration in nanoseconds per line.
pub fn crun_loop(bundle: &Path, n: usize) -> anyhow::Result<()> {
    if hybrid_cgroups() {
        use nix::mount::{MntFlags, MsFlags, mount, umount2};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("making mounts private")?;
        umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH)
            .context("hiding the empty cgroup v2 hierarchy")?;
    }
    let crun = which("crun").context("crun not found")?;
    for i in 0..n {
        let name = format!("hull-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = Command::new(&crun)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&name)
            .stdin(Stdio::null())
            .status()?;
        let d = t.elapsed();
        if !st.success() {
            bail!("crun run failed: {st}");
        }
        println!("{}", d.as_nanos());
    }
    Ok(())
}
