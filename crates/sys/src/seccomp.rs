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
//! `io_uring`, raw I/O ports. `clone` and `unshare` are allowed only without
//! namespace flags; `clone3` (whose flags live in memory a filter can't
//! read) fails with `ENOSYS`, so libc falls back to `clone`, as under
//! Docker. A second, tiny filter carries that `ENOSYS`.
//!
//! Limits: x86_64 only (other architectures get an error from
//! [`sandbox_filter`]); filters apply to the calling thread, so install them
//! in a single-threaded process before it starts threads or execs.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filters are only built for x86_64 (this is {0})")]
    UnsupportedArch(&'static str),
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
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
    SYS_get_mempolicy,
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
    SYS_kcmp,
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
    SYS_pidfd_getfd,
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
    SYS_socket,
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
    "clone/unshare with namespace flags",
    "clone3 (ENOSYS)",
];

/// Names of the system calls the filter allows (some only with conditions:
/// `clone`, `unshare`, `personality`).
pub fn allowed_syscalls() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ALLOWED
        .iter()
        .map(|(n, _)| n.trim_start_matches("SYS_"))
        .collect();
    v.extend(["clone", "unshare", "personality"]);
    v.sort_unstable();
    v
}

fn arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else {
        Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
    }
}

fn no_namespace_flags(arg: u8) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS),
        0,
    )?])
}

/// The sandbox filters, in installation order: the allowlist, then the
/// `clone3 -> ENOSYS` filter (installed last, so its errno wins).
pub fn sandbox_filter() -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&(_, nr)| (nr, vec![])).collect();
    // clone(flags, ...): flags is argument 0 on x86_64.
    rules.insert(
        libc::SYS_clone,
        vec![no_namespace_flags(0).map_err(SeccompError::Build)?],
    );
    rules.insert(
        libc::SYS_unshare,
        vec![no_namespace_flags(0).map_err(SeccompError::Build)?],
    );
    let personality = PERSONALITIES
        .iter()
        .map(|&p| {
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                p,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(SeccompError::Build)?;
    rules.insert(libc::SYS_personality, personality);
    let allow = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(SeccompError::Build)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(SeccompError::Build)?;
    Ok(vec![
        allow.try_into().map_err(SeccompError::Build)?,
        clone3.try_into().map_err(SeccompError::Build)?,
    ])
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

    /// Run `f` in a forked child under the filter; return its exit code.
    fn in_filtered_child(f: impl FnOnce() -> i32) -> i32 {
        let filters = sandbox_filter().unwrap();
        // SAFETY: the child only runs `f` (raw syscalls, no allocation
        // beyond what the test prepared) and then _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = if set_no_new_privs().is_ok() && install(&filters).is_ok() {
                    f()
                } else {
                    99
                };
                // SAFETY: _exit never returns and skips atexit handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, c) => c,
                    other => panic!("child ended with {other:?}"),
                }
            }
        }
    }

    /// errno of a raw syscall with six zero-ish arguments (or 0 on success).
    fn errno_of(nr: libc::c_long, a0: u64) -> i32 {
        // SAFETY: the refused calls never run; the allowed ones are given
        // arguments that make them fail harmlessly or do nothing.
        let r = unsafe { libc::syscall(nr, a0, 0u64, 0u64, 0u64, 0u64, 0u64) };
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
        for denied in [
            "bpf",
            "kexec_load",
            "init_module",
            "mount",
            "keyctl",
            "setns",
            "io_uring_setup",
        ] {
            assert!(!allowed.contains(&denied), "{denied} must not be allowed");
            assert!(DENIED_EXAMPLES.contains(&denied));
        }
        assert_eq!(sandbox_filter().unwrap().len(), 2);
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let cases: &[(&str, libc::c_long, u64, i32)] = &[
            ("bpf", libc::SYS_bpf, 0, libc::EPERM),
            ("perf_event_open", libc::SYS_perf_event_open, 0, libc::EPERM),
            ("kexec_load", libc::SYS_kexec_load, 0, libc::EPERM),
            ("init_module", libc::SYS_init_module, 0, libc::EPERM),
            ("finit_module", libc::SYS_finit_module, 0, libc::EPERM),
            ("keyctl", libc::SYS_keyctl, 0, libc::EPERM),
            ("add_key", libc::SYS_add_key, 0, libc::EPERM),
            ("acct", libc::SYS_acct, 0, libc::EPERM),
            ("swapon", libc::SYS_swapon, 0, libc::EPERM),
            ("syslog", libc::SYS_syslog, 0, libc::EPERM),
            ("quotactl", libc::SYS_quotactl, 0, libc::EPERM),
            ("settimeofday", libc::SYS_settimeofday, 0, libc::EPERM),
            ("clock_settime", libc::SYS_clock_settime, 0, libc::EPERM),
            (
                "open_by_handle_at",
                libc::SYS_open_by_handle_at,
                0,
                libc::EPERM,
            ),
            ("mount", libc::SYS_mount, 0, libc::EPERM),
            ("reboot", libc::SYS_reboot, 0, libc::EPERM),
            ("userfaultfd", libc::SYS_userfaultfd, 0, libc::EPERM),
            ("io_uring_setup", libc::SYS_io_uring_setup, 0, libc::EPERM),
            ("setns", libc::SYS_setns, 0, libc::EPERM),
            (
                "unshare(NEWUSER)",
                libc::SYS_unshare,
                libc::CLONE_NEWUSER as u64,
                libc::EPERM,
            ),
            (
                "clone(NEWNS)",
                libc::SYS_clone,
                (libc::CLONE_NEWNS | libc::SIGCHLD) as u64,
                libc::EPERM,
            ),
            ("clone3", libc::SYS_clone3, 0, libc::ENOSYS),
            ("x32 getpid", 0x4000_0000 | libc::SYS_getpid, 0, libc::EPERM),
            (
                "personality(0x400000)",
                libc::SYS_personality,
                0x40_0000,
                libc::EPERM,
            ),
        ];
        for &(name, nr, a0, want) in cases {
            let got = in_filtered_child(|| errno_of(nr, a0));
            assert_eq!(got, want, "{name}: errno {got}, want {want}");
        }
    }

    #[test]
    fn allows_ordinary_calls() {
        let code = in_filtered_child(|| {
            // getpid succeeds; unshare without namespace flags succeeds;
            // personality query succeeds.
            let a = errno_of(libc::SYS_getpid, 0);
            let b = errno_of(libc::SYS_unshare, libc::CLONE_FILES as u64);
            let c = errno_of(libc::SYS_personality, 0xffff_ffff);
            a + b + c
        });
        assert_eq!(code, 0);
    }

    /// Real programs must work under the filter (catches a list that is too narrow).
    #[test]
    fn programs_run_under_the_filter() {
        let mut programs: Vec<Vec<&str>> =
            vec![vec!["/bin/sh", "-c", "ls / >/dev/null && echo ok | cat"]];
        if std::path::Path::new("/bin/busybox").exists() {
            programs.push(vec![
                "/bin/busybox",
                "sh",
                "-c",
                "seq 3 | sort -r | head -1 >/dev/null && echo ok",
            ]);
        }
        if std::path::Path::new("/usr/bin/python3").exists() {
            programs.push(vec![
                "/usr/bin/python3",
                "-c",
                "import subprocess,threading,os; t=threading.Thread(target=lambda:None); t.start(); t.join(); \
                 print(subprocess.run(['echo','ok'],capture_output=True,text=True).stdout.strip())",
            ]);
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
