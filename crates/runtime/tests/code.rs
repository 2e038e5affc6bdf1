//! Privileged tests of code-interpreter contexts over real containers (the
//! `host` template, which shows the host's python3 and ipykernel — install
//! `python3-ipykernel`): state, outputs by MIME type, errors, isolation,
//! timeouts that keep the context, restart, a killed kernel.

mod common;

use std::time::{Duration, Instant};

use common::Kit;
use hull_api::{CodeContextRequest, CodeRunRequest, CodeRunResult, ErrorKind};

/// Whether to run: root, and the kernel installed (missing under
/// `HULL_TEST_PRIVILEGED=1` is a failure).
fn ready(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import ipykernel"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1") {
            panic!(
                "{test}: python3-ipykernel is not installed (apt-get install python3-ipykernel)"
            );
        }
        eprintln!("SKIP {test}: python3-ipykernel is not installed");
        return false;
    }
    true
}

async fn create(kit: &Kit, id: &str, name: &str) {
    kit.rt
        .code_context_create(
            id,
            CodeContextRequest {
                context: name.into(),
                language: None,
            },
        )
        .await
        .expect("create context");
}

async fn run_t(kit: &Kit, id: &str, ctx: &str, code: &str, timeout_ms: u64) -> CodeRunResult {
    let req = CodeRunRequest {
        code: code.into(),
        timeout_ms: Some(timeout_ms),
        context: None,
    };
    kit.rt.code_run(id, ctx, req).await.expect("code_run")
}

async fn run(kit: &Kit, id: &str, ctx: &str, code: &str) -> CodeRunResult {
    run_t(kit, id, ctx, code, 30_000).await
}

fn plain(r: &CodeRunResult) -> Vec<&str> {
    r.results
        .iter()
        .filter_map(|b| b.get("text/plain").and_then(|v| v.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_outputs_errors_and_isolation() {
    if !ready("state_outputs_errors_and_isolation") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    create(&kit, id, "a").await;
    let r = run(&kit, id, "a", "x = 41").await;
    assert!(r.results.is_empty() && r.error.is_none(), "{r:?}");
    let r = run(&kit, id, "a", "x + 1").await;
    assert_eq!(plain(&r), ["42"], "{r:?}");
    assert!(r.execution_count.is_some());
    let r = run(
        &kit,
        id,
        "a",
        "print('hi'); import sys; print('oops', file=sys.stderr)",
    )
    .await;
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("hi\n", "oops\n"));
    let r = run(&kit, id, "a", "1/0").await;
    let e = r.error.expect("an error");
    assert_eq!(e.name, "ZeroDivisionError");
    assert!(e.value.contains("division by zero"), "{e:?}");
    assert!(!e.traceback.is_empty());
    // Rich outputs.
    let r = run(
        &kit,
        id,
        "a",
        "class H:\n    def _repr_html_(self):\n        return '<b>hi</b>'\nH()",
    )
    .await;
    assert_eq!(r.results[0]["text/html"], "<b>hi</b>", "{r:?}");
    let png = "89504e470d0a1a0a0000000d4948445200000001000000010806000000\
               1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082";
    let r = run(
        &kit,
        id,
        "a",
        &format!(
            "from IPython.display import Image, display\ndisplay(Image(data=bytes.fromhex('{png}')))"
        ),
    )
    .await;
    let img = r.results[0]["image/png"].as_str().expect("png");
    assert!(img.starts_with("iVBORw0KGgo"), "{img}");
    let r = run(
        &kit,
        id,
        "a",
        "from IPython.display import JSON; JSON({'a': 1})",
    )
    .await;
    assert_eq!(r.results[0]["application/json"]["a"], 1, "{r:?}");
    // A second context is independent.
    create(&kit, id, "b").await;
    let r = run(&kit, id, "b", "x").await;
    assert_eq!(r.error.expect("NameError").name, "NameError");
    let list = kit.rt.code_contexts(id).await.unwrap();
    let names: Vec<_> = list.contexts.iter().map(|c| c.context.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    // Bad names, unknown contexts, duplicates.
    let bad = kit
        .rt
        .code_run(id, "no/such", CodeRunRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad.kind, ErrorKind::InvalidArgument);
    let unknown = kit
        .rt
        .code_run(id, "nope", CodeRunRequest::default())
        .await
        .unwrap_err();
    assert_eq!(unknown.kind, ErrorKind::NotFound, "{unknown:?}");
    let dup = kit
        .rt
        .code_context_create(
            id,
            CodeContextRequest {
                context: "a".into(),
                language: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(dup.kind, ErrorKind::Conflict);
    // The shortcut creates `default` on first use.
    let r = kit
        .rt
        .code_run_default(
            id,
            CodeRunRequest {
                code: "2 * 21".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(plain(&r), ["42"]);
    // Warm round trip of `1+1`.
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let r = run(&kit, id, "a", "1+1").await;
        times.push(t.elapsed());
        assert_eq!(plain(&r), ["2"]);
    }
    times.sort();
    eprintln!("1+1 round trip p50 {:?}", times[times.len() / 2]);
    kit.rt.code_context_delete(id, "b").await.unwrap();
    let gone = kit.rt.code_run(id, "b", CodeRunRequest::default()).await;
    assert_eq!(gone.unwrap_err().kind, ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_restart_and_killed_kernel() {
    if !ready("timeout_restart_and_killed_kernel") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    create(&kit, id, "k").await;
    run(&kit, id, "k", "y = 5").await;
    let t = Instant::now();
    let r = run_t(
        &kit,
        id,
        "k",
        "print('before', flush=True); import time; time.sleep(30)",
        1000,
    )
    .await;
    assert!(r.timed_out, "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(r.stdout, "before\n");
    let r = run(&kit, id, "k", "y").await;
    assert_eq!(plain(&r), ["5"], "the context keeps its state: {r:?}");
    // Restart clears state.
    kit.rt.code_restart(id, "k").await.unwrap();
    let r = run(&kit, id, "k", "y").await;
    assert_eq!(r.error.expect("NameError").name, "NameError");
    // A killed kernel: a clear error now and on the next run; restart works.
    let e = kit
        .rt
        .code_run(
            id,
            "k",
            CodeRunRequest {
                code: "import os; os.kill(os.getpid(), 9)".into(),
                timeout_ms: Some(20_000),
                context: None,
            },
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("died"), "{e:?}");
    let e = kit
        .rt
        .code_run(
            id,
            "k",
            CodeRunRequest {
                code: "1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("restart"), "{e:?}");
    let list = kit.rt.code_contexts(id).await.unwrap();
    assert!(!list.contexts[0].alive);
    kit.rt.code_restart(id, "k").await.unwrap();
    let r = run(&kit, id, "k", "1+2").await;
    assert_eq!(plain(&r), ["3"]);
}
