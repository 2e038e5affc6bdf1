//! cgroups for sandboxes: memory, cpu and pids limits, the freezer, OOM
//! accounting and killing everything inside — on cgroup v2 where the
//! controllers are on the unified hierarchy, on v1 otherwise.
//!
//! Each controller is placed independently from `/proc/self/mountinfo` and
//! the v2 root's `cgroup.controllers`: a controller enabled on v2 is used
//! there, else its v1 hierarchy. The freezer follows memory/cpu/pids: v2's
//! `cgroup.freeze` when they are all on v2, else the v1 `freezer` hierarchy
//! (or `cgroup.freeze` when no v1 freezer is mounted). One daemon instance
//! owns a parent group `hull-<instance>` at the root of each hierarchy it
//! uses, and one child per sandbox, named by the sandbox id.
//!
//! Limits: memory -> `memory.max` + `memory.swap.max = 0` (v2),
//! `memory.limit_in_bytes` + `memory.memsw.limit_in_bytes` when swap
//! accounting exists (v1); the kernel OOM-kills the offending process only
//! (no group kill). cpu -> CFS quota over a 100 ms period. pids ->
//! `pids.max`. Ids must be DNS labels, so no path can leave the parent.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors managing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy offers the {0} controller (is cgroupfs mounted?)")]
    MissingController(&'static str),
    #[error("invalid cgroup name {0:?}: expected a DNS label")]
    InvalidName(String),
    #[error("cgroup {0} already exists")]
    Exists(String),
    #[error("invalid cgroup limits: {0}")]
    InvalidLimits(String),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} did not reach {what} within {secs} s")]
    Timeout {
        path: PathBuf,
        what: &'static str,
        secs: u64,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Which hierarchy version hull uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// All controllers on the unified hierarchy.
    V2,
    /// All controllers on v1 hierarchies, no v2 hierarchy mounted.
    V1,
    /// Controllers on v1 beside a (mostly empty) v2 hierarchy.
    Hybrid,
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupMode::V2 => "v2",
            CgroupMode::V1 => "v1",
            CgroupMode::Hybrid => "hybrid",
        })
    }
}

impl From<CgroupMode> for String {
    fn from(m: CgroupMode) -> String {
        m.to_string()
    }
}

/// Limits applied to one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u64,
}

/// The CFS period used for CPU quotas.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The largest CPU limit accepted (the kernel caps quotas near 2^44 us).
pub const MAX_CPUS: f64 = 4096.0;

impl CgroupLimits {
    /// Refuse limits the kernel would misread: zero memory or pids, a CPU
    /// share that is not a finite number in (0, [`MAX_CPUS`]].
    pub fn validate(&self) -> Result<(), CgroupError> {
        if self.memory_bytes == 0 {
            return Err(CgroupError::InvalidLimits("memory limit is 0".into()));
        }
        if self.pids == 0 {
            return Err(CgroupError::InvalidLimits("pids limit is 0".into()));
        }
        if !self.cpus.is_finite() || self.cpus <= 0.0 || self.cpus > MAX_CPUS {
            return Err(CgroupError::InvalidLimits(format!(
                "cpu limit {} is outside (0, {MAX_CPUS}]",
                self.cpus
            )));
        }
        Ok(())
    }

    /// The CFS quota for [`CPU_PERIOD_US`], at least the kernel's 1 ms.
    pub fn cpu_quota_us(&self) -> u64 {
        ((self.cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
    }
}

/// Cgroup mounts found in a mountinfo text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The cgroup2 mount point, if any.
    pub v2: Option<PathBuf>,
    /// v1 controller name -> mount point.
    pub v1: BTreeMap<String, PathBuf>,
}

/// Undo mountinfo's octal escapes (`\040` for space and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Find cgroup hierarchies in a `/proc/self/mountinfo` text. The first
/// mount of each wins; only mounts of a hierarchy's root (`/`) count.
pub fn parse_mountinfo(text: &str) -> Mounts {
    let mut m = Mounts::default();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 || pre[3] != "/" {
            continue;
        }
        let mountpoint = PathBuf::from(unescape(pre[4]));
        match post[0] {
            "cgroup2" if m.v2.is_none() => m.v2 = Some(mountpoint),
            "cgroup" => {
                for opt in post[2].split(',') {
                    if matches!(opt, "memory" | "cpu" | "pids" | "freezer") {
                        m.v1.entry(opt.to_string())
                            .or_insert_with(|| mountpoint.clone());
                    }
                }
            }
            _ => {}
        }
    }
    m
}

