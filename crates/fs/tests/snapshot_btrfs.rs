//! The `btrfs` snapshotter: the shared conformance suite (one test per
//! case, in the `btrfs` module), each case on a sparse loop-backed btrfs
//! image of its own in its scratch directory under /var/tmp (`open` mounts
//! it at the store's root, the suite's `close` hook unmounts it, which
//! frees the loop device), plus what only this backend has.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_fs::snapshot::btrfs::BtrfsSnapshotter;
use hull_fs::snapshot::testsuite::{Mounted, privileged};
use hull_fs::snapshot::{
    BackendChoice, Labels, Mount, SnapshotError, Snapshotter, open_auto, open_with,
};
use hull_sys::btrfs::{self as kernel, LoopImage};

const MIB: u64 = 1 << 20;

/// Big enough for every case (mkfs.btrfs needs about 109 MiB).
const IMAGE_BYTES: u64 = 256 * MIB;

/// Mount a loop-backed btrfs image (`<root>.img`, made on first use) at
/// `root` and open the store there.
fn open_on_image(root: &Path) -> Result<Box<dyn Snapshotter>, SnapshotError> {
    LoopImage::ensure(&root.with_extension("img"), IMAGE_BYTES, root)?;
    Ok(Box::new(BtrfsSnapshotter::open(root)?))
}

/// Unmount the image mounted at `root` (lazily if it is busy).
fn release_image(root: &Path) {
    if let Err(e) = kernel::unmount(root) {
        eprintln!("unmounting {}: {e}; detaching lazily", root.display());
        let _ = nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH);
    }
}

hull_fs::snapshot_conformance!(
    btrfs,
    scratch = "/var/tmp",
    open = open_on_image,
    close = release_image,
    open_needs_root = true,
);

/// A scratch directory under /var/tmp. Dropping it unmounts everything
/// under it (loop-backed images included, which frees their loop devices)
/// and deletes it, also when the test fails.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(tag: &str) -> Self {
        Scratch(
            tempfile::Builder::new()
                .prefix(&format!("hull-snap-btrfs-{tag}-"))
                .tempdir_in("/var/tmp")
                .unwrap(),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// The store's root, `<dir>/store`.
    fn root(&self) -> PathBuf {
        self.path().join("store")
    }

    /// A btrfs image of `size` bytes mounted at [`Self::root`].
    fn image(&self, size: u64) -> LoopImage {
        let li = LoopImage::ensure(&self.path().join("store.img"), size, &self.root()).unwrap();
        assert!(li.formatted() || li.already_mounted());
        li
    }

    /// A store on a fresh image.
    fn store(&self, size: u64) -> BtrfsSnapshotter {
        self.image(size);
        BtrfsSnapshotter::open(&self.root()).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in hull_sys::mount::mounts_under(self.0.path()) {
            if nix::mount::umount2(&m, nix::mount::MntFlags::empty()).is_err() {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn none() -> Labels {
    Labels::new()
}

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// The subvolume of an active or view snapshot (its bind mount's source).
fn source(mounts: &[Mount]) -> PathBuf {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].fstype, "bind");
    PathBuf::from(&mounts[0].source)
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("{}: {name}: {e}", p.display()),
    }
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn whiteout(p: &Path) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    nix::sys::stat::mknod(
        p,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Every subvolume under `dir`, `dir` itself excluded.
fn subvolumes_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            if m.ino() == kernel::SUBVOLUME_ROOT_INO {
                out.push(p.clone());
            }
            out.extend(subvolumes_under(&p));
        }
    }
    out
}

/// Backing files of loop devices under `dir` (`/sys/block/loop*/loop`).
fn loops_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").unwrap() {
        let b = e.unwrap().path().join("loop/backing_file");
        if let Ok(f) = fs::read_to_string(&b)
            && Path::new(f.trim()).starts_with(dir)
        {
            out.push(f.trim().to_string());
        }
    }
    out
}

