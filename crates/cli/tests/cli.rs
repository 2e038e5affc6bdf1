//! The `hull` binary as a user drives it: auto-started daemon, run/exec
//! exit codes, create/cp/ls/pause/resume/ttl/rm, JSON output, bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hull_testkit::privileged;

/// A private daemon (socket + state dir), started on demand by the CLI
/// itself, reset and stopped at the end.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("hull-c")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("hull.sock")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hull"));
        c.args(args)
            .env("HULL_SOCKET", self.socket())
            .env("HULL_STATE_DIR", self.state())
            .env_remove("HULL_URL")
            .stdin(Stdio::null());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "hull {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    /// Every daemon serving this test's socket.
    fn daemon_pids(&self) -> Vec<i32> {
        let Ok(out) = Command::new("pgrep")
            .arg("-f")
            .arg(format!("serve --socket {}", self.socket().display()))
            .output()
        else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
    fn daemon_pid(&self) -> Option<i32> {
        self.daemon_pids().first().copied()
    }
    /// `hull serve` started by hand, also on a free loopback TCP port:
    /// the daemon process, its address and its bearer token.
    fn serve_tcp(&self) -> (std::process::Child, String, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let daemon = Command::new(env!("CARGO_BIN_EXE_hull"))
            .args(["serve", "--socket"])
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state())
            .args(["--listen", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.wait_for(20, "the daemon's token", || {
            self.state().join("token").exists()
        });
        self.wait_for(20, "the daemon", || self.run(&["ls"]).status.success());
        let token = std::fs::read_to_string(self.state().join("token")).unwrap();
        (daemon, addr, token)
    }
    /// Poll `f` for up to `secs` seconds.
    fn wait_for(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !f() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }
    fn sandbox_count(&self) -> usize {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["ls", "--json"])).unwrap();
        v["sandboxes"].as_array().unwrap().len()
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

impl Drop for Env {
    fn drop(&mut self) {
        if !self.daemon_pids().is_empty() {
            let _ = self.run(&["system", "reset", "--force"]);
        }
        // SIGTERM, then SIGKILL for what a test failure left behind.
        for sig in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGKILL] {
            for pid in self.daemon_pids() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
            for _ in 0..100 {
                if self.daemon_pids().is_empty() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn run_starts_the_daemon_and_propagates_exit_codes() {
    if !privileged("run_starts_the_daemon") {
        return;
    }
    let env = Env::new();
    // No daemon yet: `hull run` starts one, which outlives it.
    let o = env.run(&["run", "--template", "busybox", "--", "echo", "hi"]);
    assert_eq!(
        (code(&o), String::from_utf8_lossy(&o.stdout).as_ref()),
        (0, "hi\n"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(env.daemon_pid().is_some(), "the daemon keeps running");
    assert!(env.state().join("daemon.log").exists());
    // The host template works out of the box.
    if Path::new("/usr/bin/python3").exists() {
        assert_eq!(
            env.ok(&["run", "--", "python3", "-c", "print(6*7)"]),
            "42\n"
        );
    }
    let o = env.run(&["run", "--template", "busybox", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code(&o), 7);
    let o = env.run(&[
        "run",
        "--template",
        "busybox",
        "--timeout",
        "1s",
        "--",
        "sh",
        "-c",
        "echo partial; sleep 10",
    ]);
    assert_eq!(
        (code(&o), String::from_utf8_lossy(&o.stdout).as_ref()),
        (124, "partial\n")
    );
    let o = env.run(&[
        "run",
        "--template",
        "busybox",
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    assert_eq!(code(&o), 137);
    let o = env.run(&["run", "--template", "busybox", "--", "no-such-program"]);
    assert_eq!(code(&o), 127, "{}", String::from_utf8_lossy(&o.stderr));
    // As in shells: 127 for a missing program, 126 for one that exists but
    // cannot be executed (not executable, a directory).
    for (program, expect) in [("/nonexistent", 127), ("/etc/passwd", 126), ("/etc", 126)] {
        let o = env.run(&["run", "--template", "busybox", "--", program]);
        assert_eq!(
            code(&o),
            expect,
            "{program}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(program),
            "the message names {program}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // hull's own failures: 125 with a clear message.
    let o = env.run(&["run", "--template", "nope", "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env.run(&["run", "--memory", "lots", "--", "true"]);
    assert_eq!(code(&o), 125);
    let o = env.run(&["run", "--bogus-flag", "--", "true"]);
    assert_eq!(code(&o), 125);
    // run destroys its sandbox.
    assert_eq!(env.ok(&["ls", "--json"]).matches("\"id\"").count(), 0);
}

#[test]
fn sandbox_commands() {
    if !privileged("sandbox_commands") {
        return;
    }
    let env = Env::new();
    let id = env.ok(&[
        "create",
        "--template",
        "busybox",
        "--name",
        "box",
        "-l",
        "team=a",
        "-e",
        "GREETING=hey",
    ]);
    let id = id.trim();
    assert!(
        id.len() >= 8
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{id:?}"
    );
    assert_eq!(
        env.ok(&["exec", "box", "--", "sh", "-c", "echo $GREETING"]),
        "hey\n"
    );
    assert_eq!(
        env.ok(&["exec", id, "-u", "user", "--", "id", "-u"]),
        "1000\n"
    );
    // stdin with -i.
    let mut child = env
        .cmd(&["exec", "-i", id, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped data")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "piped data");
    // ls, inspect, --json.
    // A terminal with -t (even when hull's stdin is not one).
    let o = env.ok(&["exec", "-t", id, "--", "sh", "-c", "test -t 1 && echo tty"]);
    assert!(o.contains("tty"), "{o:?}");
    assert_eq!(
        env.ok(&["exec", id, "-u", "nobody", "--", "id", "-u"]),
        "65534\n"
    );
    let ls = env.ok(&["ls", "-l", "team=a"]);
    assert!(ls.contains(id) && ls.contains("box"), "{ls}");
    assert!(!env.ok(&["ls", "-l", "team=b"]).contains(id));
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "box", "--json"])).unwrap();
    assert_eq!(v["id"], id);
    // cp, both ways, files and directories.
    let local = env.dir.path().join("in");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("sub/f.txt"), "file body").unwrap();
    env.ok(&[
        "cp",
        local.join("sub/f.txt").to_str().unwrap(),
        &format!("{id}:/work/f.txt"),
    ]);
    assert_eq!(
        env.ok(&["exec", id, "--", "cat", "/work/f.txt"]),
        "file body"
    );
    env.ok(&["cp", local.to_str().unwrap(), &format!("{id}:/tree")]);
    assert_eq!(
        env.ok(&["exec", id, "--", "cat", "/tree/sub/f.txt"]),
        "file body"
    );
    let out = env.dir.path().join("out");
    env.ok(&["cp", &format!("{id}:/tree"), out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(out.join("sub/f.txt")).unwrap(),
        "file body"
    );
    assert_eq!(
        env.ok(&["cp", &format!("{id}:/work/f.txt"), "-"]),
        "file body"
    );
    // Escapes through cp stay inside the sandbox.
    env.ok(&[
        "cp",
        local.join("sub/f.txt").to_str().unwrap(),
        &format!("{id}:/../../../tmp/escape-{id}"),
    ]);
    assert!(!Path::new(&format!("/tmp/escape-{id}")).exists());
    // pause / resume / ttl / ps.
    env.ok(&["pause", id]);
    let o = env.run(&["exec", id, "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(String::from_utf8_lossy(&o.stderr).contains("paused"));
    env.ok(&["resume", id]);
    let o = env.run(&["resume", id]);
    assert_eq!(code(&o), 125, "resuming a running sandbox is refused");
    env.ok(&["ttl", id, "2h"]);
    assert!(env.ok(&["ls"]).contains("2h") || env.ok(&["ls"]).contains("1h"));
    assert!(env.ok(&["ps", id]).contains("cat"));
    // Unknown ids, bad arguments: 125 and the API's message.
    for args in [
        &["exec", "nope", "--", "true"][..],
        &["inspect", "nope"],
        &["pause", "nope"],
        &["ttl", "nope", "1m"],
        &["cp", "nope:/etc/passwd", "-"],
    ] {
        let o = env.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 125, "{args:?}");
        assert!(
            err.starts_with("hull: ") && err.contains("nope"),
            "{args:?}: {err}"
        );
    }
    // Several ids at once; a failure among them is reported and exits 125.
    let o = env.run(&["pause", id, "nope"]);
    assert_eq!(
        (code(&o), String::from_utf8_lossy(&o.stdout).trim()),
        (125, id)
    );
    env.ok(&["resume", id]);
    assert_eq!(code(&env.run(&["ttl", id, "forever"])), 125);
    assert_eq!(code(&env.run(&["cp", "a", "b"])), 125);
    let info = env.ok(&["info"]);
    assert!(info.contains("cgroups"), "{info}");
    env.ok(&["rm", id]);
    assert_eq!(code(&env.run(&["rm", id])), 125);
    // system reset refuses without --force when not on a terminal.
    assert_eq!(code(&env.run(&["system", "reset"])), 125);
}

/// SIGKILL the daemon while creates are in flight, restart it: running
/// sandboxes survive and are re-adopted; half-created ones leave nothing.
#[test]
fn daemon_killed_during_create_recovers_cleanly() {
    if !privileged("daemon_killed_during_create") {
        return;
    }
    let env = Env::new();
    let a = env
        .ok(&["create", "--template", "busybox"])
        .trim()
        .to_string();
    env.ok(&["exec", &a, "--", "sh", "-c", "echo kept > /tmp/state"]);
    let pid = env.daemon_pid().expect("daemon running");
    let creators: Vec<_> = (0..4)
        .map(|_| {
            env.cmd(&["create", "--template", "busybox"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(15));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    // The clients get an answer or an error, never a hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut stuck = 0;
    for mut c in creators {
        while c.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                stuck += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    assert_eq!(
        stuck, 0,
        "`hull create` never heard back from the killed daemon (something it forked still holds the connections)"
    );
    // Wait for the old daemon to be gone, then any client command restarts one.
    for _ in 0..100 {
        if env.daemon_pid().is_none_or(|p| p != pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["ls", "--json"])).unwrap();
    // Nothing the killed daemon forked outlives it: one process serves.
    let mut procs = env.daemon_pids();
    for _ in 0..100 {
        if procs.len() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        procs = env.daemon_pids();
    }
    assert_eq!(procs.len(), 1, "processes of the daemons: {procs:?}");
    let sandboxes = list["sandboxes"].as_array().unwrap();
    assert!(sandboxes.iter().any(|s| s["id"] == a.as_str()), "{list}");
    assert_eq!(
        env.ok(&["exec", &a, "--", "cat", "/tmp/state"]),
        "kept\n",
        "the sandbox kept running"
    );
    for s in sandboxes {
        assert_eq!(
            s["state"], "running",
            "no half-created sandbox survives: {s}"
        );
        env.ok(&["exec", s["id"].as_str().unwrap(), "--", "true"]);
    }
    // On the host: exactly one directory and one cgroup per listed sandbox.
    let dirs = std::fs::read_dir(env.state().join("sandboxes"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(dirs, sandboxes.len(), "sandbox directories");
    let info: serde_json::Value = serde_json::from_str(&env.ok(&["info", "--json"])).unwrap();
    let parent = format!("hull-{}", info["instance_id"].as_str().unwrap());
    let cgroups = std::fs::read_dir(Path::new("/sys/fs/cgroup/pids").join(&parent))
        .or_else(|_| std::fs::read_dir(Path::new("/sys/fs/cgroup").join(&parent)))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    assert_eq!(cgroups, sandboxes.len(), "sandbox cgroups");
}

/// Several clients finding no daemon start exactly one between them.
#[test]
fn concurrent_clients_start_one_daemon() {
    if !privileged("concurrent_clients_start_one_daemon") {
        return;
    }
    let env = Env::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            env.cmd(&["ls", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["sandboxes"].as_array().map(Vec::len), Some(0));
    }
    assert_eq!(env.daemon_pids().len(), 1, "one daemon");
}

/// Concurrent `hull run`s on a fresh daemon, whose first sandboxes build
/// the template while the others wait for it.
#[test]
fn concurrent_runs_on_a_fresh_daemon() {
    if !privileged("concurrent_runs_on_a_fresh_daemon") {
        return;
    }
    let env = Env::new();
    let children: Vec<_> = (0..3)
        .map(|_| {
            env.cmd(&["run", "--template", "busybox", "--", "echo", "hi"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(
            (code(&o), String::from_utf8_lossy(&o.stdout).as_ref()),
            (0, "hi\n"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(env.daemon_pids().len(), 1, "one daemon");
    assert_eq!(env.sandbox_count(), 0);
}

/// Ctrl-C/SIGTERM on `hull run` destroys its sandbox; on `hull exec` the
/// signal reaches the command, whose exit status becomes hull's.
#[test]
fn signals_destroy_run_sandboxes_and_reach_exec_commands() {
    if !privileged("signals") {
        return;
    }
    use nix::sys::signal::Signal;
    let env = Env::new();
    let id = env
        .ok(&["create", "--template", "busybox"])
        .trim()
        .to_string();
    for (sig, expect) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let child = env
            .cmd(&["run", "--template", "busybox", "--", "sleep", "30"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        env.wait_for(10, "the run sandbox", || env.sandbox_count() == 2);
        std::thread::sleep(std::time::Duration::from_millis(200));
        signal(child.id(), sig);
        let o = child.wait_with_output().unwrap();
        assert_eq!(code(&o), expect, "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            env.sandbox_count(),
            1,
            "the run sandbox is gone after {sig}"
        );
    }
    // exec: the command traps SIGINT and exits 3.
    let child = env
        .cmd(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "trap 'echo trapped; exit 3' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_for(10, "the command to start", || {
        env.ok(&["ps", &id]).contains("running")
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    signal(child.id(), Signal::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        (code(&o), String::from_utf8_lossy(&o.stdout).as_ref()),
        (3, "ready\ntrapped\n"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // exec -i (stdin forwarded, no terminal) forwards SIGTERM and SIGHUP
    // as plain exec does, instead of dying of them.
    for (sig, name) in [(Signal::SIGTERM, "TERM"), (Signal::SIGHUP, "HUP")] {
        let script =
            format!("trap 'echo trapped; exit 3' {name}; echo ready; while :; do sleep 0.1; done");
        let child = env
            .cmd(&["exec", "-i", &id, "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        env.wait_for(10, "the command to start", || {
            env.ok(&["ps", &id]).contains("running")
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        signal(child.id(), sig);
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            (code(&o), String::from_utf8_lossy(&o.stdout).as_ref()),
            (3, "ready\ntrapped\n"),
            "exec -i, {sig}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    env.ok(&["rm", &id]);
}

/// `--json` prints the API's objects; `version`, `stop`, `info --json`.
#[test]
fn json_version_and_stop() {
    if !privileged("json_version_and_stop") {
        return;
    }
    let env = Env::new();
    // `version` never starts a daemon.
    let v = env.ok(&["version"]);
    assert!(v.starts_with("hull ") && v.contains("not running"), "{v}");
    assert!(env.daemon_pids().is_empty());
    let s: serde_json::Value = serde_json::from_str(&env.ok(&[
        "create",
        "--template",
        "busybox",
        "--ttl",
        "10m",
        "--memory",
        "256M",
        "--json",
    ]))
    .unwrap();
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["state"], "running");
    assert_eq!(s["template"], "busybox");
    assert_eq!(s["limits"]["memory_bytes"], 256u64 << 20, "{s}");
    assert!(s["expires_at"].as_u64().is_some(), "{s}");
    let v = env.ok(&["version"]);
    assert!(v.contains("daemon "), "{v}");
    let info: serde_json::Value = serde_json::from_str(&env.ok(&["info", "--json"])).unwrap();
    assert!(info["instance_id"].is_string(), "{info}");
    let ls: serde_json::Value = serde_json::from_str(&env.ok(&["--json", "ls"])).unwrap();
    assert_eq!(ls["sandboxes"][0]["id"], id.as_str());
    let stopped: serde_json::Value =
        serde_json::from_str(&env.ok(&["stop", &id, "--json"])).unwrap();
    assert_eq!(stopped["state"], "stopped");
    let o = env.run(&["exec", &id, "--", "true"]);
    assert_eq!(code(&o), 125);
    env.ok(&["rm", &id]);
}

/// `hull serve` started by hand, also on TCP: clients with `HULL_URL` +
/// `HULL_TOKEN` work, without the token they are refused, and `HULL_URL`
/// never auto-starts a daemon.
#[test]
fn serve_by_hand_and_tcp_clients() {
    if !privileged("serve_by_hand_and_tcp_clients") {
        return;
    }
    let env = Env::new();
    let (mut daemon, addr, token) = env.serve_tcp();
    let tcp = |token: Option<&str>, args: &[&str]| {
        let mut c = env.cmd(args);
        c.env("HULL_URL", format!("http://{addr}"));
        match token {
            Some(t) => c.env("HULL_TOKEN", t.trim()),
            None => c.env_remove("HULL_TOKEN"),
        };
        c.output().unwrap()
    };
    let o = tcp(
        Some(&token),
        &["run", "--template", "busybox", "--", "echo", "over tcp"],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "over tcp\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = tcp(None, &["ls"]);
    assert_eq!(code(&o), 125);
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("hull: "));
    let o = tcp(Some("wrong"), &["ls"]);
    assert_eq!(code(&o), 125);
    // A second daemon on a live socket is refused.
    let mut second = env
        .cmd(&[
            "serve",
            "--state-dir",
            env.dir.path().join("other").to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut refused = None;
    for _ in 0..200 {
        if let Some(st) = second.try_wait().unwrap() {
            refused = Some(st);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if refused.is_none() {
        let _ = second.kill();
        let _ = second.wait();
    }
    assert!(
        refused.is_some_and(|st| !st.success()),
        "a second daemon is refused: {refused:?}"
    );
    // Nothing listens here: no auto-start over TCP.
    let dead = Command::new(env!("CARGO_BIN_EXE_hull"))
        .args(["ls"])
        .env("HULL_URL", "http://127.0.0.1:9")
        .env("HULL_SOCKET", env.dir.path().join("unused.sock"))
        .env("HULL_STATE_DIR", env.dir.path().join("unused"))
        .output()
        .unwrap();
    assert_eq!(code(&dead), 125);
    assert!(
        !env.dir.path().join("unused").exists(),
        "no daemon was started"
    );
    drop(env);
    let _ = daemon.wait();
}

/// Snapshot, fork, create --from, rollback and snapshot ls/rm as a user
/// types them: commands that make something print ids alone.
#[test]
fn snapshot_fork_rollback_commands() {
    if !privileged("snapshot_fork_rollback_commands") {
        return;
    }
    let env = Env::new();
    let a = env
        .ok(&["create", "--template", "busybox", "--name", "base"])
        .trim()
        .to_string();
    env.ok(&["exec", "base", "--", "sh", "-c", "echo one > /f"]);
    let snap = env.ok(&["snapshot", "base", "--name", "s1", "-l", "k=v"]);
    let snap = snap.trim();
    assert!(
        snap.len() == 12 && !snap.contains(char::is_whitespace),
        "the id alone: {snap:?}"
    );
    let forks = env.ok(&["fork", "s1", "-n", "3"]);
    let ids: Vec<&str> = forks.lines().collect();
    assert_eq!(ids.len(), 3, "{forks}");
    for id in &ids {
        assert_eq!(env.ok(&["exec", id, "cat", "/f"]), "one\n");
    }
    let from = env.ok(&["create", "--from", snap]).trim().to_string();
    assert_eq!(env.ok(&["exec", &from, "--", "cat", "/f"]), "one\n");
    let run = env.run(&["run", "--from", "s1", "--", "cat", "/f"]);
    assert_eq!(String::from_utf8_lossy(&run.stdout), "one\n");
    env.ok(&["exec", "base", "--", "sh", "-c", "echo two > /f"]);
    assert_eq!(env.ok(&["rollback", "base", "s1"]).trim(), a);
    assert_eq!(env.ok(&["exec", "base", "--", "cat", "/f"]), "one\n");
    let ls = env.ok(&["snapshot", "ls"]);
    assert!(ls.contains(snap) && ls.contains("s1"), "{ls}");
    let js: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshot", "ls", "--json", "-l", "k=v"])).unwrap();
    assert_eq!(js["snapshots"].as_array().unwrap().len(), 1);
    let insp: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshot", "inspect", "s1"])).unwrap();
    assert_eq!(insp["id"], snap);
    // A template made of the snapshot.
    assert_eq!(env.ok(&["template", "save", "s1", "world"]).trim(), "world");
    assert!(env.ok(&["template", "ls"]).contains("world"));
    let w = env
        .ok(&["create", "--template", "world"])
        .trim()
        .to_string();
    assert_eq!(env.ok(&["exec", &w, "--", "cat", "/f"]), "one\n");
    env.ok(&["rm", &w]);
    assert_eq!(env.ok(&["template", "rm", "world"]).trim(), "world");
    assert_eq!(code(&env.run(&["template", "rm", "busybox"])), 125);
    // In use: refused with a message naming the users, exit 125.
    let rm = env.run(&["snapshot", "rm", "s1"]);
    assert_eq!(code(&rm), 125);
    assert!(
        String::from_utf8_lossy(&rm.stderr).contains("in use"),
        "{rm:?}"
    );
    let bad = env.run(&["fork", "s1", "-n", "0"]);
    assert_eq!(code(&bad), 125);
    let bad = env.run(&["snapshot", "no-such-sandbox"]);
    assert_eq!(code(&bad), 125);
    let mut all: Vec<&str> = ids.clone();
    all.push(&from);
    all.push("base");
    let mut rm = vec!["rm"];
    rm.extend(all);
    env.ok(&rm);
    assert_eq!(env.ok(&["snapshot", "rm", "s1"]).trim(), "s1");
    assert_eq!(
        env.ok(&["snapshot", "ls", "--json"])
            .matches("\"id\"")
            .count(),
        0
    );
}

/// The daemon SIGKILLed while it copies a snapshot (the sandbox frozen):
/// the restarted daemon lists no half snapshot, and the sandbox runs again.
#[test]
fn daemon_killed_during_snapshot_recovers_cleanly() {
    if !privileged("daemon_killed_during_snapshot") {
        return;
    }
    let env = Env::new();
    let a = env
        .ok(&["create", "--template", "busybox"])
        .trim()
        .to_string();
    // Enough changed data that the copy takes a while.
    env.ok(&[
        "exec",
        &a,
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 400 ]; do head -c 256K /dev/urandom > /f$i; i=$((i+1)); done",
    ]);
    let pid = env.daemon_pid().expect("daemon running");
    let mut snap = env
        .cmd(&["snapshot", &a, "--name", "half"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the sandbox is frozen (the copy has begun), or give up
    // waiting and kill anyway.
    let frozen = || {
        std::fs::read_dir("/sys/fs/cgroup/freezer")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join(&a).join("freezer.state"))
                    .is_ok_and(|s| s.trim() == "FROZEN")
            })
    };
    for _ in 0..400 {
        if frozen() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let _ = snap.wait();
    for _ in 0..100 {
        if env.daemon_pid().is_none_or(|p| p != pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Any command starts a new daemon, which recovers.
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshot", "ls", "--json"])).unwrap();
    for s in list["snapshots"].as_array().unwrap() {
        // Either the snapshot finished before the kill, and is whole, or
        // it is not there at all.
        let id = s["id"].as_str().unwrap();
        let b = env.ok(&["create", "--from", id]).trim().to_string();
        assert_eq!(
            env.ok(&["exec", &b, "--", "sh", "-c", "ls / | grep -c '^f'"]),
            "400\n"
        );
        env.ok(&["rm", &b]);
    }
    // The sandbox is running, not left frozen.
    let insp: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", &a])).unwrap();
    assert_eq!(insp["state"], "running", "{insp}");
    assert!(!frozen(), "the sandbox was left frozen");
    assert_eq!(env.ok(&["exec", &a, "--", "echo", "alive"]), "alive\n");
}

/// `snapshot export|import` and `template import` as a user types them:
/// ids and names alone on stdout, files written whole or not at all, bad
/// input refused with exit 125 and a message.
#[test]
fn export_import_and_template_import_commands() {
    if !privileged("export_import_and_template_import_commands") {
        return;
    }
    use hull_testkit::oci::{Entry, busybox_layer, image_tar, layer};
    let env = Env::new();
    let a = env
        .ok(&["create", "--template", "busybox"])
        .trim()
        .to_string();
    env.ok(&["exec", &a, "--", "sh", "-c", "echo carried > /c"]);
    env.ok(&["snapshot", &a, "--name", "s1"]);
    let file = env.dir.path().join("s1.tar.zst");
    env.ok(&["snapshot", "export", "s1", "-o", file.to_str().unwrap()]);
    // Without -o, to a pipe: the same archive format.
    let piped = env.run(&["snapshot", "export", "s1"]);
    assert_eq!(code(&piped), 0);
    assert_eq!(&piped.stdout[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    let id = env.ok(&["snapshot", "import", file.to_str().unwrap(), "--name", "s2"]);
    let id = id.trim();
    assert!(id.len() == 12, "the id alone: {id:?}");
    let b = env.ok(&["create", "--from", "s2"]).trim().to_string();
    assert_eq!(env.ok(&["exec", &b, "--", "cat", "/c"]), "carried\n");
    // Refusals: unknown snapshot (no file left behind), a file that is
    // not an archive, a missing file.
    let out = env.dir.path().join("none.tar.zst");
    let r = env.run(&["snapshot", "export", "nope", "-o", out.to_str().unwrap()]);
    assert_eq!(code(&r), 125, "{r:?}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(env.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".part")
            })
            .count(),
        0
    );
    let junk = env.dir.path().join("junk.tar.zst");
    std::fs::write(&junk, b"junk").unwrap();
    let r = env.run(&["snapshot", "import", junk.to_str().unwrap()]);
    assert_eq!(code(&r), 125);
    assert!(!String::from_utf8_lossy(&r.stderr).trim().is_empty());
    let r = env.run(&["template", "import", "/nonexistent/image.tar"]);
    assert_eq!(code(&r), 125);
    assert!(String::from_utf8_lossy(&r.stderr).contains("/nonexistent/image.tar"));

    // An OCI image: the name comes from the file name.
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
    let image = image_tar(
        &[
            busybox_layer(&busybox, &["sh", "cat"]),
            layer(&[
                Entry::Dir("srv/", 0o755),
                Entry::File("srv/hello", b"from the image\n", 0o644),
            ]),
        ],
        serde_json::json!({"Env": ["PATH=/bin", "MODE=image"], "WorkingDir": "/srv"}),
    );
    let tar = env.dir.path().join("My_App-1.0.tar");
    std::fs::write(&tar, &image).unwrap();
    assert_eq!(
        env.ok(&["template", "import", tar.to_str().unwrap()])
            .trim(),
        "my-app-1-0"
    );
    assert!(env.ok(&["template", "ls"]).contains("my-app-1-0"));
    let out = env.ok(&[
        "run",
        "--template",
        "my-app-1-0",
        "--",
        "sh",
        "-c",
        "cat hello; echo $MODE",
    ]);
    assert_eq!(out, "from the image\nimage\n");
    assert_eq!(
        env.ok(&[
            "template",
            "import",
            tar.to_str().unwrap(),
            "--name",
            "again"
        ])
        .trim(),
        "again"
    );
    let r = env.run(&[
        "template",
        "import",
        tar.to_str().unwrap(),
        "--name",
        "again",
    ]);
    assert_eq!(code(&r), 125);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("already exists"),
        "{r:?}"
    );
    // A build that can't start fails before anything runs.
    let r = env.run(&[
        "template",
        "build",
        "deb",
        "--debian",
        "bookworm",
        "--packages=-oops",
    ]);
    assert_eq!(code(&r), 125);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("-oops"),
        "{r:?}"
    );
}

/// The daemon SIGKILLed while it imports an image: the restarted daemon
/// lists no template and keeps nothing staged.
#[test]
fn daemon_killed_during_import_leaves_nothing() {
    if !privileged("daemon_killed_during_import") {
        return;
    }
    use hull_testkit::oci::{Entry, image_tar, layer};
    let env = Env::new();
    env.ok(&["template", "ls"]);
    // A big layer (pseudo-random, so gzip keeps it big) so the import takes a while.
    let mut data = vec![0u8; 160 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let image = image_tar(
        &[layer(&[Entry::File("big", &data, 0o644)])],
        serde_json::json!({}),
    );
    drop(data);
    let tar = env.dir.path().join("big.tar");
    std::fs::write(&tar, &image).unwrap();
    drop(image);
    let pid = env.daemon_pid().expect("daemon running");
    let mut import = env
        .cmd(&["template", "import", tar.to_str().unwrap(), "--name", "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stagings = [
        env.state().join("import"),
        env.state().join("snapshots/btrfs/staging"),
        env.state().join("snapshots/overlay/staging"),
    ];
    let staged = || -> usize {
        stagings
            .iter()
            .map(|d| std::fs::read_dir(d).map(|d| d.count()).unwrap_or(0))
            .sum()
    };
    for _ in 0..2000 {
        if staged() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    assert!(!import.wait().unwrap().success());
    for _ in 0..100 {
        if env.daemon_pid().is_none_or(|p| p != pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ls = env.ok(&["template", "ls"]);
    assert!(!ls.contains("big"), "{ls}");
    assert_eq!(staged(), 0, "staged files left");
    let snaps: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshot", "ls", "--json"])).unwrap();
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 0);
    // And the same import works afterwards.
    assert_eq!(
        env.ok(&["template", "import", tar.to_str().unwrap(), "--name", "big"])
            .trim(),
        "big"
    );
}

/// `hull shell` as a user types it: one command with `-c` (exit code
/// passed on, 124 after `--timeout`), state kept between invocations, a
/// script on stdin, `--list` and `--close`.
#[test]
fn shell_command() {
    if !privileged("shell_command") {
        return;
    }
    let env = Env::new();
    let id = env.ok(&["create", "--template", "host"]).trim().to_string();
    assert_eq!(env.ok(&["shell", &id, "-c", "cd /tmp; export A=1"]), "");
    assert_eq!(env.ok(&["shell", &id, "-c", "echo $A; pwd"]), "1\n/tmp\n");
    assert_eq!(
        code(&env.run(&["shell", &id, "-c", "exit_code() { return 3; }; exit_code"])),
        3
    );
    let r = env.run(&[
        "shell",
        &id,
        "--timeout",
        "1s",
        "-c",
        "echo start; sleep 30",
    ]);
    assert_eq!(code(&r), 124, "{r:?}");
    assert!(String::from_utf8_lossy(&r.stdout).contains("start"));
    assert_eq!(
        env.ok(&["shell", &id, "-c", "echo $A"]),
        "1\n",
        "the session survived"
    );
    // A script on stdin, in another session.
    let mut child = env
        .cmd(&["shell", &id, "--session", "two"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cd /etc\nB=2\necho $B $PWD $A\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 /etc\n");
    let list = env.ok(&["shell", &id, "--list"]);
    assert!(list.contains("default") && list.contains("two"), "{list}");
    assert_eq!(
        env.ok(&["shell", &id, "--session", "two", "--close"])
            .trim(),
        "two"
    );
    assert!(!env.ok(&["shell", &id, "--list"]).contains("two"));
    assert_eq!(code(&env.run(&["shell", "no-such-box", "-c", "true"])), 125);
    assert_eq!(
        code(&env.run(&["shell", &id, "--session", "../x", "-c", "true"])),
        125
    );
}

/// `hull code` as a user types it: state kept between invocations, the
/// text of results printed, exit 1 when the code raised, `--json`.
#[test]
fn code_command() {
    if !privileged("code_command") {
        return;
    }
    let env = Env::new();
    let id = env.ok(&["create", "--template", "host"]).trim().to_string();
    assert_eq!(env.ok(&["code", &id, "--", "x = 41; print('hi')"]), "hi\n");
    assert_eq!(env.ok(&["code", &id, "--", "x + 1"]), "42\n");
    assert_eq!(code(&env.run(&["code", &id, "--", "1/0"])), 1);
    let out = env.ok(&["code", &id, "--json", "--context", "other", "--", "'a' * 2"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["results"][0]["text/plain"], "'aa'", "{out}");
}

#[test]
fn mcp_over_stdio() {
    if !privileged("mcp_over_stdio") {
        return;
    }
    use std::io::{BufRead as _, BufReader, Write as _};
    let env = Env::new();
    // `hull mcp` starts the daemon itself, like every command.
    let mut child = env
        .cmd(&["mcp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut rpc = |msg: serde_json::Value| -> Option<serde_json::Value> {
        writeln!(stdin, "{msg}").unwrap();
        msg.get("id")?;
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON message per line ({e}): {line:?}"));
        assert_eq!(v["id"], msg["id"], "{v}");
        Some(v)
    };
    let init = rpc(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "cli-test", "version": "0"}}}),
    )
    .unwrap();
    assert_eq!(init["result"]["serverInfo"]["name"], "hull", "{init}");
    assert!(
        rpc(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).is_none()
    );
    let tools =
        rpc(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).unwrap();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"exec") && names.contains(&"shell_run"),
        "{names:?}"
    );
    let call = |id: u64, name: &str, args: serde_json::Value| {
        serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": args}})
    };
    let r = rpc(call(
        3,
        "sandbox_create",
        serde_json::json!({"template": "busybox"}),
    ))
    .unwrap();
    let sb = r["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    let r = rpc(call(
        4,
        "exec",
        serde_json::json!({"sandbox": sb, "command": "echo hi"}),
    ))
    .unwrap();
    assert_eq!(r["result"]["structuredContent"]["stdout"], "hi\n", "{r}");
    let r = rpc(call(
        5,
        "sandbox_inspect",
        serde_json::json!({"sandbox": "nope"}),
    ))
    .unwrap();
    assert_eq!(r["result"]["isError"], true, "{r}");
    let r = rpc(call(
        6,
        "sandbox_destroy",
        serde_json::json!({"sandbox": sb}),
    ))
    .unwrap();
    assert_eq!(r["result"]["isError"], false, "{r}");
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "hull mcp ends cleanly at the end of stdin"
    );
    assert_eq!(env.sandbox_count(), 0);
}

/// The official Python MCP client (PyPI `mcp`, in a venv made on first use
/// under /var/cache/hull, outside the checkout), or `None` after a SKIP
/// message (a failure under `HULL_TEST_PRIVILEGED=1`) when it can't be
/// installed.
fn python_mcp(test: &str) -> Option<PathBuf> {
    const VENV: &str = "/var/cache/hull/venv-mcp";
    const PIN: &str = "mcp==2.3.0";
    let python = Path::new(VENV).join("bin/python");
    let have = |p: &Path| {
        Command::new(p)
            .args([
                "-c",
                "import mcp, importlib.metadata as m; print(m.version('mcp'))",
            ])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "2.3.0"
            })
    };
    if !have(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv", "--clear", VENV])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(Path::new(VENV).join("bin/pip"))
                .args(["install", "-q", PIN])
                .status()
                .is_ok_and(|s| s.success());
        if !made || !have(&python) {
            let why = format!("could not install {PIN} into {VENV} (python3-venv and PyPI needed)");
            assert!(
                std::env::var("HULL_TEST_PRIVILEGED").as_deref() != Ok("1"),
                "{test}: {why}"
            );
            eprintln!("SKIP {test}: {why}");
            return None;
        }
    }
    Some(python)
}

/// hull's MCP server with the official Python client, over `hull mcp`
/// (stdio) and over streamable HTTP on TCP with the bearer token.
#[test]
fn python_mcp_client() {
    if !privileged("python_mcp_client") {
        return;
    }
    let Some(python) = python_mcp("python_mcp_client") else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/mcp_client.py");
    let env = Env::new();
    let (mut daemon, addr, token) = env.serve_tcp();
    let run = |args: &[&str]| {
        let o = Command::new(&python)
            .arg(&script)
            .args(args)
            .env("HULL_SOCKET", env.socket())
            .env("HULL_STATE_DIR", env.state())
            .env_remove("HULL_URL")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok",
            "python {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["stdio", env!("CARGO_BIN_EXE_hull")]);
    run(&["http", &format!("http://{addr}/mcp"), token.trim()]);
    let ls = env.ok(&["ls"]);
    assert_eq!(ls.lines().count(), 1, "no sandbox left: {ls}");
    drop(env);
    let _ = daemon.wait();
}

/// Playwright (PyPI, in a venv made on first use under /var/cache/hull)
/// drives a sandbox's Chromium with `connect_over_cdp` through the
/// daemon's CDP route on TCP with the token; `None` after a SKIP message (a
/// failure under `HULL_TEST_PRIVILEGED=1`) when it or chromium is missing.
fn python_playwright(test: &str) -> Option<PathBuf> {
    const VENV: &str = "/var/cache/hull/venv-playwright";
    const PIN: &str = "playwright==1.65.*";
    let python = Path::new(VENV).join("bin/python");
    let have = |p: &Path| {
        Command::new(p)
            .args([
                "-c",
                "import playwright, importlib.metadata as m; print(m.version('playwright'))",
            ])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("1.65.")
            })
    };
    let chromium = Path::new("/usr/lib/chromium/chromium").exists();
    if chromium && !have(&python) {
        let _ = Command::new("python3")
            .args(["-m", "venv", "--clear", VENV])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(Path::new(VENV).join("bin/pip"))
                .args(["install", "-q", PIN])
                .status()
                .is_ok_and(|s| s.success());
    }
    if !chromium || !have(&python) {
        let why = if chromium {
            format!("could not install {PIN} into {VENV} (python3-venv and PyPI needed)")
        } else {
            "chromium is not installed (apt-get install chromium)".to_string()
        };
        assert!(
            std::env::var("HULL_TEST_PRIVILEGED").as_deref() != Ok("1"),
            "{test}: {why}"
        );
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    Some(python)
}

#[test]
fn playwright_connects_over_cdp() {
    if !privileged("playwright_connects_over_cdp") {
        return;
    }
    let Some(python) = python_playwright("playwright_connects_over_cdp") else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/playwright_cdp.py");
    let env = Env::new();
    let (mut daemon, addr, token) = env.serve_tcp();
    let id = env.ok(&["create", "--template", "host", "--memory", "2G"]);
    let id = id.trim();
    let page = "<title>From the sandbox</title><input id=q><button id=go onclick=\"document.getElementById('out').textContent=document.getElementById('q').value;document.getElementById('out').className='done'\">go</button><p id=out></p>";
    env.ok(&[
        "exec",
        id,
        "--",
        "sh",
        "-c",
        &format!(
            "mkdir -p /srv && cat > /srv/index.html <<'EOF'\n{page}\nEOF\n\
             setsid python3 -m http.server 8765 --bind 127.0.0.1 --directory /srv >/dev/null 2>&1 &\n\
             for i in $(seq 100); do python3 -c 'import urllib.request as u; u.urlopen(\"http://127.0.0.1:8765/\")' 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
        ),
    ]);
    let o = Command::new(&python)
        .arg(&script)
        .args([&format!("http://{addr}"), id, token.trim()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok",
        "playwright: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The tab Playwright made is one of the action API's tabs too.
    let tabs = env.ok(&["browse", id]);
    assert!(tabs.contains("From the sandbox"), "{tabs}");
    env.ok(&["rm", id]);
    drop(env);
    let _ = daemon.wait();
}
