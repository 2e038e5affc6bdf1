//! Real btrfs tests: each makes its own sparse loop-backed image in a
//! temporary directory under /var/tmp, mounts it with `LoopImage::ensure`,
//! and unmounts it at the end, even when the test fails (a Drop guard),
//! leaving no mount and no loop device behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use hull_sys::btrfs::{self, BtrfsError, LoopImage};

use hull_testkit::privileged;

const MIB: u64 = 1 << 20;

/// mkfs.btrfs (btrfs-progs 6.2) refuses images under 114294784 bytes.
const IMAGE_BYTES: u64 = 256 * MIB;

/// A scratch btrfs: image and mount point in a fresh directory. Dropping it
/// unmounts (lazily if it has to), so a failing test leaves nothing.
struct Scratch {
    dir: tempfile::TempDir,
    image: PathBuf,
    mnt: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hull-btrfs-{tag}-"))
            .tempdir_in("/var/tmp")
            .unwrap();
        let image = dir.path().join("store.img");
        let mnt = dir.path().join("mnt");
        Scratch { dir, image, mnt }
    }

    /// A new scratch, formatted and mounted.
    fn mounted(tag: &str, size: u64) -> (Self, LoopImage) {
        let s = Scratch::new(tag);
        let li = s.ensure(size).unwrap();
        assert!(li.formatted() && !li.already_mounted(), "{li:?}");
        (s, li)
    }

    fn ensure(&self, size: u64) -> Result<LoopImage, BtrfsError> {
        LoopImage::ensure(&self.image, size, &self.mnt)
    }

    fn is_mounted(&self) -> bool {
        let mnt = fs::canonicalize(&self.mnt).unwrap_or_else(|_| self.mnt.clone());
        hull_sys::mount::is_mountpoint(&mnt)
    }

    /// Unmount and check that neither the mount nor a loop device of the
    /// image is left.
    fn unmount_and_check(&self) {
        btrfs::unmount(&self.mnt).unwrap();
        assert!(!self.is_mounted(), "{} still mounted", self.mnt.display());
        if self.image.exists() {
            assert_eq!(
                btrfs::loop_devices_backing(&self.image).unwrap(),
                Vec::<PathBuf>::new(),
                "a loop device still holds the image"
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = btrfs::unmount(&self.mnt) {
            eprintln!("cleanup: {e} ({:?}); detaching lazily", e.raw_os_error());
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = &self.dir;
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// Write `total` bytes of a non-zero pattern in 1 MiB pieces.
fn write_pattern(path: &Path, total: u64) -> io::Result<()> {
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    let mut f = File::create(path)?;
    for _ in 0..total / MIB {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

/// Run `f` on a thread whose effective capabilities lack CAP_SYS_ADMIN
/// (capabilities are per thread), the way an unprivileged owner calls.
fn without_sys_admin<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            use caps::{CapSet, Capability};
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap();
            assert!(!caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap());
            f()
        })
        .join()
        .unwrap()
    })
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("no errno in {e:?}"))
}