/// Run `f` on a thread whose effective capabilities lack CAP_SYS_ADMIN
/// (capabilities are per thread), so nothing can be mounted.
fn without_sys_admin<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            use caps::{CapSet, Capability};
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// Active snapshots are writable subvolumes; committing makes the same
/// subvolume read-only in place; views and `commit_from_dir` snapshots are
/// read-only subvolumes; each lives at `snapshots/<id>`; opening the store
/// sets every subvolume's flag from its kind.
#[test]
fn committed_snapshots_are_read_only_subvolumes() {
    if !privileged("committed_snapshots_are_read_only_subvolumes") {
        return;
    }
    let s = Scratch::new("ro");
    let store = s.store(IMAGE_BYTES);
    let snapshots = store.root().join("snapshots");
    let sub = |p: &Path| -> (bool, bool) {
        (
            kernel::is_subvolume(p).unwrap(),
            kernel::is_readonly(p).unwrap(),
        )
    };

    let m = store.prepare("a", None, &none()).unwrap();
    assert!(!m[0].is_readonly());
    let a = source(&m);
    assert_eq!(a.parent(), Some(snapshots.as_path()));
    assert_eq!(
        sub(&a),
        (true, false),
        "an active snapshot is a writable subvolume"
    );
    assert_eq!(fs::metadata(&a).unwrap().mode() & 0o7777, 0o755);
    write(&a.join("f"), b"one");

    store.commit("c", "a", &none()).unwrap();
    assert_eq!(
        store.layers("c").unwrap(),
        vec![a.clone()],
        "committed in place"
    );
    assert_eq!(sub(&a), (true, true), "a committed snapshot is read-only");
    let e = fs::write(a.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(nix::errno::Errno::EROFS as i32));

    let m = store.view("v", Some("c"), &none()).unwrap();
    assert!(m[0].is_readonly());
    let v = source(&m);
    assert_ne!(v, a);
    assert_eq!(sub(&v), (true, true), "a view is a read-only snapshot");
    assert_eq!(fs::read(v.join("f")).unwrap(), b"one");
    let empty = source(&store.view("empty", None, &none()).unwrap());
    assert_eq!(sub(&empty), (true, true));
    assert!(names(&empty).is_empty());

    let b = source(&store.prepare("b", Some("c"), &none()).unwrap());
    assert_eq!(sub(&b), (true, false), "a child is a writable snapshot");
    write(&b.join("f"), b"two");
    assert_eq!(
        fs::read(a.join("f")).unwrap(),
        b"one",
        "the parent is untouched"
    );

    let upper = s.path().join("upper");
    write(&upper.join("new"), b"new");
    store
        .commit_from_dir("d", Some("c"), &upper, &none())
        .unwrap();
    let d = store.layers("d").unwrap().remove(0);
    assert_eq!(sub(&d), (true, true));
    assert_eq!(names(&d), ["f", "new"], "a whole tree, not a layer");

    // Flags that disagree with the kinds (a commit killed half-way) are
    // set right by the next open.
    kernel::set_readonly(&b, true).unwrap();
    kernel::set_readonly(&d, false).unwrap();
    drop(store);
    let store = BtrfsSnapshotter::open(&s.root()).unwrap();
    assert_eq!(sub(&b), (true, false));
    assert_eq!(sub(&d), (true, true));
    assert_eq!(store.walk().unwrap().len(), 5);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `prepare` over a 100 MiB parent costs what it costs over a 4-byte one
/// (a subvolume snapshot). Times are printed, not asserted.
#[test]
fn prepare_of_a_large_parent_takes_constant_time() {
    if !privileged("prepare_of_a_large_parent_takes_constant_time") {
        return;
    }
    let s = Scratch::new("big");
    let store = s.store(384 * MIB);
    let small = source(&store.prepare("small-a", None, &none()).unwrap());
    write(&small.join("f"), b"tiny");
    store.commit("small", "small-a", &none()).unwrap();

    let big = source(&store.prepare("big-a", None, &none()).unwrap());
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    let mut f = fs::File::create(big.join("f")).unwrap();
    for _ in 0..100 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    // Committed with its 100 MiB still dirty in the page cache.
    let t = Instant::now();
    store.commit("big", "big-a", &none()).unwrap();
    let commit = t.elapsed();

    // The first snapshot of it writes that data out first.
    let t = Instant::now();
    store.prepare("first", Some("big"), &none()).unwrap();
    let first = t.elapsed();
    let time = |op: &dyn Fn(usize)| -> Duration {
        median(
            (0..5)
                .map(|i| {
                    let t = Instant::now();
                    op(i);
                    t.elapsed()
                })
                .collect(),
        )
    };
    let over_small = time(&|i| {
        drop(
            store
                .prepare(&format!("s{i}"), Some("small"), &none())
                .unwrap(),
        )
    });
    let over_big = time(&|i| {
        drop(
            store
                .prepare(&format!("b{i}"), Some("big"), &none())
                .unwrap(),
        )
    });
    let view_big = time(&|i| drop(store.view(&format!("v{i}"), Some("big"), &none()).unwrap()));
    let remove = time(&|i| store.remove(&format!("b{i}")).unwrap());
    let child = source(&store.prepare("child", Some("big"), &none()).unwrap());
    assert_eq!(fs::metadata(child.join("f")).unwrap().len(), 100 * MIB);
    let t = Instant::now();
    store.commit("child-c", "child", &none()).unwrap();
    let commit_clean = t.elapsed();
    // commit_from_dir of a sandbox-like upper (on a tmpfs) with 10 MiB in
    // 100 files, over the 100 MiB parent: O(bytes in the upper).
    let rw = Mounted::new(
        &[Mount {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["size=64m".into()],
        }],
        &s.path().join("rw"),
    );
    for i in 0..100 {
        write(
            &rw.path().join(format!("d{}/f{i}", i % 10)),
            &chunk[..100 * 1024],
        );
    }
    let from_dir = time(&|i| {
        store
            .commit_from_dir(&format!("u{i}"), Some("big"), rw.path(), &none())
            .unwrap();
    });
    println!(
        "btrfs commit_from_dir of 10 MiB in 100 files over a 100 MiB parent: {from_dir:?} \
         (median of 5)"
    );
    println!(
        "btrfs snapshotter (median of 5): prepare over a 4-byte parent {over_small:?}, over a \
         100 MiB parent {over_big:?} (the first one, which writes the parent's 100 MiB of \
         dirty data out, {first:?}); view of the 100 MiB parent {view_big:?}; remove of an \
         untouched child {remove:?}; commit of an active holding 100 MiB not yet written out \
         {commit:?}, of an untouched one {commit_clean:?}"
    );
}

/// `commit_from_dir` applies an upper onto the parent's tree: names the
/// sandbox deleted are removed and a whiteout left in their place (a layer
/// below the store may have them too), and directories that must hide what
/// lies below the store keep or get the opaque marker, so stacked over a
/// "host" directory the snapshot shows what the sandbox saw; overlayfs's
/// own xattrs are dropped (escaped ones unescaped).
#[test]
fn commit_from_dir_keeps_the_whiteouts_the_parent_needs() {
    if !privileged("commit_from_dir_keeps_the_whiteouts_the_parent_needs") {
        return;
    }
    let s = Scratch::new("apply");
    let store = s.store(IMAGE_BYTES);
    let base = source(&store.prepare("base-a", None, &none()).unwrap());
    write(&base.join("has/file"), b"mine");
    write(&base.join("has/other"), b"other");
    write(&base.join("has-dir/x/y"), b"y");
    write(&base.join("replaced/old"), b"old");
    write(&base.join("file-then-dir"), b"file");
    write(&base.join("plain/keep"), b"keep");
    write(&base.join("old-opaque/inside"), b"inside");
    set_xattr(&base.join("old-opaque"), "user.overlay.opaque", b"y");
    whiteout(&base.join("wh"));
    store.commit("base", "base-a", &none()).unwrap();

    let up = s.path().join("upper");
    whiteout(&up.join("has/file"));
    whiteout(&up.join("has/absent"));
    whiteout(&up.join("has-dir"));
    write(&up.join("replaced/new"), b"new");
    set_xattr(&up.join("replaced"), "user.overlay.opaque", b"y");
    write(&up.join("fresh-opaque/a"), b"a");
    whiteout(&up.join("fresh-opaque/gone"));
    set_xattr(&up.join("fresh-opaque"), "user.overlay.opaque", b"y");
    write(&up.join("trusted-opaque/t"), b"t");
    set_xattr(&up.join("trusted-opaque"), "trusted.overlay.opaque", b"y");
    write(&up.join("file-then-dir/n"), b"n");
    write(&up.join("old-opaque/again"), b"again");
    set_xattr(&up.join("old-opaque"), "user.overlay.opaque", b"y");
    write(&up.join("plain/new"), b"new");
    set_xattr(&up.join("plain"), "user.note", b"from the upper");
    set_xattr(&up.join("plain"), "user.overlay.impure", b"y");
    fs::set_permissions(up.join("plain"), fs::Permissions::from_mode(0o700)).unwrap();
    whiteout(&up.join("new-dir/hidden"));
    write(&up.join("wh"), b"now a file");
    write(&up.join("x"), b"x");
    set_xattr(&up.join("x"), "user.keep", b"k");
    set_xattr(&up.join("x"), "user.overlay.origin", b"\x00fh");
    set_xattr(&up.join("x"), "user.overlay.overlay.note", b"escaped");

    store
        .commit_from_dir("snap", Some("base"), &up, &none())
        .unwrap();
    let t = store.layers("snap").unwrap().remove(0);
    let opaque = |p: &str| xattr(&t.join(p), "user.overlay.opaque");
    let y = Some(b"y".to_vec());
    // A whiteout in place of what the parent had, and where it had nothing.
    assert!(is_whiteout(&t.join("has/file")));
    assert!(is_whiteout(&t.join("has/absent")));
    assert_eq!(names(&t.join("has")), ["absent", "file", "other"]);
    assert!(is_whiteout(&t.join("has-dir")));
    // Opaque over the parent's plain directory: replaced, and marked.
    assert_eq!(names(&t.join("replaced")), ["new"]);
    assert_eq!(opaque("replaced"), y);
    // Opaque where the parent has none: the marker stays, and nothing
    // below needs a whiteout.
    assert_eq!(names(&t.join("fresh-opaque")), ["a"]);
    assert_eq!(opaque("fresh-opaque"), y);
    assert_eq!(names(&t.join("trusted-opaque")), ["t"]);
    assert_eq!(opaque("trusted-opaque"), y);
    assert_eq!(
        xattr(&t.join("trusted-opaque"), "trusted.overlay.opaque"),
        None
    );
    // A directory replacing a file, or an opaque one, must hide below.
    assert!(t.join("file-then-dir").is_dir());
    assert_eq!(names(&t.join("file-then-dir")), ["n"]);
    assert_eq!(opaque("file-then-dir"), y);
    assert_eq!(names(&t.join("old-opaque")), ["again"]);
    assert_eq!(opaque("old-opaque"), y);
    // Merged: the parent's entries stay, the upper's metadata wins.
    assert_eq!(names(&t.join("plain")), ["keep", "new"]);
    assert_eq!(
        xattr(&t.join("plain"), "user.note"),
        Some(b"from the upper".to_vec())
    );
    assert_eq!(xattr(&t.join("plain"), "user.overlay.impure"), None);
    assert_eq!(
        fs::metadata(t.join("plain")).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(opaque("plain"), None);
    // A new plain directory keeps its whiteouts.
    assert!(is_whiteout(&t.join("new-dir/hidden")));
    assert_eq!(opaque("new-dir"), None);
    assert_eq!(fs::read(t.join("wh")).unwrap(), b"now a file");
    assert_eq!(xattr(&t.join("x"), "user.keep"), Some(b"k".to_vec()));
    assert_eq!(xattr(&t.join("x"), "user.overlay.origin"), None);
    assert_eq!(
        xattr(&t.join("x"), "user.overlay.note"),
        Some(b"escaped".to_vec())
    );

    // Stacked over a "host" directory, the way the runtime stacks layers.
    let host = s.path().join("host");
    for p in [
        "has/absent",
        "has/file",
        "fresh-opaque/hostfile",
        "trusted-opaque/h",
        "file-then-dir/h",
        "new-dir/hidden",
        "new-dir/shown",
        "plain/hostonly",
        "replaced/hostfile",
    ] {
        write(&host.join(p), b"host");
    }
    let stacked = Mounted::new(
        &[Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "ro".into(),
                "userxattr".into(),
                format!("lowerdir={}:{}", t.display(), host.display()),
            ],
        }],
        &s.path().join("stacked"),
    );
    let v = stacked.path();
    assert_eq!(names(&v.join("has")), ["other"]);
    assert_eq!(names(&v.join("fresh-opaque")), ["a"]);
    assert_eq!(names(&v.join("trusted-opaque")), ["t"]);
    assert_eq!(names(&v.join("file-then-dir")), ["n"]);
    assert_eq!(names(&v.join("new-dir")), ["shown"]);
    assert_eq!(names(&v.join("plain")), ["hostonly", "keep", "new"]);
    // Names the parent's tree had stay hidden below too.
    assert_eq!(names(&v.join("replaced")), ["new"]);
    drop(stacked);

    // Uppers of overlays with redirect_dir or metacopy are refused, and
    // leave nothing behind.
    let bad = s.path().join("bad");
    write(&bad.join("moved/f"), b"f");
    set_xattr(&bad.join("moved"), "user.overlay.redirect", b"/elsewhere");
    let e = store
        .commit_from_dir("bad", Some("base"), &bad, &none())
        .unwrap_err();
    assert!(matches!(e, SnapshotError::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("redirect"), "{e}");
    assert!(names(&store.root().join("tmp")).is_empty());
    assert!(matches!(
        store.stat("bad"),
        Err(SnapshotError::NotFound { .. })
    ));
}

/// `remove` deletes the subvolume (and subvolumes a sandbox made inside
/// it): removing everything leaves no subvolume in the store.
#[test]
fn remove_leaves_no_subvolume() {
    if !privileged("remove_leaves_no_subvolume") {
        return;
    }
    let s = Scratch::new("rm");
    let store = s.store(IMAGE_BYTES);
    let root = store.root().to_path_buf();
    let a = source(&store.prepare("a", None, &none()).unwrap());
    write(&a.join("f"), b"f");
    // btrfs lets anyone make a subvolume in a directory they can write.
    kernel::create_subvolume(&a, "nested").unwrap();
    write(&a.join("nested/inner"), b"inner");
    store.commit("c", "a", &none()).unwrap();
    let child = source(&store.prepare("child", Some("c"), &none()).unwrap());
    assert!(
        names(&child.join("nested")).is_empty(),
        "a subvolume inside is not part of a snapshot"
    );
    store.view("v", Some("c"), &none()).unwrap();
    let upper = s.path().join("upper");
    write(&upper.join("u"), b"u");
    store
        .commit_from_dir("d", Some("c"), &upper, &none())
        .unwrap();
    assert_eq!(
        subvolumes_under(&root).len(),
        5,
        "a, its nested one, child, v, d"
    );
    for k in ["child", "v", "d", "c"] {
        store.remove(k).unwrap();
    }
    assert!(store.walk().unwrap().is_empty());
    assert_eq!(subvolumes_under(&root), Vec::<PathBuf>::new());
    assert!(names(&root.join("snapshots")).is_empty());
    assert!(names(&root.join("tmp")).is_empty());
    // The filesystem agrees (btrfs-progs' view, when installed).
    if let Ok(out) = std::process::Command::new("btrfs")
        .args(["subvolume", "list"])
        .arg(&root)
        .output()
    {
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "live subvolumes");
    }
}

