//! `hull bench`: start latency, exec round trip and idle footprint, through
//! the API, side by side with `bwrap` and `crun` measured in the same run.
//! Numbers are printed, never asserted (see docs/benchmarks.md).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hull_api::{CreateSandbox, ExecRequest, ExecResult, Profile, Sandbox};
use hyper::Method;

use crate::bench_peers;
use crate::client::Client;

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Iterations per measurement.
    #[arg(short = 'n', long, default_value_t = 500)]
    pub n: usize,
    /// Template for hull's sandboxes.
    #[arg(long, default_value = "busybox")]
    pub template: String,
    /// Idle sandboxes to hold for the footprint measurement (0 skips it).
    #[arg(long, default_value_t = 500)]
    pub idle: usize,
    /// Skip the bwrap and crun peers.
    #[arg(long)]
    pub no_peers: bool,
    /// Measure snapshots instead: snapshot with 10 and 100 MiB changed
    /// (against `cp -a`), fork 100, rollback, create from a snapshot.
    #[arg(long)]
    pub snapshots: bool,
}

pub(crate) struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

pub(crate) fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        mean: v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64,
    }
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("MemAvailable:")
                        .map(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
        * 1024
}

async fn create(client: &Client, template: &str, profile: Profile) -> anyhow::Result<Sandbox> {
    let req = CreateSandbox {
        template: Some(template.into()),
        profile: Some(profile),
        ..Default::default()
    };
    create_with(client, &req).await
}

pub(crate) async fn create_with(client: &Client, req: &CreateSandbox) -> anyhow::Result<Sandbox> {
    Ok(client
        .call(Method::POST, "/v1/sandboxes", Some(req))
        .await?)
}

async fn exec_true(client: &Client, id: &str) -> anyhow::Result<()> {
    exec_ok(client, id, vec!["/bin/true".into()]).await
}

/// Run `cmd` in sandbox `id`; an error unless it exits 0.
pub(crate) async fn exec_ok(client: &Client, id: &str, cmd: Vec<String>) -> anyhow::Result<()> {
    let req = ExecRequest {
        cmd,
        ..Default::default()
    };
    let r: ExecResult = client
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(&req),
        )
        .await?;
    anyhow::ensure!(r.exit_code == Some(0), "{:?} failed: {r:?}", req.cmd);
    Ok(())
}

pub(crate) async fn destroy(client: &Client, id: &str) -> anyhow::Result<()> {
    Ok(client
        .call_empty(Method::DELETE, &format!("/v1/sandboxes/{id}"), None::<&()>)
        .await?)
}

pub(crate) fn line(name: &str, s: &Stats, base: Option<&Stats>) {
    let ratio = base
        .map(|b| format!("{:>6.2}x", s.p50 / b.p50))
        .unwrap_or_else(|| "      -".into());
    println!(
        "{name:<44} {:>8.2} {:>8.2} {:>8.2}  {ratio}",
        s.p50, s.p99, s.mean
    );
}

pub async fn run(client: &Client, a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.n >= 1, "-n must be at least 1");
    if a.snapshots {
        return crate::bench_snapshots::run(client, a.n, &a.template).await;
    }
    let info: hull_api::HostInfo = client.call(Method::GET, "/v1/info", None::<&()>).await?;
    println!(
        "hull bench: {} iterations, template {}, kernel {}, {} CPUs, cgroups {}",
        a.n,
        a.template,
        info.kernel,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        info.cgroup_mode
    );
    // Warm up: template mounts, caches.
    for _ in 0..5 {
        let s = create(client, &a.template, Profile::Rollout).await?;
        exec_true(client, &s.id).await?;
        destroy(client, &s.id).await?;
    }
    eprintln!(
        "measuring create -> exec /bin/true -> destroy ({}x)...",
        a.n
    );
    let mut cycle = Vec::with_capacity(a.n);
    for _ in 0..a.n {
        let t = Instant::now();
        let s = create(client, &a.template, Profile::Rollout).await?;
        exec_true(client, &s.id).await?;
        destroy(client, &s.id).await?;
        cycle.push(t.elapsed());
    }
    eprintln!("measuring exec round trips ({}x)...", a.n);
    let s = create(client, &a.template, Profile::Session).await?;
    let mut rtt = Vec::with_capacity(a.n);
    for _ in 0..a.n {
        let t = Instant::now();
        exec_true(client, &s.id).await?;
        rtt.push(t.elapsed());
    }
    destroy(client, &s.id).await?;

    let mut idle_result = None;
    if a.idle > 0 {
        eprintln!("holding {} idle sandboxes...", a.idle);
        let before = mem_available();
        let mut ids = Vec::with_capacity(a.idle);
        let mut err = None;
        for _ in 0..a.idle {
            match create(client, &a.template, Profile::Session).await {
                Ok(s) => ids.push(s.id),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = mem_available();
        let mut loaded = Vec::new();
        if err.is_none() {
            for _ in 0..a.n.min(100) {
                let t = Instant::now();
                let s = create(client, &a.template, Profile::Rollout).await?;
                exec_true(client, &s.id).await?;
                loaded.push(t.elapsed());
                destroy(client, &s.id).await?;
            }
        }
        for id in &ids {
            let _ = destroy(client, id).await;
        }
        if let Some(e) = err {
            return Err(e).context(format!(
                "creating idle sandbox {} of {}",
                ids.len() + 1,
                a.idle
            ));
        }
        let per = before.saturating_sub(after) as f64 / ids.len() as f64 / (1024.0 * 1024.0);
        idle_result = Some((ids.len(), per, stats(loaded)));
    }

    let (mut bw, mut cr) = (None, None);
    if !a.no_peers {
        let rootfs = bench_peers::Rootfs::new()?;
        eprintln!("measuring bwrap ({}x)...", a.n);
        bw = bench_peers::bwrap(&rootfs, a.n)?.map(stats);
        eprintln!("measuring crun ({}x)...", a.n);
        cr = match bench_peers::crun(&rootfs, a.n) {
            Ok(v) => v.map(stats),
            Err(e) => {
                eprintln!("crun: {e:#}");
                None
            }
        };
    }

    let cycle = stats(cycle);
    let rtt = stats(rtt);
    println!();
    println!(
        "{:<44} {:>8} {:>8} {:>8}  vs hull",
        "measurement (ms)", "p50", "p99", "mean"
    );
    line("hull: create + exec true + destroy (API)", &cycle, None);
    match &bw {
        Some(b) => line("bwrap: one-shot /bin/true", b, Some(&cycle)),
        None => println!("bwrap: not installed (apt-get install bubblewrap)"),
    }
    match &cr {
        Some(c) => line("crun: run /bin/true", c, Some(&cycle)),
        None => println!("crun: not installed or failed (apt-get install crun)"),
    }
    line("hull: exec true in a running sandbox", &rtt, None);
    if let Some((n, per, loaded)) = &idle_result {
        println!(
            "{:<44} {:>8.2} MiB per sandbox (MemAvailable drop / {n})",
            format!("hull: {n} idle sandboxes"),
            per
        );
        line(
            &format!("hull: create+exec+destroy with {n} idle"),
            loaded,
            None,
        );
    }
    if let Some(b) = &bw {
        println!("\nratio bwrap/hull p50: {:.2}", b.p50 / cycle.p50);
    }
    if let Some(c) = &cr {
        println!("ratio crun/hull p50: {:.2}", c.p50 / cycle.p50);
    }
    Ok(())
}
