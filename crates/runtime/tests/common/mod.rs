//! Test kit for privileged runtime tests: a runtime on a private state
//! directory, the guest binary from this build, and host-cleanliness checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hull_api::{CreateSandbox, ExecRequest, ExecResult, Limits, LimitsRequest, Sandbox};
use hull_runtime::{Runtime, RuntimeConfig};

/// True when the test may run; false (after a message) when it must skip.
/// Panics when privileged tests are required (`HULL_TEST_PRIVILEGED=1`) but
/// cannot run.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if root {
        return true;
    }
    if std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: HULL_TEST_PRIVILEGED=1 but not running as root");
    }
    eprintln!("SKIP {test}: needs root (set HULL_TEST_PRIVILEGED=1 to make this a failure)");
    false
}

/// The `hull-guest` binary built alongside the tests.
pub fn guest_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HULL_GUEST_BINARY") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<triple>/debug/deps/<test> -> target/<triple>/debug/hull-guest
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join("hull-guest");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p hull) or set HULL_GUEST_BINARY",
        p.display()
    );
    p
}

pub struct Kit {
    pub rt: Arc<Runtime>,
    pub dir: tempfile::TempDir,
    finished: bool,
}

impl Drop for Kit {
    /// A test that failed before `finish` still removes what it made.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let rt = self.rt.clone();
        let _ = std::thread::spawn(move || {
            let Ok(tokio) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            tokio.block_on(async {
                let _ = rt.system_reset().await;
                rt.shutdown().await;
            });
        })
        .join();
    }
}

impl Kit {
    pub async fn new() -> Kit {
        let dir = tempfile::Builder::new()
            .prefix("hull-t")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let rt = Runtime::open(RuntimeConfig {
            state_dir: dir.path().to_path_buf(),
            guest_binary: guest_binary(),
            defaults: Limits::default(),
        })
        .await
        .expect("runtime opens");
        Kit {
            rt,
            dir,
            finished: false,
        }
    }

    /// Reopen the runtime on the same state directory (a daemon restart).
    pub async fn restart(&mut self) {
        self.rt.shutdown().await;
        self.rt = Runtime::open(RuntimeConfig {
            state_dir: self.dir.path().to_path_buf(),
            guest_binary: guest_binary(),
            defaults: Limits::default(),
        })
        .await
        .expect("runtime reopens");
    }

    pub async fn create(&self, template: &str) -> Sandbox {
        self.rt
            .create(CreateSandbox {
                template: Some(template.into()),
                ..Default::default()
            })
            .await
            .expect("create")
    }

    pub async fn create_with(&self, template: &str, limits: LimitsRequest) -> Sandbox {
        self.rt
            .create(CreateSandbox {
                template: Some(template.into()),
                limits,
                ..Default::default()
            })
            .await
            .expect("create")
    }

    pub async fn sh(&self, id: &str, script: &str) -> ExecResult {
        self.rt
            .exec(
                id,
                ExecRequest {
                    cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    ..Default::default()
                },
            )
            .await
            .expect("exec")
    }

    /// Reset everything and assert the host holds nothing of this instance.
    pub async fn finish(mut self) {
        let state = self.dir.path().to_path_buf();
        let instance = self.rt.host_info().instance_id;
        self.rt.system_reset().await.expect("reset");
        self.rt.shutdown().await;
        self.finished = true;
        assert_clean(&state, &instance);
    }
}

/// No mount under the state directory, no cgroup of the instance.
pub fn assert_clean(state: &Path, instance: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let s = state.display().to_string();
    let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(&s)).collect();
    assert!(leaked.is_empty(), "mounts left behind: {leaked:#?}");
    for ctrl in ["memory", "cpu", "pids", "freezer", "unified", ""] {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(format!("hull-{instance}"));
        assert!(!p.exists(), "cgroup left behind: {}", p.display());
    }
}
