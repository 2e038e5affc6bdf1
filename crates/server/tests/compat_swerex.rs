//! SWE-ReX compatibility with SWE-ReX's own client: `RemoteRuntime` from
//! PyPI `swe-rex` (in a venv made on first use under /var/cache/hull) drives
//! a sandbox through a daemon on TCP (`tests/python/swerex_client.py`):
//! sessions, timeouts, `check`, interrupts, interactive programs, execute,
//! files, uploads (file and zip), path traversal, bad tokens, unknown
//! sandboxes and sessions. Hostile raw requests are sent from Rust.
//! `swerex_bench` (ignored by default) compares `run_in_session` of `true`
//! against SWE-ReX's own server, `swerex-remote`, in the same run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use common::{guest_binary, privileged, send, state_dir, unix_call};
use hull_api::Limits;
use hull_server::{ServeError, ServerConfig};
use serde_json::Value;

const VENV: &str = "/var/cache/hull/venv-swerex";
const PINS: [&str; 2] = ["swe-rex==1.4.0", "aiohttp==3.14.5"];

/// The venv's python with `swerex` 1.4.0 (and `aiohttp`, which its
/// RemoteRuntime imports without declaring it), or `None` after a SKIP
/// message; under `HULL_TEST_PRIVILEGED=1` a missing client fails.
fn python_swerex(test: &str) -> Option<PathBuf> {
    let python = Path::new(VENV).join("bin/python");
    let have = |p: &Path| {
        Command::new(p)
            .args([
                "-c",
                "import aiohttp, swerex.runtime.remote, importlib.metadata as m; print(m.version('swe-rex'))",
            ])
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "1.4.0")
    };
    if !have(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv", "--clear", VENV])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(Path::new(VENV).join("bin/pip"))
                .args(["install", "-q"])
                .args(PINS)
                .status()
                .is_ok_and(|s| s.success());
        if !made || !have(&python) {
            let why =
                format!("could not install {PINS:?} into {VENV} (python3-venv and PyPI needed)");
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

struct Daemon {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    sock: PathBuf,
    addr: std::net::SocketAddr,
    token: String,
}

impl Daemon {
    async fn start(state: &Path, sock: &Path) -> Daemon {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let cfg = ServerConfig {
            state_dir: state.to_path_buf(),
            socket: sock.to_path_buf(),
            listen: Some(addr),
            guest_binary: guest_binary(),
            defaults: Limits::default(),
            snapshots: Default::default(),
            max_upload_bytes: 8 << 20,
            config_file: None,
            network: Default::default(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(hull_server::serve(cfg, async {
            let _ = rx.await;
        }));
        for _ in 0..500 {
            if let Ok(s) = tokio::net::UnixStream::connect(sock).await
                && send(s, "GET", "/v1/health", &[], Vec::new()).await.0 == StatusCode::OK
            {
                let token = std::fs::read_to_string(state.join("token"))
                    .unwrap()
                    .trim()
                    .to_string();
                return Daemon {
                    stop: tx,
                    task,
                    sock: sock.to_path_buf(),
                    addr,
                    token,
                };
            }
            assert!(!task.is_finished(), "the daemon exited: {:?}", task.await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the daemon did not answer on {}", sock.display());
    }

    /// A running sandbox of the `host` template (it has bash and python3).
    async fn sandbox(&self) -> String {
        let (s, b) = unix_call(
            &self.sock,
            "POST",
            "/v1/sandboxes",
            r#"{"template":"host"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        serde_json::from_slice::<Value>(&b).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// One request over TCP.
    async fn tcp(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (st, b) = send(s, method, uri, headers, body).await;
        let v = serde_json::from_slice(&b)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&b)));
        (st, v)
    }

    async fn finish(self) {
        let (s, _) = unix_call(&self.sock, "POST", "/v1/system/reset", "").await;
        assert_eq!(s, StatusCode::OK);
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// The status of a request whose head alone is sent (its body never is).
async fn raw_status(addr: std::net::SocketAddr, head: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swerex_remote_runtime_drives_a_sandbox() {
    if !privileged("swerex_remote_runtime_drives_a_sandbox") {
        return;
    }
    let Some(python) = python_swerex("swerex_remote_runtime_drives_a_sandbox") else {
        return;
    };
    let dir = state_dir("hull-swerex");
    let d = Daemon::start(&dir.path().join("state"), &dir.path().join("run/hull.sock")).await;
    let id = d.sandbox().await;
    // A host directory the sandbox must not reach.
    let host_dir = dir.path().join("host");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("secret"), "host secret").unwrap();

    let url = format!("http://{}/v1/sandboxes/{id}/swerex", d.addr);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/swerex_client.py");
    let (py, url2, tok, hd) = (
        python.clone(),
        url.clone(),
        d.token.clone(),
        host_dir.clone(),
    );
    let o = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args(["check", &url2, &tok])
            .arg(&hd)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim().ends_with("ok"),
        "swerex_client.py check: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let mut left: Vec<_> = std::fs::read_dir(&host_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["secret"], "nothing was written to the host");

    // Hostile raw requests.
    let p = format!("/v1/sandboxes/{id}/swerex");
    let key = d.token.clone();
    let auth = [
        ("x-api-key", key.as_str()),
        ("content-type", "application/json"),
    ];
    let (s, v) = d
        .tcp(
            "POST",
            &format!("{p}/run_in_session"),
            &auth,
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["kind"], "invalid_argument", "{v}");
    let (s, v) = d
        .tcp(
            "POST",
            &format!("{p}/run_in_session"),
            &auth,
            br#"{"command":"true","action_type":"rm -rf"}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = d
        .tcp(
            "POST",
            &format!("{p}/run_in_session"),
            &auth,
            br#"{"command":"true","check":"sometimes"}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = d
        .tcp(
            "POST",
            &format!("{p}/run_in_session"),
            &auth,
            br#"{"command":"true","timeout":-1}"#.to_vec(),
        )
        .await;
    assert_eq!(s.as_u16(), 511, "{v}");
    assert_eq!(
        v["swerexception"]["class_path"], "builtins.ValueError",
        "{v}"
    );
    let (s, v) = d
        .tcp(
            "POST",
            &format!("{p}/run_in_session"),
            &auth,
            br#"{"action_type":"bash_interrupt","n_retry":100000}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // Oversize bodies are refused from their declared length.
    let head = |path: &str, ct: &str, len: u64| {
        format!(
            "POST {p}/{path} HTTP/1.1\r\nhost: hull\r\nx-api-key: {key}\r\ncontent-type: {ct}\r\ncontent-length: {len}\r\n\r\n"
        )
    };
    let status = raw_status(d.addr, &head("write_file", "application/json", 17 << 20)).await;
    assert_eq!(status, 413, "a 17 MiB JSON body");
    let status = raw_status(
        d.addr,
        &head("upload", "multipart/form-data; boundary=XyZ", 9 << 20),
    )
    .await;
    assert_eq!(status, 400, "an upload over the daemon's 8 MiB limit");
    // The bearer token works too; the API's routes still want the bearer form.
    let bearer = format!("Bearer {key}");
    let (s, v) = d
        .tcp(
            "GET",
            &format!("{p}/is_alive"),
            &[("authorization", bearer.as_str())],
            Vec::new(),
        )
        .await;
    assert_eq!(
        (s, &v["is_alive"]),
        (StatusCode::OK, &Value::Bool(true)),
        "{v}"
    );
    let (s, _) = d
        .tcp(
            "GET",
            &format!("/v1/sandboxes/{id}"),
            &[("x-api-key", key.as_str())],
            Vec::new(),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "X-API-Key opens only the SWE-ReX routes"
    );
    // A paused sandbox is not alive, and refuses calls with 409.
    let (s, _) = unix_call(&d.sock, "POST", &format!("/v1/sandboxes/{id}/pause"), "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = d
        .tcp("GET", &format!("{p}/is_alive"), &auth, Vec::new())
        .await;
    assert_eq!(
        (s, &v["is_alive"]),
        (StatusCode::OK, &Value::Bool(false)),
        "{v}"
    );
    let (s, v) = d
        .tcp(
            "POST",
            &format!("{p}/execute"),
            &auth,
            br#"{"command":["true"]}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("paused"), "{v}");

    d.finish().await;
}

/// `run_in_session` of `true`: hull's routes and SWE-ReX's own
/// `swerex-remote` (from the same venv, on this host), same client, same
/// run. Prints p50/p90; asserts nothing about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn swerex_bench() {
    if !privileged("swerex_bench") {
        return;
    }
    let Some(python) = python_swerex("swerex_bench") else {
        return;
    };
    let n: usize = std::env::var("HULL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = state_dir("hull-swerex-bench");
    let d = Daemon::start(&dir.path().join("state"), &dir.path().join("run/hull.sock")).await;
    let id = d.sandbox().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/swerex_client.py");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut peer = Command::new(Path::new(VENV).join("bin/swerex-remote"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--auth-token",
            "bench",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("swerex-remote starts");
    let run = |url: String, token: String| {
        let (py, script) = (python.clone(), script.clone());
        tokio::task::spawn_blocking(move || {
            let o = Command::new(py)
                .arg(script)
                .args(["bench", &url, &token, &n.to_string()])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        })
    };
    let hull = run(
        format!("http://{}/v1/sandboxes/{id}/swerex", d.addr),
        d.token.clone(),
    )
    .await
    .unwrap();
    let theirs = run(format!("http://127.0.0.1:{port}"), "bench".into()).await;
    let _ = peer.kill();
    let _ = peer.wait();
    let theirs = theirs.unwrap();
    println!("SWE-ReX run_in_session `true`, RemoteRuntime client:");
    println!("  hull (/v1/sandboxes/ID/swerex)  {hull}");
    println!("  swerex-remote 1.4.0 (host)      {theirs}");
    d.finish().await;
}
