//! The kernel-facing half of the btrfs snapshotter: subvolumes, snapshots,
//! read-only flags, quota groups, and a sparse loop-backed btrfs image for
//! hosts whose state directory is not on btrfs. Everything is done with the
//! btrfs and loop ioctls (numbers and structs from the kernel's
//! `include/uapi/linux/btrfs.h` and `linux/loop.h`); the one exception is
//! formatting a new image, which runs `mkfs.btrfs` (Debian package
//! `btrfs-progs`) because no library formats btrfs.
//!
//! Limits and behaviour worth knowing:
//! - Subvolume names are single path components: no `/`, not `.` or `..`,
//!   no NUL, at most 255 bytes. Paths are followed as given (symlinks in
//!   parent directories resolve); callers pass store paths, not user input.
//! - Creating, snapshotting and deleting need the caller to own the parent
//!   directory (or be root); quotas, `LoopImage` and the fast quota-usage
//!   path need `CAP_SYS_ADMIN`. A snapshot costs the same (~2 ms here)
//!   whatever the subvolume holds.
//! - Deleting a subvolume removes its directory entry at once; the kernel's
//!   cleaner frees the space later. A subvolume that holds other
//!   subvolumes is refused (`ENOTEMPTY`); read-only ones are deleted too.
//! - Quotas are full qgroups, so they cost some write and delete
//!   throughput. Usage numbers are those of the last committed transaction
//!   (btrfs commits every 30 s by default; call [`sync`] first for fresh
//!   ones). A write past a limit fails with `EDQUOT` ("Disk quota
//!   exceeded"), observed on Linux 6.18. The limit is on *referenced*
//!   bytes, which count extents shared with the snapshot's parent: a
//!   sandbox born from a 1 GiB template starts at about 1 GiB referenced.
//! - [`LoopImage::ensure`] attaches the image with `LO_FLAGS_AUTOCLEAR` and
//!   does not keep the loop device open, so unmounting the filesystem
//!   frees the loop device with nothing else to clean up. Bind mounts of the
//!   filesystem elsewhere keep it (and the loop device) alive until they go
//!   too. The image is never grown, shrunk or reformatted once it carries a
//!   btrfs signature, and `mkfs.btrfs` is never forced over another
//!   filesystem's signature. Its minimum size is that of `mkfs.btrfs`
//!   (about 109 MiB with btrfs-progs 6.2); data goes through the page cache
//!   of both filesystems (no direct I/O on the backing file).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::sys::ioctl::ioctl_num_type;

/// The inode number of every subvolume's root directory
/// (`BTRFS_FIRST_FREE_OBJECTID`).
pub const SUBVOLUME_ROOT_INO: u64 = 256;

/// The longest subvolume name the kernel accepts (`BTRFS_VOL_NAME_MAX`).
pub const NAME_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    #[error("{} is not on btrfs", path.display())]
    NotBtrfs { path: PathBuf },
    #[error("{} is not a btrfs subvolume", path.display())]
    NotSubvolume { path: PathBuf },
    #[error("invalid subvolume name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("btrfs quotas are not enabled on the filesystem holding {}", path.display())]
    QuotaDisabled { path: PathBuf },
    #[error("subvolume {} has no quota group 0/{id}", path.display())]
    NoQgroup { path: PathBuf, id: u64 },
    #[error("mkfs.btrfs is not installed (Debian package btrfs-progs); it is needed to format {}", path.display())]
    MkfsMissing { path: PathBuf },
    #[error("mkfs.btrfs {} failed ({status}): {output}", path.display())]
    Mkfs {
        path: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("{} is already a mount point of a {fstype} filesystem, not btrfs", path.display())]
    MountedNotBtrfs { path: PathBuf, fstype: String },
    #[error("{} is already attached to {} but not mounted at {}", image.display(), device.display(), mountpoint.display())]
    ImageBusy {
        image: PathBuf,
        device: PathBuf,
        mountpoint: PathBuf,
    },
    #[error("snapshotting {} as {}", src.display(), dst.display())]
    Snapshot {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {}", path.display())]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BtrfsError {
    /// The errno behind this error, if a system call failed (`EEXIST` for a
    /// name taken, `ENOENT`, `EDQUOT`, `EPERM`, ...), for mapping to API
    /// error kinds.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BtrfsError::Snapshot { source, .. } | BtrfsError::Sys { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

fn sys(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BtrfsError {
    let path = path.to_path_buf();
    move |source| BtrfsError::Sys { what, path, source }
}

fn sys_errno(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> BtrfsError {
    let f = sys(what, path);
    move |e| f(e.into())
}

// ---------------------------------------------------------------------------
// Kernel ABI (include/uapi/linux/btrfs.h, include/uapi/linux/loop.h).

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
const BTRFS_INO_LOOKUP_PATH_MAX: usize = 4080;
const BTRFS_SEARCH_ARGS_BUFSIZE: usize = 4096 - std::mem::size_of::<SearchKey>();

const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
/// `max_rfer` value that removes the limit (the kernel's `CLEAR_VALUE`).
const QGROUP_CLEAR_VALUE: u64 = u64::MAX;
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
const BTRFS_QGROUP_INFO_KEY: u32 = 242;
/// The btrfs primary superblock is at 64 KiB; its magic at offset 0x40.
const BTRFS_MAGIC_OFFSET: u64 = 0x10000 + 0x40;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the unions laid out as their first
/// members: `size`/`qgroup_inherit` as `unused`, and `name`).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; BTRFS_INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args`.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; BTRFS_SEARCH_ARGS_BUFSIZE],
}

/// `struct btrfs_ioctl_search_header`, as it lies in `SearchArgs::buf`.
const SEARCH_HEADER_LEN: usize = 32;

/// `struct btrfs_ioctl_fs_info_args`.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}

const SUBVOL_CREATE: ioctl_num_type =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 14, std::mem::size_of::<VolArgs>());
const SNAP_DESTROY: ioctl_num_type =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 15, std::mem::size_of::<VolArgs>());
const TREE_SEARCH: ioctl_num_type =
    nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, 17, std::mem::size_of::<SearchArgs>());
