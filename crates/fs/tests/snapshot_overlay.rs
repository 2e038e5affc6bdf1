//! The `overlay` snapshotter: the shared conformance suite (one test per
//! case, in the `overlay` module), plus what only this backend has:
//! `copy_layer` on real overlay upper directories and overlayfs's layer
//! limit. Stores live under /var/tmp (ext4 here), upper directories on a
//! tmpfs as in the runtime. Mounting tests need root (see
//! `testsuite::privileged`).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hull_fs::snapshot::overlay::{MAX_CHAIN, OverlaySnapshotter, copy_layer};
use hull_fs::snapshot::testsuite::{Detail, Entry, Mounted, assert_trees_eq, privileged, tree};
use hull_fs::snapshot::{Labels, Mount, SnapshotError, Snapshotter};

hull_fs::snapshot_conformance!(
    overlay,
    scratch = "/var/tmp",
    open = |root| Ok(Box::new(OverlaySnapshotter::open(root)?)),
);

/// A scratch directory under /var/tmp; everything mounted under it is
/// unmounted, and it is deleted, when dropped.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Self {
        Scratch(
            tempfile::Builder::new()
                .prefix("hull-snap-overlay-")
                .tempdir_in("/var/tmp")
                .unwrap(),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        hull_sys::mount::unmount_all_under(self.0.path());
    }
}

fn tmpfs(target: &Path) -> Mounted {
    Mounted::new(
        &[Mount {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["size=64m".into(), "mode=0755".into()],
        }],
        target,
    )
}

fn overlay(lower: &Path, upper: &Path, work: &Path, userxattr: bool) -> Mount {
    let mut options = vec![
        format!("lowerdir={}", lower.display()),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];
    if userxattr {
        options.push("userxattr".into());
    }
    Mount {
        fstype: "overlay".into(),
        source: "overlay".into(),
        options,
    }
}

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// A lower directory with some of everything.
fn make_lower(lower: &Path) {
    write(&lower.join("etc/config"), b"v1");
    write(&lower.join("etc/gone"), b"bye");
    write(&lower.join("dir/a"), b"a");
    write(&lower.join("dir/sub/b"), b"b");
    write(&lower.join("keep"), b"keep");
    write(&lower.join("big"), &vec![1u8; 200_000]);
}

