//! `hull bench --snapshots`: snapshot, fork, rollback and create-from costs
//! through the API, with `cp -a` of the same changed tree as the peer,
//! measured in the same run. Numbers are printed, never asserted.

use std::time::{Duration, Instant};

use anyhow::Context;
use hull_api::{
    CreateSandbox, CreateSnapshot, Fork, ForkResult, Profile, Rollback, Sandbox, Snapshot,
};
use hyper::Method;

use crate::bench::{Stats, create_with as create, destroy, exec_ok, line, stats};
use crate::client::Client;

async fn sh(client: &Client, id: &str, script: &str) -> anyhow::Result<()> {
    exec_ok(
        client,
        id,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    )
    .await
}

async fn snapshot(client: &Client, id: &str) -> anyhow::Result<Snapshot> {
    Ok(client
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/snapshot"),
            Some(&CreateSnapshot::default()),
        )
        .await?)
}

async fn delete_snapshot(client: &Client, id: &str) -> anyhow::Result<()> {
    Ok(client
        .call_empty(Method::DELETE, &format!("/v1/snapshots/{id}"), None::<&()>)
        .await?)
}

/// A shell line writing `mib` MiB in 100 files under /work (rewritten on
/// every call, so each snapshot copies them again).
fn write_tree(mib: u64) -> String {
    // Byte counts: busybox's head takes no size suffixes. `set -e`, so a
    // failed write fails the benchmark instead of measuring nothing.
    let bytes = mib * 1024 * 1024 / 100;
    format!(
        "set -e; mkdir -p /work; i=0; while [ $i -lt 100 ]; do \
         head -c {bytes} /dev/urandom > /work/f$i; i=$((i+1)); done; \
         [ $(cat /work/* | wc -c) -eq {} ]",
        bytes * 100
    )
}

/// `cp -a` of a `mib` MiB tree in 100 files, from a tmpfs to `dst_parent`.
fn cp_peer(mib: u64, n: usize, dst_parent: &std::path::Path) -> anyhow::Result<Stats> {
    let src = tempfile::Builder::new()
        .prefix("hull-bench-src")
        .tempdir_in("/dev/shm")
        .context("a source tree on /dev/shm")?;
    let bytes = (mib * 1024 * 1024 / 100) as usize;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..100 {
        std::fs::write(src.path().join(format!("f{i}")), &data)?;
    }
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let dst = dst_parent.join(format!("hull-bench-cp-{}-{i}", std::process::id()));
        let t = Instant::now();
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(src.path())
            .arg(&dst)
            .status()
            .context("running cp")?;
        v.push(t.elapsed());
        let _ = std::fs::remove_dir_all(&dst);
        anyhow::ensure!(st.success(), "cp -a failed: {st}");
    }
    Ok(stats(v))
}

pub async fn run(client: &Client, n: usize, template: &str) -> anyhow::Result<()> {
    let info: hull_api::HostInfo = client.call(Method::GET, "/v1/info", None::<&()>).await?;
    println!(
        "hull bench --snapshots: {n} iterations, template {template}, kernel {}, state {}",
        info.kernel, info.state_dir
    );
    let base_req = CreateSandbox {
        template: Some(template.into()),
        profile: Some(Profile::Session),
        ..Default::default()
    };
    let mut rows: Vec<(String, Stats, Option<Stats>)> = Vec::new();
    let state = std::path::PathBuf::from(&info.state_dir);
    for mib in [10u64, 100] {
        let reps = if mib >= 100 { n.min(10) } else { n };
        eprintln!("snapshot of a running sandbox with {mib} MiB changed ({reps}x)...");
        let sb = create(client, &base_req).await?;
        sh(client, &sb.id, &write_tree(mib)).await?;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            let s = snapshot(client, &sb.id).await?;
            times.push(t.elapsed());
            delete_snapshot(client, &s.id).await?;
        }
        destroy(client, &sb.id).await?;
        let peer = cp_peer(mib, reps, &state).ok();
        rows.push((format!("snapshot, {mib} MiB changed"), stats(times), peer));
    }

    eprintln!("fork 100 from one snapshot, each running /bin/true...");
    let sb = create(client, &base_req).await?;
    sh(client, &sb.id, &write_tree(10)).await?;
    let snap = snapshot(client, &sb.id).await?;
    let mut fork_total = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r: ForkResult = client
            .call(
                Method::POST,
                &format!("/v1/snapshots/{}/fork", snap.id),
                Some(&Fork {
                    n: 100,
                    profile: Some(Profile::Rollout),
                    ..Default::default()
                }),
            )
            .await?;
        for s in &r.sandboxes {
            sh(client, &s.id, "true").await?;
        }
        fork_total.push(t.elapsed());
        for s in &r.sandboxes {
            destroy(client, &s.id).await?;
        }
    }
    rows.push((
        "fork 100 + exec true in each (total)".into(),
        stats(fork_total),
        None,
    ));

    eprintln!("rollback ({n}x) and create from a snapshot vs from the template ({n}x)...");
    let mut rb = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _: Sandbox = client
            .call(
                Method::POST,
                &format!("/v1/sandboxes/{}/rollback", sb.id),
                Some(&Rollback {
                    snapshot: snap.id.clone(),
                }),
            )
            .await?;
        rb.push(t.elapsed());
    }
    rows.push(("rollback (PID 1 restarted)".into(), stats(rb), None));
    let mut from_snap = Vec::with_capacity(n);
    let mut from_tpl = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = create(
            client,
            &CreateSandbox {
                from: Some(snap.id.clone()),
                profile: Some(Profile::Rollout),
                ..Default::default()
            },
        )
        .await?;
        from_snap.push(t.elapsed());
        destroy(client, &s.id).await?;
        let t = Instant::now();
        let s = create(client, &base_req).await?;
        from_tpl.push(t.elapsed());
        destroy(client, &s.id).await?;
    }
    rows.push(("create from the snapshot".into(), stats(from_snap), None));
    rows.push(("create from the template".into(), stats(from_tpl), None));
    destroy(client, &sb.id).await?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    delete_snapshot(client, &snap.id).await?;

    println!();
    println!(
        "{:<44} {:>8} {:>8} {:>8}  cp -a / hull",
        "measurement (ms)", "p50", "p99", "mean"
    );
    for (name, s, peer) in &rows {
        line(&format!("hull: {name}"), s, None);
        if let Some(p) = peer {
            line("  cp -a of the same tree", p, Some(s));
        }
    }
    Ok(())
}
