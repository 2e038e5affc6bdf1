//! Moving files in and out of the store through the runtime: snapshot
//! export and import (to this daemon and to another one), OCI image
//! archives imported as templates, and the refusals around them.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use common::{Kit, privileged};
use hull_api::{CreateSandbox, CreateSnapshot, ErrorKind};
use sha2::Digest;

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

fn staged(kit: &Kit) -> usize {
    std::fs::read_dir(kit.dir.path().join("import"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A snapshot exported and imported, here and into another daemon's state:
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

    // Into another daemon (another machine, as far as ids go).
    let other = Kit::new().await;
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

/// One layer of an OCI image: `(path, content or None for a directory,
/// mode)`, plus symlinks as `("path", Some(b"->target"), 0)`.
fn layer(entries: &[(&str, Option<&[u8]>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        match data {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                h.set_path(path).unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            Some(d) if d.starts_with(b"->") => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, path, std::str::from_utf8(&d[2..]).unwrap())
                    .unwrap();
            }
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(d.len() as u64);
                h.set_path(path).unwrap();
                h.set_cksum();
                b.append(&h, *d).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// An OCI image layout in a tar: gzipped layers, a config with env,
/// workdir, user and cmd.
fn oci_image(layers: &[Vec<u8>], config: serde_json::Value) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(format!("sha256:{}", sha(l)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(l).unwrap();
        let gz = gz.finish().unwrap();
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", sha(&gz)), "size": gz.len()
        }));
        blobs.push((sha(&gz), gz));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": descs
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(),
                        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    })
    .to_string()
    .into_bytes();
    blobs.push((sha(&config), config));
    blobs.push((sha(&manifest), manifest));
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_path(name).unwrap();
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (hex, data) in &blobs {
        add(&format!("blobs/sha256/{hex}"), data);
    }
    b.into_inner().unwrap()
}

/// A two-layer OCI image (busybox in the first, a whiteout and an opaque
/// directory in the second) imported as a template: sandboxes of it see
/// the flattened files and start with the image's env, workdir and user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_image_becomes_a_template() {
    if !privileged("oci_image_becomes_a_template") {
        return;
    }
    let busybox = std::fs::read(hull_fs::BUSYBOX_BINARY).expect("busybox-static is installed");
    let l1 = layer(&[
        ("bin/", None, 0o755),
        ("bin/busybox", Some(&busybox), 0o755),
        ("bin/sh", Some(b"->busybox"), 0),
        ("bin/cat", Some(b"->busybox"), 0),
        ("bin/id", Some(b"->busybox"), 0),
        ("bin/pwd", Some(b"->busybox"), 0),
        ("bin/ls", Some(b"->busybox"), 0),
        ("etc/", None, 0o755),
        (
            "etc/passwd",
            Some(b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n"),
            0o644,
        ),
        ("etc/group", Some(b"root:x:0:\napp:x:1000:\n"), 0o644),
        ("app/", None, 0o755),
        ("app/old", Some(b"old"), 0o644),
        ("cache/", None, 0o755),
        ("cache/a", Some(b"a"), 0o644),
    ]);
    let l2 = layer(&[
        ("app/", None, 0o777),
        ("app/.wh.old", Some(b""), 0o644),
        ("app/new", Some(b"new"), 0o644),
        ("cache/", None, 0o755),
        ("cache/.wh..wh..opq", Some(b""), 0o644),
        ("cache/b", Some(b"b"), 0o644),
    ]);
    let image = oci_image(
        &[l1, l2],
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
    kit.finish().await;
}
