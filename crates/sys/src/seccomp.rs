//! The sandbox seccomp policy: an allowlist of x86_64 system calls.
//!
//! Anything not listed fails with `EPERM`; calls made through another ABI
//! (i386 `int 0x80`, which carries a different audit architecture) kill the
//! process, and x32 calls (numbers with bit 30 set) are not in the list, so
//! they fail with `EPERM`. The list follows what a normal Linux userland
//! needs (Docker's default profile was the reference) and refuses at least
//! everything Docker refuses: kernel modules, `kexec`, `bpf`,
//! `perf_event_open`, handle-based opens, keyrings, `acct`, swap, `syslog`,
//! quotas, clock setting, reboot, mounts, namespace creation, `userfaultfd`,
//! `io_uring`, raw I/O ports, `kcmp`/`pidfd_getfd`, NUMA policy, and
//! `AF_VSOCK` sockets. `clone` and `unshare` are allowed only without
//! namespace flags; `clone3` (whose flags live in memory a filter can't
//! read) fails with `ENOSYS`, so libc falls back to `clone`, as under
//! Docker. A second, tiny filter carries that `ENOSYS`. `ptrace` and
//! `process_vm_{readv,writev}` are allowed, as Docker does on kernels from
//! 4.8 on (where seccomp is re-checked after a tracer changes a call):
//! debuggers work on the sandbox's own processes, and the pid and user
//! namespaces keep everything else out of reach.
//!
//! Limits: x86_64 only (other architectures get an error from
//! [`sandbox_filter`]); filters apply to the calling thread, so install them
//! in a single-threaded process before it starts threads or execs.

use seccompiler::{BpfProgram, sock_filter};

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filters are only built for x86_64 (this is {0})")]
    UnsupportedArch(&'static str),
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
}

/// Namespace-creating clone/unshare flags.
pub const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP
    | 0x80) as u64; // CLONE_NEWTIME

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name)),*]
    };
}

