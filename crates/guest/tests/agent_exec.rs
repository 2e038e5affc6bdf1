//! The agent's process, TCP and protocol handling, driven through the real
//! host client (`hull_proto::client`) and, for hostile input, a raw socket.
//!
//! Each test starts its own agent in a thread (`pid1 = false`) on a socket
//! in a temp dir whose `root` holds a small `/etc/passwd` and `/etc/group`.
//! Processes run in the host's mount namespace, so `/bin/sh`, `cat`, `tty`
//! come from the host. Every process a test starts ends before it returns.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_guest::agent::{AgentConfig, serve};
use hull_proto::client::{ClientError, ExecHandle, ExecOutput, ExecOutputHalf, GuestClient};
use hull_proto::{
    CHUNK, ExecSpec, ExitStatus, Frame, GuestError, GuestErrorKind, GuestErrorReason, Op,
    PROTOCOL_VERSION, PtySize, Request, Response, read_frame_sync, write_frame_sync,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound for anything a test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

struct Agent {
    dir: tempfile::TempDir,
    socket: PathBuf,
    client: GuestClient,
}

impl Agent {
    /// The home directory of the fake user `tester` (uid 4242), a host path.
    fn home(&self) -> PathBuf {
        self.dir.path().join("home/tester")
    }
}

/// Start an agent on a fresh temp dir and connect the client to it.
async fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    // Processes switch to uid 4242 and chdir into the home below: every
    // component on the way must be searchable for it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let home = dir.path().join("home/tester");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(
        dir.path().join("home"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\nbroken line\ntester:x:4242:4343:Tester:{}:/bin/sh\n",
            home.display()
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\ntesters:x:4343:\nextra:x:5555:someone,tester\nother:x:6666:someone\n",
    )
    .unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let config = AgentConfig {
        root,
        base_env: vec![(
            "PATH".into(),
            "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
        )],
        default_user: None,
        default_cwd: None,
        pid1: false,
    };
    std::thread::spawn(move || {
        if let Err(e) = serve(listener, config) {
            eprintln!("agent stopped: {e}");
        }
    });
    let client = GuestClient::connect(&socket).await.unwrap();
    Agent {
        dir,
        socket,
        client,
    }
}

fn sh(script: &str) -> ExecSpec {
    ExecSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Both a whole handle and its output half yield output.
trait Output {
    async fn next_output(&mut self) -> Result<ExecOutput, ClientError>;
}

impl Output for ExecHandle {
    async fn next_output(&mut self) -> Result<ExecOutput, ClientError> {
        self.next().await
    }
}

impl Output for ExecOutputHalf {
    async fn next_output(&mut self) -> Result<ExecOutput, ClientError> {
        self.next().await
    }
}

/// Everything a process prints and how it ended.
async fn collect(h: &mut impl Output) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    tokio::time::timeout(PATIENCE, async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            match h.next_output().await.unwrap() {
                ExecOutput::Stdout { data, ts_micros } => {
                    assert!(ts_micros > 0);
                    assert!(data.len() <= CHUNK);
                    out.extend_from_slice(&data);
                }
                ExecOutput::Stderr { data, ts_micros } => {
                    assert!(ts_micros > 0);
                    err.extend_from_slice(&data);
                }
                ExecOutput::Exited(st) => return (out, err, st),
            }
        }
    })
    .await
    .expect("the process did not finish in time")
}