/// With quotas enabled, `usage` is the qgroup's exclusive bytes: a new
/// file counts; a child made from a parent starts with almost nothing of
/// its own, and the parent's extents are no longer exclusive either.
#[test]
fn usage_from_qgroups_when_quotas_are_enabled() {
    if !privileged("usage_from_qgroups_when_quotas_are_enabled") {
        return;
    }
    let s = Scratch::new("quota");
    let store = s.store(IMAGE_BYTES);
    kernel::quota_enable(store.root()).unwrap();
    let a = source(&store.prepare("a", None, &none()).unwrap());
    let empty = store.usage("a").unwrap();
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    write(&a.join("big"), &data);
    let full = store.usage("a").unwrap();
    assert!(full.bytes >= empty.bytes + 4 * MIB, "{empty:?} -> {full:?}");
    assert_eq!(full.inodes, empty.inodes + 1);
    store.commit("c", "a", &none()).unwrap();
    assert!(store.usage("c").unwrap().bytes >= 4 * MIB);
    store.prepare("child", Some("c"), &none()).unwrap();
    let child = store.usage("child").unwrap();
    let parent = store.usage("c").unwrap();
    println!("usage with qgroups: {empty:?} -> {full:?}; child {child:?}; parent then {parent:?}");
    assert!(child.bytes < MIB, "{child:?}");
    assert!(parent.bytes < MIB, "shared with the child now: {parent:?}");
}