/// Allowed without conditions.
const ALLOWED: &[(&str, libc::c_long)] = syscalls![
    SYS_accept,
    SYS_accept4,
    SYS_access,
    SYS_alarm,
    SYS_arch_prctl,
    SYS_bind,
    SYS_brk,
    SYS_capget,
    SYS_capset,
    SYS_chdir,
    SYS_chmod,
    SYS_chown,
    SYS_chroot,
    SYS_clock_getres,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_close,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_creat,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_epoll_create,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_epoll_wait,
    SYS_eventfd,
    SYS_eventfd2,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fanotify_mark,
    SYS_fchdir,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchmodat2,
    SYS_fchown,
    SYS_fchownat,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fork,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstat,
    SYS_fstatfs,
    SYS_fsync,
    SYS_ftruncate,
    SYS_futex,
    SYS_futex_waitv,
    SYS_get_robust_list,
    SYS_get_thread_area,
    SYS_getcpu,
    SYS_getcwd,
    SYS_getdents,
    SYS_getdents64,
    SYS_getegid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpgid,
    SYS_getpgrp,
    SYS_getpid,
    SYS_getppid,
    SYS_getpriority,
    SYS_getrandom,
    SYS_getresgid,
    SYS_getresuid,
    SYS_getrlimit,
    SYS_getrusage,
    SYS_getsid,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_gettid,
    SYS_gettimeofday,
    SYS_getuid,
    SYS_getxattr,
    SYS_inotify_add_watch,
    SYS_inotify_init,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_io_setup,
    SYS_io_submit,
    SYS_ioctl,
    SYS_ioprio_get,
    SYS_ioprio_set,
    SYS_kill,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lchown,
    SYS_lgetxattr,
    SYS_link,
    SYS_linkat,
    SYS_listen,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lseek,
    SYS_lsetxattr,
    SYS_lstat,
    SYS_madvise,
    SYS_membarrier,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_mincore,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_mknod,
    SYS_mknodat,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mmap,
    SYS_mprotect,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_mremap,
    SYS_mseal,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_munmap,
    SYS_nanosleep,
    SYS_newfstatat,
    SYS_open,
    SYS_openat,
    SYS_openat2,
    SYS_pause,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pipe,
    SYS_pipe2,
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_poll,
    SYS_ppoll,
    SYS_prctl,
    SYS_pread64,
    SYS_preadv,
    SYS_preadv2,
    SYS_prlimit64,
    SYS_process_mrelease,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_pselect6,
    SYS_ptrace,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_read,
    SYS_readahead,
    SYS_readlink,
    SYS_readlinkat,
    SYS_readv,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_remap_file_pages,
    SYS_removexattr,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_restart_syscall,
    SYS_rmdir,
    SYS_rseq,
    SYS_rt_sigaction,
    SYS_rt_sigpending,
    SYS_rt_sigprocmask,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getaffinity,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_sched_setattr,
    SYS_sched_setparam,
    SYS_sched_setscheduler,
    SYS_sched_yield,
    SYS_seccomp,
    SYS_select,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_set_robust_list,
    SYS_set_thread_area,
    SYS_set_tid_address,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setitimer,
    SYS_setpgid,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_setrlimit,
    SYS_setsid,
    SYS_setsockopt,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_sigaltstack,
    SYS_signalfd,
    SYS_signalfd4,
    SYS_socketpair,
    SYS_splice,
    SYS_stat,
    SYS_statfs,
    SYS_statx,
    SYS_symlink,
    SYS_symlinkat,
    SYS_sync,
    SYS_sync_file_range,
    SYS_syncfs,
    SYS_sysinfo,
    SYS_tee,
    SYS_tgkill,
    SYS_time,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_times,
    SYS_tkill,
    SYS_truncate,
    SYS_umask,
    SYS_uname,
    SYS_unlink,
    SYS_unlinkat,
    SYS_utime,
    SYS_utimensat,
    SYS_utimes,
    SYS_vfork,
    SYS_vmsplice,
    SYS_wait4,
    SYS_waitid,
    SYS_write,
    SYS_writev,
];

/// Allowed without conditions, newer than the `libc` crate's x86_64 table
/// (numbers from the kernel's `syscall_64.tbl`). On older kernels they
/// fail with `ENOSYS` as usual.
const ALLOWED_NEWER: &[(&str, libc::c_long)] = &[
    ("io_pgetevents", 333),
    ("uretprobe", 335),
    ("cachestat", 451),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
    ("file_getattr", 468),
    ("file_setattr", 469),
];

/// `socket` is allowed for every address family but `AF_VSOCK`, which
/// reaches the host (or a hypervisor) outside the network namespace, as
/// in Docker.
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;

/// `personality` values allowed (as in Docker): query, `PER_LINUX`,
/// `UNAME26`, `PER_LINUX32` and its `UNAME26` variant.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Examples of what the filter refuses (for docs and tests).
pub const DENIED_EXAMPLES: &[&str] = &[
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "open_by_handle_at",
    "name_to_handle_at",
    "add_key",
    "request_key",
    "keyctl",
    "acct",
    "swapon",
    "swapoff",
    "syslog",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "reboot",
    "mount",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsmount",
    "mount_setattr",
    "setns",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "sethostname",
    "setdomainname",
    "vhangup",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "mbind",
    "set_mempolicy",
    "move_pages",
    "migrate_pages",
    "fanotify_init",
    "get_mempolicy",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "statmount",
    "listmount",
    "modify_ldt",
    "socket(AF_VSOCK)",
    "clone/unshare with namespace flags",
    "clone3 (ENOSYS)",
];

/// Names of the system calls the filter allows (some only with conditions:
/// `clone`, `unshare`, `personality`, `socket`).
pub fn allowed_syscalls() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ALLOWED
        .iter()
        .map(|(n, _)| n.trim_start_matches("SYS_"))
        .chain(ALLOWED_NEWER.iter().map(|(n, _)| *n))
        .collect();
    v.extend(["clone", "unshare", "personality", "socket"]);
    v.sort_unstable();
    v
}