#[test]
fn subvolumes_snapshots_and_copy_on_write() {
    if !privileged("subvolumes_snapshots_and_copy_on_write") {
        return;
    }
    let (s, _li) = Scratch::mounted("cow", IMAGE_BYTES);
    let m = s.mnt.as_path();
    assert!(btrfs::is_btrfs(m).unwrap());
    assert!(
        btrfs::is_subvolume(m).unwrap(),
        "the top level is a subvolume"
    );
    assert_eq!(btrfs::subvolume_id(m).unwrap(), 5);

    btrfs::create_subvolume(m, "base").unwrap();
    let base = m.join("base");
    assert!(btrfs::is_subvolume(&base).unwrap());
    assert!(!btrfs::is_readonly(&base).unwrap());
    let base_id = btrfs::subvolume_id(&base).unwrap();
    assert!(base_id >= 256, "{base_id}");
    fs::create_dir(base.join("etc")).unwrap();
    write_file(&base.join("etc/hostname"), b"base\n").unwrap();
    write_file(&base.join("data"), b"one").unwrap();
    // A subdirectory belongs to its subvolume but is not one.
    assert_eq!(btrfs::subvolume_id(&base.join("etc")).unwrap(), base_id);
    assert!(!btrfs::is_subvolume(&base.join("etc")).unwrap());

    // Name taken.
    let e = btrfs::create_subvolume(m, "base").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
    assert!(
        e.to_string().contains("creating subvolume"),
        "context missing: {e}"
    );

    // Read-only snapshot: same content, every write fails with EROFS.
    btrfs::snapshot(&base, m, "ro", true).unwrap();
    let ro = m.join("ro");
    assert!(btrfs::is_subvolume(&ro).unwrap());
    assert!(btrfs::is_readonly(&ro).unwrap());
    assert_ne!(btrfs::subvolume_id(&ro).unwrap(), base_id);
    assert_eq!(read(&ro.join("etc/hostname")), "base\n");
    let e = File::create(ro.join("new")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");
    let e = OpenOptions::new()
        .append(true)
        .open(ro.join("data"))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");
    let e = fs::remove_file(ro.join("data")).unwrap_err();
    assert_eq!(errno(&e), libc::EROFS, "{e}");

    // Writable snapshot: an independent copy, changes leak neither way.
    btrfs::snapshot(&base, m, "rw", false).unwrap();
    let rw = m.join("rw");
    assert!(!btrfs::is_readonly(&rw).unwrap());
    write_file(&rw.join("data"), b"two").unwrap();
    write_file(&rw.join("only-in-rw"), b"x").unwrap();
    fs::remove_file(rw.join("etc/hostname")).unwrap();
    assert_eq!(read(&base.join("data")), "one");
    assert!(!base.join("only-in-rw").exists());
    assert_eq!(read(&base.join("etc/hostname")), "base\n");
    write_file(&base.join("data"), b"three").unwrap();
    write_file(&base.join("only-in-base"), b"y").unwrap();
    assert_eq!(read(&rw.join("data")), "two");
    assert!(!rw.join("only-in-base").exists());
    assert_eq!(
        read(&ro.join("data")),
        "one",
        "the read-only snapshot is frozen"
    );

    // Flags toggle both ways.
    btrfs::set_readonly(&rw, true).unwrap();
    assert!(btrfs::is_readonly(&rw).unwrap());
    assert_eq!(
        errno(&File::create(rw.join("later")).unwrap_err()),
        libc::EROFS
    );
    btrfs::set_readonly(&rw, false).unwrap();
    btrfs::set_readonly(&rw, false).unwrap(); // idempotent
    write_file(&rw.join("later"), b"ok").unwrap();

    // A snapshot of a snapshot, into a subdirectory.
    fs::create_dir(m.join("nested")).unwrap();
    btrfs::snapshot(&ro, &m.join("nested"), "again", true).unwrap();
    assert_eq!(read(&m.join("nested/again/data")), "one");

    // Refusals with clear errors.
    for bad in ["", ".", "..", "a/b", "../escape", "x\0y", &"n".repeat(256)] {
        let e = btrfs::create_subvolume(m, bad).unwrap_err();
        assert!(matches!(e, BtrfsError::InvalidName { .. }), "{bad:?}: {e}");
        let e = btrfs::snapshot(&base, m, bad, true).unwrap_err();
        assert!(matches!(e, BtrfsError::InvalidName { .. }), "{bad:?}: {e}");
    }
    assert!(!m.join("a").exists() && !m.parent().unwrap().join("escape").exists());
    let e = btrfs::snapshot(&base.join("etc"), m, "x", false).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{} is not a btrfs subvolume", base.join("etc").display())
    );
    let e = btrfs::delete_subvolume(&base.join("etc")).unwrap_err();
    assert!(matches!(e, BtrfsError::NotSubvolume { .. }), "{e}");
    let e = btrfs::delete_subvolume(m).unwrap_err();
    assert!(e.to_string().contains("deleting subvolume"), "{e}");
    assert!(btrfs::is_subvolume(m).unwrap());
    let outside = s.dir.path().join("plain");
    fs::create_dir(&outside).unwrap();
    let e = btrfs::snapshot(&base, &outside, "x", true).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{} is not on btrfs", outside.display())
    );

    // Without CAP_SYS_ADMIN, deleting needs the user_subvol_rm_allowed
    // mount option, and the kernel refuses a read-only subvolume (EROFS)
    // until delete_subvolume clears its flag.
    btrfs::snapshot(&base, m, "ro-user", true).unwrap();
    let e = without_sys_admin(|| btrfs::delete_subvolume(&m.join("ro-user"))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    assert!(
        btrfs::is_readonly(&m.join("ro-user")).unwrap(),
        "a failed delete changed it"
    );
    nix::mount::mount(
        None::<&str>,
        m,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_NOATIME,
        Some("user_subvol_rm_allowed"),
    )
    .unwrap();
    without_sys_admin(|| btrfs::delete_subvolume(&m.join("ro-user"))).unwrap();
    assert!(!m.join("ro-user").exists());

    // Deletion: read-only and writable alike; a subvolume holding another
    // is refused until the inner one goes.
    btrfs::create_subvolume(&rw, "inner").unwrap();
    let e = btrfs::delete_subvolume(&rw).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
    btrfs::delete_subvolume(&rw.join("inner")).unwrap();
    for p in [&ro, &rw, &m.join("nested/again"), &base] {
        btrfs::delete_subvolume(p).unwrap();
        assert!(!p.exists(), "{} still there", p.display());
    }
    let e = btrfs::delete_subvolume(&ro).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    btrfs::sync(m).unwrap();

    s.unmount_and_check();
}

