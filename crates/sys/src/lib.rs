//! The only crate with raw system calls and `unsafe`: namespaces, mounts,
//! cgroups, seccomp, capabilities, PTYs, btrfs and loop devices. Each
//! `unsafe` block carries a `// SAFETY:` comment. Everything above this
//! crate is `forbid(unsafe_code)`.
#![allow(unsafe_code)]

pub mod btrfs;
pub mod caps;
pub mod cgroup;
pub mod mount;
pub mod net;
pub mod netns;
pub mod ns;
pub mod process;
pub mod pty;
pub mod seccomp;

/// The kernel's Landlock ABI version, `None` when Landlock is not built in
/// or not enabled. Asks the kernel directly (`landlock_create_ruleset` with
/// `LANDLOCK_CREATE_RULESET_VERSION`): `/sys/kernel/security/lsm` needs
/// securityfs, which many hosts and containers don't mount.
pub fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the
    // call reads no memory and returns the ABI version or -1.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(r).ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn landlock_abi_matches_the_lsm_list_where_securityfs_tells() {
        let abi = super::landlock_abi();
        if let Ok(lsm) = std::fs::read_to_string("/sys/kernel/security/lsm") {
            assert_eq!(
                abi.is_some(),
                lsm.trim().split(',').any(|l| l == "landlock")
            );
        }
        // On this machine kind the kernel reports ABI 7 (DEPENDENCIES.md).
        if let Some(v) = abi {
            assert!((1..100).contains(&v), "{v}");
        }
    }
}
