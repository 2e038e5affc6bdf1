//! Path resolution confined to the sandbox root.
//!
//! Every lookup is `openat2` relative to the root directory descriptor with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`: `..` stops at the root,
//! absolute symlinks resolve inside it, and `/proc` magic links are refused,
//! so no path reaches outside the root however it is spelled or whatever
//! symlinks the sandbox planted. Operations on a final component open its
//! parent this way and then use `*at` calls on the name alone, so a
//! symlink swapped in after the lookup cannot redirect them: the parent is
//! held by descriptor.
//!
//! Mount crossings are allowed (no `RESOLVE_NO_XDEV`): a sandbox's `/proc`,
//! `/dev` and `/tmp` are mounts the file calls must reach, and all of them
//! lie inside the root anyway; what makes `/proc` dangerous is its magic
//! links (`/proc/<pid>/root`, `/proc/<pid>/fd/*`), and those are refused.
//!
//! Limits: paths must be absolute, at most [`MAX_PATH`] bytes, without NUL.
//! Needs `openat2` (Linux 5.6). A lookup the kernel aborts because a rename
//! or mount raced with `..` (`EAGAIN`) is retried a few times.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use hull_proto::{GuestError, GuestErrorKind};
use rustix::fs::{Mode, OFlags, ResolveFlags};

/// The longest path accepted.
pub(crate) const MAX_PATH: usize = 4096;

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Lookups retried after `EAGAIN` (a concurrent rename or mount).
const RESOLVE_ATTEMPTS: u32 = 16;

/// `openat2(dir, rel, flags | O_CLOEXEC, 0, how)`, retried on `EAGAIN`.
pub(crate) fn openat2(
    dir: impl AsFd,
    rel: &OsStr,
    flags: OFlags,
    how: ResolveFlags,
) -> io::Result<OwnedFd> {
    let mut attempt = 0;
    loop {
        match rustix::fs::openat2(&dir, rel, flags | OFlags::CLOEXEC, Mode::empty(), how) {
            Err(rustix::io::Errno::AGAIN) if attempt < RESOLVE_ATTEMPTS => attempt += 1,
            r => return Ok(r?),
        }
    }
}

/// Open the root directory (`O_PATH`).
pub(crate) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Check a request path: absolute, bounded, no NUL.
pub(crate) fn check(path: &str) -> Result<(), GuestError> {
    let bad = |why: &str| {
        GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("invalid path {path:?}: {why}"),
        )
    };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if !path.starts_with('/') {
        return Err(bad("must be absolute (start with /)"));
    }
    if path.len() > MAX_PATH {
        return Err(bad("too long"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    Ok(())
}

/// Open `path` (absolute, inside the root) with `flags` (plus CLOEXEC).
pub(crate) fn open_in_root(root: impl AsFd, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    openat2(root, OsStr::new(rel), flags, RESOLVE)
}

/// Split a path into its parent and final component. The final component
/// is never empty, `.` or `..` (the root itself has none).
pub(crate) fn split(path: &str) -> Result<(String, String), GuestError> {
    check(path)?;
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => ("", trimmed),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(GuestError::new(
            GuestErrorKind::InvalidArgument,
            format!("invalid path {path:?}: needs a final component that is not `.` or `..`"),
        ));
    }
    Ok((
        if parent.is_empty() {
            "/".to_string()
        } else {
            parent.to_string()
        },
        name.to_string(),
    ))
}

/// Open the parent directory of `path` (`O_PATH | O_DIRECTORY`) and return
/// it with the final component.
pub(crate) fn open_parent(root: impl AsFd, path: &str) -> Result<(OwnedFd, String), GuestError> {
    let (parent, name) = split(path)?;
    let fd = open_in_root(root, &parent, OFlags::PATH | OFlags::DIRECTORY)
        .map_err(|e| super::os_error(e, format!("opening the directory of {path}")))?;
    Ok((fd, name))
}

/// Join a directory path and a name.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_checks() {
        assert_eq!(split("/a/b").unwrap(), ("/a".into(), "b".into()));
        assert_eq!(split("/a/").unwrap(), ("/".into(), "a".into()));
        assert_eq!(split("/a").unwrap(), ("/".into(), "a".into()));
        for bad in ["/", "", "a/b", "/a/..", "/a/.", "/x\0y"] {
            assert!(split(bad).is_err(), "{bad:?}");
        }
        assert!(check(&format!("/{}", "a".repeat(MAX_PATH))).is_err());
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/x", "a"), "/x/a");
    }
}
