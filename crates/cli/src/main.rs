//! `hull`: the daemon (`hull serve`) and the command-line client.
//!
//! Client commands talk to the daemon's HTTP API over its unix socket
//! (`--socket`, `HULL_SOCKET`) or TCP (`HULL_URL` + `HULL_TOKEN`). With no
//! daemon answering on the local socket, they start one in the background.
//! Exit codes: `run`/`exec` exit with the command's code, 124 when
//! `--timeout` killed it, 128+N when signal N ended it; 125 when hull
//! itself failed (bad flags, API errors, daemon unreachable).
#![forbid(unsafe_code)]

mod bench;
mod bench_peers;
mod client;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use client::{Client, ClientError, enc};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hull_api::limits::{parse_duration, parse_size};
use hull_api::*;
use hyper::Method;
use tokio_tungstenite::tungstenite::Message;

const DEFAULT_SOCKET: &str = "/run/hull/hull.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/hull";

#[derive(Parser)]
#[command(
    name = "hull",
    version,
    about = "hull: an agent runtime — fast, isolated sandboxes for AI agents"
)]
struct Cli {
    /// The daemon's unix socket [env: HULL_SOCKET; default /run/hull/hull.sock].
    #[arg(long, global = true, env = "HULL_SOCKET")]
    socket: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Serve {
        /// State directory [default /var/lib/hull].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Also listen on TCP (requires the bearer token from <state-dir>/token).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Config file [default /etc/hull/config.toml when it exists].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create a sandbox, run a command in it, destroy it.
    Run {
        #[command(flatten)]
        sb: SandboxOpts,
        #[command(flatten)]
        ex: ExecOpts,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Create a sandbox and print its id.
    Create {
        #[command(flatten)]
        sb: SandboxOpts,
    },
    /// Run a command in a sandbox.
    Exec {
        #[command(flatten)]
        ex: ExecOpts,
        /// Environment variable for the command (repeatable).
        #[arg(short = 'e', long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Working directory inside the sandbox.
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        /// User to run as (name, uid or uid:gid).
        #[arg(short = 'u', long = "user")]
        user: Option<String>,
        /// Sandbox id or name.
        id: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List sandboxes.
    Ls {
        /// Only sandboxes with this label (key=value, repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
    },
    /// Show a sandbox.
    Inspect { id: String },
    /// Freeze a sandbox's processes.
    Pause { ids: Vec<String> },
    /// Thaw a paused sandbox.
    Resume { ids: Vec<String> },
    /// Stop a sandbox's processes (it can only be destroyed afterwards).
    Stop { ids: Vec<String> },
    /// Destroy sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set a sandbox's remaining lifetime (e.g. 30m; 0 removes the TTL).
    Ttl { id: String, ttl: String },
    /// Copy files: `hull cp ./local ID:/path` or `hull cp ID:/path ./local` (`-` for stdin/stdout).
    Cp { src: String, dst: String },
    /// List processes started in a sandbox.
    Ps { id: String },
    /// What this host supports.
    Info,
    /// Daemon-wide operations.
    System {
        #[command(subcommand)]
        cmd: SystemCmd,
    },
    /// Client and daemon versions.
    Version,
    /// Measure start and exec latency against bwrap and crun.
    Bench(bench::BenchArgs),
    #[command(hide = true)]
    BenchPeer {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(short = 'n')]
        n: usize,
    },
}

#[derive(Subcommand)]
enum SystemCmd {
    /// Destroy every sandbox and remove everything this daemon made on the host.
    Reset {
        /// Don't ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Args, Clone, Default)]
struct SandboxOpts {
    /// Template [default: host].
    #[arg(long)]
    template: Option<String>,
    /// rollout (TTL 30 s) or session (TTL 40 min, extended by activity).
    #[arg(long)]
    profile: Option<String>,
    /// A unique name, usable wherever an id is.
    #[arg(long)]
    name: Option<String>,
    /// Memory limit, e.g. 512M [default 1G].
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5 [default 1].
    #[arg(long)]
    cpus: Option<f64>,
    /// Process limit [default 1024].
    #[arg(long)]
    pids: Option<u32>,
    /// Writable layer size, e.g. 2G [default 1G].
    #[arg(long)]
    disk: Option<String>,
    /// Default user inside (name, uid or uid:gid).
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Destroy the sandbox after this long (e.g. 10m).
    #[arg(long)]
    ttl: Option<String>,
    /// Destroy the sandbox after this long without activity.
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Environment variable (K=V, repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Default working directory inside.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// Label (key=value, repeatable).
    #[arg(short = 'l', long = "label")]
    labels: Vec<String>,
}

#[derive(Args, Clone, Default)]
struct ExecOpts {
    /// Kill the command after this long (exit code 124), e.g. 30s.
    #[arg(long)]
    timeout: Option<String>,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
}

fn kv(list: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for item in list {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("{what} {item:?} must be KEY=VALUE"))?;
        if k.is_empty() {
            bail!("{what} {item:?} has an empty key");
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

fn seconds(s: &str, what: &str) -> anyhow::Result<u64> {
    let secs = parse_duration(s).map_err(|e| anyhow!("{what}: {}", e.message))?;
    Ok(secs.ceil() as u64)
}

impl SandboxOpts {
    fn request(&self) -> anyhow::Result<CreateSandbox> {
        let profile = match &self.profile {
            Some(p) => Some(
                Profile::parse(p)
                    .ok_or_else(|| anyhow!("unknown profile {p:?}: use rollout or session"))?,
            ),
            None => None,
        };
        let limits = LimitsRequest {
            memory_bytes: self
                .memory
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(|e| anyhow!("--memory: {}", e.message))?,
            cpus: self.cpus,
            pids: self.pids,
            disk_bytes: self
                .disk
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(|e| anyhow!("--disk: {}", e.message))?,
        };
        Ok(CreateSandbox {
            template: Some(self.template.clone().unwrap_or_else(|| "host".into())),
            profile,
            name: self.name.clone(),
            labels: kv(&self.labels, "label")?,
            limits,
            ttl_seconds: self
                .ttl
                .as_deref()
                .map(|t| seconds(t, "--ttl"))
                .transpose()?,
            idle_timeout_seconds: self
                .idle_timeout
                .as_deref()
                .map(|t| seconds(t, "--idle-timeout"))
                .transpose()?,
            env: kv(&self.env, "environment variable")?,
            user: self.user.clone(),
            workdir: self.workdir.clone(),
        })
    }
}

/// Exit with the command's status, or 125 for hull's own failures.
enum Outcome {
    Code(i32),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            use clap::error::ErrorKind as K;
            return match e.kind() {
                K::DisplayHelp
                | K::DisplayVersion
                | K::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
                _ => ExitCode::from(125),
            };
        }
    };
    if let Cmd::BenchPeer { bundle, n } = &cli.cmd {
        // Single-threaded on purpose (it may unshare its mount namespace).
        return match bench_peers::crun_loop(bundle, *n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hull: {e:#}");
                ExitCode::from(125)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hull: cannot start: {e}");
            return ExitCode::from(125);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(Outcome::Code(c)) => ExitCode::from(c.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("hull: {}", message(&e));
            ExitCode::from(125)
        }
    }
}

fn message(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api(api)) => api.message.clone(),
        _ => format!("{e:#}"),
    }
}

fn socket_path(cli_socket: &Option<PathBuf>) -> PathBuf {
    cli_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

async fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let json_out = cli.json;
    if let Cmd::Serve {
        state_dir,
        listen,
        config,
    } = cli.cmd
    {
        serve(cli.socket, state_dir, listen, config).await?;
        return Ok(Outcome::Code(0));
    }
    let client = Client::from_env(socket_path(&cli.socket))?;
    if let Cmd::Version = cli.cmd {
        println!("hull {}", env!("CARGO_PKG_VERSION"));
        match client
            .call::<Version>(Method::GET, "/v1/version", None::<&()>)
            .await
        {
            Ok(v) => println!(
                "daemon {} (API {}, guest protocol {}..={})",
                v.version, v.api, v.protocol_min, v.protocol_max
            ),
            Err(_) => println!("daemon: not running at {}", client.describe()),
        }
        return Ok(Outcome::Code(0));
    }
    ensure_daemon(&client, &cli.socket).await?;
    let ok = Outcome::Code(0);
    match cli.cmd {
        Cmd::Serve { .. } | Cmd::Version | Cmd::BenchPeer { .. } => unreachable!("handled above"),
        Cmd::Run { sb, ex, cmd } => run(&client, sb, ex, cmd).await,
        Cmd::Create { sb } => {
            let s: Sandbox = client
                .call(Method::POST, "/v1/sandboxes", Some(&sb.request()?))
                .await?;
            if json_out {
                print_json(&s)
            } else {
                println!("{}", s.id)
            }
            Ok(ok)
        }
        Cmd::Exec {
            ex,
            env,
            workdir,
            user,
            id,
            cmd,
        } => {
            let req = exec_request(&ex, cmd, kv(&env, "environment variable")?, workdir, user)?;
            exec(&client, &id, req, &ex).await
        }
        Cmd::Ls { labels } => {
            let mut path = "/v1/sandboxes".to_string();
            let q: Vec<String> = labels.iter().map(|l| format!("label={}", enc(l))).collect();
            if !q.is_empty() {
                path = format!("{path}?{}", q.join("&"));
            }
            let list: SandboxList = client.call(Method::GET, &path, None::<&()>).await?;
            if json_out {
                print_json(&list);
            } else {
                print_table(&list.sandboxes);
            }
            Ok(ok)
        }
        Cmd::Inspect { id } => {
            let s: Sandbox = client
                .call(Method::GET, &sb_path(&id, ""), None::<&()>)
                .await?;
            print_json(&s);
            Ok(ok)
        }
        Cmd::Pause { ids } => each(&client, ids, "pause", json_out).await,
        Cmd::Resume { ids } => each(&client, ids, "resume", json_out).await,
        Cmd::Stop { ids } => each(&client, ids, "stop", json_out).await,
        Cmd::Rm { ids } => {
            let mut failed = false;
            for id in ids {
                match client
                    .call_empty(Method::DELETE, &sb_path(&id, ""), None::<&()>)
                    .await
                {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        eprintln!("hull: {}", message(&e.into()));
                        failed = true;
                    }
                }
            }
            Ok(Outcome::Code(if failed { 125 } else { 0 }))
        }
        Cmd::Ttl { id, ttl } => {
            let s: Sandbox = client
                .call(
                    Method::PUT,
                    &sb_path(&id, "/ttl"),
                    Some(&SetTtl {
                        ttl_seconds: seconds(&ttl, "TTL")?,
                    }),
                )
                .await?;
            if json_out {
                print_json(&s)
            } else {
                println!("{}", s.id)
            }
            Ok(ok)
        }
        Cmd::Cp { src, dst } => {
            copy(&client, &src, &dst).await?;
            Ok(ok)
        }
        Cmd::Ps { id } => {
            let l: ProcessList = client
                .call(Method::GET, &sb_path(&id, "/processes"), None::<&()>)
                .await?;
            if json_out {
                print_json(&l);
            } else {
                println!("{:<8} {:<8} {:<10} COMMAND", "ID", "PID", "STATE");
                for p in l.processes {
                    let state = match (p.running, p.exit_code, p.signal) {
                        (true, _, _) => "running".to_string(),
                        (false, Some(c), _) => format!("exit {c}"),
                        (false, _, Some(s)) => format!("signal {s}"),
                        _ => "exited".into(),
                    };
                    println!(
                        "{:<8} {:<8} {:<10} {}",
                        p.id,
                        p.pid,
                        state,
                        p.argv.join(" ")
                    );
                }
            }
            Ok(ok)
        }
        Cmd::Info => {
            let i: HostInfo = client.call(Method::GET, "/v1/info", None::<&()>).await?;
            if json_out {
                print_json(&i);
            } else {
                print_info(&i);
            }
            Ok(ok)
        }
        Cmd::System {
            cmd: SystemCmd::Reset { force },
        } => {
            if !force {
                use std::io::IsTerminal;
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "`hull system reset` destroys every sandbox; pass --force to confirm when not on a terminal"
                    );
                }
                eprint!(
                    "Destroy every sandbox and remove everything the daemon at {} made? [y/N] ",
                    client.describe()
                );
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                if !matches!(line.trim(), "y" | "Y" | "yes") {
                    eprintln!("hull: aborted");
                    return Ok(Outcome::Code(1));
                }
            }
            let r: serde_json::Value = client
                .call(Method::POST, "/v1/system/reset", None::<&()>)
                .await?;
            if json_out {
                print_json(&r);
            } else if let Some(items) = r.get("removed").and_then(|v| v.as_array()) {
                for i in items {
                    println!("removed {}", i.as_str().unwrap_or_default());
                }
            }
            Ok(ok)
        }
        Cmd::Bench(args) => {
            bench::run(&client, args).await?;
            Ok(ok)
        }
    }
}

fn sb_path(id: &str, rest: &str) -> String {
    format!("/v1/sandboxes/{}{rest}", enc(id).replace('/', "%2F"))
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn print_table(list: &[Sandbox]) {
    println!(
        "{:<13} {:<16} {:<10} {:<9} {:<6} TTL",
        "ID", "NAME", "TEMPLATE", "STATE", "AGE"
    );
    let t = now();
    for s in list {
        let ttl = s
            .expires_at
            .map(|e| human_secs(e.saturating_sub(t)))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<13} {:<16} {:<10} {:<9} {:<6} {}",
            s.id,
            s.name.as_deref().unwrap_or("-"),
            s.template,
            s.state.as_str(),
            human_secs(t.saturating_sub(s.created_at)),
            ttl
        );
    }
}

fn print_info(i: &HostInfo) {
    println!("version:          {}", i.version);
    println!(
        "instance:         {} (state {})",
        i.instance_id, i.state_dir
    );
    println!("kernel:           {}", i.kernel);
    let ctl: Vec<String> = i
        .cgroup_controllers
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("cgroups:          {} ({})", i.cgroup_mode, ctl.join(" "));
    println!("user namespaces:  {}", i.user_namespaces);
    println!("idmapped mounts:  {}", i.idmapped_mounts);
    println!("overlayfs:        {}", i.overlayfs);
    println!("seccomp:          {}", i.seccomp);
    println!("landlock:         {}", i.landlock);
    println!("btrfs:            {}", i.btrfs);
    println!("kvm:              {} ({})", i.kvm, i.kvm_note);
    println!("qemu tcg:         {}", i.tcg);
    println!("uid range:        {}", i.uid_range);
    println!("sandboxes:        {}", i.sandboxes);
    println!(
        "defaults:         memory {} cpus {} pids {} disk {}",
        hull_api::limits::format_size(i.defaults.memory_bytes),
        i.defaults.cpus,
        i.defaults.pids,
        hull_api::limits::format_size(i.defaults.disk_bytes)
    );
    for t in &i.templates {
        let state = if t.available {
            "available".to_string()
        } else {
            "unavailable".to_string()
        };
        println!("template {:<8} {state}: {}", t.name, t.description);
    }
}

async fn each(
    client: &Client,
    ids: Vec<String>,
    op: &str,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    if ids.is_empty() {
        bail!("{op}: name at least one sandbox");
    }
    let mut failed = false;
    for id in ids {
        match client
            .call::<Sandbox>(Method::POST, &sb_path(&id, &format!("/{op}")), None::<&()>)
            .await
        {
            Ok(s) => {
                if json_out {
                    print_json(&s)
                } else {
                    println!("{}", s.id)
                }
            }
            Err(e) => {
                eprintln!("hull: {}", message(&e.into()));
                failed = true;
            }
        }
    }
    Ok(Outcome::Code(if failed { 125 } else { 0 }))
}

fn exec_request(
    ex: &ExecOpts,
    cmd: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
) -> anyhow::Result<ExecRequest> {
    let timeout_seconds = match &ex.timeout {
        Some(t) => Some(parse_duration(t).map_err(|e| anyhow!("--timeout: {}", e.message))?),
        None => None,
    };
    let (rows, cols) = if ex.tty {
        match rustix::termios::tcgetwinsize(std::io::stdin()) {
            Ok(w) => (Some(w.ws_row.max(1)), Some(w.ws_col.max(1))),
            Err(_) => (Some(24), Some(80)),
        }
    } else {
        (None, None)
    };
    Ok(ExecRequest {
        cmd,
        env,
        cwd,
        user,
        stdin: None,
        timeout_seconds,
        tty: ex.tty,
        rows,
        cols,
        background: false,
    })
}

async fn run(
    client: &Client,
    sb: SandboxOpts,
    ex: ExecOpts,
    cmd: Vec<String>,
) -> anyhow::Result<Outcome> {
    let create = sb.request()?;
    let s: Sandbox = client
        .call(Method::POST, "/v1/sandboxes", Some(&create))
        .await?;
    let req = exec_request(&ex, cmd, BTreeMap::new(), None, None);
    let result = match req {
        Ok(req) => {
            tokio::select! {
                r = exec(client, &s.id, req, &ex) => r,
                _ = tokio::signal::ctrl_c() => Ok(Outcome::Code(130)),
            }
        }
        Err(e) => Err(e),
    };
    // Always destroy, whatever happened above.
    if let Err(e) = client
        .call_empty(Method::DELETE, &sb_path(&s.id, ""), None::<&()>)
        .await
        && !matches!(&e, ClientError::Api(a) if a.kind == ErrorKind::NotFound)
    {
        eprintln!("hull: destroying sandbox {}: {}", s.id, message(&e.into()));
    }
    result
}

fn write_event(stderr: bool, data: &str, data_b64: &str) {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data_b64)
        .unwrap_or_else(|_| data.as_bytes().to_vec());
    if stderr {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&bytes);
        let _ = e.flush();
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&bytes);
        let _ = o.flush();
    }
}