const INO_LOOKUP: ioctl_num_type =
    nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, 18, std::mem::size_of::<InoLookupArgs>());
const SYNC: ioctl_num_type = nix::request_code_none!(BTRFS_IOCTL_MAGIC, 8);
const SNAP_CREATE_V2: ioctl_num_type =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 23, std::mem::size_of::<VolArgsV2>());
const SUBVOL_GETFLAGS: ioctl_num_type =
    nix::request_code_read!(BTRFS_IOCTL_MAGIC, 25, std::mem::size_of::<u64>());
const SUBVOL_SETFLAGS: ioctl_num_type =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 26, std::mem::size_of::<u64>());
const FS_INFO: ioctl_num_type =
    nix::request_code_read!(BTRFS_IOCTL_MAGIC, 31, std::mem::size_of::<FsInfoArgs>());
const QUOTA_CTL: ioctl_num_type =
    nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, 40, std::mem::size_of::<QuotaCtlArgs>());
// The kernel declares QGROUP_LIMIT with _IOR although it only reads the
// argument; the number has to match, so it is _IOR here too.
const QGROUP_LIMIT: ioctl_num_type = nix::request_code_read!(
    BTRFS_IOCTL_MAGIC,
    43,
    std::mem::size_of::<QgroupLimitArgs>()
);
const QUOTA_RESCAN_WAIT: ioctl_num_type = nix::request_code_none!(BTRFS_IOCTL_MAGIC, 46);
const SNAP_DESTROY_V2: ioctl_num_type =
    nix::request_code_write!(BTRFS_IOCTL_MAGIC, 63, std::mem::size_of::<VolArgsV2>());

const LOOP_SET_FD: ioctl_num_type = 0x4C00;
const LOOP_CLR_FD: ioctl_num_type = 0x4C01;
const LOOP_SET_STATUS64: ioctl_num_type = 0x4C04;
const LOOP_CONFIGURE: ioctl_num_type = 0x4C0A;
const LOOP_CTL_GET_FREE: ioctl_num_type = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The ioctl wrappers `nix` generates are `pub unsafe fn`s; this private
/// module keeps them out of the crate's API.
mod ioc {
    use super::*;

    nix::ioctl_write_ptr_bad!(subvol_create, SUBVOL_CREATE, VolArgs);
    nix::ioctl_write_ptr_bad!(snap_destroy, SNAP_DESTROY, VolArgs);
    nix::ioctl_readwrite_bad!(tree_search, TREE_SEARCH, SearchArgs);
    nix::ioctl_readwrite_bad!(ino_lookup, INO_LOOKUP, InoLookupArgs);
    nix::ioctl_none_bad!(sync, SYNC);
    nix::ioctl_write_ptr_bad!(snap_create_v2, SNAP_CREATE_V2, VolArgsV2);
    nix::ioctl_read_bad!(subvol_getflags, SUBVOL_GETFLAGS, u64);
    nix::ioctl_write_ptr_bad!(subvol_setflags, SUBVOL_SETFLAGS, u64);
    nix::ioctl_read_bad!(fs_info, FS_INFO, FsInfoArgs);
    nix::ioctl_readwrite_bad!(quota_ctl, QUOTA_CTL, QuotaCtlArgs);
    nix::ioctl_read_bad!(qgroup_limit, QGROUP_LIMIT, QgroupLimitArgs);
    nix::ioctl_none_bad!(quota_rescan_wait, QUOTA_RESCAN_WAIT);
    nix::ioctl_write_ptr_bad!(snap_destroy_v2, SNAP_DESTROY_V2, VolArgsV2);
    nix::ioctl_write_int_bad!(loop_set_fd, LOOP_SET_FD);
    nix::ioctl_none_bad!(loop_clr_fd, LOOP_CLR_FD);
    nix::ioctl_write_ptr_bad!(loop_set_status64, LOOP_SET_STATUS64, LoopInfo64);
    nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, LoopConfig);
    nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);
}

// ---------------------------------------------------------------------------
// Queries.

/// Is `path` on a btrfs filesystem (`statfs` type `BTRFS_SUPER_MAGIC`)?
pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(path)?;
    Ok(st.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Is `path` (not following a final symlink) the root directory of a btrfs
/// subvolume, including the top-level one?
pub fn is_subvolume(path: &Path) -> io::Result<bool> {
    let md = fs::symlink_metadata(path)?;
    Ok(md.is_dir() && md.ino() == SUBVOLUME_ROOT_INO && is_btrfs(path)?)
}

/// Check that `name` can be a subvolume name: one path component, not `.`
/// or `..`, no NUL, at most [`NAME_MAX`] bytes.
pub fn validate_name(name: &str) -> Result<(), BtrfsError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "`.` and `..` are not names"
    } else if name.contains('/') {
        "contains `/`"
    } else if name.contains('\0') {
        "contains NUL"
    } else if name.len() > NAME_MAX {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(BtrfsError::InvalidName {
        name: name.chars().take(300).collect(),
        reason,
    })
}

