//! `hull shell ID`: a persistent shell session in a sandbox. With `-c CMD`
//! one command runs in the session (created on first use) and hull exits
//! with its code; without, lines read from stdin run one by one in the
//! same session (cwd, variables and functions persist), like a terminal
//! that waits for each command to end.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use hull_api::{ShellOpenRequest, ShellOpened, ShellRunRequest, ShellRunResult, ShellSessions};
use hyper::Method;

use crate::client::{Client, ClientError, enc};

/// `hull shell`'s arguments.
#[derive(clap::Args)]
pub struct ShellArgs {
    /// The sandbox (id or name).
    pub id: String,
    /// The session's name (created on first use).
    #[arg(long, short = 's', default_value = "default")]
    pub session: String,
    /// Run this one command.
    #[arg(short = 'c', long = "command")]
    pub command: Option<String>,
    /// Interrupt a command after this long, e.g. 30s (the session goes on;
    /// exit code 124).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// List the sandbox's sessions.
    #[arg(long, conflicts_with_all = ["command", "close"])]
    pub list: bool,
    /// End the session.
    #[arg(long, conflicts_with = "command")]
    pub close: bool,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    hull_api::limits::parse_duration(s)
        .map(Duration::from_secs_f64)
        .map_err(|e| e.message)
}

fn base(id: &str) -> String {
    format!("/v1/sandboxes/{}/shells", enc(id).replace('/', "%2F"))
}

async fn ensure(client: &Client, id: &str, session: &str) -> anyhow::Result<()> {
    let req = ShellOpenRequest {
        session: session.into(),
        ..Default::default()
    };
    match client
        .call::<ShellOpened>(Method::POST, &base(id), Some(&req))
        .await
    {
        Ok(_) => Ok(()),
        // It exists already: use it.
        Err(ClientError::Api(e)) if e.kind == hull_api::ErrorKind::Conflict => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn run_one(client: &Client, a: &ShellArgs, command: &str) -> anyhow::Result<ShellRunResult> {
    let req = ShellRunRequest {
        command: command.into(),
        timeout_ms: a.timeout.map(|d| d.as_millis() as u64),
        ..Default::default()
    };
    let path = format!("{}/{}/run", base(&a.id), enc(&a.session));
    Ok(client.call(Method::POST, &path, Some(&req)).await?)
}

fn report(r: &ShellRunResult) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(r.output.as_bytes());
    let _ = out.flush();
    if r.timed_out || r.idle_timed_out {
        eprintln!("hull: the command was interrupted by its timeout (the session goes on)");
    }
    if r.shell_replaced {
        eprintln!("hull: the shell was replaced by a new bash, which the session now uses");
    }
    if r.session_ended {
        eprintln!("hull: the shell exited; the session is gone");
    }
}

/// The exit code for a result: the command's, 124 after a timeout.
pub fn code(r: &ShellRunResult) -> i32 {
    if r.timed_out || r.idle_timed_out {
        124
    } else {
        r.exit_code.unwrap_or(125)
    }
}

/// `hull shell`; returns the exit code.
pub async fn shell(client: &Client, a: ShellArgs, json_out: bool) -> anyhow::Result<i32> {
    if a.list {
        let list: ShellSessions = client.call(Method::GET, &base(&a.id), None::<&()>).await?;
        if json_out {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            println!("{:<20} {:>8} {:<5} CWD", "SESSION", "PID", "BUSY");
            for s in list.sessions {
                println!(
                    "{:<20} {:>8} {:<5} {}",
                    s.session,
                    s.pid,
                    if s.busy { "yes" } else { "no" },
                    s.cwd
                );
            }
        }
        return Ok(0);
    }
    if a.close {
        let path = format!("{}/{}", base(&a.id), enc(&a.session));
        client
            .call_empty(Method::DELETE, &path, None::<&()>)
            .await?;
        println!("{}", a.session);
        return Ok(0);
    }
    ensure(client, &a.id, &a.session).await?;
    if let Some(cmd) = &a.command {
        let r = run_one(client, &a, cmd).await?;
        if json_out {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            report(&r);
        }
        return Ok(code(&r));
    }
    // A line at a time from stdin.
    let interactive = std::io::stdin().is_terminal();
    let mut cwd = String::new();
    let mut last = 0;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!(
                "{}:{}$ ",
                a.session,
                if cwd.is_empty() { "~" } else { &cwd }
            );
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let r = run_one(client, &a, &line).await?;
        report(&r);
        cwd = r.cwd.clone();
        last = code(&r);
        if r.session_ended {
            break;
        }
    }
    if interactive {
        eprintln!();
    }
    Ok(last)
}
