//! Capabilities: reduce a sandbox's init to Docker's default set before it
//! serves, so processes inside hold only what a default container holds.
//!
//! These are capabilities of the sandbox's own user namespace; they grant
//! nothing over host resources. Limits: the calling thread only (init is
//! single-threaded when it calls this); requires CAP_SETPCAP in the current
//! namespace (root of the new user namespace has it).

use caps::{CapSet, Capability, CapsHashSet};

/// Errors dropping capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("cannot set the {set} capability set")]
    Set {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot drop {cap} from the bounding set")]
    Bounding {
        cap: String,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// Docker's default capability set, which sandboxes keep.
pub fn default_set() -> Vec<Capability> {
    vec![
        Capability::CAP_CHOWN,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_FSETID,
        Capability::CAP_FOWNER,
        Capability::CAP_MKNOD,
        Capability::CAP_NET_RAW,
        Capability::CAP_SETGID,
        Capability::CAP_SETUID,
        Capability::CAP_SETFCAP,
        Capability::CAP_SETPCAP,
        Capability::CAP_NET_BIND_SERVICE,
        Capability::CAP_SYS_CHROOT,
        Capability::CAP_KILL,
        Capability::CAP_AUDIT_WRITE,
    ]
}

/// The default set as a bit mask (bit n = capability n), as
/// `/proc/<pid>/status` prints it.
pub fn default_mask() -> u64 {
    default_set().iter().fold(0, |m, c| m | c.bitmask())
}

/// Keep exactly [`default_set`] in the bounding, permitted, effective and
/// inheritable sets, and clear the ambient set.
pub fn drop_to_default_set() -> Result<(), CapsError> {
    let keep: CapsHashSet = default_set().into_iter().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which is
    // kept, and nothing outside it can be regained.
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).or_else(|e| {
                // Capabilities this kernel doesn't know are not in the set.
                if caps::runtime::thread_all_supported().contains(&cap) {
                    Err(CapsError::Bounding {
                        cap: cap.to_string(),
                        source: e,
                    })
                } else {
                    Ok(())
                }
            })?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|source| CapsError::Set {
        set: "ambient",
        source,
    })?;
    // The inheritable set stays empty, as Docker has done since
    // CVE-2022-24769: with inheritable capabilities, a non-root process
    // executing a file that carries inheritable file capabilities would
    // gain them. Root keeps its capabilities across exec anyway (they come
    // from the bounding set).
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|source| CapsError::Set {
        set: "inheritable",
        source,
    })?;
    caps::set(None, CapSet::Effective, &keep).map_err(|source| CapsError::Set {
        set: "effective",
        source,
    })?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|source| CapsError::Set {
        set: "permitted",
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_mask(field: &str) -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let v = s
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap()
            .trim();
        u64::from_str_radix(v, 16).unwrap()
    }

    #[test]
    fn mask_has_fourteen_capabilities() {
        assert_eq!(default_mask().count_ones(), 14);
        assert_ne!(default_mask() & Capability::CAP_KILL.bitmask(), 0);
        assert_eq!(default_mask() & Capability::CAP_SYS_ADMIN.bitmask(), 0);
    }

    #[test]
    fn drops_to_the_default_set_in_a_child() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("HULL_TEST_PRIVILEGED").as_deref(),
                Ok("1"),
                "needs root"
            );
            eprintln!("SKIP drops_to_the_default_set_in_a_child: needs root");
            return;
        }
        // A thread has its own capability sets; do it on a fresh thread so
        // the test process keeps its own.
        let (bnd, eff, prm, inh, amb, regained) = std::thread::spawn(|| {
            drop_to_default_set().unwrap();
            // A dropped capability cannot be raised again.
            let regained = caps::raise(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).is_ok()
                || caps::raise(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN).is_ok();
            (
                status_mask("CapBnd:"),
                status_mask("CapEff:"),
                status_mask("CapPrm:"),
                status_mask("CapInh:"),
                status_mask("CapAmb:"),
                regained,
            )
        })
        .join()
        .unwrap();
        assert_eq!(bnd, default_mask(), "bounding");
        assert_eq!(eff, default_mask(), "effective");
        assert_eq!(prm, default_mask(), "permitted");
        assert_eq!(inh, 0, "inheritable");
        assert_eq!(amb, 0, "ambient");
        assert!(!regained, "CAP_SYS_ADMIN came back");
    }

    /// The real use: root of a fresh user namespace (full capabilities
    /// there) drops to the default set. Run in a forked child, which
    /// reports through its exit code.
    #[test]
    fn drops_inside_a_new_user_namespace() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("HULL_TEST_PRIVILEGED").as_deref(),
                Ok("1"),
                "needs root"
            );
            eprintln!("SKIP drops_inside_a_new_user_namespace: needs root");
            return;
        }
        // SAFETY: the child makes system calls, reads /proc and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = (|| {
                    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_err() {
                        return 10;
                    }
                    if status_mask("CapEff:") == default_mask() {
                        return 11; // nothing to drop: the test would prove nothing
                    }
                    if drop_to_default_set().is_err() {
                        return 12;
                    }
                    for f in ["CapBnd:", "CapEff:", "CapPrm:"] {
                        if status_mask(f) != default_mask() {
                            return 13;
                        }
                    }
                    if status_mask("CapAmb:") != 0 || status_mask("CapInh:") != 0 {
                        return 14;
                    }
                    0
                })();
                // SAFETY: _exit never returns.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
