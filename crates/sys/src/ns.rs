//! Namespaces: spawning a process straight into new namespaces with
//! `clone3`, writing user-namespace id maps, and holding a user namespace
//! for idmapped mounts.
//!
//! [`spawn`] is the one place hull forks. The daemon is multi-threaded, so
//! the child runs only async-signal-safe calls (`dup2`, `sigprocmask`,
//! `execve`, `_exit`) between `clone3` and `execve`; everything it needs is
//! prepared by the parent before the fork.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Errors of namespace operations.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("clone3 failed")]
    Clone(#[source] io::Error),
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(String),
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn sys_err(what: &'static str) -> impl FnOnce(io::Error) -> NsError {
    move |source| NsError::Sys { what, source }
}

/// Namespaces a sandbox gets: user, mount, pid, uts, ipc, net.
/// (The cgroup namespace is entered by the child after it has been placed
/// in its cgroup, so its root is that cgroup on v1 hosts too.)
pub const SANDBOX_NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET) as u64;

/// Descriptors handed to a child are first moved at or above this number,
/// so targets (which must be below it) never clobber a source.
const HIGH_FD: RawFd = 64;

/// What to start.
pub struct SpawnSpec<'a> {
    pub program: &'a Path,
    pub argv: &'a [&'a OsStr],
    pub env: &'a [(&'a str, &'a str)],
    /// `CLONE_NEW*` flags.
    pub namespaces: u64,
    /// Start in this cgroup v2 directory (`CLONE_INTO_CGROUP`).
    pub cgroup: Option<BorrowedFd<'a>>,
    /// Descriptors to hand over: `(fd in parent, number in child)`, stdio
    /// included. Targets must be distinct and below 64. Every other
    /// descriptor above 2 is closed in the child before it waits or execs;
    /// unlisted stdio descriptors stay as inherited.
    pub fds: &'a [(BorrowedFd<'a>, RawFd)],
    /// Block the child before `execve` until one byte can be read from
    /// this descriptor (the read end of a pipe); the child exits with
    /// status 125 if the pipe closes first. Before it waits, the child
    /// closes every descriptor it was not handed, so the pipe's write end
    /// (and any other half-made sandbox's) lives only in the parent: when
    /// the parent dies, the child sees EOF and exits instead of lingering
    /// with copies of the parent's sockets. The parent uses the pause to
    /// write id maps and join cgroups: a process whose uid is unmapped
    /// when it execs loses its capabilities in the new user namespace.
    pub wait_before_exec: Option<BorrowedFd<'a>>,
    /// After the wait, switch to uid/gid 0 of the new user namespace (the
    /// parent must have mapped them), so the program starts as root there
    /// with its full capability set.
    pub become_root: bool,
}

/// A started child.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// A pidfd for the child: poll it for exit, signal it without pid reuse races.
    pub pidfd: OwnedFd,
}

fn cstring(b: &[u8]) -> Result<CString, NsError> {
    CString::new(b).map_err(|_| NsError::Nul(String::from_utf8_lossy(b).into_owned()))
}

