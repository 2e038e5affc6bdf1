//! `hull code ID -- 'expr'`: run Python code in a sandbox's interpreter
//! context (created on first use; variables persist across calls). Prints
//! stdout, stderr and the `text/plain` of results as the code produces them
//! (`/code/run/stream`); with `--json` the whole result at the end. Exits 1
//! when the code raised, 124 after a timeout. Interrupting `hull code`
//! (Ctrl-C) closes the stream, which interrupts the code; the context
//! keeps its state.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail};
use http_body_util::BodyExt;
use hull_api::{CodeEvent, CodeRunRequest, CodeRunResult};
use hyper::Method;

use crate::client::{Client, enc};

/// `hull code`'s arguments.
#[derive(clap::Args)]
pub struct CodeArgs {
    /// The sandbox (id or name).
    pub id: String,
    /// The context's name (created on first use).
    #[arg(long, default_value = "default")]
    pub context: String,
    /// Interrupt the code after this long, e.g. 30s (the context keeps its
    /// state; exit code 124).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// The code (several arguments are joined with spaces).
    #[arg(last = true, required = true)]
    pub code: Vec<String>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    hull_api::limits::parse_duration(s)
        .map(Duration::from_secs_f64)
        .map_err(|e| e.message)
}

/// `hull code`; returns the exit code.
pub async fn code(client: &Client, a: CodeArgs, json_out: bool) -> anyhow::Result<i32> {
    let req = CodeRunRequest {
        code: a.code.join(" "),
        timeout_ms: a.timeout.map(|d| d.as_millis() as u64),
        context: Some(a.context.clone()),
    };
    let path = format!("/v1/sandboxes/{}/code/run", enc(&a.id).replace('/', "%2F"));
    if !json_out {
        return stream(client, &format!("{path}/stream"), &req).await;
    }
    let r: CodeRunResult = client.call(Method::POST, &path, Some(&req)).await?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(if r.timed_out {
        124
    } else if r.error.is_some() {
        1
    } else {
        0
    })
}

/// Print a bundle's `text/plain`, or the MIME types it holds.
fn print_bundle(out: &mut impl Write, b: &serde_json::Map<String, serde_json::Value>) {
    match b.get("text/plain").and_then(|v| v.as_str()) {
        Some(t) => {
            let _ = writeln!(out, "{t}");
        }
        None => {
            let kinds: Vec<&str> = b.keys().map(String::as_str).collect();
            let _ = writeln!(out, "<{}>", kinds.join(", "));
        }
    }
}

/// Run through the streaming route, printing each output as it comes.
async fn stream(client: &Client, path: &str, req: &CodeRunRequest) -> anyhow::Result<i32> {
    let body = crate::client::full(serde_json::to_vec(req)?);
    let resp = client
        .send(Method::POST, path, Some("application/json"), body)
        .await?;
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut raised = false;
    loop {
        let Some(frame) = body.frame().await else {
            bail!("the daemon closed the stream before the run's end");
        };
        let frame = frame.map_err(|e| anyhow!("reading the run's output: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let ev: CodeEvent = serde_json::from_slice(&line)
                .map_err(|e| anyhow!("unexpected line from the daemon: {e}"))?;
            match ev {
                CodeEvent::Stdout { text } => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                }
                CodeEvent::Stderr { text } => {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(text.as_bytes());
                    let _ = err.flush();
                }
                CodeEvent::Result { data, .. } | CodeEvent::Display { data } => {
                    let mut out = std::io::stdout().lock();
                    print_bundle(&mut out, &data);
                    let _ = out.flush();
                }
                CodeEvent::Exception(e) => {
                    raised = true;
                    for line in &e.traceback {
                        eprintln!("{line}");
                    }
                    if e.traceback.is_empty() {
                        eprintln!("{}: {}", e.name, e.value);
                    }
                }
                CodeEvent::End {
                    timed_out,
                    truncated,
                    ..
                } => {
                    if truncated {
                        eprintln!("hull: output past the limit was dropped");
                    }
                    if timed_out {
                        eprintln!(
                            "hull: the code was interrupted by its timeout (the context keeps its state)"
                        );
                        return Ok(124);
                    }
                    return Ok(i32::from(raised));
                }
                CodeEvent::Error { error } => {
                    return Err(crate::client::ClientError::Api(error).into());
                }
            }
        }
    }
}