fn check_arch() -> Result<(), SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(())
    } else {
        Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
    }
}

// Classic BPF, as seccomp runs it: opcodes, `seccomp_data` offsets, actions.
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of argument 0 (x86_64 is little-endian).
const OFF_ARG0_LO: u32 = 16;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
/// x32 system calls carry this bit in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Emit a decision over the sorted, disjoint ranges `r` of allowed numbers
/// (the syscall number is in the accumulator): a balanced binary search,
/// so a call costs O(log ranges) comparisons, not a scan of the whole list.
fn emit_ranges(r: &[(u32, u32)], out: &mut Vec<sock_filter>) {
    match r {
        [] => out.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32)),
        [(lo, hi)] => {
            out.push(jump(JMP_JGE_K, *lo, 0, 2));
            out.push(jump(JMP_JGT_K, *hi, 1, 0));
            out.push(stmt(RET_K, RET_ALLOW));
            out.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
        }
        _ => {
            let (left, right) = r.split_at(r.len() / 2);
            // nr >= right's first number: take the `ja` over the left half
            // (jump offsets of conditional jumps are only 8 bits wide).
            out.push(jump(JMP_JGE_K, right[0].0, 0, 1));
            let ja = out.len();
            out.push(stmt(JMP_JA, 0));
            emit_ranges(left, out);
            out[ja].k = (out.len() - ja - 1) as u32;
            emit_ranges(right, out);
        }
    }
}

/// Merge sorted syscall numbers into inclusive ranges.
fn ranges(nrs: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &n in nrs {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// The sandbox filter: one program (a list, so more can be stacked).
///
/// Layout: a foreign audit architecture (i386 `int 0x80`) kills the
/// process; x32 numbers fail with `EPERM`; `clone3` fails with `ENOSYS`;
/// `socket`, `clone`, `unshare` and `personality` check their first
/// argument; every other number is looked up in the allowlist by binary
/// search over ranges of consecutive numbers. Built by hand rather than with
/// seccompiler's generator, whose linear layout is about 1,500 instructions
/// for this list: the kernel verifies and JIT-compiles a filter on every
/// sandbox start (about 0.6 ms for that one) and runs it on every call.
pub fn sandbox_filter() -> Result<Vec<BpfProgram>, SeccompError> {
    check_arch()?;
    let special = [
        libc::SYS_socket,
        libc::SYS_clone,
        libc::SYS_unshare,
        libc::SYS_personality,
        libc::SYS_clone3,
    ];
    let mut nrs: Vec<u32> = ALLOWED
        .iter()
        .chain(ALLOWED_NEWER)
        .map(|&(_, nr)| nr as u32)
        .filter(|nr| !special.contains(&i64::from(*nr)))
        .collect();
    nrs.sort_unstable();
    nrs.dedup();
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFF_NR),
        jump(JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, eperm),
    ];
    // Calls with argument checks, each with its own short block.
    let flags = NAMESPACE_FLAGS as u32;
    let socket = vec![
        stmt(LD_W_ABS, OFF_ARG0_LO),
        jump(JMP_JEQ_K, AF_VSOCK as u32, 0, 1),
        stmt(RET_K, eperm),
        stmt(RET_K, RET_ALLOW),
    ];
    let no_namespaces = vec![
        stmt(LD_W_ABS, OFF_ARG0_LO),
        jump(JMP_JSET_K, flags, 0, 1),
        stmt(RET_K, eperm),
        stmt(RET_K, RET_ALLOW),
    ];
    let mut personality = vec![stmt(LD_W_ABS, OFF_ARG0_LO)];
    for (i, &v) in PERSONALITIES.iter().enumerate() {
        // Jump to the ALLOW at the end on a match.
        let to_allow = (PERSONALITIES.len() - i) as u8;
        personality.push(jump(JMP_JEQ_K, v as u32, to_allow, 0));
    }
    personality.push(stmt(RET_K, eperm));
    personality.push(stmt(RET_K, RET_ALLOW));
    let blocks: [(i64, Vec<sock_filter>); 5] = [
        (
            libc::SYS_clone3,
            vec![stmt(RET_K, RET_ERRNO | libc::ENOSYS as u32)],
        ),
        (libc::SYS_socket, socket),
        (libc::SYS_clone, no_namespaces.clone()),
        (libc::SYS_unshare, no_namespaces),
        (libc::SYS_personality, personality),
    ];
    // `jeq nr` for each, then the search, then the blocks in order.
    let mut search = Vec::new();
    emit_ranges(&ranges(&nrs), &mut search);
    let mut offset = search.len();
    for (i, (nr, block)) in blocks.iter().enumerate() {
        let to = blocks.len() - 1 - i + offset;
        p.push(jump(
            JMP_JEQ_K,
            *nr as u32,
            u8::try_from(to).expect("seccomp blocks within a short jump"),
            0,
        ));
        offset += block.len();
    }
    p.extend(search);
    for (_, block) in blocks {
        p.extend(block);
    }
    Ok(vec![p])
}

