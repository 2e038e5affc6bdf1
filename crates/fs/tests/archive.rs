//! `hull_fs::archive`: layers applied in both whiteout modes, hostile
//! archives, OCI and `docker save` images, exports of layer stacks
//! round-tripped through real overlay mounts, and the snapshot stream.
//!
//! Every archive is built here with the `tar` crate (raw header fields
//! where a hostile name needs them). Applying a layer sets owners, makes
//! device nodes for whiteouts and reads trusted xattrs, so nearly every
//! test needs root: they skip with a message without it, and fail when
//! `HULL_TEST_PRIVILEGED=1`. Scratch directories live under /var/tmp.
//!
//! Every hostile case checks the error's message and kind and that nothing
//! was written outside the destination: each scene is a scratch directory
//! holding `dest/` and `outside/sentinel`, and must hold nothing else
//! afterwards.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_api::ErrorKind;
use hull_fs::archive::{
    ArchiveError, IdMap, ImportProgress, LayerStats, Limits, SnapshotManifest, Whiteouts,
    apply_layer, export_snapshot, import_image, import_snapshot, prune_whiteouts, write_layers,
};
use hull_fs::snapshot::Mount;
use hull_fs::snapshot::testsuite::{
    Detail, Entry, Mounted, Tree, assert_trees_eq, privileged, tree,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tar::EntryType;

const IDS: IdMap = IdMap {
    offset: 100_000,
    range: 65_536,
};
const ROOT: (u32, u32) = (100_000, 100_000);
const T0: u64 = 1_600_000_000;

// ---------------------------------------------------------------- builders

/// A tar under construction; every name is written raw (so hostile names
/// like `../x` get through), long ones in PAX records.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn entry(
        &mut self,
        path: &str,
        ty: EntryType,
        data: &[u8],
        f: impl FnOnce(&mut tar::Header),
    ) -> &mut Self {
        self.entry_bytes(path.as_bytes(), ty, data, f)
    }

    fn entry_bytes(
        &mut self,
        path: &[u8],
        ty: EntryType,
        data: &[u8],
        f: impl FnOnce(&mut tar::Header),
    ) -> &mut Self {
        if path.len() > 100 {
            self.pax(&[("path", path)]);
        }
        let mut h = tar::Header::new_ustar();
        let n = path.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        h.set_mode(if ty == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(T0);
        f(&mut h);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, EntryType::Directory, b"", |_| {})
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(path, EntryType::Regular, data, |_| {})
    }

    fn link(&mut self, path: &str, ty: EntryType, target: &str) -> &mut Self {
        self.entry(path, ty, b"", |h| {
            let t = target.as_bytes();
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        })
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(path, EntryType::Symlink, target)
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(path, EntryType::Link, target)
    }

    /// A PAX header for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut len = base + base.to_string().len();
            if len.to_string().len() + base != len {
                len = base + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
        h.set_entry_type(EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.0.append(&h, &data[..]).unwrap();
        self
    }

    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zst(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ------------------------------------------------------------------ scenes

/// A scratch directory holding `dest/` and `outside/sentinel`; everything
/// mounted under it is unmounted when dropped.
struct Scene {
    tmp: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

const SENTINEL: &[u8] = b"untouched";

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("hull-archive-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dest = tmp.path().join("dest");
        let outside = tmp.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("sentinel"), SENTINEL).unwrap();
        Scene { tmp, dest, outside }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Nothing but `dest/`, `outside/sentinel` (unchanged) and `extra`.
    fn contained(&self, extra: &[&str]) {
        let top: BTreeSet<String> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut want: BTreeSet<String> = ["dest", "outside"].map(String::from).into();
        want.extend(extra.iter().map(|s| s.to_string()));
        assert_eq!(top, want, "the scratch directory holds something else");
        let out: Vec<String> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(out, ["sentinel"], "something was written outside dest");
        let m = fs::symlink_metadata(self.outside.join("sentinel")).unwrap();
        assert_eq!(m.nlink(), 1, "the sentinel was hardlinked");
        assert_eq!(fs::read(self.outside.join("sentinel")).unwrap(), SENTINEL);
    }

    fn tree(&self) -> Tree {
        tree(&self.dest, Detail::Full)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        hull_sys::mount::unmount_all_under(self.tmp.path());
    }
}

fn apply(dest: &Path, layer: &[u8], mode: Whiteouts) -> Result<LayerStats, ArchiveError> {
    apply_layer(layer, dest, mode, IDS, &Limits::default(), &mut |_| {})
}

/// Apply a hostile layer: it must fail with InvalidArgument and a message
/// holding every one of `wants`, and write nothing outside dest.
fn refused(s: &Scene, layer: &[u8], mode: Whiteouts, limits: &Limits, wants: &[&str]) -> String {
    let e = apply_layer(layer, &s.dest, mode, IDS, limits, &mut |_| {})
        .expect_err("the hostile layer was applied");
    let msg = e.to_string();
    for w in wants {
        assert!(msg.contains(w), "message {msg:?} lacks {w:?}");
    }
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{msg}");
    s.contained(&[]);
    msg
}

fn node<'t>(t: &'t Tree, p: &str) -> &'t hull_fs::snapshot::testsuite::Node {
    t.get(p)
        .unwrap_or_else(|| panic!("{p} is missing; tree: {:#?}", t.keys().collect::<Vec<_>>()))
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", p.display()));
}

fn mknod_whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------- entries

#[test]
fn entry_types_owners_modes_and_times() {
    if !privileged("entry_types_owners_modes_and_times") {
        return;
    }
    let s = Scene::new();
    let mut l = Layer::new();
    l.entry("./", EntryType::Directory, b"", |h| {
        h.set_mode(0o755);
        h.set_mtime(1_500_000_000);
    })
    .entry("bin/", EntryType::Directory, b"", |h| {
        h.set_mtime(1_500_000_001)
    })
    .entry("bin/su", EntryType::Regular, b"#!su", |h| {
        h.set_mode(0o4755)
    })
    .pax(&[("mtime", b"1600000000.123456789")])
    .entry("home/user/notes", EntryType::Regular, b"hello", |h| {
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mode(0o640);
    })
    .entry("bin/sh", EntryType::Symlink, b"", |h| {
        h.as_old_mut().linkname[..12].copy_from_slice(b"/bin/busybox");
        h.set_uid(5);
        h.set_gid(6);
    })
    .hardlink("bin/su2", "bin/su")
    .entry("run/fifo", EntryType::Fifo, b"", |h| h.set_mode(0o620));
    let mut seen = Vec::new();
    let layer = l.done();
    let stats = apply_layer(
        &layer[..],
        &s.dest,
        Whiteouts::Flatten,
        IDS,
        &Limits::default(),
        &mut |b| seen.push(b),
    )
    .unwrap();
    assert_eq!(seen.last(), Some(&(layer.len() as u64)), "{seen:?}");
    assert_eq!(
        (
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.hardlinks,
            stats.fifos
        ),
        (2, 2, 1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.implicit_dirs, 3, "home, home/user, run: {stats:?}");
    assert_eq!(stats.bytes, 9);
    let t = s.tree();
    let root = node(&t, "/");
    assert_eq!(
        (root.mode, root.owner, root.mtime),
        (0o755, Some(ROOT), Some((1_500_000_000, 0)))
    );
    // The directory's time survives the entries made in it afterwards.
    assert_eq!(node(&t, "/bin").mtime, Some((1_500_000_001, 0)));
    let su = node(&t, "/bin/su");
    assert_eq!(
        su.entry,
        Entry::File {
            len: 4,
            hash: su_hash(&t)
        }
    );
    assert_eq!((su.mode, su.owner), (0o4755, Some(ROOT)));
    assert_eq!(node(&t, "/bin/su2").link.as_deref(), Some("/bin/su"));
    let sh = node(&t, "/bin/sh");
    assert_eq!(sh.entry, Entry::Symlink("/bin/busybox".into()));
    assert_eq!(sh.owner, Some((100_005, 100_006)));
    let notes = node(&t, "/home/user/notes");
    assert_eq!(
        (notes.mode, notes.owner, notes.mtime),
        (
            0o640,
            Some((101_000, 101_000)),
            Some((1_600_000_000, 123_456_789))
        )
    );
    assert_eq!(fs::read(s.dest.join("home/user/notes")).unwrap(), b"hello");
    for implicit in ["/home", "/home/user", "/run"] {
        let n = node(&t, implicit);
        assert_eq!(
            (&n.entry, n.mode, n.owner),
            (&Entry::Dir, 0o755, Some(ROOT)),
            "{implicit}"
        );
    }
    let fifo = node(&t, "/run/fifo");
    assert_eq!((&fifo.entry, fifo.mode), (&Entry::Fifo, 0o620));
    s.contained(&[]);
}

fn su_hash(t: &Tree) -> u64 {
    match &node(t, "/bin/su").entry {
        Entry::File { hash, .. } => *hash,
        e => panic!("{e:?}"),
    }
}

#[test]
fn zero_blocks_become_holes() {
    if !privileged("zero_blocks_become_holes") {
        return;
    }
    let s = Scene::new();
    let mut data = vec![0u8; 8 << 20];
    data.extend_from_slice(b"end");
    let mut l = Layer::new();
    l.file("sparse", &data);
    apply(&s.dest, &zst(&l.done()), Whiteouts::Flatten).unwrap();
    let p = s.dest.join("sparse");
    assert_eq!(fs::read(&p).unwrap(), data);
    let m = fs::metadata(&p).unwrap();
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} blocks for a mostly empty file",
        m.blocks()
    );
}

