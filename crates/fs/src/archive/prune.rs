//! Dropping whiteouts that hide nothing from an overlayfs upper directory,
//! once the layers it will be stacked over are known.
//!
//! overlayfs filters whiteouts out of directory listings only in merged
//! directories: in a directory that exists in just one layer it lists the
//! whiteout's name (whose lookups then fail). A layer written from a
//! collapsed stack ([`write_layers`](super::write_layers), read back with
//! [`Whiteouts::Upper`](super::Whiteouts::Upper)) keeps every whiteout,
//! since the exporter can't know what the base holds; some of them may
//! hide nothing in the actual base. [`prune_whiteouts`] removes those.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use super::apply::dir_names;
use super::export::is_opaque;
use super::{ArchiveError, io_error};

const OPEN_DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// Deepest directory nesting walked.
const MAX_DEPTH: usize = 512;

fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Remove from the upper directory `upper` every whiteout that hides
/// nothing in the stack `below` (layer directories, nearest first, as
/// overlayfs would merge them under `upper`), keeping the modification
/// times of the directories it changes. Returns how many were removed.
/// Nothing is followed through symlinks; `below` is only read.
pub fn prune_whiteouts(upper: &Path, below: &[PathBuf]) -> Result<u64, ArchiveError> {
    let ufd = rustix::fs::open(upper, OPEN_DIR, Mode::empty())
        .map_err(|e| io_error("opening", upper)(e.into()))?;
    let mut stack = Vec::new();
    if !is_opaque(&ufd).map_err(io_error("reading the extended attributes of", upper))? {
        for b in below {
            let fd = rustix::fs::open(b, OPEN_DIR, Mode::empty())
                .map_err(|e| io_error("opening", b)(e.into()))?;
            let opaque =
                is_opaque(&fd).map_err(io_error("reading the extended attributes of", b))?;
            stack.push(fd);
            if opaque {
                break;
            }
        }
    }
    let mut removed = 0;
    prune_dir(&ufd, &stack, upper, 0, &mut removed)?;
    Ok(removed)
}

fn prune_dir(
    dir: &OwnedFd,
    below: &[OwnedFd],
    path: &Path,
    depth: usize,
    removed: &mut u64,
) -> Result<(), ArchiveError> {
    if depth >= MAX_DEPTH {
        return Err(ArchiveError::InvalidArgument(format!(
            "{} is nested more than {MAX_DEPTH} directories deep",
            path.display()
        )));
    }
    let st = rustix::fs::fstat(dir).map_err(|e| io_error("reading", path)(e.into()))?;
    let mut changed = false;
    for name in dir_names(dir).map_err(io_error("listing", path))? {
        let p = path.join(OsStr::from_bytes(name.to_bytes()));
        let cst = match rustix::fs::statat(dir, &*name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(io_error("reading", &p)(e.into())),
        };
        if is_whiteout(&cst) {
            // The first layer below with the name decides: a whiteout
            // there hides nothing either.
            let mut hides = false;
            for b in below {
                match rustix::fs::statat(b, &*name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(s) => {
                        hides = !is_whiteout(&s);
                        break;
                    }
                    Err(Errno::NOENT) => {}
                    Err(_) => {
                        hides = true; // can't tell: keep it
                        break;
                    }
                }
            }
            if !hides {
                rustix::fs::unlinkat(dir, &*name, AtFlags::empty())
                    .map_err(|e| io_error("deleting", &p)(e.into()))?;
                *removed += 1;
                changed = true;
            }
            continue;
        }
        if FileType::from_raw_mode(cst.st_mode) != FileType::Directory {
            continue;
        }
        let sub = rustix::fs::openat(dir, &*name, OPEN_DIR, Mode::empty())
            .map_err(|e| io_error("opening", &p)(e.into()))?;
        let mut sub_below = Vec::new();
        if !is_opaque(&sub).map_err(io_error("reading the extended attributes of", &p))? {
            for b in below {
                match rustix::fs::statat(b, &*name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(s) if FileType::from_raw_mode(s.st_mode) == FileType::Directory => {
                        let fd = rustix::fs::openat(b, &*name, OPEN_DIR, Mode::empty())
                            .map_err(|e| io_error("opening a lower copy of", &p)(e.into()))?;
                        let opaque = is_opaque(&fd)
                            .map_err(io_error("reading the extended attributes of", &p))?;
                        sub_below.push(fd);
                        if opaque {
                            break;
                        }
                    }
                    // A non-directory (or whiteout) ends the merge.
                    Ok(_) => break,
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_error("reading a lower copy of", &p)(e.into())),
                }
            }
        }
        prune_dir(&sub, &sub_below, &p, depth + 1, removed)?;
    }
    if changed {
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: st.st_atime as _,
                tv_nsec: st.st_atime_nsec as _,
            },
            last_modification: Timespec {
                tv_sec: st.st_mtime as _,
                tv_nsec: st.st_mtime_nsec as _,
            },
        };
        rustix::fs::futimens(dir, &times)
            .map_err(|e| io_error("setting the times of", path)(e.into()))?;
    }
    Ok(())
}
