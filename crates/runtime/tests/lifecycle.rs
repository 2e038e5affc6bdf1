//! Privileged end-to-end tests of the lifecycle controller over real
//! containers: isolation, limits, state transitions, TTLs, faults, daemon
//! restart and cleanliness.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Kit;
use hull_api::{CreateSandbox, ErrorKind, ExecRequest, LimitsRequest, MIB, Profile, SandboxState};

fn cmd(args: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_template_runs_python_as_root_with_root_owned_files() {
    if !common::privileged("host_template_runs_python") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("host").await;
    assert_eq!(sb.state, SandboxState::Running);
    let r = kit
        .rt
        .exec(&sb.id, cmd(&["python3", "-c", "print(6*7)"]))
        .await
        .unwrap();
    assert_eq!((r.stdout.as_str(), r.exit_code), ("42\n", Some(0)), "{r:?}");
    // Files host root owns appear root-owned; root can write through the overlay.
    let r = kit
        .sh(&sb.id, "stat -c '%u:%g' /usr/bin/python3 /etc/passwd; id -u; echo x > /usr/lib/hull-test && cat /usr/lib/hull-test; test ! -e /etc/shadow && echo noshadow")
        .await;
    assert_eq!(r.stdout, "0:0\n0:0\n0\nx\nnoshadow\n", "{r:?}");
    assert!(
        !std::path::Path::new("/usr/lib/hull-test").exists(),
        "write leaked to the host"
    );
    kit.rt.destroy(&sb.id).await.unwrap();
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_defaults() {
    if !common::privileged("isolation_defaults") {
        return;
    }
    let kit = Kit::new().await;
    // Network `none` (the session profile's default is `open`:
    // crates/server/tests/network.rs covers that).
    let sb = kit
        .rt
        .create(CreateSandbox {
            template: Some("busybox".into()),
            network: Some(hull_api::NetworkPolicy::none()),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = kit
        .sh(
            &sb.id,
            "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
             ls /sys/class/net | tr '\\n' ' '; echo; \
             grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t ' ' '; \
             grep CapBnd /proc/self/status; \
             grep -E '^Cap(Inh|Amb):' /proc/self/status | tr -s '\t ' ' ' | tr '\n' ' '; echo; \
             ps -o pid= | wc -l",
        )
        .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], sb.id, "hostname is the id: {r:?}");
    assert!(
        lines[1].starts_with("hull-guest init"),
        "PID 1 is the guest: {r:?}"
    );
    assert_eq!(lines[2].trim(), "lo", "only loopback: {r:?}");
    assert_eq!(lines[3], "NoNewPrivs: 1");
    assert_eq!(lines[4], "Seccomp: 2");
    // Docker's default set: no CAP_SYS_ADMIN (bit 21), no CAP_NET_ADMIN (bit 12).
    let bnd = u64::from_str_radix(lines[5].split_whitespace().last().unwrap(), 16).unwrap();
    assert_eq!(bnd & (1 << 21), 0, "CAP_SYS_ADMIN dropped");
    assert_eq!(bnd & (1 << 12), 0, "CAP_NET_ADMIN dropped");
    assert_eq!(
        lines[6].trim(),
        "CapInh: 0000000000000000 CapAmb: 0000000000000000",
        "no inheritable or ambient capabilities"
    );
    // Refused by seccomp or missing capabilities.
    for probe in ["mount -t tmpfs x /mnt", "unshare -U true", "hostname evil"] {
        let r = kit.sh(&sb.id, probe).await;
        assert_ne!(r.exit_code, Some(0), "{probe} should fail: {r:?}");
    }
    // Masked /proc paths read empty.
    let r = kit
        .sh(&sb.id, "for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do [ -e $f ] && wc -c < $f; done")
        .await;
    let sizes: Vec<&str> = r.stdout.split_whitespace().collect();
    assert!(
        !sizes.is_empty() && sizes.iter().all(|s| *s == "0"),
        "{r:?}"
    );
    kit.rt.destroy(&sb.id).await.unwrap();
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_contained_and_reported() {
    if !common::privileged("limits_are_contained") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit
        .create_with(
            "busybox",
            LimitsRequest {
                memory_bytes: Some(64 * MIB),
                pids: Some(32),
                disk_bytes: Some(8 * MIB),
                ..Default::default()
            },
        )
        .await;
    // Memory: the offender is OOM-killed; the sandbox records it and lives on.
    let r = kit
        .sh(&sb.id, "head -c 200m /dev/zero | tail > /dev/null")
        .await;
    assert!(r.exit_code != Some(0), "{r:?}");
    let info = kit.rt.get(&sb.id).await.unwrap();
    assert!(
        info.events.iter().any(|e| e.kind == "oom"),
        "oom event recorded: {:?}",
        info.events
    );
    assert_eq!(info.state, SandboxState::Running);
    assert_eq!(kit.sh(&sb.id, "echo alive").await.stdout, "alive\n");
    // Pids: forks beyond the limit fail inside (ash gives up with "can't
    // fork"); the file API needs no fork to read what it said; once the
    // sleeps end, the sandbox works again.
    let r = kit
        .sh(
            &sb.id,
            "for i in $(seq 1 60); do sleep 2 & done 2>/tmp/err; echo unreachable",
        )
        .await;
    assert_ne!(r.stdout, "unreachable\n", "{r:?}");
    let (_, mut body) = kit.rt.read_file(&sb.id, "/tmp/err").await.unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut body, &mut err)
        .await
        .unwrap();
    assert!(err.contains("fork"), "forks fail: {err:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(kit.sh(&sb.id, "echo recovered").await.stdout, "recovered\n");
    // Disk: the writable layer fills up with ENOSPC at its cap.
    let r = kit
        .sh(
            &sb.id,
            "dd if=/dev/zero of=/tmp/fill bs=1M count=32 2>&1; echo rc=$?",
        )
        .await;
    assert!(r.stdout.contains("No space left"), "{r:?}");
    kit.rt.destroy(&sb.id).await.unwrap();
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_and_bad_input() {
    if !common::privileged("transitions_and_bad_input") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("busybox").await;
    // Resume a running sandbox: conflict.
    assert_eq!(
        kit.rt.resume(&sb.id).await.unwrap_err().kind,
        ErrorKind::Conflict
    );
    kit.rt.pause(&sb.id).await.unwrap();
    let err = kit.rt.exec(&sb.id, cmd(&["true"])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert!(err.message.contains("paused"), "{err:?}");
    assert_eq!(
        kit.rt.pause(&sb.id).await.unwrap_err().kind,
        ErrorKind::Conflict
    );
    kit.rt.resume(&sb.id).await.unwrap();
    assert_eq!(kit.sh(&sb.id, "echo back").await.stdout, "back\n");
    // Unknown ids, templates, absurd limits.
    assert_eq!(
        kit.rt.get("nope").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        kit.rt
            .exec("../etc", cmd(&["true"]))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    let bad = kit
        .rt
        .create(CreateSandbox {
            template: Some("nope".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().kind, ErrorKind::NotFound);
    let bad = kit
        .rt
        .create(CreateSandbox {
            template: Some("../../etc".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().kind, ErrorKind::InvalidArgument);
    let bad = kit
        .rt
        .create(CreateSandbox {
            limits: LimitsRequest {
                memory_bytes: Some(1),
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().kind, ErrorKind::InvalidArgument);
    let bad = kit
        .rt
        .create(CreateSandbox {
            name: Some("Not A Label".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().kind, ErrorKind::InvalidArgument);
    assert_eq!(
        kit.rt.exec(&sb.id, cmd(&[])).await.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    // A program that does not exist.
    let err = kit
        .rt
        .exec(&sb.id, cmd(&["/no/such/program"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err:?}");
    // A command that never exits: the timeout kills it and keeps its output.
    let mut req = cmd(&["/bin/sh", "-c", "echo before; sleep 30"]);
    req.timeout_seconds = Some(0.5);
    let r = kit.rt.exec(&sb.id, req).await.unwrap();
    assert!(r.timed_out && r.stdout == "before\n", "{r:?}");
    assert_eq!(r.cli_exit_code(), 124);
    // Names work like ids and are unique.
    let named = kit
        .rt
        .create(CreateSandbox {
            template: Some("busybox".into()),
            name: Some("web".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(kit.rt.get("web").await.unwrap().id, named.id);
    let dup = kit
        .rt
        .create(CreateSandbox {
            template: Some("busybox".into()),
            name: Some("web".into()),
            ..Default::default()
        })
        .await;
    assert_eq!(dup.unwrap_err().kind, ErrorKind::Conflict);
    kit.rt.destroy("web").await.unwrap();
    assert_eq!(
        kit.rt.destroy(&named.id).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    kit.rt.destroy(&sb.id).await.unwrap();
    kit.finish().await;
}

/// The host reaches a sandbox's writable layer (for snapshots) through the
/// descriptor its PID 1 keeps open, though no host path leads there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_layer_is_reachable_from_the_host() {
    if !common::privileged("writable_layer_is_reachable_from_the_host") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit.create("busybox").await;
    let r = kit
        .sh(&sb.id, "echo changed > /tmp/new; rm /etc/hosts; echo ok")
        .await;
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    let pid = sb.pid.expect("pid");
    let rw = std::path::PathBuf::from(format!("/proc/{pid}/fd/{}", hull_proto::init::RW_FD));
    let st = nix::sys::statfs::statfs(&rw).unwrap();
    assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    assert_eq!(
        std::fs::read_to_string(rw.join("upper0/tmp/new")).unwrap(),
        "changed\n"
    );
    // The deletion is a whiteout in the upper layer (a 0/0 character device
    // or overlay's xattr form); the lower file is untouched.
    let wh = std::fs::symlink_metadata(rw.join("upper0/etc/hosts")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(wh.file_type().is_char_device() || wh.len() == 0, "{wh:?}");
    // Sandbox processes neither inherit it nor reach PID 1's descriptors.
    let r = kit
        .sh(
            &sb.id,
            &format!(
                "ls /proc/self/fd/ | grep -x {} || echo none; \
                 ls /proc/1/fd/{}/ 2>&1 | head -1; cat /proc/1/environ 2>&1 | head -1",
                hull_proto::init::RW_FD,
                hull_proto::init::RW_FD
            ),
        )
        .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "none", "{r:?}");
    assert!(lines[1].contains("Permission denied"), "{r:?}");
    assert!(lines[2].contains("Permission denied"), "{r:?}");
    kit.rt.destroy(&sb.id).await.unwrap();
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_labels_users_and_file_escapes() {
    if !common::privileged("ttl_labels_users") {
        return;
    }
    let kit = Kit::new().await;
    let mut labels = BTreeMap::new();
    labels.insert("job".to_string(), "a".to_string());
    let sb = kit
        .rt
        .create(CreateSandbox {
            template: Some("busybox".into()),
            profile: Some(Profile::Rollout),
            ttl_seconds: Some(1),
            labels: labels.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(kit.rt.list(&labels).await.unwrap().len(), 1);
    let mut other = BTreeMap::new();
    other.insert("job".to_string(), "b".to_string());
    assert!(kit.rt.list(&other).await.unwrap().is_empty());
    // A non-root user.
    let mut req = cmd(&["id", "-u"]);
    req.user = Some("user".into());
    assert_eq!(kit.rt.exec(&sb.id, req).await.unwrap().stdout, "1000\n");
    // File calls cannot leave the sandbox.
    let body: hull_runtime::ByteReader = Box::pin(std::io::Cursor::new(b"pwned".to_vec()));
    let _w = kit
        .rt
        .write_file(
            &sb.id,
            "/../../../../tmp/hull-escape-test",
            None,
            1024,
            body,
        )
        .await
        .unwrap();
    assert!(!std::path::Path::new("/tmp/hull-escape-test").exists());
    assert_eq!(
        kit.sh(&sb.id, "cat /tmp/hull-escape-test").await.stdout,
        "pwned"
    );
    let body: hull_runtime::ByteReader = Box::pin(std::io::Cursor::new(b"x".to_vec()));
    let rel = kit
        .rt
        .write_file(&sb.id, "../etc/passwd", None, 1024, body)
        .await
        .unwrap_err();
    assert_eq!(rel.kind, ErrorKind::InvalidArgument, "{rel:?}");
    kit.sh(&sb.id, "ln -s / /tmp/up").await;
    let s = kit.rt.stat(&sb.id, "/tmp/up/etc/passwd").await.unwrap();
    assert!(s.size < 4096, "resolved inside the sandbox");
    // The TTL destroys it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        kit.rt.get(&sb.id).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_daemon_restart() {
    if !common::privileged("faults_and_daemon_restart") {
        return;
    }
    let mut kit = Kit::new().await;
    let a = kit.create("busybox").await;
    let b = kit.create("busybox").await;
    kit.sh(&a.id, "echo kept > /tmp/state").await;
    // Daemon restart: the sandbox keeps running and is re-adopted.
    kit.restart().await;
    let r = kit.sh(&a.id, "cat /tmp/state").await;
    assert_eq!(r.stdout, "kept\n");
    assert!(
        kit.rt
            .get(&a.id)
            .await
            .unwrap()
            .events
            .iter()
            .any(|e| e.kind == "adopted")
    );
    // PID 1 killed from the host: the sandbox fails, cleanly, with a reason.
    let pid = kit.rt.get(&b.id).await.unwrap().pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut state = SandboxState::Running;
    for _ in 0..50 {
        state = kit.rt.get(&b.id).await.unwrap().state;
        if state == SandboxState::Failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, SandboxState::Failed);
    let info = kit.rt.get(&b.id).await.unwrap();
    assert!(
        info.events.iter().any(|e| e.kind == "guest_lost"),
        "{info:?}"
    );
    assert_eq!(
        kit.rt.exec(&b.id, cmd(&["true"])).await.unwrap_err().kind,
        ErrorKind::Conflict
    );
    kit.rt.destroy(&b.id).await.unwrap();
    kit.rt.destroy(&a.id).await.unwrap();
    kit.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cycles_leave_nothing() {
    if !common::privileged("two_hundred_cycles") {
        return;
    }
    let kit = Kit::new().await;
    let info = kit.rt.host_info();
    let instance = info.instance_id;
    let (lo, hi) = info.uid_range.split_once('-').unwrap();
    let (lo, hi): (u32, u32) = (lo.parse().unwrap(), hi.parse().unwrap());
    for i in 0..200 {
        let sb = kit.create("busybox").await;
        let r = kit
            .rt
            .exec(&sb.id, cmd(&["echo", &i.to_string()]))
            .await
            .unwrap();
        assert_eq!(r.stdout, format!("{i}\n"));
        kit.rt.destroy(&sb.id).await.unwrap();
    }
    // Before any reset: nothing per-sandbox remains.
    let sandboxes = std::fs::read_dir(kit.dir.path().join("sandboxes"))
        .unwrap()
        .count();
    assert_eq!(sandboxes, 0, "sandbox directories left behind");
    // No process runs as a sandbox uid (they are all dead, not just hidden).
    let alive: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let uid: u32 = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            ((lo..=hi).contains(&uid) && !zombie)
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    assert!(alive.is_empty(), "sandbox processes still alive: {alive:?}");
    // Mounts under the state directory: only the shared ones (the runtime
    // tmpfs and the template layers), none per sandbox.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = kit.dir.path().to_str().unwrap();
    let per_sandbox: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(state))
        .filter(|m| {
            !m.ends_with("/sandboxes") && !m.contains("/mnt/") && !m.ends_with("/snapshots/btrfs")
        })
        .collect();
    assert!(per_sandbox.is_empty(), "{per_sandbox:?}");
    for ctrl in ["memory", "pids", "cpu", "freezer"] {
        let p = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(format!("hull-{instance}"));
        if p.exists() {
            let left = std::fs::read_dir(&p)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count();
            assert_eq!(left, 0, "cgroups left behind in {}", p.display());
        }
    }
    kit.finish().await;
}
