//! `hull expose ID PORT [--tcp] [--local ADDR:PORT] [--no-forward]`,
//! `hull expose ID --list`, `hull expose ID PORT --rm`: expose a TCP port
//! of a sandbox through the daemon, and forward a local address to it.
//!
//! Exposing registers the port (idempotent) and prints the daemon's URL
//! for it. Then, unless `--no-forward`, the command listens on `--local`
//! (default `127.0.0.1:PORT`; `127.0.0.1:0` picks a free port) and carries
//! each accepted connection over its own WebSocket to the daemon's raw TCP
//! route (`/v1/sandboxes/{id}/ports/{port}/tcp`) until Ctrl-C, so any
//! client — a browser, `psql`, `redis-cli` — talks to the service as if it
//! ran locally (absolute links in web pages work too, unlike through the
//! daemon's path-prefixed HTTP proxy). The exposure stays registered after
//! Ctrl-C; `--rm` removes it.
//!
//! Limits: the forwarder holds one WebSocket per local connection; TCP
//! half-close travels as an empty message (the daemon's convention).

use std::net::SocketAddr;

use anyhow::{Context, anyhow};
use futures_util::{SinkExt, StreamExt};
use hull_api::{ExposePort, ExposedPort, ExposedPorts, PortProtocol};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, Endpoint, enc};

/// `hull expose`'s arguments.
#[derive(clap::Args)]
pub struct ExposeArgs {
    /// The sandbox (id or name).
    pub id: String,
    /// The TCP port the service listens on inside the sandbox (on
    /// 127.0.0.1 or 0.0.0.0 there).
    #[arg(required_unless_present = "list", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Expose for raw TCP only (no HTTP proxy URL).
    #[arg(long)]
    pub tcp: bool,
    /// Local address to forward from [default 127.0.0.1:PORT; port 0 picks a free one].
    #[arg(long, value_name = "ADDR:PORT")]
    pub local: Option<SocketAddr>,
    /// Register the port and print its URL, without forwarding a local address.
    #[arg(long)]
    pub no_forward: bool,
    /// List the sandbox's exposed ports.
    #[arg(long, conflicts_with_all = ["port", "tcp", "local", "no_forward", "rm"])]
    pub list: bool,
    /// Stop exposing PORT.
    #[arg(long, requires = "port", conflicts_with_all = ["tcp", "local", "no_forward"])]
    pub rm: bool,
}

pub async fn expose(client: &Client, args: ExposeArgs, json_out: bool) -> anyhow::Result<()> {
    let base = format!("/v1/sandboxes/{}/ports", enc(&args.id));
    if args.list {
        let l: ExposedPorts = client.call(Method::GET, &base, None::<&()>).await?;
        if json_out {
            println!("{}", serde_json::to_string_pretty(&l)?);
        } else if l.ports.is_empty() {
            println!(
                "no exposed ports (expose one: hull expose {} PORT)",
                args.id
            );
        } else {
            println!("{:<7} {:<9} URL", "PORT", "PROTOCOL");
            for p in &l.ports {
                println!(
                    "{:<7} {:<9} {}",
                    p.port,
                    p.protocol.as_str(),
                    url_of(client, p)
                );
            }
        }
        return Ok(());
    }
    let port = args.port.ok_or_else(|| anyhow!("PORT is required"))?;
    if args.rm {
        client
            .call_empty(Method::DELETE, &format!("{base}/{port}"), None::<&()>)
            .await?;
        if !json_out {
            println!("port {port} of sandbox {} is no longer exposed", args.id);
        }
        return Ok(());
    }
    let protocol = if args.tcp {
        PortProtocol::Tcp
    } else {
        PortProtocol::Http
    };
    let x: ExposedPort = client
        .call(
            Method::POST,
            &base,
            Some(&ExposePort {
                port: u32::from(port),
                protocol,
            }),
        )
        .await?;
    if json_out {
        println!("{}", serde_json::to_string(&x)?);
    } else {
        println!(
            "exposed port {port} of sandbox {} ({})",
            x.sandbox,
            protocol.as_str()
        );
        println!("  daemon URL: {}", url_of(client, &x));
        match &client.endpoint {
            Endpoint::Tcp { .. } => {
                println!("  (send `Authorization: Bearer $HULL_TOKEN`, as for every API call)")
            }
            Endpoint::Unix(sock) if protocol == PortProtocol::Http => println!(
                "  try: curl --unix-socket {} 'http://localhost{}'",
                sock.display(),
                x.path
            ),
            Endpoint::Unix(_) => {}
        }
    }
    if args.no_forward {
        return Ok(());
    }
    let local = args
        .local
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port)));
    let listener = tokio::net::TcpListener::bind(local)
        .await
        .with_context(|| {
            format!(
                "listening on {local} (pick another with --local 127.0.0.1:0, or use --no-forward)"
            )
        })?;
    let bound = listener.local_addr()?;
    println!(
        "forwarding {bound} -> port {port} in sandbox {}; Ctrl-C to stop",
        x.sandbox
    );
    if protocol == PortProtocol::Http {
        println!("  try: curl http://{bound}/");
    } else {
        println!("  connect any TCP client to {bound}");
    }
    let tcp_path = format!("/v1/sandboxes/{}/ports/{port}/tcp", x.sandbox);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            a = listener.accept() => {
                let (sock, peer) = match a {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("hull expose: accepting a connection: {e}");
                        continue;
                    }
                };
                let client = client.clone();
                let path = tcp_path.clone();
                conns.spawn(async move {
                    if let Err(e) = forward(&client, &path, sock).await {
                        eprintln!("hull expose: connection from {peer}: {e:#}");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    if !json_out {
        println!(
            "stopped forwarding; port {port} stays exposed (remove: hull expose {} {port} --rm)",
            args.id
        );
    }
    Ok(())
}

fn url_of(client: &Client, x: &ExposedPort) -> String {
    match &client.endpoint {
        Endpoint::Tcp { authority, .. } => {
            let scheme = if x.protocol == PortProtocol::Tcp {
                "ws"
            } else {
                "http"
            };
            format!("{scheme}://{authority}{}", x.path)
        }
        Endpoint::Unix(_) => x.path.clone(),
    }
}

/// Carry one local connection over a WebSocket to the sandbox's port.
async fn forward(client: &Client, path: &str, sock: tokio::net::TcpStream) -> anyhow::Result<()> {
    let ws = client.websocket(path).await?;
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let (mut tx, mut rx) = ws.split();
    let up = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    // Half-close: the service reads EOF; its answer still comes.
                    let _ = tx.send(Message::Binary(Default::default())).await;
                    std::future::pending::<()>().await;
                }
                Ok(n) => {
                    let m = Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        while let Some(Ok(m)) = rx.next().await {
            let data: &[u8] = match &m {
                Message::Binary(b) => b,
                Message::Text(t) => t.as_bytes(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    Ok(())
}
