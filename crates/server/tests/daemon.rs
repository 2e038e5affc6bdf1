//! The daemon as `hull serve` runs it: a real unix socket (and TCP), the
//! token, one daemon per socket and per state directory, graceful shutdown
//! and re-adoption of running sandboxes by the next daemon.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use common::{guest_binary, privileged, send, state_dir, unix_call};
use hull_api::{ExecResult, Limits, Sandbox, SandboxState};
use hull_server::{ServeError, ServerConfig};

fn config(state: &Path, socket: PathBuf, listen: Option<std::net::SocketAddr>) -> ServerConfig {
    ServerConfig {
        state_dir: state.to_path_buf(),
        socket,
        listen,
        guest_binary: guest_binary(),
        defaults: Limits::default(),
        snapshots: Default::default(),
        max_upload_bytes: 1 << 20,
        config_file: None,
        network: Default::default(),
    }
}

/// A daemon running in this process until [`Daemon::stop`].
struct Daemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Daemon {
    async fn start(cfg: ServerConfig) -> Daemon {
        let sock = cfg.socket.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(hull_server::serve(cfg, async {
            let _ = rx.await;
        }));
        for _ in 0..500 {
            if let Ok(s) = tokio::net::UnixStream::connect(&sock).await {
                let (status, _) = send(s, "GET", "/v1/health", &[], Vec::new()).await;
                if status == StatusCode::OK {
                    return Daemon {
                        stop: Some(tx),
                        task,
                    };
                }
            }
            assert!(!task.is_finished(), "the daemon exited: {:?}", task.await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the daemon did not answer on {}", sock.display());
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("shutdown is prompt")
            .unwrap()
            .expect("a clean shutdown");
    }
}

/// Removes what a failed test left: its sandboxes, through a runtime of its
/// own on the state directory.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let dir = self.0.clone();
        let _ = std::thread::spawn(move || {
            let t = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            t.block_on(async {
                match hull_runtime::Runtime::open(hull_runtime::RuntimeConfig {
                    state_dir: dir.clone(),
                    guest_binary: guest_binary(),
                    defaults: Limits::default(),
                    snapshots: Default::default(),
                    network: Default::default(),
                })
                .await
                {
                    Ok(rt) => {
                        let _ = rt.system_reset().await;
                        rt.shutdown().await;
                    }
                    Err(e) => eprintln!("cleanup of {}: {e}", dir.display()),
                }
            });
        })
        .join();
    }
}

fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_refuses_a_second_daemon_and_readopts_after_restart() {
    if !privileged("serves_refuses_a_second_daemon_and_readopts_after_restart") {
        return;
    }
    let dir = state_dir("hull-d");
    let state = dir.path().join("state");
    let _cleanup = Cleanup(state.clone());
    let sock = dir.path().join("run/hull.sock");
    let addr = free_port();
    let daemon = Daemon::start(config(&state, sock.clone(), Some(addr))).await;

    // The socket: mode 0660 in a 0755 directory; the token: 0600.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sock), 0o660);
    assert_eq!(mode(sock.parent().unwrap()), 0o755);
    assert_eq!(mode(&state.join("token")), 0o600);
    let token = std::fs::read_to_string(state.join("token")).unwrap();

    // Health, version and info over the unix socket, without a token.
    for uri in ["/v1/health", "/v1/version", "/v1/info"] {
        let (s, b) = unix_call(&sock, "GET", uri, "").await;
        assert_eq!(s, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&b));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v.is_object(), "{uri}");
    }
    // TCP: the token is required except for health.
    let tcp = |auth: Option<String>, uri: &'static str| async move {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let h = auth.map(|a| ("authorization".to_string(), a));
        let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        send(s, "GET", uri, &headers, Vec::new()).await
    };
    assert_eq!(tcp(None, "/v1/health").await.0, StatusCode::OK);
    let (s, b) = tcp(None, "/v1/sandboxes").await;
    assert_eq!(
        (s, common::error_kind(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    assert_eq!(
        tcp(Some("Bearer nope".into()), "/v1/info").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        tcp(Some(token.clone()), "/v1/info").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        tcp(Some(format!("Bearer {token}")), "/v1/info").await.0,
        StatusCode::OK
    );

    // A second daemon on the same socket, or on the same state directory.
    let other = state_dir("hull-d2");
    let e = hull_server::serve(config(other.path(), sock.clone(), None), async {})
        .await
        .unwrap_err();
    assert!(matches!(e, ServeError::SocketBusy { .. }), "{e}");
    assert!(
        e.to_string().contains("another daemon is serving on"),
        "{e}"
    );
    let e = hull_server::serve(config(&state, other.path().join("x.sock"), None), async {})
        .await
        .unwrap_err();
    assert!(matches!(e, ServeError::StateBusy { .. }), "{e}");
    assert!(!other.path().join("x.sock").exists());

    // A sandbox made through the socket outlives the daemon.
    let (s, b) = unix_call(
        &sock,
        "POST",
        "/v1/sandboxes",
        r#"{"template":"busybox","name":"keep"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let sb: Sandbox = serde_json::from_slice(&b).unwrap();
    let exec = format!("/v1/sandboxes/{}/exec", sb.id);
    let (s, b) = unix_call(
        &sock,
        "POST",
        &exec,
        r#"{"cmd":["sh","-c","echo $$ > /tmp/pid; echo hi"]}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<ExecResult>(&b).unwrap().stdout,
        "hi\n"
    );
    daemon.stop().await;
    assert!(!sock.exists(), "the socket file is removed at shutdown");

    // The next daemon finds it running and can use it.
    let daemon = Daemon::start(config(&state, sock.clone(), None)).await;
    assert_eq!(
        std::fs::read_to_string(state.join("token")).unwrap(),
        token,
        "the token is kept across restarts"
    );
    let (s, b) = unix_call(&sock, "GET", "/v1/sandboxes/keep", "").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let again: Sandbox = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        (again.id.as_str(), again.state),
        (sb.id.as_str(), SandboxState::Running)
    );
    let (s, b) = unix_call(&sock, "POST", &exec, r#"{"cmd":["cat","/tmp/pid"]}"#).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(
        !serde_json::from_slice::<ExecResult>(&b)
            .unwrap()
            .stdout
            .is_empty()
    );
    let (s, _) = unix_call(&sock, "DELETE", &format!("/v1/sandboxes/{}", sb.id), "").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, b) = unix_call(&sock, "GET", "/v1/info", "").await;
    let instance = serde_json::from_slice::<serde_json::Value>(&b).unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let parent = format!("hull-{instance}");
    let cgroup_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|c| c.path().join(&parent))
            .chain([Path::new("/sys/fs/cgroup").join(&parent)])
            .filter(|p| p.is_dir())
            .collect()
    };
    assert!(
        !cgroup_dirs().is_empty(),
        "a running daemon has its parent cgroup"
    );
    daemon.stop().await;
    // A daemon that stops with no sandbox left leaves nothing host-wide.
    assert_eq!(
        cgroup_dirs(),
        Vec::<PathBuf>::new(),
        "cgroup parent left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(state.to_str().unwrap()),
        "mounts left under {}",
        state.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_are_clear() {
    if !privileged("startup_errors_are_clear") {
        return;
    }
    let dir = state_dir("hull-d");
    let mut cfg = config(&dir.path().join("state"), dir.path().join("s.sock"), None);
    cfg.guest_binary = dir.path().join("no-guest");
    let e = hull_server::serve(cfg, async {}).await.unwrap_err();
    assert!(matches!(e, ServeError::GuestMissing { .. }), "{e}");
    // A regular file where the socket goes is left alone.
    let cfg = config(&dir.path().join("state"), dir.path().join("file"), None);
    std::fs::write(&cfg.socket, "mine").unwrap();
    let e = hull_server::serve(cfg.clone(), async {}).await.unwrap_err();
    assert!(matches!(e, ServeError::NotASocket { .. }), "{e}");
    assert_eq!(std::fs::read_to_string(&cfg.socket).unwrap(), "mine");
    // A port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(
        &dir.path().join("state"),
        dir.path().join("t.sock"),
        Some(busy.local_addr().unwrap()),
    );
    let e = hull_server::serve(cfg.clone(), async {}).await.unwrap_err();
    assert!(matches!(e, ServeError::Listen { .. }), "{e}");
    assert!(!cfg.socket.exists(), "a failed start removes its socket");
    // A corrupt token file.
    std::fs::write(dir.path().join("state/token"), "not hex").unwrap();
    let cfg = config(&dir.path().join("state"), dir.path().join("u.sock"), None);
    let e = hull_server::serve(cfg, async {}).await.unwrap_err();
    assert!(matches!(e, ServeError::BadToken { .. }), "{e}");
}
