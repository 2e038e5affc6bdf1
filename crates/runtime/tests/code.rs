//! Privileged tests of code-interpreter contexts over real containers (the
//! `host` template, which shows the host's python3 and ipykernel — install
//! `python3-ipykernel`): state, outputs by MIME type, errors, isolation,
//! timeouts that keep the context, restart, a killed kernel; streamed runs
//! and their bounds, `input()`, a client that goes away mid-run.

mod common;

use std::time::{Duration, Instant};

use common::Kit;
use hull_api::{CodeContextRequest, CodeEvent, CodeRunRequest, CodeRunResult, ErrorKind};

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

/// Every event of a streamed run, up to its `end` (or `error`).
async fn events(mut rx: tokio::sync::mpsc::Receiver<CodeEvent>) -> Vec<CodeEvent> {
    let mut v = Vec::new();
    while let Some(ev) = rx.recv().await {
        let last = matches!(ev, CodeEvent::End { .. } | CodeEvent::Error { .. });
        v.push(ev);
        if last {
            break;
        }
    }
    v
}

fn req(code: &str, timeout_ms: u64) -> CodeRunRequest {
    CodeRunRequest {
        code: code.into(),
        timeout_ms: Some(timeout_ms),
        context: None,
    }
}

fn stdout_of(evs: &[CodeEvent]) -> String {
    evs.iter()
        .filter_map(|e| match e {
            CodeEvent::Stdout { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Streamed runs: outputs arrive while the code still runs (it waits for
/// a file the test writes only after the first output came), in order and
/// by kind; errors, displays, the shortcut; hostile input: unknown and bad
/// context names, a bad timeout, never-ending and huge output (bounded),
/// `input()` (an error, not a hang), and a client that goes away mid-run
/// (the code is interrupted and the context keeps its state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_bounds_stdin_and_disconnect() {
    if !ready("streaming_bounds_stdin_and_disconnect") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    create(&kit, id, "s").await;
    run(&kit, id, "s", "z = 7").await;

    // Progressive: the second line is printed only after the test has seen
    // the first one and created the file the code waits for.
    let code = "import os, time\nprint('first', flush=True)\n\
                for _ in range(400):\n    if os.path.exists('/tmp/go'): break\n    time.sleep(0.05)\n\
                print('second')\n6 * 7";
    let mut rx = kit
        .rt
        .code_run_stream(id, "s", req(code, 60_000))
        .await
        .expect("stream");
    let first = rx.recv().await.expect("a first event");
    assert_eq!(
        first,
        CodeEvent::Stdout {
            text: "first\n".into()
        }
    );
    let touch = hull_api::ExecRequest {
        cmd: vec!["touch".into(), "/tmp/go".into()],
        ..Default::default()
    };
    assert_eq!(kit.rt.exec(id, touch).await.unwrap().exit_code, Some(0));
    let rest = events(rx).await;
    assert_eq!(stdout_of(&rest), "second\n", "{rest:?}");
    let n = rest.len();
    assert!(
        matches!(&rest[n - 2], CodeEvent::Result { data, execution_count: Some(_) } if data["text/plain"] == "42"),
        "{rest:?}"
    );
    assert!(
        matches!(
            rest[n - 1],
            CodeEvent::End {
                timed_out: false,
                truncated: false,
                ..
            }
        ),
        "{rest:?}"
    );

    // Errors and displays, by kind.
    let evs = events(
        kit.rt
            .code_run_stream(
                id,
                "s",
                req(
                    "from IPython.display import HTML, display\ndisplay(HTML('<i>x</i>'))\n1/0",
                    30_000,
                ),
            )
            .await
            .unwrap(),
    )
    .await;
    assert!(
        matches!(&evs[0], CodeEvent::Display { data } if data["text/html"] == "<i>x</i>"),
        "{evs:?}"
    );
    assert!(
        matches!(&evs[1], CodeEvent::Exception(e) if e.name == "ZeroDivisionError" && !e.traceback.is_empty()),
        "{evs:?}"
    );
    assert!(matches!(evs[2], CodeEvent::End { .. }), "{evs:?}");

    // The shortcut creates its context on first use.
    let evs = events(
        kit.rt
            .code_run_stream_default(id, req("print('via default')", 30_000))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stdout_of(&evs), "via default\n");

    // Hostile requests are refused before anything runs.
    for (ctx, code, t, kind) in [
        ("nope", "1", 1000, ErrorKind::NotFound),
        ("no/such", "1", 1000, ErrorKind::InvalidArgument),
        ("", "1", 1000, ErrorKind::InvalidArgument),
        ("s", "1", 0, ErrorKind::InvalidArgument),
    ] {
        let e = kit
            .rt
            .code_run_stream(id, ctx, req(code, t))
            .await
            .expect_err("refused");
        assert_eq!(e.kind, kind, "{ctx:?}: {e:?}");
    }
    let huge_code = "x".repeat(hull_proto::MAX_CODE_INPUT + 1);
    let e = kit
        .rt
        .code_run_stream(id, "s", req(&huge_code, 1000))
        .await
        .expect_err("too big");
    assert_eq!(e.kind, ErrorKind::InvalidArgument);

    // input(): a clear error at once, not a run that hangs until its timeout.
    let r = run(&kit, id, "s", "input('name? ')").await;
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.error.expect("an error").name, "StdinNotImplementedError");

    // One huge write: capped, in chunks that fit the protocol's frames.
    let evs = events(
        kit.rt
            .code_run_stream(id, "s", req("print('x' * (20 << 20))", 120_000))
            .await
            .unwrap(),
    )
    .await;
    let total = stdout_of(&evs).len();
    assert_eq!(
        total,
        hull_proto::MAX_CODE_STREAM_OUTPUT,
        "capped at the budget"
    );
    assert!(evs.iter().all(|e| match e {
        CodeEvent::Stdout { text } => text.len() <= hull_proto::CODE_STREAM_CHUNK,
        _ => true,
    }));
    assert!(
        matches!(
            evs.last(),
            Some(CodeEvent::End {
                truncated: true,
                timed_out: false,
                ..
            })
        ),
        "{:?}",
        evs.last()
    );
    // The same, buffered: capped at the reply's budget.
    let r = run_t(&kit, id, "s", "print('y' * (4 << 20))", 120_000).await;
    assert!(
        r.truncated && r.stdout.len() <= hull_proto::MAX_CODE_OUTPUT,
        "{}",
        r.stdout.len()
    );

    // Never-ending output: bounded by the budget and ended by the timeout.
    // (Paced: a loop that prints with no pause at all makes ipykernel
    // itself buffer hundreds of MiB between its flushes, which can get the
    // kernel OOM-killed before anything reaches the guest.)
    let evs = events(
        kit.rt
            .code_run_stream(
                id,
                "s",
                req(
                    "import time\nwhile True:\n    print('y' * 100000)\n    time.sleep(0.001)",
                    3000,
                ),
            )
            .await
            .unwrap(),
    )
    .await;
    assert!(stdout_of(&evs).len() <= hull_proto::MAX_CODE_STREAM_OUTPUT);
    assert!(
        matches!(
            evs.last(),
            Some(CodeEvent::End {
                timed_out: true,
                ..
            })
        ),
        "{:?}",
        evs.last()
    );
    assert!(
        !evs.iter().any(|e| matches!(e, CodeEvent::Exception(_))),
        "the interrupt is the timeout, not the code's error"
    );

    // A client that goes away: the code is interrupted, the context stays.
    let rx = kit
        .rt
        .code_run_stream(
            id,
            "s",
            req("import time\nwhile True:\n    time.sleep(0.1)", 600_000),
        )
        .await
        .unwrap();
    drop(rx);
    let r = run(&kit, id, "s", "z").await;
    assert_eq!(plain(&r), ["7"], "{r:?}");
}
