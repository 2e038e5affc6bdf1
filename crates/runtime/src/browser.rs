//! The browser tool: one headless Chromium per sandbox, running *inside*
//! the sandbox (so under its network policy and limits) as a background
//! process of the guest agent, driven from the host over the Chrome
//! DevTools Protocol with `chromiumoxide`.
//!
//! CDP rides on the guest protocol's TCP streams (`Op::Connect` to
//! Chromium's loopback port), so the browser works on every substrate.
//! `chromiumoxide` connects by URL only, so each browser gets a one-shot
//! host forwarder: a listener on `127.0.0.1:0` that accepts exactly one
//! connection whose WebSocket request path is a random 128-bit token,
//! rewrites the path to Chromium's own and splices the bytes to a guest
//! tunnel, then closes. Chromium's unauthenticated `/json` endpoints are
//! never reachable from the host. The raw CDP route of the API opens its
//! own tunnel per client ([`Runtime::browser_cdp`]).
//!
//! The browser starts on first use (or `browser_start`); the end of its
//! DevTools connection or of its process marks it `crashed`, with the
//! reason, until `browser_restart`/`browser_start`/`browser_stop`. It
//! goes with the sandbox's processes: stop, destroy, rollback and failure
//! forget it ([`Browsers::forget`]). Outputs are bounded (see
//! `hull_api::browser`), and every action has a timeout.
//!
//! Limits: one browser per sandbox; a restarted daemon does not re-adopt a
//! browser still running in a sandbox (the next action reports it and
//! `restart` replaces it); `evaluate` runs the expression through an
//! indirect `eval` (global scope, completion value, promises awaited) so
//! that its result can be bounded inside the page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine;
use chromiumoxide::cdp::browser_protocol::accessibility::{
    AxNode as CdpAxNode, GetFullAxTreeParams,
};
use chromiumoxide::cdp::browser_protocol::input::InsertTextParams;
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, CaptureScreenshotParams, GetLayoutMetricsParams, Viewport,
};
use chromiumoxide::cdp::browser_protocol::target::{
    CloseTargetParams, CreateTargetParams, GetTargetsParams, TargetId,
};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::error::CdpError;
use chromiumoxide::handler::HandlerConfig;
use chromiumoxide::handler::viewport::Viewport as HandlerViewport;
use chromiumoxide::{Browser, Page};
use futures_util::StreamExt;
use hull_api::{
    ApiError, AxNode, BrowserAction, BrowserActionResult, BrowserState, BrowserStatus, BrowserTab,
    DEFAULT_BROWSER_TIMEOUT_MS, ErrorKind, MAX_AX_NODES, MAX_BROWSER_INPUT, MAX_BROWSER_TEXT,
    MAX_BROWSER_TIMEOUT_MS, MAX_SCREENSHOT_BYTES, MAX_SCREENSHOT_HEIGHT,
};
use hull_proto::ExecSpec;
use hull_proto::client::{ExecOutput, GuestClient};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::AbortHandle;

use crate::exec::keep_active;
use crate::{DuplexStream, Entry, Runtime, error_chain, guest_error, now};

/// How long Chromium may take to print its DevTools address.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the one-shot forwarder waits for chromiumoxide's connection,
/// and for its request head.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest WebSocket request head the forwarder reads.
const MAX_REQUEST_HEAD: usize = 8192;
/// Stderr kept from a launch for its error message.
const STDERR_TAIL: usize = 2048;
/// The viewport of every tab (CSS pixels).
pub const VIEWPORT: (u32, u32) = (1280, 720);
/// Widest full-page screenshot (the page is cut at the right).
const MAX_SCREENSHOT_WIDTH: u32 = 4096;
/// Nesting kept in an accessibility snapshot (deeper nodes are cut, so
/// the JSON stays within common parsers' recursion limits).
const MAX_AX_DEPTH: usize = 48;
/// Pages with more elements than this get no accessibility snapshot
/// (the full tree would cross the tunnel and sit in the daemon's memory).
const MAX_AX_ELEMENTS: u64 = 100_000;
/// How often `wait_for` looks for its selector.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// Longest tab id (CDP target ids are 32 hex digits).
const MAX_TAB_ID: usize = 128;

/// Chromium's flags: headless, no GPU, no first-run or background
/// traffic, its DevTools on a free loopback port. `--no-sandbox`: the
/// hull sandbox is the boundary, and Chromium's own sandbox needs user
/// namespaces and seccomp setups a hull sandbox does not grant.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=1280,720",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
];

/// The launcher run by `/bin/sh` in the sandbox: `$1` is the profile
/// directory, the rest Chromium's flags. It picks the first Chromium it
/// finds (Debian's real binary before its wrapper script, which needs
/// `/etc/chromium.d`), gives fontconfig a configuration where the sandbox
/// has none, and execs it, so the process is Chromium itself.
const LAUNCHER: &str = r#"d="$1"; shift
for b in /usr/lib/chromium/chromium /usr/bin/chromium /usr/bin/chromium-browser /usr/lib/chromium-browser/chromium-browser /usr/bin/google-chrome-stable /usr/bin/google-chrome /opt/google/chrome/chrome; do
  if [ -x "$b" ]; then
    mkdir -p "$d" || exit 1
    if [ ! -e /etc/fonts/fonts.conf ]; then
      printf '<?xml version="1.0"?>\n<fontconfig><dir>/usr/share/fonts</dir><dir>/usr/local/share/fonts</dir><cachedir>%s/fontconfig</cachedir></fontconfig>\n' "$d" > "$d/fonts.conf"
      export FONTCONFIG_FILE="$d/fonts.conf"
    fi
    exec "$b" "$@" "--user-data-dir=$d" about:blank
  fi
done
echo "hull-browser: no chromium" >&2
exit 127
"#;

/// The marker the launcher prints when it finds no Chromium.
const NO_CHROMIUM: &str = "hull-browser: no chromium";

/// A browser that runs (or ran) in a sandbox.
struct Live {
    /// The guest connection it was started over: a sandbox restarted since
    /// (rollback) has another, and this browser is gone with it.
    client: Weak<GuestClient>,
    process: String,
    pid: i32,
    /// Chromium's DevTools port and browser WebSocket path, in the sandbox.
    port: u16,
    ws_path: String,
    profile: String,
    version: String,
    started_at: u64,
    browser: Browser,
    /// Why it ended (set once, by whoever notices first).
    dead: Arc<Mutex<Option<String>>>,
    tasks: Vec<AbortHandle>,
}

