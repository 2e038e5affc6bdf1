//! Process setup that has to run in a child between `fork` and `exec`, and
//! signalling process groups by number.
//!
//! [`prepare`] installs a `pre_exec` hook on a [`std::process::Command`]
//! that, in order: starts a new session (so the child leads its own process
//! group), takes its stdin as controlling terminal when asked, resets
//! `oom_score_adj` to 0 (so children do not inherit the agent's protection),
//! switches groups, gid and uid, and changes directory (after the switch, so
//! the user's own permissions apply). The hook runs in a forked copy of a
//! possibly multi-threaded process, so it only makes async-signal-safe
//! system calls on data prepared before the fork and never allocates.
//! Limits: Linux only; a failing step aborts the spawn with its errno, but
//! which step failed is not reported (callers check what they can first).

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The identity a child switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (set exactly; empty clears them).
    pub groups: Vec<u32>,
}

/// What the child does between fork and exec.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// Make stdin (a terminal peer) the controlling terminal of the new session.
    pub controlling_tty: bool,
    /// Switch to this identity.
    pub credentials: Option<Credentials>,
    /// Change to this directory, after switching identity.
    pub cwd: Option<CString>,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_syscall(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Install `setup` as `cmd`'s pre-exec hook. The child always starts a new
/// session (`setsid`), so its pid is also its process group id.
pub fn prepare(cmd: &mut Command, setup: ChildSetup) {
    let groups: Vec<libc::gid_t> = setup
        .credentials
        .as_ref()
        .map(|c| c.groups.iter().map(|&g| g as libc::gid_t).collect())
        .unwrap_or_default();
    let hook = move || -> io::Result<()> {
        // SAFETY: setsid has no memory-safety preconditions.
        check(unsafe { libc::setsid() })?;
        if setup.controlling_tty {
            // SAFETY: TIOCSCTTY on fd 0 takes an integer argument (0: do not steal).
            check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
        }
        // Best effort: the agent itself may be protected from the OOM killer;
        // its children must not be.
        // SAFETY: the path is a NUL-terminated literal; the fd is closed below.
        let fd = unsafe {
            libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: writing one byte from a static buffer to the fd we opened, then closing it.
            unsafe {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        if let Some(c) = &setup.credentials {
            // Raw syscalls: the child has one thread, and glibc's wrappers
            // would synchronise the change across threads (taking locks) —
            // not something to do between fork and exec.
            // SAFETY: `groups` lives in this closure (prepared before the fork);
            // pointer and length describe it exactly.
            check_syscall(unsafe {
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr())
            })?;
            // SAFETY: plain integer arguments.
            check_syscall(unsafe { libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) })?;
            // SAFETY: plain integer arguments.
            check_syscall(unsafe { libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) })?;
        }
        if let Some(dir) = &setup.cwd {
            // SAFETY: `dir` is a NUL-terminated string prepared before the fork.
            check(unsafe { libc::chdir(dir.as_ptr()) })?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, ioctl, open, write, close,
    // raw setgroups/setresgid/setresuid, chdir) on data owned by the closure;
    // it does not allocate, lock or touch other threads' state.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Send `signal` (0..=64; 0 only probes) to every process in the process
/// group `pgid`. Refuses `pgid <= 1`, which `kill(2)` would turn into "our
/// own group" or "every process we may signal".
pub fn signal_process_group(pgid: i32, signal: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    if !(0..=64).contains(&signal) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill takes plain integers; a negative pid names a process group (> 1 checked above).
    check(unsafe { libc::kill(-pgid, signal) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn child_gets_its_own_session_and_cwd() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "pwd; read -r l < /proc/$$/stat; echo \"$l\""]);
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        prepare(
            &mut cmd,
            ChildSetup {
                cwd: Some(CString::new("/tmp").unwrap()),
                ..Default::default()
            },
        );
        let child = cmd.spawn().unwrap();
        let pid = child.id().to_string();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (cwd, stat) = text.split_once('\n').unwrap();
        assert_eq!(cwd, "/tmp");
        // Fields after the command name: state ppid pgrp session ...
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        assert_eq!(fields[2], pid, "process group: {stat}");
        assert_eq!(fields[3], pid, "session: {stat}");
    }

    #[test]
    fn a_failing_step_fails_the_spawn() {
        let mut cmd = Command::new("/bin/true");
        prepare(
            &mut cmd,
            ChildSetup {
                cwd: Some(CString::new("/nonexistent/dir").unwrap()),
                ..Default::default()
            },
        );
        let err = cmd.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn group_signals_refuse_dangerous_targets() {
        assert!(signal_process_group(0, 9).is_err());
        assert!(signal_process_group(1, 9).is_err());
        assert!(signal_process_group(-5, 9).is_err());
        assert!(signal_process_group(12345, 99).is_err());
    }

    #[test]
    fn group_signal_kills_the_whole_group() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 30 & sleep 30; wait"]);
        prepare(&mut cmd, ChildSetup::default());
        let mut child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        signal_process_group(pid, libc::SIGKILL).unwrap();
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        // The background sleep was in the same group: the group empties
        // once whoever inherited it has reaped it.
        let gone = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            signal_process_group(pid, 0).is_err()
        });
        assert!(gone, "group {pid} still has members");
    }
}
