//! Real cgroup tests on this host's hierarchies (v1 here; v2 is exercised
//! in a QEMU guest by crates/runtime/tests/cgroup_v2_vm.rs).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hull_sys::cgroup::{CgroupLimits, CgroupManager};

fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("HULL_TEST_PRIVILEGED").as_deref(),
        Ok("1"),
        "{test}: needs root"
    );
    eprintln!("SKIP {test}: needs root");
    false
}

/// A parent unique to this test process, removed at the end.
fn manager(tag: &str) -> CgroupManager {
    CgroupManager::detect(&format!("hull-t{}{tag}", std::process::id())).expect("detect")
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
    let m = manager("a");
    let cg = m.create("sb-1", &LIMITS).unwrap();
    assert!(m.create("sb-1", &LIMITS).is_err(), "duplicate refused");
    assert!(m.create("../escape", &LIMITS).is_err(), "traversal refused");
    assert_eq!(m.list().unwrap(), vec!["sb-1".to_string()]);

    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id() as i32;
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    let cgline = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgline.contains("/sb-1"), "{cgline}");

    let ctl = m.controllers();
    for c in ["memory", "cpu", "pids", "freezer"] {
        assert!(ctl.contains_key(c), "{ctl:?}");
    }
    if ctl["memory"] == "v1" {
        let root = Path::new("/sys/fs/cgroup/memory")
            .join(format!("hull-t{}a", std::process::id()))
            .join("sb-1");
        assert_eq!(
            std::fs::read_to_string(root.join("memory.limit_in_bytes"))
                .unwrap()
                .trim(),
            "67108864"
        );
    }

    cg.freeze().unwrap();
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Frozen tasks sleep in the refrigerator: state D or S, never R.
    assert!(!state.split(' ').nth(2).unwrap().starts_with('R'));
    cg.thaw().unwrap();
    cg.memory_current().unwrap();
    assert_eq!(cg.oom_kills().unwrap(), 0);

    cg.kill_all().unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());
    cg.remove().unwrap();
    cg.remove().unwrap(); // idempotent
    assert!(m.open("sb-1").unwrap().is_none());
    m.remove_all().unwrap();
    assert!(
        !Path::new("/sys/fs/cgroup/pids")
            .join(format!("hull-t{}a", std::process::id()))
            .exists()
    );
}

#[test]
fn memory_and_pids_limits_hold() {
    if !privileged("memory_and_pids_limits_hold") {
        return;
    }
    let m = manager("b");
    let cg = m.create("sb-2", &LIMITS).unwrap();
    // A shell in the group allocates far beyond the limit: OOM-killed.
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
    let out = sh("head -c 300000000 /dev/zero | tail > /dev/null; echo rc=$?");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rc=") && !text.contains("rc=0"), "{text}");
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
    std::thread::sleep(Duration::from_millis(10));
    m.remove_all().unwrap();
    assert!(m.list().unwrap().is_empty());
}
