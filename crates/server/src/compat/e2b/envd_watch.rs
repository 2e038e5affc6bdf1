//! envd's directory watches (`filesystem.Filesystem`), on hull's file
//! watch ([`Runtime::watch_dir`](hull_runtime::Runtime::watch_dir)):
//!
//! - `WatchDir` (server streaming; what the async SDK's `watch_dir`
//!   calls): a `start` event once the directory is watched, then one
//!   `filesystem` event per change (top-level oneof fields of
//!   `WatchDirResponse`), keepalives while idle
//!   (`Keepalive-Ping-Interval`), until the client goes away or the
//!   call's `connect-timeout-ms` passes (`deadline_exceeded`, as envd);
//! - `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher` (unary
//!   polling; what the sync SDK's `watch_dir` and `WatchHandle` call):
//!   the events of a watcher wait here between polls.
//!
//! Event types are envd's (`EVENT_TYPE_CREATE`, `_WRITE`, `_REMOVE`,
//! `_RENAME`, `_CHMOD`) with names relative to the watched directory.
//!
//! Limits: a polled watcher keeps at most [`MAX_PENDING`] events between
//! polls (past it new events are dropped, as hull's own `overflow`s are:
//! envd has no event type to report a loss); one not polled for
//! [`IDLE_EXPIRY`] is removed, ending its watch. Watches per sandbox are
//! bounded by the guest (`resource_exhausted`). `include_entry` is not
//! served (hull reports envd 0.5.7, below the 0.6.3 the SDK requires for
//! it, so the SDK refuses it first); `allow_network_mounts` is accepted
//! and changes nothing (hull watches any mount inotify supports).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hull_api::FileWatchEvent;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connect::{self, Code, Item, RpcError};
use super::{E2b, sandbox_path};