/// Auto on this host's ext4 makes a loop-backed image at
/// `<root>/btrfs.img`, mounted at `<root>/btrfs`, and finds it again;
/// `release` unmounts it and frees the loop device.
#[test]
fn open_auto_on_ext4_uses_a_loop_image() {
    if !privileged("open_auto_on_ext4_uses_a_loop_image") {
        return;
    }
    let s = Scratch::new("auto");
    let root = s.path().join("state");
    if kernel::is_btrfs(s.path()).unwrap() {
        eprintln!("SKIP: /var/tmp is on btrfs here");
        return;
    }
    let (store, info) = open_with(&root, IMAGE_BYTES, BackendChoice::Auto).unwrap();
    println!("{info}");
    assert_eq!((store.backend(), info.backend), ("btrfs", "btrfs"));
    let img = info.image.clone().expect("a loop image");
    assert_eq!(img.path, root.join("btrfs.img"));
    assert_eq!(img.size_bytes, IMAGE_BYTES);
    assert!(img.formatted);
    assert_eq!(img.mountpoint, root.join("btrfs"));
    assert_eq!(info.root, root.join("btrfs"));
    assert!(kernel::is_btrfs(&info.root).unwrap());
    assert!(info.reason.contains("ext4"), "{}", info.reason);
    assert!(info.to_string().contains("btrfs.img"), "{info}");
    store.prepare("a", None, &none()).unwrap();
    store.commit("c", "a", &none()).unwrap();
    drop(store);

    // Again: the image is found (mounted still), nothing is formatted.
    let (store, again) = open_with(&root, IMAGE_BYTES, BackendChoice::Auto).unwrap();
    assert_eq!(again.backend, "btrfs");
    assert!(!again.image.as_ref().unwrap().formatted);
    assert_eq!(store.walk().unwrap().len(), 1);
    drop(store);
    again.release().unwrap();
    assert!(!hull_sys::mount::is_mountpoint(&img.mountpoint));
    assert!(kernel::loop_devices_backing(&img.path).unwrap().is_empty());

    // Unmounted, it is mounted again, with its snapshots.
    let (store, third) = open_with(&root, IMAGE_BYTES, BackendChoice::Auto).unwrap();
    assert_eq!(third.backend, "btrfs");
    assert_eq!(store.walk().unwrap().len(), 1);
    drop(store);
    third.release().unwrap();
    assert!(kernel::loop_devices_backing(&img.path).unwrap().is_empty());
}

