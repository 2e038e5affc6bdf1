//! envd's `process.Process` service (Connect RPC, JSON) on hull's
//! processes: `Start`, `Connect`, `List`, `SendInput`, `StreamInput`,
//! `CloseStdin`, `SendSignal`, `Update` (PTY size).
//!
//! E2B keys processes by pid and lets them outlive the stream that started
//! them (`background=True`, `disconnect()`, `commands.connect(pid)`), so
//! `Start` is hull's background exec plus an attach that replays its
//! output: the process survives a client that goes away, and
//! [`Table`] keeps, per running process, one relay that holds the attach's
//! stdin and fans its output out to every stream following it. A command
//! started with `stdin=True` (and no PTY) is a foreground exec instead,
//! since hull's background processes have no stdin pipe: the relay holds
//! its stream, so it too outlives its client, but not a daemon restart.
//! Processes
//! hull started otherwise (its REST API, or before a daemon restart) are
//! found by pid and attached on demand. A `connect-timeout-ms` on `Start`
//! is the command's timeout: the guest kills its process group, and the
//! stream ends with `deadline_exceeded`, as envd does. Limits: output is
//! relayed at the pace of the slowest follower; a relay exists only while
//! its process runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hull_api::{ExecClientMessage, ExecEvent, ExecRequest, ExecResult};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::E2b;
use super::connect::{self, Code, Item, RpcError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Bounds of the `Keepalive-Ping-Interval` header, seconds.
const KEEPALIVE_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;

/// One running process as the adapter follows it.
pub(crate) struct Relay {
    hull_id: String,
    pid: u32,
    tag: Option<String>,
    /// `ProcessConfig` as the client gave it (for `List`).
    config: Value,
    pty: bool,
    input: mpsc::Sender<ExecClientMessage>,
    followers: Mutex<Vec<mpsc::Sender<ExecEvent>>>,
}

impl Relay {
    fn follow(&self) -> mpsc::Receiver<ExecEvent> {
        let (tx, rx) = mpsc::channel(64);
        self.followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }
}

/// The relays of running processes, by (sandbox id, pid).
#[derive(Default)]
pub(crate) struct Table {
    relays: Mutex<HashMap<(String, u32), Arc<Relay>>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Arc<Relay>>> {
        self.relays.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn get(&self, sid: &str, pid: u32) -> Option<Arc<Relay>> {
        self.lock().get(&(sid.to_string(), pid)).cloned()
    }
    fn by_tag(&self, sid: &str, tag: &str) -> Option<Arc<Relay>> {
        self.lock()
            .iter()
            .find(|((s, _), r)| s == sid && r.tag.as_deref() == Some(tag))
            .map(|(_, r)| r.clone())
    }
    /// Drop what is known of a destroyed sandbox.
    pub(crate) fn forget_sandbox(&self, sid: &str) {
        self.lock().retain(|(s, _), _| s != sid);
    }
}

/// Start relaying `stream` for `relay`; it leaves the table when the
/// process ends.
fn spawn_relay(
    table: Arc<Table>,
    sid: String,
    relay: Arc<Relay>,
    mut events: mpsc::Receiver<ExecEvent>,
) {
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if matches!(ev, ExecEvent::Started { .. }) {
                continue;
            }
            let last = matches!(ev, ExecEvent::Exit(_) | ExecEvent::Error { .. });
            let followers: Vec<_> = relay
                .followers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for f in followers {
                if f.send(ev.clone()).await.is_err() {
                    relay
                        .followers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|x| !x.same_channel(&f));
                }
            }
            if last {
                break;
            }
        }
        let mut t = table.lock();
        let key = (sid, relay.pid);
        if t.get(&key).is_some_and(|r| Arc::ptr_eq(r, &relay)) {
            t.remove(&key);
        }
    });
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessConfig {
    #[serde(default)]
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Size {
    #[serde(default, deserialize_with = "connect::lenient_u32::deserialize")]
    cols: Option<u32>,
    #[serde(default, deserialize_with = "connect::lenient_u32::deserialize")]
    rows: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct Pty {
    #[serde(default)]
    size: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
struct StartRequest {
    #[serde(default)]
    process: Option<ProcessConfig>,
    #[serde(default)]
    pty: Option<Pty>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    stdin: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct Selector {
    #[serde(default, deserialize_with = "connect::lenient_u32::deserialize")]
    pid: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct SelectorRequest {
    #[serde(default)]
    process: Option<Selector>,
}

#[derive(Debug, Default, Deserialize)]
struct Input {
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct SendInputRequest {
    #[serde(default)]
    process: Option<Selector>,
    #[serde(default)]
    input: Option<Input>,
}

#[derive(Debug, Default, Deserialize)]
struct SendSignalRequest {
    #[serde(default)]
    process: Option<Selector>,
    #[serde(default)]
    signal: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct UpdateRequest {
    #[serde(default)]
    process: Option<Selector>,
    #[serde(default)]
    pty: Option<Pty>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamInputStart {
    #[serde(default)]
    process: Option<Selector>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamInputData {
    #[serde(default)]
    input: Option<Input>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamInputRequest {
    #[serde(default)]
    start: Option<StreamInputStart>,
    #[serde(default)]
    data: Option<StreamInputData>,
}

/// One `process.Process` call.
pub(crate) async fn call(
    s: E2b,
    sid: String,
    method: &str,
    user: Option<String>,
    req: Request,
) -> Response {
    let streaming = matches!(method, "Start" | "Connect" | "StreamInput");
    if let Err(r) = connect::check_request(req.headers(), streaming) {
        return r;
    }
    let keepalive = req
        .headers()
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| KEEPALIVE_RANGE.contains(v))
        .map(Duration::from_secs);
    let timeout = match connect::timeout_ms(req.headers()) {
        Ok(t) => t,
        Err(e) if streaming => return connect::stream_error(e),
        Err(e) => return e.into_response(),
    };
    let body = req.into_body();
    match method {
        "Start" => match connect::stream_request::<StartRequest>(body).await {
            Ok(r) => match start(&s, &sid, r, user, timeout).await {
                Ok((relay, rx)) => follow(relay, rx, keepalive, timeout.is_some()),
                Err(e) => connect::stream_error(e),
            },
            Err(e) => connect::stream_error(e),
        },
        "Connect" => {
            let r = match connect::stream_request::<SelectorRequest>(body).await {
                Ok(r) => r,
                Err(e) => return connect::stream_error(e),
            };
            match find(&s, &sid, r.process.as_ref()).await {
                Ok(relay) => {
                    let rx = relay.follow();
                    follow(relay, rx, keepalive, false)
                }
                Err(e) => connect::stream_error(e),
            }
        }
        "StreamInput" => stream_input(&s, &sid, body).await,
        _ => {
            let r = unary(&s, &sid, method, body).await;
            match r {
                Ok(v) => connect::unary_ok(&v),
                Err(e) => e.into_response(),
            }
        }
    }
}

async fn unary(
    s: &E2b,
    sid: &str,
    method: &str,
    body: axum::body::Body,
) -> Result<Value, RpcError> {
    match method {
        "List" => {
            let _: Value = connect::unary_request(body).await?;
            list(s, sid).await
        }
        "SendInput" => {
            let r: SendInputRequest = connect::unary_request(body).await?;
            let relay = find(s, sid, r.process.as_ref()).await?;
            send_input(&relay, r.input.as_ref()).await?;
            Ok(json!({}))
        }
        "CloseStdin" => {
            let r: SelectorRequest = connect::unary_request(body).await?;
            let relay = find(s, sid, r.process.as_ref()).await?;
            if relay.pty {
                return Err(RpcError::invalid(
                    "a PTY process has no stdin to close: send Ctrl-D (0x04) instead",
                ));
            }
            relay
                .input
                .send(ExecClientMessage::Eof)
                .await
                .map_err(|_| gone())?;
            Ok(json!({}))
        }
        "SendSignal" => {
            let r: SendSignalRequest = connect::unary_request(body).await?;
            let signal = parse_signal(r.signal.as_ref())?;
            let hull_id = hull_process(s, sid, r.process.as_ref()).await?;
            s.app.rt.signal_process(sid, &hull_id, signal).await?;
            Ok(json!({}))
        }
        "Update" => {
            let r: UpdateRequest = connect::unary_request(body).await?;
            let relay = find(s, sid, r.process.as_ref()).await?;
            let size = r.pty.and_then(|p| p.size).unwrap_or_default();
            let (Some(cols), Some(rows)) = (size.cols, size.rows) else {
                return Ok(json!({}));
            };
            if !relay.pty {
                return Err(RpcError::invalid("the process has no PTY to resize"));
            }
            let clamp = |v: u32| v.clamp(1, u32::from(u16::MAX)) as u16;
            relay
                .input
                .send(ExecClientMessage::Resize {
                    rows: clamp(rows),
                    cols: clamp(cols),
                })
                .await
                .map_err(|_| gone())?;
            Ok(json!({}))
        }
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("process.Process/{other} is not a method hull serves"),
        )),
    }
}

fn gone() -> RpcError {
    RpcError::new(Code::NotFound, "the process has ended")
}

/// A signal as proto3 JSON gives it: `"SIGNAL_SIGKILL"`, `"SIGKILL"` or a number.
fn parse_signal(v: Option<&Value>) -> Result<i32, RpcError> {
    let n = match v {
        Some(Value::String(s)) => match s.trim_start_matches("SIGNAL_") {
            "SIGKILL" => 9,
            "SIGTERM" => 15,
            "SIGINT" => 2,
            "SIGHUP" => 1,
            other => {
                return Err(RpcError::invalid(format!("unknown signal {other:?}")));
            }
        },
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    };
    if !(1..=64).contains(&n) {
        return Err(RpcError::invalid(
            "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM",
        ));
    }
    Ok(n as i32)
}

async fn start(
    s: &E2b,
    sid: &str,
    r: StartRequest,
    user: Option<String>,
    timeout_ms: Option<u64>,
) -> Result<(Arc<Relay>, mpsc::Receiver<ExecEvent>), RpcError> {
    let p = r
        .process
        .ok_or_else(|| RpcError::invalid("process is required"))?;
    if p.cmd.is_empty() {
        return Err(RpcError::invalid("process.cmd must not be empty"));
    }
    if let Some(t) = &r.tag
        && s.procs.by_tag(sid, t).is_some()
    {
        return Err(RpcError::new(
            Code::AlreadyExists,
            format!("a process with tag {t:?} is running"),
        ));
    }
    let cwd = p
        .cwd
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| super::sandbox_path(c, user.as_deref()))
        .transpose()?;
    let config = json!({"cmd": p.cmd, "args": p.args, "envs": p.envs, "cwd": cwd});
    let pty = r.pty.is_some();
    let size = r.pty.and_then(|p| p.size).unwrap_or_default();
    let clamp = |v: Option<u32>| v.map(|v| v.clamp(1, u32::from(u16::MAX)) as u16);
    let mut cmd = vec![p.cmd];
    cmd.extend(p.args);
    let stdin = r.stdin.unwrap_or(false);
    // A background process has no stdin pipe (only a PTY's): a command
    // that takes stdin runs as a foreground exec whose stream the relay
    // holds, so it too outlives its client (not a daemon restart).
    let background = pty || !stdin;
    let req = ExecRequest {
        cmd,
        env: p.envs,
        cwd,
        user,
        timeout_seconds: timeout_ms.map(|ms| ms as f64 / 1000.0),
        tty: pty,
        rows: clamp(size.rows),
        cols: clamp(size.cols),
        background,
        ..Default::default()
    };
    let (hull_id, pid, stream) = if background {
        let started = s.app.rt.exec_background(sid, req).await?;
        let stream = s.app.rt.attach(sid, &started.id).await?;
        (started.id, started.pid, stream)
    } else {
        let mut stream = s.app.rt.exec_stream(sid, req).await?;
        match stream.events.recv().await {
            Some(ExecEvent::Started { id, pid }) => (id, pid, stream),
            Some(ExecEvent::Error { error }) => return Err(error.into()),
            _ => {
                return Err(RpcError::new(
                    Code::Internal,
                    "the process stream did not start with its pid",
                ));
            }
        }
    };
    let pid = u32::try_from(pid).unwrap_or(0);
    let relay = Arc::new(Relay {
        hull_id,
        pid,
        tag: r.tag,
        config,
        pty,
        input: stream.input,
        followers: Mutex::new(Vec::new()),
    });
    let rx = relay.follow();
    s.procs.lock().insert((sid.to_string(), pid), relay.clone());
    spawn_relay(
        s.procs.clone(),
        sid.to_string(),
        relay.clone(),
        stream.events,
    );
    Ok((relay, rx))
}

/// The relay of the selected process, attaching to it when the adapter
/// does not follow it yet.
async fn find(s: &E2b, sid: &str, sel: Option<&Selector>) -> Result<Arc<Relay>, RpcError> {
    let sel = sel.ok_or_else(|| RpcError::invalid("process selector (pid or tag) is required"))?;
    if let Some(tag) = &sel.tag {
        return s.procs.by_tag(sid, tag).ok_or_else(|| {
            RpcError::new(
                Code::NotFound,
                format!("no running process with tag {tag:?}"),
            )
        });
    }
    let pid = sel
        .pid
        .ok_or_else(|| RpcError::invalid("process selector (pid or tag) is required"))?;
    if let Some(r) = s.procs.get(sid, pid) {
        return Ok(r);
    }
    let info = s
        .app
        .rt
        .processes(sid)
        .await?
        .processes
        .into_iter()
        .find(|p| p.running && u32::try_from(p.pid).ok() == Some(pid))
        .ok_or_else(|| {
            RpcError::new(Code::NotFound, format!("process with pid {pid} not found"))
        })?;
    let stream = s.app.rt.attach(sid, &info.id).await?;
    let config = json!({
        "cmd": info.argv.first().cloned().unwrap_or_default(),
        "args": info.argv.iter().skip(1).collect::<Vec<_>>(),
    });
    let relay = Arc::new(Relay {
        hull_id: info.id,
        pid,
        tag: None,
        config,
        pty: false,
        input: stream.input,
        followers: Mutex::new(Vec::new()),
    });
    // Two callers may attach at once: keep the first relay.
    let relay = {
        let mut t = s.procs.lock();
        t.entry((sid.to_string(), pid)).or_insert(relay).clone()
    };
    spawn_relay(
        s.procs.clone(),
        sid.to_string(),
        relay.clone(),
        stream.events,
    );
    Ok(relay)
}

/// hull's id of the selected process (for signals: no relay needed).
async fn hull_process(s: &E2b, sid: &str, sel: Option<&Selector>) -> Result<String, RpcError> {
    let sel = sel.ok_or_else(|| RpcError::invalid("process selector (pid or tag) is required"))?;
    if sel.tag.is_some() {
        return find(s, sid, Some(sel)).await.map(|r| r.hull_id.clone());
    }
    let pid = sel
        .pid
        .ok_or_else(|| RpcError::invalid("process selector (pid or tag) is required"))?;
    if let Some(r) = s.procs.get(sid, pid) {
        return Ok(r.hull_id.clone());
    }
    s.app
        .rt
        .processes(sid)
        .await?
        .processes
        .into_iter()
        .find(|p| p.running && u32::try_from(p.pid).ok() == Some(pid))
        .map(|p| p.id)
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("process with pid {pid} not found")))
}

async fn list(s: &E2b, sid: &str) -> Result<Value, RpcError> {
    let procs = s.app.rt.processes(sid).await?;
    let out: Vec<Value> = procs
        .processes
        .into_iter()
        .filter(|p| p.running)
        .map(|p| {
            let pid = u32::try_from(p.pid).unwrap_or(0);
            match s.procs.get(sid, pid) {
                Some(r) => {
                    let mut v = json!({"pid": pid, "config": r.config});
                    if let Some(t) = &r.tag {
                        v["tag"] = json!(t);
                    }
                    v
                }
                None => json!({
                    "pid": pid,
                    "config": {
                        "cmd": p.argv.first().cloned().unwrap_or_default(),
                        "args": p.argv.iter().skip(1).collect::<Vec<_>>(),
                    },
                }),
            }
        })
        .collect();
    Ok(json!({"processes": out}))
}

async fn send_input(relay: &Relay, input: Option<&Input>) -> Result<(), RpcError> {
    let input = input.ok_or_else(|| RpcError::invalid("input is required"))?;
    let b64 = match (&input.stdin, &input.pty) {
        (Some(d), None) | (None, Some(d)) => d,
        _ => return Err(RpcError::invalid("input must hold stdin or pty bytes")),
    };
    B64.decode(b64)
        .map_err(|_| RpcError::invalid("input bytes are not base64"))?;
    relay
        .input
        .send(ExecClientMessage::Stdin {
            data: None,
            data_b64: Some(b64.clone()),
        })
        .await
        .map_err(|_| gone())
}

/// `StreamInput`: a client stream of `start` (the process), then `data`
/// and `keepalive` messages, answered with one empty message.
async fn stream_input(s: &E2b, sid: &str, body: axum::body::Body) -> Response {
    let mut r = connect::EnvelopeReader::new(body);
    let mut relay: Option<Arc<Relay>> = None;
    let result: Result<(), RpcError> = async {
        while let Some(m) = r.next::<StreamInputRequest>().await? {
            if let Some(st) = m.start {
                relay = Some(find(s, sid, st.process.as_ref()).await?);
            } else if let Some(d) = m.data {
                let rl = relay
                    .as_ref()
                    .ok_or_else(|| RpcError::invalid("the first message must be start"))?;
                send_input(rl, d.input.as_ref()).await?;
            }
        }
        Ok(())
    }
    .await;
    let (tx, rx) = mpsc::channel(2);
    match result {
        Ok(()) => {
            let _ = tx.try_send(Item::Msg(json!({})));
            let _ = tx.try_send(Item::End(None));
        }
        Err(e) => {
            let _ = tx.try_send(Item::End(Some(e)));
        }
    }
    connect::stream_response(rx)
}

/// The `end` event of a process.
fn end_event(r: &ExecResult) -> Value {
    let (code, status) = match (r.exit_code, r.signal) {
        (Some(c), _) => (c, format!("exit status {c}")),
        (None, Some(9)) => (-1, "signal: killed".to_string()),
        (None, Some(15)) => (-1, "signal: terminated".to_string()),
        (None, Some(n)) => (-1, format!("signal: {n}")),
        (None, None) => (-1, "unknown".to_string()),
    };
    let mut end = json!({"exitCode": code, "exited": r.exit_code.is_some(), "status": status});
    if r.oom_killed {
        end["error"] = json!("killed by the out-of-memory killer (the sandbox's memory limit)");
    }
    json!({"event": {"end": end}})
}

/// Stream a relay's events to one client: `start`, output as `data`,
/// `end`; keepalives while idle. The client going away only stops this
/// stream; the process goes on.
fn follow(
    relay: Arc<Relay>,
    mut rx: mpsc::Receiver<ExecEvent>,
    keepalive: Option<Duration>,
    timed: bool,
) -> Response {
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        if tx
            .send(Item::Msg(json!({"event": {"start": {"pid": relay.pid}}})))
            .await
            .is_err()
        {
            return;
        }
        let mut tick = keepalive.map(|d| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = tx.closed() => return,
                _ = async {
                    match &mut tick {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    if tx.send(Item::Msg(json!({"event": {"keepalive": {}}}))).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let item = match ev {
                Some(ExecEvent::Stdout { data_b64, .. }) => {
                    let kind = if relay.pty { "pty" } else { "stdout" };
                    Item::Msg(json!({"event": {"data": {kind: data_b64}}}))
                }
                Some(ExecEvent::Stderr { data_b64, .. }) => {
                    Item::Msg(json!({"event": {"data": {"stderr": data_b64}}}))
                }
                Some(ExecEvent::Exit(r)) => {
                    let _ = tx.send(Item::Msg(end_event(&r))).await;
                    let err = (timed && r.timed_out).then(|| {
                        RpcError::new(
                            Code::DeadlineExceeded,
                            "the command's timeout passed: it was killed",
                        )
                    });
                    let _ = tx.send(Item::End(err)).await;
                    return;
                }
                Some(ExecEvent::Error { error }) => {
                    let _ = tx.send(Item::End(Some(error.into()))).await;
                    return;
                }
                Some(ExecEvent::Started { .. }) => continue,
                None => {
                    let _ = tx
                        .send(Item::End(Some(RpcError::new(
                            Code::Unavailable,
                            "the connection to the process ended before it did",
                        ))))
                        .await;
                    return;
                }
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    connect::stream_response(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_end_events() {
        assert_eq!(parse_signal(Some(&json!("SIGNAL_SIGKILL"))).unwrap(), 9);
        assert_eq!(parse_signal(Some(&json!("SIGNAL_SIGTERM"))).unwrap(), 15);
        assert_eq!(parse_signal(Some(&json!(9))).unwrap(), 9);
        for bad in [json!("SIGNAL_UNSPECIFIED"), json!(0), json!(99), json!("x")] {
            assert!(parse_signal(Some(&bad)).is_err(), "{bad}");
        }
        assert!(parse_signal(None).is_err());
        let e = end_event(&ExecResult {
            exit_code: Some(3),
            ..Default::default()
        });
        assert_eq!(e["event"]["end"]["exitCode"], 3);
        assert_eq!(e["event"]["end"]["status"], "exit status 3");
        let e = end_event(&ExecResult {
            signal: Some(9),
            ..Default::default()
        });
        assert_eq!(e["event"]["end"]["exitCode"], -1);
        assert_eq!(e["event"]["end"]["exited"], false);
    }
}
