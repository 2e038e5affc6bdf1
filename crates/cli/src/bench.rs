//! `hull bench`: start latency, exec round trip and idle footprint, through
//! the API, side by side with `bwrap` and `crun` measured in the same run;
//! tool round trips (MCP, shell sessions, the code interpreter against
//! `jupyter_client` driving a kernel on the host: `bench_code`).
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
    /// Iterations per measurement [default: 500; with --snapshots 20, fewer
    /// for the large snapshots and the forks].
    #[arg(short = 'n', long)]
    pub n: Option<usize>,
    /// Template for hull's sandboxes (not with --snapshots, which imports
    /// its own).
    #[arg(long, default_value = "busybox")]
    pub template: String,
    /// Idle sandboxes to hold for the footprint measurement (0 skips it).
    #[arg(long, default_value_t = 500)]
    pub idle: usize,
    /// Skip the bwrap and crun peers.
    #[arg(long)]
    pub no_peers: bool,
    /// Measure snapshots instead, on private daemons this command starts
    /// (one per backend, never the running daemon): snapshot with 10 MiB,
    /// 100 MiB and 1 GiB changed (against `cp -a`), fork 100, rollback,
    /// create from small and large templates and their snapshots.
    #[arg(long)]
    pub snapshots: bool,
    /// With --snapshots: the snapshot store backends to measure.
    #[arg(long, value_enum, default_value_t = BenchBackend::Both, requires = "snapshots")]
    pub backend: BenchBackend,
    /// With --snapshots: bytes of file data in the large template.
    #[arg(long, default_value = "1G", value_parser = size_arg, requires = "snapshots")]
    pub template_size: u64,
    /// With --snapshots: files in the large template (the small one has
    /// files of the same mean size).
    #[arg(long, default_value_t = 20_000, requires = "snapshots")]
    pub template_files: u64,
    /// With --snapshots: bytes of file data in the small template.
    #[arg(long, default_value = "10M", value_parser = size_arg, requires = "snapshots")]
    pub small_size: u64,
    /// With --snapshots: where the image archives and the private daemons'
    /// state directories go (a temporary directory in it, removed after).
    #[arg(long, default_value = "/var/tmp", requires = "snapshots")]
    pub dir: std::path::PathBuf,
    /// Measure create latency with networking (`open`, pooled) against
    /// `none` instead, interleaved in the same run.
    #[arg(long, conflicts_with = "snapshots")]
    pub net: bool,
}

/// Which snapshot store backends `hull bench --snapshots` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchBackend {
    Overlay,
    Btrfs,
    Both,
}

fn size_arg(s: &str) -> Result<u64, String> {
    hull_api::limits::parse_size(s).map_err(|e| e.message)
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    p99: f64,
    mean: f64,
    pub(crate) n: usize,
}

pub(crate) fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    Stats {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        mean: v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64,
        n: v.len(),
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

/// The ratio column: this p50 over `base`'s.
fn ratio(s: &Stats, base: Option<&Stats>) -> String {
    base.map(|b| format!("{:>6.2}x", s.p50 / b.p50))
        .unwrap_or_else(|| "      -".into())
}

pub(crate) fn line(name: &str, s: &Stats, base: Option<&Stats>) {
    let ratio = ratio(s, base);
    println!(
        "{name:<44} {:>8.2} {:>8.2} {:>8.2}  {ratio}",
        s.p50, s.p99, s.mean
    );
}

/// One line of `hull bench --snapshots`: p50, p90 and the number of
/// samples; `base` gives the ratio column (this line's p50 over base's).
pub(crate) fn line_p90(name: &str, s: &Stats, base: Option<&Stats>) {
    let ratio = ratio(s, base);
    println!(
        "{name:<52} {:>9.2} {:>9.2} {:>4}  {ratio}",
        s.p50, s.p90, s.n
    );
}

/// `hull bench` against the daemon the client talks to (`--snapshots` is
/// [`crate::bench_snapshots::run`], on private daemons).
/// `n` `exec /bin/true` tool calls through the daemon's MCP endpoint
/// (one session, initialized first), each a POST to `/mcp`.
async fn mcp_exec_round_trips(
    client: &Client,
    sandbox: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut session = None;
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "hull-bench", "version": env!("CARGO_PKG_VERSION")}}});
    crate::mcp::post(client, &mut session, &init.to_string()).await?;
    let ready = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    crate::mcp::post(client, &mut session, &ready.to_string()).await?;
    let mut t = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let call = serde_json::json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
            "params": {"name": "exec", "arguments": {"sandbox": sandbox, "argv": ["/bin/true"]}}});
        let start = Instant::now();
        let answer = crate::mcp::post(client, &mut session, &call.to_string()).await?;
        let elapsed = start.elapsed();
        let v: serde_json::Value = serde_json::from_str(
            answer
                .last()
                .ok_or_else(|| anyhow::anyhow!("no answer to a tool call"))?,
        )?;
        anyhow::ensure!(v["result"]["isError"] == false, "the tool call failed: {v}");
        if i >= 20 {
            t.push(elapsed);
        }
    }
    Ok(t)
}

