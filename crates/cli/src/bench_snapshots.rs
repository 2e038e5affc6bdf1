//! `hull bench --snapshots`: snapshot, fork, rollback and create costs
//! through the API, on each snapshot store backend, with `cp -a` of the
//! same changed tree as the peer, measured in the same run. Numbers are
//! printed, never asserted (see docs/benchmarks.md).
//!
//! The bench makes its own templates: image archives (`docker save`
//! style, see [`crate::bench_image`]) of a large tree (default 1 GiB in
//! 20,000 files) and a small one (default 10 MiB, files of the same mean
//! size), both with busybox, written to a temporary directory under
//! `--dir`. For each backend it starts a private daemon
//! ([`crate::bench_daemon`]; never the one the CLI normally talks to),
//! imports both archives through the API, measures, then resets and stops
//! the daemon and removes its state directory. Ctrl-C or SIGTERM stops the
//! measurements and still cleans up.
//!
//! What is measured, per backend:
//! - a snapshot of a running sandbox of the large template after 10 MiB,
//!   100 MiB and 1 GiB were written into it (8 files of random bytes from
//!   busybox `head -c`, byte counts checked), each size in a fresh sandbox
//!   with 3 GiB of memory and disk (its writable layer is a tmpfs counted
//!   against its memory); the peer is `cp -a` of a tree of the same shape
//!   and size from and to the state directory's filesystem. Every
//!   repetition, hull's and the peer's, starts after a `sync()`, so writes
//!   of the previous one are not flushed in the middle of the next. The
//!   same 10 MiB snapshot over the small template shows what a snapshot
//!   costs besides the bytes changed;
//! - `GET` of a snapshot of each template (10 MiB changed): every answer
//!   carrying a snapshot carries its size, computed by the store;
//! - fork 100 from a snapshot of the large template (10 MiB changed), then
//!   `exec /bin/true` in all 100 at once: the time until the last exec
//!   answered, and the fork call alone;
//! - rollback of a sandbox to that snapshot, after writing a file in it:
//!   the call returns once PID 1 has restarted;
//! - create + `exec /bin/true` + destroy from the small and the large
//!   template, and from a snapshot (10 MiB changed) of each, interleaved.
//!
//! Limits: the peer writes pseudo-random bytes, not the sandbox's; the
//! state directory is wherever `--dir` is (a btrfs store there is a loop
//! image on that filesystem unless it is btrfs itself).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures_util::future::join_all;
use hull_api::limits::{GIB, LimitsRequest, MIB};
use hull_api::{
    CreateSandbox, CreateSnapshot, Fork, ForkResult, HostInfo, Profile, Rollback, Sandbox, Snapshot,
};
use hyper::Method;
use tokio::sync::watch;

use crate::bench::{BenchArgs, BenchBackend, Stats, create_with as create, destroy, exec_ok};
use crate::bench::{line_p90, stats};
use crate::bench_daemon::{PrivateDaemon, have_program, remove_if_clean};
use crate::bench_image::{TreeSpec, write_image};
use crate::client::Client;

/// Repetitions when `-n` is not given.
const DEFAULT_REPS: usize = 20;
/// Files the changed bytes are written into, in the sandbox and for `cp -a`.
const CHANGED_FILES: u64 = 8;
/// Memory and disk limits of the sandboxes that are written into.
const WRITER_LIMIT: u64 = 3 * GIB;
/// Sandboxes per fork.
const FORK_N: u32 = 100;
const BIG: &str = "bench-big";
const SMALL: &str = "bench-small";

/// One line of a backend's table; `vs` is the line the ratio is against.
struct Row {
    name: String,
    s: Stats,
    vs: Option<Stats>,
}

fn row(name: impl Into<String>, s: Stats, vs: Option<Stats>) -> Row {
    Row {
        name: name.into(),
        s,
        vs,
    }
}

/// `1 GiB`, `10 MiB`, `1.50 GiB`.
fn size_label(b: u64) -> String {
    if b >= GIB {
        if b.is_multiple_of(GIB) {
            format!("{} GiB", b / GIB)
        } else {
            format!("{:.2} GiB", b as f64 / GIB as f64)
        }
    } else if b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else {
        format!("{:.2} MiB", b as f64 / MIB as f64)
    }
}

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

/// `sync()`, off the runtime's threads.
async fn sync() {
    let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
}

