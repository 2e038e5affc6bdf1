//! `hull code ID -- 'expr'`: run Python code in a sandbox's interpreter
//! context (created on first use; variables persist across calls). Prints
//! stdout, stderr and the `text/plain` of results; with `--json` the whole
//! result. Exits 1 when the code raised, 124 after a timeout.

use std::io::Write;
use std::time::Duration;

use hull_api::{CodeRunRequest, CodeRunResult};
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
    let r: CodeRunResult = client.call(Method::POST, &path, Some(&req)).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(r.stdout.as_bytes());
        for b in &r.results {
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
        let _ = out.flush();
        eprint!("{}", r.stderr);
        if let Some(e) = &r.error {
            for line in &e.traceback {
                eprintln!("{line}");
            }
            if e.traceback.is_empty() {
                eprintln!("{}: {}", e.name, e.value);
            }
        }
        if r.timed_out {
            eprintln!(
                "hull: the code was interrupted by its timeout (the context keeps its state)"
            );
        }
    }
    Ok(if r.timed_out {
        124
    } else if r.error.is_some() {
        1
    } else {
        0
    })
}