#[test]
fn snapshot_of_a_large_file_takes_constant_time() {
    if !privileged("snapshot_of_a_large_file_takes_constant_time") {
        return;
    }
    let (s, _li) = Scratch::mounted("big", 384 * MIB);
    let m = s.mnt.as_path();
    btrfs::create_subvolume(m, "small").unwrap();
    write_file(&m.join("small/f"), b"tiny").unwrap();
    btrfs::create_subvolume(m, "big").unwrap();
    let big = m.join("big/f");
    let t = Instant::now();
    write_pattern(&big, 100 * MIB).unwrap();
    let write = t.elapsed();
    btrfs::sync(m).unwrap();

    let time = |src: &str, name: &str, ro: bool| {
        let t = Instant::now();
        btrfs::snapshot(&m.join(src), m, name, ro).unwrap();
        t.elapsed()
    };
    let small_ro = time("small", "small-ro", true);
    let big_ro = time("big", "big-ro", true);
    let big_rw = time("big", "big-rw", false);
    assert_eq!(fs::metadata(m.join("big-rw/f")).unwrap().len(), 100 * MIB);

    // Spot-check the copy, then diverge it: the original keeps its bytes.
    let mut head = [0u8; 4];
    File::open(m.join("big-ro/f"))
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(head, [1, 2, 3, 4]);
    write_file(&m.join("big-rw/f"), b"rewritten").unwrap();
    assert_eq!(fs::metadata(&big).unwrap().len(), 100 * MIB);

    let t = Instant::now();
    btrfs::delete_subvolume(&m.join("big-ro")).unwrap();
    let delete = t.elapsed();
    println!(
        "btrfs timings: write+fsync 100 MiB {write:?}; snapshot (read-only) of a 4-byte \
         subvolume {small_ro:?}, of a 100 MiB one {big_ro:?}; writable snapshot of the \
         100 MiB one {big_rw:?}; delete of the 100 MiB read-only snapshot {delete:?}"
    );
    s.unmount_and_check();
}

