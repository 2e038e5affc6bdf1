//! `run` stops on SIGTERM: this binary's own process receives the signal
//! (tokio's handler catches it), so it lives apart from other tests.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{guest_binary, privileged, state_dir, unix_call};
use hull_api::Limits;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly() {
    if !privileged("sigterm_shuts_down_cleanly") {
        return;
    }
    let dir = state_dir("hull-g");
    let sock = dir.path().join("hull.sock");
    let task = tokio::spawn(hull_server::run(hull_server::ServerConfig {
        state_dir: dir.path().join("state"),
        socket: sock.clone(),
        listen: None,
        guest_binary: guest_binary(),
        defaults: Limits::default(),
        snapshots: Default::default(),
        max_upload_bytes: 1 << 20,
        config_file: None,
        network: Default::default(),
    }));
    // Handlers are installed before the socket answers.
    let mut up = false;
    for _ in 0..500 {
        if sock.exists() && unix_call(&sock, "GET", "/v1/health", "").await.0 == StatusCode::OK {
            up = true;
            break;
        }
        assert!(!task.is_finished(), "{:?}", task.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "the daemon answers");
    nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("SIGTERM stops the daemon")
        .unwrap()
        .expect("a clean shutdown");
    assert!(!sock.exists(), "the socket file is removed");
}