impl Live {
    fn dead(&self) -> Option<String> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn mark_dead(&self, why: String) {
        let mut d = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(why);
        }
    }
    fn status(&self, id: &str, state: BrowserState, error: Option<String>) -> BrowserStatus {
        BrowserStatus {
            state,
            pid: Some(self.pid),
            process: Some(self.process.clone()),
            version: Some(self.version.clone()),
            started_at: Some(self.started_at),
            error,
            cdp_path: cdp_path(id),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One sandbox's browser slot; its lock serialises start, stop and restart.
#[derive(Default)]
struct Slot {
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

/// The browsers of all sandboxes, by sandbox id.
#[derive(Default)]
pub(crate) struct Browsers {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Browsers {
    fn slot(&self, id: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Drop what the daemon holds of a sandbox's browser (its processes
    /// are going or gone): the CDP connection and its tasks.
    pub(crate) fn forget(&self, id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

fn cdp_path(id: &str) -> String {
    format!("/v1/sandboxes/{id}/browser/cdp")
}

fn random_token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap_or_else(|_| {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = n.to_le_bytes();
    });
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `ws://127.0.0.1:PORT/devtools/browser/UUID` from Chromium's stderr.
fn parse_devtools_line(text: &str) -> Option<(u16, String)> {
    let at = text.find("DevTools listening on ws://")?;
    let rest = &text[at + "DevTools listening on ws://".len()..];
    let end = rest.find(char::is_whitespace)?;
    let url = &rest[..end];
    let slash = url.find('/')?;
    let (hostport, path) = url.split_at(slash);
    let port = hostport.rsplit(':').next()?.parse().ok()?;
    if !path.starts_with("/devtools/browser/") || path.len() > 200 {
        return None;
    }
    Some((port, path.to_string()))
}

fn check_text(what: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_BROWSER_INPUT {
        return Err(ApiError::invalid(format!(
            "{what} is {} bytes; the limit is {MAX_BROWSER_INPUT}",
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(ApiError::invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

fn check_selector(s: &str) -> Result<(), ApiError> {
    if s.trim().is_empty() {
        return Err(ApiError::invalid("selector is empty: give a CSS selector"));
    }
    check_text("the selector", s)
}

fn check_url(u: &str) -> Result<(), ApiError> {
    if u.trim().is_empty() {
        return Err(ApiError::invalid("url is empty"));
    }
    check_text("the url", u)
}

fn timeout_of(ms: Option<u64>) -> Result<Duration, ApiError> {
    let ms = ms.unwrap_or(DEFAULT_BROWSER_TIMEOUT_MS);
    if ms == 0 || ms > MAX_BROWSER_TIMEOUT_MS {
        return Err(ApiError::invalid(format!(
            "timeout_ms {ms} must be between 1 and {MAX_BROWSER_TIMEOUT_MS}"
        )));
    }
    Ok(Duration::from_millis(ms))
}

fn action_name(a: &BrowserAction) -> &'static str {
    match a {
        BrowserAction::Open { .. } => "open",
        BrowserAction::Navigate { .. } => "navigate",
        BrowserAction::Click { .. } => "click",
        BrowserAction::Type { .. } => "type",
        BrowserAction::Select { .. } => "select",
        BrowserAction::WaitFor { .. } => "wait_for",
        BrowserAction::Text { .. } => "text",
        BrowserAction::Accessibility { .. } => "accessibility",
        BrowserAction::Screenshot { .. } => "screenshot",
        BrowserAction::Evaluate { .. } => "evaluate",
        BrowserAction::Tabs {} => "tabs",
        BrowserAction::Close { .. } => "close",
    }
}

/// Validate an action before anything starts; returns its timeout.
fn validate(a: &BrowserAction) -> Result<Duration, ApiError> {
    let tab_ok = |t: &str| -> Result<(), ApiError> {
        if t.is_empty() {
            return Err(ApiError::invalid(
                "tab is empty: give a tab id from `open` or `tabs`",
            ));
        }
        Ok(())
    };
    match a {
        BrowserAction::Open { url, timeout_ms } => {
            if let Some(u) = url {
                check_url(u)?;
            }
            timeout_of(*timeout_ms)
        }
        BrowserAction::Navigate {
            tab,
            url,
            timeout_ms,
        } => {
            tab_ok(tab)?;
            check_url(url)?;
            timeout_of(*timeout_ms)
        }
        BrowserAction::Click {
            tab,
            selector,
            timeout_ms,
        }
        | BrowserAction::WaitFor {
            tab,
            selector,
            timeout_ms,
            ..
        } => {
            tab_ok(tab)?;
            check_selector(selector)?;
            timeout_of(*timeout_ms)
        }
        BrowserAction::Type {
            tab,
            selector,
            text,
            timeout_ms,
            ..
        } => {
            tab_ok(tab)?;
            check_selector(selector)?;
            check_text("the text", text)?;
            timeout_of(*timeout_ms)
        }
        BrowserAction::Select {
            tab,
            selector,
            values,
            timeout_ms,
        } => {
            tab_ok(tab)?;
            check_selector(selector)?;
            if values.len() > 1000 {
                return Err(ApiError::invalid("at most 1000 values"));
            }
            for v in values {
                check_text("a value", v)?;
            }
            timeout_of(*timeout_ms)
        }
        BrowserAction::Text { tab, selector } => {
            tab_ok(tab)?;
            if let Some(s) = selector {
                check_selector(s)?;
            }
            timeout_of(None)
        }
        BrowserAction::Accessibility { tab } | BrowserAction::Close { tab } => {
            tab_ok(tab)?;
            timeout_of(None)
        }
        BrowserAction::Screenshot {
            tab, timeout_ms, ..
        } => {
            tab_ok(tab)?;
            timeout_of(*timeout_ms)
        }
        BrowserAction::Evaluate {
            tab,
            expression,
            timeout_ms,
        } => {
            tab_ok(tab)?;
            if expression.trim().is_empty() {
                return Err(ApiError::invalid("expression is empty"));
            }
            check_text("the expression", expression)?;
            timeout_of(*timeout_ms)
        }
        BrowserAction::Tabs {} => timeout_of(None),
    }
}

/// A JavaScript call `(function)(args...)` with JSON arguments.
fn js_call(function: &str, args: &[Value]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    format!("({function})({})", args.join(","))
}

/// Looks the selector up: `{error: "bad_selector", message}`, or
/// `{found}` (with `visible`: only elements with a box count).
const JS_PROBE: &str = r#"(sel, visible) => {
  let el;
  try { el = document.querySelector(sel); } catch (e) { return { error: "bad_selector", message: String(e && e.message || e) }; }
  if (!el) return { found: false };
  if (visible) {
    const r = el.getBoundingClientRect();
    const st = window.getComputedStyle(el);
    if (r.width === 0 || r.height === 0 || st.visibility === "hidden" || st.display === "none") return { found: false };
  }
  return { found: true };
}"#;

const JS_CLEAR: &str = r#"(sel) => {
  const el = document.querySelector(sel);
  if (!el) return false;
  if ("value" in el) el.value = ""; else if (el.isContentEditable) el.textContent = "";
  el.dispatchEvent(new Event("input", { bubbles: true }));
  return true;
}"#;

const JS_FOCUS: &str = r#"(sel) => {
  const el = document.querySelector(sel);
  if (!el) return false;
  el.scrollIntoView({ block: "center", inline: "center" });
  el.focus();
  if (typeof el.setSelectionRange === "function" && typeof el.value === "string") {
    try { el.setSelectionRange(el.value.length, el.value.length); } catch (e) {}
  }
  return true;
}"#;

const JS_SELECT: &str = r#"(sel, values) => {
  let el;
  try { el = document.querySelector(sel); } catch (e) { return { error: "bad_selector", message: String(e && e.message || e) }; }
  if (!el) return { error: "not_found" };
  if (el.tagName !== "SELECT") return { error: "not_select", tag: el.tagName.toLowerCase() };
  const opts = Array.from(el.options);
  const want = new Set(values);
  let hit = opts.filter(o => want.has(o.value));
  if (hit.length === 0) hit = opts.filter(o => want.has(o.label) || want.has(o.text.trim()));
  if (hit.length === 0 && values.length > 0) return { error: "no_option", options: opts.slice(0, 50).map(o => o.value) };
  if (!el.multiple && hit.length > 1) hit = [hit[0]];
  for (const o of opts) o.selected = hit.includes(o);
  el.dispatchEvent(new Event("input", { bubbles: true }));
  el.dispatchEvent(new Event("change", { bubbles: true }));
  return { selected: Array.from(el.selectedOptions).map(o => o.value) };
}"#;

const JS_TEXT: &str = r#"(sel, cap) => {
  let el;
  if (sel === null) { el = document.body || document.documentElement; }
  else {
    try { el = document.querySelector(sel); } catch (e) { return { error: "bad_selector", message: String(e && e.message || e) }; }
    if (!el) return { error: "not_found" };
  }
  const t = el ? (el.innerText ?? el.textContent ?? "") : "";
  return t.length > cap ? { text: t.slice(0, cap), truncated: true } : { text: t, truncated: false };
}"#;

const JS_EVAL: &str = r#"async (src, cap) => {
  let v = (0, eval)(src);
  if (v && typeof v.then === "function") v = await v;
  let s;
  try { s = JSON.stringify(v); } catch (e) { return { error: "unserializable", message: String(e && e.message || e) }; }
  if (s === undefined) s = "null";
  return s.length > cap ? { json: s.slice(0, cap), truncated: true } : { json: s, truncated: false };
}"#;

const JS_ELEMENTS: &str = "document.getElementsByTagName('*').length";

/// Why an action failed, for the error's kind and message.
fn cdp_error(sid: &str, what: &str, e: CdpError) -> ApiError {
    match e {
        CdpError::JavascriptException(d) => {
            let msg = d
                .exception
                .as_ref()
                .and_then(|x| x.description.clone())
                .unwrap_or_else(|| d.text.clone());
            ApiError::invalid(format!("{what}: the page's JavaScript threw: {msg}"))
        }
        CdpError::NotFound => ApiError::not_found(format!("{what}: not found")),
        CdpError::Timeout => ApiError::unavailable(format!(
            "{what}: the browser of sandbox {sid} did not answer in time"
        )),
        CdpError::ChromeMessage(m) => ApiError::unavailable(format!("{what}: {m}")),
        CdpError::Chrome(c) => {
            ApiError::invalid(format!("{what}: Chromium refused: {}", c.message))
        }
        CdpError::ScrollingFailed(m) => {
            ApiError::conflict(format!("{what}: the element cannot be scrolled to: {m}"))
        }
        other => ApiError::unavailable(format!(
            "{what}: lost the browser of sandbox {sid}: {}",
            error_chain(&other)
        )),
    }
}

impl Runtime {
    /// The sandbox's browser: running, crashed or stopped.
    pub async fn browser_status(&self, id: &str) -> Result<BrowserStatus, ApiError> {
        let (e, c) = self.running_client(id, "use the browser of")?;
        let sid = e.id();
        let slot = self.browsers.slot(&sid);
        let guard = slot.live.lock().await;
        Ok(match guard.as_ref() {
            None => stopped(&sid),
            Some(l) if !same_client(l, &c) => stopped(&sid),
            Some(l) => match self.liveness(&c, l).await {
                None => l.status(&sid, BrowserState::Running, None),
                Some(why) => l.status(&sid, BrowserState::Crashed, Some(why)),
            },
        })
    }

    /// Start the sandbox's browser if none runs (a crashed one is
    /// replaced).
    pub async fn browser_start(&self, id: &str) -> Result<BrowserStatus, ApiError> {
        let (e, c) = self.running_client(id, "start a browser in")?;
        let sid = e.id();
        let slot = self.browsers.slot(&sid);
        let mut guard = slot.live.lock().await;
        if let Some(l) = guard.as_ref()
            && same_client(l, &c)
            && self.liveness(&c, l).await.is_none()
        {
            return Ok(l.status(&sid, BrowserState::Running, None));
        }
        if let Some(old) = guard.take() {
            self.kill_browser(&c, &old).await;
        }
        let live = self.launch(&e, &c).await?;
        let st = live.status(&sid, BrowserState::Running, None);
        *guard = Some(Arc::new(live));
        Ok(st)
    }

    /// Stop the sandbox's browser (its tabs are gone).
    pub async fn browser_stop(&self, id: &str) -> Result<BrowserStatus, ApiError> {
        let (e, c) = self.running_client(id, "stop the browser of")?;
        let sid = e.id();
        let slot = self.browsers.slot(&sid);
        let mut guard = slot.live.lock().await;
        if let Some(old) = guard.take() {
            self.kill_browser(&c, &old).await;
        }
        Ok(stopped(&sid))
    }

    /// Replace the sandbox's browser with a fresh one.
    pub async fn browser_restart(&self, id: &str) -> Result<BrowserStatus, ApiError> {
        self.browser_stop(id).await?;
        self.browser_start(id).await
    }

    /// A byte stream to the browser's DevTools port and the path of its
    /// browser-level WebSocket (`/devtools/browser/...`), for the raw CDP
    /// route. Starts the browser if none runs.
    pub async fn browser_cdp(
        &self,
        id: &str,
    ) -> Result<(Box<dyn DuplexStream>, String, u16), ApiError> {
        let (live, e, c) = self.live_browser(id).await?;
        let t = c
            .connect_tcp(live.port)
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        Ok((Box::new(t), live.ws_path.clone(), live.port))
    }

    /// What `/json/version` of the browser says (without its WebSocket
    /// URL, which the transport fills in). Starts the browser if none runs.
    pub async fn browser_version(&self, id: &str) -> Result<Value, ApiError> {
        let (live, e, _) = self.live_browser(id).await?;
        let v = tokio::time::timeout(FORWARD_TIMEOUT, live.browser.version())
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the browser of sandbox {} did not answer in time",
                    e.id()
                ))
            })?
            .map_err(|err| cdp_error(&e.id(), "version", err))?;
        Ok(json!({
            "Browser": v.product,
            "Protocol-Version": v.protocol_version,
            "User-Agent": v.user_agent,
            "V8-Version": v.js_version,
            "WebKit-Version": format!("537.36 (@{})", v.revision),
        }))
    }

    /// Run one high-level action (starting the browser if none runs).
    pub async fn browser_action(
        &self,
        id: &str,
        action: BrowserAction,
    ) -> Result<BrowserActionResult, ApiError> {
        let limit = validate(&action)?;
        let name = action_name(&action);
        let (live, e, c) = self.live_browser(id).await?;
        let sid = e.id();
        let run = async {
            tokio::select! {
                r = tokio::time::timeout(limit, act(&live, &sid, action)) => r,
                never = keep_active(&e) => match never {},
            }
        };
        let out = match run.await {
            Ok(r) => r,
            Err(_) => Err(ApiError::unavailable(format!(
                "the {name} action did not finish within {} ms (`timeout_ms`)",
                limit.as_millis()
            ))),
        };
        match out {
            Ok(r) => {
                self.touch(&e);
                Ok(r)
            }
            // A failure that may be the browser's end: say so.
            Err(err) if err.kind == ErrorKind::Unavailable => {
                match self.liveness(&c, &live).await {
                    Some(why) => Err(crashed_error(&sid, &why)),
                    None => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// The running browser (started if none runs), or the crash error.
    async fn live_browser(
        &self,
        id: &str,
    ) -> Result<(Arc<Live>, Arc<Entry>, Arc<GuestClient>), ApiError> {
        let (e, c) = self.running_client(id, "use the browser of")?;
        let sid = e.id();
        let slot = self.browsers.slot(&sid);
        let mut guard = slot.live.lock().await;
        match guard.as_ref() {
            Some(l) if same_client(l, &c) => {
                if let Some(why) = l.dead() {
                    return Err(crashed_error(&sid, &why));
                }
                return Ok((l.clone(), e, c));
            }
            _ => {}
        }
        let live = Arc::new(self.launch(&e, &c).await?);
        *guard = Some(live.clone());
        Ok((live, e, c))
    }

    /// `None` while the browser runs, else why it does not.
    async fn liveness(&self, c: &GuestClient, l: &Live) -> Option<String> {
        if let Some(why) = l.dead() {
            return Some(why);
        }
        if let Ok(Ok(procs)) = tokio::time::timeout(FORWARD_TIMEOUT, c.procs()).await {
            match procs.iter().find(|p| p.id == l.process) {
                Some(p) => {
                    if let Some(x) = &p.exit {
                        let why = match (x.code, x.signal) {
                            (_, Some(s)) => {
                                format!("Chromium (pid {}) was killed by signal {s}", l.pid)
                            }
                            (Some(code), None) => {
                                format!("Chromium (pid {}) exited with code {code}", l.pid)
                            }
                            (None, None) => format!("Chromium (pid {}) exited", l.pid),
                        };
                        l.mark_dead(why);
                    }
                }
                None => l.mark_dead(format!("Chromium (pid {}) is gone", l.pid)),
            }
        }
        l.dead()
    }

    /// Close the browser and kill its process group; remove its profile.
    async fn kill_browser(&self, c: &GuestClient, l: &Live) {
        l.mark_dead("stopped".into());
        for t in &l.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(FORWARD_TIMEOUT, c.signal(&l.process, 9)).await;
        // The profile goes once the process has (Chromium writes to it
        // until its end).
        for _ in 0..50 {
            match c.procs().await {
                Ok(ps) if ps.iter().any(|p| p.id == l.process && p.exit.is_none()) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => break,
            }
        }
        let _ = tokio::time::timeout(FORWARD_TIMEOUT, c.remove(&l.profile, true)).await;
    }

    /// Start Chromium in the sandbox, wait for its DevTools address, and
    /// connect chromiumoxide through a one-shot forwarder.
    async fn launch(&self, e: &Entry, c: &Arc<GuestClient>) -> Result<Live, ApiError> {
        let sid = e.id();
        let profile = format!("/tmp/.hull-browser-{}", random_token());
        let mut argv: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            LAUNCHER.into(),
            "hull-browser".into(),
            profile.clone(),
        ];
        argv.extend(CHROMIUM_FLAGS.iter().map(|s| s.to_string()));
        let spec = ExecSpec {
            argv,
            env: vec![("DBUS_SESSION_BUS_ADDRESS".into(), "disabled:".into())],
            cwd: None,
            user: None,
            stdin: false,
            pty: None,
            timeout_ms: None,
            background: true,
        };
        let h = c.exec(spec).await.map_err(|err| {
            let api = guest_error(&sid, err);
            if api.reason == Some(hull_api::ErrorReason::CommandNotFound) {
                ApiError::unavailable(format!(
                    "sandbox {sid} has no /bin/sh, which starts the browser: {}",
                    no_chromium_hint()
                ))
            } else {
                api
            }
        })?;
        let process = h.id.clone();
        let pid = h.pid;
        drop(h);
        let started = self.await_devtools(c, &sid, &process, pid).await;
        let (port, ws_path) = match started {
            Ok(x) => x,
            Err(err) => {
                let _ = c.signal(&process, 9).await;
                let _ = c.remove(&profile, true).await;
                return Err(err);
            }
        };
        let dead = Arc::new(Mutex::new(None));
        let connected = self
            .connect_cdp(c, &sid, port, &ws_path, dead.clone())
            .await;
        let (browser, tasks, version) = match connected {
            Ok(x) => x,
            Err(err) => {
                let _ = c.signal(&process, 9).await;
                let _ = c.remove(&profile, true).await;
                return Err(err);
            }
        };
        tracing::info!(sandbox = %sid, pid, %version, "browser started");
        Ok(Live {
            client: Arc::downgrade(c),
            process,
            pid,
            port,
            ws_path,
            profile,
            version,
            started_at: now(),
            browser,
            dead,
            tasks,
        })
    }

    /// Read the launch's output until Chromium prints its DevTools
    /// address, exits, or [`LAUNCH_TIMEOUT`] passes.
    async fn await_devtools(
        &self,
        c: &GuestClient,
        sid: &str,
        process: &str,
        pid: i32,
    ) -> Result<(u16, String), ApiError> {
        let mut h = c
            .attach(process, true)
            .await
            .map_err(|err| guest_error(sid, err))?;
        let mut seen = String::new();
        let mut tail = String::new();
        let read = async {
            loop {
                match h.next().await {
                    Ok(ExecOutput::Stderr { data, .. }) | Ok(ExecOutput::Stdout { data, .. }) => {
                        let s = String::from_utf8_lossy(&data);
                        seen.push_str(&s);
                        if let Some(found) = parse_devtools_line(&seen) {
                            return Ok(found);
                        }
                        // Keep only what may still hold a split line, and a tail
                        // for the error message.
                        if let Some(nl) = seen.rfind('\n') {
                            tail.push_str(&seen[..=nl]);
                            seen.drain(..=nl);
                        }
                        if tail.len() > STDERR_TAIL {
                            let mut cut = tail.len() - STDERR_TAIL;
                            while !tail.is_char_boundary(cut) {
                                cut += 1;
                            }
                            tail.drain(..cut);
                        }
                        if seen.len() > 64 * 1024 {
                            seen.clear();
                        }
                    }
                    Ok(ExecOutput::Exited(st)) => {
                        tail.push_str(&seen);
                        return Err(launch_failed(sid, pid, st.code, st.signal, &tail));
                    }
                    Err(err) => return Err(guest_error(sid, err)),
                }
            }
        };
        tokio::time::timeout(LAUNCH_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::unavailable(format!(
                    "Chromium in sandbox {sid} did not open its DevTools port within {} s",
                    LAUNCH_TIMEOUT.as_secs()
                )))
            })
    }

    /// Connect chromiumoxide to Chromium's browser WebSocket through a
    /// one-shot forwarder (see the module docs); returns the browser, the
    /// tasks that drive it, and its version.
    async fn connect_cdp(
        &self,
        c: &Arc<GuestClient>,
        sid: &str,
        port: u16,
        ws_path: &str,
        dead: Arc<Mutex<Option<String>>>,
    ) -> Result<(Browser, Vec<AbortHandle>, String), ApiError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| ApiError::internal(format!("binding the CDP forwarder: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ApiError::internal(format!("the CDP forwarder's address: {e}")))?;
        let token = random_token();
        let tunnel = c
            .connect_tcp(port)
            .await
            .map_err(|err| guest_error(sid, err))?;
        let forward = tokio::spawn(forward_once(
            listener,
            token.clone(),
            ws_path.to_string(),
            tunnel,
            dead.clone(),
        ));
        let config = HandlerConfig {
            viewport: Some(HandlerViewport {
                width: VIEWPORT.0,
                height: VIEWPORT.1,
                ..Default::default()
            }),
            request_timeout: Duration::from_millis(MAX_BROWSER_TIMEOUT_MS),
            ..Default::default()
        };
        let url = format!("ws://{addr}/{token}");
        let connected =
            tokio::time::timeout(FORWARD_TIMEOUT, Browser::connect_with_config(url, config)).await;
        let (browser, mut handler) = match connected {
            Ok(Ok(x)) => x,
            Ok(Err(err)) => {
                forward.abort();
                return Err(ApiError::unavailable(format!(
                    "connecting to the browser's DevTools in sandbox {sid}: {}",
                    error_chain(&err)
                )));
            }
            Err(_) => {
                forward.abort();
                return Err(ApiError::unavailable(format!(
                    "connecting to the browser's DevTools in sandbox {sid} timed out"
                )));
            }
        };
        let hdead = dead.clone();
        let drive = tokio::spawn(async move {
            while let Some(ev) = handler.next().await {
                if let Err(CdpError::Ws(err)) = ev {
                    let mut d = hdead.lock().unwrap_or_else(|e| e.into_inner());
                    if d.is_none() {
                        *d = Some(format!("the browser's DevTools connection failed: {err}"));
                    }
                    break;
                }
            }
        });
        let tasks = vec![forward.abort_handle(), drive.abort_handle()];
        let version = match tokio::time::timeout(FORWARD_TIMEOUT, browser.version()).await {
            Ok(Ok(v)) => v.product,
            Ok(Err(err)) => {
                for t in &tasks {
                    t.abort();
                }
                return Err(cdp_error(sid, "asking the browser its version", err));
            }
            Err(_) => {
                for t in &tasks {
                    t.abort();
                }
                return Err(ApiError::unavailable(format!(
                    "the browser in sandbox {sid} did not answer its first request"
                )));
            }
        };
        Ok((browser, tasks, version))
    }
}

fn same_client(l: &Live, c: &Arc<GuestClient>) -> bool {
    std::ptr::eq(l.client.as_ptr(), Arc::as_ptr(c))
}

fn stopped(sid: &str) -> BrowserStatus {
    BrowserStatus {
        state: BrowserState::Stopped,
        pid: None,
        process: None,
        version: None,
        started_at: None,
        error: None,
        cdp_path: cdp_path(sid),
    }
}

fn crashed_error(sid: &str, why: &str) -> ApiError {
    ApiError::unavailable(format!(
        "the browser of sandbox {sid} is not running ({why}); its tabs are gone: \
         restart it (POST /v1/sandboxes/{sid}/browser/restart, `hull browse {sid} --restart`)"
    ))
}

fn no_chromium_hint() -> &'static str {
    "the browser needs Chromium in the sandbox: use a template with it, e.g. \
     `hull template build web --debian bookworm --packages chromium` then \
     `hull create --template web`, or the `host` template on a host with Debian's \
     `chromium` package installed"
}

fn launch_failed(
    sid: &str,
    pid: i32,
    code: Option<i32>,
    signal: Option<i32>,
    tail: &str,
) -> ApiError {
    if tail.contains(NO_CHROMIUM) || code == Some(127) {
        return ApiError::unavailable(format!(
            "no Chromium found in sandbox {sid}: {}",
            no_chromium_hint()
        ));
    }
    let how = match (code, signal) {
        (_, Some(s)) => format!("was killed by signal {s}"),
        (Some(c), None) => format!("exited with code {c}"),
        (None, None) => "exited".into(),
    };
    let tail: String = tail
        .lines()
        .filter(|l| !l.contains("dbus") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    ApiError::unavailable(format!(
        "Chromium (pid {pid}) in sandbox {sid} {how} before it opened its DevTools port; its last output:\n{tail}"
    ))
}

/// Accept one connection on `listener`, check that it asks for
/// `/<token>`, and splice it to `tunnel` with Chromium's path instead.
/// When the splice ends, the browser's connection is gone: say so in
/// `dead`.
async fn forward_once(
    listener: tokio::net::TcpListener,
    token: String,
    ws_path: String,
    mut tunnel: hull_proto::client::TcpTunnel,
    dead: Arc<Mutex<Option<String>>>,
) {
    let accepted = tokio::time::timeout(FORWARD_TIMEOUT, listener.accept()).await;
    drop(listener);
    let Ok(Ok((mut sock, _))) = accepted else {
        return;
    };
    let head = tokio::time::timeout(FORWARD_TIMEOUT, read_head(&mut sock)).await;
    let Ok(Some((head, rest))) = head else {
        return;
    };
    let expected = format!("GET /{token} HTTP/1.1\r\n");
    if !head.starts_with(&expected) {
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    let mut out = format!("GET {ws_path} HTTP/1.1\r\n").into_bytes();
    out.extend_from_slice(&head.as_bytes()[expected.len()..]);
    out.extend_from_slice(&rest);
    if tunnel.write_all(&out).await.is_err() {
        return;
    }
    let r = tokio::io::copy_bidirectional(&mut sock, &mut tunnel).await;
    let why = match r {
        Ok(_) => "the browser closed its DevTools connection (it exited or crashed)".to_string(),
        Err(e) => format!("the browser's DevTools connection broke: {e}"),
    };
    let mut d = dead.lock().unwrap_or_else(|e| e.into_inner());
    if d.is_none() {
        *d = Some(why);
    }
}

/// An HTTP request head (up to the blank line) and the bytes after it.
async fn read_head(sock: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8(buf).ok()?, rest));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return None;
        }
    }
}

/// The page of a tab, or `not_found`.
async fn page_of(live: &Live, sid: &str, tab: &str) -> Result<Page, ApiError> {
    let unknown = || {
        ApiError::not_found(format!(
            "no tab {tab:?} in the browser of sandbox {sid}: list them with the `tabs` action"
        ))
    };
    if tab.len() > MAX_TAB_ID
        || !tab
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(unknown());
    }
    let target = TargetId::from(tab.to_string());
    if let Ok(p) = live.browser.get_page(target.clone()).await {
        return Ok(p);
    }
    // Known to Chromium but not yet attached (opened through raw CDP, say):
    // wait briefly for the handler to attach to it.
    let exists = tabs(live, sid).await?.iter().any(|t| t.id == tab);
    if !exists {
        return Err(unknown());
    }
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if let Ok(p) = live.browser.get_page(target.clone()).await {
            return Ok(p);
        }
    }
    Err(ApiError::unavailable(format!(
        "tab {tab:?} exists but the daemon could not attach to it"
    )))
}