/// Forcing picks the backend; each has its own store under the root; auto
/// then keeps to the store that exists.
#[test]
fn forced_backends_keep_their_own_stores() {
    if !privileged("forced_backends_keep_their_own_stores") {
        return;
    }
    let s = Scratch::new("forced");
    let root = s.path().join("state");
    let (store, info) = open_with(&root, IMAGE_BYTES, BackendChoice::Overlay).unwrap();
    assert_eq!((store.backend(), info.backend), ("overlay", "overlay"));
    assert_eq!(info.root, root.join("overlay"));
    assert!(info.image.is_none());
    assert!(info.reason.contains("forced"), "{}", info.reason);
    store.prepare("in-overlay", None, &none()).unwrap();
    drop(store);
    // Auto keeps to the overlay store it finds.
    let (store, info) = open_with(&root, IMAGE_BYTES, BackendChoice::Auto).unwrap();
    assert_eq!(info.backend, "overlay");
    assert!(info.reason.contains("already exists"), "{}", info.reason);
    drop(store);

    let (store, info) = open_with(&root, IMAGE_BYTES, BackendChoice::Btrfs).unwrap();
    assert_eq!((store.backend(), info.backend), ("btrfs", "btrfs"));
    assert!(store.walk().unwrap().is_empty(), "a store of its own");
    store.prepare("in-btrfs", None, &none()).unwrap();
    drop(store);
    // With both there, auto takes btrfs.
    let (store, auto) = open_with(&root, IMAGE_BYTES, BackendChoice::Auto).unwrap();
    assert_eq!(auto.backend, "btrfs");
    assert_eq!(store.walk().unwrap()[0].key, "in-btrfs");
    drop(store);
    info.release().unwrap();
    let (store, _) = open_with(&root, IMAGE_BYTES, BackendChoice::Overlay).unwrap();
    assert_eq!(store.walk().unwrap()[0].key, "in-overlay");
}