/// Where one controller lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    V1(PathBuf),
    V2(PathBuf),
}

impl Place {
    fn root(&self) -> &Path {
        match self {
            Place::V1(p) | Place::V2(p) => p,
        }
    }
    fn is_v2(&self) -> bool {
        matches!(self, Place::V2(_))
    }
}

/// The placement of every controller hull uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub memory: Place,
    pub cpu: Place,
    pub pids: Place,
    pub freezer: Place,
    pub mode: CgroupMode,
}

/// Decide where each controller lives, given the mounts and the v2 root's
/// `cgroup.controllers` (empty when there is no v2 hierarchy).
pub fn plan(mounts: &Mounts, v2_controllers: &str) -> Result<Layout, CgroupError> {
    let on_v2: Vec<&str> = v2_controllers.split_whitespace().collect();
    let place = |name: &'static str| -> Result<Place, CgroupError> {
        if let Some(v2) = &mounts.v2
            && on_v2.contains(&name)
        {
            return Ok(Place::V2(v2.clone()));
        }
        mounts
            .v1
            .get(name)
            .map(|p| Place::V1(p.clone()))
            .ok_or(CgroupError::MissingController(name))
    };
    let (memory, cpu, pids) = (place("memory")?, place("cpu")?, place("pids")?);
    let all_v2 = memory.is_v2() && cpu.is_v2() && pids.is_v2();
    let freezer = match (&mounts.v2, mounts.v1.get("freezer")) {
        (Some(v2), _) if all_v2 => Place::V2(v2.clone()),
        (_, Some(v1)) => Place::V1(v1.clone()),
        (Some(v2), None) => Place::V2(v2.clone()),
        (None, None) => return Err(CgroupError::MissingController("freezer")),
    };
    let mode = if all_v2 {
        CgroupMode::V2
    } else if mounts.v2.is_some() {
        CgroupMode::Hybrid
    } else {
        CgroupMode::V1
    };
    Ok(Layout {
        memory,
        cpu,
        pids,
        freezer,
        mode,
    })
}

/// Ids are DNS labels: lowercase letters, digits and `-`, at most 63.
fn check_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_string()))
    }
}

/// A parent group's name: a DNS label, optionally after `hull-`.
fn check_parent(parent: &str) -> Result<(), CgroupError> {
    let name = parent.strip_prefix("hull-").unwrap_or(parent);
    check_name(name).map_err(|_| CgroupError::InvalidName(parent.to_string()))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("writing", path))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_err("reading", path))
}

/// A `key value` line of a flat-keyed cgroup file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The cgroups of one daemon instance.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    parent: String,
    layout: Layout,
}

impl CgroupManager {
    /// Detect the hierarchies and create the instance's parent group
    /// (`parent`, e.g. `hull-1a2b3c4d`) in each.
    pub fn detect(parent: &str) -> Result<Self, CgroupError> {
        check_parent(parent)?;
        let mi = Path::new("/proc/self/mountinfo");
        let mounts = parse_mountinfo(&read(mi)?);
        let controllers = match &mounts.v2 {
            Some(v2) => fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default(),
            None => String::new(),
        };
        Self::with_layout(parent, plan(&mounts, &controllers)?)
    }

