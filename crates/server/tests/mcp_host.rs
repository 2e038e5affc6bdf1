//! MCP servers hosted inside sandboxes, end to end against a real daemon: a
//! Python stdio MCP server (`MCPServer`, formerly FastMCP) (PyPI `mcp`, its packages copied into a `host`
//! sandbox) registered on a sandbox and called through the daemon's
//! streamable-HTTP endpoint with rmcp's client (unix socket) and the
//! official Python client (TCP, bearer token); its tool writes a file in
//! the sandbox and reports the sandbox's hostname. Then hostile input:
//! unknown sandboxes, servers and sessions, bad names, commands that are
//! not MCP servers (garbage, silence, floods), malformed and oversize
//! messages, a crashing server, isolation of sessions, and cleanup of the
//! processes on DELETE, stop and destroy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::http::StatusCode;
use common::{error_kind, guest_binary, privileged, send, state_dir, unix_call};
use hull_api::Limits;
use hull_server::{ServeError, ServerConfig};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, UnixSocketHttpClient};
use serde_json::{Value, json};

const VENV: &str = "/var/cache/hull/venv-mcp";
const PIN: &str = "mcp==2.3.0";

/// The server the sandbox runs: `MCPServer` (FastMCP before mcp 2), stdio.
const SERVER: &str = r#"
import os, socket, sys
from mcp.server.mcpserver import MCPServer, Context

mcp = MCPServer("sandboxed")
N = 0

@mcp.tool()
def whereami(tag: str) -> dict:
    """Write /tmp/mcp-<tag> and report where this runs."""
    with open(f"/tmp/mcp-{tag}", "w") as f:
        f.write(tag)
    return {"hostname": socket.gethostname(), "uname": " ".join(os.uname()),
            "pid": os.getpid(), "files": sorted(os.listdir("/tmp"))}

@mcp.tool()
async def slow(ctx: Context, steps: int = 3) -> str:
    """Report progress, log, answer."""
    for i in range(steps):
        await ctx.report_progress(i + 1, steps)
    await ctx.info("slow done")
    return "ok"

@mcp.tool()
def counter() -> int:
    """Count calls in this process."""
    global N
    N += 1
    return N

@mcp.tool()
def crash() -> str:
    """Exit the process at once."""
    print("crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)

print("server starting", file=sys.stderr, flush=True)
mcp.run()
"#;

/// The official Python MCP client in a venv under /var/cache/hull (made on
/// first use, as crates/cli/tests/cli.rs does), or `None` after a SKIP
/// message (a failure under `HULL_TEST_PRIVILEGED=1`).
fn python_mcp(test: &str) -> Option<PathBuf> {
    let python = Path::new(VENV).join("bin/python");
    let have = |p: &Path| {
        Command::new(p)
            .args([
                "-c",
                "import mcp, importlib.metadata as m; print(m.version('mcp'))",
            ])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "2.3.0"
            })
    };
    if !have(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv", "--clear", VENV])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(Path::new(VENV).join("bin/pip"))
                .args(["install", "-q", PIN])
                .status()
                .is_ok_and(|s| s.success());
        if !made || !have(&python) {
            let why = format!("could not install {PIN} into {VENV} (python3-venv and PyPI needed)");
            assert!(
                std::env::var("HULL_TEST_PRIVILEGED").as_deref() != Ok("1"),
                "{test}: {why}"
            );
            eprintln!("SKIP {test}: {why}");
            return None;
        }
    }
    Some(python)
}

/// The venv's site-packages (what the server needs) as a tar.
fn site_packages_tar(python: &Path) -> Vec<u8> {
    let out = Command::new(python)
        .args([
            "-c",
            "import mcp, os; print(os.path.dirname(os.path.dirname(mcp.__file__)))",
        ])
        .output()
        .unwrap();
    let site = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for e in std::fs::read_dir(&site).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if [
            "pip",
            "setuptools",
            "pkg_resources",
            "_distutils_hack",
            "__pycache__",
        ]
        .iter()
        .any(|skip| name == *skip || name.starts_with(&format!("{skip}-")))
        {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            b.append_dir_all(&name, e.path()).unwrap();
        } else {
            b.append_path_with_name(e.path(), &name).unwrap();
        }
    }
    b.into_inner().unwrap()
}

