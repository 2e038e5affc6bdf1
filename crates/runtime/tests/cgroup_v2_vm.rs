//! cgroup v2 verification in a QEMU TCG guest.
//!
//! This host keeps its memory, cpu, pids and freezer controllers on cgroup
//! v1, so the v2 code paths cannot run here directly. The outer test boots a
//! Debian cloud kernel under QEMU software emulation with `cgroup_no_v1=all`
//! (all controllers on the unified hierarchy, as on most real hosts) and an
//! initramfs holding busybox, this very test binary and `hull-guest`; the
//! guest's init runs the inner test, which creates real sandboxes under v2
//! limits, and prints a verdict on the serial console.
//!
//! The guest's state directory lives on an ext4 virtio disk because the
//! guest kernel (6.1) cannot idmap tmpfs. Init first moves from the
//! initramfs to a tmpfs root, since `pivot_root` cannot leave rootfs.
//! Needs `qemu-system-x86_64`, `/boot/vmlinuz-*-cloud-amd64`
//! (`linux-image-cloud-amd64`), `mkfs.ext4` and `/bin/busybox`; `.ci/run`
//! installs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Kit;
use hull_api::{LimitsRequest, SandboxState};

const MIB: u64 = 1 << 20;
const VERDICT: &str = "HULL_VM_VERDICT=";

/// The guest kernel: the newest Debian cloud kernel in /boot.
fn guest_kernel() -> Option<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            version
                .ends_with("-cloud-amd64")
                .then(|| (e.path(), version))
        })
        .collect();
    found.sort();
    found.pop()
}

fn copy_into(root: &Path, from: &Path, to: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(from, &dest)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), dest.display()));
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const INIT: &str = r#"#!/bin/busybox sh
# pivot_root cannot leave the initramfs (rootfs): move to a tmpfs first,
# as a real root filesystem would be.
if [ ! -e /.switched ]; then
  /bin/busybox mkdir -p /newroot
  /bin/busybox mount -t tmpfs -o size=1536m tmpfs /newroot
  for d in bin hull modules init; do /bin/busybox cp -a /$d /newroot/; done
  /bin/busybox touch /newroot/.switched
  exec /bin/busybox switch_root /newroot /init
fi
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /etc
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk overlay; do
  f=$(find /modules -name "$m.ko" | head -1)
  [ -n "$f" ] && { insmod "$f" || echo "insmod $m failed"; }
done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda /tmp || echo "HULL_VM_VERDICT=fail (no disk)"
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
HULL_IN_VM=1 HULL_TEST_PRIVILEGED=1 HULL_GUEST_BINARY=/hull/hull-guest \
  /hull/test --ignored --exact inner_limits_under_cgroup_v2 --nocapture --test-threads=1
if [ $? -eq 0 ]; then echo "HULL_VM_VERDICT=ok"; else echo "HULL_VM_VERDICT=fail"; fi
sync
poweroff -f
"#;

/// Boots the guest and requires the inner test to pass there.
#[test]
fn limits_under_cgroup_v2_in_qemu() {
    if !common::privileged("limits_under_cgroup_v2_in_qemu") {
        return;
    }
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    let kernel = guest_kernel();
    let (Some((kernel, version)), true) = (kernel, qemu.exists()) else {
        let msg = "limits_under_cgroup_v2_in_qemu: needs qemu-system-x86 and linux-image-cloud-amd64 \
                   (apt-get install qemu-system-x86 linux-image-cloud-amd64)";
        assert!(!ci, "{msg}");
        eprintln!("SKIP {msg}");
        return;
    };
    let work = tempfile::Builder::new()
        .prefix("hull-vm")
        .tempdir()
        .unwrap();
    let root = work.path().join("root");
    copy_into(&root, Path::new("/bin/busybox"), "/bin/busybox");
    copy_into(&root, &std::env::current_exe().unwrap(), "/hull/test");
    copy_into(&root, &common::guest_binary(), "/hull/hull-guest");
    let modules = Path::new("/lib/modules").join(&version).join("kernel");
    for rel in [
        "drivers/virtio/virtio.ko",
        "drivers/virtio/virtio_ring.ko",
        "drivers/virtio/virtio_pci_modern_dev.ko",
        "drivers/virtio/virtio_pci_legacy_dev.ko",
        "drivers/virtio/virtio_pci.ko",
        "drivers/block/virtio_blk.ko",
        "fs/overlayfs/overlay.ko",
    ] {
        let p = modules.join(rel);
        if p.exists() {
            copy_into(
                &root,
                &p,
                &format!("/modules/{}", p.file_name().unwrap().to_string_lossy()),
            );
        }
    }
    std::fs::write(root.join("init"), INIT).unwrap();
    run(Command::new("chmod").arg("755").arg(root.join("init")));
    let initrd = work.path().join("initrd.cpio");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet > {}",
        root.display(),
        initrd.display()
    )));
    let disk = work.path().join("disk.img");
    run(Command::new("truncate").arg("-s").arg("1G").arg(&disk));
    run(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&disk));

    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args([
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 cgroup_no_v1=all panic=-1 quiet loglevel=3",
        ])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    // Bounded: TCG boots in seconds; the inner test takes about a minute.
    let deadline = Duration::from_secs(600);
    let out_path = work.path().join("console.log");
    let pid = child.id();
    let reader = {
        let mut stdout = child.stdout.take().unwrap();
        let out_path = out_path.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(out_path).unwrap();
            std::io::copy(&mut stdout, &mut f).ok();
        })
    };
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    reader.join().unwrap();
    let console = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!(
        "--- guest console ({:.1} s) ---\n{console}",
        start.elapsed().as_secs_f64()
    );
    let verdict = console
        .lines()
        .find_map(|l| l.trim().strip_prefix(VERDICT))
        .unwrap_or("none (timed out?)");
    assert_eq!(
        verdict, "ok",
        "inner test in the cgroup v2 guest: {verdict}"
    );
}