/// `n` runs of `true` in a warm shell session of a `host` sandbox (bash is
/// needed), through the API.
async fn shell_round_trips(client: &Client, n: usize) -> anyhow::Result<Vec<Duration>> {
    let s = create(client, "host", Profile::Session).await?;
    let result = async {
        let base = format!("/v1/sandboxes/{}/shells", s.id);
        let open = hull_api::ShellOpenRequest {
            session: "bench".into(),
            ..Default::default()
        };
        let _: hull_api::ShellOpened = client.call(Method::POST, &base, Some(&open)).await?;
        let run = hull_api::ShellRunRequest {
            command: "true".into(),
            ..Default::default()
        };
        let path = format!("{base}/bench/run");
        let mut t = Vec::with_capacity(n);
        for i in 0..n + 20 {
            let start = Instant::now();
            let r: hull_api::ShellRunResult = client.call(Method::POST, &path, Some(&run)).await?;
            anyhow::ensure!(r.exit_code == Some(0), "true exited {:?}", r.exit_code);
            if i >= 20 {
                t.push(start.elapsed());
            }
        }
        Ok(t)
    }
    .await;
    destroy(client, &s.id).await?;
    result
}

pub async fn run(client: &Client, a: BenchArgs) -> anyhow::Result<()> {
    let n = a.n.unwrap_or(500);
    anyhow::ensure!(n >= 1, "-n must be at least 1");
    anyhow::ensure!(!a.snapshots, "--snapshots runs on private daemons");
    if a.net {
        return crate::bench_net::run(client, &a.template, n).await;
    }
    let info: hull_api::HostInfo = client.call(Method::GET, "/v1/info", None::<&()>).await?;
    println!(
        "hull bench: {} iterations, template {}, kernel {}, {} CPUs, cgroups {}",
        n,
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
    eprintln!("measuring create -> exec /bin/true -> destroy ({}x)...", n);
    let mut cycle = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = create(client, &a.template, Profile::Rollout).await?;
        exec_true(client, &s.id).await?;
        destroy(client, &s.id).await?;
        cycle.push(t.elapsed());
    }
    eprintln!("measuring exec round trips ({}x)...", n);
    let s = create(client, &a.template, Profile::Session).await?;
    let mut rtt = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        exec_true(client, &s.id).await?;
        rtt.push(t.elapsed());
    }
    eprintln!("measuring exec as an MCP tool call ({}x)...", n);
    let mcp = mcp_exec_round_trips(client, &s.id, n).await;
    destroy(client, &s.id).await?;

    eprintln!("measuring shell session round trips ({}x)...", n);
    let shell = shell_round_trips(client, n).await;

    eprintln!(
        "measuring code interpreter round trips ({}x each way)...",
        n
    );
    let code = crate::bench_code::round_trips(client, n).await;
    let jupyter = if a.no_peers {
        Ok(None)
    } else {
        eprintln!("measuring jupyter_client on the host ({}x)...", n);
        crate::bench_code::jupyter_peer(n)
    };

    eprintln!(
        "measuring browser screenshots ({}x each way)...",
        n.min(200)
    );
    let shots = crate::bench_browser::screenshots(client, n.min(200)).await;

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
            for _ in 0..n.min(100) {
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
        eprintln!("measuring bwrap ({}x)...", n);
        bw = bench_peers::bwrap(&rootfs, n)?.map(stats);
        eprintln!("measuring crun ({}x)...", n);
        cr = match bench_peers::crun(&rootfs, n) {
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
        None if a.no_peers => {}
        None => println!("bwrap: not installed (apt-get install bubblewrap)"),
    }
    match &cr {
        Some(c) => line("crun: run /bin/true", c, Some(&cycle)),
        None if a.no_peers => {}
        None => println!("crun: not installed or failed (apt-get install crun)"),
    }
    line("hull: exec true in a running sandbox", &rtt, None);
    match mcp {
        Ok(m) => line(
            "hull: exec true as an MCP tool call (/mcp)",
            &stats(m),
            Some(&rtt),
        ),
        Err(e) => println!("hull: MCP tool calls not measured: {e:#}"),
    }
    match shell {
        Ok(sh) => line(
            "hull: `true` in a warm shell session",
            &stats(sh),
            Some(&rtt),
        ),
        Err(e) => println!("hull: shell sessions not measured: {e:#}"),
    }
    match code {
        Ok(c) => {
            let buffered = stats(c.buffered);
            line("hull: code `1+1` in a warm context", &buffered, None);
            line(
                "hull: code `1+1`, streamed (run/stream)",
                &stats(c.streamed),
                Some(&buffered),
            );
            match jupyter {
                Ok(Some(j)) => line(
                    "jupyter_client -> ipykernel on the host",
                    &stats(j),
                    Some(&buffered),
                ),
                Ok(None) if a.no_peers => {}
                Ok(None) => {
                    println!("jupyter_client: not installed (apt-get install python3-ipykernel)")
                }
                Err(e) => println!("jupyter_client: not measured: {e:#}"),
            }
        }
        Err(e) => println!("hull: code interpreter not measured: {e:#}"),
    }
    match shots {
        Ok(b) => {
            let action = stats(b.action);
            line("hull: browser screenshot, local page (API)", &action, None);
            match b.raw_cdp {
                Ok(r) => line(
                    "raw CDP captureScreenshot, same browser",
                    &stats(r),
                    Some(&action),
                ),
                Err(e) => println!("raw CDP screenshots: not measured: {e:#}"),
            }
        }
        Err(e) => println!("hull: browser screenshots not measured: {e:#}"),
    }
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
