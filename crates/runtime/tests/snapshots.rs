//! Snapshots through the runtime: capture a running sandbox, create and
//! fork from it, roll back, delete, and the refusals around them.

mod common;

use std::collections::BTreeMap;

use common::{Kit, privileged};
use hull_api::{CreateSandbox, CreateSnapshot, ErrorKind, Fork, SandboxState};

async fn snap(kit: &Kit, id: &str, name: Option<&str>) -> hull_api::Snapshot {
    kit.rt
        .snapshot(
            id,
            CreateSnapshot {
                name: name.map(str::to_string),
                labels: BTreeMap::from([("step".to_string(), "1".to_string())]),
            },
        )
        .await
        .expect("snapshot")
}

async fn from(kit: &Kit, snapshot: &str) -> hull_api::Sandbox {
    kit.rt
        .create(CreateSandbox {
            from: Some(snapshot.into()),
            ..Default::default()
        })
        .await
        .expect("create from snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_create_fork_rollback_delete() {
    if !privileged("snapshot_create_fork_rollback_delete") {
        return;
    }
    let kit = Kit::new().await;
    let a = kit.create("busybox").await;
    let r = kit
        .sh(
            &a.id,
            "echo v1 > /tmp/f; rm /etc/hosts; mkdir -p /data/deep; echo d > /data/deep/x; \
             ln -s /data/deep/x /link; echo ok",
        )
        .await;
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    let s1 = snap(&kit, &a.id, Some("first")).await;
    assert_eq!(
        (
            s1.template.as_str(),
            s1.parent.as_deref(),
            s1.sandbox.as_str()
        ),
        ("busybox", None, a.id.as_str())
    );
    assert_eq!(s1.labels.get("step").map(String::as_str), Some("1"));
    // The sandbox keeps running and keeps changing.
    let r = kit
        .sh(&a.id, "echo v2 > /tmp/f; rm /data/deep/x; cat /tmp/f")
        .await;
    assert_eq!(r.stdout, "v2\n");

    // A sandbox from the snapshot sees the snapshot's files, not later ones.
    let b = from(&kit, "first").await;
    assert_eq!(b.snapshot.as_deref(), Some(s1.id.as_str()));
    assert_eq!(b.template, "busybox");
    let r = kit
        .sh(
            &b.id,
            "cat /tmp/f /data/deep/x; readlink /link; [ -e /etc/hosts ] && echo hosts-back; echo end",
        )
        .await;
    assert_eq!(r.stdout, "v1\nd\n/data/deep/x\nend\n", "{r:?}");
    // A snapshot of b has s1 as parent, and holds b's changes on top.
    kit.sh(&b.id, "echo b > /tmp/b").await;
    let s2 = snap(&kit, &b.id, None).await;
    assert_eq!(s2.parent.as_deref(), Some(s1.id.as_str()));
    let c = from(&kit, &s2.id).await;
    let r = kit.sh(&c.id, "cat /tmp/f /tmp/b /data/deep/x").await;
    assert_eq!(r.stdout, "v1\nb\nd\n", "{r:?}");

    // Fork: n sandboxes, private copy-on-write files.
    let forks = kit
        .rt
        .fork(
            &s1.id,
            Fork {
                n: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(forks.len(), 5);
    for (i, f) in forks.iter().enumerate() {
        let r = kit
            .sh(&f.id, &format!("echo {i} > /tmp/f; cat /tmp/f"))
            .await;
        assert_eq!(r.stdout, format!("{i}\n"));
    }
    for (i, f) in forks.iter().enumerate() {
        let r = kit.sh(&f.id, "cat /tmp/f").await;
        assert_eq!(r.stdout, format!("{i}\n"), "forks share nothing writable");
    }
    for bad in [0, hull_runtime::MAX_FORK + 1] {
        let e = kit
            .rt
            .fork(
                &s1.id,
                Fork {
                    n: bad,
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e:?}");
    }

    // Rollback: files replaced, processes restarted, identity kept.
    let r = kit.sh(&a.id, "sleep 1000 & echo started").await;
    assert_eq!(r.stdout, "started\n");
    let before = kit.rt.get(&a.id).await.unwrap();
    let rolled = kit.rt.rollback(&a.id, &s1.id).await.unwrap();
    assert_eq!(rolled.id, a.id);
    assert_eq!(rolled.state, SandboxState::Running);
    assert_eq!(rolled.snapshot.as_deref(), Some(s1.id.as_str()));
    assert_ne!(rolled.pid, before.pid, "PID 1 restarted");
    assert!(rolled.events.iter().any(|e| e.kind == "rolled_back"));
    let r = kit
        .sh(
            &a.id,
            "cat /tmp/f /data/deep/x; pgrep sleep || echo no-sleep",
        )
        .await;
    assert_eq!(r.stdout, "v1\nd\nno-sleep\n", "{r:?}");

    // Refusals.
    let e = kit.rt.delete_snapshot(&s1.id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "in use: {e:?}");
    for f in &forks {
        kit.rt.destroy(&f.id).await.unwrap();
    }
    kit.rt.destroy(&a.id).await.unwrap();
    kit.rt.destroy(&b.id).await.unwrap();
    let e = kit.rt.delete_snapshot(&s1.id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "children and c: {e:?}");
    kit.rt.destroy(&c.id).await.unwrap();
    let e = kit.rt.delete_snapshot("first").await.unwrap_err();
    assert!(e.message.contains(&s2.id), "names the child: {e:?}");
    kit.rt.delete_snapshot(&s2.id).await.unwrap();
    kit.rt.delete_snapshot("first").await.unwrap();
    assert!(
        kit.rt
            .list_snapshots(&BTreeMap::new())
            .await
            .unwrap()
            .is_empty()
    );
    for missing in ["first", "nope", "", "../x"] {
        let e = kit.rt.get_snapshot(missing).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{missing:?}");
        let e = kit.rt.delete_snapshot(missing).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{missing:?}");
    }
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_states_names_and_templates() {
    if !privileged("snapshot_states_names_and_templates") {
        return;
    }
    let kit = Kit::new().await;
    let a = kit.create("busybox").await;
    kit.sh(&a.id, "echo x > /x").await;
    // Paused: the snapshot is taken and the sandbox stays paused.
    kit.rt.pause(&a.id).await.unwrap();
    let s = snap(&kit, &a.id, Some("paused-one")).await;
    assert_eq!(kit.rt.get(&a.id).await.unwrap().state, SandboxState::Paused);
    kit.rt.resume(&a.id).await.unwrap();
    // Names are unique DNS labels.
    let dup = kit
        .rt
        .snapshot(
            &a.id,
            CreateSnapshot {
                name: Some("paused-one".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(dup.kind, ErrorKind::Conflict);
    for bad in ["Bad", "-x", "a/b", ""] {
        let e = kit
            .rt
            .snapshot(
                &a.id,
                CreateSnapshot {
                    name: Some(bad.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}");
    }
    let e = kit
        .rt
        .snapshot("no-such-sandbox", CreateSnapshot::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // Stopped: nothing to capture.
    kit.rt.stop(&a.id).await.unwrap();
    let e = kit
        .rt
        .snapshot(&a.id, CreateSnapshot::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    // ... but it can be rolled back, which starts it again.
    let r = kit.rt.rollback(&a.id, &s.id).await.unwrap();
    assert_eq!(r.state, SandboxState::Running);
    assert_eq!(kit.sh(&a.id, "cat /x").await.stdout, "x\n");
    // Templates must match.
    let h = kit.create("host").await;
    let e = kit.rt.rollback(&h.id, &s.id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e:?}");
    let e = kit
        .rt
        .create(CreateSandbox {
            from: Some(s.id.clone()),
            template: Some("host".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e:?}");
    let e = kit
        .rt
        .create(CreateSandbox {
            from: Some("no-such-snapshot".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // The host template: one part per overlay (/ and the host's /usr).
    let r = kit
        .sh(
            &h.id,
            "echo u > /usr/local/hull-test; echo r > /root/r; echo ok",
        )
        .await;
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    let hs = snap(&kit, &h.id, None).await;
    let h2 = from(&kit, &hs.id).await;
    let r = kit
        .sh(
            &h2.id,
            "cat /usr/local/hull-test /root/r; python3 -c 'print(6*7)'",
        )
        .await;
    assert_eq!(r.stdout, "u\nr\n42\n", "{r:?}");
    assert!(
        !std::path::Path::new("/usr/local/hull-test").exists(),
        "nothing written to the host's /usr"
    );
    // Labels filter the list.
    let only = kit
        .rt
        .list_snapshots(&BTreeMap::from([("step".into(), "1".into())]))
        .await
        .unwrap();
    assert_eq!(only.len(), 2);
    let none = kit
        .rt
        .list_snapshots(&BTreeMap::from([("step".into(), "2".into())]))
        .await
        .unwrap();
    assert!(none.is_empty());
    // Snapshots survive a daemon restart; sandboxes born from them too.
    let mut kit = kit;
    kit.restart().await;
    assert_eq!(kit.rt.get_snapshot(&hs.id).await.unwrap().id, hs.id);
    let r = kit.sh(&h2.id, "cat /root/r").await;
    assert_eq!(r.stdout, "r\n");
    let h3 = from(&kit, &hs.id).await;
    assert_eq!(kit.sh(&h3.id, "cat /root/r").await.stdout, "r\n");
    kit.finish().await;
}

/// A daemon killed in the middle of a snapshot leaves store layers of an
/// incomplete group: the next start removes them, and never lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_snapshots_are_removed_on_start() {
    if !privileged("incomplete_snapshots_are_removed_on_start") {
        return;
    }
    let mut kit = Kit::new().await;
    let a = kit.create("busybox").await;
    kit.sh(&a.id, "echo kept > /k").await;
    let kept = snap(&kit, &a.id, Some("kept")).await;
    kit.rt.destroy(&a.id).await.unwrap();
    // What a killed daemon leaves: part 0 of a two-part snapshot, committed
    // but never marked complete, and a lone part 1 of another.
    kit.rt.shutdown().await;
    {
        let (store, info) =
            hull_fs::snapshot::open_auto(&kit.dir.path().join("snapshots"), 4 << 30).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("half"), "x").unwrap();
        let labels = |id: &str| {
            BTreeMap::from([
                ("hull.id".to_string(), id.to_string()),
                ("hull.template".to_string(), "busybox".to_string()),
                ("hull.parts".to_string(), "2".to_string()),
                ("hull.created".to_string(), "1".to_string()),
            ])
        };
        store
            .commit_from_dir("halfmade0001.0", None, src.path(), &labels("halfmade0001"))
            .unwrap();
        store
            .commit_from_dir("halfmade0002.1", None, src.path(), &labels("halfmade0002"))
            .unwrap();
        assert_eq!(store.walk().unwrap().len(), 3);
        drop(store);
        info.release().unwrap();
    }
    kit.restart().await;
    let list = kit.rt.list_snapshots(&BTreeMap::new()).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, kept.id);
    for gone in ["halfmade0001", "halfmade0002"] {
        let e = kit.rt.get_snapshot(gone).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }
    kit.rt.shutdown().await;
    {
        let (store, info) =
            hull_fs::snapshot::open_auto(&kit.dir.path().join("snapshots"), 4 << 30).unwrap();
        let keys: Vec<String> = store.walk().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(keys, vec![format!("{}.0", kept.id)]);
        drop(store);
        info.release().unwrap();
    }
    kit.restart().await;
    let b = from(&kit, "kept").await;
    assert_eq!(kit.sh(&b.id, "cat /k").await.stdout, "kept\n");
    kit.finish().await;
}

/// Snapshots taken while a process writes, two of them at once: each is one
/// instant of the sandbox (the writer updates `a` then `b` in a loop, so any
/// instant has a == b or a == b + 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_during_writes_are_consistent() {
    if !privileged("snapshots_during_writes_are_consistent") {
        return;
    }
    let kit = Kit::new().await;
    let a = kit.create("busybox").await;
    let r = kit
        .sh(
            &a.id,
            "(i=0; while true; do i=$((i+1)); echo $i > /a; echo $i > /b; \
              head -c 65536 /dev/zero > /blob$((i % 20)); done) >/dev/null 2>&1 & echo started",
        )
        .await;
    assert_eq!(r.stdout, "started\n");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut snaps = Vec::new();
    for _ in 0..3 {
        let (x, y) = tokio::join!(
            kit.rt.snapshot(&a.id, CreateSnapshot::default()),
            kit.rt.snapshot(&a.id, CreateSnapshot::default())
        );
        snaps.push(x.unwrap());
        snaps.push(y.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // An instant may also fall between `echo` truncating a file and
    // writing it: then that file is empty. Without the freeze, a copy
    // taken while the writer runs shows b > a or a > b + 1.
    let mut checked = 0;
    for s in &snaps {
        let b = from(&kit, &s.id).await;
        let r = kit.sh(&b.id, "echo \"$(cat /a) $(cat /b)\"").await;
        let v: Vec<Option<u64>> = r
            .stdout
            .trim_end_matches('\n')
            .split(' ')
            .map(|n| n.parse().ok())
            .collect();
        assert_eq!(v.len(), 2, "{r:?}");
        if let (Some(x), Some(y)) = (v[0], v[1]) {
            assert!(
                x == y || x == y + 1,
                "snapshot {} is not one instant: a={x} b={y}",
                s.id
            );
            checked += 1;
        }
        kit.rt.destroy(&b.id).await.unwrap();
    }
    assert!(checked >= 2, "too few snapshots caught both files written");
    // The writer kept running through all of it.
    let before = kit.sh(&a.id, "cat /b").await.stdout;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let after = kit.sh(&a.id, "cat /b").await.stdout;
    assert_ne!(before, after, "the sandbox keeps running");
    kit.finish().await;
}

/// A template saved from a snapshot: `create --template NAME` starts from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_saved_from_snapshots() {
    if !privileged("templates_saved_from_snapshots") {
        return;
    }
    let kit = Kit::new().await;
    let a = kit.create("busybox").await;
    kit.sh(&a.id, "mkdir -p /app && echo ready > /app/state")
        .await;
    let s = snap(&kit, &a.id, None).await;
    let t = kit.rt.save_template("my-world", &s.id).await.unwrap();
    assert_eq!(t.snapshot.as_deref(), Some(s.id.as_str()));
    let names: Vec<String> = kit
        .rt
        .templates()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["host", "busybox", "scratch", "my-world"]);
    let b = kit.create("my-world").await;
    assert_eq!(
        (b.template.as_str(), b.snapshot.as_deref()),
        ("busybox", Some(s.id.as_str()))
    );
    assert_eq!(kit.sh(&b.id, "cat /app/state").await.stdout, "ready\n");
    // Refusals: names, duplicates, built-ins, unknown snapshots, deleting
    // the snapshot of a template.
    for (name, snapshot, kind) in [
        ("my-world", s.id.as_str(), ErrorKind::Conflict),
        ("busybox", s.id.as_str(), ErrorKind::Conflict),
        ("Bad_Name", s.id.as_str(), ErrorKind::InvalidArgument),
        ("other", s.id.as_str(), ErrorKind::Conflict),
        ("other", "no-such-snapshot", ErrorKind::NotFound),
    ] {
        let e = kit.rt.save_template(name, snapshot).await.unwrap_err();
        assert_eq!(e.kind, kind, "{name} {snapshot}: {e:?}");
    }
    kit.rt.destroy(&a.id).await.unwrap();
    kit.rt.destroy(&b.id).await.unwrap();
    let e = kit.rt.delete_snapshot(&s.id).await.unwrap_err();
    assert!(e.message.contains("my-world"), "{e:?}");
    assert_eq!(
        kit.rt.remove_template("busybox").await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kit.rt.remove_template("nope").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    kit.rt.remove_template("my-world").await.unwrap();
    let e = kit
        .rt
        .create(CreateSandbox {
            template: Some("my-world".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    kit.rt.delete_snapshot(&s.id).await.unwrap();
    kit.finish().await;
}

/// The store's filesystem fills up during a snapshot: a clear
/// `resource_exhausted` error, the sandbox keeps running (thawed), earlier
/// snapshots stay intact and usable, nothing half-made is listed.
/// Overlay: the state directory is a 40 MiB tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_full_is_a_clear_error() {
    if !privileged("store_full_is_a_clear_error") {
        return;
    }
    store_full(hull_runtime::SnapshotStoreConfig {
        backend: hull_runtime::BackendChoice::Overlay,
        image_bytes: None,
    })
    .await;
}

/// Btrfs: the loop-backed image is 256 MiB (on a 1 GiB tmpfs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_store_full_is_a_clear_error() {
    if !privileged("btrfs_store_full_is_a_clear_error") {
        return;
    }
    store_full(hull_runtime::SnapshotStoreConfig {
        backend: hull_runtime::BackendChoice::Btrfs,
        image_bytes: Some(256 << 20),
    })
    .await;
}

async fn store_full(snapshots: hull_runtime::SnapshotStoreConfig) {
    use hull_runtime::{BackendChoice, Runtime, RuntimeConfig};
    let btrfs = snapshots.backend == BackendChoice::Btrfs;
    let dir = hull_testkit::state_dir("hull-f");
    let state = dir.path().join("s");
    std::fs::create_dir(&state).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &state,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(if btrfs { "size=1g" } else { "size=40m" }),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(state.clone());
    let rt = Runtime::open(RuntimeConfig {
        state_dir: state.clone(),
        guest_binary: hull_testkit::guest_binary(),
        defaults: hull_api::Limits::default(),
        snapshots,
        network: Default::default(),
    })
    .await
    .unwrap();
    let big = if btrfs { "300m" } else { "60m" };
    let result = async {
        let a = rt
            .create(CreateSandbox {
                template: Some("busybox".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let sh = |script: &str| {
            let rt = rt.clone();
            let id = a.id.clone();
            let script = script.to_string();
            async move {
                rt.exec(
                    &id,
                    hull_api::ExecRequest {
                        cmd: vec!["/bin/sh".into(), "-c".into(), script],
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
            }
        };
        sh("echo small > /small").await;
        let small = rt.snapshot(&a.id, CreateSnapshot::default()).await.unwrap();
        let r = sh(&format!(
            "head -c {big} /dev/urandom > /big && echo written"
        ))
        .await;
        assert_eq!(r.stdout, "written\n", "{r:?}");
        let e = rt
            .snapshot(&a.id, CreateSnapshot::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ResourceExhausted, "{e:?}");
        // Still running and not frozen.
        assert_eq!(rt.get(&a.id).await.unwrap().state, SandboxState::Running);
        assert_eq!(sh("echo alive").await.stdout, "alive\n");
        // Only the earlier snapshot is listed, and it still works.
        let list = rt.list_snapshots(&BTreeMap::new()).await.unwrap();
        assert_eq!(list.iter().map(|s| &s.id).collect::<Vec<_>>(), [&small.id]);
        let b = rt
            .create(CreateSandbox {
                from: Some(small.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let r = rt
            .exec(
                &b.id,
                hull_api::ExecRequest {
                    cmd: vec!["cat".into(), "/small".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(r.stdout, "small\n");
        // Nothing staged is left behind to fill the store further.
        let tmp = if btrfs {
            "snapshots/btrfs/tmp"
        } else {
            "snapshots/overlay/tmp"
        };
        let staged = std::fs::read_dir(state.join(tmp))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(staged, 0, "staging left behind");
    }
    .await;
    rt.system_reset().await.unwrap();
    rt.shutdown().await;
    drop(rt);
    result
}
