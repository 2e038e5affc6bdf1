//! Privileged tests of shell sessions over real containers (the `host`
//! template, which has bash): persistence, exit codes, interrupts that keep
//! the session, expect-driven input, hostile commands (fake markers, prompt
//! changes, `exec`, `exit`, huge and binary output) and session bookkeeping.

mod common;

use std::time::{Duration, Instant};

use common::Kit;
use hull_api::{ErrorKind, ShellOpenRequest, ShellRunRequest, ShellRunResult, ShellSendRequest};

fn open_req(name: &str) -> ShellOpenRequest {
    ShellOpenRequest {
        session: name.into(),
        ..Default::default()
    }
}

async fn open(kit: &Kit, id: &str, name: &str) {
    kit.rt.shell_open(id, open_req(name)).await.expect("open");
}

async fn run(kit: &Kit, id: &str, s: &str, cmd: &str) -> ShellRunResult {
    run_with(kit, id, s, cmd, ShellRunRequest::default()).await
}

async fn run_with(kit: &Kit, id: &str, s: &str, cmd: &str, req: ShellRunRequest) -> ShellRunResult {
    let req = ShellRunRequest {
        command: cmd.into(),
        timeout_ms: req.timeout_ms.or(Some(30_000)),
        ..req
    };
    kit.rt.shell_run(id, s, req).await.expect("shell_run")
}