/// A shell line writing `bytes` bytes of random data in [`CHANGED_FILES`]
/// files under /work and checking the total (`set -e`: a failed write
/// fails the benchmark instead of measuring nothing; busybox's `head`
/// takes no size suffixes).
fn write_tree(bytes: u64) -> String {
    let per = bytes / CHANGED_FILES;
    format!(
        "set -e; mkdir -p /work; i=0; while [ $i -lt {CHANGED_FILES} ]; do \
         head -c {per} /dev/urandom > /work/f$i; i=$((i+1)); done; \
         [ $(cat /work/f* | wc -c) -eq {} ]",
        per * CHANGED_FILES
    )
}

/// `cp -a` of a tree like [`write_tree`]'s, from and to `dir`'s
/// filesystem, `reps` times.
fn cp_peer(bytes: u64, reps: usize, dir: &Path) -> anyhow::Result<Stats> {
    let src = dir.join("cp-src");
    let work = src.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let pat = crate::bench_image::pattern(8 << 20);
    let per = bytes / CHANGED_FILES;
    for i in 0..CHANGED_FILES {
        let p = work.join(format!("f{i}"));
        let mut f =
            std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        let mut data = crate::bench_image::Cyclic::new(&pat, (i as usize * 4096) % pat.len(), per);
        std::io::copy(&mut data, &mut f).with_context(|| format!("writing {}", p.display()))?;
    }
    let dst = dir.join("cp-dst");
    let mut v = Vec::with_capacity(reps);
    let result = (|| {
        for _ in 0..reps {
            nix::unistd::sync();
            let t = Instant::now();
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(&src)
                .arg(&dst)
                .status()
                .context("running cp")?;
            v.push(t.elapsed());
            std::fs::remove_dir_all(&dst).with_context(|| format!("removing {}", dst.display()))?;
            anyhow::ensure!(st.success(), "cp -a failed: {st}");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dst);
    let _ = std::fs::remove_dir_all(&src);
    result?;
    Ok(stats(v))
}

/// Resolves when `cancel` says stop.
async fn cancelled(mut cancel: watch::Receiver<bool>) {
    let _ = cancel.wait_for(|c| *c).await;
}

/// Sets `true` in the channel at the first SIGINT or SIGTERM.
fn watch_signals() -> anyhow::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted: stopping and cleaning up...");
        let _ = tx.send(true);
    });
    Ok(rx)
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(0)
        * 1024
}

