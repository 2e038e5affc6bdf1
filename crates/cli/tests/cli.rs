//! The `hull` binary as a user drives it: auto-started daemon, run/exec
//! exit codes, create/cp/ls/pause/resume/ttl/rm, JSON output, bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
    fn daemon_pid(&self) -> Option<i32> {
        let out = Command::new("pgrep")
            .arg("-f")
            .arg(format!("serve --socket {}", self.socket().display()))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.run(&["system", "reset", "--force"]);
        if let Some(pid) = self.daemon_pid() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
            for _ in 0..100 {
                if self.daemon_pid().is_none() {
                    break;
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
    // Unknown ids, bad arguments.
    assert_eq!(code(&env.run(&["exec", "nope", "--", "true"])), 125);
    assert_eq!(code(&env.run(&["ttl", id, "forever"])), 125);
    assert_eq!(code(&env.run(&["cp", "a", "b"])), 125);
    let info = env.ok(&["info"]);
    assert!(info.contains("cgroups"), "{info}");
    env.ok(&["rm", id]);
    assert_eq!(code(&env.run(&["rm", id])), 125);
    // system reset refuses without --force when not on a terminal.
    assert_eq!(code(&env.run(&["system", "reset"])), 125);
}