    /// Use a given layout (from [`plan`]) instead of this host's, and
    /// create the parent group in it. For hosts whose cgroupfs is mounted
    /// somewhere unusual, and for tests over a fake tree.
    pub fn with_layout(parent: &str, layout: Layout) -> Result<Self, CgroupError> {
        check_parent(parent)?;
        let m = CgroupManager {
            parent: parent.to_string(),
            layout,
        };
        m.ensure_parent()?;
        Ok(m)
    }

    /// Create the parent group in each hierarchy (again, after `remove_all`)
    /// and, on v2, delegate the controllers to it.
    fn ensure_parent(&self) -> Result<(), CgroupError> {
        for root in self.roots() {
            let dir = root.join(&self.parent);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("creating", &dir)(e)),
            }
        }
        if self.layout.mode == CgroupMode::V2 {
            let root = self.layout.memory.root().to_path_buf();
            for dir in [root.clone(), root.join(&self.parent)] {
                let have =
                    fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                if !["memory", "cpu", "pids"]
                    .iter()
                    .all(|c| have.split_whitespace().any(|h| h == *c))
                {
                    write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
                }
            }
        }
        Ok(())
    }

    pub fn mode(&self) -> CgroupMode {
        self.layout.mode
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Controller -> `v1` or `v2`, for `hull info`.
    pub fn controllers(&self) -> BTreeMap<String, String> {
        let l = &self.layout;
        [
            ("memory", &l.memory),
            ("cpu", &l.cpu),
            ("pids", &l.pids),
            ("freezer", &l.freezer),
        ]
        .into_iter()
        .map(|(n, p)| {
            (
                n.to_string(),
                if p.is_v2() { "v2" } else { "v1" }.to_string(),
            )
        })
        .collect()
    }

    /// Distinct hierarchy roots in use.
    fn roots(&self) -> Vec<PathBuf> {
        let l = &self.layout;
        let mut v: Vec<PathBuf> = Vec::new();
        for p in [&l.memory, &l.cpu, &l.pids, &l.freezer] {
            if !v.iter().any(|r| r == p.root()) {
                v.push(p.root().to_path_buf());
            }
        }
        v
    }

    fn group(&self, id: &str) -> Cgroup {
        let d = |p: &Place| p.root().join(&self.parent).join(id);
        let l = &self.layout;
        Cgroup {
            memory: (d(&l.memory), l.memory.is_v2()),
            cpu: (d(&l.cpu), l.cpu.is_v2()),
            pids: (d(&l.pids), l.pids.is_v2()),
            freezer: (d(&l.freezer), l.freezer.is_v2()),
        }
    }

    /// Create a sandbox's group with its limits. Fails if it exists.
    pub fn create(&self, id: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        check_name(id)?;
        limits.validate()?;
        self.ensure_parent()?;
        let cg = self.group(id);
        for dir in cg.dirs() {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Exists(id.to_string()));
                }
                Err(e) => {
                    let _ = cg.remove();
                    return Err(io_err("creating", &dir)(e));
                }
            }
        }
        if let Err(e) = cg.apply(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// A sandbox's group, if it exists.
    pub fn open(&self, id: &str) -> Result<Option<Cgroup>, CgroupError> {
        check_name(id)?;
        let cg = self.group(id);
        Ok(cg.dirs().iter().any(|d| d.is_dir()).then_some(cg))
    }

    /// Ids of the sandbox groups under the parent, in any hierarchy.
    pub fn list(&self) -> Result<Vec<String>, CgroupError> {
        let mut ids = Vec::new();
        for root in self.roots() {
            let dir = root.join(&self.parent);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("listing", &dir)(e)),
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && check_name(&name).is_ok() && !ids.contains(&name) {
                    ids.push(name);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Remove the parent group when no sandbox group is left under it (a
    /// daemon stopping with nothing running); it is re-created on next use.
    /// `Ok(false)` when sandbox groups remain and the parent stays.
    pub fn remove_parent_if_empty(&self) -> Result<bool, CgroupError> {
        if !self.list()?.is_empty() {
            return Ok(false);
        }
        for root in self.roots() {
            rmdir_retry(&root.join(&self.parent))?;
        }
        Ok(true)
    }

    /// Kill everything in every sandbox group, remove them and the parent.
    pub fn remove_all(&self) -> Result<(), CgroupError> {
        for id in self.list()? {
            if let Some(cg) = self.open(&id)? {
                cg.remove()?;
            }
        }
        for root in self.roots() {
            rmdir_retry(&root.join(&self.parent))?;
        }
        Ok(())
    }
}

/// rmdir that tolerates absence and retries briefly while the kernel
/// finishes releasing dying tasks.
fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    // Tasks that just died keep a group busy until they are released, which
    // usually takes well under a millisecond: back off from 50 µs.
    let mut pause = Duration::from_micros(50);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("removing", dir)(e)),
        }
    }
}