/// Set `no_new_privs` on the calling thread (required to install filters
/// without CAP_SYS_ADMIN, and so setuid binaries can't gain privileges).
pub fn set_no_new_privs() -> Result<(), SeccompError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(SeccompError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Install the filters on the calling thread, in order.
pub fn install(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(SeccompError::Install)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;

    /// Run `f` in a forked child, under the filter when `filtered`; return
    /// how the child ended.
    fn in_child(filtered: bool, f: impl FnOnce() -> i32) -> WaitStatus {
        let filters = sandbox_filter().unwrap();
        // SAFETY: the child only runs `f` (raw syscalls, or an exec with
        // everything prepared before the fork) and then _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = if !filtered || (set_no_new_privs().is_ok() && install(&filters).is_ok())
                {
                    f()
                } else {
                    99
                };
                // SAFETY: _exit never returns and skips atexit handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    /// Run `f` in a forked child under the filter; return its exit code.
    fn in_filtered_child(f: impl FnOnce() -> i32) -> i32 {
        match in_child(true, f) {
            WaitStatus::Exited(_, c) => c,
            other => panic!("child ended with {other:?}"),
        }
    }

    /// errno of a raw syscall (0 on success). Missing arguments are 0.
    fn errno_of(nr: libc::c_long, args: &[u64]) -> i32 {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        // SAFETY: the refused calls never run; every call is given
        // arguments that make it fail harmlessly or do nothing, so even a
        // broken filter would not change the host.
        let r = unsafe { libc::syscall(nr, a(0), a(1), a(2), a(3), a(4), a(5)) };
        if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn lists_are_consistent() {
        let allowed = allowed_syscalls();
        assert!(allowed.contains(&"read") && allowed.contains(&"clone"));
        assert!(allowed.contains(&"futex_wake") && allowed.contains(&"socket"));
        for denied in DENIED_EXAMPLES {
            assert!(!allowed.contains(denied), "{denied} must not be allowed");
        }
        let mut dedup = allowed.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), allowed.len(), "no name twice");
        let filter = sandbox_filter().unwrap();
        assert_eq!(filter.len(), 1);
        assert!(filter[0].len() < 400, "{} instructions", filter[0].len());
    }

    /// Run a program the way the kernel does, on one `seccomp_data`.
    fn run_bpf(p: &[sock_filter], nr: u32, arch: u32, arg0: u64) -> u32 {
        let data = |off: u32| match off {
            OFF_NR => nr,
            OFF_ARCH => arch,
            OFF_ARG0_LO => arg0 as u32,
            20 => (arg0 >> 32) as u32,
            _ => 0,
        };
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &p[pc];
            pc += 1;
            let branch = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                LD_W_ABS => a = data(i.k),
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K => pc += branch(a == i.k),
                JMP_JGT_K => pc += branch(a > i.k),
                JMP_JGE_K => pc += branch(a >= i.k),
                JMP_JSET_K => pc += branch(a & i.k != 0),
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn the_program_decides_every_number_as_the_lists_say() {
        let p = &sandbox_filter().unwrap()[0];
        let allowed: Vec<u32> = ALLOWED
            .iter()
            .chain(ALLOWED_NEWER)
            .map(|&(_, nr)| nr as u32)
            .collect();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let x86 = AUDIT_ARCH_X86_64;
        let conditional = [
            libc::SYS_socket,
            libc::SYS_clone,
            libc::SYS_unshare,
            libc::SYS_personality,
            libc::SYS_clone3,
        ]
        .map(|n| n as u32);
        let mut allowed_count = 0;
        for nr in 0..1024u32 {
            if conditional.contains(&nr) {
                continue;
            }
            let want = if allowed.contains(&nr) {
                allowed_count += 1;
                RET_ALLOW
            } else {
                eperm
            };
            assert_eq!(run_bpf(p, nr, x86, 0), want, "syscall {nr}");
            assert_eq!(run_bpf(p, nr | X32_SYSCALL_BIT, x86, 0), eperm, "x32 {nr}");
            assert_eq!(
                run_bpf(p, nr, 0x4000_0003, 0),
                RET_KILL_PROCESS,
                "i386 {nr}"
            );
        }
        assert!(allowed_count > 250, "{allowed_count}");
        for nr in [u32::MAX, 0x3fff_ffff, 0x8000_0000] {
            assert_eq!(run_bpf(p, nr, x86, 0), eperm, "{nr:#x}");
        }
        let call = |nr: i64, arg0: u64| run_bpf(p, nr as u32, x86, arg0);
        assert_eq!(call(libc::SYS_clone3, 0), RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(call(libc::SYS_socket, libc::AF_INET as u64), RET_ALLOW);
        assert_eq!(call(libc::SYS_socket, libc::AF_UNIX as u64), RET_ALLOW);
        assert_eq!(call(libc::SYS_socket, AF_VSOCK), eperm);
        assert_eq!(call(libc::SYS_clone, libc::SIGCHLD as u64), RET_ALLOW);
        assert_eq!(call(libc::SYS_clone, 0x003d_0f00), RET_ALLOW); // threads
        for f in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
            0x80,
        ] {
            let f = f as u64;
            assert_eq!(
                call(libc::SYS_clone, f | libc::SIGCHLD as u64),
                eperm,
                "{f:#x}"
            );
            assert_eq!(call(libc::SYS_unshare, f), eperm, "{f:#x}");
        }
        assert_eq!(call(libc::SYS_unshare, libc::CLONE_FILES as u64), RET_ALLOW);
        for &v in PERSONALITIES {
            assert_eq!(call(libc::SYS_personality, v), RET_ALLOW, "{v:#x}");
        }
        for v in [0x6u64, 0x0040_0000, 0x0004_0000] {
            assert_eq!(call(libc::SYS_personality, v), eperm, "{v:#x}");
        }
    }

    /// A bad fd, so a call that slipped through would fail with EBADF.
    const BAD_FD: u64 = u64::MAX;

    #[test]
    fn refuses_what_docker_refuses() {
        use libc::{ENOSYS, EPERM};
        let ns = |f: libc::c_int| (f | libc::SIGCHLD) as u64;
        let cases: &[(&str, libc::c_long, &[u64], i32)] = &[
            ("init_module", libc::SYS_init_module, &[], EPERM),
            ("finit_module", libc::SYS_finit_module, &[BAD_FD], EPERM),
            ("delete_module", libc::SYS_delete_module, &[], EPERM),
            // flags with a foreign architecture: EINVAL if it ran.
            (
                "kexec_load",
                libc::SYS_kexec_load,
                &[0, 0, 0, 0xffff_0000],
                EPERM,
            ),
            (
                "kexec_file_load",
                libc::SYS_kexec_file_load,
                &[BAD_FD, BAD_FD],
                EPERM,
            ),
            ("bpf", libc::SYS_bpf, &[], EPERM),
            ("perf_event_open", libc::SYS_perf_event_open, &[], EPERM),
            (
                "open_by_handle_at",
                libc::SYS_open_by_handle_at,
                &[BAD_FD],
                EPERM,
            ),
            (
                "name_to_handle_at",
                libc::SYS_name_to_handle_at,
                &[BAD_FD],
                EPERM,
            ),
            ("add_key", libc::SYS_add_key, &[], EPERM),
            ("request_key", libc::SYS_request_key, &[], EPERM),
            ("keyctl", libc::SYS_keyctl, &[], EPERM),
            ("acct", libc::SYS_acct, &[1], EPERM),
            ("swapon", libc::SYS_swapon, &[], EPERM),
            ("swapoff", libc::SYS_swapoff, &[], EPERM),
            ("syslog", libc::SYS_syslog, &[], EPERM),
            ("quotactl", libc::SYS_quotactl, &[], EPERM),
            ("settimeofday", libc::SYS_settimeofday, &[1], EPERM),
            ("clock_settime", libc::SYS_clock_settime, &[], EPERM),
            ("clock_adjtime", libc::SYS_clock_adjtime, &[], EPERM),
            ("adjtimex", libc::SYS_adjtimex, &[], EPERM),
            ("reboot", libc::SYS_reboot, &[], EPERM),
            ("mount", libc::SYS_mount, &[], EPERM),
            ("umount2", libc::SYS_umount2, &[], EPERM),
            ("pivot_root", libc::SYS_pivot_root, &[], EPERM),
            ("open_tree", libc::SYS_open_tree, &[BAD_FD], EPERM),
            ("fsopen", libc::SYS_fsopen, &[], EPERM),
            ("statmount", 457, &[], EPERM),
            ("setns", libc::SYS_setns, &[BAD_FD], EPERM),
            ("userfaultfd", libc::SYS_userfaultfd, &[], EPERM),
            ("io_uring_setup", libc::SYS_io_uring_setup, &[], EPERM),
            ("io_uring_enter", libc::SYS_io_uring_enter, &[BAD_FD], EPERM),
            (
                "io_uring_register",
                libc::SYS_io_uring_register,
                &[BAD_FD],
                EPERM,
            ),
            ("iopl", libc::SYS_iopl, &[], EPERM),
            ("ioperm", libc::SYS_ioperm, &[], EPERM),
            ("modify_ldt", libc::SYS_modify_ldt, &[], EPERM),
            ("lookup_dcookie", libc::SYS_lookup_dcookie, &[], EPERM),
            ("uselib", libc::SYS_uselib, &[], EPERM),
            ("ustat", libc::SYS_ustat, &[], EPERM),
            ("sysfs", libc::SYS_sysfs, &[], EPERM),
            // vhangup takes no argument that could make it harmless, so
            // only the list check covers it. An oversize length: EINVAL.
            ("sethostname", libc::SYS_sethostname, &[0, u64::MAX], EPERM),
            (
                "setdomainname",
                libc::SYS_setdomainname,
                &[0, u64::MAX],
                EPERM,
            ),
            ("mbind", libc::SYS_mbind, &[], EPERM),
            ("set_mempolicy", libc::SYS_set_mempolicy, &[], EPERM),
            ("get_mempolicy", libc::SYS_get_mempolicy, &[], EPERM),
            ("move_pages", libc::SYS_move_pages, &[], EPERM),
            ("migrate_pages", libc::SYS_migrate_pages, &[], EPERM),
            ("fanotify_init", libc::SYS_fanotify_init, &[], EPERM),
            ("kcmp", libc::SYS_kcmp, &[], EPERM),
            ("pidfd_getfd", libc::SYS_pidfd_getfd, &[BAD_FD], EPERM),
            (
                "process_madvise",
                libc::SYS_process_madvise,
                &[BAD_FD],
                EPERM,
            ),
            ("socket(AF_VSOCK)", libc::SYS_socket, &[AF_VSOCK, 1], EPERM),
            (
                "unshare(NEWUSER)",
                libc::SYS_unshare,
                &[libc::CLONE_NEWUSER as u64],
                EPERM,
            ),
            (
                "unshare(NEWNS)",
                libc::SYS_unshare,
                &[libc::CLONE_NEWNS as u64],
                EPERM,
            ),
            (
                "unshare(NEWNET)",
                libc::SYS_unshare,
                &[libc::CLONE_NEWNET as u64],
                EPERM,
            ),
            ("unshare(NEWTIME)", libc::SYS_unshare, &[0x80], EPERM),
            (
                "clone(NEWNS)",
                libc::SYS_clone,
                &[ns(libc::CLONE_NEWNS)],
                EPERM,
            ),
            (
                "clone(NEWUSER)",
                libc::SYS_clone,
                &[ns(libc::CLONE_NEWUSER)],
                EPERM,
            ),
            (
                "clone(NEWPID)",
                libc::SYS_clone,
                &[ns(libc::CLONE_NEWPID)],
                EPERM,
            ),
            (
                "clone(NEWCGROUP)",
                libc::SYS_clone,
                &[ns(libc::CLONE_NEWCGROUP)],
                EPERM,
            ),
            ("clone3", libc::SYS_clone3, &[], ENOSYS),
            ("x32 getpid", 0x4000_0000 | libc::SYS_getpid, &[], EPERM),
            ("x32 open", 0x4000_0000 | libc::SYS_open, &[], EPERM),
            (
                "personality(0x400000)",
                libc::SYS_personality,
                &[0x40_0000],
                EPERM,
            ),
            (
                "personality(ADDR_NO_RANDOMIZE)",
                libc::SYS_personality,
                &[0x4_0000],
                EPERM,
            ),
        ];
        for &(name, nr, args, want) in cases {
            let got = in_filtered_child(|| errno_of(nr, args));
            assert_eq!(got, want, "{name}: errno {got}, want {want}");
        }
    }

    /// An i386 system call (`int 0x80`) kills the process (SIGSYS), where
    /// the kernel supports them at all.
    #[test]
    fn i386_calls_kill_the_process() {
        fn int80_getpid() -> i32 {
            let ret: i64;
            // SAFETY: i386 getpid (20) takes no arguments and touches no
            // memory; the clobbered registers are declared.
            unsafe {
                std::arch::asm!(
                    "int 0x80",
                    inlateout("rax") 20i64 => ret,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    options(nostack)
                );
            }
            // SAFETY: getpid has no preconditions.
            let pid = i64::from(unsafe { libc::getpid() });
            i32::from(ret != pid)
        }
        match in_child(false, int80_getpid) {
            WaitStatus::Exited(_, 0) => {}
            other => {
                eprintln!("SKIP i386_calls_kill_the_process: no i386 ABI here ({other:?})");
                return;
            }
        }
        let st = in_child(true, int80_getpid);
        assert!(
            matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{st:?}"
        );
    }

    #[test]
    fn allows_ordinary_calls() {
        use libc::EPERM;
        let path = std::ffi::CString::new("/proc/self/status").unwrap();
        let code = in_filtered_child(|| {
            let mut fails = 0;
            let mut check = |ok: bool| fails += i32::from(!ok);
            check(errno_of(libc::SYS_getpid, &[]) == 0);
            check(errno_of(libc::SYS_unshare, &[libc::CLONE_FILES as u64]) == 0);
            check(errno_of(libc::SYS_personality, &[0xffff_ffff]) == 0);
            // A pipe: write, then read back.
            let mut fds = [0i32; 2];
            // SAFETY: fds has room for the two descriptors.
            check(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0);
            // SAFETY: writes/reads 2 bytes from/into live buffers.
            check(unsafe { libc::write(fds[1], b"ok".as_ptr().cast(), 2) } == 2);
            let mut buf = [0u8; 2];
            // SAFETY: as above.
            check(unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 2) } == 2 && &buf == b"ok");
            // Open and read a file.
            // SAFETY: path is a NUL-terminated string made before the fork.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            check(fd >= 0);
            // SAFETY: reads into a live buffer.
            check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 2) } == 2);
            // Sockets of ordinary families.
            for family in [
                libc::AF_UNIX,
                libc::AF_INET,
                libc::AF_INET6,
                libc::AF_NETLINK,
            ] {
                check(
                    errno_of(libc::SYS_socket, &[family as u64, libc::SOCK_DGRAM as u64]) != EPERM,
                );
            }
            // clone without namespace flags reaches the kernel (which
            // refuses CLONE_SIGHAND without CLONE_VM, so nothing forks).
            let flags = (libc::CLONE_SIGHAND | libc::SIGCHLD) as u64;
            check(errno_of(libc::SYS_clone, &[flags]) == libc::EINVAL);
            // Newer calls the libc crate has no constant for reach the
            // kernel (which rejects the bogus arguments).
            for nr in [454, 451, 464] {
                check(errno_of(nr, &[]) != EPERM);
            }
            fails
        });
        assert_eq!(code, 0);
    }

    /// Real programs must work under the filter (catches a list that is too narrow).
    #[test]
    fn programs_run_under_the_filter() {
        const PY: &str = "\
import asyncio, multiprocessing, socket, sqlite3, subprocess, tempfile, threading
def sq(x): return x * x
if __name__ == '__main__':
    with multiprocessing.Pool(2) as p: assert p.map(sq, [1, 2, 3]) == [1, 4, 9]
    a, b = socket.socketpair(); a.send(b'x'); assert b.recv(1) == b'x'
    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
    async def m(): await asyncio.sleep(0.01); return 1
    assert asyncio.run(m()) == 1
    with tempfile.TemporaryDirectory() as d:
        c = sqlite3.connect(d + '/x.db'); c.execute('create table t(x)'); c.commit()
    t = threading.Thread(target=lambda: None); t.start(); t.join()
    print(subprocess.run(['echo', 'ok'], capture_output=True, text=True).stdout.strip())
";
        let candidates: &[&[&str]] = &[
            &["/bin/sh", "-c", "ls / >/dev/null && echo ok | cat"],
            &[
                "/bin/bash",
                "-c",
                "for i in 1 2; do (echo $i); done | wc -l >/dev/null; echo ok",
            ],
            &[
                "/bin/busybox",
                "sh",
                "-c",
                "seq 3 | sort -r | head -1 >/dev/null && ps >/dev/null && echo ok",
            ],
            &["/usr/bin/python3", "-c", PY],
        ];
        let strict = std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1");
        let mut programs = Vec::new();
        for argv in candidates {
            if std::path::Path::new(argv[0]).exists() {
                programs.push(argv.to_vec());
            } else {
                assert!(!strict, "{} is needed by this test", argv[0]);
                eprintln!("SKIP {} under the filter: not installed", argv[0]);
            }
        }
        for argv in programs {
            let out = tempfile::NamedTempFile::new().unwrap();
            let out_path = std::ffi::CString::new(out.path().to_str().unwrap()).unwrap();
            let c_argv: Vec<std::ffi::CString> = argv
                .iter()
                .map(|a| std::ffi::CString::new(*a).unwrap())
                .collect();
            let code = in_filtered_child(|| {
                // SAFETY: open/dup2 on a path prepared before the fork.
                let fd = unsafe { libc::open(out_path.as_ptr(), libc::O_WRONLY) };
                // SAFETY: dup2 of the fd just opened onto stdout.
                unsafe { libc::dup2(fd, 1) };
                let _ = nix::unistd::execv(&c_argv[0], &c_argv);
                98
            });
            let text = std::fs::read_to_string(out.path()).unwrap();
            assert_eq!((code, text.trim()), (0, "ok"), "{argv:?}");
        }
    }
}