#[test]
fn xattrs_kept_dropped_and_refused() {
    if !privileged("xattrs_kept_dropped_and_refused") {
        return;
    }
    let s = Scene::new();
    let mut l = Layer::new();
    l.pax(&[
        ("SCHILY.xattr.user.note", b"v1"),
        (
            "SCHILY.xattr.security.capability",
            b"\x01\x00\x00\x02\x00\x20\x00\x00\0\0\0\0\0\0\0\0\0\0\0\0",
        ),
        ("SCHILY.xattr.trusted.other", b"t"),
        ("SCHILY.xattr.system.posix_acl_access", b"\x02\0\0\0"),
    ])
    .file("f", b"x")
    .pax(&[("SCHILY.xattr.user.dir", b"d\0bin")])
    .dir("d/")
    .pax(&[("SCHILY.xattr.user.l", b"l")])
    .symlink("l", "f");
    let stats = apply(&s.dest, &l.done(), Whiteouts::Flatten).unwrap();
    assert_eq!(stats.xattrs_dropped, 4, "{stats:?}");
    let t = s.tree();
    assert_eq!(
        node(&t, "/f").xattrs,
        [("user.note".to_string(), b"v1".to_vec())].into()
    );
    assert_eq!(
        node(&t, "/d").xattrs,
        [("user.dir".to_string(), b"d\0bin".to_vec())].into()
    );
    assert!(node(&t, "/l").xattrs.is_empty());

    for (name, entry) in [
        ("SCHILY.xattr.trusted.overlay.opaque", "d2/"),
        ("SCHILY.xattr.user.overlay.redirect", "f2"),
        ("SCHILY.xattr.user.overlay.opaque", "d3/"),
    ] {
        let s = Scene::new();
        let mut l = Layer::new();
        l.file("ok", b"fine").pax(&[(name, b"y")]);
        if entry.ends_with('/') {
            l.dir(entry);
        } else {
            l.file(entry, b"x");
        }
        let attr = name.trim_start_matches("SCHILY.xattr.");
        refused(
            &s,
            &l.done(),
            Whiteouts::Upper,
            &Limits::default(),
            &[&format!("\"{entry}\""), attr, "forge overlay markers"],
        );
    }
}

#[test]
fn ids_are_shifted_or_clamped() {
    if !privileged("ids_are_shifted_or_clamped") {
        return;
    }
    let s = Scene::new();
    let mut l = Layer::new();
    l.entry("a", EntryType::Regular, b"", |h| {
        h.set_uid(7);
        h.set_gid(8);
    })
    .entry("b", EntryType::Regular, b"", |h| {
        h.set_uid(70_000);
        h.set_gid(3);
    })
    .pax(&[("uid", b"4000000000"), ("gid", b"65535")])
    .file("c", b"");
    let stats = apply(&s.dest, &l.done(), Whiteouts::Flatten).unwrap();
    assert_eq!(stats.ids_clamped, 2, "{stats:?}");
    let t = s.tree();
    assert_eq!(node(&t, "/a").owner, Some((100_007, 100_008)));
    assert_eq!(node(&t, "/b").owner, Some((165_534, 100_003)));
    assert_eq!(node(&t, "/c").owner, Some((165_534, 165_535)));

    // A range too small to hold nobody: refused, naming the entry.
    let s = Scene::new();
    let mut l = Layer::new();
    l.file("a", b"")
        .entry("b", EntryType::Regular, b"", |h| h.set_uid(5000));
    let small = IdMap {
        offset: 200_000,
        range: 1000,
    };
    let e = apply_layer(
        &l.done()[..],
        &s.dest,
        Whiteouts::Flatten,
        small,
        &Limits::default(),
        &mut |_| {},
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("\"b\"") && msg.contains("uid 5000") && msg.contains("range of 1000"),
        "{msg}"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    s.contained(&[]);
}

// -------------------------------------------------------------- whiteouts

fn base_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("a/")
        .file("a/f", b"f")
        .file("a/g", b"g")
        .file("b", b"b")
        .dir("d/")
        .file("d/x", b"x")
        .dir("e/")
        .file("e/old", b"old")
        .dir("e/sub/")
        .file("e/sub/deep", b"deep")
        .file("keep", b"keep");
    l.done()
}

fn whiteout_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("a/")
        .file("a/.wh.f", b"")
        .file(".wh.b", b"")
        .file(".wh.d", b"")
        .file(".wh.nothing", b"")
        .dir("e/")
        .file("e/.wh..wh..opq", b"")
        .file("e/new", b"new")
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/123.456", b"aufs");
    l.done()
}

fn paths(t: &Tree) -> Vec<&str> {
    t.keys().map(String::as_str).collect()
}

#[test]
fn whiteouts_flatten_across_layers() {
    if !privileged("whiteouts_flatten_across_layers") {
        return;
    }
    let s = Scene::new();
    apply(&s.dest, &base_layer(), Whiteouts::Flatten).unwrap();
    let stats = apply(&s.dest, &whiteout_layer(), Whiteouts::Flatten).unwrap();
    assert_eq!(
        (stats.whiteouts, stats.opaque_dirs, stats.skipped),
        (4, 1, 2),
        "{stats:?}"
    );
    let t = s.tree();
    assert_eq!(paths(&t), ["/", "/a", "/a/g", "/e", "/e/new", "/keep"]);

    // A third layer: delete a directory, bring back a deleted name as a
    // directory.
    let mut l = Layer::new();
    l.file(".wh.a", b"").dir("b/").file("b/c", b"c");
    apply(&s.dest, &l.done(), Whiteouts::Flatten).unwrap();
    assert_eq!(
        paths(&s.tree()),
        ["/", "/b", "/b/c", "/e", "/e/new", "/keep"]
    );
    s.contained(&[]);
}