fn ensure_btrfs(path: &Path) -> Result<(), BtrfsError> {
    match is_btrfs(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(BtrfsError::NotBtrfs {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(sys("checking the filesystem of", path)(e)),
    }
}

fn ensure_subvolume(path: &Path) -> Result<(), BtrfsError> {
    ensure_btrfs(path)?;
    match is_subvolume(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(BtrfsError::NotSubvolume {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(sys("inspecting", path)(e)),
    }
}

fn open_dir(path: &Path) -> Result<File, BtrfsError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(sys("opening", path))
}

fn name_buf<const N: usize>(name: &str) -> [u8; N] {
    let mut buf = [0u8; N];
    let b = name.as_bytes();
    let n = b.len().min(N - 1);
    buf[..n].copy_from_slice(&b[..n]);
    buf
}

// ---------------------------------------------------------------------------
// Subvolumes and snapshots.

/// Create an empty subvolume `dir/name` (`BTRFS_IOC_SUBVOL_CREATE`).
/// An existing `name` fails with `EEXIST`.
pub fn create_subvolume(dir: &Path, name: &str) -> Result<(), BtrfsError> {
    validate_name(name)?;
    ensure_btrfs(dir)?;
    let d = open_dir(dir)?;
    let args = VolArgs {
        fd: 0,
        name: name_buf(name),
    };
    // SAFETY: `d` is an open directory fd and `args` a fully initialised
    // btrfs_ioctl_vol_args that outlives the call; the kernel only reads it.
    unsafe { ioc::subvol_create(d.as_raw_fd(), &args) }
        .map_err(sys_errno("creating subvolume", &dir.join(name)))?;
    Ok(())
}

/// Snapshot subvolume `src` as `dir/name` (`BTRFS_IOC_SNAP_CREATE_V2`),
/// read-only when `readonly`. Constant time whatever `src` holds; `dir`
/// must be on the same btrfs filesystem (else `EXDEV`).
pub fn snapshot(src: &Path, dir: &Path, name: &str, readonly: bool) -> Result<(), BtrfsError> {
    validate_name(name)?;
    ensure_subvolume(src)?;
    ensure_btrfs(dir)?;
    let s = open_dir(src)?;
    let d = open_dir(dir)?;
    let args = VolArgsV2 {
        fd: i64::from(s.as_raw_fd()),
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: name_buf(name),
    };
    // SAFETY: `d` is an open directory fd, `args` a fully initialised
    // btrfs_ioctl_vol_args_v2 whose `fd` (the source) stays open for the
    // call; the kernel only reads it.
    unsafe { ioc::snap_create_v2(d.as_raw_fd(), &args) }.map_err(|e| BtrfsError::Snapshot {
        src: src.to_path_buf(),
        dst: dir.join(name),
        source: e.into(),
    })?;
    Ok(())
}

/// Delete subvolume (or snapshot) `path` by name in its parent directory
/// (`BTRFS_IOC_SNAP_DESTROY_V2`, falling back to `SNAP_DESTROY` on kernels
/// before 5.7). Read-only subvolumes are deleted too: root deletes them as
/// they are; without `CAP_SYS_ADMIN` (which needs the filesystem mounted
/// with `user_subvol_rm_allowed`) the kernel refuses them with `EROFS`, so
/// the read-only flag is cleared and the deletion retried.
pub fn delete_subvolume(path: &Path) -> Result<(), BtrfsError> {
    ensure_subvolume(path)?;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(sys("deleting subvolume", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path has no parent directory and name",
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let name = name.to_str().ok_or_else(|| BtrfsError::InvalidName {
        name: name.to_string_lossy().into_owned(),
        reason: "not UTF-8",
    })?;
    validate_name(name)?;
    if !is_btrfs(parent).map_err(sys("checking the filesystem of", parent))? {
        return Err(sys("deleting subvolume", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is the top of a mounted btrfs filesystem",
        )));
    }
    let d = open_dir(parent)?;
    let destroy = || -> Result<(), Errno> {
        let args = VolArgsV2 {
            fd: 0,
            transid: 0,
            flags: 0,
            unused: [0; 4],
            name: name_buf(name),
        };
        // SAFETY: `d` is an open directory fd and `args` a fully
        // initialised btrfs_ioctl_vol_args_v2 naming a child of it; the
        // kernel only reads it.
        match unsafe { ioc::snap_destroy_v2(d.as_raw_fd(), &args) } {
            Err(Errno::ENOTTY) => {
                let v1 = VolArgs {
                    fd: 0,
                    name: name_buf(name),
                };
                // SAFETY: as above, with the v1 btrfs_ioctl_vol_args.
                unsafe { ioc::snap_destroy(d.as_raw_fd(), &v1) }.map(drop)
            }
            r => r.map(drop),
        }
    };
    match destroy() {
        // Without CAP_SYS_ADMIN (under `user_subvol_rm_allowed`) the kernel
        // refuses a read-only subvolume with EROFS; root deletes it as is.
        Err(Errno::EROFS) if is_readonly(path)? => {
            set_readonly(path, false)?;
            destroy().map_err(|e| {
                // Leave it as it was: a failed delete changes nothing.
                let _ = set_readonly(path, true);
                sys_errno("deleting subvolume", path)(e)
            })
        }
        r => r.map_err(sys_errno("deleting subvolume", path)),
    }
}

fn get_flags(f: &File, path: &Path) -> Result<u64, BtrfsError> {
    let mut flags = 0u64;
    // SAFETY: `f` is an open fd on a subvolume root; the kernel writes one
    // u64 into `flags`, which lives across the call.
    unsafe { ioc::subvol_getflags(f.as_raw_fd(), &mut flags) }
        .map_err(sys_errno("reading the subvolume flags of", path))?;
    Ok(flags)
}

/// Is subvolume `path` read-only (`BTRFS_IOC_SUBVOL_GETFLAGS`)?
pub fn is_readonly(path: &Path) -> Result<bool, BtrfsError> {
    ensure_subvolume(path)?;
    let f = open_dir(path)?;
    Ok(get_flags(&f, path)? & BTRFS_SUBVOL_RDONLY != 0)
}

/// Make subvolume `path` read-only or writable
/// (`BTRFS_IOC_SUBVOL_SETFLAGS`). Writes into a read-only subvolume fail
/// with `EROFS`.
pub fn set_readonly(path: &Path, readonly: bool) -> Result<(), BtrfsError> {
    ensure_subvolume(path)?;
    let f = open_dir(path)?;
    let old = get_flags(&f, path)?;
    let new = if readonly {
        old | BTRFS_SUBVOL_RDONLY
    } else {
        old & !BTRFS_SUBVOL_RDONLY
    };
    if new == old {
        return Ok(());
    }
    // SAFETY: `f` is an open fd on a subvolume root; the kernel reads one
    // u64 from `new`, which lives across the call.
    unsafe { ioc::subvol_setflags(f.as_raw_fd(), &new) }
        .map_err(sys_errno("setting the subvolume flags of", path))?;
    Ok(())
}

/// Commit the current transaction of the filesystem holding `path`
/// (`BTRFS_IOC_SYNC`; `syncfs` where that ioctl is refused).
pub fn sync(path: &Path) -> Result<(), BtrfsError> {
    ensure_btrfs(path)?;
    let f = File::open(path).map_err(sys("opening", path))?;
    // SAFETY: `f` is an open fd on the filesystem; the ioctl takes no
    // argument.
    match unsafe { ioc::sync(f.as_raw_fd()) } {
        Ok(_) => Ok(()),
        Err(Errno::EPERM) => nix::unistd::syncfs(&f).map_err(sys_errno("syncing", path)),
        Err(e) => Err(sys_errno("syncing", path)(e)),
    }
}

/// The id of the subvolume that holds `path` (`BTRFS_IOC_INO_LOOKUP` with
/// objectid 256; needs no privilege). The top-level subvolume is 5.
pub fn subvolume_id(path: &Path) -> Result<u64, BtrfsError> {
    ensure_btrfs(path)?;
    let f = File::open(path).map_err(sys("opening", path))?;
    subvolume_id_of(&f, path)
}

fn subvolume_id_of(f: &File, path: &Path) -> Result<u64, BtrfsError> {
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: SUBVOLUME_ROOT_INO,
        name: [0; BTRFS_INO_LOOKUP_PATH_MAX],
    };
    // SAFETY: `f` is an open fd on btrfs and `args` a fully initialised
    // btrfs_ioctl_ino_lookup_args the kernel reads and fills in place.
    unsafe { ioc::ino_lookup(f.as_raw_fd(), &mut args) }
        .map_err(sys_errno("looking up the subvolume id of", path))?;
    Ok(args.treeid)
}

// ---------------------------------------------------------------------------
// Quotas.

/// Enable quota groups on the filesystem holding `mount`
/// (`BTRFS_IOC_QUOTA_CTL`), then wait for the initial rescan
/// (`BTRFS_IOC_QUOTA_RESCAN_WAIT`) so that usage numbers are right.
/// Idempotent. Needs `CAP_SYS_ADMIN`.
pub fn quota_enable(mount: &Path) -> Result<(), BtrfsError> {
    ensure_btrfs(mount)?;
    let f = File::open(mount).map_err(sys("opening", mount))?;
    let mut args = QuotaCtlArgs {
        cmd: BTRFS_QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: `f` is an open fd on btrfs and `args` a fully initialised
    // btrfs_ioctl_quota_ctl_args the kernel reads and may write back.
    unsafe { ioc::quota_ctl(f.as_raw_fd(), &mut args) }
        .map_err(sys_errno("enabling quotas on", mount))?;
    // SAFETY: as above; this ioctl takes no argument.
    unsafe { ioc::quota_rescan_wait(f.as_raw_fd()) }
        .map_err(sys_errno("waiting for the quota rescan of", mount))?;
    Ok(())
}

/// Limit the referenced bytes of subvolume `subvol` (its level-0 qgroup
/// `0/<subvolume id>`, `BTRFS_IOC_QGROUP_LIMIT`); `None` removes the limit.
/// Referenced bytes include extents shared with other subvolumes (a
/// snapshot's parent). Writes past the limit fail with `EDQUOT`. Needs
/// quotas enabled ([`quota_enable`]) and `CAP_SYS_ADMIN`.
pub fn qgroup_limit(subvol: &Path, max_referenced_bytes: Option<u64>) -> Result<(), BtrfsError> {
    ensure_subvolume(subvol)?;
    let f = open_dir(subvol)?;
    let id = subvolume_id_of(&f, subvol)?;
    let mut args = QgroupLimitArgs {
        qgroupid: id,
        lim: QgroupLimit {
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
            max_rfer: max_referenced_bytes.unwrap_or(QGROUP_CLEAR_VALUE),
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    // SAFETY: `f` is an open fd on btrfs and `args` a fully initialised
    // btrfs_ioctl_qgroup_limit_args; the kernel only reads it (the ioctl
    // is declared _IOR for historical reasons).
    match unsafe { ioc::qgroup_limit(f.as_raw_fd(), &mut args) } {
        Ok(_) => Ok(()),
        Err(Errno::ENOTCONN) => Err(BtrfsError::QuotaDisabled {
            path: subvol.to_path_buf(),
        }),
        Err(Errno::ENOENT) => Err(BtrfsError::NoQgroup {
            path: subvol.to_path_buf(),
            id,
        }),
        Err(e) => Err(sys_errno("limiting the quota group of", subvol)(e)),
    }
}

/// `(referenced, exclusive)` bytes of subvolume `subvol`'s level-0 qgroup,
/// as of the last committed transaction (call [`sync`] first for fresh
/// numbers). Read from the quota tree (`BTRFS_IOC_TREE_SEARCH`, needs
/// `CAP_SYS_ADMIN`); without that capability, from
/// `/sys/fs/btrfs/<fsid>/qgroups/0_<id>/` (Linux 5.9+).
pub fn qgroup_usage(subvol: &Path) -> Result<(u64, u64), BtrfsError> {
    ensure_subvolume(subvol)?;
    let f = open_dir(subvol)?;
    let id = subvolume_id_of(&f, subvol)?;
    let missing = || BtrfsError::NoQgroup {
        path: subvol.to_path_buf(),
        id,
    };
    let disabled = || BtrfsError::QuotaDisabled {
        path: subvol.to_path_buf(),
    };
    match search_qgroup_info(&f, id) {
        Ok(Some(usage)) => Ok(usage),
        Ok(None) => Err(missing()),
        // No quota tree: quotas were never enabled, or were disabled.
        Err(Errno::ENOENT) => Err(disabled()),
        Err(Errno::EPERM) => {
            let dir = PathBuf::from(format!("/sys/fs/btrfs/{}/qgroups", fsid(&f, subvol)?));
            if !dir.is_dir() {
                return Err(disabled());
            }
            let g = dir.join(format!("0_{id}"));
            if !g.is_dir() {
                return Err(missing());
            }
            let read = |file: &str| -> Result<u64, BtrfsError> {
                let p = g.join(file);
                let s = fs::read_to_string(&p).map_err(sys("reading", &p))?;
                s.trim().parse().map_err(|_| {
                    sys("parsing", &p)(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{s:?} is not a number"),
                    ))
                })
            };
            Ok((read("referenced")?, read("exclusive")?))
        }
        Err(e) => Err(sys_errno("reading the quota group of", subvol)(e)),
    }
}

/// Look up the `BTRFS_QGROUP_INFO_KEY` item of qgroup `0/id` in the quota
/// tree: `Some((rfer, excl))`, or `None` when there is no such qgroup.
fn search_qgroup_info(f: &File, id: u64) -> Result<Option<(u64, u64)>, Errno> {
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: BTRFS_QUOTA_TREE_OBJECTID,
            min_objectid: 0,
            max_objectid: 0,
            min_offset: id,
            max_offset: id,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: BTRFS_QGROUP_INFO_KEY,
            max_type: BTRFS_QGROUP_INFO_KEY,
            nr_items: 1,
            ..SearchKey::default()
        },
        buf: [0; BTRFS_SEARCH_ARGS_BUFSIZE],
    };
    // SAFETY: `f` is an open fd on btrfs and `args` a fully initialised
    // btrfs_ioctl_search_args; the kernel fills at most its 4 KiB.
    unsafe { ioc::tree_search(f.as_raw_fd(), &mut args) }?;
    Ok(parse_qgroup_info(&args.buf, args.key.nr_items, id))
}

/// Parse `(rfer, excl)` from a TREE_SEARCH result buffer holding `n` items.
fn parse_qgroup_info(buf: &[u8], n: u32, id: u64) -> Option<(u64, u64)> {
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let mut off = 0usize;
    for _ in 0..n {
        // btrfs_ioctl_search_header: transid, objectid, offset (u64),
        // type, len (u32), in host order; then the item, little-endian.
        let h = buf.get(off..off + SEARCH_HEADER_LEN)?;
        let (objectid, offset) = (u64_at(h, 8)?, u64_at(h, 16)?);
        let (ty, len) = (u32_at(h, 24)?, u32_at(h, 28)? as usize);
        let item = buf.get(off + SEARCH_HEADER_LEN..off + SEARCH_HEADER_LEN + len)?;
        if objectid == 0 && ty == BTRFS_QGROUP_INFO_KEY && offset == id {
            // btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl,
            // excl_cmpr.
            return Some((u64_at(item, 8)?, u64_at(item, 24)?));
        }
        off += SEARCH_HEADER_LEN + len;
    }
    None
}

/// The filesystem's UUID as sysfs names it (`BTRFS_IOC_FS_INFO`).
fn fsid(f: &File, path: &Path) -> Result<String, BtrfsError> {
    let mut args = FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        nodesize: 0,
        sectorsize: 0,
        clone_alignment: 0,
        csum_type: 0,
        csum_size: 0,
        flags: 0,
        generation: 0,
        metadata_uuid: [0; 16],
        reserved: [0; 944],
    };
    // SAFETY: `f` is an open fd on btrfs; the kernel fills `args`, a
    // btrfs_ioctl_fs_info_args of the size encoded in the request.
    unsafe { ioc::fs_info(f.as_raw_fd(), &mut args) }
        .map_err(sys_errno("reading the filesystem id of", path))?;
    Ok(format_uuid(&args.fsid))
}

fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

// ---------------------------------------------------------------------------
// Loop-backed images.

/// A btrfs filesystem in a sparse image file, mounted through a loop
/// device. Dropping this value changes nothing: the mount outlives the
/// process (and the daemon); [`unmount`] takes it down and frees the loop
/// device.
#[derive(Debug, Clone)]
pub struct LoopImage {
    image: PathBuf,
    mountpoint: PathBuf,
    device: PathBuf,
    already_mounted: bool,
    formatted: bool,
}

/// How many times to take a fresh free loop device when another process
/// binds the one we were given first.
const LOOP_ATTACH_TRIES: usize = 32;

impl LoopImage {
    /// Make sure a btrfs filesystem is mounted at `mountpoint`, backed by
    /// the sparse file `image` when it has to be mounted:
    ///
    /// 1. If `mountpoint` is already a btrfs mount, return it
    ///    ([`already_mounted`](Self::already_mounted) is true); nothing is
    ///    checked about what backs it.
    /// 2. Otherwise create `image` (mode 0600, `size_bytes`, sparse) if
    ///    missing and format it with `mkfs.btrfs -q` unless it already
    ///    carries a btrfs signature.
    /// 3. Attach it to a free loop device with autoclear, mount it with
    ///    `noatime`, and close the loop device.
    ///
    /// Concurrent calls for the same image serialise on an exclusive
    /// `flock` of the image file. Creates `mountpoint` and the image's
    /// directory if missing. An image that is attached to a loop device
    /// already but not mounted here (and stays so for 5 s: one unmounted
    /// just now is released asynchronously) is refused
    /// ([`BtrfsError::ImageBusy`]).
    pub fn ensure(
        image: &Path,
        size_bytes: u64,
        mountpoint: &Path,
    ) -> Result<LoopImage, BtrfsError> {
        fs::create_dir_all(mountpoint).map_err(sys("creating mount point", mountpoint))?;
        let mnt = fs::canonicalize(mountpoint).map_err(sys("resolving", mountpoint))?;
        let existing = |image: PathBuf| -> Result<Option<LoopImage>, BtrfsError> {
            Ok(btrfs_mount_at(&mnt)?.map(|device| LoopImage {
                image,
                mountpoint: mnt.clone(),
                device,
                already_mounted: true,
                formatted: false,
            }))
        };
        if let Some(found) = existing(image.to_path_buf())? {
            return Ok(found);
        }

        if let Some(dir) = image.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(sys("creating the directory of", image))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(image)
            .map_err(sys("opening image", image))?;
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| sys_errno("locking image", image)(e))?;
        let image = fs::canonicalize(image).map_err(sys("resolving", image))?;
        // Another process may have mounted it while we waited for the lock.
        if let Some(found) = existing(image.clone())? {
            return Ok(found);
        }
        let md = file.metadata().map_err(sys("inspecting image", &image))?;
        if !md.is_file() {
            return Err(sys("using image", &image)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        // An image unmounted a moment ago may still be attached: its loop
        // device (autoclear) is released once the kernel lets go of the
        // filesystem, asynchronously: after a killed process's namespace
        // goes, a btrfs unmount commits first, which took over 5 s on a
        // loaded 2-core machine (a cold CI run). Give that 20 seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut attached =
            loop_devices_backing(&image).map_err(sys("listing the loop devices of", &image))?;
        while !attached.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            attached =
                loop_devices_backing(&image).map_err(sys("listing the loop devices of", &image))?;
        }
        if let Some(device) = attached.into_iter().next() {
            return Err(BtrfsError::ImageBusy {
                image,
                device,
                mountpoint: mnt,
            });
        }

        let formatted = if has_btrfs_signature(&file).map_err(sys("reading image", &image))? {
            false
        } else {
            if md.len() < size_bytes {
                file.set_len(size_bytes)
                    .map_err(sys("sizing image", &image))?;
            }
            mkfs(&image)?;
            true
        };

        let (device, loop_fd) = attach_loop(&file, &image)?;
        nix::mount::mount(
            Some(&device),
            &mnt,
            Some("btrfs"),
            nix::mount::MsFlags::MS_NOATIME,
            None::<&str>,
        )
        .map_err(sys_errno("mounting a btrfs image at", &mnt))?;
        // The mount holds the loop device now; with autoclear, unmounting
        // detaches it once nothing else has it open.
        drop(loop_fd);
        Ok(LoopImage {
            image,
            mountpoint: mnt,
            device,
            already_mounted: false,
            formatted,
        })
    }

    /// The image file (as given, when the mount was found already there).
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Where the filesystem is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The mounted device, e.g. `/dev/loop3`, as the mount table names it.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// True when `mountpoint` was a btrfs mount before this call, so
    /// nothing was attached or mounted.
    pub fn already_mounted(&self) -> bool {
        self.already_mounted
    }

    /// True when this call ran `mkfs.btrfs` (a new, empty filesystem).
    pub fn formatted(&self) -> bool {
        self.formatted
    }

    /// [`unmount`] this image's mount point.
    pub fn unmount(&self) -> Result<(), BtrfsError> {
        unmount(&self.mountpoint)
    }
}

/// Unmount the btrfs filesystem at `mountpoint`; a loop device attached by
/// [`LoopImage::ensure`] is freed with it (autoclear). Nothing mounted
/// there is not an error; a mount of another type is refused. A busy
/// filesystem fails with `EBUSY` (the mount stays).
pub fn unmount(mountpoint: &Path) -> Result<(), BtrfsError> {
    let mnt = match fs::canonicalize(mountpoint) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(sys("resolving", mountpoint)(e)),
    };
    if btrfs_mount_at(&mnt)?.is_none() {
        return Ok(());
    }
    nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()).map_err(sys_errno("unmounting", &mnt))
}