/// One sandbox's group: a directory per controller (the same one on v2).
#[derive(Debug, Clone)]
pub struct Cgroup {
    memory: (PathBuf, bool),
    cpu: (PathBuf, bool),
    pids: (PathBuf, bool),
    freezer: (PathBuf, bool),
}

impl Cgroup {
    /// Distinct directories, in creation order.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = Vec::new();
        for (d, _) in [&self.memory, &self.cpu, &self.pids, &self.freezer] {
            if !v.contains(d) {
                v.push(d.clone());
            }
        }
        v
    }

    fn apply(&self, l: &CgroupLimits) -> Result<(), CgroupError> {
        let (mem, v2) = &self.memory;
        if *v2 {
            write(&mem.join("memory.max"), &l.memory_bytes.to_string())?;
            if mem.join("memory.swap.max").exists() {
                write(&mem.join("memory.swap.max"), "0")?;
            }
            if mem.join("memory.oom.group").exists() {
                write(&mem.join("memory.oom.group"), "0")?;
            }
        } else {
            write(
                &mem.join("memory.limit_in_bytes"),
                &l.memory_bytes.to_string(),
            )?;
            let memsw = mem.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &l.memory_bytes.to_string())?;
            }
        }
        let quota = l.cpu_quota_us();
        let (cpu, v2) = &self.cpu;
        if *v2 {
            write(&cpu.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        } else {
            write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        write(&self.pids.0.join("pids.max"), &l.pids.to_string())?;
        Ok(())
    }

    /// Move a process into the group in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The v2 group's directory, for `clone3(CLONE_INTO_CGROUP)`, when every
    /// controller is on v2.
    pub fn v2_dir_fd(&self) -> Option<OwnedFd> {
        let all_v2 = self.memory.1 && self.cpu.1 && self.pids.1 && self.freezer.1;
        if !all_v2 {
            return None;
        }
        fs::File::open(&self.memory.0).ok().map(OwnedFd::from)
    }

    /// Freeze every process in the group and wait until they are frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Thaw the group.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (dir, v2) = &self.freezer;
        let (file, value, state_file, want): (&str, &str, &str, &str) = match (v2, frozen) {
            (true, true) => ("cgroup.freeze", "1", "cgroup.events", "frozen 1"),
            (true, false) => ("cgroup.freeze", "0", "cgroup.events", "frozen 0"),
            (false, true) => ("freezer.state", "FROZEN", "freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED", "freezer.state", "THAWED"),
        };
        write(&dir.join(file), value)?;
        // Re-read rather than poll(): completion is usually immediate.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pause = Duration::from_micros(50);
        loop {
            let s = read(&dir.join(state_file))?;
            if s.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Timeout {
                    path: dir.clone(),
                    what: if frozen { "frozen" } else { "thawed" },
                    secs: 5,
                });
            }
            if !*v2 && frozen {
                // v1 can get stuck in FREEZING; writing again retries.
                let _ = fs::write(dir.join(file), value);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// How many processes the kernel OOM-killed in this group so far.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let (dir, v2) = &self.memory;
        let (file, key) = if *v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        Ok(keyed(&read(&dir.join(file))?, key).unwrap_or(0))
    }

    /// Memory charged to the group now, in bytes.
    pub fn memory_current(&self) -> Result<u64, CgroupError> {
        let (dir, v2) = &self.memory;
        let p = dir.join(if *v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        });
        let s = read(&p)?;
        s.trim()
            .parse()
            .map_err(|_| io_err("parsing", &p)(io::Error::other(format!("unexpected value {s:?}"))))
    }

    /// Pids of the processes in the group.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let p = self.pids.0.join("cgroup.procs");
        match fs::read_to_string(&p) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(io_err("reading", &p)(e)),
        }
    }

    /// SIGKILL every process in the group and wait until it is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        // The common case on destroy: the sandbox's init is already dead, and
        // with it its whole pid namespace.
        if self.pids()?.is_empty() {
            return Ok(());
        }
        let kill_file = self.pids.0.join("cgroup.kill");
        if self.pids.1 && kill_file.exists() {
            write(&kill_file, "1")?;
        } else if self.freezer.0.is_dir() {
            // Freeze first so nothing forks between listing and killing;
            // SIGKILL is delivered to frozen tasks once they thaw.
            let _ = self.freeze();
            for pid in self.pids()? {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
            let _ = self.thaw();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.pids()?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Timeout {
                    path: self.pids.0.clone(),
                    what: "empty",
                    secs: 5,
                });
            }
            for pid in left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kill everything inside and remove the group. Idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        if self.dirs().iter().any(|d| d.is_dir()) {
            self.kill_all()?;
        }
        for d in self.dirs() {
            rmdir_retry(&d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
29 26 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct
30 26 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:12 - cgroup cgroup rw,pids
31 26 0:29 / /sys/fs/cgroup/freezer rw,nosuid shared:13 - cgroup cgroup rw,freezer
";
    const V2_ONLY: &str = "\
25 1 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V1_ONLY: &str = "\
26 25 0:24 / /sys/fs/cgroup ro shared:8 - tmpfs tmpfs ro,mode=755
28 26 0:26 / /sys/fs/cgroup/memory rw shared:10 - cgroup cgroup rw,memory
29 26 0:27 / /sys/fs/cgroup/cpu\\040x rw shared:11 - cgroup cgroup rw,cpu,cpuacct
30 26 0:28 / /sys/fs/cgroup/pids rw shared:12 - cgroup cgroup rw,pids
31 26 0:29 / /sys/fs/cgroup/freezer rw shared:13 - cgroup cgroup rw,freezer
40 30 0:28 /nested /mnt/pids rw shared:12 - cgroup cgroup rw,pids
";

    #[test]
    fn plans_a_hybrid_host_on_v1() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        let l = plan(&m, "hugetlb").unwrap();
        assert_eq!(l.mode, CgroupMode::Hybrid);
        assert_eq!(l.memory, Place::V1("/sys/fs/cgroup/memory".into()));
        assert_eq!(l.cpu, Place::V1("/sys/fs/cgroup/cpu,cpuacct".into()));
        assert_eq!(l.freezer, Place::V1("/sys/fs/cgroup/freezer".into()));
    }

    #[test]
    fn plans_a_v2_only_host_on_v2() {
        let m = parse_mountinfo(V2_ONLY);
        let l = plan(&m, "cpuset cpu io memory hugetlb pids rdma misc").unwrap();
        assert_eq!(l.mode, CgroupMode::V2);
        for p in [&l.memory, &l.cpu, &l.pids, &l.freezer] {
            assert_eq!(p, &Place::V2("/sys/fs/cgroup".into()));
        }
    }

    #[test]
    fn plans_v1_only_and_unescapes_mount_points() {
        let m = parse_mountinfo(V1_ONLY);
        assert_eq!(m.v2, None);
        // The non-root bind of the pids hierarchy is ignored.
        assert_eq!(m.v1["pids"], PathBuf::from("/sys/fs/cgroup/pids"));
        let l = plan(&m, "").unwrap();
        assert_eq!(l.mode, CgroupMode::V1);
        assert_eq!(l.cpu, Place::V1("/sys/fs/cgroup/cpu x".into()));
    }

    #[test]
    fn mixes_per_controller_and_reports_missing_ones() {
        // memory on v2, the rest on v1: hybrid, freezer from v1.
        let l = plan(&parse_mountinfo(HYBRID), "memory").unwrap();
        assert_eq!(l.memory, Place::V2("/sys/fs/cgroup/unified".into()));
        assert_eq!(l.pids, Place::V1("/sys/fs/cgroup/pids".into()));
        assert_eq!(l.mode, CgroupMode::Hybrid);
        // v2 without the pids controller and no v1: a clear error.
        let err = plan(&parse_mountinfo(V2_ONLY), "cpu memory").unwrap_err();
        assert!(
            matches!(err, CgroupError::MissingController("pids")),
            "{err}"
        );
    }

    const LIMITS: CgroupLimits = CgroupLimits {
        memory_bytes: 64 << 20,
        cpus: 0.5,
        pids: 16,
    };

    fn file(p: &Path) -> String {
        fs::read_to_string(p).unwrap().trim().to_string()
    }

    /// The v2 code paths over a fake cgroupfs (plain files in a temp
    /// dir): which files get which values. The kernel side of v2 is
    /// tested in a QEMU guest (crates/runtime/tests/cgroup_v2_vm.rs).
    #[test]
    fn v2_writes_the_unified_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let v2 = || Place::V2(root.clone());
        let layout = Layout {
            memory: v2(),
            cpu: v2(),
            pids: v2(),
            freezer: v2(),
            mode: CgroupMode::V2,
        };
        let m = CgroupManager::with_layout("hull-fake", layout).unwrap();
        assert_eq!(m.mode().to_string(), "v2");
        assert!(m.controllers().values().all(|v| v == "v2"));
        for d in [root.clone(), root.join("hull-fake")] {
            assert_eq!(
                file(&d.join("cgroup.subtree_control")),
                "+memory +cpu +pids"
            );
        }
        let cg = m.create("sb-1", &LIMITS).unwrap();
        assert!(matches!(
            m.create("sb-1", &LIMITS),
            Err(CgroupError::Exists(_))
        ));
        let dir = root.join("hull-fake/sb-1");
        assert_eq!(file(&dir.join("memory.max")), "67108864");
        assert_eq!(file(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(file(&dir.join("pids.max")), "16");
        // Where the kernel offers them: no swap, no group OOM kill.
        fs::write(dir.join("memory.swap.max"), "max").unwrap();
        fs::write(dir.join("memory.oom.group"), "1").unwrap();
        cg.apply(&LIMITS).unwrap();
        assert_eq!(file(&dir.join("memory.swap.max")), "0");
        assert_eq!(file(&dir.join("memory.oom.group")), "0");

        assert!(cg.v2_dir_fd().is_some());
        cg.add_pid(4_000_000).unwrap();
        assert_eq!(file(&dir.join("cgroup.procs")), "4000000");
        assert_eq!(cg.pids().unwrap(), vec![4_000_000]);
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        cg.freeze().unwrap();
        assert_eq!(file(&dir.join("cgroup.freeze")), "1");
        fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        cg.thaw().unwrap();
        assert_eq!(file(&dir.join("cgroup.freeze")), "0");
        fs::write(
            dir.join("memory.events"),
            "low 0\nmax 9\noom 2\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 2);
        fs::write(dir.join("memory.current"), "12345\n").unwrap();
        assert_eq!(cg.memory_current().unwrap(), 12345);
        fs::write(dir.join("memory.current"), "lots\n").unwrap();
        assert!(cg.memory_current().is_err());
        // An empty group needs no killing (the usual case on destroy, after
        // init died); cgroup.kill is left alone.
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        fs::write(dir.join("cgroup.kill"), "").unwrap();
        cg.kill_all().unwrap();
        assert_eq!(file(&dir.join("cgroup.kill")), "");

        assert_eq!(m.list().unwrap(), vec!["sb-1".to_string()]);
        assert!(m.open("sb-2").unwrap().is_none());
        assert!(m.open("../hull-fake").is_err());
        assert!(m.create("..", &LIMITS).is_err());
        assert!(CgroupManager::with_layout("hull-../x", m.layout().clone()).is_err());
    }

    /// The v1 code paths over a fake tree: one directory per controller.
    #[test]
    fn v1_writes_each_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let at = |c: &str| {
            let p = tmp.path().join(c);
            fs::create_dir(&p).unwrap();
            Place::V1(p)
        };
        let layout = Layout {
            memory: at("memory"),
            cpu: at("cpu,cpuacct"),
            pids: at("pids"),
            freezer: at("freezer"),
            mode: CgroupMode::V1,
        };
        let m = CgroupManager::with_layout("hull-fake", layout).unwrap();
        assert_eq!(m.controllers()["cpu"], "v1");
        let cg = m.create("sb-1", &LIMITS).unwrap();
        let d = |c: &str| tmp.path().join(c).join("hull-fake/sb-1");
        assert_eq!(file(&d("memory").join("memory.limit_in_bytes")), "67108864");
        assert_eq!(file(&d("cpu,cpuacct").join("cpu.cfs_period_us")), "100000");
        assert_eq!(file(&d("cpu,cpuacct").join("cpu.cfs_quota_us")), "50000");
        assert_eq!(file(&d("pids").join("pids.max")), "16");
        // With swap accounting, memory+swap gets the same limit.
        fs::write(d("memory").join("memory.memsw.limit_in_bytes"), "max").unwrap();
        cg.apply(&LIMITS).unwrap();
        assert_eq!(
            file(&d("memory").join("memory.memsw.limit_in_bytes")),
            "67108864"
        );
        assert!(cg.v2_dir_fd().is_none());
        cg.add_pid(4_000_000).unwrap();
        for c in ["memory", "cpu,cpuacct", "pids", "freezer"] {
            assert_eq!(file(&d(c).join("cgroup.procs")), "4000000", "{c}");
        }
        cg.freeze().unwrap();
        assert_eq!(file(&d("freezer").join("freezer.state")), "FROZEN");
        cg.thaw().unwrap();
        assert_eq!(file(&d("freezer").join("freezer.state")), "THAWED");
        fs::write(
            d("memory").join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 3);
        fs::write(d("memory").join("memory.usage_in_bytes"), "4096\n").unwrap();
        assert_eq!(cg.memory_current().unwrap(), 4096);
    }

    #[test]
    fn absurd_limits_are_refused() {
        let ok = CgroupLimits {
            memory_bytes: 64 << 20,
            cpus: 0.5,
            pids: 16,
        };
        ok.validate().unwrap();
        assert_eq!(ok.cpu_quota_us(), 50_000);
        let tiny = CgroupLimits {
            cpus: 0.001,
            ..ok.clone()
        };
        assert_eq!(tiny.cpu_quota_us(), 1000);
        for bad in [
            CgroupLimits {
                memory_bytes: 0,
                ..ok.clone()
            },
            CgroupLimits {
                pids: 0,
                ..ok.clone()
            },
            CgroupLimits {
                cpus: 0.0,
                ..ok.clone()
            },
            CgroupLimits {
                cpus: -1.0,
                ..ok.clone()
            },
            CgroupLimits {
                cpus: f64::NAN,
                ..ok.clone()
            },
            CgroupLimits {
                cpus: f64::INFINITY,
                ..ok.clone()
            },
            CgroupLimits {
                cpus: 1e9,
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(CgroupError::InvalidLimits(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_must_be_labels() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "A",
            "-a",
            &"a".repeat(64),
            "a b",
            "a\0",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("sb-1").unwrap();
        assert_eq!(keyed("oom 1\noom_kill 3\n", "oom_kill"), Some(3));
        assert_eq!(keyed("oom_kill_disable 0\n", "oom_kill"), None);
    }
}