#[test]
fn whiteouts_as_an_upper_directory() {
    if !privileged("whiteouts_as_an_upper_directory") {
        return;
    }
    let s = Scene::new();
    apply(&s.dest, &whiteout_layer(), Whiteouts::Upper).unwrap();
    let t = s.tree();
    assert_eq!(
        paths(&t),
        ["/", "/a", "/a/f", "/b", "/d", "/e", "/e/new", "/nothing"]
    );
    for w in ["/a/f", "/b", "/d", "/nothing"] {
        assert_eq!(node(&t, w).entry, Entry::Whiteout, "{w}");
    }
    assert_eq!(
        xattr(&s.dest.join("e"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&s.dest.join("a"), "user.overlay.opaque"), None);

    // The marker before its directory's entry: the entry keeps the mark.
    let s = Scene::new();
    let mut l = Layer::new();
    l.file("d/.wh..wh..opq", b"")
        .pax(&[("SCHILY.xattr.user.note", b"n")])
        .dir("d/")
        .file("d/x", b"x");
    apply(&s.dest, &l.done(), Whiteouts::Upper).unwrap();
    assert_eq!(
        xattr(&s.dest.join("d"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&s.dest.join("d"), "user.note").as_deref(),
        Some(&b"n"[..])
    );
    s.contained(&[]);
}

#[test]
fn upper_layers_stack_like_flattened_ones() {
    if !privileged("upper_layers_stack_like_flattened_ones") {
        return;
    }
    let third = {
        let mut l = Layer::new();
        l.file(".wh.a", b"")
            .dir("b/")
            .file("b/c", b"c")
            .dir("e/")
            .file("e/.wh..wh..opq", b"")
            .file("e/third", b"3")
            .file("keep", b"changed");
        l.done()
    };
    let layers = [base_layer(), whiteout_layer(), third];
    let s = Scene::new();
    for l in &layers {
        apply(&s.dest, l, Whiteouts::Flatten).unwrap();
    }
    let mut flat = s.tree();
    // The lowest layer flattened, the others as upper directories stacked
    // over it by overlayfs.
    let dirs: Vec<PathBuf> = (0..3).map(|i| s.path().join(format!("l{i}"))).collect();
    for (i, (d, l)) in dirs.iter().zip(&layers).enumerate() {
        fs::create_dir(d).unwrap();
        let mode = if i == 0 {
            Whiteouts::Flatten
        } else {
            Whiteouts::Upper
        };
        apply(d, l, mode).unwrap();
    }
    let mut stacked = view(&s, &[&dirs[2], &dirs[1], &dirs[0]], "stacked");
    flat.remove("/");
    stacked.remove("/");
    assert_trees_eq(&stacked, &flat, "upper layers over overlayfs vs flattened");
    assert_eq!(paths(&flat), ["/b", "/b/c", "/e", "/e/third", "/keep"]);
}

#[test]
fn pruning_drops_only_whiteouts_that_hide_nothing() {
    if !privileged("pruning_drops_only_whiteouts_that_hide_nothing") {
        return;
    }
    let s = Scene::new();
    let (upper, lower) = (s.path().join("upper"), s.path().join("lower"));
    for d in ["keep", "new", "opq", "sub"] {
        fs::create_dir_all(upper.join(d)).unwrap();
    }
    fs::create_dir_all(lower.join("keep")).unwrap();
    fs::create_dir_all(lower.join("opq")).unwrap();
    fs::write(lower.join("keep/x"), b"x").unwrap();
    fs::write(lower.join("opq/y"), b"y").unwrap();
    fs::write(lower.join("sub"), b"a file below a directory").unwrap();
    mknod_whiteout(&lower.join("gone"));
    mknod_whiteout(&upper.join("keep/x")); // hides lower's keep/x
    mknod_whiteout(&upper.join("keep/nothing")); // hides nothing
    mknod_whiteout(&upper.join("new/x")); // the lower has no new/
    mknod_whiteout(&upper.join("opq/y")); // under an opaque directory
    set_xattr(&upper.join("opq"), "user.overlay.opaque", b"y");
    mknod_whiteout(&upper.join("sub/z")); // lower's sub is a file
    mknod_whiteout(&upper.join("gone")); // lower's is a whiteout itself
    set_time(&upper.join("keep"), 1_000_000_000, 7);
    assert_eq!(
        prune_whiteouts(&upper, std::slice::from_ref(&lower)).unwrap(),
        5
    );
    let t = tree(&upper, Detail::Full);
    assert_eq!(paths(&t), ["/", "/keep", "/keep/x", "/new", "/opq", "/sub"]);
    assert_eq!(node(&t, "/keep").mtime, Some((1_000_000_000, 7)));
    assert_eq!(node(&t, "/keep/x").entry, Entry::Whiteout);
}

#[test]
fn opaque_markers_in_any_order() {
    if !privileged("opaque_markers_in_any_order") {
        return;
    }
    let l1 = {
        let mut l = Layer::new();
        l.dir("d/")
            .file("d/x", b"x")
            .dir("d/sub/")
            .file("d/sub/y", b"y")
            .file("other", b"o");
        l.done()
    };
    let l2 = {
        let mut l = Layer::new();
        l.file("d/w", b"w").file("d/sub/z", b"z");
        l.done()
    };
    let orders: [&[&str]; 3] = [
        &["d/", "d/.wh..wh..opq", "d/new", "d/sub/", "d/sub/q"],
        &["d/", "d/new", "d/sub/", "d/sub/q", "d/.wh..wh..opq"],
        &["d/", "d/new", "d/.wh..wh..opq", "d/sub/", "d/sub/q"],
    ];
    for order in orders {
        let s = Scene::new();
        apply(&s.dest, &l1, Whiteouts::Flatten).unwrap();
        apply(&s.dest, &l2, Whiteouts::Flatten).unwrap();
        let mut l = Layer::new();
        for p in order {
            if p.ends_with('/') {
                l.entry(p, EntryType::Directory, b"", |h| h.set_mtime(T0 + 50));
            } else {
                l.file(p, p.as_bytes());
            }
        }
        apply(&s.dest, &l.done(), Whiteouts::Flatten).unwrap();
        let t = s.tree();
        assert_eq!(
            paths(&t),
            ["/", "/d", "/d/new", "/d/sub", "/d/sub/q", "/other"],
            "order {order:?}"
        );
        assert_eq!(
            node(&t, "/d").mtime,
            Some((T0 as i64 + 50, 0)),
            "order {order:?}"
        );
        assert_eq!(
            node(&t, "/d/sub").mtime,
            Some((T0 as i64 + 50, 0)),
            "order {order:?}"
        );
        s.contained(&[]);
    }
}

#[test]
fn later_entries_replace_earlier_ones() {
    if !privileged("later_entries_replace_earlier_ones") {
        return;
    }
    let s = Scene::new();
    let outside = s.outside.to_str().unwrap().to_string();
    let mut l = Layer::new();
    l.dir("x/")
        .dir("x/inner/")
        .file("x/inner/file", b"deep")
        .file("y", b"was a file")
        .entry("z", EntryType::Symlink, b"", |h| {
            let t = format!("{outside}/sentinel");
            h.set_link_name(&t).unwrap();
        })
        .entry("w/", EntryType::Directory, b"", |h| {
            h.set_mode(0o700);
            h.set_uid(1);
        })
        .file("w/keep", b"kept")
        .hardlink("h", "y");
    apply(&s.dest, &l.done(), Whiteouts::Flatten).unwrap();
    let mut l = Layer::new();
    l.file("x", b"now a file")
        .dir("y/")
        .file("y/child", b"c")
        .file("z", b"replaces the symlink")
        .entry("w/", EntryType::Directory, b"", |h| {
            h.set_mode(0o750);
            h.set_uid(2);
        })
        .file("h", b"a new inode");
    apply(&s.dest, &l.done(), Whiteouts::Flatten).unwrap();
    let t = s.tree();
    assert_eq!(fs::read(s.dest.join("x")).unwrap(), b"now a file");
    assert_eq!(node(&t, "/y").entry, Entry::Dir);
    assert_eq!(fs::read(s.dest.join("y/child")).unwrap(), b"c");
    assert!(fs::symlink_metadata(s.dest.join("z")).unwrap().is_file());
    assert_eq!(fs::read(s.dest.join("z")).unwrap(), b"replaces the symlink");
    let w = node(&t, "/w");
    assert_eq!((w.mode, w.owner), (0o750, Some((100_002, 100_000))));
    assert_eq!(fs::read(s.dest.join("w/keep")).unwrap(), b"kept");
    assert_eq!(fs::read(s.dest.join("h")).unwrap(), b"a new inode");
    assert_eq!(node(&t, "/h").link, None);
    s.contained(&[]);
}

#[test]
fn plain_gzip_and_zstd_layers_agree() {
    if !privileged("plain_gzip_and_zstd_layers_agree") {
        return;
    }
    let mut l = Layer::new();
    l.dir("etc/")
        .file("etc/hosts", b"127.0.0.1 localhost\n")
        .file("big", &vec![7u8; 3 << 20])
        .symlink("s", "etc/hosts");
    let plain = l.done();
    let mut trees = Vec::new();
    for data in [plain.clone(), gz(&plain), zst(&plain)] {
        let s = Scene::new();
        let mut last = 0;
        apply_layer(
            &data[..],
            &s.dest,
            Whiteouts::Flatten,
            IDS,
            &Limits::default(),
            &mut |b| last = b,
        )
        .unwrap();
        assert_eq!(last, data.len() as u64, "progress ends at the input's size");
        let mut t = s.tree();
        t.remove("/"); // the destination's own directory differs
        trees.push(t);
    }
    assert_trees_eq(&trees[1], &trees[0], "gzip vs plain");
    assert_trees_eq(&trees[2], &trees[0], "zstd vs plain");
}

// ---------------------------------------------------------------- hostile

#[test]
fn traversal_is_refused() {
    if !privileged("traversal_is_refused") {
        return;
    }
    for (path, want) in [
        ("../outside/evil", "'..'"),
        ("a/../../outside/evil", "'..'"),
        ("/../outside/evil", "'..'"),
        ("./..", "'..'"),
    ] {
        let s = Scene::new();
        let mut l = Layer::new();
        l.file("fine", b"ok").file(path, b"evil");
        refused(
            &s,
            &l.done(),
            Whiteouts::Flatten,
            &Limits::default(),
            &[&format!("{path:?}"), want],
        );
    }
    // NUL and over-long names, through PAX.
    let s = Scene::new();
    let mut l = Layer::new();
    l.pax(&[("path", b"a\0b")]).file("x", b"");
    refused(
        &s,
        &l.done(),
        Whiteouts::Flatten,
        &Limits::default(),
        &["NUL"],
    );
    let s = Scene::new();
    let mut l = Layer::new();
    l.file(&"n".repeat(300), b"");
    refused(
        &s,
        &l.done(),
        Whiteouts::Flatten,
        &Limits::default(),
        &["longer than 255 bytes"],
    );
    let s = Scene::new();
    let mut l = Layer::new();
    l.file("a/b/c/d/e", b"");
    let shallow = Limits {
        max_depth: 3,
        ..Limits::default()
    };
    refused(
        &s,
        &l.done(),
        Whiteouts::Flatten,
        &shallow,
        &["\"a/b/c/d/e\"", "max_depth"],
    );
}

#[test]
fn absolute_paths_stay_beneath_dest() {
    if !privileged("absolute_paths_stay_beneath_dest") {
        return;
    }
    let s = Scene::new();
    let evil = s.outside.join("evil");
    let mut l = Layer::new();
    l.file(evil.to_str().unwrap(), b"inside after all")
        .file("/etc/hostname", b"h");
    apply(&s.dest, &l.done(), Whiteouts::Flatten).unwrap();
    let inside = s.dest.join(evil.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside).unwrap(), b"inside after all");
    assert_eq!(fs::read(s.dest.join("etc/hostname")).unwrap(), b"h");
    s.contained(&[]);
}

#[test]
fn symlinks_are_never_written_through() {
    if !privileged("symlinks_are_never_written_through") {
        return;
    }
    let cases: Vec<(String, &str)> = vec![
        ("OUTSIDE".into(), "a/evil"),
        ("..".into(), "a/a/evil"),
        ("/".into(), "a/tmp/evil"),
        ("../outside".into(), "a/evil"),
    ];
    for (target, write) in cases {
        for mode in [Whiteouts::Flatten, Whiteouts::Upper] {
            let s = Scene::new();
            let target = target.replace("OUTSIDE", s.outside.to_str().unwrap());
            let mut l = Layer::new();
            l.entry("a", EntryType::Symlink, b"", |h| {
                h.set_link_name(&target).unwrap()
            })
            .file(write, b"evil");
            refused(
                &s,
                &l.done(),
                mode,
                &Limits::default(),
                &[
                    &format!("{write:?}"),
                    "\"a\" is a symlink",
                    "writing through symlinks is refused",
                ],
            );
            // A whiteout through the symlink deletes nothing outside either.
            let mut l = Layer::new();
            l.entry("b", EntryType::Symlink, b"", |h| {
                h.set_link_name(s.outside.to_str().unwrap()).unwrap()
            })
            .file("b/.wh.sentinel", b"");
            refused(
                &s,
                &l.done(),
                mode,
                &Limits::default(),
                &["\"b\" is a symlink"],
            );
        }
    }
}

#[test]
fn hardlinks_must_name_earlier_entries_beneath_dest() {
    if !privileged("hardlinks_must_name_earlier_entries_beneath_dest") {
        return;
    }
    let cases: [(&str, &str, &[&str]); 5] = [
        ("../outside/sentinel", "h", &["\"h\"", "'..'"]),
        (
            "/etc/passwd",
            "h",
            &["\"h\"", "\"etc/passwd\" does not exist"],
        ),
        ("later", "h", &["\"h\"", "\"later\" does not exist"]),
        ("s/sentinel", "h", &["\"h\"", "symlink"]),
        ("dir", "h", &["\"h\"", "is a directory"]),
    ];
    for (target, name, wants) in cases {
        let s = Scene::new();
        let mut l = Layer::new();
        l.dir("dir/")
            .entry("s", EntryType::Symlink, b"", |h| {
                h.set_link_name(s.outside.to_str().unwrap()).unwrap()
            })
            .hardlink(name, target)
            .file("later", b"too late");
        refused(&s, &l.done(), Whiteouts::Flatten, &Limits::default(), wants);
    }
    // An absolute target that exists beneath dest is fine.
    let s = Scene::new();
    let mut l = Layer::new();
    l.file("etc/passwd", b"root").hardlink("p", "/etc/passwd");
    apply(&s.dest, &l.done(), Whiteouts::Flatten).unwrap();
    assert_eq!(node(&s.tree(), "/p").link.as_deref(), Some("/etc/passwd"));
    s.contained(&[]);
}

#[test]
fn devices_are_refused() {
    if !privileged("devices_are_refused") {
        return;
    }
    for (ty, what) in [
        (EntryType::Char, "character device 1:3"),
        (EntryType::Block, "block device 8:0"),
    ] {
        for mode in [Whiteouts::Flatten, Whiteouts::Upper] {
            let s = Scene::new();
            let mut l = Layer::new();
            l.entry("dev/x", ty, b"", |h| {
                let (maj, min) = if ty == EntryType::Char {
                    (1, 3)
                } else {
                    (8, 0)
                };
                h.set_device_major(maj).unwrap();
                h.set_device_minor(min).unwrap();
            });
            refused(
                &s,
                &l.done(),
                mode,
                &Limits::default(),
                &["\"dev/x\"", "device nodes are refused", what],
            );
        }
    }
    // Not even a would-be whiteout 0/0.
    let s = Scene::new();
    let mut l = Layer::new();
    l.entry("w", EntryType::Char, b"", |_| {});
    refused(
        &s,
        &l.done(),
        Whiteouts::Upper,
        &Limits::default(),
        &["device nodes are refused"],
    );
}

#[test]
fn oversized_extension_headers_fail_at_once() {
    // A PAX header claiming 512 MiB, with nothing behind it: refused from
    // its header alone (no root needed: nothing is written).
    let s = Scene::new();
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
    h.set_entry_type(EntryType::XHeader);
    h.set_size(512 << 20);
    h.set_cksum();
    let mut data = h.as_bytes().to_vec();
    data.extend_from_slice(&[0u8; 4096]);
    let start = Instant::now();
    let msg = refused(
        &s,
        &data,
        Whiteouts::Flatten,
        &Limits::default(),
        &["max_extension_len", "536870912"],
    );
    assert!(start.elapsed() < Duration::from_secs(2), "{msg}");
    // A GNU long name longer than allowed.
    let s = Scene::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut gh = tar::Header::new_gnu();
    gh.set_size(0);
    b.append_data(&mut gh, "n/".repeat(40_000), &b""[..])
        .unwrap();
    let limits = Limits {
        max_extension_len: 64 << 10,
        ..Limits::default()
    };
    refused(
        &s,
        &b.into_inner().unwrap(),
        Whiteouts::Flatten,
        &limits,
        &["max_extension_len"],
    );
}

/// A tar stream of one file of `size` zero bytes, compressed as frames of
/// 1 MiB so that it costs little to build: what a bomb looks like.
fn zero_bomb(size: u64, compress: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path("bomb").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = compress(h.as_bytes());
    let mib = compress(&vec![0u8; 1 << 20]);
    for _ in 0..size >> 20 {
        out.extend_from_slice(&mib);
    }
    out.extend_from_slice(&compress(&[0u8; 1024]));
    out
}

#[test]
fn compression_bombs_fail_quickly() {
    if !privileged("compression_bombs_fail_quickly") {
        return;
    }
    // zstd: 16 GiB of zeros in a few hundred KiB; the default ratio bound
    // stops it after RATIO_FLOOR bytes.
    let s = Scene::new();
    let bomb = zero_bomb(16 << 30, zst);
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let start = Instant::now();
    refused(
        &s,
        &bomb,
        Whiteouts::Flatten,
        &Limits::default(),
        &["\"bomb\"", "max_compression_ratio"],
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );

    // gzip can't expand past ~1032:1, so the byte limit stops it: at the
    // header, before any data is read.
    let s = Scene::new();
    let bomb = zero_bomb(1 << 30, gz);
    let limits = Limits {
        max_bytes: 256 << 20,
        ..Limits::default()
    };
    let start = Instant::now();
    refused(
        &s,
        &bomb,
        Whiteouts::Flatten,
        &limits,
        &["\"bomb\"", "max_bytes", "1073741824"],
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    // A file the default limits refuse outright, from its header alone.
    let s = Scene::new();
    let mut h = tar::Header::new_ustar();
    h.set_path("huge").unwrap();
    h.set_size(65 << 30);
    h.set_cksum();
    let mut plain = h.as_bytes().to_vec();
    plain.extend_from_slice(&[0u8; 4096]);
    refused(
        &s,
        &plain,
        Whiteouts::Flatten,
        &Limits::default(),
        &["\"huge\"", "max_bytes"],
    );
}

#[test]
fn entry_count_is_bounded() {
    if !privileged("entry_count_is_bounded") {
        return;
    }
    let s = Scene::new();
    let mut l = Layer::new();
    for i in 0..200 {
        l.file(&format!("f{i}"), b"");
    }
    let limits = Limits {
        max_entries: 100,
        ..Limits::default()
    };
    refused(
        &s,
        &l.done(),
        Whiteouts::Flatten,
        &limits,
        &["max_entries", "more than 100 entries"],
    );
}

#[test]
fn truncated_archives_are_errors() {
    if !privileged("truncated_archives_are_errors") {
        return;
    }
    let mut l = Layer::new();
    l.file("first", b"1").file("cut", &vec![9u8; 10_000]);
    let full = l.done();
    let s = Scene::new();
    refused(
        &s,
        &full[..1024 + 5000],
        Whiteouts::Flatten,
        &Limits::default(),
        &["truncated", "\"cut\""],
    );
    let s = Scene::new();
    // Cut at an entry boundary: no end-of-archive block.
    refused(
        &s,
        &full[..1024],
        Whiteouts::Flatten,
        &Limits::default(),
        &["truncated", "end-of-archive"],
    );
    let s = Scene::new();
    let z = gz(&full);
    let e = apply_layer(
        &z[..z.len() / 2],
        &s.dest,
        Whiteouts::Flatten,
        IDS,
        &Limits::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, ArchiveError::Truncated(_) | ArchiveError::Corrupt(_)),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    s.contained(&[]);
    let s = Scene::new();
    refused(
        &s,
        b"this is not a tar archive at all",
        Whiteouts::Flatten,
        &Limits::default(),
        &["truncated"],
    );
    let s = Scene::new();
    refused(
        &s,
        &[b'x'; 2048],
        Whiteouts::Flatten,
        &Limits::default(),
        &["checksum"],
    );
}

#[test]
fn misused_names_are_refused() {
    if !privileged("misused_names_are_refused") {
        return;
    }
    let s = Scene::new();
    let mut l = Layer::new();
    l.file("./", b"root as a file");
    refused(
        &s,
        &l.done(),
        Whiteouts::Flatten,
        &Limits::default(),
        &["root of the layer"],
    );
    let s = Scene::new();
    let mut l = Layer::new();
    l.file(".wh.x/y", b"");
    refused(
        &s,
        &l.done(),
        Whiteouts::Flatten,
        &Limits::default(),
        &["\".wh.x/y\"", "used as a directory"],
    );
    let s = Scene::new();
    let mut l = Layer::new();
    l.file("a/.wh.", b"");
    refused(
        &s,
        &l.done(),
        Whiteouts::Upper,
        &Limits::default(),
        &["must name an entry"],
    );
    let s = Scene::new();
    let mut l = Layer::new();
    l.file("f", b"x").file("f/g", b"y");
    refused(
        &s,
        &l.done(),
        Whiteouts::Flatten,
        &Limits::default(),
        &["\"f/g\"", "not a directory"],
    );
}

// ------------------------------------------------------------------ images

struct Blobs(Vec<(String, Vec<u8>)>);

impl Blobs {
    fn add(&mut self, media_type: &str, data: Vec<u8>) -> serde_json::Value {
        let hex = sha(&data);
        let d =
            json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()});
        self.0.push((hex, data));
        d
    }
}