/// Handle one event; `Some(code)` at the end.
fn on_event(ev: ExecEvent) -> anyhow::Result<Option<i32>> {
    match ev {
        ExecEvent::Started { .. } => Ok(None),
        ExecEvent::Stdout { data, data_b64, .. } => {
            write_event(false, &data, &data_b64);
            Ok(None)
        }
        ExecEvent::Stderr { data, data_b64, .. } => {
            write_event(true, &data, &data_b64);
            Ok(None)
        }
        ExecEvent::Exit(r) => {
            if r.oom_killed {
                eprintln!("hull: the command was killed for exceeding the sandbox's memory limit");
            }
            Ok(Some(r.cli_exit_code()))
        }
        ExecEvent::Error { error } => Err(ClientError::Api(error).into()),
    }
}

/// Run a command; a program that cannot be found or run exits 127 or 126
/// (as in shells and Docker), not 125.
async fn exec(
    client: &Client,
    id: &str,
    req: ExecRequest,
    ex: &ExecOpts,
) -> anyhow::Result<Outcome> {
    match exec_inner(client, id, req, ex).await {
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api(a))
                if a.kind == ErrorKind::NotFound && a.message.ends_with("command not found") =>
            {
                eprintln!("hull: {}", a.message);
                Ok(Outcome::Code(127))
            }
            Some(ClientError::Api(a))
                if a.kind == ErrorKind::PermissionDenied
                    && a.message.ends_with("permission denied") =>
            {
                eprintln!("hull: {}", a.message);
                Ok(Outcome::Code(126))
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

async fn exec_inner(
    client: &Client,
    id: &str,
    req: ExecRequest,
    ex: &ExecOpts,
) -> anyhow::Result<Outcome> {
    if ex.interactive || ex.tty {
        return exec_ws(client, id, req, ex).await;
    }
    let body = client::full(serde_json::to_vec(&req)?);
    let resp = client
        .send(
            Method::POST,
            &sb_path(id, "/exec/stream"),
            Some("application/json"),
            body,
        )
        .await?;
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow!("reading output: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: ExecEvent =
                serde_json::from_slice(&line).context("unexpected output from the daemon")?;
            if let Some(code) = on_event(ev)? {
                return Ok(Outcome::Code(code));
            }
        }
    }
    bail!("the daemon ended the output stream before the command's exit")
}

/// Restores the terminal mode on drop.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable() -> RawMode {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(orig) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                orig,
            );
        }
    }
}

