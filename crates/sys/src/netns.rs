//! Network namespaces owned by the daemon (the initial user namespace):
//! making one, and running code on the calling thread inside one.
//!
//! A network namespace belongs to a thread, not a process: `setns` and
//! `unshare(CLONE_NEWNET)` here move only the calling thread, and
//! [`NetnsGuard`] moves it back when dropped. A thread that could not move
//! back would go on serving the daemon from inside a sandbox's namespace,
//! so that failure aborts the process instead of continuing. Children the
//! thread forks while inside (a sandbox's init, an `ip` command) start in
//! that namespace; sockets it opens stay bound to it.
//!
//! Limits: the calling thread must not share its filesystem attributes
//! (ordinary threads don't), and the caller needs CAP_SYS_ADMIN.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sched::{CloneFlags, setns, unshare};

/// The calling thread's current network namespace.
pub fn current() -> io::Result<OwnedFd> {
    Ok(File::open("/proc/thread-self/ns/net")?.into())
}

/// The network namespace of process `pid` (e.g. a sandbox's init).
pub fn of_pid(pid: i32) -> io::Result<OwnedFd> {
    Ok(File::open(format!("/proc/{pid}/ns/net"))?.into())
}

/// While alive, the calling thread is inside another network namespace;
/// dropping it moves the thread back (or aborts the process).
#[must_use = "the thread returns to its namespace when this is dropped"]
pub struct NetnsGuard {
    home: OwnedFd,
    // Not Send: the guard must be dropped on the thread it moved.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for NetnsGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetnsGuard")
    }
}

impl NetnsGuard {
    /// Move the calling thread into `ns`.
    pub fn enter(ns: BorrowedFd<'_>) -> io::Result<NetnsGuard> {
        let home = current()?;
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(NetnsGuard {
            home,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Move the calling thread into a brand-new network namespace (owned
    /// by the caller's user namespace, with only a down `lo`); returns the
    /// guard and a descriptor that keeps the new namespace alive.
    pub fn enter_new() -> io::Result<(NetnsGuard, OwnedFd)> {
        let home = current()?;
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let guard = NetnsGuard {
            home,
            _not_send: std::marker::PhantomData,
        };
        let ns = current()?;
        Ok((guard, ns))
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A daemon thread left inside a sandbox's namespace would serve
            // later work (sockets, children) from there: never continue.
            eprintln!("hull: FATAL: cannot return a thread to the daemon's network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Run `f` on the calling thread inside `ns`, then move back.
pub fn run_in<R>(ns: BorrowedFd<'_>, f: impl FnOnce() -> R) -> io::Result<R> {
    let _guard = NetnsGuard::enter(ns)?;
    Ok(f())
}

/// Make a new network namespace and return a descriptor holding it (the
/// calling thread stays where it was).
pub fn create() -> io::Result<OwnedFd> {
    let (_guard, ns) = NetnsGuard::enter_new()?;
    Ok(ns)
}

/// The inode of a namespace descriptor (to compare namespaces).
pub fn inode(ns: BorrowedFd<'_>) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(ns).map_err(io::Error::from)?;
    Ok(st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_and_return() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("HULL_TEST_PRIVILEGED").as_deref(),
                Ok("1"),
                "needs root"
            );
            eprintln!("SKIP enter_and_return: needs root");
            return;
        }
        let home = current().unwrap();
        let ns = create().unwrap();
        assert_ne!(inode(home.as_fd()).unwrap(), inode(ns.as_fd()).unwrap());
        let inside = run_in(ns.as_fd(), || inode(current().unwrap().as_fd()).unwrap()).unwrap();
        assert_eq!(inside, inode(ns.as_fd()).unwrap());
        assert_eq!(
            inode(current().unwrap().as_fd()).unwrap(),
            inode(home.as_fd()).unwrap()
        );
    }
}