/// Runs inside the guest only (booted by the test above).
#[ignore = "runs inside the QEMU guest booted by limits_under_cgroup_v2_in_qemu"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_limits_under_cgroup_v2() {
    assert_eq!(
        std::env::var("HULL_IN_VM").as_deref(),
        Ok("1"),
        "only meant to run inside the test VM"
    );
    let kit = Kit::new().await;
    let info = kit.rt.host_info();
    println!(
        "cgroup mode {} controllers {:?}",
        info.cgroup_mode, info.cgroup_controllers
    );
    assert_eq!(info.cgroup_mode, "v2");
    for c in ["memory", "cpu", "pids"] {
        assert_eq!(
            info.cgroup_controllers.get(c).map(String::as_str),
            Some("v2"),
            "{c}"
        );
    }
    let sb = kit
        .create_with(
            "busybox",
            LimitsRequest {
                memory_bytes: Some(64 * MIB),
                pids: Some(32),
                ..Default::default()
            },
        )
        .await;
    let id = sb.id.clone();
    let cg = format!("/sys/fs/cgroup/hull-{}/{id}", info.instance_id);
    let read = |f: &str| std::fs::read_to_string(format!("{cg}/{f}")).unwrap_or_default();
    assert_eq!(read("memory.max").trim(), (64 * MIB).to_string());
    assert_eq!(read("pids.max").trim(), "32");
    assert!(
        read("cpu.max").starts_with("100000 100000"),
        "cpu.max {}",
        read("cpu.max")
    );
    assert_eq!(kit.sh(&id, "echo hello").await.stdout, "hello\n");

    // Memory: the offender is OOM-killed; the sandbox records it and lives on.
    let r = kit
        .sh(&id, "head -c 200m /dev/zero | tail > /dev/null")
        .await;
    assert_ne!(r.exit_code, Some(0), "{r:?}");
    let got = kit.rt.get(&id).await.unwrap();
    assert!(
        got.events.iter().any(|e| e.kind == "oom"),
        "oom event recorded: {:?}",
        got.events
    );
    assert_eq!(kit.sh(&id, "echo alive").await.stdout, "alive\n");

    // Pids: forks beyond the limit fail inside; pids.current never passes it.
    let r = kit
        .sh(
            &id,
            "for i in $(seq 1 60); do sleep 2 & done 2>/tmp/err; echo unreachable",
        )
        .await;
    assert_ne!(r.stdout, "unreachable\n", "{r:?}");
    let peak: u32 = read("pids.peak").trim().parse().unwrap_or(0);
    assert!(peak == 0 || peak <= 32, "pids.peak {peak}");
    let (_, mut body) = kit.rt.read_file(&id, "/tmp/err").await.unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut body, &mut err)
        .await
        .unwrap();
    assert!(err.contains("fork"), "forks fail: {err:?}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // Freezer: cgroup.freeze.
    let paused = kit.rt.pause(&id).await.unwrap();
    assert_eq!(paused.state, SandboxState::Paused);
    assert!(
        read("cgroup.events").contains("frozen 1"),
        "{}",
        read("cgroup.events")
    );
    kit.rt.resume(&id).await.unwrap();
    assert_eq!(kit.sh(&id, "echo thawed").await.stdout, "thawed\n");

    kit.rt.destroy(&id).await.unwrap();
    assert!(!Path::new(&cg).exists(), "cgroup removed on destroy");
    kit.finish().await;
}
