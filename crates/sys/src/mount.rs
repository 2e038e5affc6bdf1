//! Mount operations that need the new mount API or raw flags: idmapped bind
//! mounts (how template files owned by host root appear root-owned inside a
//! sandbox), detached sysfs mounts for namespaces the host made, and
//! mount-table queries.
//!
//! Ordinary mounts (`mount(2)`, `pivot_root`, `umount2`) are safe calls in
//! `nix` and are used directly by their callers.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{what} {path}")]
    Sys {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A detached, read-only (and nosuid, nodev, noexec) sysfs mount of the
/// calling thread's network namespace, to be moved into place with
/// `move_mount(2)` by a process in another mount namespace — even one whose
/// user namespace could not mount sysfs for that network namespace itself
/// (a sandbox in a namespace owned by the host's user namespace).
pub fn detached_sysfs() -> io::Result<OwnedFd> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    let fs = rustix::mount::fsopen("sysfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_create(fs.as_fd())?;
    Ok(rustix::mount::fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?)
}

/// Bind `src` at `dst` through an idmapped mount: a file owned by uid/gid `k`
/// on disk appears owned by whatever `k` maps to in `userns` (so with the
/// mapping `0 -> base`, host root's files appear as root inside sandboxes
/// whose user namespace maps `0 -> base`).
pub fn idmapped_bind(
    src: &Path,
    dst: &Path,
    userns: BorrowedFd<'_>,
    readonly: bool,
) -> Result<(), MountError> {
    let err = |what: &'static str, p: &Path| {
        let path = p.display().to_string();
        move |e: rustix::io::Errno| MountError::Sys {
            what,
            path,
            source: e.into(),
        }
    };
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(err("cloning the mount of", src))?;

    // SAFETY: mount_attr is a plain C struct; zeroed is its default.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if readonly {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    attr.userns_fd = userns.as_raw_fd() as u64;
    // SAFETY: mount_setattr on the detached tree fd with an empty path,
    // AT_EMPTY_PATH, and a valid mount_attr of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(MountError::Sys {
            what: "idmapping the mount of",
            path: src.display().to_string(),
            source: io::Error::last_os_error(),
        });
    }
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        dst,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(err("attaching the idmapped mount at", dst))?;
    Ok(())
}

/// Mount points (decoded) under `prefix`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(prefix))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Is `path` a mount point (exactly)?
pub fn is_mountpoint(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// Detach every mount under `prefix` (deepest first); returns how many.
pub fn unmount_all_under(prefix: &Path) -> usize {
    let mut n = 0;
    // Stacked mounts need several passes.
    for _ in 0..8 {
        let list = mounts_under(prefix);
        if list.is_empty() {
            break;
        }
        for p in list {
            if nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }

    #[test]
    fn root_is_a_mountpoint() {
        assert!(is_mountpoint(Path::new("/")));
    }
}
