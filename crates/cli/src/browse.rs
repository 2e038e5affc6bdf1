//! `hull browse ID URL [--screenshot out.png] [--text] [--full-page]`:
//! drive the headless Chromium inside a sandbox. With a URL, opens a tab
//! there (or loads it in `--tab`) and prints the tab's id, or its text with
//! `--text`; `--screenshot` writes a PNG; `--action '{json}'` sends one
//! raw action (`docs/tools.md`); `--status`, `--restart`, `--stop` manage
//! the browser. Every call is one API request; the browser (and its tabs)
//! live on in the sandbox between commands.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use hull_api::{BrowserAction, BrowserActionResult, BrowserStatus};
use hyper::Method;

use crate::client::{Client, enc};

/// `hull browse`'s arguments.
#[derive(clap::Args)]
pub struct BrowseArgs {
    /// The sandbox (id or name).
    pub id: String,
    /// Open this URL in a new tab (in `--tab` when given). The browser runs
    /// in the sandbox: http://127.0.0.1:PORT/ is a server in the sandbox.
    pub url: Option<String>,
    /// Work on this tab (an id printed by an earlier `hull browse`).
    #[arg(long)]
    pub tab: Option<String>,
    /// Write a PNG screenshot of the tab to this file (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub screenshot: Option<PathBuf>,
    /// With --screenshot: the whole page, not just the 1280x720 viewport.
    #[arg(long)]
    pub full_page: bool,
    /// Print the tab's visible text instead of its id.
    #[arg(long)]
    pub text: bool,
    /// Close the tab at the end.
    #[arg(long)]
    pub close: bool,
    /// Send one action as JSON, e.g. '{"action":"tabs"}' or
    /// '{"action":"click","tab":"ID","selector":"#go"}'; prints the result.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["url", "text"])]
    pub action: Option<String>,
    /// Print the browser's status (JSON).
    #[arg(long, conflicts_with_all = ["url", "action", "restart", "stop"])]
    pub status: bool,
    /// Start a fresh browser (after a crash, say).
    #[arg(long, conflicts_with_all = ["url", "action", "stop"])]
    pub restart: bool,
    /// Stop the browser.
    #[arg(long, conflicts_with_all = ["url", "action"])]
    pub stop: bool,
    /// Per-action timeout, e.g. 30s.
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<u64>,
}

fn parse_timeout(s: &str) -> Result<u64, String> {
    hull_api::limits::parse_duration(s)
        .map(|d| (d * 1000.0).ceil() as u64)
        .map_err(|e| e.message)
}

async fn act(client: &Client, id: &str, a: &BrowserAction) -> anyhow::Result<BrowserActionResult> {
    let path = format!(
        "/v1/sandboxes/{}/browser/actions",
        enc(id).replace('/', "%2F")
    );
    Ok(client.call(Method::POST, &path, Some(a)).await?)
}

fn write_png(to: &std::path::Path, b64: &str) -> anyhow::Result<()> {
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("decoding the screenshot")?;
    if to.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().lock().write_all(&png)?;
    } else {
        std::fs::write(to, &png).with_context(|| format!("writing {}", to.display()))?;
    }
    Ok(())
}

/// `hull browse`; returns the exit code.
pub async fn browse(client: &Client, a: BrowseArgs, json_out: bool) -> anyhow::Result<i32> {
    let sid = enc(&a.id).replace('/', "%2F");
    let lifecycle = if a.status {
        Some((Method::GET, format!("/v1/sandboxes/{sid}/browser")))
    } else if a.restart {
        Some((Method::POST, format!("/v1/sandboxes/{sid}/browser/restart")))
    } else if a.stop {
        Some((Method::POST, format!("/v1/sandboxes/{sid}/browser/stop")))
    } else {
        None
    };
    if let Some((m, path)) = lifecycle {
        let st: BrowserStatus = client.call::<BrowserStatus>(m, &path, None::<&()>).await?;
        println!("{}", serde_json::to_string_pretty(&st)?);
        if a.url.is_none() && a.tab.is_none() {
            return Ok(0);
        }
    }
    let to_stdout = a
        .screenshot
        .as_deref()
        .is_some_and(|p| p.as_os_str() == "-");
    if let Some(raw) = &a.action {
        let action: BrowserAction =
            serde_json::from_str(raw).context("--action is not a valid action")?;
        let r = act(client, &a.id, &action).await?;
        if let (Some(to), BrowserActionResult::Screenshot { png, .. }) = (&a.screenshot, &r) {
            write_png(to, png)?;
        }
        if !to_stdout {
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        return Ok(0);
    }
    let timeout_ms = a.timeout;
    let tab = match (&a.url, &a.tab) {
        (Some(url), None) => {
            let r = act(
                client,
                &a.id,
                &BrowserAction::Open {
                    url: Some(url.clone()),
                    timeout_ms,
                },
            )
            .await?;
            if json_out && !to_stdout {
                println!("{}", serde_json::to_string(&r)?);
            }
            match r {
                BrowserActionResult::Open { tab } => tab.id,
                other => anyhow::bail!("unexpected answer to open: {other:?}"),
            }
        }
        (Some(url), Some(tab)) => {
            let r = act(
                client,
                &a.id,
                &BrowserAction::Navigate {
                    tab: tab.clone(),
                    url: url.clone(),
                    timeout_ms,
                },
            )
            .await?;
            if json_out && !to_stdout {
                println!("{}", serde_json::to_string(&r)?);
            }
            tab.clone()
        }
        (None, Some(tab)) => tab.clone(),
        (None, None) => {
            if a.screenshot.is_some() || a.text || a.close {
                anyhow::bail!("give a URL to open, or --tab");
            }
            let r = act(client, &a.id, &BrowserAction::Tabs {}).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            return Ok(0);
        }
    };
    if let Some(to) = &a.screenshot {
        let r = act(
            client,
            &a.id,
            &BrowserAction::Screenshot {
                tab: tab.clone(),
                full_page: a.full_page,
                timeout_ms,
            },
        )
        .await?;
        if let BrowserActionResult::Screenshot {
            png,
            width,
            height,
            truncated,
            ..
        } = &r
        {
            write_png(to, png)?;
            if !to_stdout {
                eprintln!(
                    "hull: wrote {} ({width}x{height}{})",
                    to.display(),
                    if *truncated { ", page cut" } else { "" }
                );
            }
        }
    }
    if a.text {
        let r = act(
            client,
            &a.id,
            &BrowserAction::Text {
                tab: tab.clone(),
                selector: None,
            },
        )
        .await?;
        if let BrowserActionResult::Text {
            text, truncated, ..
        } = &r
        {
            if json_out {
                println!("{}", serde_json::to_string(&r)?);
            } else if !to_stdout {
                println!("{text}");
                if *truncated {
                    eprintln!("hull: the text was cut at 1 Mi characters");
                }
            }
        }
    } else if !json_out && !to_stdout {
        println!("{tab}");
    }
    if a.close {
        act(client, &a.id, &BrowserAction::Close { tab }).await?;
    }
    Ok(0)
}
