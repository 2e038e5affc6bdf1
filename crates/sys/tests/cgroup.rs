//! Real cgroup tests on this host's hierarchies (v1 here; v2 is exercised
//! in a QEMU guest by crates/runtime/tests/cgroup_v2_vm.rs, and its file
//! writes by the fake-tree unit tests in src/cgroup.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_sys::cgroup::{CgroupLimits, CgroupManager, Place};

use hull_testkit::privileged;

/// A manager on a parent unique to this test process; everything it made
/// is removed when dropped, even when the test fails.
struct Scratch {
    m: CgroupManager,
    parent: String,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let parent = format!("hull-t{}{tag}", std::process::id());
        let m = CgroupManager::detect(&parent).expect("detect");
        Scratch { m, parent }
    }

    /// The parent's directory in every hierarchy in use.
    fn parent_dirs(&self) -> Vec<PathBuf> {
        let l = self.m.layout();
        let mut v: Vec<PathBuf> = Vec::new();
        for p in [&l.memory, &l.cpu, &l.pids, &l.freezer] {
            let (Place::V1(root) | Place::V2(root)) = p;
            let d = root.join(&self.parent);
            if !v.contains(&d) {
                v.push(d);
            }
        }
        v
    }

    /// The directory of group `id` for a controller.
    fn dir(&self, ctrl: &str, id: &str) -> PathBuf {
        let l = self.m.layout();
        let p = match ctrl {
            "memory" => &l.memory,
            "cpu" => &l.cpu,
            "pids" => &l.pids,
            _ => &l.freezer,
        };
        let (Place::V1(root) | Place::V2(root)) = p;
        root.join(&self.parent).join(id)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.m.remove_all();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

const LIMITS: CgroupLimits = CgroupLimits {
    memory_bytes: 64 << 20,
    cpus: 0.5,
    pids: 16,
};

#[test]
fn limits_freeze_and_cleanup() {
    if !privileged("limits_freeze_and_cleanup") {
        return;
    }
    let s = Scratch::new("a");
    let m = &s.m;
    let cg = m.create("sb-1", &LIMITS).unwrap();
    assert!(m.create("sb-1", &LIMITS).is_err(), "duplicate refused");
    for bad in ["../escape", "..", "a/b", "/etc", "Sb", ""] {
        assert!(m.create(bad, &LIMITS).is_err(), "{bad:?} refused");
        assert!(m.open(bad).is_err(), "{bad:?} refused");
    }
    let absurd = CgroupLimits {
        cpus: f64::NAN,
        ..LIMITS
    };
    assert!(m.create("sb-absurd", &absurd).is_err());
    assert!(m.open("sb-absurd").unwrap().is_none(), "nothing left");
    assert_eq!(m.list().unwrap(), vec!["sb-1".to_string()]);

    let ctl = m.controllers();
    for c in ["memory", "cpu", "pids", "freezer"] {
        assert!(ctl.contains_key(c), "{ctl:?}");
    }
    if ctl["memory"] == "v1" {
        let d = s.dir("memory", "sb-1");
        assert_eq!(read(&d.join("memory.limit_in_bytes")), "67108864");
        assert_eq!(
            read(&d.join("memory.oom_control")).lines().next(),
            Some("oom_kill_disable 0")
        );
    }
    if ctl["cpu"] == "v1" {
        let d = s.dir("cpu", "sb-1");
        assert_eq!(read(&d.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&d.join("cpu.cfs_quota_us")), "50000");
    }
    assert_eq!(read(&s.dir("pids", "sb-1").join("pids.max")), "16");

    // A shell that bumps a counter file every few ms.
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("n");
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"read _; i=0; while :; do i=$((i+1)); echo $i > "$0"; sleep 0.01; done"#)
        .arg(&counter)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    cg.add_pid(pid).unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    assert!(cg.pids().unwrap().contains(&pid));
    let cgline = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgline.contains(&format!("/{}/sb-1", s.parent)), "{cgline}");

    let count = || std::fs::read_to_string(&counter).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while count().trim().parse::<u64>().unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "the loop never ran");
        std::thread::sleep(Duration::from_millis(10));
    }

    cg.freeze().unwrap();
    if ctl["freezer"] == "v1" {
        assert_eq!(
            read(&s.dir("freezer", "sb-1").join("freezer.state")),
            "FROZEN"
        );
    }
    let frozen_at = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), frozen_at, "a frozen group made progress");
    cg.thaw().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while count() == frozen_at {
        assert!(Instant::now() < deadline, "no progress after thaw");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(cg.memory_current().unwrap() > 0);
    assert_eq!(cg.oom_kills().unwrap(), 0);

    cg.kill_all().unwrap();
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    assert!(cg.pids().unwrap().is_empty());
    cg.remove().unwrap();
    cg.remove().unwrap(); // idempotent
    assert!(m.open("sb-1").unwrap().is_none());
    m.remove_all().unwrap();
    for d in s.parent_dirs() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn memory_and_pids_limits_hold() {
    if !privileged("memory_and_pids_limits_hold") {
        return;
    }
    let s = Scratch::new("b");
    let m = &s.m;
    let cg = m.create("sb-2", &LIMITS).unwrap();
    // Start a shell in the group (it waits for a line on stdin first).
    let sh = |script: &str| {
        let mut c = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("read _; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        cg.add_pid(c.id() as i32).unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
        c.wait_with_output().unwrap()
    };
    // `tail` buffers a 300 MB line under a 64 MiB limit: the kernel kills
    // it (SIGKILL, 128+9) and the shell that started it survives.
    let out = sh("head -c 300000000 /dev/zero | tail > /dev/null; echo rc=$?");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the shell survived: {out:?}");
    assert_eq!(text.trim(), "rc=137", "{out:?}");
    assert!(cg.oom_kills().unwrap() >= 1, "oom recorded");

    // 16 pids: a loop of background sleeps hits the limit.
    let out = sh("for i in $(seq 1 40); do sleep 3 & done; echo spawned");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "forks fail: {err}"
    );
    let n = cg.pids().unwrap().len();
    assert!(n <= 16, "pids limit holds: {n}");
    if m.controllers()["pids"] == "v1" {
        let events = read(&s.dir("pids", "sb-2").join("pids.events"));
        assert_ne!(events, "max 0", "pids.events counts refusals");
    }
    m.remove_all().unwrap();
    assert!(m.list().unwrap().is_empty());
    for d in s.parent_dirs() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}
