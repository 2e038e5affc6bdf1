//! Moving files in and out of the store through the runtime: snapshot
//! export and import (to this daemon and to another one), OCI image
//! archives imported as templates, and the refusals around them.

mod common;

use std::collections::BTreeMap;

use common::{Kit, privileged};
use hull_api::{CreateSandbox, CreateSnapshot, ErrorKind};
use hull_testkit::oci::{Entry, busybox_layer, image_tar, layer};

fn reader(bytes: Vec<u8>) -> hull_runtime::ByteReader {
    Box::pin(std::io::Cursor::new(bytes))
}

async fn export(kit: &Kit, id: &str) -> Vec<u8> {
    let (_, mut rx) = kit.rt.export_snapshot(id).await.expect("export");
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk.expect("export chunk"));
    }
    out
}

/// Entries in every place an import stages files.
fn staged(kit: &Kit) -> usize {
    [
        "import",
        "snapshots/btrfs/staging",
        "snapshots/overlay/staging",
    ]
    .iter()
    .map(|d| {
        std::fs::read_dir(kit.dir.path().join(d))
            .map(|d| d.count())
            .unwrap_or(0)
    })
    .sum()
}

/// A snapshot exported and imported, here and into another daemon's state
/// with the other store backend:
/// files, a deletion of a template file, a symlink, owners and modes come
/// back; the import has no parent and keeps the name and labels when free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_round_trip() {
    if !privileged("export_import_round_trip") {
        return;
    }
    let kit = Kit::new().await;
    let a = kit.create("busybox").await;
    let r = kit
        .sh(
            &a.id,
            "mkdir -p /data/sub && echo hello > /data/sub/f && chmod 0640 /data/sub/f && \
             chown 1000:1000 /data/sub/f && ln -s sub/f /data/link && rm /etc/hosts && \
             head -c 300000 /dev/urandom > /data/blob && md5sum /data/blob | cut -c1-32",
        )
        .await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let sum = r.stdout.clone();
    let s1 = kit
        .rt
        .snapshot(
            &a.id,
            CreateSnapshot {
                name: None,
                labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
            },
        )
        .await
        .unwrap();
    // A second layer on top: the export merges both.
    let b = kit
        .rt
        .create(CreateSandbox {
            from: Some(s1.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    kit.sh(
        &b.id,
        "echo again > /data/second && rm /data/sub/f.none 2>/dev/null; rm -r /data/sub",
    )
    .await;
    let s2 = kit
        .rt
        .snapshot(
            &b.id,
            CreateSnapshot {
                name: Some("two".into()),
                labels: BTreeMap::from([("k".to_string(), "w".to_string())]),
            },
        )
        .await
        .unwrap();
    assert_eq!(s2.parent.as_deref(), Some(s1.id.as_str()));
    let archive = export(&kit, "two").await;
    assert_eq!(&archive[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");

    // Into another daemon (another machine, as far as ids go) whose store
    // has the other backend.
    let here = kit.rt.host_info().snapshot_store;
    let there = if here.starts_with("btrfs") {
        hull_runtime::BackendChoice::Overlay
    } else {
        hull_runtime::BackendChoice::Btrfs
    };
    let other = Kit::with_backend(there).await;
    assert!(!other.rt.host_info().snapshot_store.starts_with(&here[..5]));
    let imported = other
        .rt
        .import_snapshot(reader(archive.clone()), None)
        .await
        .unwrap();
    assert_eq!(
        imported.name.as_deref(),
        Some("two"),
        "the name is kept when free"
    );
    assert_eq!(imported.parent, None);
    assert_eq!(imported.template, "busybox");
    assert_eq!(imported.labels.get("k").map(String::as_str), Some("w"));
    let c = other
        .rt
        .create(CreateSandbox {
            from: Some("two".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = other
        .sh(
            &c.id,
            "cat /data/second; [ -e /data/sub ] || echo sub-gone; [ -e /etc/hosts ] || echo hosts-gone; \
             readlink /data/link; md5sum /data/blob | cut -c1-32",
        )
        .await;
    assert_eq!(
        r.stdout,
        format!("again\nsub-gone\nhosts-gone\nsub/f\n{sum}"),
        "{r:?}"
    );
    // Importing again here: the name is taken, so the copy has none.
    let again = kit
        .rt
        .import_snapshot(reader(archive.clone()), None)
        .await
        .unwrap();
    assert_eq!(again.name, None);
    // An explicit name that is taken is a conflict, and nothing is kept.
    let before = kit.rt.list_snapshots(&BTreeMap::new()).await.unwrap().len();
    let e = kit
        .rt
        .import_snapshot(reader(archive.clone()), Some("two".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
    assert_eq!(
        kit.rt.list_snapshots(&BTreeMap::new()).await.unwrap().len(),
        before
    );
    // Owners and modes survive the trip (in the first snapshot's tree).
    let one = export(&kit, &s1.id).await;
    let d = other
        .rt
        .import_snapshot(reader(one), Some("one".into()))
        .await
        .unwrap();
    let e2 = other
        .rt
        .create(CreateSandbox {
            from: Some(d.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = other.sh(&e2.id, "stat -c '%u:%g %a' /data/sub/f").await;
    assert_eq!(r.stdout, "1000:1000 640\n", "{r:?}");
    assert_eq!(staged(&kit) + staged(&other), 0, "staging left behind");
    other.finish().await;
    kit.finish().await;
}

/// Hostile or broken snapshot archives: a clear `invalid_argument`, nothing
/// listed, nothing staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_archives_are_refused() {
    if !privileged("bad_snapshot_archives_are_refused") {
        return;
    }
    let kit = Kit::new().await;
    let a = kit.create("busybox").await;
    kit.sh(&a.id, "echo x > /x").await;
    let s = kit
        .rt
        .snapshot(&a.id, CreateSnapshot::default())
        .await
        .unwrap();
    let good = export(&kit, &s.id).await;
    let before = kit.rt.list_snapshots(&BTreeMap::new()).await.unwrap().len();

    // A manifest naming a template this daemon lacks, and one with
    // traversal in an entry: built by hand as the exporter would.
    let manifest = |template: &str| {
        serde_json::json!({
            "format": "hull-snapshot", "version": 1, "template": template,
            "parts": ["/"], "meta": {}
        })
        .to_string()
    };
    let tar_zst = |entries: &[(&str, &[u8])]| {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(if name.ends_with('/') {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
    };
    let mut evil = tar::Builder::new(Vec::new());
    let m = manifest("busybox");
    let mut h = tar::Header::new_gnu();
    h.set_size(m.len() as u64);
    h.set_mode(0o644);
    h.set_path("hull-snapshot.json").unwrap();
    h.set_cksum();
    evil.append(&h, m.as_bytes()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    // set_path refuses `..`; write the name bytes directly.
    h.as_gnu_mut().unwrap().name[..22].copy_from_slice(b"parts/0/../../../evil\0");
    h.set_cksum();
    evil.append(&h, &b"evil"[..]).unwrap();
    let evil = zstd::encode_all(&evil.into_inner().unwrap()[..], 3).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), ""),
        ("garbage", b"not an archive at all".repeat(100), ""),
        ("truncated", good[..good.len() / 2].to_vec(), ""),
        (
            "unknown template",
            tar_zst(&[("hull-snapshot.json", manifest("nonesuch").as_bytes())]),
            "nonesuch",
        ),
        (
            "no manifest",
            tar_zst(&[("parts/0/", b""), ("parts/0/x", b"x")]),
            "hull-snapshot.json",
        ),
        ("traversal", evil, ".."),
    ];
    for (what, bytes, says) in cases {
        let e = kit
            .rt
            .import_snapshot(reader(bytes), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{what}: {e:?}");
        assert!(e.message.contains(says), "{what}: {}", e.message);
    }
    assert!(!kit.dir.path().join("evil").exists());
    assert_eq!(
        kit.rt.list_snapshots(&BTreeMap::new()).await.unwrap().len(),
        before
    );
    assert_eq!(staged(&kit), 0, "staging left behind");
    for bad in ["import", "Not-A-Label", ""] {
        let e = kit
            .rt
            .import_snapshot(reader(good.clone()), Some(bad.into()))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}: {e:?}");
    }
    let e = kit.rt.export_snapshot("nonesuch").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    kit.finish().await;
}

/// A three-layer OCI image (busybox, then files, then a whiteout and an
/// opaque directory) imported as a template: sandboxes of it see
/// the flattened files and start with the image's env, workdir and user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_image_becomes_a_template() {
    if !privileged("oci_image_becomes_a_template") {
        return;
    }
    let busybox = std::fs::read(hull_fs::BUSYBOX_BINARY).expect("busybox-static is installed");
    let l1 = busybox_layer(&busybox, &["sh", "cat", "id", "pwd", "ls"]);
    let l2 = layer(&[
        Entry::Dir("etc/", 0o755),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n",
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
        Entry::Dir("app/", 0o755),
        Entry::File("app/old", b"old", 0o644),
        Entry::Dir("cache/", 0o755),
        Entry::File("cache/a", b"a", 0o644),
    ]);
    let l3 = layer(&[
        Entry::Dir("app/", 0o777),
        Entry::File("app/.wh.old", b"", 0o644),
        Entry::File("app/new", b"new", 0o644),
        Entry::Dir("cache/", 0o755),
        Entry::File("cache/.wh..wh..opq", b"", 0o644),
        Entry::File("cache/b", b"b", 0o644),
    ]);
    let image = image_tar(
        &[l1, l2, l3],
        serde_json::json!({
            "Env": ["PATH=/bin", "GREETING=hello from the image"],
            "WorkingDir": "/app", "User": "1000", "Cmd": ["/bin/sh"]
        }),
    );
    let kit = Kit::new().await;
    let t = kit
        .rt
        .import_template(
            "tiny",
            reader(image.clone()),
            None,
            "oci image tiny.tar".into(),
        )
        .await
        .unwrap();
    assert_eq!(t.name, "tiny");
    let cfg = t.config.clone().unwrap();
    assert_eq!(cfg.workdir.as_deref(), Some("/app"));
    assert_eq!(cfg.user.as_deref(), Some("1000"));
    assert_eq!(cfg.cmd, ["/bin/sh"]);
    let listed = kit.rt.templates().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|x| x.name == "tiny" && x.config.is_some())
    );

    let sb = kit
        .rt
        .create(CreateSandbox {
            template: Some("tiny".into()),
            env: BTreeMap::from([("EXTRA".to_string(), "1".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sb.template, "scratch");
    let r = kit
        .sh(
            &sb.id,
            "echo $GREETING $EXTRA; pwd; id -u; ls /app; ls /cache; cat /app/new",
        )
        .await;
    assert_eq!(
        r.stdout, "hello from the image 1\n/app\n1000\nnew\nb\nnew",
        "{r:?}"
    );
    // Snapshots of its sandboxes keep the image's defaults.
    kit.sh(&sb.id, "echo mine > /app/mine").await;
    let s = kit
        .rt
        .snapshot(&sb.id, CreateSnapshot::default())
        .await
        .unwrap();
    let sb2 = kit
        .rt
        .create(CreateSandbox {
            from: Some(s.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = kit.sh(&sb2.id, "pwd; cat mine").await;
    assert_eq!(r.stdout, "/app\nmine\n", "{r:?}");

    // The same name again, a built-in's, a reserved one: refused.
    for (name, kind) in [
        ("tiny", ErrorKind::Conflict),
        ("busybox", ErrorKind::Conflict),
        ("build", ErrorKind::InvalidArgument),
        ("UPPER", ErrorKind::InvalidArgument),
    ] {
        let e = kit
            .rt
            .import_template(name, reader(image.clone()), None, "x".into())
            .await
            .unwrap_err();
        assert_eq!(e.kind, kind, "{name}: {e:?}");
    }
    // Its snapshot can't be deleted while it is a template.
    let e = kit
        .rt
        .delete_snapshot(t.snapshot.as_deref().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    // A broken archive: refused, nothing added, nothing staged.
    let mut broken = image.clone();
    let n = broken.len();
    broken.truncate(n / 2);
    let e = kit
        .rt
        .import_template("broken", reader(broken), None, "x".into())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e:?}");
    assert!(
        !kit.rt
            .templates()
            .await
            .unwrap()
            .iter()
            .any(|x| x.name == "broken")
    );
    assert_eq!(staged(&kit), 0);

    // Removing the template deletes its files, once nothing uses them.
    let e = kit.rt.remove_template("tiny").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
    assert!(e.message.contains(&sb.id), "{}", e.message);
    for id in [&sb.id, &sb2.id] {
        kit.rt.destroy(id).await.unwrap();
    }
    let e = kit.rt.remove_template("tiny").await.unwrap_err();
    assert!(e.message.contains(&s.id), "snapshots on top: {}", e.message);
    kit.rt.delete_snapshot(&s.id).await.unwrap();
    kit.rt.remove_template("tiny").await.unwrap();
    let ids: Vec<String> = kit
        .rt
        .list_snapshots(&BTreeMap::new())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(!ids.contains(t.snapshot.as_ref().unwrap()), "{ids:?}");
    kit.finish().await;
}

/// The one real Debian build of a CI run: `minbase` bookworm plus `hello`
/// through the daemon, with progress events, then a sandbox of it runs
/// `hello`. Skips without mmdebstrap or the mirror (fails instead under
/// `HULL_TEST_PRIVILEGED=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_template_build_end_to_end() {
    let test = "debian_template_build_end_to_end";
    if !privileged(test) {
        return;
    }
    let strict = std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1");
    let mirror = hull_fs::debian::default_mirror();
    let ready = hull_fs::debian::mmdebstrap_available()
        .map_err(|e| e.to_string())
        .and_then(|_| hull_fs::debian::probe_mirror(&mirror, "bookworm"));
    if let Err(why) = ready {
        assert!(!strict, "{test}: {why}");
        eprintln!("SKIP {test}: {why}");
        return;
    }
    let kit = Kit::new().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut phases = Vec::new();
        let mut progress = 0;
        while let Some(ev) = rx.recv().await {
            match ev {
                hull_api::BuildEvent::Phase { phase } => phases.push(phase),
                hull_api::BuildEvent::Progress { .. } => progress += 1,
                _ => {}
            }
        }
        (phases, progress)
    });
    let started = std::time::Instant::now();
    let t = kit
        .rt
        .build_template(
            hull_api::BuildTemplate {
                name: "deb".into(),
                debian: "bookworm".into(),
                packages: vec!["hello".into()],
                mirror: None,
            },
            tx,
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        )
        .await
        .expect("the build");
    eprintln!("built in {:.1} s", started.elapsed().as_secs_f64());
    let (phases, progress) = collect.await.unwrap();
    assert!(phases.iter().any(|p| p.contains("download")), "{phases:?}");
    assert!(phases.iter().any(|p| p == "importing"), "{phases:?}");
    assert!(progress > 0);
    let cfg = t.config.clone().unwrap();
    assert!(cfg.source.unwrap().contains("bookworm"));
    let sb = kit
        .rt
        .create(CreateSandbox {
            template: Some("deb".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = kit
        .sh(
            &sb.id,
            "hello; cut -c1-3 /etc/debian_version; id -un; apt-get --version | head -c 3",
        )
        .await;
    assert_eq!(r.stdout, "Hello, world!\n12.\nroot\napt", "{r:?}");
    // The same name again is refused before anything runs.
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let e = kit
        .rt
        .build_template(
            hull_api::BuildTemplate {
                name: "deb".into(),
                debian: "bookworm".into(),
                ..Default::default()
            },
            tx,
            Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    assert_eq!(staged(&kit), 0);
    kit.finish().await;
}
