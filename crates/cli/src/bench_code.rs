//! `hull bench`'s code-interpreter lines: a warm `1+1` round trip in a
//! context of a `host` sandbox through the API (buffered and streamed), and
//! its peer in the same run: an `ipykernel` on the host driven directly by
//! `jupyter_client` (Debian's `python3-jupyter-client`, which
//! `python3-ipykernel` pulls in), with no sandbox, daemon or guest agent.
//! Needs python3 and ipykernel on the host (the `host` template shows the
//! host's); a line says so when they are missing. Numbers only, never
//! asserted.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use http_body_util::BodyExt;
use hull_api::{CodeContextRequest, CodeRunRequest, CodeRunResult, CreateSandbox, Profile};
use hyper::Method;

use crate::bench::{create_with, destroy};
use crate::client::Client;

/// Runs before measuring (kernel and caches warm up).
const WARMUP: usize = 20;

/// The peer: the same `1+1` against a kernel on the host, one
/// `execute_request` at a time, waiting for `idle` and the reply as hull's
/// guest does. Prints one duration in ms per measured run.
const JUPYTER_PEER: &str = r#"
import sys, time
from jupyter_client.manager import start_new_kernel
n, warm = int(sys.argv[1]), int(sys.argv[2])
km, kc = start_new_kernel(kernel_name="python3")
try:
    out = []
    for i in range(n + warm):
        t = time.perf_counter()
        mid = kc.execute("1+1")
        while True:
            m = kc.get_iopub_msg(timeout=30)
            if m["parent_header"].get("msg_id") != mid:
                continue
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
        while kc.get_shell_msg(timeout=30)["parent_header"].get("msg_id") != mid:
            pass
        if i >= warm:
            out.append((time.perf_counter() - t) * 1000)
    print(" ".join("%.4f" % x for x in out))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"#;

/// The measured round trips: buffered and streamed, through the API.
pub(crate) struct CodeTimes {
    pub(crate) buffered: Vec<Duration>,
    pub(crate) streamed: Vec<Duration>,
}

/// `n` warm runs of `1+1` in one context of a fresh `host` sandbox, each
/// way (`.../run` and `.../run/stream`, read to its end).
pub(crate) async fn round_trips(client: &Client, n: usize) -> anyhow::Result<CodeTimes> {
    let req = CreateSandbox {
        template: Some("host".into()),
        profile: Some(Profile::Session),
        ..Default::default()
    };
    let s = create_with(client, &req).await?;
    let result = async {
        let base = format!("/v1/sandboxes/{}/code/contexts", s.id);
        let ctx = CodeContextRequest {
            context: "bench".into(),
            language: None,
        };
        let _: hull_api::CodeContext = client
            .call(Method::POST, &base, Some(&ctx))
            .await
            .context("starting a context (python3-ipykernel on the host?)")?;
        let run = CodeRunRequest {
            code: "1+1".into(),
            ..Default::default()
        };
        let path = format!("{base}/bench/run");
        let mut buffered = Vec::with_capacity(n);
        for i in 0..n + WARMUP {
            let start = Instant::now();
            let r: CodeRunResult = client.call(Method::POST, &path, Some(&run)).await?;
            let elapsed = start.elapsed();
            anyhow::ensure!(
                r.results.first().and_then(|b| b.get("text/plain")) == Some(&"2".into()),
                "1+1 gave {r:?}"
            );
            if i >= WARMUP {
                buffered.push(elapsed);
            }
        }
        let path = format!("{path}/stream");
        let body = serde_json::to_vec(&run)?;
        let mut streamed = Vec::with_capacity(n);
        for i in 0..n + WARMUP {
            let start = Instant::now();
            let resp = client
                .send(
                    Method::POST,
                    &path,
                    Some("application/json"),
                    crate::client::full(body.clone()),
                )
                .await?;
            let all = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| anyhow!("reading the stream: {e}"))?
                .to_bytes();
            let elapsed = start.elapsed();
            let text = String::from_utf8_lossy(&all);
            anyhow::ensure!(
                text.contains(r#""text/plain":"2""#) && text.contains(r#""type":"end""#),
                "1+1 streamed {text}"
            );
            if i >= WARMUP {
                streamed.push(elapsed);
            }
        }
        Ok(CodeTimes { buffered, streamed })
    }
    .await;
    destroy(client, &s.id).await?;
    result
}

/// The peer's round trips, or `None` when python3 or `jupyter_client`
/// is missing on the host.
pub(crate) fn jupyter_peer(n: usize) -> anyhow::Result<Option<Vec<Duration>>> {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(python) = python else {
        return Ok(None);
    };
    let out = std::process::Command::new(python)
        .args(["-c", JUPYTER_PEER, &n.to_string(), &WARMUP.to_string()])
        .env("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .context("running python3 with jupyter_client")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named") {
            return Ok(None);
        }
        anyhow::bail!(
            "the jupyter_client peer failed: {}",
            err.lines().last().unwrap_or("")
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<Duration> = text
        .split_whitespace()
        .filter_map(|s| s.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    anyhow::ensure!(v.len() == n, "the peer printed {} of {n} times", v.len());
    Ok(Some(v))
}