fn send(input: &str, expect: &str) -> ShellSendRequest {
    ShellSendRequest {
        input: input.into(),
        expect: Some(expect.into()),
        timeout_ms: Some(10_000),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_persists_and_exit_codes_are_reported() {
    if !common::privileged("state_persists_and_exit_codes_are_reported") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    open(&kit, id, "main").await;
    let r = run(
        &kit,
        id,
        "main",
        "cd /tmp && export FOO=bar && greet() { echo \"hi $1\"; }",
    )
    .await;
    assert_eq!((r.exit_code, r.cwd.as_str()), (Some(0), "/tmp"), "{r:?}");
    let r = run(&kit, id, "main", "pwd; echo $FOO; greet you").await;
    assert_eq!(r.output, "/tmp\nbar\nhi you\n");
    assert!(!r.timed_out && !r.truncated && !r.session_ended);
    // Exit codes, and `$?` carried into the next call.
    assert_eq!(run(&kit, id, "main", "false").await.exit_code, Some(1));
    assert_eq!(run(&kit, id, "main", "echo $?").await.output, "1\n");
    assert_eq!(run(&kit, id, "main", "(exit 7)").await.exit_code, Some(7));
    // Several lines, a syntax error, a background job that persists.
    let r = run(&kit, id, "main", "for i in 1 2; do\n echo $i\ndone").await;
    assert_eq!(r.output, "1\n2\n");
    assert_eq!(run(&kit, id, "main", "if then").await.exit_code, Some(2));
    run(&kit, id, "main", "sleep 60 &").await;
    let r = run(&kit, id, "main", "jobs | wc -l").await;
    assert_eq!(r.output.trim(), "1");
    // A fake marker, a closed stdout and prompt changes fool nothing.
    let r = run(
        &kit,
        id,
        "main",
        "printf 'hull0000 0 /fake\\0'; echo hull0000 0 /fake",
    )
    .await;
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.cwd, "/tmp");
    assert!(r.output.contains("hull0000 0 /fake\n"));
    let r = run(
        &kit,
        id,
        "main",
        "PS1='$ '; PS0='zero'; PROMPT_COMMAND='echo prompt'",
    )
    .await;
    assert_eq!(r.exit_code, Some(0));
    for _ in 0..3 {
        assert_eq!(run(&kit, id, "main", "echo ok").await.output, "ok\n");
    }
    // Closed stdout: the end is still seen, and the session keeps the
    // descriptors its commands set up, as a terminal shell does.
    let r = run(&kit, id, "main", "exec 1>&-; echo gone; cd /").await;
    assert_eq!((r.exit_code, r.cwd.as_str()), (Some(0), "/"), "{r:?}");
    assert!(r.output.contains("write error"), "{r:?}");
    let r = run(&kit, id, "main", "exec 1>&2; echo back").await;
    assert_eq!(r.output, "back\n");
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_interrupt_the_command_and_keep_the_session() {
    if !common::privileged("timeouts_interrupt_the_command_and_keep_the_session") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    open(&kit, id, "s").await;
    let t = Instant::now();
    let r = run_with(
        &kit,
        id,
        "s",
        "cd /var && X=kept && echo start && sleep 60; echo after",
        ShellRunRequest {
            timeout_ms: Some(1000),
            ..Default::default()
        },
    )
    .await;
    assert!(r.timed_out && !r.idle_timed_out, "{r:?}");
    assert!(r.output.starts_with("start\n"), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let r = run(&kit, id, "s", "pwd; echo $X").await;
    assert_eq!((r.output.as_str(), r.exit_code), ("/var\nkept\n", Some(0)));
    // A command that ignores SIGINT is killed.
    let r = run_with(
        &kit,
        id,
        "s",
        "trap '' INT; sleep 60",
        ShellRunRequest {
            timeout_ms: Some(500),
            ..Default::default()
        },
    )
    .await;
    assert!(r.timed_out, "{r:?}");
    // A loop of builtins runs in the shell itself: it is interrupted too.
    let r = run_with(
        &kit,
        id,
        "s",
        "trap - INT; while :; do :; done",
        ShellRunRequest {
            timeout_ms: Some(500),
            ..Default::default()
        },
    )
    .await;
    assert!(r.timed_out, "{r:?}");
    assert_eq!(run(&kit, id, "s", "echo alive").await.output, "alive\n");
    // Idle timeout: output keeps it alive until it stops.
    let t = Instant::now();
    let r = run_with(
        &kit,
        id,
        "s",
        "for i in 1 2 3 4; do echo $i; sleep 0.3; done; sleep 60",
        ShellRunRequest {
            idle_timeout_ms: Some(800),
            timeout_ms: Some(20_000),
            ..Default::default()
        },
    )
    .await;
    assert!(r.idle_timed_out && !r.timed_out, "{r:?}");
    // (bash adds a newline after a job that SIGINT ended)
    assert_eq!(r.output.trim_end(), "1\n2\n3\n4");
    assert!(t.elapsed() < Duration::from_secs(6));
    // Never-ending output: bounded, marked, and the session goes on.
    let r = run_with(
        &kit,
        id,
        "s",
        "yes",
        ShellRunRequest {
            timeout_ms: Some(1000),
            max_output: Some(10_000),
            ..Default::default()
        },
    )
    .await;
    assert!(
        r.timed_out && r.truncated,
        "{:?}",
        (r.timed_out, r.truncated)
    );
    assert!(r.output.len() < 11_000 && r.output.contains("[hull: output truncated"));
    // A command reading stdin ends by its timeout.
    let r = run_with(
        &kit,
        id,
        "s",
        "cat",
        ShellRunRequest {
            timeout_ms: Some(500),
            ..Default::default()
        },
    )
    .await;
    assert!(r.timed_out);
    assert_eq!(run(&kit, id, "s", "echo ok").await.output, "ok\n");
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_programs_are_driven_by_expect() {
    if !common::privileged("interactive_programs_are_driven_by_expect") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    open(&kit, id, "i").await;
    let r = kit
        .rt
        .shell_send(
            id,
            "i",
            send("read -p 'name? ' x; echo \"hello $x\"\n", r"name\? $"),
        )
        .await
        .unwrap();
    assert!(r.matched, "{r:?}");
    let r = kit
        .rt
        .shell_send(id, "i", send("bob\n", "hello bob\n"))
        .await
        .unwrap();
    assert!(r.matched && !r.timed_out, "{r:?}");
    // python3 -i: a prompt, an expression, its value.
    let r = kit
        .rt
        .shell_send(id, "i", send("python3 -q -i\n", ">>> $"))
        .await
        .unwrap();
    assert!(r.matched, "{r:?}");
    // A run is refused while the program holds the terminal.
    let e = kit
        .rt
        .shell_run(
            id,
            "i",
            ShellRunRequest {
                command: "true".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    let r = kit
        .rt
        .shell_send(id, "i", send("6*7\n", ">>> $"))
        .await
        .unwrap();
    assert!(r.matched && r.output.contains("42"), "{r:?}");
    // An expect that never matches times out without interrupting.
    let r = kit
        .rt
        .shell_send(
            id,
            "i",
            ShellSendRequest {
                input: "".into(),
                expect: Some("never".into()),
                timeout_ms: Some(300),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(r.timed_out && !r.matched);
    // The line after `exit()` waits in the terminal for the shell.
    let r = kit
        .rt
        .shell_send(id, "i", send("exit()\necho done-$((1+1))\n", "done-2"))
        .await
        .unwrap();
    assert!(r.matched, "{r:?}");
    // The program is gone: the shell runs commands again.
    let r = run(&kit, id, "i", "echo back").await;
    assert_eq!(r.output, "back\n");
    // A bad pattern.
    let e = kit.rt.shell_send(id, "i", send("", "(")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exit_and_hostile_output() {
    if !common::privileged("exec_exit_and_hostile_output") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    // `exec bash`: taken over, state of the old shell gone, session goes on.
    open(&kit, id, "x").await;
    run(&kit, id, "x", "cd /tmp").await;
    let r = run(&kit, id, "x", "exec bash").await;
    assert!(r.shell_replaced && !r.session_ended, "{r:?}");
    let r = run(&kit, id, "x", "echo hi; pwd").await;
    assert_eq!((r.output.as_str(), r.exit_code), ("hi\n/tmp\n", Some(0)));
    // `exec sh`: not bash, the session ends.
    let r = run(&kit, id, "x", "exec sh").await;
    assert!(r.shell_replaced && r.session_ended, "{r:?}");
    assert!(r.output.contains("shell sessions need bash"));
    // `exit`: ended, with its code; the session is gone.
    open(&kit, id, "x").await;
    let r = run(&kit, id, "x", "echo bye; exit 3").await;
    assert!(r.session_ended, "{r:?}");
    // Interactive bash says "exit" as it leaves.
    assert!(r.output.starts_with("bye\n"), "{r:?}");
    assert_eq!(r.exit_code, Some(3));
    let e = kit
        .rt
        .shell_run(
            id,
            "x",
            ShellRunRequest {
                command: "true".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    open(&kit, id, "x").await;
    let r = run(&kit, id, "x", "kill -9 $$").await;
    assert!(r.session_ended, "{r:?}");
    // Huge output: head and tail kept around a marked cut.
    open(&kit, id, "y").await;
    let r = run_with(
        &kit,
        id,
        "y",
        "head -c 5000000 /dev/zero | tr '\\0' a; echo; echo END",
        ShellRunRequest {
            max_output: Some(100_000),
            ..Default::default()
        },
    )
    .await;
    assert!(r.truncated && r.exit_code == Some(0));
    assert!(r.output.starts_with("aaaa") && r.output.ends_with("a\nEND\n"));
    assert!(r.output.contains("[hull: output truncated: "));
    assert!(r.output.len() < 100_200, "{}", r.output.len());
    // Default budget: 1 MiB.
    let r = run(&kit, id, "y", "head -c 3000000 /dev/zero").await;
    assert!(r.truncated && r.output.len() < (1 << 20) + 200);
    // Binary output becomes lossy UTF-8.
    let r = run(
        &kit,
        id,
        "y",
        "head -c 4000 /dev/urandom; printf '\\377\\376\\0end'",
    )
    .await;
    assert_eq!(r.exit_code, Some(0));
    assert!(
        r.output.ends_with("\u{fffd}\u{fffd}\u{0}end"),
        "{:?}",
        &r.output[r.output.len() - 20..]
    );
    assert_eq!(run(&kit, id, "y", "echo fine").await.output, "fine\n");
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_independent_named_and_bounded() {
    if !common::privileged("sessions_are_independent_named_and_bounded") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    open(&kit, id, "a").await;
    kit.rt
        .shell_open(
            id,
            ShellOpenRequest {
                session: "b".into(),
                cwd: Some("/etc".into()),
                env: [("ZED".to_string(), "zz".to_string())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    run(&kit, id, "a", "cd /tmp; X=1").await;
    let r = run(&kit, id, "b", "pwd; echo ${X:-unset} $ZED").await;
    assert_eq!(r.output, "/etc\nunset zz\n");
    let l = kit.rt.shell_list(id).await.unwrap();
    let names: Vec<(&str, &str)> = l
        .sessions
        .iter()
        .map(|s| (s.session.as_str(), s.cwd.as_str()))
        .collect();
    assert_eq!(names, [("a", "/tmp"), ("b", "/etc")]);
    // Names: duplicate, unknown, invalid.
    let e = kit.rt.shell_open(id, open_req("a")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    let e = kit.rt.shell_close(id, "nope").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    for bad in ["", "a b", "../x", &"n".repeat(65)] {
        let e = kit.rt.shell_open(id, open_req(bad)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}: {e}");
    }
    // The limit.
    for i in 2..hull_proto::MAX_SHELL_SESSIONS {
        open(&kit, id, &format!("s{i}")).await;
    }
    let e = kit.rt.shell_open(id, open_req("over")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ResourceExhausted, "{e}");
    // Closing ends the shell and its jobs, and frees a slot.
    run(&kit, id, "a", "sleep 300 & echo $! > /tmp/job").await;
    let pid_a = l.sessions[0].pid;
    kit.rt.shell_close(id, "a").await.unwrap();
    let r = kit
        .sh(
            id,
            &format!("sleep 0.2; kill -0 $(cat /tmp/job) 2>/dev/null && echo job; kill -0 {pid_a} 2>/dev/null && echo shell; true"),
        )
        .await;
    assert_eq!(r.stdout, "", "{r:?}");
    open(&kit, id, "over").await;
    assert_eq!(
        kit.rt.shell_list(id).await.unwrap().sessions.len(),
        hull_proto::MAX_SHELL_SESSIONS
    );
    // A template without bash says so.
    let bb = kit.create("busybox").await;
    let e = kit.rt.shell_open(&bb.id, open_req("m")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message
            .contains("`bash` is not in this sandbox's template"),
        "{e}"
    );
    kit.finish().await;
}

/// Round trip of `true` in a warm session, through the runtime (printed,
/// not asserted: the issue's target is a p50 of at most 2 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_round_trip() {
    if !common::privileged("warm_round_trip") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    let id = sb.id.as_str();
    open(&kit, id, "b").await;
    for _ in 0..20 {
        run(&kit, id, "b", "true").await;
    }
    let mut t: Vec<Duration> = Vec::new();
    for _ in 0..200 {
        let s = Instant::now();
        let r = run(&kit, id, "b", "true").await;
        t.push(s.elapsed());
        assert_eq!(r.exit_code, Some(0));
    }
    t.sort();
    eprintln!(
        "shell_run(\"true\") warm round trip over {} calls: p50 {:?}, p90 {:?}, p99 {:?}",
        t.len(),
        t[t.len() / 2],
        t[t.len() * 9 / 10],
        t[t.len() * 99 / 100]
    );
    kit.finish().await;
}