struct Daemon {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

async fn start(state: &Path, sock: &Path, listen: std::net::SocketAddr) -> Daemon {
    let cfg = ServerConfig {
        state_dir: state.to_path_buf(),
        socket: sock.to_path_buf(),
        listen: Some(listen),
        guest_binary: guest_binary(),
        defaults: Limits::default(),
        snapshots: Default::default(),
        max_upload_bytes: 1 << 30,
        config_file: None,
        network: Default::default(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(hull_server::serve(cfg, async {
        let _ = rx.await;
    }));
    for _ in 0..500 {
        if let Ok(s) = tokio::net::UnixStream::connect(sock).await
            && send(s, "GET", "/v1/health", &[], Vec::new()).await.0 == StatusCode::OK
        {
            return Daemon { stop: tx, task };
        }
        assert!(!task.is_finished(), "the daemon exited: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the daemon did not answer on {}", sock.display());
}

/// A request over the unix socket with headers; the body as bytes.
async fn raw(
    sock: &Path,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let s = tokio::net::UnixStream::connect(sock).await.unwrap();
    send(s, method, uri, headers, body).await
}

async fn json_call(sock: &Path, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (s, b) = unix_call(sock, method, uri, &body).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

type Client = RunningService<RoleClient, ClientConfig>;

async fn client(sock: &Path, path: &str) -> Client {
    let uri = format!("http://hull{path}");
    let transport = StreamableHttpClientTransport::with_client(
        UnixSocketHttpClient::new(sock.to_str().unwrap(), &uri),
        StreamableHttpClientTransportConfig::with_uri(uri.as_str()),
    );
    ClientConfig::default().serve(transport).await.unwrap()
}

async fn tool(c: &Client, name: &'static str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    c.call_tool(CallToolRequestParams::new(name).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A tool's result: its structured content (where the server wraps a
/// non-object result in `result`, that), else its text parsed as JSON.
async fn tool_ok(c: &Client, name: &'static str, args: Value) -> Value {
    let r = tool(c, name, args).await;
    assert_ne!(r.is_error, Some(true), "{name}: {r:?}");
    if let Some(v) = r.structured_content {
        return v.get("result").cloned().unwrap_or(v);
    }
    let text = r
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_else(|| panic!("{name}: no text content: {:?}", r.content));
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// Processes in the sandbox whose command line starts with `prefix`.
async fn count_procs(sock: &Path, id: &str, prefix: &str) -> usize {
    let script = format!(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^{prefix}' || true"
    );
    let (s, v) = json_call(
        sock,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        json!({"cmd": ["sh", "-c", script]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["stdout"].as_str().unwrap().trim().parse().unwrap()
}

/// Wait (up to 20 s) until `n` host processes run the server script; the
/// count at the end.
async fn host_procs_become(marker: &str, n: usize) -> usize {
    let mut c = host_procs(marker);
    for _ in 0..200 {
        if c == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        c = host_procs(marker);
    }
    c
}

/// Wait (up to 20 s) until `n` processes in the sandbox start with
/// `prefix`; the count at the end.
async fn procs_become(sock: &Path, id: &str, prefix: &str, n: usize) -> usize {
    let mut c = count_procs(sock, id, prefix).await;
    for _ in 0..100 {
        if c == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        c = count_procs(sock, id, prefix).await;
    }
    c
}

/// Processes on the host running the server script.
fn host_procs(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .count()
}

const MCP_HEADERS: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
];

fn init_msg() -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_servers_inside_sandboxes() {
    if !privileged("mcp_servers_inside_sandboxes") {
        return;
    }
    let Some(python) = python_mcp("mcp_servers_inside_sandboxes") else {
        return;
    };
    let dir = state_dir("hull-mcphost");
    let state = dir.path().join("state");
    let sock = dir.path().join("run/hull.sock");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let daemon = start(&state, &sock, addr).await;
    let (_, info) = json_call(&sock, "GET", "/v1/info", Value::Null).await;
    let instance = info["instance_id"].as_str().unwrap().to_string();

    // A host sandbox with the mcp package and the server script.
    let (s, sb) = json_call(
        &sock,
        "POST",
        "/v1/sandboxes",
        json!({"template": "host", "name": "mcphost"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{sb}");
    let id = sb["id"].as_str().unwrap().to_string();
    let tar = site_packages_tar(&python);
    let (s, b) = raw(
        &sock,
        "PUT",
        &format!("/v1/sandboxes/{id}/files/archive?path=/opt/pylib"),
        &[("content-type", "application/x-tar")],
        tar,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
    let (s, b) = raw(
        &sock,
        "PUT",
        &format!("/v1/sandboxes/{id}/files?path=/srv/server.py"),
        &[("content-type", "application/octet-stream")],
        SERVER.as_bytes().to_vec(),
    )
    .await;
    assert!(s.is_success(), "{s} {}", String::from_utf8_lossy(&b));
    let (_, hn) = json_call(
        &sock,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        json!({"cmd": ["hostname"]}),
    )
    .await;
    let hostname = hn["stdout"].as_str().unwrap().trim().to_string();
    let host_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(
        hostname,
        host_hostname.trim(),
        "the sandbox has its own hostname"
    );

    // Register it (by the sandbox's name): the check runs the handshake.
    let spec = json!({"name": "py", "command": ["python3", "/srv/server.py"],
        "env": {"PYTHONPATH": "/opt/pylib"}, "session_idle_timeout_seconds": 600});
    let (s, srv) = json_call(
        &sock,
        "POST",
        "/v1/sandboxes/mcphost/mcp-servers",
        spec.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{srv}");
    assert_eq!(srv["server_name"], "sandboxed");
    assert_eq!(srv["tools"], 4);
    assert_eq!(srv["sessions"], 0);
    assert!(!srv["protocol_version"].as_str().unwrap().is_empty());
    let endpoint = srv["endpoint"].as_str().unwrap().to_string();
    assert_eq!(endpoint, format!("/v1/sandboxes/{id}/mcp/py"));
    assert_eq!(
        procs_become(&sock, &id, "python3 /srv/server.py", 0).await,
        0,
        "the check's process is gone"
    );
    let (s, v) = json_call(
        &sock,
        "POST",
        "/v1/sandboxes/mcphost/mcp-servers",
        spec.clone(),
    )
    .await;
    assert_eq!(
        (s, v["error"]["kind"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );

    // rmcp's client: the tool runs inside the sandbox.
    let a = client(&sock, &endpoint).await;
    assert_eq!(
        a.peer_info()
            .and_then(|i| i.server_info.as_ref().map(|s| s.name.clone())),
        Some("sandboxed".into())
    );
    let mut names: Vec<String> = a
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["counter", "crash", "slow", "whereami"]);
    let w = tool_ok(&a, "whereami", json!({"tag": "rmcp"})).await;
    assert_eq!(w["hostname"], hostname.as_str(), "{w}");
    assert!(
        !Path::new("/tmp/mcp-rmcp").exists(),
        "nothing was written on the host"
    );
    let (s, b) = raw(
        &sock,
        "GET",
        &format!("/v1/sandboxes/{id}/files?path=/tmp/mcp-rmcp"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, b"rmcp".as_slice()));
    assert_eq!(tool_ok(&a, "slow", json!({"steps": 2})).await, "ok");

    // Two sessions are two processes: state is not shared.
    let b2 = client(&sock, &endpoint).await;
    assert_eq!(tool_ok(&a, "counter", json!({})).await, 1);
    assert_eq!(tool_ok(&a, "counter", json!({})).await, 2);
    assert_eq!(tool_ok(&b2, "counter", json!({})).await, 1);
    assert_eq!(
        procs_become(&sock, &id, "python3 /srv/server.py", 2).await,
        2
    );
    let (_, l) = json_call(
        &sock,
        "GET",
        "/v1/sandboxes/mcphost/mcp-servers",
        Value::Null,
    )
    .await;
    assert_eq!(l["servers"][0]["sessions"], 2, "{l}");
    // A crash ends its session only: the call fails, the other goes on.
    let r = b2.call_tool(CallToolRequestParams::new("crash")).await;
    let text = format!("{r:?}");
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|r| r.is_error == Some(true)),
        "{text}"
    );
    assert_eq!(tool_ok(&a, "counter", json!({})).await, 3);
    let _ = b2.cancel().await;
    a.cancel().await.unwrap();
    // rmcp's client ends its session with DELETE: its process goes.
    assert_eq!(
        procs_become(&sock, &id, "python3 /srv/server.py", 0).await,
        0,
        "session processes are gone after DELETE and the crash"
    );

    // The official Python client over TCP with the token.
    let token = std::fs::read_to_string(state.join("token")).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/python/mcp_host_client.py");
    let url = format!("http://{addr}{endpoint}");
    let o = tokio::process::Command::new(&python)
        .arg(&script)
        .args([&url, token.trim(), &hostname])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok",
        "python: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Without the token: refused, as every route.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (s, _) = send(tcp, "POST", &endpoint, &MCP_HEADERS, init_msg()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Raw protocol: initialize gives a session id; JSON or SSE per Accept.
    let (s, b) = raw(
        &sock,
        "POST",
        &endpoint,
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        init_msg(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["result"]["serverInfo"]["name"], "sandboxed");
    let sess = {
        let st = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(st))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = axum::http::Request::builder()
            .method("POST")
            .uri(&endpoint)
            .header("host", "hull");
        for (k, v) in MCP_HEADERS {
            req = req.header(k, v);
        }
        let resp = sender
            .send_request(
                req.body(http_body_util::Full::new(bytes::Bytes::from(init_msg())))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let with = |s: &str| -> Vec<(&'static str, String)> {
        vec![
            ("content-type", "application/json".into()),
            ("accept", "application/json".into()),
            ("mcp-session-id", s.to_string()),
        ]
    };
    let post = |h: Vec<(&'static str, String)>, body: Vec<u8>| {
        let sock = sock.clone();
        let endpoint = endpoint.clone();
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            raw(&sock, "POST", &endpoint, &h, body).await
        }
    };
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        .to_string()
        .into_bytes();
    assert_eq!(
        post(with(&sess), note.clone()).await.0,
        StatusCode::ACCEPTED
    );
    let list = json!({"jsonrpc": "2.0", "id": "l", "method": "tools/list"})
        .to_string()
        .into_bytes();
    let (s, b) = post(with(&sess), list.clone()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["result"]["tools"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Hostile input on the endpoint.
    let kind = |(s, b): (StatusCode, Vec<u8>)| (s, error_kind(&b));
    let bad = (StatusCode::BAD_REQUEST, "invalid_argument".to_string());
    let nf = (StatusCode::NOT_FOUND, "not_found".to_string());
    assert_eq!(
        kind(post(with("0123456789abcdef0123456789abcdef"), list.clone()).await),
        nf,
        "unknown session"
    );
    assert_eq!(
        kind(post(with(&"x".repeat(5000)), list.clone()).await),
        nf,
        "absurd session id"
    );
    assert_eq!(
        kind(post(with(&sess)[..2].to_vec(), list.clone()).await),
        bad,
        "no session, not initialize"
    );
    assert_eq!(kind(post(with(&sess), b"{not json".to_vec()).await), bad);
    assert_eq!(
        kind(
            post(
                with(&sess),
                b"[{\"jsonrpc\":\"2.0\",\"method\":\"x\"}]".to_vec()
            )
            .await
        ),
        bad,
        "batch"
    );
    assert_eq!(
        kind(post(with(&sess), b"{\"id\":1,\"method\":\"x\"}".to_vec()).await),
        bad,
        "no jsonrpc"
    );
    assert_eq!(
        kind(post(with(&sess), vec![b' '; 5 << 20]).await),
        bad,
        "oversize body"
    );
    let mut text = with(&sess);
    text[0].1 = "text/plain".into();
    assert_eq!(kind(post(text, list.clone()).await), bad, "not JSON");
    for (path, want) in [
        ("/v1/sandboxes/nope/mcp/py".to_string(), &nf),
        (format!("/v1/sandboxes/{id}/mcp/other"), &nf),
        (format!("/v1/sandboxes/{id}/mcp/a%20b"), &bad),
        (format!("/v1/sandboxes/{id}/mcp/{}", "n".repeat(65)), &bad),
    ] {
        let (s, b) = raw(&sock, "POST", &path, &MCP_HEADERS, init_msg()).await;
        assert_eq!(&(s, error_kind(&b)), want, "{path}");
    }
    // GET needs the event-stream Accept and a session; DELETE ends it.
    let (s, _) = raw(
        &sock,
        "GET",
        &endpoint,
        &[("mcp-session-id", &sess)],
        Vec::new(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = raw(
        &sock,
        "GET",
        &endpoint,
        &[("accept", "text/event-stream")],
        Vec::new(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = raw(
        &sock,
        "DELETE",
        &endpoint,
        &[("mcp-session-id", &sess)],
        Vec::new(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        kind(post(with(&sess), list.clone()).await),
        nf,
        "deleted session"
    );
    let (s, _) = raw(
        &sock,
        "DELETE",
        &endpoint,
        &[("mcp-session-id", &sess)],
        Vec::new(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Hostile registrations.
    let reg = |body: Value| {
        let sock = sock.clone();
        async move { json_call(&sock, "POST", "/v1/sandboxes/mcphost/mcp-servers", body).await }
    };
    let kind_of = |(s, v): (StatusCode, Value)| {
        (
            s,
            v["error"]["kind"].as_str().unwrap_or("").to_string(),
            v["error"]["message"].as_str().unwrap_or("").to_string(),
        )
    };
    for body in [
        json!({"name": "../x", "command": ["true"]}),
        json!({"name": "a b", "command": ["true"]}),
        json!({"name": "", "command": ["true"]}),
        json!({"name": "x".repeat(65), "command": ["true"]}),
        json!({"name": "x", "command": []}),
        json!({"name": "x", "command": ["a\u{0}b"]}),
        json!({"name": "x", "command": ["true"], "startup_timeout_ms": 0}),
        json!({"name": "x", "command": ["true"], "bogus": 1}),
        json!({"name": "x", "command": ["true"], "env": {"A=B": "c"}}),
    ] {
        let (s, k, _) = kind_of(reg(body.clone()).await);
        assert_eq!(
            (s, k.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{body}"
        );
    }
    let (s, k, m) = kind_of(reg(json!({"name": "garbage", "command": ["sh", "-c", "echo hello world; echo oops >&2; exit 3"]})).await);
    assert_eq!(
        (s, k.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument"),
        "{m}"
    );
    assert!(
        m.contains("exited with code 3") && m.contains("oops") && m.contains("hello world"),
        "{m}"
    );
    let (_, k, m) = kind_of(
        reg(json!({"name": "silent", "command": ["sleep", "600"], "startup_timeout_ms": 500}))
            .await,
    );
    assert_eq!(k, "invalid_argument");
    assert!(m.contains("did not answer initialize within 500 ms"), "{m}");
    let (_, k, m) = kind_of(reg(json!({"name": "flood", "command": ["sh", "-c", "yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx | tr -d '\\n'"], "startup_timeout_ms": 3000})).await);
    assert_eq!(k, "invalid_argument");
    assert!(m.contains("a line over"), "{m}");
    let (_, k, m) = kind_of(
        reg(json!({"name": "lines", "command": ["yes", "not json"], "startup_timeout_ms": 1000}))
            .await,
    );
    assert_eq!(k, "invalid_argument");
    assert!(m.contains("\"not json\""), "{m}");
    let (_, k, _) = kind_of(reg(json!({"name": "missing", "command": ["/no/such/program"]})).await);
    assert_eq!(k, "not_found", "as for exec: command_not_found");
    assert_eq!(
        procs_become(&sock, &id, "sleep 600", 0).await,
        0,
        "the silent check was killed"
    );
    assert_eq!(
        procs_become(&sock, &id, "yes", 0).await,
        0,
        "the floods were killed"
    );
    let (_, l) = json_call(
        &sock,
        "GET",
        "/v1/sandboxes/mcphost/mcp-servers",
        Value::Null,
    )
    .await;
    assert_eq!(l["servers"].as_array().unwrap().len(), 1, "{l}");
    let (s, _) = json_call(
        &sock,
        "POST",
        "/v1/sandboxes/nope/mcp-servers",
        spec.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = json_call(&sock, "GET", "/v1/sandboxes/nope/mcp-servers", Value::Null).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = json_call(
        &sock,
        "DELETE",
        "/v1/sandboxes/mcphost/mcp-servers/other",
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = json_call(
        &sock,
        "DELETE",
        "/v1/sandboxes/mcphost/mcp-servers/a%20b",
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Stop the server: its sessions' processes go, the endpoint is 404.
    let a = client(&sock, &endpoint).await;
    assert_eq!(tool_ok(&a, "counter", json!({})).await, 1);
    let (s, _) = json_call(
        &sock,
        "DELETE",
        "/v1/sandboxes/mcphost/mcp-servers/py",
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let r = a.call_tool(CallToolRequestParams::new("counter")).await;
    assert!(r.is_err(), "{r:?}");
    drop(a);
    let (s, _) = raw(&sock, "POST", &endpoint, &MCP_HEADERS, init_msg()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Destroy with a live session: no process is left, on the host either.
    let (s, _) = json_call(
        &sock,
        "POST",
        "/v1/sandboxes/mcphost/mcp-servers",
        spec.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let a = client(&sock, &endpoint).await;
    assert_eq!(tool_ok(&a, "counter", json!({})).await, 1);
    assert_eq!(host_procs_become("/srv/server.py", 1).await, 1);
    let (s, _) = json_call(&sock, "DELETE", &format!("/v1/sandboxes/{id}"), Value::Null).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = raw(&sock, "POST", &endpoint, &MCP_HEADERS, init_msg()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    drop(a);
    assert_eq!(host_procs_become("/srv/server.py", 0).await, 0);

    let _ = daemon.stop.send(());
    tokio::time::timeout(Duration::from_secs(30), daemon.task)
        .await
        .expect("shutdown is prompt")
        .unwrap()
        .expect("a clean shutdown");
    hull_testkit::assert_host_clean(&state, &instance);
}