/// On a root that is on btrfs, the btrfs store is a plain directory in it.
#[test]
fn open_auto_on_btrfs_uses_a_directory() {
    if !privileged("open_auto_on_btrfs_uses_a_directory") {
        return;
    }
    let s = Scratch::new("native");
    s.image(IMAGE_BYTES);
    let root = s.root().join("state");
    let (store, info) = open_with(&root, IMAGE_BYTES, BackendChoice::Auto).unwrap();
    assert_eq!(info.backend, "btrfs");
    assert!(info.image.is_none());
    assert_eq!(info.root, root.join("btrfs"));
    assert!(!root.join("btrfs.img").exists());
    store.prepare("a", None, &none()).unwrap();
}

/// Forced btrfs where no image can be mounted (here: no CAP_SYS_ADMIN) is
/// a clear `Unavailable` error; auto falls back to overlay and says why.
/// Neither leaves an image behind.
#[test]
fn unavailable_btrfs_is_a_clear_error_or_a_fallback() {
    if !privileged("unavailable_btrfs_is_a_clear_error_or_a_fallback") {
        return;
    }
    let s = Scratch::new("unavail");
    let root = s.path().join("state");
    if kernel::is_btrfs(s.path()).unwrap() {
        eprintln!("SKIP: /var/tmp is on btrfs here");
        return;
    }
    let (forced, auto) = without_sys_admin(|| {
        let forced = open_with(&root, IMAGE_BYTES, BackendChoice::Btrfs).map(|(_, i)| i);
        let left = (root.join("btrfs.img").exists(), root.join("btrfs").exists());
        let auto = open_with(&root, IMAGE_BYTES, BackendChoice::Auto).map(|(_, i)| i);
        (forced.map(|_| left).map_err(|e| (e, left)), auto)
    });
    let (e, left) = forced.expect_err("forced btrfs without CAP_SYS_ADMIN");
    println!("forced: {e}");
    assert_eq!(e.kind(), hull_api::ErrorKind::Unavailable, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("forced") && msg.contains("HULL_SNAPSHOT_BACKEND"),
        "{msg}"
    );
    assert!(msg.contains("loop-backed"), "{msg}");
    assert_eq!(left, (false, false), "nothing left behind");
    let auto = auto.unwrap();
    println!("auto: {auto}");
    assert_eq!(auto.backend, "overlay");
    assert!(
        auto.reason.contains("loop-backed btrfs image failed"),
        "{}",
        auto.reason
    );
    assert!(!root.join("btrfs.img").exists());
    assert!(!root.join("btrfs").exists());
    assert_eq!(loops_under(s.path()), Vec::<String>::new());
}