/// The filesystem type of `p` (`findmnt -T`), or `unknown`.
fn fs_type(p: &Path) -> String {
    std::process::Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(p)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The archives of both templates.
struct Images {
    big: PathBuf,
    small: PathBuf,
    big_spec: TreeSpec,
    small_spec: TreeSpec,
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let n = a.n.unwrap_or(DEFAULT_REPS);
    anyhow::ensure!(n >= 1, "-n must be at least 1");
    anyhow::ensure!(
        a.template_files >= 1 && a.template_size >= a.template_files,
        "the template needs at least one file and one byte per file"
    );
    anyhow::ensure!(
        a.small_size >= 1 && a.small_size <= a.template_size,
        "--small-size must be between 1 byte and --template-size"
    );
    let backends: &[&str] = match a.backend {
        BenchBackend::Overlay => &["overlay"],
        BenchBackend::Btrfs => &["btrfs"],
        BenchBackend::Both => &["overlay", "btrfs"],
    };
    let cancel = watch_signals()?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let root = tempfile::Builder::new()
        .prefix("hull-bench-")
        .tempdir_in(&a.dir)
        .with_context(|| format!("a temporary directory in {}", a.dir.display()))?;
    let big_spec = TreeSpec {
        bytes: a.template_size,
        files: a.template_files,
    };
    // Files of the same mean size as the large template's.
    let small_files = ((a.small_size as u128 * a.template_files as u128) / a.template_size as u128)
        .clamp(1, a.small_size as u128) as u64;
    let small_spec = TreeSpec {
        bytes: a.small_size,
        files: small_files,
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "hull bench --snapshots: {n} repetitions (fewer for 100 MiB/1 GiB snapshots and forks); \
         {} CPUs, {:.1} GiB memory, kernel {}; state directories in {} ({})",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total() as f64 / GIB as f64,
        kernel.trim(),
        root.path().display(),
        fs_type(root.path()),
    );

    let images = Images {
        big: root.path().join("big.tar"),
        small: root.path().join("small.tar"),
        big_spec,
        small_spec,
    };
    eprintln!(
        "writing the template archives ({} in {} files, {} in {} files)...",
        size_label(big_spec.bytes),
        big_spec.files,
        size_label(small_spec.bytes),
        small_spec.files
    );
    let t = Instant::now();
    let (big, small) = (images.big.clone(), images.small.clone());
    let written = tokio::select! {
        r = tokio::task::spawn_blocking(move || {
            let b = write_image(&big, "big", big_spec)?;
            let s = write_image(&small, "small", small_spec)?;
            Ok::<_, anyhow::Error>((b, s))
        }) => r.map_err(|e| anyhow!("writing the archives: {e}"))??,
        () = cancelled(cancel.clone()) => return Err(anyhow!("interrupted")),
    };
    println!(
        "templates: {} in {} files + busybox ({} archive), {} in {} files + busybox ({} archive); \
         archives written in {:.1} s",
        size_label(big_spec.bytes),
        big_spec.files,
        size_label(written.0.archive_bytes),
        size_label(small_spec.bytes),
        small_spec.files,
        size_label(written.1.archive_bytes),
        t.elapsed().as_secs_f64()
    );

    let mut results: Vec<(&str, Vec<Row>)> = Vec::new();
    let mut errors = Vec::new();
    for &backend in backends {
        if *cancel.borrow() {
            break;
        }
        if backend == "btrfs" && !have_program("mkfs.btrfs") {
            println!(
                "\nbtrfs: skipped: mkfs.btrfs not found (apt-get install btrfs-progs) \
                 — the btrfs store needs it for its loop image"
            );
            continue;
        }
        eprintln!("starting a private daemon with the {backend} store...");
        let d = match PrivateDaemon::start(&root.path().join(backend), backend).await {
            Ok(d) => d,
            Err(e) => {
                println!("\n{backend}: the daemon did not start: {e:#}");
                errors.push(format!("{backend}: {e:#}"));
                continue;
            }
        };
        let measured = tokio::select! {
            r = measure(&d, &images, n) => r,
            () = cancelled(cancel.clone()) => Err(anyhow!("interrupted")),
        };
        eprintln!("stopping the {backend} daemon...");
        let stopped = d.stop().await;
        match measured {
            Ok(rows) => {
                print_table(backend, &rows);
                results.push((backend, rows));
            }
            Err(e) => {
                println!("\n{backend}: failed: {e:#}");
                errors.push(format!("{backend}: {e:#}"));
            }
        }
        if let Err(e) = stopped {
            println!("{backend}: cleanup: {e:#}");
            errors.push(format!("{backend} cleanup: {e:#}"));
        }
    }
    if results.len() > 1 {
        print_side_by_side(&results);
    }
    // Never let the TempDir's removal reach into something left mounted.
    let root = root.keep();
    if let Err(e) = remove_if_clean(&root) {
        errors.push(format!("{e:#}"));
    }
    if !errors.is_empty() {
        return Err(anyhow!(errors.join("\n")));
    }
    Ok(())
}

fn print_table(backend: &str, rows: &[Row]) {
    println!();
    println!(
        "{:<52} {:>9} {:>9} {:>4}  ratio",
        format!("{backend} store (ms)"),
        "p50",
        "p90",
        "n"
    );
    for r in rows {
        line_p90(&r.name, &r.s, r.vs.as_ref());
    }
    println!("ratio: cp -a / hull on the cp -a lines; large / small template on the others");
}

fn print_side_by_side(results: &[(&str, Vec<Row>)]) {
    println!();
    print!("{:<52}", "p50 (ms)");
    for (b, _) in results {
        print!(" {b:>9}");
    }
    println!();
    for (i, r) in results[0].1.iter().enumerate() {
        print!("{:<52}", r.name);
        for (_, rows) in results {
            match rows.get(i) {
                Some(x) if x.name == r.name => print!(" {:>9.2}", x.s.p50),
                _ => print!(" {:>9}", "-"),
            }
        }
        println!();
    }
}

/// `reps` snapshots of sandbox `id`, each timed after a `sync()` and
/// deleted.
async fn snapshots_of(c: &Client, id: &str, reps: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        sync().await;
        let t = Instant::now();
        let s = snapshot(c, id).await?;
        times.push(t.elapsed());
        delete_snapshot(c, &s.id).await?;
    }
    Ok(times)
}

/// A single timing as a [`Stats`].
fn once(d: Duration) -> Stats {
    stats(vec![d])
}