#[test]
fn quota_limits_and_usage() {
    if !privileged("quota_limits_and_usage") {
        return;
    }
    let (s, _li) = Scratch::mounted("quota", IMAGE_BYTES);
    let m = s.mnt.as_path();
    btrfs::create_subvolume(m, "early").unwrap();
    let early = m.join("early");

    // Before quotas are enabled: a clear refusal.
    let e = btrfs::qgroup_limit(&early, Some(8 * MIB)).unwrap_err();
    assert!(matches!(e, BtrfsError::QuotaDisabled { .. }), "{e}");
    assert!(e.to_string().contains("quotas are not enabled"), "{e}");
    let e = btrfs::qgroup_usage(&early).unwrap_err();
    assert!(matches!(e, BtrfsError::QuotaDisabled { .. }), "{e}");

    let t = Instant::now();
    btrfs::quota_enable(m).unwrap();
    let enable = t.elapsed();
    btrfs::quota_enable(m).unwrap(); // idempotent
    // A subvolume made before enabling is accounted by the rescan.
    let (rfer, excl) = btrfs::qgroup_usage(&early).unwrap();
    assert!(rfer > 0 && rfer < MIB && excl <= rfer, "{rfer} {excl}");

    // A limited subvolume: writing 16 MiB into an 8 MiB limit fails, and
    // the error is EDQUOT.
    btrfs::create_subvolume(m, "limited").unwrap();
    let limited = m.join("limited");
    btrfs::qgroup_limit(&limited, Some(8 * MIB)).unwrap();
    let e = write_pattern(&limited.join("f"), 16 * MIB).unwrap_err();
    println!(
        "write past an 8 MiB qgroup limit: {e} (errno {:?})",
        e.raw_os_error()
    );
    assert_eq!(errno(&e), libc::EDQUOT, "{e}");
    btrfs::sync(m).unwrap();
    let (rfer, _) = btrfs::qgroup_usage(&limited).unwrap();
    assert!(
        rfer <= 8 * MIB && rfer > 4 * MIB,
        "referenced {rfer} after a write stopped at the limit"
    );
    // Removing the limit lets the write through.
    btrfs::qgroup_limit(&limited, None).unwrap();
    write_pattern(&limited.join("f"), 16 * MIB).unwrap();

    // Usage follows writes (after a commit), and matches sysfs.
    btrfs::create_subvolume(m, "counted").unwrap();
    let counted = m.join("counted");
    write_pattern(&counted.join("f"), 4 * MIB).unwrap();
    btrfs::sync(m).unwrap();
    let (rfer, excl) = btrfs::qgroup_usage(&counted).unwrap();
    assert!(
        (4 * MIB..5 * MIB).contains(&rfer) && excl == rfer,
        "referenced {rfer}, exclusive {excl} after writing 4 MiB"
    );
    let id = btrfs::subvolume_id(&counted).unwrap();
    let sysfs = fs::read_dir("/sys/fs/btrfs")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join(format!("qgroups/0_{id}/referenced")))
        .filter_map(|p| fs::read_to_string(p).ok())
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .collect::<Vec<_>>();
    // Other btrfs filesystems (parallel tests) may have a 0/id too.
    if !sysfs.is_empty() {
        assert!(sysfs.contains(&rfer), "sysfs says {sysfs:?}, ioctl {rfer}");
    }

    // Without CAP_SYS_ADMIN (no TREE_SEARCH), the numbers come from sysfs.
    let unprivileged = without_sys_admin(|| btrfs::qgroup_usage(&counted)).unwrap();
    assert_eq!(unprivileged, (rfer, excl));

    // A snapshot shares its parent's extents: referenced, not exclusive.
    btrfs::snapshot(&counted, m, "counted-snap", false).unwrap();
    btrfs::sync(m).unwrap();
    let (srfer, sexcl) = btrfs::qgroup_usage(&m.join("counted-snap")).unwrap();
    assert!(srfer >= 4 * MIB && sexcl < MIB, "{srfer} {sexcl}");
    println!(
        "quota: enable + rescan {enable:?}; 4 MiB written: referenced {rfer}, exclusive \
         {excl}; its snapshot: referenced {srfer}, exclusive {sexcl}"
    );

    for p in ["counted-snap", "counted", "limited", "early"] {
        btrfs::delete_subvolume(&m.join(p)).unwrap();
    }
    s.unmount_and_check();
}