/// `open_auto` reads HULL_SNAPSHOT_BACKEND (checked in child processes, so
/// this process's environment is left alone).
#[test]
fn open_auto_reads_the_environment() {
    const CHILD: &str = "HULL_TEST_OPEN_AUTO_ROOT";
    if let Ok(root) = std::env::var(CHILD) {
        match open_auto(Path::new(&root), IMAGE_BYTES) {
            Ok((_, info)) => println!("backend={}", info.backend),
            Err(e) => println!("error={} {e}", e.kind().as_str()),
        }
        return;
    }
    if !privileged("open_auto_reads_the_environment") {
        return;
    }
    let s = Scratch::new("env");
    let run = |value: &str| -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["open_auto_reads_the_environment", "--exact", "--nocapture"])
            .env(CHILD, s.path().join(value))
            .env(BackendChoice::ENV, value)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find(|l| l.starts_with("backend=") || l.starts_with("error="))
            .unwrap_or_else(|| panic!("child said nothing: {out:?}"))
            .to_string()
    };
    assert_eq!(run("overlay"), "backend=overlay");
    let bogus = run("zfs");
    assert!(bogus.starts_with("error=invalid_argument"), "{bogus}");
    assert!(bogus.contains("HULL_SNAPSHOT_BACKEND"), "{bogus}");
    assert_eq!(run("btrfs"), "backend=btrfs");
}

/// `auto` makes no loop image bigger than the free space (a sparse image
/// the disk can't hold fails with I/O errors once it fills): on a 64 MiB
/// tmpfs it picks overlay and says why; forced btrfs still tries.
#[test]
fn auto_skips_a_loop_image_the_disk_cannot_hold() {
    if !privileged("auto_skips_a_loop_image_the_disk_cannot_hold") {
        return;
    }
    let s = Scratch::new("small");
    let small = s.path().join("small");
    fs::create_dir(&small).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64m"),
    )
    .unwrap();
    let opened = open_with(&small.join("state"), 256 << 20, BackendChoice::Auto);
    let r = opened.map(|(store, info)| {
        drop(store);
        info
    });
    let _ = nix::mount::umount2(&small, nix::mount::MntFlags::MNT_DETACH);
    let info = r.unwrap();
    assert_eq!(info.backend, "overlay", "{info}");
    assert!(info.reason.contains("MiB free"), "{}", info.reason);
    assert!(info.image.is_none());
}