/// Fork a child straight into new namespaces (and a cgroup) and exec `spec.program`.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Spawned, NsError> {
    // Everything the child touches is built here, before the fork.
    let program = cstring(spec.program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    // Move the handed-over fds above any target number, so dup2 in the child
    // can never clobber a source it has yet to copy.
    let mut moved: Vec<(OwnedFd, RawFd)> = Vec::with_capacity(spec.fds.len());
    for (fd, target) in spec.fds {
        // SAFETY: F_DUPFD_CLOEXEC on a valid borrowed fd returns a new fd we own.
        let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
        if high < 0 {
            return Err(NsError::Sys {
                what: "duplicating a descriptor for the child",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `high` was just returned by fcntl and is owned by nobody else.
        moved.push((unsafe { OwnedFd::from_raw_fd(high) }, *target));
    }
    let pairs: Vec<(RawFd, RawFd)> = moved.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    let mut keep: Vec<RawFd> = pairs.iter().map(|&(_, t)| t).collect();
    keep.sort_unstable();
    if keep.windows(2).any(|w| w[0] == w[1]) || keep.iter().any(|&t| !(0..HIGH_FD).contains(&t)) {
        return Err(NsError::Sys {
            what: "handing descriptors to the child (targets must be distinct, 0..64)",
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // Where the child keeps the gate's read end: just above the targets.
    let wait_slot: RawFd = keep.last().map_or(3, |&t| (t + 1).max(3));
    if spec.wait_before_exec.is_some() {
        keep.push(wait_slot);
    }
    // The ranges of descriptors the child closes: every gap above stdio.
    let mut close: Vec<(u32, u32)> = Vec::with_capacity(keep.len() + 1);
    let mut next: RawFd = 3;
    for &k in keep.iter().filter(|&&k| k >= 3) {
        if k > next {
            close.push((next as u32, (k - 1) as u32));
        }
        next = k + 1;
    }
    close.push((next as u32, u32::MAX));
    let wait_fd: Option<OwnedFd> = match spec.wait_before_exec {
        Some(fd) => {
            // SAFETY: F_DUPFD_CLOEXEC on a valid borrowed fd returns a new fd we own.
            let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
            if high < 0 {
                return Err(NsError::Sys {
                    what: "duplicating a descriptor for the child",
                    source: io::Error::last_os_error(),
                });
            }
            // SAFETY: `high` was just returned by fcntl and is owned by nobody else.
            Some(unsafe { OwnedFd::from_raw_fd(high) })
        }
        None => None,
    };
    let become_root = spec.become_root;
    let wait_raw: RawFd = wait_fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);

    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone_args is a plain C struct; all-zero is its documented default.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = spec.namespaces | libc::CLONE_PIDFD as u64;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    if let Some(cg) = spec.cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }

    // SAFETY: clone3 without CLONE_VM gives the child a copy of our address
    // space. In the child we only call async-signal-safe functions on data
    // prepared above, then execve or _exit; we never return into Rust code.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if ret < 0 {
        return Err(NsError::Clone(io::Error::last_os_error()));
    }
    if ret == 0 {
        // Child.
        // SAFETY: async-signal-safe calls only (see above).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for &(src, dst) in &pairs {
                if libc::dup2(src, dst) < 0 {
                    libc::_exit(126);
                }
            }
            if wait_raw >= 0 && libc::dup2(wait_raw, wait_slot) < 0 {
                libc::_exit(126);
            }
            for &(first, last) in &close {
                libc::syscall(libc::SYS_close_range, first, last, 0u32);
            }
            if wait_raw >= 0 {
                let mut b = 0u8;
                loop {
                    let n = libc::read(wait_slot, (&mut b as *mut u8).cast(), 1);
                    if n == 1 {
                        break;
                    }
                    if n == 0 || *libc::__errno_location() != libc::EINTR {
                        libc::_exit(125);
                    }
                }
            }
            // Raw syscalls, not libc's wrappers: glibc's set*id broadcast the
            // change to every thread it knows of, and in this copy of a
            // multi-threaded parent it still "knows" the parent's threads,
            // so the wrapper can wait forever on a futex for them.
            if become_root
                && (libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0)
            {
                libc::_exit(124);
            }
            if wait_raw >= 0 {
                libc::close(wait_slot);
            }
            libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd owned by us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pid: ret as i32,
        pidfd,
    })
}

/// Map `0..count` inside the user namespace of `pid` to `base..base+count` outside.
pub fn write_id_maps(pid: i32, base: u32, count: u32) -> Result<(), NsError> {
    let line = format!("0 {base} {count}\n");
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        fs::write(&path, &line).map_err(|source| NsError::Write { path, source })?;
    }
    Ok(())
}

/// A user namespace with the mapping `0..count -> base..base+count`, held by
/// an fd (for idmapped mounts). The helper process that created it is gone
/// by the time this returns.
pub fn userns_fd(base: u32, count: u32) -> Result<OwnedFd, NsError> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: as in `spawn`: plain struct, zeroed is its default.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = libc::CLONE_NEWUSER as u64 | libc::CLONE_PIDFD as u64;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: the child only calls pause()/_exit(), both async-signal-safe.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if ret < 0 {
        return Err(NsError::Clone(io::Error::last_os_error()));
    }
    if ret == 0 {
        // SAFETY: async-signal-safe only; the parent kills us.
        unsafe {
            loop {
                libc::pause();
            }
        }
    }
    let pid = ret as i32;
    // SAFETY: CLONE_PIDFD stored a pidfd we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let result = write_id_maps(pid, base, count).and_then(|_| {
        fs::File::open(format!("/proc/{pid}/ns/user"))
            .map(OwnedFd::from)
            .map_err(sys_err("opening the helper's user namespace"))
    });
    let _ = pidfd_kill(pidfd_borrow(&pidfd), libc::SIGKILL);
    wait_pid(pid);
    result
}

fn pidfd_borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

/// Send `signal` through a pidfd (no pid-reuse race).
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid fd, a null siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Open a pidfd for an existing process (re-adoption after a daemon restart).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; a non-negative result is a new fd.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Has the process behind `pidfd` exited? (Never blocks.)
pub fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd with a zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// Wait up to `timeout` for the process behind `pidfd` to exit; whether it did.
pub fn pidfd_wait_exit(pidfd: BorrowedFd<'_>, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            // Readable means exited; POLLERR/POLLNVAL (not a live pidfd)
            // is no proof of exit.
            return pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0;
        }
        let interrupted = r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if !interrupted || left.is_zero() {
            return false;
        }
    }
}

