//! Privileged tests of exec over real containers: the buffered output
//! budget, long commands keeping their sandbox alive, and streams whose
//! client goes away.

mod common;

use std::time::Duration;

use common::Kit;
use hull_api::{CreateSandbox, ExecEvent, ExecRequest, Profile};
use hull_runtime::EXEC_OUTPUT_LIMIT;

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Events of a stream up to its last (`exit` or `error`).
async fn drain(mut s: hull_runtime::ExecStream) -> Vec<ExecEvent> {
    let mut events = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(30), s.events.recv())
        .await
        .expect("the stream ends in time")
    {
        let last = matches!(ev, ExecEvent::Exit(_) | ExecEvent::Error { .. });
        events.push(ev);
        if last {
            break;
        }
    }
    events
}

/// Output past the budget is cut at exactly the budget: the chunk that
/// crosses it is kept up to the limit, and nothing after it is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_output_keeps_an_exact_prefix() {
    if !common::privileged("buffered_output_keeps_an_exact_prefix") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("busybox").await;
    let before = EXEC_OUTPUT_LIMIT - 10;
    // 10 bytes short of the budget, then a 16-byte write that crosses it,
    // then a small one that would still fit in the room the dropped write
    // left (the pauses keep the three writes in separate chunks).
    let script = format!(
        "head -c {before} /dev/zero | tr '\\0' x; sleep 0.5; printf 0123456789ABCDEF; sleep 0.5; printf after"
    );
    let r = kit.rt.exec(&sb.id, sh(&script)).await.unwrap();
    assert!(r.truncated, "the result says it was cut");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(
        r.stdout.len(),
        EXEC_OUTPUT_LIMIT,
        "exactly the budget is kept"
    );
    assert!(r.stdout[..before].bytes().all(|b| b == b'x'));
    assert_eq!(&r.stdout[before..], "0123456789", "no gap, nothing after");
    // Output within the budget is not marked.
    let r = kit.rt.exec(&sb.id, sh("echo small")).await.unwrap();
    assert_eq!((r.stdout.as_str(), r.truncated), ("small\n", false));
    kit.rt.destroy(&sb.id).await.unwrap();
    kit.finish().await;
}

/// A command running longer than the idle timeout (or a session's TTL)
/// keeps its sandbox alive for as long as it runs, streamed or buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_commands_count_as_activity() {
    if !common::privileged("running_commands_count_as_activity") {
        return;
    }
    let kit = Kit::new().await;
    let idle = CreateSandbox {
        template: Some("busybox".into()),
        idle_timeout_seconds: Some(2),
        ..Default::default()
    };
    let session = CreateSandbox {
        template: Some("busybox".into()),
        profile: Some(Profile::Session),
        ttl_seconds: Some(2),
        ..Default::default()
    };
    for req in [idle, session] {
        let id = kit.rt.create(req).await.unwrap().id;
        let stream = kit.rt.exec_stream(&id, sh("sleep 5")).await.unwrap();
        let events = drain(stream).await;
        assert!(
            matches!(events.last(), Some(ExecEvent::Exit(r)) if r.exit_code == Some(0)),
            "{id}: {events:?}"
        );
        let r = kit.rt.exec(&id, sh("sleep 5; echo done")).await.unwrap();
        assert_eq!((r.stdout.as_str(), r.exit_code), ("done\n", Some(0)));
    }
    // Once nothing runs, the timeouts apply again (`list` is not activity).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !kit.rt.list(&Default::default()).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "idle sandboxes expire once their commands ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kit.finish().await;
}

/// Dropping a stream (the client went away) ends its command even when
/// the command prints nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_kills_its_silent_command() {
    if !common::privileged("a_dropped_stream_kills_its_silent_command") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("busybox").await;
    let mut stream = kit.rt.exec_stream(&sb.id, sh("sleep 1000")).await.unwrap();
    let Some(ExecEvent::Started { id, .. }) = stream.events.recv().await else {
        panic!("no started event");
    };
    let running =
        |list: &hull_api::ProcessList| list.processes.iter().any(|p| p.id == id && p.running);
    assert!(running(&kit.rt.processes(&sb.id).await.unwrap()));
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running(&kit.rt.processes(&sb.id).await.unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the command still runs after its stream was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kit.rt.destroy(&sb.id).await.unwrap();
    kit.finish().await;
}