/// The loop devices whose backing file is `image`
/// (`/sys/block/loop*/loop/backing_file`).
pub fn loop_devices_backing(image: &Path) -> io::Result<Vec<PathBuf>> {
    let image = fs::canonicalize(image)?;
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block")? {
        let e = e?;
        let name = e.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        let Ok(backing) = fs::read(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        if Path::new(OsStr::from_bytes(backing)) == image {
            out.push(Path::new("/dev").join(name));
        }
    }
    out.sort();
    Ok(out)
}

/// The source device of the topmost mount at `mnt` if it is btrfs; `None`
/// if nothing is mounted there; an error if something else is.
fn btrfs_mount_at(mnt: &Path) -> Result<Option<PathBuf>, BtrfsError> {
    let table = fs::read_to_string("/proc/self/mountinfo")
        .map_err(sys("reading", Path::new("/proc/self/mountinfo")))?;
    match mount_entry(&table, mnt) {
        None => Ok(None),
        Some((fstype, _)) if fstype != "btrfs" => Err(BtrfsError::MountedNotBtrfs {
            path: mnt.to_path_buf(),
            fstype,
        }),
        Some((_, source)) => Ok(Some(PathBuf::from(source))),
    }
}

/// `(fstype, source)` of the last (topmost) mount at `mnt` in a
/// mountinfo table.
fn mount_entry(table: &str, mnt: &Path) -> Option<(String, String)> {
    let unescape = crate::mount::unescape_mountinfo;
    table.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        let mut r = right.split(' ');
        let (fstype, source) = (r.next()?, r.next()?);
        (Path::new(&unescape(point)) == mnt).then(|| (unescape(fstype), unescape(source)))
    })
}

