//! Probing what this host supports, for `GET /v1/info` and `hull info`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Facts probed once at daemon start.
#[derive(Debug, Clone)]
pub struct Probe {
    pub kernel: String,
    pub user_namespaces: bool,
    pub overlayfs: bool,
    pub seccomp: bool,
    pub landlock: bool,
    pub btrfs: bool,
    pub kvm: bool,
    pub kvm_note: String,
    pub tcg: bool,
}

fn read(p: &str) -> String {
    fs::read_to_string(p).unwrap_or_default().trim().to_string()
}

fn filesystems() -> String {
    read("/proc/filesystems")
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

pub fn probe() -> Probe {
    let fss = filesystems();
    let has_fs = |name: &str| {
        fss.lines()
            .any(|l| l.split_whitespace().last() == Some(name))
    };
    let kvm = Path::new("/dev/kvm").exists();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let kvm_note = match (kvm, pvm) {
        (false, _) => "no /dev/kvm: VM substrates would need QEMU software emulation (TCG)".to_string(),
        (true, true) => {
            "nested paravirtualised KVM (kvm_pvm): small hand-made guests run; stock Linux guest kernels boot very slowly or hang — use TCG for them".to_string()
        }
        (true, false) => "hardware KVM available".to_string(),
    };
    Probe {
        kernel: read("/proc/sys/kernel/osrelease"),
        user_namespaces: read("/proc/sys/user/max_user_namespaces")
            .parse::<u64>()
            .unwrap_or(0)
            > 0,
        overlayfs: has_fs("overlay"),
        seccomp: Path::new("/proc/sys/kernel/seccomp/actions_avail").exists(),
        landlock: hull_sys::landlock_abi().is_some(),
        btrfs: has_fs("btrfs"),
        kvm,
        kvm_note,
        tcg: in_path("qemu-system-x86_64"),
    }
}

/// Controller name -> hierarchy, as reported by the cgroup manager.
pub type Controllers = BTreeMap<String, String>;