/// Read output until it contains `needle`; returns everything read.
async fn read_until(h: &mut ExecHandle, needle: &str) -> String {
    tokio::time::timeout(PATIENCE, async {
        let mut out = Vec::new();
        loop {
            match h.next().await.unwrap() {
                ExecOutput::Stdout { data, .. } | ExecOutput::Stderr { data, .. } => {
                    out.extend_from_slice(&data);
                    if String::from_utf8_lossy(&out).contains(needle) {
                        return String::from_utf8_lossy(&out).into_owned();
                    }
                }
                ExecOutput::Exited(st) => panic!(
                    "exited ({st:?}) before printing {needle:?}: {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in time"))
}

fn guest_error(r: Result<impl std::fmt::Debug, ClientError>) -> GuestError {
    match r {
        Err(ClientError::Guest(e)) => e,
        other => panic!("expected a guest error, got {other:?}"),
    }
}

/// True once `pid` no longer exists (killed and reaped), waiting up to [`PATIENCE`].
async fn gone(pid: i32) -> bool {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

use hull_testkit::privileged as need_root;

#[tokio::test]
async fn echo_stdin_and_exit_codes() {
    let a = agent().await;
    let h = a
        .client
        .exec(ExecSpec {
            argv: vec!["cat".into()],
            stdin: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(h.id.starts_with('p') && h.pid > 1);
    // More than one frame's worth of stdin.
    let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| b'a' + (i % 26) as u8).collect();
    let (mut input, mut output) = h.split();
    let sent = big.clone();
    // Write while reading: neither side may wait for the other.
    let writer = tokio::spawn(async move {
        input.stdin(b"hello\n").await.unwrap();
        input.stdin(&sent).await.unwrap();
        input.close_stdin().await.unwrap();
        input
    });
    let (out, err, st) = collect(&mut output).await;
    drop(writer.await.unwrap());
    assert_eq!(&out[..6], b"hello\n");
    assert_eq!(&out[6..], &big[..]);
    assert!(err.is_empty());
    assert_eq!((st.code, st.signal, st.timed_out), (Some(0), None, false));
    // A finished handle says so instead of blocking.
    assert!(output.next().await.is_err());

    let mut h = a
        .client
        .exec(sh("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    let (out, err, st) = collect(&mut h).await;
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!((st.code, st.signal), (Some(3), None));

    // Without `stdin`, the process reads /dev/null.
    let mut h = a.client.exec(sh("cat; echo end")).await.unwrap();
    let (out, _, st) = collect(&mut h).await;
    assert_eq!(out, b"end\n");
    assert_eq!(st.code, Some(0));
}

#[tokio::test]
async fn large_output_is_chunked() {
    let a = agent().await;
    let mut h = a
        .client
        .exec(sh("head -c 1000000 /dev/zero | tr '\\0' x"))
        .await
        .unwrap();
    // `collect` checks that no frame exceeds CHUNK.
    let (out, _, st) = collect(&mut h).await;
    assert_eq!(out.len(), 1_000_000);
    assert!(out.iter().all(|&b| b == b'x'));
    assert_eq!(st.code, Some(0));
}

#[tokio::test]
async fn a_signal_ends_the_process() {
    let a = agent().await;
    let mut h = a.client.exec(sh("kill -9 $$")).await.unwrap();
    let (_, _, st) = collect(&mut h).await;
    assert_eq!((st.code, st.signal, st.timed_out), (None, Some(9), false));

    // A signal sent on the connection reaches the whole process group.
    let mut h = a
        .client
        .exec(sh(
            "trap 'echo got-term; exit 7' TERM; echo ready; sleep 30 & wait",
        ))
        .await
        .unwrap();
    read_until(&mut h, "ready").await;
    h.signal(libc::SIGTERM).await.unwrap();
    let (out, _, st) = collect(&mut h).await;
    assert!(
        String::from_utf8_lossy(&out).contains("got-term"),
        "{out:?}"
    );
    assert_eq!(st.code, Some(7));
}

#[tokio::test]
async fn timeout_kills_and_keeps_partial_output() {
    let a = agent().await;
    let start = Instant::now();
    let mut h = a
        .client
        .exec(ExecSpec {
            timeout_ms: Some(500),
            ..sh("echo begin; echo warn >&2; sleep 30 & sleep 30")
        })
        .await
        .unwrap();
    let pid = h.pid;
    let (out, err, st) = collect(&mut h).await;
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(out, b"begin\n");
    assert_eq!(err, b"warn\n");
    assert!(st.timed_out);
    assert_eq!(st.signal, Some(libc::SIGKILL));
    assert!(st.duration_ms >= 400, "{st:?}");
    assert!(gone(pid).await);
}

#[tokio::test]
async fn pty_mode_and_resize() {
    let a = agent().await;
    let pty = Some(PtySize { rows: 24, cols: 80 });
    let mut h = a
        .client
        .exec(ExecSpec {
            pty,
            ..sh("tty; stty size; echo to-stderr >&2; echo TERM=$TERM")
        })
        .await
        .unwrap();
    let (out, err, st) = collect(&mut h).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(out.contains("24 80"), "{out:?}");
    // On a terminal stderr merges into stdout.
    assert!(out.contains("to-stderr"), "{out:?}");
    assert!(out.contains("TERM=xterm-256color"), "{out:?}");
    assert!(err.is_empty());
    assert_eq!(st.code, Some(0));

    let mut h = a
        .client
        .exec(ExecSpec {
            pty,
            stdin: true,
            ..sh("echo ready; read line; stty size; echo got:$line")
        })
        .await
        .unwrap();
    read_until(&mut h, "ready").await;
    h.resize(50, 132).await.unwrap();
    h.stdin(b"go\n").await.unwrap();
    let (out, _, st) = collect(&mut h).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("50 132"), "{out:?}");
    assert!(out.contains("got:go"), "{out:?}");
    assert_eq!(st.code, Some(0));

    // Closing stdin of a terminal is its EOF character.
    let mut h = a
        .client
        .exec(ExecSpec {
            pty,
            stdin: true,
            argv: vec!["cat".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    h.stdin(b"abc\n").await.unwrap();
    h.close_stdin().await.unwrap();
    let (out, _, st) = collect(&mut h).await;
    assert!(String::from_utf8_lossy(&out).contains("abc"));
    assert_eq!(st.code, Some(0));
}

#[tokio::test]
async fn background_procs_attach_and_signal() {
    let a = agent().await;
    let h = a
        .client
        .exec(ExecSpec {
            background: true,
            stdin: true,
            ..sh("echo first; echo first-err >&2; read x; echo second:$x")
        })
        .await
        .unwrap();
    let id = h.id.clone();
    // The connection is closed; the process keeps running.
    drop(h);
    let info = a
        .client
        .procs()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.id == id)
        .expect("listed");
    assert!(info.background && info.exit.is_none());
    assert_eq!(info.argv[0], "/bin/sh");

    // Attach with replay: buffered output (or live, if it comes later).
    let mut h = a.client.attach(&id, true).await.unwrap();
    assert_eq!(h.id, id);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    tokio::time::timeout(PATIENCE, async {
        while out != b"first\n" || err != b"first-err\n" {
            match h.next().await.unwrap() {
                ExecOutput::Stdout { data, .. } => out.extend_from_slice(&data),
                ExecOutput::Stderr { data, .. } => err.extend_from_slice(&data),
                ExecOutput::Exited(st) => panic!("exited early: {st:?}"),
            }
        }
    })
    .await
    .unwrap();
    h.stdin(b"typed\n").await.unwrap();
    let (out, _, st) = collect(&mut h).await;
    assert_eq!(out, b"second:typed\n");
    assert_eq!(st.code, Some(0));

    // Finished background processes stay listed with their status, and
    // attaching later replays everything and the exit.
    let info = a
        .client
        .procs()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.id == id)
        .unwrap();
    assert_eq!(info.exit.as_ref().and_then(|e| e.code), Some(0));
    let mut h = a.client.attach(&id, true).await.unwrap();
    let (out, err, st) = collect(&mut h).await;
    assert_eq!(out, b"first\nsecond:typed\n");
    assert_eq!(err, b"first-err\n");
    assert_eq!(st.code, Some(0));
    // Signalling a finished process is a conflict.
    let e = guest_error(a.client.signal(&id, 15).await);
    assert_eq!(e.kind, GuestErrorKind::Conflict);

    // Signal a running background process by id.
    let h = a
        .client
        .exec(ExecSpec {
            background: true,
            ..sh("sleep 30")
        })
        .await
        .unwrap();
    let (bid, bpid) = (h.id.clone(), h.pid);
    drop(h);
    let e = guest_error(a.client.signal(&bid, 0).await);
    assert_eq!(e.kind, GuestErrorKind::InvalidArgument);
    a.client.signal(&bid, libc::SIGTERM).await.unwrap();
    assert!(gone(bpid).await);
    let start = Instant::now();
    loop {
        let procs = a.client.procs().await.unwrap();
        let p = procs.iter().find(|p| p.id == bid).unwrap();
        if let Some(exit) = &p.exit {
            assert_eq!(exit.signal, Some(libc::SIGTERM));
            break;
        }
        assert!(start.elapsed() < PATIENCE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Unknown ids.
    let e = guest_error(a.client.signal("p999999", 9).await);
    assert_eq!(e.kind, GuestErrorKind::NotFound);
    let e = guest_error(a.client.attach("../etc", true).await.map(|h| h.id));
    assert_eq!(e.kind, GuestErrorKind::NotFound);
}

#[tokio::test]
async fn background_output_is_bounded() {
    let a = agent().await;
    let h = a
        .client
        .exec(ExecSpec {
            background: true,
            ..sh("head -c 3000000 /dev/zero | tr '\\0' a; echo END")
        })
        .await
        .unwrap();
    let id = h.id.clone();
    drop(h);
    let start = Instant::now();
    while a
        .client
        .procs()
        .await
        .unwrap()
        .iter()
        .any(|p| p.id == id && p.exit.is_none())
    {
        assert!(start.elapsed() < PATIENCE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut h = a.client.attach(&id, true).await.unwrap();
    let (out, _, st) = collect(&mut h).await;
    assert_eq!(st.code, Some(0));
    // The oldest output was dropped, the newest kept.
    assert!(out.len() <= 1 << 20, "{} bytes replayed", out.len());
    assert!(out.len() > 512 * 1024, "{} bytes replayed", out.len());
    assert!(out.ends_with(b"aaaEND\n"));

    // Attaching without replay to a finished process gives just the exit.
    let mut h = a.client.attach(&id, false).await.unwrap();
    let (out, _, st) = collect(&mut h).await;
    assert!(out.is_empty());
    assert_eq!(st.code, Some(0));
}

#[tokio::test]
async fn closing_the_connection_kills_a_foreground_process() {
    let a = agent().await;
    let mut h = a
        .client
        .exec(sh("sleep 30 & echo started $! .; wait"))
        .await
        .unwrap();
    let pid = h.pid;
    let out = read_until(&mut h, " .").await;
    let child: i32 = out
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    let listed = a.client.procs().await.unwrap();
    assert!(listed.iter().any(|p| p.pid == pid && !p.background));
    drop(h);
    assert!(gone(pid).await, "process {pid} survived its connection");
    // The whole process group went with it.
    assert!(gone(child).await, "child {child} survived its connection");

    // Only shutting down the sending side is not closing: output still
    // flows, and stdin ends.
    let h = a
        .client
        .exec(ExecSpec {
            stdin: true,
            ..sh("cat; sleep 0.3; echo still-here")
        })
        .await
        .unwrap();
    let (input, mut output) = h.split();
    drop(input);
    let (out, _, st) = collect(&mut output).await;
    assert_eq!(out, b"still-here\n");
    assert_eq!(st.code, Some(0));
}

#[tokio::test]
async fn env_and_cwd() {
    let a = agent().await;
    let mut h = a
        .client
        .exec(ExecSpec {
            env: vec![
                ("FOO".into(), "bar baz".into()),
                ("PATH".into(), "/usr/bin:/bin".into()),
            ],
            cwd: Some("/tmp".into()),
            ..sh("echo \"$FOO|$PATH|$HOME|$USER|$LOGNAME\"; pwd")
        })
        .await
        .unwrap();
    let (out, _, st) = collect(&mut h).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "bar baz|/usr/bin:/bin|/root|root|root\n/tmp\n"
    );
    assert_eq!(st.code, Some(0));

    // argv[0] is looked up in the request's PATH.
    let bin = a.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("hello-hull");
    std::fs::File::create(&script)
        .unwrap()
        .write_all(b"#!/bin/sh\necho \"hi from $0\"\n")
        .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut h = a
        .client
        .exec(ExecSpec {
            argv: vec!["hello-hull".into()],
            env: vec![("PATH".into(), format!("/nonexistent:{}", bin.display()))],
            ..Default::default()
        })
        .await
        .unwrap();
    let (out, _, _) = collect(&mut h).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("hi from {}\n", script.display())
    );

    // Bad working directories.
    for (cwd, kind) in [
        ("relative/dir", GuestErrorKind::InvalidArgument),
        ("/nonexistent/dir", GuestErrorKind::NotFound),
        ("/etc/passwd", GuestErrorKind::InvalidArgument),
    ] {
        let e = guest_error(
            a.client
                .exec(ExecSpec {
                    cwd: Some(cwd.into()),
                    ..sh("true")
                })
                .await
                .map(|h| h.id),
        );
        assert_eq!(e.kind, kind, "{cwd}: {e:?}");
        assert!(e.message.contains(cwd), "{e:?}");
    }
    // Hostile environment.
    for env in [
        vec![("".to_string(), "x".to_string())],
        vec![("A=B".into(), "x".into())],
        vec![("A".into(), "nul\0byte".into())],
    ] {
        let e = guest_error(
            a.client
                .exec(ExecSpec { env, ..sh("true") })
                .await
                .map(|h| h.id),
        );
        assert_eq!(e.kind, GuestErrorKind::InvalidArgument);
    }
}

#[tokio::test]
async fn users_come_from_the_sandbox_passwd() {
    if !need_root("users_come_from_the_sandbox_passwd") {
        return;
    }
    let a = agent().await;
    let script = "echo \"$HOME|$USER|$LOGNAME\"; pwd; id -u; id -g; id -G";
    let mut h = a
        .client
        .exec(ExecSpec {
            user: Some("tester".into()),
            ..sh(script)
        })
        .await
        .unwrap();
    let (out, err, st) = collect(&mut h).await;
    let home = a.home();
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!(
            "{}|tester|tester\n{}\n4242\n4343\n4343 5555\n",
            home.display(),
            home.display()
        ),
        "stderr: {}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(st.code, Some(0));

    // uid:gid, with the uid known to passwd: its name and groups, that gid.
    let mut h = a
        .client
        .exec(ExecSpec {
            user: Some("4242:6666".into()),
            cwd: Some("/".into()),
            ..sh("echo $USER; id -u; id -g")
        })
        .await
        .unwrap();
    let (out, _, _) = collect(&mut h).await;
    assert_eq!(String::from_utf8_lossy(&out), "tester\n4242\n6666\n");

    // A uid unknown to passwd: that uid, gid = uid, home "/".
    let mut h = a
        .client
        .exec(ExecSpec {
            user: Some("31337".into()),
            ..sh("echo $HOME; pwd; id -u; id -g; id -G")
        })
        .await
        .unwrap();
    let (out, _, _) = collect(&mut h).await;
    assert_eq!(String::from_utf8_lossy(&out), "/\n/\n31337\n31337\n31337\n");

    // A working directory the user may not enter.
    let locked = a.dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    let e = guest_error(
        a.client
            .exec(ExecSpec {
                user: Some("tester".into()),
                cwd: Some(locked.display().to_string()),
                ..sh("true")
            })
            .await
            .map(|h| h.id),
    );
    assert_eq!(e.kind, GuestErrorKind::PermissionDenied, "{e:?}");

    // Unknown names, bad specs.
    for (user, kind) in [
        ("nobody-here", GuestErrorKind::NotFound),
        ("tester:nogroup", GuestErrorKind::NotFound),
        ("", GuestErrorKind::InvalidArgument),
    ] {
        let e = guest_error(
            a.client
                .exec(ExecSpec {
                    user: Some(user.into()),
                    ..sh("true")
                })
                .await
                .map(|h| h.id),
        );
        assert_eq!(e.kind, kind, "{user:?}: {e:?}");
    }
}

#[tokio::test]
async fn missing_programs_are_clear_errors() {
    let a = agent().await;
    let e = guest_error(
        a.client
            .exec(ExecSpec {
                argv: vec!["python4".into(), "-c".into(), "1".into()],
                ..Default::default()
            })
            .await
            .map(|h| h.id),
    );
    assert_eq!(e.kind, GuestErrorKind::NotFound);
    assert_eq!(e.message, "python4: command not found");
    assert_eq!(e.reason, Some(GuestErrorReason::CommandNotFound));
    let e = guest_error(
        a.client
            .exec(ExecSpec {
                argv: vec!["/no/such/program".into()],
                ..Default::default()
            })
            .await
            .map(|h| h.id),
    );
    assert_eq!(e.kind, GuestErrorKind::NotFound);
    assert!(e.message.contains("/no/such/program"), "{e:?}");
    assert_eq!(e.reason, Some(GuestErrorReason::CommandNotFound));
    for argv in [vec![], vec![String::new()], vec!["a\0b".to_string()]] {
        let e = guest_error(
            a.client
                .exec(ExecSpec {
                    argv,
                    ..Default::default()
                })
                .await
                .map(|h| h.id),
        );
        assert_eq!(e.kind, GuestErrorKind::InvalidArgument);
    }
    // A file that is not executable, a directory, a file in the way of a
    // path: all "cannot execute". (A file of no known format is not one:
    // `execvp` hands it to `/bin/sh`, as shells do.)
    for (program, kind) in [
        ("/etc/passwd", GuestErrorKind::PermissionDenied),
        ("/etc", GuestErrorKind::PermissionDenied),
        ("/etc/passwd/x", GuestErrorKind::InvalidArgument),
    ] {
        let e = guest_error(
            a.client
                .exec(ExecSpec {
                    argv: vec![program.into()],
                    ..Default::default()
                })
                .await
                .map(|h| h.id),
        );
        assert_eq!(e.kind, kind, "{program}: {e:?}");
        assert_eq!(
            e.reason,
            Some(GuestErrorReason::CommandNotExecutable),
            "{program}: {e:?}"
        );
        assert!(e.message.starts_with(program), "{e:?}");
    }
    // Errors that are not about the program carry no reason.
    let e = guest_error(
        a.client
            .exec(ExecSpec {
                argv: vec![],
                ..Default::default()
            })
            .await
            .map(|h| h.id),
    );
    assert_eq!(e.reason, None, "{e:?}");
}

/// Send raw bytes as a request and return the agent's answer, if any.
fn raw(socket: &Path, bytes: &[u8]) -> Option<Response> {
    let mut s = StdUnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    // The agent may close before reading everything.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    match read_frame_sync(&mut s) {
        Ok(f) => Some(f.parse().unwrap()),
        Err(_) => None,
    }
}

fn request(v: u32, op: Op) -> Vec<u8> {
    Frame::control(&Request { v, op })
        .unwrap()
        .encode()
        .unwrap()
}

fn error_of(r: Option<Response>) -> GuestError {
    match r {
        Some(Response::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn hostile_frames_do_not_hurt_the_agent() {
    let a = agent().await;
    let s = a.socket.clone();
    tokio::task::spawn_blocking(move || {
        // Oversize length.
        let e = error_of(raw(&s, &u32::MAX.to_be_bytes()));
        assert_eq!(e.kind, GuestErrorKind::InvalidArgument);
        // Zero length, unknown kind, a truncated frame, nothing at all.
        error_of(raw(&s, &[0, 0, 0, 0]));
        error_of(raw(&s, &[0, 0, 0, 1, 77]));
        assert!(matches!(
            raw(&s, &[0, 0, 0, 9, 1, b'{']),
            None | Some(Response::Error(_))
        ));
        assert_eq!(raw(&s, &[]), None);
        // Not JSON, JSON of the wrong shape, a data frame first.
        let junk = Frame::Control(b"\xff\xfenot json".to_vec())
            .encode()
            .unwrap();
        assert_eq!(
            error_of(raw(&s, &junk)).kind,
            GuestErrorKind::InvalidArgument
        );
        let wrong = Frame::Control(br#"{"v":1,"op":{"type":"launch_missiles"}}"#.to_vec())
            .encode()
            .unwrap();
        assert_eq!(
            error_of(raw(&s, &wrong)).kind,
            GuestErrorKind::InvalidArgument
        );
        let data = Frame::Data(b"hi".to_vec()).encode().unwrap();
        error_of(raw(&s, &data));
    })
    .await
    .unwrap();

    // A foreground exec whose host then sends garbage is ended.
    let mut conn = StdUnixStream::connect(&a.socket).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    write_frame_sync(
        &mut conn,
        &Frame::control(&Request::new(Op::Exec(sh("sleep 30")))).unwrap(),
    )
    .unwrap();
    let pid = match read_frame_sync(&mut conn).unwrap().parse().unwrap() {
        Response::Started { pid, .. } => pid,
        other => panic!("{other:?}"),
    };
    conn.write_all(&[0xff, 0xff, 0xff, 0xff, 9]).unwrap();
    assert!(gone(pid).await);
    drop(conn);

    // Unknown control messages and stray frames on an exec connection are ignored.
    let mut h = a
        .client
        .exec(ExecSpec {
            stdin: true,
            ..sh("read x; echo got:$x")
        })
        .await
        .unwrap();
    h.signal(99).await.unwrap(); // out of range: ignored
    h.stdin(b"ok\n").await.unwrap();
    let (out, _, st) = collect(&mut h).await;
    assert_eq!(out, b"got:ok\n");
    assert_eq!(st.code, Some(0));

    // The agent still serves.
    let c = GuestClient::connect(&a.socket).await.unwrap();
    let mut h = c.exec(sh("echo alive")).await.unwrap();
    assert_eq!(collect(&mut h).await.0, b"alive\n");
}

#[tokio::test]
async fn version_negotiation() {
    let a = agent().await;
    assert_eq!(a.client.version(), PROTOCOL_VERSION);
    let s = a.socket.clone();
    tokio::task::spawn_blocking(move || {
        // Requests at an unknown version are refused, naming the range.
        let e = error_of(raw(&s, &request(999, Op::Procs)));
        assert_eq!(e.kind, GuestErrorKind::InvalidArgument);
        assert!(e.message.contains("999"), "{e:?}");
        let e = error_of(raw(&s, &request(0, Op::Exec(sh("true")))));
        assert_eq!(e.kind, GuestErrorKind::InvalidArgument);
        // An unknown version with an op this build cannot parse: still a version error.
        let future = Frame::Control(br#"{"v":999,"op":{"type":"teleport","to":"mars"}}"#.to_vec())
            .encode()
            .unwrap();
        let e = error_of(raw(&s, &future));
        assert!(e.message.contains("protocol version 999"), "{e:?}");
        // `hello` is answered whatever the version.
        match raw(&s, &request(999, Op::Hello { min: 5, max: 999 })) {
            Some(Response::Hello { min, max, agent }) => {
                assert!(min <= max && max == PROTOCOL_VERSION);
                assert!(!agent.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // The current version works.
        assert!(matches!(
            raw(&s, &request(PROTOCOL_VERSION, Op::Procs)),
            Some(Response::Procs { .. })
        ));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn tcp_to_a_port_inside() {
    let a = agent().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        // Reads to EOF: the client's half-close must arrive.
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(&got.to_ascii_uppercase()).await.unwrap();
        got.len()
    });
    let mut t = a.client.connect_tcp(port).await.unwrap();
    let payload: Vec<u8> = (0..200_000).map(|i| b'a' + (i % 26) as u8).collect();
    t.write_all(&payload).await.unwrap();
    t.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(PATIENCE, t.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload.to_ascii_uppercase());
    assert_eq!(server.await.unwrap(), payload.len());

    // Nothing listening: unavailable.
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = guest_error(a.client.connect_tcp(free).await.map(|_| ()));
    assert_eq!(e.kind, GuestErrorKind::Unavailable);
    assert!(e.message.contains(&free.to_string()), "{e:?}");
    let e = guest_error(a.client.connect_tcp(0).await.map(|_| ()));
    assert_eq!(e.kind, GuestErrorKind::InvalidArgument);

    // Host names are refused: only addresses inside the sandbox.
    let s = a.socket.clone();
    tokio::task::spawn_blocking(move || {
        let op = Op::Connect {
            port: 80,
            host: Some("example.com".into()),
        };
        let e = error_of(raw(&s, &request(PROTOCOL_VERSION, op)));
        assert_eq!(e.kind, GuestErrorKind::InvalidArgument);
    })
    .await
    .unwrap();
}

/// Set in the helper process that plays PID 1 for the test below.
const PID1_ENV: &str = "HULL_TEST_PID1_AGENT_DIR";
const PID1_TEST: &str = "as_pid1_it_reaps_orphans_and_forwards_signals";

/// Kills (and reaps) the helper's `unshare` on drop; `--kill-child` then
/// takes the whole pid namespace with it.
struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent as PID 1 of a new pid namespace (this test binary re-run
/// under `unshare`): orphans are reaped, registered children's statuses
/// still arrive, and SIGTERM sent to PID 1 reaches the process groups.
#[test]
fn as_pid1_it_reaps_orphans_and_forwards_signals() {
    if let Ok(dir) = std::env::var(PID1_ENV) {
        // The helper: serve until the namespace is torn down.
        let dir = PathBuf::from(dir);
        assert_eq!(std::process::id(), 1, "the helper must be PID 1");
        let listener = std::os::unix::net::UnixListener::bind(dir.join("pid1.sock")).unwrap();
        let config = AgentConfig {
            root: dir.join("root"),
            base_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            default_user: None,
            default_cwd: None,
            pid1: true,
        };
        let e = serve(listener, config);
        panic!("the agent stopped: {e:?}");
    }
    if !need_root(PID1_TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root/etc")).unwrap();
    let helper = Helper(
        std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", PID1_TEST, "--nocapture", "--test-threads=1"])
            .env(PID1_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let socket = dir.path().join("pid1.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let start = Instant::now();
        let client = loop {
            if let Ok(c) = GuestClient::connect(&socket).await {
                break c;
            }
            assert!(start.elapsed() < PATIENCE, "the PID 1 agent did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };

        // An orphan: its parent exits at once, it is reparented to the
        // agent and must be reaped, not left a zombie.
        let mut h = client.exec(sh("sleep 0.2 & echo $!")).await.unwrap();
        let (out, _, st) = collect(&mut h).await;
        assert_eq!(st.code, Some(0));
        let orphan = String::from_utf8_lossy(&out).trim().to_string();
        let start = Instant::now();
        loop {
            let mut h = client
                .exec(sh(&format!("cat /proc/{orphan}/stat 2>/dev/null")))
                .await
                .unwrap();
            let (out, _, _) = collect(&mut h).await;
            if out.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "orphan never reaped: {}",
                String::from_utf8_lossy(&out)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Registered children keep their own statuses while PID 1 reaps
        // everything: many at once, each with its own code.
        let mut handles = Vec::new();
        for n in 0..20 {
            handles.push(
                client
                    .exec(sh(&format!("sleep 0.0{}; exit {n}", n % 5)))
                    .await
                    .unwrap(),
            );
        }
        for (n, mut h) in handles.into_iter().enumerate() {
            let (_, _, st) = collect(&mut h).await;
            assert_eq!(st.code, Some(n as i32));
        }

        // SIGTERM to PID 1 is forwarded to the process groups it started.
        let mut h = client
            .exec(sh(
                "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
            ))
            .await
            .unwrap();
        read_until(&mut h, "ready").await;
        let unshare = helper.0.id();
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
        let agent: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let (out, _, st) = collect(&mut h).await;
        assert!(
            String::from_utf8_lossy(&out).contains("got-term"),
            "{out:?}"
        );
        assert_eq!(st.code, Some(3));
        // The agent itself is still serving.
        assert!(client.procs().await.is_ok());
    });
    drop(helper);
}