async fn tabs(live: &Live, sid: &str) -> Result<Vec<BrowserTab>, ApiError> {
    let r = live
        .browser
        .execute(GetTargetsParams::default())
        .await
        .map_err(|e| cdp_error(sid, "tabs", e))?;
    Ok(r.result
        .target_infos
        .into_iter()
        .filter(|t| t.r#type == "page")
        .map(|t| BrowserTab {
            id: t.target_id.inner().clone(),
            url: t.url,
            title: t.title,
        })
        .collect())
}

async fn tab_info(live: &Live, sid: &str, tab: &str) -> Result<BrowserTab, ApiError> {
    tabs(live, sid)
        .await?
        .into_iter()
        .find(|t| t.id == tab)
        .ok_or_else(|| ApiError::not_found(format!("tab {tab:?} closed while loading")))
}

/// Evaluate `expression` in the page; its value by JSON.
async fn eval(page: &Page, sid: &str, what: &str, expression: String) -> Result<Value, ApiError> {
    let params = EvaluateParams {
        expression,
        return_by_value: Some(true),
        await_promise: Some(true),
        allow_unsafe_eval_blocked_by_csp: Some(true),
        ..EvaluateParams::new("")
    };
    let r = page
        .evaluate_expression(params)
        .await
        .map_err(|e| cdp_error(sid, what, e))?;
    Ok(r.value().cloned().unwrap_or(Value::Null))
}

/// The page-side error of a JS helper, as an API error.
fn js_error(v: &Value, selector: &str, tab: &str) -> Option<ApiError> {
    let kind = v.get("error")?.as_str()?;
    let msg = v.get("message").and_then(Value::as_str).unwrap_or("");
    Some(match kind {
        "bad_selector" => ApiError::invalid(format!("invalid CSS selector {selector:?}: {msg}")),
        "not_found" => ApiError::not_found(format!("no element matches {selector:?} in tab {tab}")),
        "not_select" => ApiError::invalid(format!(
            "{selector:?} matches a <{}>, not a <select>",
            v.get("tag").and_then(Value::as_str).unwrap_or("?")
        )),
        "no_option" => ApiError::not_found(format!(
            "no option of {selector:?} has one of the given values or labels (values: {})",
            v.get("options").cloned().unwrap_or(Value::Null)
        )),
        "unserializable" => ApiError::invalid(format!(
            "the expression's result cannot be converted to JSON: {msg}"
        )),
        other => ApiError::internal(format!("the page helper failed: {other} {msg}")),
    })
}

/// Probe a selector: found or not, bad selectors as errors.
async fn probe(
    page: &Page,
    sid: &str,
    tab: &str,
    selector: &str,
    visible: bool,
) -> Result<bool, ApiError> {
    let v = eval(
        page,
        sid,
        "looking up the selector",
        js_call(JS_PROBE, &[json!(selector), json!(visible)]),
    )
    .await?;
    if let Some(e) = js_error(&v, selector, tab) {
        return Err(e);
    }
    Ok(v.get("found").and_then(Value::as_bool).unwrap_or(false))
}

async fn must_find(page: &Page, sid: &str, tab: &str, selector: &str) -> Result<(), ApiError> {
    if probe(page, sid, tab, selector, false).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no element matches {selector:?} in tab {tab}"
        )))
    }
}