const GZ_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZST_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn config_json(diff_ids: &[String], env: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [env, "PATH=/usr/bin"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "Entrypoint": null,
            "Cmd": ["/bin/sh", "-c", "true"],
            "Labels": {"org.example": "yes"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>()}
    }))
    .unwrap()
}

/// An image's two layers (uncompressed) and a manifest descriptor for them.
fn image(blobs: &mut Blobs, marker: &str) -> serde_json::Value {
    let mut l1 = Layer::new();
    l1.dir("etc/")
        .file("etc/os-release", b"ID=test\n")
        .file("etc/gone", b"x")
        .file(marker, marker.as_bytes());
    let l1 = l1.done();
    let mut l2 = Layer::new();
    l2.file("etc/.wh.gone", b"")
        .file("etc/new", b"new")
        .dir("srv/");
    let l2 = l2.done();
    let d1 = blobs.add(GZ_LAYER, gz(&l1));
    let d2 = blobs.add(ZST_LAYER, zst(&l2));
    let cfg = blobs.add(
        CONFIG,
        config_json(&[sha(&l1), sha(&l2)], &format!("IMAGE={marker}")),
    );
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": cfg, "layers": [d1, d2]
    }))
    .unwrap();
    blobs.add(MANIFEST, manifest)
}

fn oci_archive(index: serde_json::Value, blobs: &Blobs) -> Vec<u8> {
    let mut l = Layer::new();
    l.file("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#)
        .file("index.json", &serde_json::to_vec(&index).unwrap())
        .dir("blobs/")
        .dir("blobs/sha256/");
    for (hex, data) in &blobs.0 {
        l.file(&format!("blobs/sha256/{hex}"), data);
    }
    l.done()
}

fn with_annotation(mut d: serde_json::Value, name: &str) -> serde_json::Value {
    d["annotations"] = json!({
        "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
        "io.containerd.image.name": name,
    });
    d
}

fn import(
    s: &Scene,
    archive: &[u8],
    reference: Option<&str>,
) -> Result<hull_fs::archive::ImageConfig, ArchiveError> {
    let path = s.path().join("image.tar");
    fs::write(&path, archive).unwrap();
    let mut phases = Vec::new();
    let r = import_image(
        &path,
        reference,
        &s.dest,
        IDS,
        &Limits::default(),
        &mut |p| phases.push(p),
    );
    s.contained(&["image.tar"]); // the staging directory is gone
    if r.is_ok() {
        assert!(
            matches!(
                phases.first(),
                Some(ImportProgress::Reading { bytes: 0, .. })
            ),
            "{phases:?}"
        );
        assert!(
            phases
                .iter()
                .any(|p| matches!(p, ImportProgress::Reading { bytes, total } if bytes == total)),
            "{phases:?}"
        );
    }
    r
}

fn check_image(s: &Scene, marker: &str) {
    let t = s.tree();
    let mut want = vec![
        "/".to_string(),
        "/etc".into(),
        "/etc/new".into(),
        "/etc/os-release".into(),
        format!("/{marker}"),
        "/srv".into(),
    ];
    want.sort();
    assert_eq!(paths(&t), want);
    assert_eq!(node(&t, "/etc/os-release").owner, Some(ROOT));
}

#[test]
fn oci_layout_images() {
    if !privileged("oci_layout_images") {
        return;
    }
    let s = Scene::new();
    let mut blobs = Blobs(Vec::new());
    let m = image(&mut blobs, "amd");
    let archive = oci_archive(json!({"schemaVersion": 2, "manifests": [m]}), &blobs);
    let path = s.path().join("image.tar");
    fs::write(&path, &archive).unwrap();
    let mut phases = Vec::new();
    let cfg = import_image(&path, None, &s.dest, IDS, &Limits::default(), &mut |p| {
        phases.push(p)
    })
    .unwrap();
    assert!(
        phases.contains(&ImportProgress::Applying {
            layer: 1,
            layers: 2,
            bytes: 0,
            total: blobs.0[1].1.len() as u64
        }),
        "{phases:?}"
    );
    check_image(&s, "amd");
    assert_eq!(cfg.env, ["IMAGE=amd", "PATH=/usr/bin"]);
    assert_eq!(cfg.workdir.as_deref(), Some("/srv"));
    assert_eq!(cfg.user.as_deref(), Some("1000:1000"));
    assert!(cfg.entrypoint.is_empty());
    assert_eq!(cfg.cmd, ["/bin/sh", "-c", "true"]);
    assert_eq!(
        cfg.labels.get("org.example").map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        (cfg.architecture.as_deref(), cfg.os.as_deref()),
        (Some("amd64"), Some("linux"))
    );
    s.contained(&["image.tar"]);

    // The same archive gzipped, as `docker save | gzip` would.
    let s = Scene::new();
    import(&s, &gz(&archive), None).unwrap();
    check_image(&s, "amd");
}

#[test]
fn nested_indexes_pick_this_platform() {
    if !privileged("nested_indexes_pick_this_platform") {
        return;
    }
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "this test expects an amd64 host"
    );
    let mut blobs = Blobs(Vec::new());
    let mut arm = image(&mut blobs, "arm");
    arm["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
    let mut amd = image(&mut blobs, "amd");
    amd["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let att = blobs.add(
        MANIFEST,
        br#"{"config":{"mediaType":"x","digest":"sha256:00","size":0},"layers":[]}"#.to_vec(),
    );
    let mut att = att;
    att["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    let inner = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [arm, amd, att]}),
    )
    .unwrap();
    let inner = blobs.add(INDEX, inner);
    let s = Scene::new();
    import(
        &s,
        &oci_archive(
            json!({"schemaVersion": 2, "manifests": [inner.clone()]}),
            &blobs,
        ),
        None,
    )
    .unwrap();
    check_image(&s, "amd");

    // Only other platforms: a clear error.
    let mut blobs = Blobs(Vec::new());
    let mut arm = image(&mut blobs, "arm");
    arm["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let mut riscv = image(&mut blobs, "riscv");
    riscv["platform"] = json!({"architecture": "riscv64", "os": "linux"});
    let inner = blobs.add(
        INDEX,
        serde_json::to_vec(&json!({"manifests": [arm, riscv]})).unwrap(),
    );
    let s = Scene::new();
    let e = import(
        &s,
        &oci_archive(json!({"manifests": [inner]}), &blobs),
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("no linux/amd64 image") && e.to_string().contains("linux/riscv64"),
        "{e}"
    );
}

#[test]
fn references_pick_one_of_several_images() {
    if !privileged("references_pick_one_of_several_images") {
        return;
    }
    let mut blobs = Blobs(Vec::new());
    let a = with_annotation(image(&mut blobs, "first"), "docker.io/library/alpha:1");
    let b = with_annotation(
        image(&mut blobs, "second"),
        "registry.example:5000/team/beta:2",
    );
    let archive = oci_archive(json!({"schemaVersion": 2, "manifests": [a, b]}), &blobs);
    let s = Scene::new();
    import(&s, &archive, None).unwrap();
    check_image(&s, "first");
    let s = Scene::new();
    let cfg = import(&s, &archive, Some("registry.example:5000/team/beta:2")).unwrap();
    check_image(&s, "second");
    assert_eq!(cfg.env[0], "IMAGE=second");
    let s = Scene::new();
    import(&s, &archive, Some("alpha:1")).unwrap();
    check_image(&s, "first");
    let s = Scene::new();
    let e = import(&s, &archive, Some("gamma")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().contains("\"gamma\"") && e.to_string().contains("alpha:1"),
        "{e}"
    );
    assert!(names(&s.dest).is_empty());
}

/// A `docker save` archive of one image, its third layer a symlink to the
/// second (docker's way of sharing layers).
fn docker_archive(corrupt_layer: bool) -> Vec<u8> {
    let mut l1 = Layer::new();
    l1.dir("etc/")
        .file("etc/os-release", b"ID=test\n")
        .file("etc/gone", b"x")
        .file("amd", b"amd");
    let l1 = l1.done();
    let mut l2 = Layer::new();
    l2.file("etc/.wh.gone", b"")
        .file("etc/new", b"new")
        .dir("srv/");
    let l2 = l2.done();
    let (h1, h2) = ("1".repeat(64), "2".repeat(64));
    let cfg = config_json(&[sha(&l1), sha(&l2), sha(&l2)], "IMAGE=docker");
    let cfg_hex = sha(&cfg);
    let manifest = json!([{
        "Config": format!("{cfg_hex}.json"),
        "RepoTags": ["example/app:1"],
        "Layers": [format!("{h1}/layer.tar"), format!("./{h2}/layer.tar"), format!("{}/layer.tar", "3".repeat(64))]
    }]);
    let mut l = Layer::new();
    l.file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .file("repositories", br#"{"example/app":{"1":"x"}}"#)
        .file(&format!("{cfg_hex}.json"), &cfg)
        .dir(&format!("{h1}/"))
        .file(&format!("{h1}/VERSION"), b"1.0")
        .file(&format!("{h1}/json"), b"{}")
        .file(&format!("{h1}/layer.tar"), &l1)
        .dir(&format!("{h2}/"));
    if corrupt_layer {
        let mut bad = l2.clone();
        bad[600] ^= 1;
        l.file(&format!("{h2}/layer.tar"), &bad);
    } else {
        l.file(&format!("{h2}/layer.tar"), &l2);
    }
    l.dir(&format!("{}/", "3".repeat(64))).symlink(
        &format!("{}/layer.tar", "3".repeat(64)),
        &format!("../{h2}/layer.tar"),
    );
    l.done()
}

#[test]
fn docker_save_archives() {
    if !privileged("docker_save_archives") {
        return;
    }
    let s = Scene::new();
    let cfg = import(&s, &docker_archive(false), None).unwrap();
    check_image(&s, "amd");
    assert_eq!(cfg.env[0], "IMAGE=docker");
    let s = Scene::new();
    import(&s, &zst(&docker_archive(false)), Some("example/app:1")).unwrap();
    check_image(&s, "amd");
    let s = Scene::new();
    let e = import(&s, &docker_archive(false), Some("example/app:2")).unwrap_err();
    assert!(e.to_string().contains("\"example/app:1\""), "{e}");
    let s = Scene::new();
    let e = import(&s, &docker_archive(true), None).unwrap_err();
    assert!(matches!(e, ArchiveError::DigestMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("is corrupt"), "{e}");
}

#[test]
fn broken_image_archives() {
    if !privileged("broken_image_archives") {
        return;
    }
    let fresh = || {
        let mut blobs = Blobs(Vec::new());
        let m = image(&mut blobs, "amd");
        (blobs, m)
    };
    type Case = (
        &'static str,
        Box<dyn Fn() -> Vec<u8>>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "digest mismatch",
            Box::new(move || {
                let (mut blobs, m) = fresh();
                blobs.0[0].1[20] ^= 0xff; // the first layer's content, under its old name
                oci_archive(json!({"manifests": [m]}), &blobs)
            }),
            &["is corrupt", "hashes to sha256:"],
        ),
        (
            "missing blob",
            Box::new(move || {
                let (mut blobs, m) = fresh();
                blobs.0.remove(1);
                oci_archive(json!({"manifests": [m]}), &blobs)
            }),
            &["blob sha256:", "is missing"],
        ),
        (
            "size mismatch",
            Box::new(move || {
                let (blobs, mut m) = fresh();
                m["size"] = json!(m["size"].as_u64().unwrap() + 1);
                oci_archive(json!({"manifests": [m]}), &blobs)
            }),
            &["bytes, its descriptor says"],
        ),
        (
            "unknown layer media type",
            Box::new(|| {
                let mut blobs = Blobs(Vec::new());
                let layer = blobs.add("application/vnd.example.layer", b"whatever".to_vec());
                let cfg = blobs.add(CONFIG, config_json(&[], "X=1"));
                let m = blobs.add(
                    MANIFEST,
                    serde_json::to_vec(&json!({"config": cfg, "layers": [layer]})).unwrap(),
                );
                oci_archive(json!({"manifests": [m]}), &blobs)
            }),
            &["media type \"application/vnd.example.layer\""],
        ),
        (
            "unknown manifest media type",
            Box::new(move || {
                let (blobs, mut m) = fresh();
                m["mediaType"] = json!("text/plain");
                oci_archive(json!({"manifests": [m]}), &blobs)
            }),
            &["\"text/plain\"", "neither an image manifest nor an index"],
        ),
        (
            "sha512 digest",
            Box::new(move || {
                let (blobs, mut m) = fresh();
                m["digest"] = json!("sha512:abcd");
                oci_archive(json!({"manifests": [m]}), &blobs)
            }),
            &["only sha256"],
        ),
        (
            "a symlink in the archive",
            Box::new(move || {
                let (blobs, m) = fresh();
                let mut a = oci_archive(json!({"manifests": [m]}), &blobs);
                a.truncate(a.len() - 1024);
                let mut l = Layer::new();
                l.symlink("index.json", "/etc/passwd");
                a.extend(l.done());
                a
            }),
            &["\"index.json\"", "only files and directories"],
        ),
        (
            "a device in the archive",
            Box::new(|| {
                let mut l = Layer::new();
                l.entry("dev", EntryType::Char, b"", |_| {});
                l.done()
            }),
            &["only files and directories"],
        ),
        (
            "neither format",
            Box::new(|| {
                let mut l = Layer::new();
                l.file("etc/passwd", b"root");
                l.done()
            }),
            &["neither an OCI image layout", "nor a docker save archive"],
        ),
        (
            "windows image",
            Box::new(|| {
                let mut blobs = Blobs(Vec::new());
                let cfg = blobs.add(
                    CONFIG,
                    br#"{"os":"windows","rootfs":{"diff_ids":[]}}"#.to_vec(),
                );
                let m = blobs.add(
                    MANIFEST,
                    serde_json::to_vec(&json!({"config": cfg, "layers": []})).unwrap(),
                );
                oci_archive(json!({"manifests": [m]}), &blobs)
            }),
            &["\"windows\", not linux"],
        ),
        (
            "traversal inside a layer",
            Box::new(|| {
                let mut blobs = Blobs(Vec::new());
                let mut l = Layer::new();
                l.file("ok", b"").file("../../outside/evil", b"evil");
                let layer = blobs.add(GZ_LAYER, gz(&l.done()));
                let cfg = blobs.add(CONFIG, config_json(&[], "X=1"));
                let m = blobs.add(
                    MANIFEST,
                    serde_json::to_vec(&json!({"config": cfg, "layers": [layer]})).unwrap(),
                );
                oci_archive(json!({"manifests": [m]}), &blobs)
            }),
            &["\"../../outside/evil\" of layer 0 (sha256:", "'..'"],
        ),
        (
            "oversized index.json",
            Box::new(|| {
                let mut l = Layer::new();
                l.file("index.json", &vec![b' '; 5 << 20]);
                l.done()
            }),
            &["\"index.json\"", "JSON documents may have at most"],
        ),
    ];
    for (what, build, wants) in cases {
        let s = Scene::new();
        let e = import(&s, &build(), None).expect_err(what);
        let msg = e.to_string();
        for w in wants {
            assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
        }
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}: {msg}");
    }

    // dest must be an empty directory.
    let s = Scene::new();
    fs::write(s.dest.join("x"), b"").unwrap();
    let e = import(&s, &docker_archive(false), None).unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
}

// -------------------------------------------------------------- exporting

/// The entries of a tar: path -> (type, uid, gid, link target, xattrs).
type Listing = Vec<(
    String,
    EntryType,
    u64,
    u64,
    Option<String>,
    Vec<(String, Vec<u8>)>,
)>;

fn list(tar_bytes: &[u8]) -> Listing {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if let Some(n) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((n.to_string(), x.value_bytes().to_vec()));
                }
            }
        }
        let h = e.header();
        out.push((
            String::from_utf8(e.path_bytes().into_owned()).unwrap(),
            h.entry_type(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            e.link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap()),
            xattrs,
        ));
    }
    out
}

