//! The agent's directory watches (`watch_start`), driven through the host
//! client against a temp directory as the sandbox root: the events that
//! file changes produce, recursion into new directories, and hostile
//! input (paths that try to leave the root, a missing path, a file, too
//! many watches, too large a tree, a flood of events).

use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hull_guest::agent::{AgentConfig, serve};
use hull_proto::client::{ClientError, GuestClient, WatchStream};
use hull_proto::{GuestErrorKind, MAX_WATCH_DIRS, MAX_WATCHERS, WatchEvent, WatchEventKind};

struct Fx {
    base: PathBuf,
    root: PathBuf,
    client: GuestClient,
}

async fn fx() -> Fx {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir().join(format!(
        "hull-agent-watch-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let sock = base.join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let config = AgentConfig {
        root: root.clone(),
        base_env: vec![],
        default_user: None,
        default_cwd: None,
        pid1: false,
    };
    std::thread::spawn(move || {
        let _ = serve(listener, config);
    });
    let client = GuestClient::connect(&sock).await.unwrap();
    Fx { base, root, client }
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

impl Fx {
    fn host(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

/// Read batches until `want` has been seen (or fail after a generous
/// bound: a missing event, not slowness, is what fails the test).
async fn collect_until(
    w: &mut WatchStream,
    mut want: impl FnMut(&[WatchEvent]) -> bool,
) -> Vec<WatchEvent> {
    let mut seen = Vec::new();
    while !want(&seen) {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Ok(batch)) => seen.extend(batch),
            Ok(Err(e)) => panic!("watch ended: {e}; seen {seen:?}"),
            Err(_) => panic!("the expected events never came; seen {seen:?}"),
        }
    }
    seen
}

fn has(seen: &[WatchEvent], name: &str, kind: WatchEventKind) -> bool {
    seen.iter().any(|e| e.name == name && e.kind == kind)
}

fn guest_kind(e: ClientError) -> GuestErrorKind {
    match e {
        ClientError::Guest(g) => g.kind,
        other => panic!("expected a guest error, got {other}"),
    }
}

#[tokio::test]
async fn reports_every_kind_of_change() {
    let f = fx().await;
    std::fs::create_dir_all(f.host("/w/sub")).unwrap();
    let mut w = f.client.watch("/w", false).await.unwrap();
    std::fs::write(f.host("/w/a.txt"), b"one").unwrap();
    std::fs::write(f.host("/w/a.txt"), b"two").unwrap();
    std::fs::set_permissions(f.host("/w/a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(f.host("/w/a.txt"), f.host("/w/b.txt")).unwrap();
    std::fs::remove_file(f.host("/w/b.txt")).unwrap();
    // Not recursive: a change inside `sub` is not reported.
    std::fs::write(f.host("/w/sub/inner"), b"x").unwrap();
    std::fs::write(f.host("/w/last"), b"x").unwrap();
    let seen = collect_until(&mut w, |s| has(s, "last", WatchEventKind::Create)).await;
    for (name, kind) in [
        ("a.txt", WatchEventKind::Create),
        ("a.txt", WatchEventKind::Write),
        ("a.txt", WatchEventKind::Chmod),
        ("a.txt", WatchEventKind::Rename),
        ("b.txt", WatchEventKind::Create),
        ("b.txt", WatchEventKind::Remove),
    ] {
        assert!(
            has(&seen, name, kind),
            "{name} {kind:?} missing from {seen:?}"
        );
    }
    // In order: created before written before removed.
    let pos = |n: &str, k| {
        seen.iter()
            .position(|e| e.name == n && e.kind == k)
            .unwrap()
    };
    assert!(pos("a.txt", WatchEventKind::Create) < pos("a.txt", WatchEventKind::Write));
    assert!(pos("b.txt", WatchEventKind::Create) < pos("b.txt", WatchEventKind::Remove));
    assert!(!seen.iter().any(|e| e.name.contains("inner")), "{seen:?}");
    w.stop().await;
}

#[tokio::test]
async fn recursive_watches_follow_new_directories() {
    let f = fx().await;
    std::fs::create_dir_all(f.host("/r/old/deep")).unwrap();
    let mut w = f.client.watch("/r", true).await.unwrap();
    std::fs::write(f.host("/r/old/deep/f1"), b"x").unwrap();
    // A tree made at once: what it holds before the watch reaches it is
    // reported as created.
    std::fs::create_dir_all(f.host("/r/new/a/b")).unwrap();
    std::fs::write(f.host("/r/new/a/b/f2"), b"x").unwrap();
    let seen = collect_until(&mut w, |s| {
        has(s, "old/deep/f1", WatchEventKind::Create)
            && has(s, "new/a/b/f2", WatchEventKind::Create)
    })
    .await;
    assert!(has(&seen, "new", WatchEventKind::Create), "{seen:?}");
    // Moving a directory away forgets it; its new place is watched.
    std::fs::rename(f.host("/r/new"), f.host("/r/moved")).unwrap();
    std::fs::write(f.host("/r/moved/a/f3"), b"x").unwrap();
    let seen = collect_until(&mut w, |s| has(s, "moved/a/f3", WatchEventKind::Create)).await;
    assert!(has(&seen, "new", WatchEventKind::Rename), "{seen:?}");
    assert!(
        !seen.iter().any(|e| e.name.starts_with("new/a/f3")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn paths_never_leave_the_root() {
    let f = fx().await;
    std::fs::create_dir_all(f.host("/d")).unwrap();
    // `..` stops at the root: this watches the root itself.
    let mut w = f.client.watch("/../../..", false).await.unwrap();
    // A symlink to the host's view of the parent resolves inside the root
    // (where nothing is), and a relative one climbing out stops at the root.
    symlink(&f.base, f.host("/abs")).unwrap();
    symlink("../../../..", f.host("/d/up")).unwrap();
    let e = f.client.watch("/abs", false).await.err().unwrap();
    assert_eq!(guest_kind(e), GuestErrorKind::NotFound);
    let mut up = f.client.watch("/d/up", false).await.unwrap();
    // A change outside the root is seen by neither.
    std::fs::write(f.base.join("outside"), b"x").unwrap();
    std::fs::write(f.host("/inside"), b"x").unwrap();
    let seen = collect_until(&mut w, |s| has(s, "inside", WatchEventKind::Create)).await;
    assert!(!seen.iter().any(|e| e.name.contains("outside")), "{seen:?}");
    let seen = collect_until(&mut up, |s| has(s, "inside", WatchEventKind::Create)).await;
    assert!(!seen.iter().any(|e| e.name.contains("outside")), "{seen:?}");
}

#[tokio::test]
async fn bad_paths_are_typed_errors() {
    let f = fx().await;
    std::fs::write(f.host("/file"), b"x").unwrap();
    let cases = [
        ("/nope", GuestErrorKind::NotFound),
        ("/file", GuestErrorKind::InvalidArgument),
        ("relative", GuestErrorKind::InvalidArgument),
        ("", GuestErrorKind::InvalidArgument),
        ("/a\0b", GuestErrorKind::InvalidArgument),
    ];
    for (path, kind) in cases {
        let e = f.client.watch(path, true).await.err().unwrap();
        assert_eq!(guest_kind(e), kind, "{path:?}");
    }
    let long = format!("/{}", "a".repeat(5000));
    let e = f.client.watch(&long, false).await.err().unwrap();
    assert_eq!(guest_kind(e), GuestErrorKind::InvalidArgument);
}

#[tokio::test]
async fn removing_the_watched_directory_ends_the_watch() {
    let f = fx().await;
    std::fs::create_dir_all(f.host("/gone")).unwrap();
    let mut w = f.client.watch("/gone", false).await.unwrap();
    std::fs::remove_dir(f.host("/gone")).unwrap();
    let mut seen = Vec::new();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(20), w.next()).await {
            Ok(Ok(b)) => seen.extend(b),
            Ok(Err(e)) => break e,
            Err(_) => panic!("the watch did not end; seen {seen:?}"),
        }
    };
    assert!(has(&seen, "", WatchEventKind::Remove), "{seen:?}");
    assert_eq!(guest_kind(err), GuestErrorKind::NotFound);
}

#[tokio::test]
async fn watches_are_bounded_and_given_back() {
    let f = fx().await;
    std::fs::create_dir_all(f.host("/m")).unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX_WATCHERS {
        held.push(f.client.watch("/m", false).await.unwrap());
    }
    let e = f.client.watch("/m", false).await.err().unwrap();
    assert_eq!(guest_kind(e), GuestErrorKind::ResourceExhausted);
    // Stopping one gives its slot back (once the agent has seen the stop).
    held.pop().unwrap().stop().await;
    drop(held.pop());
    let mut ok = false;
    for _ in 0..200 {
        match f.client.watch("/m", false).await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(e) => assert_eq!(guest_kind(e), GuestErrorKind::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a stopped watch never gave its slot back");
}

#[tokio::test]
async fn too_large_a_tree_is_refused() {
    let f = fx().await;
    for i in 0..=MAX_WATCH_DIRS {
        std::fs::create_dir_all(f.host(&format!("/big/{}/{}", i / 100, i % 100))).unwrap();
    }
    let e = f.client.watch("/big", true).await.err().unwrap();
    assert_eq!(guest_kind(e), GuestErrorKind::ResourceExhausted);
    // Without recursion it is one directory.
    f.client.watch("/big", false).await.unwrap();
}

#[tokio::test]
async fn a_flood_overflows_instead_of_growing_memory() {
    let f = fx().await;
    std::fs::create_dir_all(f.host("/flood")).unwrap();
    let mut w = f.client.watch("/flood", false).await.unwrap();
    // Far more events than the kernel queues (16384 by default) while
    // nobody reads: the queue overflows and says so.
    let queued: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    for i in 0..queued * 2 + 10_000 {
        std::fs::File::create(f.host(&format!("/flood/{i}"))).unwrap();
    }
    let seen = collect_until(&mut w, |s| {
        s.iter().any(|e| e.kind == WatchEventKind::Overflow)
    })
    .await;
    assert!(seen.len() < queued * 2 + 10_000, "nothing was dropped");
}