async fn measure(d: &PrivateDaemon, img: &Images, n: usize) -> anyhow::Result<Vec<Row>> {
    let c = &d.client;
    let info: HostInfo = c.call(Method::GET, "/v1/info", None::<&()>).await?;
    anyhow::ensure!(
        info.snapshot_store.starts_with(&d.backend),
        "asked for the {} store, the daemon says: {}",
        d.backend,
        info.snapshot_store
    );
    println!("\n{}: {}", d.backend, info.snapshot_store);
    let mut rows = Vec::new();
    let big_label = size_label(img.big_spec.bytes);
    let small_label = size_label(img.small_spec.bytes);

    for (name, file, spec) in [
        (SMALL, &img.small, img.small_spec),
        (BIG, &img.big, img.big_spec),
    ] {
        eprintln!("importing {name}...");
        let t = Instant::now();
        crate::transfer::import_template(c, file, Some(name.into()), None)
            .await
            .with_context(|| format!("importing {}", file.display()))?;
        rows.push(row(
            format!(
                "import template: {} in {} files",
                size_label(spec.bytes),
                spec.files
            ),
            once(t.elapsed()),
            None,
        ));
    }

    let writer = |template: &str| CreateSandbox {
        template: Some(template.into()),
        profile: Some(Profile::Session),
        limits: LimitsRequest {
            memory_bytes: Some(WRITER_LIMIT),
            disk_bytes: Some(WRITER_LIMIT),
            ..Default::default()
        },
        ..Default::default()
    };
    // The same 10 MiB over the small template: what the snapshot costs
    // besides the bytes changed. One snapshot is kept for create.
    eprintln!(
        "snapshot of a running sandbox of the {small_label} template, 10 MiB changed ({n}x)..."
    );
    let sb = create(c, &writer(SMALL)).await?;
    sh(c, &sb.id, &write_tree(10 * MIB)).await?;
    let small_times = snapshots_of(c, &sb.id, n).await?;
    let small_snap = snapshot(c, &sb.id).await?;
    destroy(c, &sb.id).await?;
    let small_hull = stats(small_times);
    rows.push(row(
        format!("snapshot, 10 MiB changed ({small_label} template)"),
        small_hull,
        None,
    ));

    // The sandbox with 10 MiB changed and a snapshot of it, kept for fork,
    // rollback and create.
    let mut keeper: Option<(String, Snapshot)> = None;
    for (bytes, reps) in [(10 * MIB, n), (100 * MIB, n.min(10)), (GIB, n.min(5))] {
        let label = size_label(bytes);
        eprintln!("snapshot of a running sandbox with {label} changed ({reps}x)...");
        let sb = create(c, &writer(BIG)).await?;
        sh(c, &sb.id, &write_tree(bytes))
            .await
            .with_context(|| format!("writing {label} in the sandbox"))?;
        let times = snapshots_of(c, &sb.id, reps).await?;
        if keeper.is_none() {
            let s = snapshot(c, &sb.id).await?;
            keeper = Some((sb.id.clone(), s));
        } else {
            destroy(c, &sb.id).await?;
        }
        eprintln!("cp -a of the same tree ({reps}x)...");
        let dir = d.dir.clone();
        let peer = tokio::task::spawn_blocking(move || cp_peer(bytes, reps, &dir)).await??;
        let hull = stats(times);
        // The 10 MiB line's ratio: against the same change over the small
        // template.
        let vs = (bytes == 10 * MIB).then_some(small_hull);
        rows.push(row(
            format!("snapshot, {label} changed ({big_label} template)"),
            hull,
            vs,
        ));
        rows.push(row("  cp -a of the same tree", peer, Some(hull)));
    }
    let (kid, ksnap) = keeper.context("no snapshot was kept")?;

    // Every snapshot the API returns carries its size, computed on demand.
    eprintln!("GET of a snapshot of each template ({n}x)...");
    let (mut get_small, mut get_big) = (Vec::new(), Vec::new());
    for _ in 0..n {
        for (id, v) in [(&small_snap.id, &mut get_small), (&ksnap.id, &mut get_big)] {
            let t = Instant::now();
            let _: Snapshot = c
                .call(Method::GET, &format!("/v1/snapshots/{id}"), None::<&()>)
                .await?;
            v.push(t.elapsed());
        }
    }
    let get_small = stats(get_small);
    rows.push(row(
        format!("GET a snapshot (10 MiB changed, {small_label} template)"),
        get_small,
        None,
    ));
    rows.push(row(
        format!("GET a snapshot (10 MiB changed, {big_label} template)"),
        stats(get_big),
        Some(get_small),
    ));

    let reps = n.min(5);
    eprintln!("fork {FORK_N} from one snapshot + exec /bin/true in each ({reps}x)...");
    let (mut total, mut call) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        sync().await;
        let t = Instant::now();
        let r: ForkResult = c
            .call(
                Method::POST,
                &format!("/v1/snapshots/{}/fork", ksnap.id),
                Some(&Fork {
                    n: FORK_N,
                    profile: Some(Profile::Rollout),
                    ..Default::default()
                }),
            )
            .await?;
        call.push(t.elapsed());
        let execs = join_all(
            r.sandboxes
                .iter()
                .map(|s| exec_ok(c, &s.id, vec!["/bin/true".into()])),
        )
        .await;
        total.push(t.elapsed());
        let destroyed = join_all(r.sandboxes.iter().map(|s| destroy(c, &s.id))).await;
        execs.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        destroyed.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    }
    rows.push(row(
        format!("fork {FORK_N} + exec true in each (total)"),
        stats(total),
        None,
    ));
    rows.push(row(
        format!("  the fork call alone ({FORK_N})"),
        stats(call),
        None,
    ));

    eprintln!("rollback ({n}x)...");
    let mut rb = Vec::with_capacity(n);
    for _ in 0..n {
        sh(c, &kid, "echo dirty > /dirty").await?;
        let t = Instant::now();
        let _: Sandbox = c
            .call(
                Method::POST,
                &format!("/v1/sandboxes/{kid}/rollback"),
                Some(&Rollback {
                    snapshot: ksnap.id.clone(),
                }),
            )
            .await?;
        rb.push(t.elapsed());
    }
    sh(
        c,
        &kid,
        &format!(
            "[ ! -e /dirty ] && [ $(cat /work/f* | wc -c) -eq {} ]",
            10 * MIB
        ),
    )
    .await
    .context("the sandbox after rollback does not hold the snapshot's files")?;
    rows.push(row(
        "rollback (returns after PID 1 restarted)",
        stats(rb),
        None,
    ));

    eprintln!("create + exec + destroy from each template and a snapshot of each ({n}x)...");
    let kinds: [(String, CreateSandbox); 4] = [
        (
            format!("create+exec+destroy, {small_label} template"),
            tpl(SMALL),
        ),
        (
            format!("create+exec+destroy, {big_label} template"),
            tpl(BIG),
        ),
        (
            format!("create+exec+destroy, snapshot of {small_label}"),
            from(&small_snap.id),
        ),
        (
            format!("create+exec+destroy, snapshot of {big_label}"),
            from(&ksnap.id),
        ),
    ];
    let mut times: [Vec<Duration>; 4] = Default::default();
    for round in 0..n + 3 {
        for (i, (_, req)) in kinds.iter().enumerate() {
            let t = Instant::now();
            let s = create(c, req).await?;
            exec_ok(c, &s.id, vec!["/bin/true".into()]).await?;
            destroy(c, &s.id).await?;
            // The first three rounds warm up (template mounts, caches).
            if round >= 3 {
                times[i].push(t.elapsed());
            }
        }
    }
    let [a, b, cc, dd] = times.map(stats);
    rows.push(row(kinds[0].0.clone(), a, None));
    rows.push(row(kinds[1].0.clone(), b, Some(a)));
    rows.push(row(kinds[2].0.clone(), cc, None));
    rows.push(row(kinds[3].0.clone(), dd, Some(cc)));
    destroy(c, &kid).await?;
    Ok(rows)
}

fn tpl(name: &str) -> CreateSandbox {
    CreateSandbox {
        template: Some(name.into()),
        profile: Some(Profile::Rollout),
        ..Default::default()
    }
}

fn from(snap: &str) -> CreateSandbox {
    CreateSandbox {
        from: Some(snap.into()),
        profile: Some(Profile::Rollout),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(size_label(GIB), "1 GiB");
        assert_eq!(size_label(10 * MIB), "10 MiB");
        assert_eq!(size_label(3 * GIB / 2), "1.50 GiB");
        assert_eq!(size_label(MIB / 2), "0.50 MiB");
    }

    #[test]
    fn tree_script_checks_the_total() {
        let s = write_tree(10 * MIB);
        assert!(s.contains("head -c 1310720 /dev/urandom"), "{s}");
        assert!(s.contains("-eq 10485760"), "{s}");
        assert!(s.starts_with("set -e;"));
    }

    #[test]
    fn peer_tree_has_the_bytes() {
        let d = tempfile::tempdir().unwrap();
        let s = cp_peer(64 * 1024, 2, d.path()).unwrap();
        assert_eq!(s.n, 2);
        // Source and copies are removed.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