async fn act(
    live: &Live,
    sid: &str,
    action: BrowserAction,
) -> Result<BrowserActionResult, ApiError> {
    match action {
        BrowserAction::Open { url, .. } => {
            let url = url.unwrap_or_else(|| "about:blank".into());
            let page = live
                .browser
                .new_page(CreateTargetParams::new(url.clone()))
                .await
                .map_err(|e| cdp_error(sid, &format!("opening {url}"), e))?;
            let id = page.target_id().inner().clone();
            Ok(BrowserActionResult::Open {
                tab: tab_info(live, sid, &id).await?,
            })
        }
        BrowserAction::Navigate { tab, url, .. } => {
            let page = page_of(live, sid, &tab).await?;
            page.goto(url.clone())
                .await
                .map_err(|e| cdp_error(sid, &format!("loading {url}"), e))?;
            Ok(BrowserActionResult::Navigate {
                tab: tab_info(live, sid, &tab).await?,
            })
        }
        BrowserAction::Click { tab, selector, .. } => {
            let page = page_of(live, sid, &tab).await?;
            must_find(&page, sid, &tab, &selector).await?;
            let el = page
                .find_element(selector.clone())
                .await
                .map_err(|e| cdp_error(sid, "finding the element", e))?;
            el.click().await.map_err(|e| match e {
                CdpError::ChromeMessage(m) | CdpError::ScrollingFailed(m) => ApiError::conflict(
                    format!("the element {selector:?} cannot be clicked (no visible box?): {m}"),
                ),
                other => cdp_error(sid, "clicking", other),
            })?;
            Ok(BrowserActionResult::Click { tab })
        }
        BrowserAction::Type {
            tab,
            selector,
            text,
            clear,
            ..
        } => {
            let page = page_of(live, sid, &tab).await?;
            must_find(&page, sid, &tab, &selector).await?;
            if clear {
                eval(
                    &page,
                    sid,
                    "clearing",
                    js_call(JS_CLEAR, &[json!(selector)]),
                )
                .await?;
            }
            eval(
                &page,
                sid,
                "focusing",
                js_call(JS_FOCUS, &[json!(selector)]),
            )
            .await?;
            let el = page
                .find_element(selector.clone())
                .await
                .map_err(|e| cdp_error(sid, "finding the element", e))?;
            type_text(&page, &el, sid, &text).await?;
            Ok(BrowserActionResult::Type { tab })
        }
        BrowserAction::Select {
            tab,
            selector,
            values,
            ..
        } => {
            let page = page_of(live, sid, &tab).await?;
            let v = eval(
                &page,
                sid,
                "selecting",
                js_call(JS_SELECT, &[json!(selector), json!(values)]),
            )
            .await?;
            if let Some(e) = js_error(&v, &selector, &tab) {
                return Err(e);
            }
            let selected = v
                .get("selected")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            Ok(BrowserActionResult::Select { tab, selected })
        }
        BrowserAction::WaitFor {
            tab,
            selector,
            visible,
            timeout_ms,
        } => {
            let page = page_of(live, sid, &tab).await?;
            // Stop just short of the action's own timeout, to answer
            // `found: false` rather than a timeout error.
            let limit = timeout_of(timeout_ms)?;
            let deadline = tokio::time::Instant::now() + limit.mul_f64(0.95);
            loop {
                match probe(&page, sid, &tab, &selector, visible).await {
                    Ok(true) => return Ok(BrowserActionResult::WaitFor { tab, found: true }),
                    Ok(false) => {}
                    Err(e) if e.kind == ErrorKind::InvalidArgument => {
                        // A bad selector; or the page navigated in between
                        // (the context went): only the former is final.
                        if e.message.starts_with("invalid CSS selector") {
                            return Err(e);
                        }
                    }
                    Err(_) => {}
                }
                if tokio::time::Instant::now() + WAIT_POLL >= deadline {
                    return Ok(BrowserActionResult::WaitFor { tab, found: false });
                }
                tokio::time::sleep(WAIT_POLL).await;
            }
        }
        BrowserAction::Text { tab, selector } => {
            let page = page_of(live, sid, &tab).await?;
            let v = eval(
                &page,
                sid,
                "reading the text",
                js_call(JS_TEXT, &[json!(selector), json!(MAX_BROWSER_TEXT)]),
            )
            .await?;
            if let Some(e) = js_error(&v, selector.as_deref().unwrap_or(""), &tab) {
                return Err(e);
            }
            Ok(BrowserActionResult::Text {
                tab,
                text: v
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                truncated: v.get("truncated").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        BrowserAction::Accessibility { tab } => {
            let page = page_of(live, sid, &tab).await?;
            let n = eval(&page, sid, "counting elements", JS_ELEMENTS.into())
                .await?
                .as_u64()
                .unwrap_or(0);
            if n > MAX_AX_ELEMENTS {
                return Err(ApiError::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "the page has {n} elements; accessibility snapshots are limited to pages of \
                         {MAX_AX_ELEMENTS}: use the text or evaluate actions"
                    ),
                ));
            }
            let r = page
                .execute(GetFullAxTreeParams::default())
                .await
                .map_err(|e| cdp_error(sid, "accessibility", e))?;
            let (tree, nodes, truncated) = ax_tree(&r.result.nodes);
            Ok(BrowserActionResult::Accessibility {
                tab,
                tree,
                nodes,
                truncated,
            })
        }
        BrowserAction::Screenshot { tab, full_page, .. } => {
            let page = page_of(live, sid, &tab).await?;
            let (png, truncated) = screenshot(&page, sid, full_page).await?;
            let (width, height) = png_size(&png).ok_or_else(|| {
                ApiError::internal("the browser's screenshot is not a PNG".to_string())
            })?;
            Ok(BrowserActionResult::Screenshot {
                tab,
                png: base64::engine::general_purpose::STANDARD.encode(&png),
                width,
                height,
                truncated,
            })
        }
        BrowserAction::Evaluate {
            tab, expression, ..
        } => {
            let page = page_of(live, sid, &tab).await?;
            let v = eval(
                &page,
                sid,
                "evaluating",
                js_call(JS_EVAL, &[json!(expression), json!(MAX_BROWSER_TEXT)]),
            )
            .await?;
            if let Some(e) = js_error(&v, "", &tab) {
                return Err(e);
            }
            let text = v.get("json").and_then(Value::as_str).unwrap_or("null");
            let truncated = v.get("truncated").and_then(Value::as_bool).unwrap_or(false);
            if truncated {
                return Ok(BrowserActionResult::Evaluate {
                    tab,
                    value: None,
                    json_prefix: Some(text.to_string()),
                    truncated,
                });
            }
            let value = serde_json::from_str(text).map_err(|e| {
                ApiError::internal(format!("the page's JSON of the result does not parse: {e}"))
            })?;
            Ok(BrowserActionResult::Evaluate {
                tab,
                value: Some(value),
                json_prefix: None,
                truncated: false,
            })
        }
        BrowserAction::Tabs {} => Ok(BrowserActionResult::Tabs {
            tabs: tabs(live, sid).await?,
        }),
        BrowserAction::Close { tab } => {
            // Only tabs Chromium knows; then close by target id.
            page_of(live, sid, &tab).await?;
            live.browser
                .execute(CloseTargetParams::new(TargetId::from(tab.clone())))
                .await
                .map_err(|e| cdp_error(sid, "closing the tab", e))?;
            // Closing is asynchronous in Chromium: answer once the tab is
            // gone from the list (bounded by the action's timeout).
            while tabs(live, sid).await?.iter().any(|t| t.id == tab) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(BrowserActionResult::Close { tab })
        }
    }
}

/// Type `text` into the focused element: key events for characters with
/// a key (ASCII, Enter, Tab), `Input.insertText` for the others.
async fn type_text(
    page: &Page,
    el: &chromiumoxide::element::Element,
    sid: &str,
    text: &str,
) -> Result<(), ApiError> {
    let mut pending = String::new();
    let flush = |pending: &mut String| {
        let t = std::mem::take(pending);
        async move {
            if !t.is_empty() {
                page.execute(InsertTextParams::new(t))
                    .await
                    .map_err(|e| cdp_error(sid, "typing", e))?;
            }
            Ok::<(), ApiError>(())
        }
    };
    for ch in text.chars() {
        let key = match ch {
            '\n' => Some("Enter".to_string()),
            '\t' => Some("Tab".to_string()),
            ' '..='~' => Some(ch.to_string()),
            _ => None,
        };
        match key {
            Some(k) if chromiumoxide::keys::get_key_definition(&k).is_some() => {
                flush(&mut pending).await?;
                el.press_key(&k)
                    .await
                    .map_err(|e| cdp_error(sid, "typing", e))?;
            }
            _ => pending.push(ch),
        }
    }
    flush(&mut pending).await
}

/// A PNG of the viewport or (cut to the bounds) of the whole page.
async fn screenshot(page: &Page, sid: &str, full_page: bool) -> Result<(Vec<u8>, bool), ApiError> {
    let mut params = CaptureScreenshotParams {
        format: Some(CaptureScreenshotFormat::Png),
        ..Default::default()
    };
    let mut truncated = false;
    if full_page {
        let m = page
            .execute(GetLayoutMetricsParams::default())
            .await
            .map_err(|e| cdp_error(sid, "measuring the page", e))?;
        let size = &m.result.css_content_size;
        let w = size.width.ceil().clamp(1.0, MAX_SCREENSHOT_WIDTH as f64);
        let h = size.height.ceil().max(1.0);
        let hmax = MAX_SCREENSHOT_HEIGHT as f64;
        truncated = h > hmax || size.width > MAX_SCREENSHOT_WIDTH as f64;
        params.clip = Some(Viewport {
            x: 0.0,
            y: 0.0,
            width: w,
            height: h.min(hmax),
            scale: 1.0,
        });
        params.capture_beyond_viewport = Some(true);
    }
    let r = page
        .execute(params)
        .await
        .map_err(|e| cdp_error(sid, "screenshot", e))?;
    let b64: &str = r.result.data.as_ref();
    if b64.len() / 4 * 3 > MAX_SCREENSHOT_BYTES {
        return Err(ApiError::new(
            ErrorKind::ResourceExhausted,
            format!(
                "the screenshot is over {} MiB: take the viewport instead of the full page",
                MAX_SCREENSHOT_BYTES >> 20
            ),
        ));
    }
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ApiError::internal(format!("the browser's screenshot is not base64: {e}")))?;
    Ok((png, truncated))
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}

