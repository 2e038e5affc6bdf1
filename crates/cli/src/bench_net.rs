//! `hull bench --net`: create latency with networking (`open`, a pooled
//! namespace and veth pair) against `none` (a bare namespace with `lo`),
//! interleaved in the same run on the same daemon. Each iteration times
//! `POST /v1/sandboxes` only; the sandbox is destroyed outside the timing,
//! and the command waits a little between iterations so the pool (refilled
//! in the background) is measured warm, as a steady stream of creates sees
//! it. Numbers are printed, never asserted (docs/benchmarks.md).

use std::time::{Duration, Instant};

use hull_api::{CreateSandbox, NetworkPolicy, Profile};

use crate::bench::{create_with, destroy, exec_ok, line, stats};
use crate::client::Client;

pub async fn run(client: &Client, template: &str, n: usize) -> anyhow::Result<()> {
    let info: hull_api::HostInfo = client
        .call(hyper::Method::GET, "/v1/info", None::<&()>)
        .await?;
    println!("hull bench --net: {n} iterations each, template {template}");
    println!("network: {}", info.network);
    anyhow::ensure!(
        info.network.starts_with("available"),
        "the daemon has no sandbox networking"
    );
    let req = |p: NetworkPolicy| CreateSandbox {
        template: Some(template.into()),
        profile: Some(Profile::Rollout),
        network: Some(p),
        ..Default::default()
    };
    let (none, open) = (req(NetworkPolicy::none()), req(NetworkPolicy::open()));
    // Warm up (template mounts, the pool's first fill).
    for r in [&none, &open, &open, &none] {
        let s = create_with(client, r).await?;
        exec_ok(client, &s.id, vec!["/bin/true".into()]).await?;
        destroy(client, &s.id).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut t_none = Vec::with_capacity(n);
    let mut t_open = Vec::with_capacity(n);
    for i in 0..n {
        for (r, out) in [(&none, &mut t_none), (&open, &mut t_open)] {
            let t = Instant::now();
            let s = create_with(client, r).await?;
            out.push(t.elapsed());
            destroy(client, &s.id).await?;
        }
        if i % 50 == 0 {
            eprint!(".");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!();
    let sn = stats(t_none);
    let so = stats(t_open);
    line("create, network none", &sn, None);
    line("create, network open (pooled)", &so, Some(&sn));
    println!("networking adds {:+.3} ms at p50", so.p50 - sn.p50);
    Ok(())
}