#[test]
fn loop_image_ensure_is_idempotent_and_keeps_data() {
    if !privileged("loop_image_ensure_is_idempotent_and_keeps_data") {
        return;
    }
    let s = Scratch::new("loop");
    let t = Instant::now();
    let first = s.ensure(IMAGE_BYTES).unwrap();
    let create = t.elapsed();
    assert!(first.formatted() && !first.already_mounted(), "{first:?}");
    assert!(
        first.device().to_string_lossy().starts_with("/dev/loop"),
        "{first:?}"
    );
    assert_eq!(first.mountpoint(), fs::canonicalize(&s.mnt).unwrap());
    assert!(s.is_mounted());
    assert_eq!(
        btrfs::loop_devices_backing(&s.image).unwrap(),
        vec![first.device().to_path_buf()]
    );
    let md = fs::metadata(&s.image).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(md.len(), IMAGE_BYTES);
    assert!(md.blocks() * 512 < IMAGE_BYTES / 2, "not sparse: {md:?}");

    btrfs::create_subvolume(&s.mnt, "keep").unwrap();
    write_file(&s.mnt.join("keep/file"), b"survives").unwrap();

    // Again on the same mount point: reported, nothing new attached.
    let second = s.ensure(IMAGE_BYTES).unwrap();
    assert!(
        second.already_mounted() && !second.formatted(),
        "{second:?}"
    );
    assert_eq!(second.device(), first.device());
    assert_eq!(btrfs::loop_devices_backing(&s.image).unwrap().len(), 1);

    s.unmount_and_check();
    btrfs::unmount(&s.mnt).unwrap(); // nothing mounted: fine

    // Re-attach the existing image: no mkfs, the data is still there.
    let t = Instant::now();
    let third = s.ensure(IMAGE_BYTES).unwrap();
    let reattach = t.elapsed();
    assert!(!third.formatted() && !third.already_mounted(), "{third:?}");
    assert_eq!(read(&s.mnt.join("keep/file")), "survives");
    assert!(btrfs::is_subvolume(&s.mnt.join("keep")).unwrap());
    third.unmount().unwrap();
    assert!(!s.is_mounted());

    // Racing ensures on one image: one mounts, the others find the mount.
    let results: Vec<LoopImage> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3).map(|_| sc.spawn(|| s.ensure(IMAGE_BYTES))).collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| !r.already_mounted()).count(), 1);
    assert_eq!(btrfs::loop_devices_backing(&s.image).unwrap().len(), 1);
    assert_eq!(read(&s.mnt.join("keep/file")), "survives");
    println!("loop image: create+mkfs+attach+mount {create:?}; re-attach+mount {reattach:?}");
    s.unmount_and_check();
}

#[test]
fn loop_image_refusals_are_clear() {
    if !privileged("loop_image_refusals_are_clear") {
        return;
    }
    // Below mkfs.btrfs's minimum: its own message comes through.
    let s = Scratch::new("small");
    let e = s.ensure(16 * MIB).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BtrfsError::Mkfs { .. }), "{e:?}");
    assert!(
        msg.contains("mkfs.btrfs") && msg.contains("too small"),
        "{msg}"
    );
    assert!(!s.is_mounted());

    // Something else mounted at the mount point.
    let s = Scratch::new("tmpfs");
    fs::create_dir_all(&s.mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &s.mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    let e = s.ensure(IMAGE_BYTES).unwrap_err();
    let e2 = btrfs::unmount(&s.mnt).unwrap_err();
    nix::mount::umount2(&s.mnt, nix::mount::MntFlags::empty()).unwrap();
    assert!(
        e.to_string()
            .ends_with("is already a mount point of a tmpfs filesystem, not btrfs"),
        "{e}"
    );
    assert!(matches!(e2, BtrfsError::MountedNotBtrfs { .. }), "{e2}");
    assert!(
        !s.image.exists(),
        "nothing created for a refused mount point"
    );

    // A non-btrfs path.
    let e = btrfs::create_subvolume(s.dir.path(), "x").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{} is not on btrfs", s.dir.path().display())
    );
    assert!(!btrfs::is_btrfs(s.dir.path()).unwrap());
    let e = btrfs::quota_enable(s.dir.path()).unwrap_err();
    assert!(matches!(e, BtrfsError::NotBtrfs { .. }), "{e}");
    let e = btrfs::is_btrfs(&s.dir.path().join("missing")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);

    // An image attached elsewhere (by hand) but not mounted here.
    let (busy, li) = Scratch::mounted("busy", IMAGE_BYTES);
    let other = busy.dir.path().join("other");
    let e = LoopImage::ensure(&busy.image, IMAGE_BYTES, &other).unwrap_err();
    assert!(matches!(e, BtrfsError::ImageBusy { .. }), "{e}");
    assert!(
        e.to_string().contains(&li.device().display().to_string()),
        "{e}"
    );
    busy.unmount_and_check();
}