async fn exec_ws(
    client: &Client,
    id: &str,
    req: ExecRequest,
    ex: &ExecOpts,
) -> anyhow::Result<Outcome> {
    use std::io::IsTerminal;
    let ws = client.websocket(&sb_path(id, "/exec/ws")).await?;
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::Text(serde_json::to_string(&req)?.into()))
        .await?;
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<ExecClientMessage>(16);
    let _raw = if ex.tty && std::io::stdin().is_terminal() {
        Some(RawMode::enable())
    } else {
        None
    };
    if ex.interactive {
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            use base64::Engine;
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let m = ExecClientMessage::Stdin {
                            data: None,
                            data_b64: Some(
                                base64::engine::general_purpose::STANDARD.encode(&buf[..n]),
                            ),
                        };
                        if in_tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = in_tx.send(ExecClientMessage::Eof).await;
        });
    }
    if ex.tty {
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Ok(w) = rustix::termios::tcgetwinsize(std::io::stdin())
                    && in_tx
                        .send(ExecClientMessage::Resize {
                            rows: w.ws_row,
                            cols: w.ws_col,
                        })
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
    } else {
        // Ctrl-C goes to the command, as with a local one.
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if in_tx
                    .send(ExecClientMessage::Signal { signal: 2 })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    drop(in_tx);
    loop {
        tokio::select! {
            m = in_rx.recv() => {
                if let Some(m) = m {
                    tx.send(Message::Text(serde_json::to_string(&m)?.into())).await?;
                }
            }
            msg = rx.next() => {
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let ev: ExecEvent = serde_json::from_str(t.as_str()).context("unexpected message from the daemon")?;
                        if let Some(code) = on_event(ev)? {
                            return Ok(Outcome::Code(code));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => bail!("connection to the daemon failed: {e}"),
                    None => bail!("the daemon closed the connection before the command's exit"),
                }
            }
        }
    }
}