fn has_btrfs_signature(f: &File) -> io::Result<bool> {
    let mut magic = [0u8; 8];
    match f.read_exact_at(&mut magic, BTRFS_MAGIC_OFFSET) {
        Ok(()) => Ok(&magic == BTRFS_MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Format `image` with `mkfs.btrfs -q` (never `-f`: another filesystem's
/// signature makes it refuse). Looked up in `PATH`, then in the sbin
/// directories a non-login root shell may lack.
fn mkfs(image: &Path) -> Result<(), BtrfsError> {
    let candidates = ["mkfs.btrfs", "/usr/sbin/mkfs.btrfs", "/sbin/mkfs.btrfs"];
    for prog in candidates {
        let out = match Command::new(prog).arg("-q").arg(image).output() {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(sys("running mkfs.btrfs on", image)(e)),
        };
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(BtrfsError::Mkfs {
            path: image.to_path_buf(),
            status: out.status,
            output: text,
        });
    }
    Err(BtrfsError::MkfsMissing {
        path: image.to_path_buf(),
    })
}

fn loop_info(image: &Path) -> LoopInfo64 {
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; LO_NAME_SIZE],
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    // Informational only (losetup reads sysfs's backing_file); truncated.
    let name = image.as_os_str().as_bytes();
    let n = name.len().min(LO_NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    info
}

/// Bind `image` to a free loop device with autoclear; returns the device
/// path and its open fd (keep it open until the device is mounted, or the
/// device detaches itself).
fn attach_loop(image: &File, path: &Path) -> Result<(PathBuf, File), BtrfsError> {
    let ctl_path = Path::new("/dev/loop-control");
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open(ctl_path)
        .map_err(sys("opening", ctl_path))?;
    for _ in 0..LOOP_ATTACH_TRIES {
        // SAFETY: `ctl` is an open fd on /dev/loop-control; the ioctl takes
        // no argument and returns a device number.
        let n = unsafe { ioc::loop_ctl_get_free(ctl.as_raw_fd()) }
            .map_err(sys_errno("finding a free loop device through", ctl_path))?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let lo = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(sys("opening", &dev))?;
        match configure_loop(&lo, image, path) {
            Ok(()) => return Ok((dev, lo)),
            // Another process bound it between GET_FREE and our call.
            Err(Errno::EBUSY) => continue,
            Err(e) => return Err(sys_errno("attaching a loop device to", path)(e)),
        }
    }
    Err(sys("attaching a loop device to", path)(io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!("other processes took every free loop device first, {LOOP_ATTACH_TRIES} times"),
    )))
}

fn configure_loop(lo: &File, image: &File, path: &Path) -> Result<(), Errno> {
    let config = LoopConfig {
        fd: image.as_raw_fd() as u32,
        block_size: 0,
        info: loop_info(path),
        reserved: [0; 8],
    };
    // SAFETY: `lo` is an open loop device fd and `config` a fully
    // initialised struct loop_config whose `fd` (the image) stays open for
    // the call; the kernel only reads it.
    match unsafe { ioc::loop_configure(lo.as_raw_fd(), &config) } {
        Ok(_) => return Ok(()),
        // Before Linux 5.8 there is no LOOP_CONFIGURE.
        Err(Errno::EINVAL | Errno::ENOTTY) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: `lo` is an open loop device fd; the argument is the image fd,
    // open for the call.
    unsafe { ioc::loop_set_fd(lo.as_raw_fd(), image.as_raw_fd()) }?;
    // SAFETY: `lo` is the loop device we just bound; `config.info` is a
    // fully initialised loop_info64 the kernel only reads.
    if let Err(e) = unsafe { ioc::loop_set_status64(lo.as_raw_fd(), &config.info) } {
        // SAFETY: undo our own LOOP_SET_FD on the same fd; no argument.
        let _ = unsafe { ioc::loop_clr_fd(lo.as_raw_fd()) };
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn structs_match_the_kernel_layout() {
        assert_eq!(size_of::<VolArgs>(), 4096);
        assert_eq!(size_of::<VolArgsV2>(), 4096);
        assert_eq!(size_of::<QgroupLimitArgs>(), 48);
        assert_eq!(size_of::<QuotaCtlArgs>(), 16);
        assert_eq!(size_of::<InoLookupArgs>(), 4096);
        assert_eq!(size_of::<SearchKey>(), 104);
        assert_eq!(size_of::<SearchArgs>(), 4096);
        assert_eq!(size_of::<FsInfoArgs>(), 1024);
        assert_eq!(size_of::<LoopInfo64>(), 232);
        assert_eq!(size_of::<LoopConfig>(), 304);
        assert_eq!(std::mem::offset_of!(VolArgsV2, name), 56);
        assert_eq!(std::mem::offset_of!(FsInfoArgs, flags), 48);
    }

    #[test]
    fn ioctl_numbers_match_btrfs_progs() {
        // The values btrfs-progs and strace print for these requests.
        assert_eq!(SUBVOL_CREATE, 0x5000_940e);
        assert_eq!(SNAP_DESTROY, 0x5000_940f);
        assert_eq!(TREE_SEARCH, 0xd000_9411);
        assert_eq!(INO_LOOKUP, 0xd000_9412);
        assert_eq!(SYNC, 0x9408);
        assert_eq!(SNAP_CREATE_V2, 0x5000_9417);
        assert_eq!(SUBVOL_GETFLAGS, 0x8008_9419);
        assert_eq!(SUBVOL_SETFLAGS, 0x4008_941a);
        assert_eq!(FS_INFO, 0x8400_941f);
        assert_eq!(QUOTA_CTL, 0xc010_9428);
        assert_eq!(QGROUP_LIMIT, 0x8030_942b);
        assert_eq!(QUOTA_RESCAN_WAIT, 0x942e);
        assert_eq!(SNAP_DESTROY_V2, 0x5000_943f);
    }

    #[test]
    fn names_are_single_components() {
        for ok in ["a", "sb-1", "snap.2026", &"x".repeat(255), "..."] {
            assert!(validate_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/etc",
            "../x",
            "a\0b",
            &"x".repeat(256),
        ] {
            let e = validate_name(bad).unwrap_err();
            assert!(matches!(e, BtrfsError::InvalidName { .. }), "{bad:?}");
            assert!(e.to_string().starts_with("invalid subvolume name"), "{e}");
        }
        // 255 bytes, not 255 characters.
        assert!(validate_name(&"é".repeat(128)).is_err());
    }

    #[test]
    fn qgroup_info_items_parse() {
        let mut buf = vec![0u8; 200];
        let put = |b: &mut [u8], at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        // header: transid 7, objectid 0, offset 257, type 242, len 40
        put(&mut buf, 0, &7u64.to_ne_bytes());
        put(&mut buf, 16, &257u64.to_ne_bytes());
        put(&mut buf, 24, &BTRFS_QGROUP_INFO_KEY.to_ne_bytes());
        put(&mut buf, 28, &40u32.to_ne_bytes());
        // item: generation, rfer, rfer_cmpr, excl, excl_cmpr
        for (i, v) in [7u64, 1 << 20, 1 << 20, 4096, 4096].iter().enumerate() {
            put(&mut buf, 32 + i * 8, &v.to_le_bytes());
        }
        assert_eq!(parse_qgroup_info(&buf, 1, 257), Some((1 << 20, 4096)));
        assert_eq!(parse_qgroup_info(&buf, 1, 258), None);
        assert_eq!(parse_qgroup_info(&buf, 0, 257), None);
        assert_eq!(parse_qgroup_info(&buf[..50], 1, 257), None, "truncated");
    }

    #[test]
    fn mountinfo_lookup_takes_the_topmost_mount() {
        let table = "\
22 1 0:20 / /proc rw - proc proc rw
40 1 7:0 / /var/lib/hull\\040x rw,noatime shared:5 - btrfs /dev/loop0 rw
41 40 0:30 / /var/lib/hull\\040x rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_entry(table, Path::new("/var/lib/hull x")),
            Some(("tmpfs".into(), "tmpfs".into()))
        );
        assert_eq!(
            mount_entry(
                &table.lines().take(2).collect::<Vec<_>>().join("\n"),
                Path::new("/var/lib/hull x")
            ),
            Some(("btrfs".into(), "/dev/loop0".into()))
        );
        assert_eq!(mount_entry(table, Path::new("/var/lib")), None);
    }

    #[test]
    fn uuids_format_like_sysfs() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(format_uuid(&u), "12345678-9abc-def0-0123-456789abcdef");
    }

    #[test]
    fn non_btrfs_paths_are_refused_clearly() {
        let d = tempfile::tempdir().unwrap();
        if is_btrfs(d.path()).unwrap() {
            return;
        }
        let e = create_subvolume(d.path(), "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} is not on btrfs", d.path().display())
        );
        assert!(!is_subvolume(d.path()).unwrap());
        assert!(matches!(
            snapshot(d.path(), d.path(), "y", true),
            Err(BtrfsError::NotBtrfs { .. })
        ));
        assert!(matches!(
            delete_subvolume(d.path()),
            Err(BtrfsError::NotBtrfs { .. })
        ));
        assert!(matches!(
            subvolume_id(d.path()),
            Err(BtrfsError::NotBtrfs { .. })
        ));
        assert!(matches!(unmount(d.path()), Ok(())), "nothing mounted");
    }
}