/// Reap `pid` if it is our child and has exited (blocking). Ignores errors
/// (e.g. when it was not our child, or another reaper took it).
pub fn wait_pid(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid on a specific pid with a valid status pointer.
    unsafe {
        while libc::waitpid(pid, &mut status, libc::__WALL) < 0 {
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
}

/// Reap `pid` if it has exited; `Some(raw status)` when it did.
pub fn try_wait_pid(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: non-blocking waitpid on a specific pid with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
    (r == pid).then_some(status)
}

/// Start time of a process in clock ticks since boot (`/proc/PID/stat` field 22):
/// with the pid it identifies a process across pid reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `CLONE_INTO_CGROUP` (libc's constant has the wrong width).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Move `fd` to the number `at` (close-on-exec) and keep it open for the
/// life of the process: a descriptor other processes find by number
/// (through `/proc/<pid>/fd/<at>`). Refuses when `at` is already open.
pub fn pin_fd(fd: OwnedFd, at: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(at, libc::F_GETFD) } >= 0 {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: dup3 onto a number that is not open (checked above) clobbers
    // nothing; the new descriptor is intentionally never closed.
    if unsafe { libc::dup3(fd.as_raw_fd(), at, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Take ownership of a descriptor inherited from the parent by number
/// (e.g. init's plan and status pipes), marking it close-on-exec.
/// `None` when no such descriptor is open.
pub fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: set FD_CLOEXEC on an open descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open and, by the caller's contract, nothing
    // else in this process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Wait up to 10 s for `pid` to exit; its exit code.
    fn exit_code(pid: i32) -> Option<i32> {
        for _ in 0..1000 {
            if let Some(st) = try_wait_pid(pid) {
                return libc::WIFEXITED(st).then(|| libc::WEXITSTATUS(st));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn waiting_child_exits_when_the_gate_closes() {
        // The parent dies (here: drops the gate's write end) before letting
        // the child exec. The child must see EOF and exit, not wait forever
        // on its own inherited copy of the write end while holding copies
        // of the parent's other descriptors.
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let spawned = spawn(&SpawnSpec {
            program: Path::new("/bin/true"),
            argv: &[OsStr::new("true")],
            env: &[],
            namespaces: 0,
            cgroup: None,
            fds: &[],
            wait_before_exec: Some(r.as_fd()),
            become_root: false,
        })
        .unwrap();
        drop(r);
        drop(w);
        let code = exit_code(spawned.pid);
        if code.is_none() {
            let _ = pidfd_kill(spawned.pidfd.as_fd(), libc::SIGKILL);
            wait_pid(spawned.pid);
        }
        assert_eq!(code, Some(125), "the child outlived its gate");
    }

    #[test]
    fn child_gets_only_the_descriptors_it_is_handed() {
        // A descriptor the parent forgot to mark close-on-exec.
        let stray =
            nix::fcntl::fcntl(std::io::stderr(), nix::fcntl::FcntlArg::F_DUPFD(20)).unwrap();
        assert!(stray >= 20);
        let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let argv = [
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new("cd /proc/self/fd && echo *"),
        ];
        let spawned = spawn(&SpawnSpec {
            program: Path::new("/bin/sh"),
            argv: &argv,
            env: &[],
            namespaces: 0,
            cgroup: None,
            fds: &[(out_w.as_fd(), 1), (out_w.as_fd(), 7)],
            wait_before_exec: Some(r.as_fd()),
            become_root: false,
        })
        .unwrap();
        drop((r, out_w));
        rustix::io::write(&w, b"x").unwrap();
        let mut out = String::new();
        use std::io::Read;
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        assert_eq!(exit_code(spawned.pid), Some(0));
        let fds: Vec<i32> = out
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        assert!(fds.contains(&7), "handed descriptor missing: {out}");
        assert!(
            !fds.contains(&stray),
            "stray descriptor {stray} leaked: {out}"
        );
        let _ = nix::unistd::close(stray);
    }

    #[test]
    fn bad_descriptor_targets_are_refused() {
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        for fds in [
            &[(r.as_fd(), 5), (r.as_fd(), 5)][..],
            &[(r.as_fd(), 64)],
            &[(r.as_fd(), -1)],
        ] {
            let res = spawn(&SpawnSpec {
                program: Path::new("/bin/true"),
                argv: &[OsStr::new("true")],
                env: &[],
                namespaces: 0,
                cgroup: None,
                fds,
                wait_before_exec: None,
                become_root: false,
            });
            assert!(res.is_err(), "{fds:?}");
        }
    }

    #[test]
    fn pin_fd_places_and_refuses_busy_numbers() {
        let f = std::fs::File::open("/").unwrap();
        pin_fd(OwnedFd::from(f), 700).unwrap();
        let meta = std::fs::metadata("/proc/self/fd/700").unwrap();
        assert!(meta.is_dir());
        // SAFETY: F_GETFD only inspects the descriptor table.
        let flags = unsafe { libc::fcntl(700, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let again = std::fs::File::open("/").unwrap();
        assert!(pin_fd(OwnedFd::from(again), 700).is_err());
        assert!(pin_fd(OwnedFd::from(std::fs::File::open("/").unwrap()), 0).is_err());
    }

    #[test]
    fn start_time_of_self() {
        let t = process_start_time(std::process::id() as i32);
        assert!(t.is_some());
        assert_eq!(process_start_time(-5), None);
    }
}