/// Create, modify and delete through a real overlay mount; return its
/// upper directory (on a tmpfs, like a sandbox's).
fn make_upper(s: &Scratch, userxattr: bool) -> (PathBuf, Mounted) {
    let lower = s.path().join("lower");
    make_lower(&lower);
    let rw = tmpfs(&s.path().join("rw"));
    let (upper, work) = (rw.path().join("upper"), rw.path().join("work"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    {
        let merged = Mounted::new(
            &[overlay(&lower, &upper, &work, userxattr)],
            &s.path().join("merged"),
        );
        let d = merged.path();
        write(&d.join("etc/config"), b"v2"); // modified: copied up
        fs::remove_file(d.join("etc/gone")).unwrap(); // deleted: whiteout
        fs::remove_dir_all(d.join("dir")).unwrap(); // deleted and re-created: opaque
        write(&d.join("dir/fresh"), b"fresh");
        fs::remove_file(d.join("keep")).unwrap();
        write(&d.join("keep"), b"replaced");
        fs::set_permissions(d.join("big"), fs::Permissions::from_mode(0o600)).unwrap(); // metadata-only change
        write(&d.join("new/one"), b"1");
        fs::hard_link(d.join("new/one"), d.join("new/one-again")).unwrap();
        fs::hard_link(d.join("new/one"), d.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("new/etc-link")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.join("new/shadow-link")).unwrap();
        nix::unistd::mkfifo(
            &d.join("new/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        write(&d.join("new/owned"), b"o");
        std::os::unix::fs::chown(d.join("new/owned"), Some(100_000), Some(100_001)).unwrap();
        write(&d.join("new/suid"), b"s");
        fs::set_permissions(d.join("new/suid"), fs::Permissions::from_mode(0o6755)).unwrap();
        fs::create_dir(d.join("new/sticky")).unwrap();
        fs::set_permissions(d.join("new/sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
        rustix::fs::setxattr(
            d.join("new/one"),
            "user.note",
            b"kept",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(
            d.join("new/suid"),
            "security.capability",
            &CAP_NET_BIND,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let f = fs::File::create(d.join("new/sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"middle", 32 << 20).unwrap();
    }
    (upper, rw)
}

/// A VFS_CAP_REVISION_2 file capability xattr granting cap_net_bind_service
/// (bit 10) in the permitted set.
const CAP_NET_BIND: [u8; 20] = [
    0x00, 0x00, 0x00, 0x02, // revision 2, no effective flag
    0x00, 0x04, 0x00, 0x00, // permitted (low word): bit 10
    0x00, 0x00, 0x00, 0x00, // inheritable (low word)
    0x00, 0x00, 0x00, 0x00, // permitted (high word)
    0x00, 0x00, 0x00, 0x00, // inheritable (high word)
];

fn check_copy(userxattr: bool) {
    let s = Scratch::new();
    let (upper, _rw) = make_upper(&s, userxattr);
    let want = tree(&upper, Detail::Full);
    // The raw upper has what the test is about.
    let opaque = if userxattr {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    };
    assert_eq!(want["/etc/gone"].entry, Entry::Whiteout);
    assert_eq!(
        want["/keep"].entry,
        Entry::File {
            len: 8,
            hash: want["/keep"].entry_hash()
        }
    );
    assert_eq!(
        want["/dir"].xattrs.get(opaque).map(Vec::as_slice),
        Some(&b"y"[..]),
        "{:?}",
        want["/dir"]
    );
    assert_eq!(want["/new/one-again"].link.as_deref(), Some("/elsewhere"));
    assert_eq!(want["/new/suid"].mode, 0o6755);
    assert!(want["/new/suid"].xattrs.contains_key("security.capability"));

    let dst = s.path().join("copy");
    copy_layer(&upper, &dst).unwrap();
    assert_trees_eq(&tree(&dst, Detail::Full), &want, "the copied layer");
    assert_trees_eq(
        &tree(&upper, Detail::Full),
        &want,
        "the source is unchanged",
    );
    let sparse = fs::metadata(dst.join("new/sparse")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "holes stay holes: {} blocks",
        sparse.blocks()
    );
    // Nothing behind the symlinks was copied.
    assert!(
        fs::symlink_metadata(dst.join("new/etc-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // The copy works as a lower layer: deletions and the opaque directory
    // hold.
    let lower = s.path().join("lower");
    let view = Mounted::new(
        &[Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: [
                vec![
                    format!("lowerdir={}:{}", dst.display(), lower.display()),
                    "ro".into(),
                ],
                if userxattr {
                    vec!["userxattr".into()]
                } else {
                    vec![]
                },
            ]
            .concat(),
        }],
        &s.path().join("view"),
    );
    let v = view.path();
    assert!(!v.join("etc/gone").exists());
    assert_eq!(fs::read(v.join("etc/config")).unwrap(), b"v2");
    let mut names: Vec<_> = fs::read_dir(v.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["fresh"],
        "the opaque directory hides the lower one's files"
    );
    assert_eq!(fs::read(v.join("keep")).unwrap(), b"replaced");
    assert_eq!(fs::metadata(v.join("big")).unwrap().mode() & 0o777, 0o600);
}

trait EntryHash {
    fn entry_hash(&self) -> u64;
}

impl EntryHash for hull_fs::snapshot::testsuite::Node {
    fn entry_hash(&self) -> u64 {
        match self.entry {
            Entry::File { hash, .. } => hash,
            _ => 0,
        }
    }
}

#[test]
fn copy_layer_keeps_a_userxattr_upper() {
    if privileged("copy_layer_keeps_a_userxattr_upper") {
        check_copy(true);
    }
}

#[test]
fn copy_layer_keeps_a_trusted_upper() {
    if privileged("copy_layer_keeps_a_trusted_upper") {
        check_copy(false);
    }
}

#[test]
fn copy_layer_refuses_devices_and_existing_targets() {
    if !privileged("copy_layer_refuses_devices_and_existing_targets") {
        return;
    }
    let s = Scratch::new();
    let src = s.path().join("src");
    fs::create_dir_all(src.join("dev")).unwrap();
    nix::sys::stat::mknod(
        &src.join("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let e = copy_layer(&src, &s.path().join("dst")).unwrap_err();
    assert!(matches!(e, SnapshotError::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("dev/null"), "{e}");

    fs::remove_file(src.join("dev/null")).unwrap();
    fs::create_dir(s.path().join("exists")).unwrap();
    assert!(copy_layer(&src, &s.path().join("exists")).is_err());
    // The source itself may not be a symlink.
    std::os::unix::fs::symlink(&src, s.path().join("src-link")).unwrap();
    assert!(copy_layer(&s.path().join("src-link"), &s.path().join("dst2")).is_err());
}

/// An upper made without `userxattr` marks opaque directories with
/// `trusted.overlay.opaque`; the store (which mounts with `userxattr`)
/// marks them `user.overlay.opaque` too, so they stay opaque.
#[test]
fn commit_from_a_trusted_upper_keeps_opaque_dirs() {
    if !privileged("commit_from_a_trusted_upper_keeps_opaque_dirs") {
        return;
    }
    let s = Scratch::new();
    let store = OverlaySnapshotter::open(&s.path().join("store")).unwrap();
    let none = Labels::new();
    let m = store.prepare("base-a", None, &none).unwrap();
    {
        let mnt = Mounted::new(&m, &s.path().join("base"));
        make_lower(mnt.path());
    }
    store.commit("base", "base-a", &none).unwrap();
    let lower = Mounted::new(
        &store.view("lower", Some("base"), &none).unwrap(),
        &s.path().join("lower"),
    );
    let rw = tmpfs(&s.path().join("rw"));
    let (upper, work) = (rw.path().join("upper"), rw.path().join("work"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    {
        let merged = Mounted::new(
            &[overlay(lower.path(), &upper, &work, false)],
            &s.path().join("merged"),
        );
        fs::remove_dir_all(merged.path().join("dir")).unwrap();
        write(&merged.path().join("dir/only"), b"only");
    }
    store
        .commit_from_dir("snap", Some("base"), &upper, &none)
        .unwrap();
    drop(rw);
    drop(lower);
    let view = Mounted::new(
        &store.view("v", Some("snap"), &none).unwrap(),
        &s.path().join("view"),
    );
    let names: Vec<_> = fs::read_dir(view.path().join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["only"]);
}

/// The deepest chain the backend allows mounts, as a view; overlayfs itself
/// refuses one layer more, so the limit is the kernel's.
#[test]
fn longest_chain_mounts() {
    if !privileged("longest_chain_mounts") {
        return;
    }
    let s = Scratch::new();
    let store = OverlaySnapshotter::open(&s.path().join("store")).unwrap();
    let none = Labels::new();
    let mut parent: Option<String> = None;
    for i in 0..MAX_CHAIN {
        let m = store.prepare("next", parent.as_deref(), &none).unwrap();
        if i % 100 == 0 || i == MAX_CHAIN - 1 {
            let mnt = Mounted::new(&m, &s.path().join("next"));
            write(
                &mnt.path().join(format!("at-{i}")),
                i.to_string().as_bytes(),
            );
        }
        let name = format!("l{i}");
        store.commit(&name, "next", &none).unwrap();
        parent = Some(name);
    }
    let top = parent.unwrap();
    let mut m = store.view("v", Some(&top), &none).unwrap();
    {
        let view = Mounted::new(&m, &s.path().join("view"));
        for i in [0, 100, 400, MAX_CHAIN - 1] {
            assert_eq!(
                fs::read(view.path().join(format!("at-{i}"))).unwrap(),
                i.to_string().as_bytes()
            );
        }
    }
    assert!(store.prepare("over", Some(&top), &none).is_err());
    // One more lower layer is past overlayfs's own limit.
    let extra = s.path().join("extra");
    fs::create_dir(&extra).unwrap();
    for o in &mut m[0].options {
        if o.starts_with("lowerdir=") {
            o.push_str(&format!(":{}", extra.display()));
        }
    }
    let target = s.path().join("too-deep");
    fs::create_dir(&target).unwrap();
    let e = Mount::mount_all(&m, &target).unwrap_err();
    match &e {
        SnapshotError::Mount { log, .. } => assert!(!log.is_empty(), "overlayfs says why: {e}"),
        _ => panic!("expected a mount error, got {e}"),
    }
    assert!(hull_sys::mount::mounts_under(s.path()).is_empty());
}