fn export(layers: &[PathBuf], prefix: &str, ids: IdMap) -> Result<Vec<u8>, ArchiveError> {
    let mut b = tar::Builder::new(Vec::new());
    write_layers(layers, prefix, ids, &mut b, &mut |_| {})?;
    Ok(b.into_inner().unwrap())
}

#[test]
fn write_layers_merges_a_stack() {
    if !privileged("write_layers_merges_a_stack") {
        return;
    }
    let s = Scene::new();
    let (near, far) = (s.path().join("near"), s.path().join("far"));
    // The farther layer.
    for d in ["a", "c", "d", "x"] {
        fs::create_dir_all(far.join(d)).unwrap();
    }
    fs::write(far.join("a/x"), b"x").unwrap();
    fs::write(far.join("a/y"), b"y").unwrap();
    fs::write(far.join("b"), b"b was a file").unwrap();
    fs::write(far.join("c/old"), b"old").unwrap();
    fs::write(far.join("d/k"), b"k").unwrap();
    fs::write(far.join("f1"), b"linked").unwrap();
    fs::hard_link(far.join("f1"), far.join("f2")).unwrap();
    fs::write(far.join("x/hidden"), b"hidden by the whiteout").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(far.join("sock")).unwrap();
    // The nearer one.
    for d in ["a", "b", "c"] {
        fs::create_dir_all(near.join(d)).unwrap();
    }
    mknod_whiteout(&near.join("a/x"));
    fs::write(near.join("b/n"), b"n").unwrap();
    set_xattr(&near.join("c"), "user.overlay.opaque", b"y");
    fs::write(near.join("c/new"), b"new").unwrap();
    mknod_whiteout(&near.join("c/zap")); // under an opaque directory: not written
    mknod_whiteout(&near.join("x"));
    mknod_whiteout(&near.join("gone"));
    symlink("c/new", near.join("e")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        near.join("p"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    fs::write(near.join("owned"), b"o").unwrap();
    std::os::unix::fs::lchown(near.join("owned"), Some(100_005), Some(7)).unwrap();
    set_xattr(&near.join("owned"), "user.note", b"kept");
    set_xattr(&near.join("owned"), "user.overlay.origin", b"not exported");
    set_xattr(&near.join("owned"), "trusted.other", b"not exported");

    let out = export(&[near.clone(), far.clone()], "parts/0/", IDS).unwrap();
    let listing = list(&out);
    let got: Vec<(&str, EntryType)> = listing.iter().map(|e| (e.0.as_str(), e.1)).collect();
    assert_eq!(got, expected_export());
    let owned = listing.iter().find(|e| e.0 == "parts/0/owned").unwrap();
    assert_eq!((owned.2, owned.3), (5, u64::from(IdMap::NOBODY)));
    assert_eq!(owned.5, [("user.note".to_string(), b"kept".to_vec())]);
    let f2 = listing.iter().find(|e| e.0 == "parts/0/f2").unwrap();
    assert_eq!(f2.4.as_deref(), Some("parts/0/f1"));
    let e = listing.iter().find(|e| e.0 == "parts/0/e").unwrap();
    assert_eq!(e.4.as_deref(), Some("c/new"));

    // Applied as an upper over the same base, the export is the stack.
    let upper = s.path().join("upper");
    fs::create_dir(&upper).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    write_layers(&[near.clone(), far.clone()], "", IDS, &mut b, &mut |_| {}).unwrap();
    apply(&upper, &b.into_inner().unwrap(), Whiteouts::Upper).unwrap();
    let t = tree(&upper, Detail::Full);
    assert_eq!(node(&t, "/a/x").entry, Entry::Whiteout);
    assert_eq!(node(&t, "/x").entry, Entry::Whiteout);
    assert_eq!(
        xattr(&upper.join("b"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&upper.join("a"), "user.overlay.opaque"), None);
    assert_eq!(node(&t, "/owned").owner, Some((100_005, 165_534)));
    assert_eq!(node(&t, "/f2").link.as_deref(), Some("/f1"));
    assert!(!t.contains_key("/c/zap") && !t.contains_key("/c/old") && !t.contains_key("/sock"));

    // A device node other than a whiteout is refused.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        near.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let e = export(&[near, far], "", IDS).unwrap_err();
    assert!(
        e.to_string().contains("null") && e.to_string().contains("device node"),
        "{e}"
    );
    // Bad prefixes.
    assert!(export(&[], "/abs/", IDS).is_err());
    assert!(export(&[], "no-slash", IDS).is_err());
}

fn expected_export() -> Vec<(&'static str, EntryType)> {
    use EntryType as T;
    // In name order per directory; whiteouts where their names sort.
    vec![
        ("parts/0/", T::Directory),
        ("parts/0/a/", T::Directory),
        ("parts/0/a/.wh.x", T::Regular),
        ("parts/0/a/y", T::Regular),
        ("parts/0/b/", T::Directory),
        ("parts/0/b/.wh..wh..opq", T::Regular),
        ("parts/0/b/n", T::Regular),
        ("parts/0/c/", T::Directory),
        ("parts/0/c/.wh..wh..opq", T::Regular),
        ("parts/0/c/new", T::Regular),
        ("parts/0/d/", T::Directory),
        ("parts/0/d/k", T::Regular),
        ("parts/0/e", T::Symlink),
        ("parts/0/f1", T::Regular),
        ("parts/0/f2", T::Link),
        ("parts/0/.wh.gone", T::Regular),
        ("parts/0/owned", T::Regular),
        ("parts/0/p", T::Fifo),
        ("parts/0/.wh.x", T::Regular),
    ]
}

// ------------------------------------------- round trips through overlayfs

fn overlay(lowers: &[&Path], upper: Option<(&Path, &Path)>, target: &Path) -> Mounted {
    let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let mut options = vec![
        "userxattr".to_string(),
        format!("lowerdir={}", lower.join(":")),
    ];
    match upper {
        Some((u, w)) => {
            options.push(format!("upperdir={}", u.display()));
            options.push(format!("workdir={}", w.display()));
        }
        None => options.insert(0, "ro".into()),
    }
    Mounted::new(
        &[Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options,
        }],
        target,
    )
}

fn set_time(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A base tree and two layers made through real overlay mounts; returns
/// (base, [layer2, layer1]).
fn overlay_stack(s: &Scene) -> (PathBuf, Vec<PathBuf>) {
    let d = s.path();
    let base = d.join("base");
    let w = |p: &Path, data: &[u8]| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    for (p, data) in [
        ("etc/passwd", &b"root:x:0:0\n"[..]),
        ("etc/hosts", b"127.0.0.1 localhost\n"),
        ("usr/bin/tool", b"#!tool"),
        ("var/lib/data/1", b"1"),
        ("var/lib/data/2", b"2"),
        ("opt/app/a", b"a"),
        ("opt/app/b", b"b"),
        ("home/u/f", b"f"),
        ("file_to_dir", b"soon a dir"),
        ("dir_to_file/x", b"x"),
    ] {
        w(&base.join(p), data);
    }
    let mut layers = Vec::new();
    for i in 1..=2 {
        let (u, wk, m) = (
            d.join(format!("u{i}")),
            d.join(format!("w{i}")),
            d.join(format!("m{i}")),
        );
        fs::create_dir(&u).unwrap();
        fs::create_dir(&wk).unwrap();
        // layers holds the layers made so far, nearest first.
        let lowers: Vec<&Path> = layers
            .iter()
            .map(PathBuf::as_path)
            .chain([base.as_path()])
            .collect();
        let mnt = overlay(&lowers, Some((&u, &wk)), &m);
        let r = mnt.path();
        if i == 1 {
            w(&r.join("etc/new"), b"new");
            set_xattr(&r.join("etc/new"), "user.note", b"n");
            fs::remove_file(r.join("etc/hosts")).unwrap();
            fs::remove_dir_all(r.join("var/lib/data")).unwrap();
            fs::create_dir(r.join("var/lib/data")).unwrap();
            w(&r.join("var/lib/data/3"), b"3");
            fs::set_permissions(r.join("home/u"), fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(r.join("home/u"), Some(1000), Some(1000)).unwrap();
            w(&r.join("links/h1"), b"linked");
            fs::hard_link(r.join("links/h1"), r.join("links/h2")).unwrap();
            symlink("../etc/passwd", r.join("links/s")).unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                r.join("links/fifo"),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o640),
                0,
            )
            .unwrap();
            w(&r.join("usr/bin/suid"), b"suid");
            fs::set_permissions(r.join("usr/bin/suid"), fs::Permissions::from_mode(0o4755))
                .unwrap();
            set_time(&r.join("usr/bin/suid"), 1_234_567_890, 987_654_321);
            fs::remove_file(r.join("file_to_dir")).unwrap();
            w(&r.join("file_to_dir/child"), b"c");
            fs::remove_dir_all(r.join("dir_to_file")).unwrap();
            w(&r.join("dir_to_file"), b"now a file");
        } else {
            w(&r.join("etc/new"), b"newer");
            fs::remove_file(r.join("usr/bin/tool")).unwrap();
            fs::remove_dir_all(r.join("opt/app")).unwrap();
            w(&r.join("opt/app2/z"), b"z");
            fs::remove_file(r.join("links/h2")).unwrap();
            w(&r.join("var/lib/data/4"), b"4");
            set_time(&r.join("var/lib/data"), 1_111_111_111, 5);
        }
        drop(mnt);
        layers.insert(0, u);
    }
    (base, layers)
}

fn view(s: &Scene, lowers: &[&Path], name: &str) -> Tree {
    let m = overlay(lowers, None, &s.path().join(name));
    tree(m.path(), Detail::Full)
}

#[test]
fn exports_round_trip_through_overlayfs() {
    if !privileged("exports_round_trip_through_overlayfs") {
        return;
    }
    let s = Scene::new();
    let (base, layers) = overlay_stack(&s);
    let want = view(&s, &[&layers[0], &layers[1], &base], "v1");
    assert!(want.contains_key("/var/lib/data/3") && !want.contains_key("/var/lib/data/1"));
    assert!(!want.contains_key("/etc/hosts") && !want.contains_key("/opt/app"));

    let mut b = tar::Builder::new(Vec::new());
    let bytes = write_layers(&layers, "", IdMap::IDENTITY, &mut b, &mut |_| {}).unwrap();
    assert!(bytes > 0);
    let tar_bytes = b.into_inner().unwrap();
    let upper = s.path().join("imported");
    fs::create_dir(&upper).unwrap();
    apply_layer(
        &tar_bytes[..],
        &upper,
        Whiteouts::Upper,
        IdMap::IDENTITY,
        &Limits::default(),
        &mut |_| {},
    )
    .unwrap();
    // links/h2's whiteout hid a name of the collapsed layers only, in a
    // directory the base lacks: overlayfs would list it.
    assert_eq!(
        prune_whiteouts(&upper, std::slice::from_ref(&base)).unwrap(),
        1
    );
    assert_eq!(
        prune_whiteouts(&upper, std::slice::from_ref(&base)).unwrap(),
        0
    );
    let got = view(&s, &[&upper, &base], "v2");
    assert_trees_eq(&got, &want, "the imported upper over the base");
    assert_eq!(
        node(&got, "/usr/bin/suid").mtime,
        Some((1_234_567_890, 987_654_321))
    );
    assert_eq!(node(&got, "/usr/bin/suid").mode, 0o4755);
    assert_eq!(node(&got, "/var/lib/data").mtime, Some((1_111_111_111, 5)));
    // Flattened onto a copy of the base, it is the same tree too.
    let flat = s.path().join("flat");
    fs::create_dir(&flat).unwrap();
    let mut base_tar = tar::Builder::new(Vec::new());
    write_layers(
        std::slice::from_ref(&base),
        "",
        IdMap::IDENTITY,
        &mut base_tar,
        &mut |_| {},
    )
    .unwrap();
    apply_layer(
        &base_tar.into_inner().unwrap()[..],
        &flat,
        Whiteouts::Flatten,
        IdMap::IDENTITY,
        &Limits::default(),
        &mut |_| {},
    )
    .unwrap();
    apply_layer(
        &tar_bytes[..],
        &flat,
        Whiteouts::Flatten,
        IdMap::IDENTITY,
        &Limits::default(),
        &mut |_| {},
    )
    .unwrap();
    let mut flat_tree = tree(&flat, Detail::Full);
    let mut want_flat = want.clone();
    flat_tree.remove("/");
    want_flat.remove("/");
    assert_trees_eq(&flat_tree, &want_flat, "the export flattened over the base");
}

#[test]
fn snapshot_streams_round_trip() {
    if !privileged("snapshot_streams_round_trip") {
        return;
    }
    let s = Scene::new();
    let (base, layers) = overlay_stack(&s);
    let usr = s.path().join("usr-layer");
    fs::create_dir_all(usr.join("lib")).unwrap();
    fs::write(usr.join("lib/libx.so"), b"elf").unwrap();
    set_xattr(&usr.join("lib/libx.so"), "user.k", b"v");
    let mut manifest = SnapshotManifest::new("base", vec!["/".into(), "/usr".into()]);
    manifest.meta.insert("sandbox".into(), "sb-1".into());
    let mut out = Vec::new();
    let mut progressed = 0;
    let cassette = s.path().join("cassette.hcas");
    let recorded: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&cassette, &recorded).unwrap();
    // Only known attachments, once each.
    for bad in [
        vec![("other.bin", cassette.as_path())],
        vec![
            ("network.hcas", cassette.as_path()),
            ("network.hcas", cassette.as_path()),
        ],
    ] {
        let e = export_snapshot(
            &manifest,
            &[layers.clone(), vec![usr.clone()]],
            &bad,
            IdMap::IDENTITY,
            &mut Vec::new(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("at most once"), "{e}");
    }
    let written = export_snapshot(
        &manifest,
        &[layers.clone(), vec![usr.clone()]],
        &[("network.hcas", cassette.as_path())],
        IdMap::IDENTITY,
        &mut out,
        &mut |b| progressed = b,
    )
    .unwrap();
    assert_eq!(written, out.len() as u64);
    assert!(progressed > 0);
    assert_eq!(&out[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd");

    let staging = s.path().join("staging");
    fs::create_dir(&staging).unwrap();
    let (got, dirs, attached) = import_snapshot(
        &out[..],
        &staging,
        IdMap::IDENTITY,
        &Limits::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(got, manifest);
    let cassette_in = staging.join("attachments/network.hcas");
    assert_eq!(
        attached,
        [("network.hcas".to_string(), cassette_in.clone())]
    );
    assert_eq!(fs::read(&cassette_in).unwrap(), recorded);
    assert_eq!(dirs, [staging.join("part0"), staging.join("part1")]);
    let want = view(&s, &[&layers[0], &layers[1], &base], "v1");
    prune_whiteouts(&dirs[0], std::slice::from_ref(&base)).unwrap();
    let seen = view(&s, &[&dirs[0], &base], "v2");
    assert_trees_eq(&seen, &want, "part 0 over the base");
    let mut t1 = tree(&dirs[1], Detail::Full);
    let mut w1 = tree(&usr, Detail::Full);
    t1.remove("/");
    w1.remove("/");
    assert_trees_eq(&t1, &w1, "part 1");
}

/// A snapshot stream of raw entries (a hostile one, usually).
fn stream(manifest: Option<&[u8]>, build: impl FnOnce(&mut Layer)) -> Vec<u8> {
    let mut l = Layer::new();
    if let Some(m) = manifest {
        l.file("hull-snapshot.json", m);
    }
    build(&mut l);
    zst(&l.done())
}

#[test]
fn hostile_snapshot_streams() {
    if !privileged("hostile_snapshot_streams") {
        return;
    }
    let good =
        serde_json::to_vec(&SnapshotManifest::new("t", vec!["/".into(), "/usr".into()])).unwrap();
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty", stream(None, |_| {}), &["no hull-snapshot.json"]),
        (
            "no manifest",
            stream(None, |l| {
                l.file("parts/0/x", b"");
            }),
            &[
                "first entry must be the file hull-snapshot.json",
                "\"parts/0/x\"",
            ],
        ),
        (
            "manifest later",
            stream(None, |l| {
                l.dir("parts/").file("hull-snapshot.json", b"{}");
            }),
            &["first entry"],
        ),
        (
            "bad json",
            stream(Some(b"{"), |_| {}),
            &["hull-snapshot.json is invalid"],
        ),
        (
            "version 2",
            stream(
                Some(br#"{"format":"hull-snapshot","version":2,"template":"t","parts":["/"]}"#),
                |_| {},
            ),
            &["version 2 is not supported"],
        ),
        (
            "format",
            stream(
                Some(br#"{"format":"other","version":1,"template":"t","parts":["/"]}"#),
                |_| {},
            ),
            &["format \"other\""],
        ),
        (
            "relative part",
            stream(
                Some(br#"{"format":"hull-snapshot","version":1,"template":"t","parts":["usr"]}"#),
                |_| {},
            ),
            &["clean absolute path"],
        ),
        (
            "part out of range",
            stream(Some(&good), |l| {
                l.file("parts/2/x", b"");
            }),
            &["\"parts/2/x\"", "part \"2\" does not exist", "2 part(s)"],
        ),
        (
            "leading zero",
            stream(Some(&good), |l| {
                l.file("parts/01/x", b"");
            }),
            &["does not exist"],
        ),
        (
            "outside parts",
            stream(Some(&good), |l| {
                l.file("etc/passwd", b"");
            }),
            &[
                "\"etc/passwd\"",
                "entries under parts/<n>/",
                "attachments/<name>",
            ],
        ),
        (
            "cross-part hardlink",
            stream(Some(&good), |l| {
                l.file("parts/1/lib", b"")
                    .hardlink("parts/0/h", "parts/1/lib");
            }),
            &["\"parts/0/h\"", "not in part 0"],
        ),
        (
            "traversal",
            stream(Some(&good), |l| {
                l.file("parts/0/../../../outside/evil", b"");
            }),
            &["'..'"],
        ),
        (
            "huge manifest",
            stream(Some(&vec![b' '; 2 << 20]), |_| {}),
            &["at most 1048576"],
        ),
        (
            "unknown attachment",
            stream(Some(&good), |l| {
                l.file("attachments/evil.so", b"x");
            }),
            &["\"attachments/evil.so\"", "unknown attachment"],
        ),
        (
            "attachment in a subdirectory",
            stream(Some(&good), |l| {
                l.file("attachments/x/network.hcas", b"x");
            }),
            &["holds only the files"],
        ),
        (
            "attachment directory entry",
            stream(Some(&good), |l| {
                l.dir("attachments/");
            }),
            &["holds only the files"],
        ),
        (
            "attachment as a symlink",
            stream(Some(&good), |l| {
                l.symlink("attachments/network.hcas", "/etc/shadow");
            }),
            &["must be a regular file"],
        ),
        (
            "attachment twice",
            stream(Some(&good), |l| {
                l.file("attachments/network.hcas", b"a")
                    .file("attachments/network.hcas", b"b");
            }),
            &["appears twice"],
        ),
        (
            "attachment traversal",
            stream(Some(&good), |l| {
                l.file("attachments/../../network.hcas", b"x");
            }),
            &["'..'"],
        ),
    ];
    for (what, data, wants) in cases {
        let s = Scene::new();
        let e = import_snapshot(&data[..], &s.dest, IDS, &Limits::default(), &mut |_| {})
            .expect_err(what);
        let msg = e.to_string();
        for w in wants {
            assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
        }
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}: {msg}");
        assert!(
            names(&s.dest).is_empty(),
            "{what}: the staging directory is not empty again"
        );
        s.contained(&[]);
    }
}