/// `ID:PATH` -> (id, path) when `s` names a sandbox path.
fn remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    let label = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (label && path.starts_with('/')).then_some((id, path))
}

async fn copy(client: &Client, src: &str, dst: &str) -> anyhow::Result<()> {
    match (remote(src), remote(dst)) {
        (Some(_), Some(_)) => {
            bail!("copy between two sandboxes is not supported: copy to the host first")
        }
        (None, None) => bail!("one of SRC and DST must be a sandbox path written ID:/PATH"),
        (Some((id, path)), None) => download(client, id, path, dst).await,
        (None, Some((id, path))) => upload(client, src, id, path).await,
    }
}

async fn download(client: &Client, id: &str, path: &str, dst: &str) -> anyhow::Result<()> {
    let st: FileInfo = client
        .call(
            Method::GET,
            &format!("{}?path={}", sb_path(id, "/files/stat"), enc(path)),
            None::<&()>,
        )
        .await?;
    if st.kind == "dir" {
        if dst == "-" {
            bail!("{path} is a directory; it cannot be written to stdout");
        }
        let resp = client
            .send(
                Method::GET,
                &format!("{}?path={}", sb_path(id, "/files/archive"), enc(path)),
                None,
                client::empty(),
            )
            .await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("downloading: {e}"))?
            .to_bytes();
        let target = PathBuf::from(dst);
        std::fs::create_dir_all(&target).with_context(|| format!("creating {dst}"))?;
        // tar's unpack_in refuses entries that would land outside `target`.
        let mut ar = tar::Archive::new(std::io::Cursor::new(bytes));
        ar.set_preserve_permissions(true);
        for entry in ar.entries()? {
            let mut entry = entry?;
            if !entry.unpack_in(&target)? {
                eprintln!(
                    "hull: skipped an archive entry outside {dst}: {}",
                    entry.path()?.display()
                );
            }
        }
        return Ok(());
    }
    let resp = client
        .send(
            Method::GET,
            &format!("{}?path={}", sb_path(id, "/files"), enc(path)),
            None,
            client::empty(),
        )
        .await?;
    let mut body = resp.into_body();
    let mut out: Box<dyn Write> = if dst == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let mut target = PathBuf::from(dst);
        if target.is_dir() {
            target = target.join(
                Path::new(path)
                    .file_name()
                    .ok_or_else(|| anyhow!("{path} has no file name"))?,
            );
        }
        Box::new(
            std::fs::File::create(&target)
                .with_context(|| format!("creating {}", target.display()))?,
        )
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow!("downloading: {e}"))?;
        if let Some(d) = frame.data_ref() {
            out.write_all(d)?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn upload(client: &Client, src: &str, id: &str, path: &str) -> anyhow::Result<()> {
    let local = Path::new(src);
    if src != "-" && local.is_dir() {
        // Pack into a temporary file, then stream it.
        let tmp = tempfile::tempfile()?;
        let mut b = tar::Builder::new(tmp);
        b.follow_symlinks(false);
        b.append_dir_all(".", local)
            .with_context(|| format!("packing {src}"))?;
        let mut tmp = b.into_inner()?;
        use std::io::Seek;
        tmp.seek(std::io::SeekFrom::Start(0))?;
        let len = tmp.metadata()?.len();
        let body = client::reader_body(tokio::fs::File::from_std(tmp));
        let _ = len;
        let resp = client
            .send(
                Method::PUT,
                &format!("{}?path={}", sb_path(id, "/files/archive"), enc(path)),
                Some("application/x-tar"),
                body,
            )
            .await?;
        let _ = resp.into_body().collect().await;
        return Ok(());
    }
    // A file: into PATH, or PATH/<name> when PATH is an existing directory.
    let mut target = path.to_string();
    let name = if src == "-" {
        None
    } else {
        local.file_name().map(|n| n.to_string_lossy().into_owned())
    };
    let is_dir = path.ends_with('/')
        || matches!(
            client.call::<FileInfo>(Method::GET, &format!("{}?path={}", sb_path(id, "/files/stat"), enc(path)), None::<&()>).await,
            Ok(st) if st.kind == "dir"
        );
    if is_dir {
        let n = name.ok_or_else(|| anyhow!("{path} is a directory: name the file to write"))?;
        target = format!("{}/{n}", path.trim_end_matches('/'));
    }
    let mode = if src == "-" {
        None
    } else {
        use std::os::unix::fs::PermissionsExt;
        Some(
            std::fs::metadata(local)
                .with_context(|| format!("reading {src}"))?
                .permissions()
                .mode()
                & 0o7777,
        )
    };
    let body = if src == "-" {
        client::reader_body(tokio::io::stdin())
    } else {
        client::reader_body(
            tokio::fs::File::open(local)
                .await
                .with_context(|| format!("opening {src}"))?,
        )
    };
    let mut p = format!("{}?path={}", sb_path(id, "/files"), enc(&target));
    if let Some(m) = mode {
        p.push_str(&format!("&mode={m:o}"));
    }
    let resp = client
        .send(Method::PUT, &p, Some("application/octet-stream"), body)
        .await?;
    let _ = resp.into_body().collect().await;
    Ok(())
}

async fn serve(
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let file = hull_server::config::FileConfig::load(config.as_deref())?;
    let guest_binary = match std::env::var_os("HULL_GUEST_BINARY") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("hull-guest"))
            .ok_or_else(|| anyhow!("cannot locate hull-guest"))?,
    };
    let defaults = file
        .limits(&Limits::default())
        .map_err(|e| anyhow!("config: {e}"))?;
    let cfg = hull_server::ServerConfig {
        state_dir: state_dir
            .or_else(|| std::env::var_os("HULL_STATE_DIR").map(PathBuf::from))
            .or(file.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        socket: socket
            .or(file.socket.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        listen: listen.or(file.listen),
        guest_binary,
        defaults,
        max_upload_bytes: file
            .max_upload_bytes(hull_server::DEFAULT_MAX_UPLOAD)
            .map_err(|e| anyhow!("config: {e}"))?,
    };
    hull_server::run(cfg).await
}

/// Start a daemon in the background when none answers on the local socket.
async fn ensure_daemon(client: &Client, socket: &Option<PathBuf>) -> anyhow::Result<()> {
    let client::Endpoint::Unix(sock) = &client.endpoint else {
        return Ok(());
    };
    if client.connect().await.is_ok() {
        return Ok(());
    }
    let state_dir = std::env::var_os("HULL_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let log_path = state_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    eprintln!(
        "hull: starting the daemon on {} (log: {})",
        sock.display(),
        log_path.display()
    );
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("serve")
        .arg("--socket")
        .arg(sock)
        .arg("--state-dir")
        .arg(&state_dir);
    let _ = socket;
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut child = cmd.spawn().context("starting `hull serve`")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if client
            .call::<Health>(Method::GET, "/v1/health", None::<&()>)
            .await
            .is_ok()
        {
            // Reap the daemon if it ever exits while we run; it outlives us otherwise.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            // Another client may have started one at the same time.
            if client.connect().await.is_ok() {
                return Ok(());
            }
            bail!("the daemon exited ({st}); see {}", log_path.display());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the daemon did not start within 20 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
