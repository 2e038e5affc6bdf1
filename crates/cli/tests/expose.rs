//! `hull expose` as a user drives it, over TCP with the bearer token: an
//! HTTP server and a TCP echo server inside a sandbox (loopback-only
//! network), reached through local forwarders (`--local 127.0.0.1:0`);
//! `--list`, `--rm`, Ctrl-C, and bad input.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use hull_testkit::privileged;

/// A private daemon started by hand (unix socket + TCP), reset and
/// stopped at the end.
struct Env {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    addr: String,
    token: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("hull-x")
            .tempdir_in("/tmp")
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut env = Env {
            dir,
            daemon: None,
            addr,
            token: String::new(),
        };
        let daemon = Command::new(env!("CARGO_BIN_EXE_hull"))
            .args(["serve", "--socket"])
            .arg(env.socket())
            .arg("--state-dir")
            .arg(env.state())
            .args(["--listen", &env.addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        env.daemon = Some(daemon);
        wait_for(20, "the daemon's token", || {
            env.state().join("token").exists()
        });
        env.token = std::fs::read_to_string(env.state().join("token"))
            .unwrap()
            .trim()
            .to_string();
        wait_for(20, "the daemon", || env.run(&["ls"]).status.success());
        env
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("hull.sock")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// `hull ARGS` over TCP with the token.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hull"));
        c.args(args)
            .env("HULL_SOCKET", self.socket())
            .env("HULL_STATE_DIR", self.state())
            .env("HULL_URL", format!("http://{}", self.addr))
            .env("HULL_TOKEN", &self.token)
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
    /// `hull expose ARGS` left running: the process, what it printed up to
    /// its `forwarding ADDR` line, and that address.
    fn forwarder(&self, args: &[&str]) -> (Forwarder, String, String) {
        let err = self.dir.path().join(format!("forwarder-{}.err", args[2]));
        let child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let mut f = Forwarder { child, err };
        let mut out = BufReader::new(f.child.stdout.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "hull {args:?} ended early: {seen}"
            );
            seen.push_str(&line);
            if let Some(rest) = line.strip_prefix("forwarding ") {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                // Keep reading in the background so the pipe never fills.
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    let _ = out.read_to_string(&mut sink);
                });
                return (f, seen, addr);
            }
        }
    }
}

/// A running `hull expose`, killed (by its pid) if the test ends early.
struct Forwarder {
    child: Child,
    err: PathBuf,
}

impl Forwarder {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.run(&["system", "reset", "--force"]);
        if let Some(mut d) = self.daemon.take() {
            signal(d.id(), nix::sys::signal::SIGTERM);
            let _ = d.wait();
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// Send `data`, half-close, read everything back.
fn tcp_roundtrip(addr: &str, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    s.write_all(data)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

const ECHO: &str = r#"
import socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(65536)
            if not d:
                break
            self.request.sendall(d)
        self.request.sendall(b"bye")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", 9000), H).serve_forever()
"#;

#[test]
fn expose_forwards_http_and_tcp() {
    if !privileged("expose_forwards_http_and_tcp") {
        return;
    }
    let env = Env::new();
    let id = env.ok(&["create", "--template", "host"]).trim().to_string();
    // An HTTP server over /etc, and a TCP echo server, in the background.
    env.ok(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "cd /etc && (python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 &) && \
         (python3 -c \"$0\" >/dev/null 2>&1 &)",
        ECHO,
    ]);

    // HTTP: the daemon URL is printed, and the local forwarder serves pages.
    let (mut web, printed, local) =
        env.forwarder(&["expose", &id, "8080", "--local", "127.0.0.1:0"]);
    assert!(
        printed.contains(&format!(
            "daemon URL: http://{}/v1/sandboxes/{id}/ports/8080/http/",
            env.addr
        )),
        "{printed}"
    );
    let want = std::fs::read("/etc/os-release").unwrap();
    let mut got = Vec::new();
    wait_for(20, "the HTTP server in the sandbox", || {
        got = tcp_roundtrip(&local, b"GET /os-release HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap_or_default();
        got.starts_with(b"HTTP/1.0 200")
    });
    assert!(got.ends_with(&want), "{}", String::from_utf8_lossy(&got));
    // Several clients at once.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let local = local.clone();
            std::thread::spawn(move || tcp_roundtrip(&local, b"GET /os-release HTTP/1.0\r\n\r\n"))
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert!(
            r.as_ref().is_ok_and(|b| b.starts_with(b"HTTP/1.0 200")),
            "{r:?}; the forwarder said: {}",
            web.stderr()
        );
    }

    // Raw TCP, half-close included.
    let (mut raw, printed, local) =
        env.forwarder(&["expose", &id, "9000", "--tcp", "--local", "127.0.0.1:0"]);
    assert!(printed.contains("(tcp)"), "{printed}");
    let mut got = Vec::new();
    wait_for(20, "the echo server in the sandbox", || {
        got = tcp_roundtrip(&local, b"ping").unwrap_or_default();
        !got.is_empty()
    });
    assert_eq!(got, b"pingbye", "{}", raw.stderr());
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut want = big.clone();
    want.extend_from_slice(b"bye");
    assert_eq!(tcp_roundtrip(&local, &big).unwrap(), want);

    // The local address is taken: a clear refusal.
    let o = env.run(&["expose", &id, "9000", "--local", &local]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--local"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["expose", &id, "--list", "--json"])).unwrap();
    let ports: Vec<u64> = list["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8080, 9000]);

    // Ctrl-C ends the forwarders; the exposures stay until --rm.
    for f in [&mut web, &mut raw] {
        signal(f.child.id(), nix::sys::signal::SIGINT);
        assert!(f.child.wait().unwrap().success(), "{}", f.stderr());
    }
    assert!(env.ok(&["expose", &id, "--list"]).contains("8080"));
    env.ok(&["expose", &id, "8080", "--rm"]);
    let o = env.run(&["expose", &id, "8080", "--rm"]);
    assert!(!o.status.success(), "removing twice");
    let l = env.ok(&["expose", &id, "--list"]);
    assert!(!l.contains("8080") && l.contains("9000"), "{l}");

    // Bad input.
    for bad in [
        &["expose", &id, "0"][..],
        &["expose", &id, "70000"],
        &["expose", &id, "abc"],
    ] {
        let o = env.run(bad);
        assert!(!o.status.success(), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid value"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = env.run(&["expose", "nope", "80", "--no-forward"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));
    env.ok(&["rm", &id]);
}
