//! `hull`: the daemon (`hull serve`) and the command-line client.
//!
//! Client commands talk to the daemon's HTTP API over its unix socket
//! (`--socket`, `HULL_SOCKET`) or TCP (`HULL_URL` + `HULL_TOKEN`). With no
//! daemon answering on the local socket, they start one in the background.
//! Exit codes: `run`/`exec` exit with the command's code, 124 when
//! `--timeout` killed it, 128+N when signal N ended it; 125 when hull
//! itself failed (bad flags, API errors, daemon unreachable); 127/126 when
//! the program does not exist / cannot be executed. `hull run` destroys its
//! sandbox whatever happens, also on Ctrl-C, SIGTERM or SIGHUP. Limits: a
//! hull killed with SIGKILL leaves its `run` sandbox to the sandbox's TTL.
#![forbid(unsafe_code)]

mod bench;
mod bench_browser;
mod bench_code;
mod bench_daemon;
mod bench_image;
mod bench_net;
mod bench_peers;
mod bench_snapshots;
mod browse;
mod client;
mod code;
mod cp;
mod daemon;
mod expose;
mod mcp;
mod mcp_servers;
mod net;
mod shell;
mod transfer;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use client::{Client, ClientError, enc};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hull_api::limits::{parse_duration, parse_size};
use hull_api::*;
use hyper::Method;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "hull",
    version,
    about = "hull: an agent runtime — fast, isolated sandboxes for AI agents",
    after_help = "Environment: HULL_SOCKET (the daemon's socket), HULL_URL + HULL_TOKEN (a daemon \
over TCP), HULL_STATE_DIR (state directory of an auto-started or `serve`d daemon), \
HULL_GUEST_BINARY (the guest agent `hull serve` uses; default: hull-guest next to hull), \
HULL_LOG (daemon log filter).\n\
Exit codes of run/exec: the command's; 124 timeout; 128+N signal N; 127/126 program \
missing/not executable; 125 hull itself failed."
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
        /// Snapshot store backend: auto, overlay or btrfs [default auto:
        /// btrfs where the state directory is on btrfs or a loop-backed
        /// image can be made, else overlay].
        #[arg(long, env = "HULL_SNAPSHOT_BACKEND")]
        snapshot_backend: Option<String>,
        #[command(flatten)]
        net: net::ServeNetFlags,
    },
    /// Create a sandbox, run a command in it, destroy it.
    Run {
        #[command(flatten)]
        sb: SandboxOpts,
        #[command(flatten)]
        ex: ExecOpts,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
    /// Create a sandbox and print its id.
    Create {
        #[command(flatten)]
        sb: SandboxOpts,
    },
    /// A persistent bash session in a sandbox (cwd, variables, functions
    /// and jobs persist): `-c CMD` runs one command in it and exits with
    /// its code; without, each line of stdin runs in turn.
    Shell(shell::ShellArgs),
    /// Run Python code in a sandbox's interpreter context (`default`,
    /// created on first use; variables persist): `hull code ID -- 'x + 1'`.
    /// Exits 1 when the code raised.
    Code(code::CodeArgs),
    /// Drive the headless Chromium inside a sandbox: `hull browse ID URL
    /// --screenshot out.png` opens a tab and writes a PNG; `--text` prints
    /// the page's text; `--action JSON` sends any action.
    Browse(browse::BrowseArgs),
    /// Expose a TCP port of a sandbox through the daemon and forward a
    /// local address to it until Ctrl-C: `hull expose ID 8080` (then
    /// `curl http://127.0.0.1:8080/`); `--list`; `PORT --rm`.
    Expose(expose::ExposeArgs),
    /// A sandbox's network policy: `hull net show ID`, `hull net set ID
    /// allow:example.com,10.0.0.0/8` (grammar in docs/network.md).
    Net {
        #[command(subcommand)]
        cmd: net::NetCmd,
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
        #[arg(trailing_var_arg = true, required = true)]
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
    /// Snapshot a sandbox (`hull snapshot ID [--name N]` prints the new id),
    /// or manage snapshots (`ls`, `inspect`, `rm`, `export`, `import`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Snapshot {
        #[command(subcommand)]
        cmd: Option<SnapshotCmd>,
        /// The sandbox to snapshot (id or name).
        #[arg(required = true)]
        id: Option<String>,
        /// A unique name for the snapshot, usable wherever its id is.
        #[arg(long)]
        name: Option<String>,
        /// key=value (repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
    },
    /// Replace a sandbox's files with a snapshot's; its processes restart.
    Rollback { id: String, snapshot: String },
    /// Start N sandboxes from a snapshot; prints their ids, one per line.
    Fork {
        snapshot: String,
        #[arg(short = 'n', default_value_t = 1)]
        n: u32,
        /// rollout (TTL 30 s) or session.
        #[arg(long)]
        profile: Option<String>,
        /// key=value for every new sandbox (repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        /// Lifetime of each, e.g. 10m.
        #[arg(long)]
        ttl: Option<String>,
        /// Network policy of each (as for create).
        #[arg(long, value_name = "POLICY")]
        net: Option<String>,
    },
    /// Templates: `ls`, `import IMAGE.tar`, `build NAME --debian SUITE`,
    /// `save SNAPSHOT NAME` (a template made of a snapshot), `rm NAME`.
    Template {
        #[command(subcommand)]
        cmd: TemplateCmd,
    },
    /// Daemon-wide operations.
    System {
        #[command(subcommand)]
        cmd: SystemCmd,
    },
    /// Client and daemon versions.
    Version,
    /// An MCP server on stdio, bridged to the daemon's `/mcp` endpoint.
    Mcp,
    /// Stdio MCP servers hosted inside a sandbox, each served as a
    /// streamable-HTTP MCP endpoint: `start ID NAME -- CMD...` (prints the
    /// endpoint), `ls ID`, `stop ID NAME`.
    #[command(subcommand)]
    McpServer(mcp_servers::McpServerCmd),
    /// Measure start and exec latency against bwrap and crun, or snapshot,
    /// fork and rollback costs on private daemons (--snapshots).
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
enum SnapshotCmd {
    /// List snapshots.
    Ls {
        /// Only snapshots with this label (key=value, repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
    },
    /// Show a snapshot as JSON.
    Inspect { id: String },
    /// Delete snapshots (refused while sandboxes or other snapshots depend on one).
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Write a snapshot to a portable .tar.zst archive (to stdout without -o).
    Export {
        id: String,
        /// The archive to write.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Import a snapshot archive made by `hull snapshot export`; prints its id.
    Import {
        file: PathBuf,
        /// Name it (default: the name it had, if free here).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum TemplateCmd {
    /// List templates: the built-in ones, then imported, built and saved ones.
    Ls,
    /// Make a template of a snapshot: `hull create --template NAME` then
    /// starts from that snapshot.
    Save { snapshot: String, name: String },
    /// Remove templates: a saved one only loses its name (its snapshot
    /// stays); an imported or built one loses its files too.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Import an OCI image archive (an OCI layout in a tar, or `docker save`
    /// output) as a template; prints its name.
    Import {
        file: PathBuf,
        /// The template's name [default: from the file name].
        #[arg(long)]
        name: Option<String>,
        /// Which image, when the archive holds several (its ref name or tag).
        #[arg(long = "ref")]
        reference: Option<String>,
    },
    /// Build a template from Debian with mmdebstrap; prints its name.
    Build {
        name: String,
        /// The Debian suite, e.g. bookworm.
        #[arg(long, value_name = "SUITE")]
        debian: String,
        /// Packages to install over minbase, comma-separated (repeatable).
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// Debian mirror [default: the host's, else http://deb.debian.org/debian].
        #[arg(long)]
        mirror: Option<String>,
        /// Print the builder's output.
        #[arg(short, long)]
        verbose: bool,
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
    /// Template [default: host, or the snapshot's with --from].
    #[arg(long)]
    template: Option<String>,
    /// Start from this snapshot (id or name) instead of a template.
    #[arg(long)]
    from: Option<String>,
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
    /// Network policy: none, open, allow:example.com,10.0.0.0/8,...
    /// [default: the profile's: rollout none, session open].
    #[arg(long, value_name = "POLICY")]
    net: Option<String>,
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

fn parse_profile(p: &str) -> anyhow::Result<Profile> {
    Profile::parse(p).ok_or_else(|| anyhow!("unknown profile {p:?}: use rollout or session"))
}

async fn snapshot_cmd(
    client: &Client,
    cmd: Option<SnapshotCmd>,
    id: Option<String>,
    name: Option<String>,
    labels: Vec<String>,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    let snap_path = |id: &str| format!("/v1/snapshots/{}", enc(id));
    match cmd {
        None => {
            let id = id.ok_or_else(|| anyhow!("name the sandbox to snapshot"))?;
            let req = CreateSnapshot {
                name,
                labels: kv(&labels, "label")?,
            };
            let s: Snapshot = client
                .call(Method::POST, &sb_path(&id, "/snapshot"), Some(&req))
                .await?;
            if json_out {
                print_json(&s);
            } else {
                println!("{}", s.id);
            }
        }
        Some(SnapshotCmd::Ls { labels }) => {
            let q: Vec<String> = labels.iter().map(|l| format!("label={}", enc(l))).collect();
            let path = if q.is_empty() {
                "/v1/snapshots".to_string()
            } else {
                format!("/v1/snapshots?{}", q.join("&"))
            };
            let list: SnapshotList = client.call(Method::GET, &path, None::<&()>).await?;
            if json_out {
                print_json(&list);
            } else {
                println!(
                    "{:<13} {:<16} {:<10} {:<13} {:<13} {:>10}  AGE",
                    "ID", "NAME", "TEMPLATE", "PARENT", "SANDBOX", "SIZE"
                );
                let t = now();
                for s in list.snapshots {
                    println!(
                        "{:<13} {:<16} {:<10} {:<13} {:<13} {:>10}  {}",
                        s.id,
                        s.name.as_deref().unwrap_or("-"),
                        s.template,
                        s.parent.as_deref().unwrap_or("-"),
                        s.sandbox,
                        human_bytes(s.size_bytes),
                        human_secs(t.saturating_sub(s.created_at)),
                    );
                }
            }
        }
        Some(SnapshotCmd::Export { id, output }) => {
            transfer::export(client, &id, output).await?;
        }
        Some(SnapshotCmd::Import { file, name }) => {
            let s = transfer::import_snapshot(client, &file, name).await?;
            if json_out {
                print_json(&s);
            } else {
                println!("{}", s.id);
            }
        }
        Some(SnapshotCmd::Inspect { id }) => {
            let s: Snapshot = client
                .call(Method::GET, &snap_path(&id), None::<&()>)
                .await?;
            print_json(&s);
        }
        Some(SnapshotCmd::Rm { ids }) => {
            let mut failed = false;
            for id in ids {
                match client
                    .call_empty(Method::DELETE, &snap_path(&id), None::<&()>)
                    .await
                {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        eprintln!("hull: {}", message(&e.into()));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(Outcome::Code(125));
            }
        }
    }
    Ok(Outcome::Code(0))
}

async fn template_cmd(
    client: &Client,
    cmd: TemplateCmd,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    match cmd {
        TemplateCmd::Ls => {
            let list: TemplateList = client
                .call(Method::GET, "/v1/templates", None::<&()>)
                .await?;
            if json_out {
                print_json(&list);
            } else {
                println!("{:<20} {:<10} DESCRIPTION", "NAME", "AVAILABLE");
                for t in list.templates {
                    println!(
                        "{:<20} {:<10} {}{}",
                        t.name,
                        if t.available { "yes" } else { "no" },
                        t.description,
                        t.note.map(|n| format!(" ({n})")).unwrap_or_default()
                    );
                }
            }
        }
        TemplateCmd::Import {
            file,
            name,
            reference,
        } => {
            let t = transfer::import_template(client, &file, name, reference).await?;
            if json_out {
                print_json(&t);
            } else {
                println!("{}", t.name);
            }
        }
        TemplateCmd::Build {
            name,
            debian,
            packages,
            mirror,
            verbose,
        } => {
            let req = BuildTemplate {
                name,
                debian,
                packages: packages.into_iter().filter(|p| !p.is_empty()).collect(),
                mirror,
            };
            let t = transfer::build(client, &req, verbose).await?;
            if json_out {
                print_json(&t);
            } else {
                println!("{}", t.name);
            }
        }
        TemplateCmd::Save { snapshot, name } => {
            let t: TemplateInfo = client
                .call(
                    Method::POST,
                    "/v1/templates",
                    Some(&SaveTemplate { name, snapshot }),
                )
                .await?;
            if json_out {
                print_json(&t);
            } else {
                println!("{}", t.name);
            }
        }
        TemplateCmd::Rm { names } => {
            let mut failed = false;
            for n in names {
                match client
                    .call_empty(
                        Method::DELETE,
                        &format!("/v1/templates/{}", enc(&n)),
                        None::<&()>,
                    )
                    .await
                {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("hull: {}", message(&e.into()));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(Outcome::Code(125));
            }
        }
    }
    Ok(Outcome::Code(0))
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1}G", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}M", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}K", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

impl SandboxOpts {
    fn request(&self) -> anyhow::Result<CreateSandbox> {
        let profile = self.profile.as_deref().map(parse_profile).transpose()?;
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
        let template = match (&self.template, &self.from) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(_)) => None,
            (None, None) => Some("host".into()),
        };
        Ok(CreateSandbox {
            template,
            from: self.from.clone(),
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
            network: self.net.as_deref().map(net::parse_policy).transpose()?,
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
    let result = rt.block_on(dispatch(cli));
    // Don't wait for a stdin reader blocked in a read that nobody needs.
    rt.shutdown_background();
    match result {
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

async fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let json_out = cli.json;
    if let Cmd::Serve {
        state_dir,
        listen,
        config,
        snapshot_backend,
        net,
    } = cli.cmd
    {
        daemon::serve(cli.socket, state_dir, listen, config, snapshot_backend, net).await?;
        return Ok(Outcome::Code(0));
    }
    let client = Client::from_env(daemon::client_socket(cli.socket))?;
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
    // Snapshot benchmarks run on private daemons, never the running one.
    if let Cmd::Bench(args) = &cli.cmd
        && args.snapshots
    {
        bench_snapshots::run(args.clone()).await?;
        return Ok(Outcome::Code(0));
    }
    daemon::ensure(&client).await?;
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
        Cmd::Shell(args) => Ok(Outcome::Code(shell::shell(&client, args, json_out).await?)),
        Cmd::Code(args) => Ok(Outcome::Code(code::code(&client, args, json_out).await?)),
        Cmd::Browse(args) => Ok(Outcome::Code(
            browse::browse(&client, args, json_out).await?,
        )),
        Cmd::Expose(args) => {
            expose::expose(&client, args, json_out).await?;
            Ok(ok)
        }
        Cmd::Net { cmd } => {
            net::net(&client, cmd, json_out).await?;
            Ok(ok)
        }
        Cmd::McpServer(c) => {
            mcp_servers::mcp_server(&client, c, json_out).await?;
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
        Cmd::Snapshot {
            cmd,
            id,
            name,
            labels,
        } => snapshot_cmd(&client, cmd, id, name, labels, json_out).await,
        Cmd::Template { cmd } => template_cmd(&client, cmd, json_out).await,
        Cmd::Rollback { id, snapshot } => {
            let s: Sandbox = client
                .call(
                    Method::POST,
                    &sb_path(&id, "/rollback"),
                    Some(&Rollback { snapshot }),
                )
                .await?;
            if json_out {
                print_json(&s);
            } else {
                println!("{}", s.id);
            }
            Ok(ok)
        }
        Cmd::Fork {
            snapshot,
            n,
            profile,
            labels,
            ttl,
            net,
        } => {
            let req = Fork {
                n,
                profile: profile.as_deref().map(parse_profile).transpose()?,
                labels: kv(&labels, "label")?,
                ttl_seconds: ttl.as_deref().map(|t| seconds(t, "--ttl")).transpose()?,
                network: net.as_deref().map(net::parse_policy).transpose()?,
                ..Default::default()
            };
            let r: ForkResult = client
                .call(
                    Method::POST,
                    &format!("/v1/snapshots/{}/fork", enc(&snapshot)),
                    Some(&req),
                )
                .await?;
            if json_out {
                print_json(&r);
            } else {
                for s in r.sandboxes {
                    println!("{}", s.id);
                }
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
            cp::copy(&client, &src, &dst).await?;
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
        Cmd::Mcp => mcp::bridge(&client).await.map(|()| ok),
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
    println!("snapshot store:   {}", i.snapshot_store);
    println!("network:          {}", i.network);
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

/// SIGINT, SIGTERM and SIGHUP as they reach hull. Listening replaces their
/// default action (death), so `run` gets to destroy its sandbox and `exec`
/// to forward them to its command.
struct Terminations {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Terminations {
    fn listen() -> anyhow::Result<Terminations> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Terminations {
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    /// The next one's number.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

async fn run(
    client: &Client,
    sb: SandboxOpts,
    ex: ExecOpts,
    cmd: Vec<String>,
) -> anyhow::Result<Outcome> {
    let create = sb.request()?;
    let req = exec_request(&ex, cmd, BTreeMap::new(), None, None)?;
    let mut stop = Terminations::listen()?;
    // A signal during create waits for the sandbox, then destroys it.
    let created = client.call::<Sandbox>(Method::POST, "/v1/sandboxes", Some(&create));
    tokio::pin!(created);
    let (s, mut interrupted) = tokio::select! {
        r = &mut created => (r?, None),
        sig = stop.next() => (created.await?, Some(sig)),
    };
    let result = match interrupted {
        Some(_) => Ok(Outcome::Code(125)),
        None => tokio::select! {
            r = exec(client, &s.id, req, &ex) => r,
            sig = stop.next() => {
                interrupted = Some(sig);
                Ok(Outcome::Code(125))
            }
        },
    };
    // Always destroy, whatever happened above.
    if let Err(e) = client
        .call_empty(Method::DELETE, &sb_path(&s.id, ""), None::<&()>)
        .await
        && !matches!(&e, ClientError::Api(a) if a.kind == ErrorKind::NotFound)
    {
        eprintln!("hull: destroying sandbox {}: {}", s.id, message(&e.into()));
    }
    match interrupted {
        // Report the signal as a shell would for a command it ended.
        Some(sig) => Ok(Outcome::Code(128 + sig)),
        None => result,
    }
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
            Some(ClientError::Api(a)) => match start_failure_code(a) {
                Some(code) => {
                    eprintln!("hull: {}", a.message);
                    Ok(Outcome::Code(code))
                }
                None => Err(e),
            },
            _ => Err(e),
        },
        ok => ok,
    }
}

/// The shell's exit code for a program that could not be started: 127 when
/// it does not exist, 126 when it cannot be executed. Read from the error's
/// `reason`; a daemon or guest too old to send one still says "command not
/// found" in its message.
fn start_failure_code(e: &ApiError) -> Option<i32> {
    match e.reason {
        Some(ErrorReason::CommandNotFound) => Some(127),
        Some(ErrorReason::CommandNotExecutable) => Some(126),
        Some(ErrorReason::Unknown) => None,
        None => (e.kind == ErrorKind::NotFound && e.message.ends_with("command not found"))
            .then_some(127),
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
    // The first signal goes to the command (which then exits as it
    // chooses); a second one stops waiting for it.
    let mut signals = Terminations::listen()?;
    let mut process: Option<String> = None;
    let mut forwarded = false;
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            sig = signals.next() => {
                match (&process, forwarded) {
                    (Some(p), false) => {
                        forwarded = true;
                        let path = sb_path(id, &format!("/processes/{}/signal", enc(p)));
                        if let Err(e) = client
                            .call_empty(Method::POST, &path, Some(&SignalRequest { signal: sig }))
                            .await
                        {
                            eprintln!("hull: forwarding signal {sig}: {}", message(&e.into()));
                        }
                    }
                    _ => return Ok(Outcome::Code(128 + sig)),
                }
                continue;
            }
        };
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|e| anyhow!("reading output: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: ExecEvent =
                serde_json::from_slice(&line).context("unexpected output from the daemon")?;
            if let ExecEvent::Started { id, .. } = &ev {
                process = Some(id.clone());
            }
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
    }
    drop(in_tx);
    // As without -i/-t: the first SIGINT, SIGTERM or SIGHUP goes to the
    // command (which then exits as it chooses); a second one stops waiting
    // for it. (With -t, Ctrl-C is a byte for the remote terminal and raises
    // no signal here.)
    let mut signals = Terminations::listen()?;
    let mut forwarded = false;
    loop {
        tokio::select! {
            m = in_rx.recv() => {
                if let Some(m) = m {
                    tx.send(Message::Text(serde_json::to_string(&m)?.into())).await?;
                }
            }
            sig = signals.next() => {
                if forwarded {
                    return Ok(Outcome::Code(128 + sig));
                }
                forwarded = true;
                let m = ExecClientMessage::Signal { signal: sig };
                tx.send(Message::Text(serde_json::to_string(&m)?.into())).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hull").chain(args.iter().copied()))
    }

    #[test]
    fn command_lines() {
        let c = parse(&["run", "-it", "--timeout", "5s", "--", "sh", "-c", "x"]).unwrap();
        let Cmd::Run { ex, cmd, sb } = c.cmd else {
            panic!("not run")
        };
        assert!(ex.interactive && ex.tty);
        assert_eq!(cmd, ["sh", "-c", "x"]);
        assert_eq!(sb.request().unwrap().template.as_deref(), Some("host"));
        // Everything after `--` belongs to the command, flags included.
        let c = parse(&["exec", "box", "--", "ls", "--json", "-l"]).unwrap();
        let Cmd::Exec { id, cmd, .. } = c.cmd else {
            panic!("not exec")
        };
        assert_eq!((id.as_str(), cmd.len()), ("box", 3));
        assert!(!c.json);
        assert!(parse(&["ls", "--json"]).unwrap().json);
        // `--` may be left out, as with `docker run`: everything from the
        // first word of the command on belongs to it.
        let c = parse(&["run", "--ttl", "5m", "python3", "-c", "print(1)", "--json"]).unwrap();
        let Cmd::Run { cmd, .. } = c.cmd else {
            panic!("not run")
        };
        assert_eq!(cmd, ["python3", "-c", "print(1)", "--json"]);
        assert!(!c.json);
        let c = parse(&["exec", "box", "ls", "-l"]).unwrap();
        let Cmd::Exec { cmd, .. } = c.cmd else {
            panic!("not exec")
        };
        assert_eq!(cmd, ["ls", "-l"]);
        let c = parse(&["rm", "a", "b", "c"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Rm { ids } if ids.len() == 3));
        for bad in [
            &["run"][..],
            &["run", "--"],
            &["rm"],
            &["exec", "id"],
            &["ttl", "id"],
            &["run", "--cpus", "many", "--", "true"],
            &["serve", "--listen", "not-an-address"],
            &["frobnicate"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn start_failures_exit_as_in_shells() {
        let not_found = ApiError::not_found("x: command not found");
        let cases = [
            (
                not_found
                    .clone()
                    .with_reason(Some(ErrorReason::CommandNotFound)),
                Some(127),
            ),
            (
                ApiError::new(
                    ErrorKind::PermissionDenied,
                    "/etc/passwd: permission denied",
                )
                .with_reason(Some(ErrorReason::CommandNotExecutable)),
                Some(126),
            ),
            (
                ApiError::invalid("/etc/passwd/x: cannot execute: Not a directory")
                    .with_reason(Some(ErrorReason::CommandNotExecutable)),
                Some(126),
            ),
            // An older daemon or guest: no reason, the old message.
            (not_found, Some(127)),
            // Not a start failure.
            (
                ApiError::not_found("no sandbox with id or name \"x\""),
                None,
            ),
            (
                ApiError::new(ErrorKind::PermissionDenied, "permission denied"),
                None,
            ),
            (
                ApiError::internal("m").with_reason(Some(ErrorReason::Unknown)),
                None,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(start_failure_code(&e), code, "{e:?}");
        }
    }

    #[test]
    fn sandbox_options() {
        let c = parse(&[
            "create",
            "--template",
            "busybox",
            "--memory",
            "512M",
            "--disk",
            "2G",
            "--ttl",
            "10m",
            "--profile",
            "rollout",
            "-e",
            "A=1",
            "-e",
            "B=x=y",
            "-l",
            "team=a",
            "-u",
            "nobody",
        ])
        .unwrap();
        let Cmd::Create { sb } = c.cmd else {
            panic!("not create")
        };
        let r = sb.request().unwrap();
        assert_eq!(r.limits.memory_bytes, Some(512 << 20));
        assert_eq!(r.limits.disk_bytes, Some(2 << 30));
        assert_eq!(r.ttl_seconds, Some(600));
        assert_eq!(r.env["B"], "x=y");
        assert_eq!(r.labels["team"], "a");
        assert_eq!(r.user.as_deref(), Some("nobody"));
        let bad = |opts: SandboxOpts| opts.request().unwrap_err().to_string();
        let base = SandboxOpts::default();
        assert!(
            bad(SandboxOpts {
                memory: Some("lots".into()),
                ..base.clone()
            })
            .contains("--memory")
        );
        assert!(
            bad(SandboxOpts {
                ttl: Some("-1s".into()),
                ..base.clone()
            })
            .contains("--ttl")
        );
        assert!(
            bad(SandboxOpts {
                profile: Some("fast".into()),
                ..base.clone()
            })
            .contains("fast")
        );
        assert!(
            bad(SandboxOpts {
                env: vec!["NOEQUALS".into()],
                ..base.clone()
            })
            .contains("KEY=VALUE")
        );
        assert!(
            bad(SandboxOpts {
                labels: vec!["=v".into()],
                ..base
            })
            .contains("empty key")
        );
    }

    #[test]
    fn paths_and_times() {
        // Ids are percent-encoded: they can never add path segments or a query.
        assert_eq!(sb_path("abc", "/exec"), "/v1/sandboxes/abc/exec");
        assert_eq!(sb_path("../x", ""), "/v1/sandboxes/..%2Fx");
        assert_eq!(sb_path("a?b#c d", ""), "/v1/sandboxes/a%3Fb%23c%20d");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(3600), "1h");
        assert_eq!(human_secs(2 * 86400), "2d");
        assert_eq!(seconds("1.5s", "x").unwrap(), 2);
        assert!(seconds("soon", "x").is_err());
    }
}
