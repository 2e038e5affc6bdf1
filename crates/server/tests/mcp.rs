//! The daemon's `/mcp` endpoint with rmcp's own streamable-HTTP client over
//! the real unix socket: tool list and schemas, sandbox lifecycle, exec,
//! shell sessions, the code interpreter, files, snapshots, and errors as
//! tool errors; over TCP
//! the bearer token is required.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::http::StatusCode;
use common::{guest_binary, privileged, send, state_dir, unix_call};
use hull_api::Limits;
use hull_server::{ServeError, ServerConfig};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, UnixSocketHttpClient};
use serde_json::{Value, json};

const TOOLS: [&str; 20] = [
    "browser_action",
    "browser_open",
    "browser_restart",
    "browser_screenshot",
    "code_contexts",
    "code_restart",
    "code_run",
    "exec",
    "file_list",
    "file_read",
    "file_write",
    "fork",
    "rollback",
    "sandbox_create",
    "sandbox_destroy",
    "sandbox_inspect",
    "sandbox_list",
    "shell_run",
    "snapshot_create",
    "snapshot_list",
];

async fn start(state: &Path, sock: &Path, listen: std::net::SocketAddr) -> Daemon {
    let cfg = ServerConfig {
        state_dir: state.to_path_buf(),
        socket: sock.to_path_buf(),
        listen: Some(listen),
        guest_binary: guest_binary(),
        defaults: Limits::default(),
        snapshots: Default::default(),
        max_upload_bytes: 1 << 20,
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

struct Daemon {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

type Client = RunningService<RoleClient, ClientConfig>;

async fn call(c: &Client, tool: &'static str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    c.call_tool(CallToolRequestParams::new(tool).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// A successful call's structured content.
async fn ok(c: &Client, tool: &'static str, args: Value) -> Value {
    let r = call(c, tool, args.clone()).await;
    assert_ne!(r.is_error, Some(true), "{tool} {args}: {r:?}");
    r.structured_content.expect("structured content")
}

/// A failed call's error kind.
async fn err(c: &Client, tool: &'static str, args: Value) -> String {
    let r = call(c, tool, args.clone()).await;
    assert_eq!(r.is_error, Some(true), "{tool} {args}: {r:?}");
    r.structured_content.expect("structured error")["error"]["kind"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_over_streamable_http() {
    if !privileged("mcp_tools_over_streamable_http") {
        return;
    }
    let dir = state_dir("hull-mcp");
    let state = dir.path().join("state");
    let sock = dir.path().join("run/hull.sock");
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let daemon = start(&state, &sock, addr).await;
    let (_, b) = unix_call(&sock, "GET", "/v1/info", "").await;
    let instance = serde_json::from_slice::<Value>(&b).unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_string();

    let uri = "http://hull/mcp";
    let transport = StreamableHttpClientTransport::with_client(
        UnixSocketHttpClient::new(sock.to_str().unwrap(), uri),
        StreamableHttpClientTransportConfig::with_uri(uri),
    );
    let c = ClientConfig::default().serve(transport).await.unwrap();
    let info = c.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("hull")
    );

    // Every tool, each with an object schema and a description.
    let tools = c.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, TOOLS);
    for t in &tools {
        assert_eq!(
            t.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            t.name
        );
        assert!(t.description.as_deref().is_some_and(|d| d.len() > 20));
    }

    // A busybox sandbox: exec, files, snapshot, fork, rollback.
    let sb = ok(
        &c,
        "sandbox_create",
        json!({"template": "busybox", "memory": "256M", "labels": {"t": "mcp"}}),
    )
    .await;
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["state"], "running");
    assert_eq!(sb["limits"]["memory_bytes"], 256 << 20);
    let r = ok(&c, "exec", json!({"sandbox": id, "argv": ["echo", "hi"]})).await;
    assert_eq!(
        (r["stdout"].as_str(), r["exit_code"].as_i64()),
        (Some("hi\n"), Some(0))
    );
    let r = ok(
        &c,
        "exec",
        json!({"sandbox": id, "command": "cat; echo err >&2; exit 3", "stdin": "in"}),
    )
    .await;
    assert_eq!(
        (
            r["stdout"].as_str(),
            r["stderr"].as_str(),
            r["exit_code"].as_i64()
        ),
        (Some("in"), Some("err\n"), Some(3))
    );
    let listed = ok(&c, "sandbox_list", json!({"labels": {"t": "mcp"}})).await;
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 1);

    let f = ok(
        &c,
        "file_write",
        json!({"sandbox": id, "path": "/tmp/a.txt", "content": "hello\n"}),
    )
    .await;
    assert_eq!(f["size"], 6);
    let r = ok(
        &c,
        "file_read",
        json!({"sandbox": id, "path": "/tmp/a.txt"}),
    )
    .await;
    assert_eq!(
        (r["content"].as_str(), r["encoding"].as_str()),
        (Some("hello\n"), Some("utf8"))
    );
    ok(&c, "file_write", json!({"sandbox": id, "path": "/tmp/b.bin", "content": "/wA=", "encoding": "base64", "mode": "0600"})).await;
    let r = ok(
        &c,
        "file_read",
        json!({"sandbox": id, "path": "/tmp/b.bin"}),
    )
    .await;
    assert_eq!(
        (r["content"].as_str(), r["encoding"].as_str()),
        (Some("/wA="), Some("base64"))
    );
    let l = ok(&c, "file_list", json!({"sandbox": id, "path": "/tmp"})).await;
    assert_eq!(l["entries"].as_array().unwrap().len(), 2, "{l}");

    let snap = ok(
        &c,
        "snapshot_create",
        json!({"sandbox": id, "name": "mcp-snap"}),
    )
    .await;
    assert_eq!(snap["sandbox"], id.as_str());
    let snaps = ok(&c, "snapshot_list", json!({})).await;
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 1);
    ok(
        &c,
        "exec",
        json!({"sandbox": id, "command": "rm /tmp/a.txt"}),
    )
    .await;
    let rb = ok(
        &c,
        "rollback",
        json!({"sandbox": id, "snapshot": "mcp-snap"}),
    )
    .await;
    assert_eq!(rb["id"], id.as_str());
    let r = ok(
        &c,
        "file_read",
        json!({"sandbox": id, "path": "/tmp/a.txt"}),
    )
    .await;
    assert_eq!(r["content"], "hello\n", "rolled back");
    let forked = ok(&c, "fork", json!({"snapshot": "mcp-snap", "n": 2})).await;
    let forks: Vec<String> = forked["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(forks.len(), 2);
    let r = ok(
        &c,
        "exec",
        json!({"sandbox": forks[1], "argv": ["cat", "/tmp/a.txt"]}),
    )
    .await;
    assert_eq!(r["stdout"], "hello\n");

    // A host sandbox: a shell session keeps its cwd and variables.
    let host = ok(
        &c,
        "sandbox_create",
        json!({"template": "host", "name": "mcp-host"}),
    )
    .await;
    let r = ok(
        &c,
        "shell_run",
        json!({"sandbox": "mcp-host", "command": "cd /tmp && X=42"}),
    )
    .await;
    assert_eq!(
        (r["exit_code"].as_i64(), r["cwd"].as_str()),
        (Some(0), Some("/tmp"))
    );
    let r = ok(
        &c,
        "shell_run",
        json!({"sandbox": "mcp-host", "command": "echo $X; pwd"}),
    )
    .await;
    assert_eq!(r["output"].as_str().unwrap().trim(), "42\n/tmp", "{r}");
    let r = ok(
        &c,
        "shell_run",
        json!({"sandbox": "mcp-host", "command": "sleep 30", "timeout_ms": 300}),
    )
    .await;
    assert_eq!(r["timed_out"], true);
    let r = ok(
        &c,
        "shell_run",
        json!({"sandbox": "mcp-host", "session": "other", "command": "echo ${X:-unset}"}),
    )
    .await;
    assert_eq!(
        r["output"].as_str().unwrap().trim(),
        "unset",
        "sessions are separate"
    );

    // The code interpreter (python3-ipykernel on the host): state persists
    // in a context, images are image content, a traceback is text without
    // colours, a timeout keeps the state; bad input is a tool error.
    let code = |args: Value| {
        let c = &c;
        async move {
            let r = call(c, "code_run", args.clone()).await;
            assert_ne!(r.is_error, Some(true), "code_run {args}: {r:?}");
            r
        }
    };
    let text = |r: &CallToolResult| {
        r.content[0]
            .as_text()
            .map(|t| t.text.clone())
            .unwrap_or_default()
    };
    let r = code(json!({"sandbox": "mcp-host", "code": "y = 6 * 7\nprint('set')"})).await;
    assert_eq!(text(&r), "set\n");
    let r = code(json!({"sandbox": "mcp-host", "code": "y"})).await;
    assert_eq!(text(&r), "42");
    assert_eq!(
        r.structured_content.unwrap()["results"][0]["text/plain"],
        "42"
    );
    let png = "89504e470d0a1a0a0000000d4948445200000001000000010806000000\
               1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082";
    let r = code(json!({"sandbox": "mcp-host", "code": format!(
        "from IPython.display import Image, display\ndisplay(Image(data=bytes.fromhex('{png}')))")}))
    .await;
    let image = r
        .content
        .iter()
        .find_map(|c| c.as_image())
        .expect("an image");
    assert_eq!(image.mime_type, "image/png");
    assert!(image.data.starts_with("iVBORw0KGgo"), "{}", image.data);
    let structured = r.structured_content.unwrap().to_string();
    assert!(
        !structured.contains("iVBORw0KGgo"),
        "no base64 twice: {structured}"
    );
    let r = code(json!({"sandbox": "mcp-host", "code": "1/0"})).await;
    assert!(
        text(&r).contains("ZeroDivisionError: division by zero"),
        "{}",
        text(&r)
    );
    assert!(!text(&r).contains('\u{1b}'), "no ANSI colours");
    let r = code(
        json!({"sandbox": "mcp-host", "code": "import time; time.sleep(30)", "timeout_ms": 500}),
    )
    .await;
    assert_eq!(r.structured_content.unwrap()["timed_out"], true);
    let r = code(json!({"sandbox": "mcp-host", "code": "y", "context": "second"})).await;
    assert!(
        text(&r).contains("NameError"),
        "contexts are separate: {}",
        text(&r)
    );
    let r = ok(&c, "code_contexts", json!({"sandbox": "mcp-host"})).await;
    let names: Vec<&str> = r["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["context"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "second"]);
    ok(&c, "code_restart", json!({"sandbox": "mcp-host"})).await;
    let r = code(json!({"sandbox": "mcp-host", "code": "y"})).await;
    assert!(text(&r).contains("NameError"), "restarted: {}", text(&r));
    for (args, kind) in [
        (json!({"sandbox": "nope", "code": "1"}), "not_found"),
        (
            json!({"sandbox": "mcp-host", "code": "1", "context": "../x"}),
            "invalid_argument",
        ),
        (
            json!({"sandbox": "mcp-host", "code": "1", "timeout_ms": 0}),
            "invalid_argument",
        ),
        (json!({"sandbox": "mcp-host"}), "invalid_argument"),
        (json!({"sandbox": id, "code": "1"}), "not_found"),
    ] {
        assert_eq!(err(&c, "code_run", args.clone()).await, kind, "{args}");
    }
    assert_eq!(
        err(
            &c,
            "code_restart",
            json!({"sandbox": "mcp-host", "context": "nope"})
        )
        .await,
        "not_found"
    );

    // The browser (Debian's chromium on the host, seen through the host
    // template): open a page, read it, a screenshot is image content, a
    // bad tab or a bad step is a tool error.
    let page = "data:text/html,<title>t</title><h1 id=h>hello from mcp</h1>";
    let r = ok(
        &c,
        "browser_open",
        json!({"sandbox": "mcp-host", "url": page}),
    )
    .await;
    let tab = r["tab"]["id"].as_str().expect("a tab id").to_owned();
    let r = ok(
        &c,
        "browser_action",
        json!({"sandbox": "mcp-host", "action": {"type": "text", "tab": tab}}),
    )
    .await;
    assert!(
        r["text"].as_str().unwrap().contains("hello from mcp"),
        "{r}"
    );
    let r = call(
        &c,
        "browser_screenshot",
        json!({"sandbox": "mcp-host", "tab": tab}),
    )
    .await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let img = r
        .content
        .iter()
        .find_map(|c| c.as_image())
        .expect("an image content block");
    assert_eq!(img.mime_type, "image/png");
    assert!(img.data.starts_with("iVBORw0KGgo"), "a PNG in base64");
    assert_eq!(
        err(
            &c,
            "browser_action",
            json!({"sandbox": "mcp-host", "action": {"type": "text", "tab": "no-such-tab"}})
        )
        .await,
        "not_found"
    );
    assert_eq!(
        err(
            &c,
            "browser_action",
            json!({"sandbox": "mcp-host", "action": {"type": "click", "tab": tab, "selector": "(("}})
        )
        .await,
        "invalid_argument"
    );
    ok(&c, "browser_restart", json!({"sandbox": "mcp-host"})).await;

    // Errors are tool errors carrying the API's kind; the session survives.
    assert_eq!(
        err(&c, "sandbox_inspect", json!({"sandbox": "nope"})).await,
        "not_found"
    );
    assert_eq!(
        err(&c, "exec", json!({"sandbox": "nope", "argv": ["true"]})).await,
        "not_found"
    );
    assert_eq!(
        err(&c, "exec", json!({"sandbox": id})).await,
        "invalid_argument"
    );
    assert_eq!(
        err(&c, "exec", json!({"sandbox": id, "argv": "true"})).await,
        "invalid_argument"
    );
    assert_eq!(
        err(&c, "sandbox_inspect", json!({"sandbox": id, "extra": 1})).await,
        "invalid_argument"
    );
    assert_eq!(
        err(&c, "sandbox_create", json!({"memory": "lots"})).await,
        "invalid_argument"
    );
    assert_eq!(
        err(&c, "file_read", json!({"sandbox": id, "path": "relative"})).await,
        "invalid_argument"
    );
    assert_eq!(
        err(
            &c,
            "file_write",
            json!({"sandbox": id, "path": "/x", "content": "!", "encoding": "base64"})
        )
        .await,
        "invalid_argument"
    );
    assert_eq!(
        err(&c, "shell_run", json!({"sandbox": id, "command": "true"})).await,
        "not_found",
        "busybox has no bash"
    );
    assert!(
        c.call_tool(CallToolRequestParams::new("no_such_tool"))
            .await
            .is_err()
    );
    ok(&c, "sandbox_inspect", json!({"sandbox": id})).await;

    for s in [
        id.as_str(),
        host["id"].as_str().unwrap(),
        &forks[0],
        &forks[1],
    ] {
        let r = ok(&c, "sandbox_destroy", json!({"sandbox": s})).await;
        assert_eq!(r["destroyed"], s);
    }
    assert_eq!(
        err(&c, "sandbox_destroy", json!({"sandbox": id})).await,
        "not_found"
    );
    c.cancel().await.unwrap();

    // TCP: the token is required on /mcp as on every API route.
    let token = std::fs::read_to_string(state.join("token")).unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}});
    let post = |auth: Option<String>| {
        let body = serde_json::to_vec(&init).unwrap();
        async move {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut h = vec![
                ("content-type", "application/json".to_string()),
                ("accept", "application/json, text/event-stream".to_string()),
            ];
            if let Some(a) = auth {
                h.push(("authorization", a));
            }
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(s, "POST", "/mcp", &h, body).await
        }
    };
    let (s, b) = post(None).await;
    assert_eq!(
        (s, common::error_kind(&b).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    assert_eq!(
        post(Some("Bearer nope".into())).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, b) = post(Some(format!("Bearer {token}"))).await;
    let text = String::from_utf8_lossy(&b);
    assert_eq!(s, StatusCode::OK, "{text}");
    assert!(text.contains("\"serverInfo\""), "{text}");

    let (s, _) = unix_call(&sock, "POST", "/v1/system/reset", "").await;
    assert_eq!(s, StatusCode::OK);
    let _ = daemon.stop.send(());
    tokio::time::timeout(Duration::from_secs(30), daemon.task)
        .await
        .expect("shutdown is prompt")
        .unwrap()
        .expect("a clean shutdown");
    hull_testkit::assert_host_clean(&state, &instance);
}