fn ax_text(v: &Option<chromiumoxide::cdp::browser_protocol::accessibility::AxValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The compact tree of Chromium's flat AX node list: ignored nodes,
/// inline text boxes and unnamed generic containers are replaced by their
/// children; at most [`MAX_AX_NODES`] nodes and [`MAX_AX_DEPTH`] levels.
/// Returns the tree, its node count and whether anything was cut.
fn ax_tree(nodes: &[CdpAxNode]) -> (Option<AxNode>, usize, bool) {
    let by_id: HashMap<&str, &CdpAxNode> = nodes
        .iter()
        .map(|n| (n.node_id.inner().as_str(), n))
        .collect();
    let Some(root) = nodes
        .iter()
        .find(|n| n.parent_id.is_none())
        .or(nodes.first())
    else {
        return (None, 0, false);
    };
    let mut count = 0usize;
    let mut truncated = false;
    // Iterative over an explicit stack: a page can nest deeper than the
    // thread's stack allows recursion.
    struct Frame<'a> {
        node: &'a CdpAxNode,
        depth: usize,
    }
    fn keep(n: &CdpAxNode) -> bool {
        if n.ignored {
            return false;
        }
        let role = ax_text(&n.role);
        let name = ax_text(&n.name);
        !(role == "InlineTextBox"
            || role == "none"
            || ((role == "generic" || role == "GenericContainer") && name.is_empty()))
    }
    // Children in order, with dropped nodes replaced by their own kept
    // descendants (bounded by the node list's size: each node is visited once).
    fn kept_children<'a>(
        n: &'a CdpAxNode,
        by_id: &HashMap<&str, &'a CdpAxNode>,
        budget: &mut usize,
    ) -> Vec<&'a CdpAxNode> {
        let mut out = Vec::new();
        let mut stack: Vec<&'a CdpAxNode> = Vec::new();
        let push_children = |n: &'a CdpAxNode, stack: &mut Vec<&'a CdpAxNode>| {
            if let Some(ids) = &n.child_ids {
                for id in ids.iter().rev() {
                    if let Some(c) = by_id.get(id.inner().as_str()) {
                        stack.push(c);
                    }
                }
            }
        };
        push_children(n, &mut stack);
        while let Some(c) = stack.pop() {
            if *budget == 0 {
                break;
            }
            *budget -= 1;
            if keep(c) {
                out.push(c);
            } else {
                push_children(c, &mut stack);
            }
        }
        out
    }
    fn make(n: &CdpAxNode) -> AxNode {
        let value = ax_text(&n.value);
        AxNode {
            role: ax_text(&n.role),
            name: ax_text(&n.name),
            value: (!value.is_empty()).then_some(value),
            children: Vec::new(),
        }
    }
    // Build top-down: each frame's node is materialised, then its kept
    // children pushed; paths from the root locate where to attach.
    let mut budget = nodes.len() * 2 + 16;
    let mut tree = make(root);
    count += 1;
    let mut work: Vec<(Frame, Vec<usize>)> = vec![(
        Frame {
            node: root,
            depth: 0,
        },
        vec![],
    )];
    while let Some((f, path)) = work.pop() {
        let kids = kept_children(f.node, &by_id, &mut budget);
        if kids.is_empty() {
            continue;
        }
        if f.depth + 1 >= MAX_AX_DEPTH {
            truncated = true;
            continue;
        }
        let mut target = &mut tree;
        for &i in &path {
            target = &mut target.children[i];
        }
        for k in kids {
            if count >= MAX_AX_NODES {
                truncated = true;
                break;
            }
            count += 1;
            target.children.push(make(k));
            let mut p = path.clone();
            p.push(target.children.len() - 1);
            work.push((
                Frame {
                    node: k,
                    depth: f.depth + 1,
                },
                p,
            ));
        }
    }
    (Some(tree), count, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_devtools_line_is_found_and_checked() {
        let out = "noise\n\nDevTools listening on ws://127.0.0.1:45827/devtools/browser/aed4ffa7-8645\nmore";
        assert_eq!(
            parse_devtools_line(out),
            Some((45827, "/devtools/browser/aed4ffa7-8645".into()))
        );
        assert_eq!(
            parse_devtools_line("DevTools listening on ws://127.0.0.1:1/x\n"),
            None
        );
        assert_eq!(
            parse_devtools_line("DevTools listening on ws://127.0.0.1:99999/devtools/browser/a\n"),
            None
        );
        // Not yet a whole line.
        assert_eq!(
            parse_devtools_line("DevTools listening on ws://127.0.0.1:5/devtools/browser/a"),
            None
        );
    }

    #[test]
    fn actions_are_validated_before_anything_runs() {
        let bad = [
            BrowserAction::Click {
                tab: "t".into(),
                selector: " ".into(),
                timeout_ms: None,
            },
            BrowserAction::Navigate {
                tab: "".into(),
                url: "http://x".into(),
                timeout_ms: None,
            },
            BrowserAction::Open {
                url: Some("a\0b".into()),
                timeout_ms: None,
            },
            BrowserAction::Evaluate {
                tab: "t".into(),
                expression: "x".repeat(MAX_BROWSER_INPUT + 1),
                timeout_ms: None,
            },
            BrowserAction::WaitFor {
                tab: "t".into(),
                selector: "a".into(),
                visible: false,
                timeout_ms: Some(0),
            },
            BrowserAction::Tabs {},
        ];
        for (i, a) in bad.iter().enumerate() {
            let r = validate(a);
            if i == bad.len() - 1 {
                assert!(r.is_ok());
            } else {
                assert_eq!(r.unwrap_err().kind, ErrorKind::InvalidArgument, "{a:?}");
            }
        }
    }

    #[test]
    fn png_sizes_come_from_the_header() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&1280u32.to_be_bytes());
        png.extend_from_slice(&720u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((1280, 720)));
        assert_eq!(png_size(b"GIF89a"), None);
    }
}
