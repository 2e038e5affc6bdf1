//! `hull bench`'s browser line: a viewport screenshot (1280x720 PNG) of a
//! local page through the API's `screenshot` action, against the same
//! capture sent as raw CDP (`Page.captureScreenshot`) over the daemon's CDP
//! WebSocket to the same browser: the difference is hull's action layer
//! (tab lookup, chromiumoxide, base64 in JSON). Needs Chromium in the
//! `host` template (Debian's `chromium` on the host).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hull_api::{BrowserAction, BrowserActionResult, CreateSandbox, LimitsRequest, Profile};
use hyper::Method;
use tokio_tungstenite::tungstenite::Message;

use crate::bench::{create_with, destroy, exec_ok};
use crate::client::Client;

/// The page: some text, a form and colour, in the sandbox's files.
const PAGE: &str = "<!doctype html><title>bench</title><body style='font-family:sans-serif'>\
<h1>hull bench</h1><p>A local page for the screenshot benchmark.</p>\
<form><input value='text'><select><option>one</option></select><button>Go</button></form>\
<div style='width:300px;height:200px;background:linear-gradient(#36c,#c63)'></div></body>";

/// Screenshot round trips through the action API and through raw CDP.
pub(crate) struct Shots {
    pub(crate) action: Vec<Duration>,
    pub(crate) raw_cdp: anyhow::Result<Vec<Duration>>,
}

async fn act(client: &Client, id: &str, a: &BrowserAction) -> anyhow::Result<BrowserActionResult> {
    Ok(client
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/browser/actions"),
            Some(a),
        )
        .await?)
}

/// Measure `n` screenshots each way in a fresh `host` sandbox.
pub(crate) async fn screenshots(client: &Client, n: usize) -> anyhow::Result<Shots> {
    let sb = create_with(
        client,
        &CreateSandbox {
            template: Some("host".into()),
            profile: Some(Profile::Session),
            limits: LimitsRequest {
                memory_bytes: Some(2 << 30),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let r = measure(client, &sb.id, n).await;
    destroy(client, &sb.id).await?;
    r
}

async fn measure(client: &Client, id: &str, n: usize) -> anyhow::Result<Shots> {
    exec_ok(
        client,
        id,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("mkdir -p /srv && cat > /srv/index.html <<'EOF'\n{PAGE}\nEOF"),
        ],
    )
    .await?;
    let tab = match act(
        client,
        id,
        &BrowserAction::Open {
            url: Some("file:///srv/index.html".into()),
            timeout_ms: None,
        },
    )
    .await
    .context("opening the page (is chromium installed?)")?
    {
        BrowserActionResult::Open { tab } => tab.id,
        other => anyhow::bail!("unexpected answer to open: {other:?}"),
    };
    let shot = BrowserAction::Screenshot {
        tab: tab.clone(),
        full_page: false,
        timeout_ms: None,
    };
    for _ in 0..5 {
        act(client, id, &shot).await?;
    }
    let mut action = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        match act(client, id, &shot).await? {
            BrowserActionResult::Screenshot { png, .. } => anyhow::ensure!(!png.is_empty()),
            other => anyhow::bail!("unexpected answer to screenshot: {other:?}"),
        }
        action.push(t.elapsed());
    }
    let raw_cdp = raw(client, id, &tab, n).await;
    Ok(Shots { action, raw_cdp })
}

/// The same capture as raw CDP over `/browser/cdp`, in a flat session on
/// the tab.
async fn raw(client: &Client, id: &str, tab: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut ws = client
        .websocket(&format!("/v1/sandboxes/{id}/browser/cdp"))
        .await?;
    let mut next_id = 0u64;
    let mut call = async |ws: &mut tokio_tungstenite::WebSocketStream<crate::client::Stream>,
                          msg: serde_json::Value|
           -> anyhow::Result<serde_json::Value> {
        next_id += 1;
        let mut msg = msg;
        msg["id"] = next_id.into();
        ws.send(Message::Text(msg.to_string().into())).await?;
        loop {
            let m = ws
                .next()
                .await
                .context("the CDP socket closed")?
                .context("reading CDP")?;
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                if v["id"] == next_id {
                    anyhow::ensure!(v.get("error").is_none(), "CDP error: {}", v["error"]);
                    return Ok(v["result"].clone());
                }
            }
        }
    };
    let r = call(
        &mut ws,
        serde_json::json!({"method": "Target.attachToTarget", "params": {"targetId": tab, "flatten": true}}),
    )
    .await?;
    let session = r["sessionId"]
        .as_str()
        .context("no sessionId from Target.attachToTarget")?
        .to_string();
    let capture = serde_json::json!({"sessionId": session, "method": "Page.captureScreenshot", "params": {"format": "png"}});
    for _ in 0..5 {
        call(&mut ws, capture.clone()).await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = call(&mut ws, capture.clone()).await?;
        anyhow::ensure!(r["data"].as_str().is_some_and(|d| !d.is_empty()));
        out.push(t.elapsed());
    }
    let _ = ws.close(None).await;
    Ok(out)
}