/// Events a polled watcher keeps between polls.
pub(crate) const MAX_PENDING: usize = 4096;
/// A polled watcher nobody asked for events this long is removed.
pub(crate) const IDLE_EXPIRY: Duration = Duration::from_secs(600);
/// Bounds of the `Keepalive-Ping-Interval` header, seconds.
const KEEPALIVE_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchRequest {
    #[serde(default)]
    path: String,
    #[serde(default)]
    recursive: bool,
    #[serde(default, alias = "include_entry")]
    include_entry: bool,
    #[serde(default, alias = "allow_network_mounts")]
    #[allow(dead_code)]
    allow_network_mounts: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatcherRequest {
    #[serde(default, alias = "watcher_id")]
    watcher_id: String,
}

/// One polled watcher.
struct Watcher {
    sid: String,
    inner: Mutex<Pending>,
    /// Woken by `RemoveWatcher`: the collector ends the watch at once.
    stop: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    events: VecDeque<Value>,
    /// How the watch ended, once it has.
    ended: Option<RpcError>,
    last_poll: Option<Instant>,
}

/// The polled watchers of this transport, by id.
#[derive(Default)]
pub(crate) struct Watchers {
    map: Mutex<HashMap<String, Arc<Watcher>>>,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Watcher>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Drop the watchers of a destroyed sandbox (their relays end with it).
    pub(crate) fn forget_sandbox(&self, sid: &str) {
        self.lock().retain(|_, w| w.sid != sid);
    }
}

impl Watcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// envd's `FilesystemEvent` for one of hull's events (none for
/// `overflow`: envd has no such type).
fn envd_event(ev: &FileWatchEvent) -> Option<Value> {
    let (ty, name) = match ev {
        FileWatchEvent::Create { name, .. } => ("EVENT_TYPE_CREATE", name),
        FileWatchEvent::Write { name, .. } => ("EVENT_TYPE_WRITE", name),
        FileWatchEvent::Remove { name, .. } => ("EVENT_TYPE_REMOVE", name),
        FileWatchEvent::Rename { name, .. } => ("EVENT_TYPE_RENAME", name),
        FileWatchEvent::Chmod { name, .. } => ("EVENT_TYPE_CHMOD", name),
        FileWatchEvent::Overflow | FileWatchEvent::Error { .. } => return None,
    };
    Some(json!({"name": name, "type": ty}))
}

async fn open(
    s: &E2b,
    sid: &str,
    r: &WatchRequest,
    user: Option<&str>,
) -> Result<mpsc::Receiver<FileWatchEvent>, RpcError> {
    if r.include_entry {
        return Err(RpcError::new(
            Code::Unimplemented,
            "include_entry is not supported by hull's E2B layer (watch events carry the name and type only)",
        ));
    }
    let path = sandbox_path(&r.path, user)?;
    Ok(s.app.rt.watch_dir(sid, &path, r.recursive).await?)
}

/// `WatchDir`: the server-streaming watch.
pub(crate) async fn watch_dir(s: E2b, sid: String, user: Option<String>, req: Request) -> Response {
    if let Err(r) = connect::check_request(req.headers(), true) {
        return r;
    }
    let keepalive = req
        .headers()
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| KEEPALIVE_RANGE.contains(v))
        .map(Duration::from_secs);
    let deadline = match connect::timeout_ms(req.headers()) {
        Ok(t) => t.map(|ms| Instant::now() + Duration::from_millis(ms)),
        Err(e) => return connect::stream_error(e),
    };
    let r: WatchRequest = match connect::stream_request(req.into_body()).await {
        Ok(r) => r,
        Err(e) => return connect::stream_error(e),
    };
    let mut events = match open(&s, &sid, &r, user.as_deref()).await {
        Ok(rx) => rx,
        Err(e) => return connect::stream_error(e),
    };
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        if tx.send(Item::Msg(json!({"start": {}}))).await.is_err() {
            return;
        }
        let mut tick = keepalive.map(|d| {
            let mut i = tokio::time::interval_at(Instant::now() + d, d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                // The client went away: dropping `events` ends the watch.
                () = tx.closed() => return,
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let _ = tx.send(Item::End(Some(RpcError::new(
                        Code::DeadlineExceeded,
                        "the watch's timeout passed",
                    )))).await;
                    return;
                }
                _ = async {
                    match &mut tick {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    if tx.send(Item::Msg(json!({"keepalive": {}}))).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let item = match ev {
                Some(FileWatchEvent::Error { error }) => Item::End(Some(error.into())),
                Some(ev) => match envd_event(&ev) {
                    Some(v) => Item::Msg(json!({"filesystem": v})),
                    None => continue,
                },
                None => Item::End(None),
            };
            let last = matches!(item, Item::End(_));
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    connect::stream_response(out)
}

/// The unary watcher calls.
pub(crate) async fn unary(
    s: &E2b,
    sid: &str,
    method: &str,
    user: Option<&str>,
    body: axum::body::Body,
) -> Result<Value, RpcError> {
    match method {
        "CreateWatcher" => {
            let r: WatchRequest = connect::unary_request(body).await?;
            let events = open(s, sid, &r, user).await?;
            let id = watcher_id()?;
            let w = Arc::new(Watcher {
                sid: sid.to_string(),
                inner: Mutex::new(Pending {
                    last_poll: Some(Instant::now()),
                    ..Pending::default()
                }),
                stop: tokio::sync::Notify::new(),
            });
            s.watchers.lock().insert(id.clone(), w.clone());
            tokio::spawn(collect(s.watchers.clone(), id.clone(), w, events));
            Ok(json!({"watcherId": id}))
        }
        "GetWatcherEvents" => {
            let r: WatcherRequest = connect::unary_request(body).await?;
            let w = find(s, sid, &r.watcher_id)?;
            let mut p = w.lock();
            p.last_poll = Some(Instant::now());
            if p.events.is_empty()
                && let Some(e) = p.ended.clone()
            {
                drop(p);
                s.watchers.lock().remove(&r.watcher_id);
                return Err(e);
            }
            let events: Vec<Value> = p.events.drain(..).collect();
            Ok(json!({"events": events}))
        }
        "RemoveWatcher" => {
            let r: WatcherRequest = connect::unary_request(body).await?;
            let w = find(s, sid, &r.watcher_id)?;
            s.watchers.lock().remove(&r.watcher_id);
            // The collector ends, dropping the watch.
            w.stop.notify_one();
            Ok(json!({}))
        }
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem/{other} is not a method hull serves"),
        )),
    }
}

fn find(s: &E2b, sid: &str, id: &str) -> Result<Arc<Watcher>, RpcError> {
    match s.watchers.lock().get(id) {
        Some(w) if w.sid == sid => Ok(w.clone()),
        _ => Err(RpcError::new(
            Code::NotFound,
            format!(
                "watcher {id:?} not found in sandbox {sid} (removed, expired after {} s without polls, or never created)",
                IDLE_EXPIRY.as_secs()
            ),
        )),
    }
}

fn watcher_id() -> Result<String, RpcError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| {
        RpcError::new(
            Code::Internal,
            format!("no randomness for a watcher id: {e}"),
        )
    })?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Keep a polled watcher's events until it is removed, expires, or its
/// watch ends.
async fn collect(
    table: Arc<Watchers>,
    id: String,
    w: Arc<Watcher>,
    mut events: mpsc::Receiver<FileWatchEvent>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let still_listed = || table.lock().get(&id).is_some_and(|x| Arc::ptr_eq(x, &w));
        tokio::select! {
            ev = events.recv() => {
                let mut p = w.lock();
                match ev {
                    Some(FileWatchEvent::Error { error }) => {
                        p.ended = Some(error.into());
                        return;
                    }
                    Some(ev) => {
                        if let Some(v) = envd_event(&ev)
                            && p.events.len() < MAX_PENDING
                        {
                            p.events.push_back(v);
                        }
                    }
                    None => {
                        p.ended = Some(RpcError::new(Code::Unavailable, "the watch ended"));
                        return;
                    }
                }
            }
            () = w.stop.notified() => return,
            _ = tick.tick() => {
                if !still_listed() {
                    return;
                }
                let idle = w.lock().last_poll.is_none_or(|t| t.elapsed() > IDLE_EXPIRY);
                if idle {
                    table.lock().remove(&id);
                    return;
                }
            }
        }
    }
}
