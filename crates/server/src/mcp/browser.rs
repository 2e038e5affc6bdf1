//! The browser's MCP tools: `browser_open`, `browser_action` (every
//! high-level action, one tagged `action` object), `browser_screenshot`
//! (an MCP image) and `browser_restart`. Each maps its arguments to one
//! `BrowserAction` (or lifecycle call) of the runtime, like the REST route.
//! Screenshots are returned as image content (PNG, base64) with their size
//! as structured content, never as base64 inside JSON.

use hull_api::*;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::schemars::JsonSchema;
use rmcp::{tool, tool_router};
use serde::Deserialize;

use super::{Args, HullMcp, ToolResult, answer, args, tool_error};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct OpenArgs {
    /// Sandbox id or name (Chromium must be in it: the `host` template on a
    /// host with Debian's chromium, or a template built with it).
    sandbox: String,
    /// The URL to load (`about:blank` when absent). The browser runs inside
    /// the sandbox: `http://127.0.0.1:PORT/` is a server in the sandbox.
    #[serde(default)]
    url: Option<String>,
    /// Give up after this many milliseconds (30000 when absent).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// One step, tagged by `type`. `tab` is a tab id from `browser_open` or
/// `tabs`; selectors are CSS selectors (the first match is used).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) enum McpBrowserStep {
    /// Load a URL in the tab and wait for its load event.
    Navigate { tab: String, url: String },
    /// Click the centre of the element (scrolled into view, real mouse events).
    Click { tab: String, selector: String },
    /// Focus the element and type text (key events; `\n` is Enter); with
    /// `clear`, empty it first.
    Type {
        tab: String,
        selector: String,
        text: String,
        #[serde(default)]
        clear: bool,
    },
    /// Select the options of a <select> by value (or visible text).
    Select {
        tab: String,
        selector: String,
        values: Vec<String>,
    },
    /// Wait until an element matches (with `visible`: and has a box);
    /// answers `found: false` after the timeout.
    WaitFor {
        tab: String,
        selector: String,
        #[serde(default)]
        visible: bool,
    },
    /// The visible text of the page (or of the element), at most 1 Mi characters.
    Text {
        tab: String,
        #[serde(default)]
        selector: Option<String>,
    },
    /// The accessibility tree (role, name, value, children), compact, at most 5000 nodes.
    Accessibility { tab: String },
    /// A PNG screenshot (returned as an image).
    Screenshot {
        tab: String,
        #[serde(default)]
        full_page: bool,
    },
    /// Evaluate a JavaScript expression in the page; promises are awaited;
    /// the result as JSON.
    Evaluate { tab: String, expression: String },
    /// The open tabs (id, url, title).
    Tabs {},
    /// Close a tab.
    Close { tab: String },
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ActionArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// What to do, e.g. {"type": "click", "tab": "...", "selector": "#submit"}.
    action: McpBrowserStep,
    /// Give up after this many milliseconds (30000 when absent; for
    /// `wait_for`, how long to wait).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ScreenshotArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// The tab id.
    tab: String,
    /// The whole page (at most 16384 px tall) instead of the 1280x720 viewport.
    #[serde(default)]
    full_page: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct BrowserSandboxArgs {
    /// Sandbox id or name.
    sandbox: String,
}

fn to_action(step: McpBrowserStep, timeout_ms: Option<u64>) -> BrowserAction {
    match step {
        McpBrowserStep::Navigate { tab, url } => BrowserAction::Navigate {
            tab,
            url,
            timeout_ms,
        },
        McpBrowserStep::Click { tab, selector } => BrowserAction::Click {
            tab,
            selector,
            timeout_ms,
        },
        McpBrowserStep::Type {
            tab,
            selector,
            text,
            clear,
        } => BrowserAction::Type {
            tab,
            selector,
            text,
            clear,
            timeout_ms,
        },
        McpBrowserStep::Select {
            tab,
            selector,
            values,
        } => BrowserAction::Select {
            tab,
            selector,
            values,
            timeout_ms,
        },
        McpBrowserStep::WaitFor {
            tab,
            selector,
            visible,
        } => BrowserAction::WaitFor {
            tab,
            selector,
            visible,
            timeout_ms,
        },
        McpBrowserStep::Text { tab, selector } => BrowserAction::Text { tab, selector },
        McpBrowserStep::Accessibility { tab } => BrowserAction::Accessibility { tab },
        McpBrowserStep::Screenshot { tab, full_page } => BrowserAction::Screenshot {
            tab,
            full_page,
            timeout_ms,
        },
        McpBrowserStep::Evaluate { tab, expression } => BrowserAction::Evaluate {
            tab,
            expression,
            timeout_ms,
        },
        McpBrowserStep::Tabs {} => BrowserAction::Tabs {},
        McpBrowserStep::Close { tab } => BrowserAction::Close { tab },
    }
}

/// A result as a tool answer; a screenshot as an MCP image.
fn browser_answer(r: Result<BrowserActionResult, ApiError>) -> ToolResult {
    match r {
        Ok(BrowserActionResult::Screenshot {
            tab,
            png,
            width,
            height,
            truncated,
        }) => {
            let meta = serde_json::json!({
                "action": "screenshot", "tab": tab, "width": width, "height": height, "truncated": truncated,
            });
            let mut out = CallToolResult::success(vec![
                ContentBlock::image(png, "image/png"),
                ContentBlock::text(meta.to_string()),
            ]);
            out.structured_content = Some(meta);
            Ok(out)
        }
        other => answer(other),
    }
}

#[tool_router(router = browser_router, vis = "pub(crate)")]
impl HullMcp {
    #[tool(
        description = "Open a new browser tab in a sandbox and load a URL. The browser is headless \
        Chromium running inside the sandbox (started on first use), so it sees the sandbox's \
        network: http://127.0.0.1:PORT/ reaches a server the sandbox runs. Returns the tab \
        {id, url, title}; pass `id` as `tab` to browser_action and browser_screenshot."
    )]
    async fn browser_open(&self, a: Parameters<Args<OpenArgs>>) -> ToolResult {
        let a = match args(a) {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        let action = BrowserAction::Open {
            url: a.url,
            timeout_ms: a.timeout_ms,
        };
        browser_answer(self.s.rt.browser_action(&a.sandbox, action).await)
    }

    #[tool(
        description = "Act on a browser tab in a sandbox: navigate, click, type, select, wait_for, \
        text (visible page text), accessibility (compact role/name tree: the best way to see \
        what is on a page), screenshot, evaluate (JavaScript), tabs, close. `action` is one \
        object tagged by `type`, e.g. {\"type\": \"click\", \"tab\": \"<id>\", \"selector\": \
        \"button#go\"}. Unknown tabs, selectors matching nothing and invalid selectors are \
        errors that say so; a crashed browser says to call browser_restart."
    )]
    async fn browser_action(&self, a: Parameters<Args<ActionArgs>>) -> ToolResult {
        let a = match args(a) {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        let action = to_action(a.action, a.timeout_ms);
        browser_answer(self.s.rt.browser_action(&a.sandbox, action).await)
    }

    #[tool(
        description = "A PNG screenshot of a browser tab in a sandbox (the 1280x720 viewport, or \
        the whole page with full_page), returned as an image.",
        annotations(read_only_hint = true)
    )]
    async fn browser_screenshot(&self, a: Parameters<Args<ScreenshotArgs>>) -> ToolResult {
        let a = match args(a) {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        let action = BrowserAction::Screenshot {
            tab: a.tab,
            full_page: a.full_page,
            timeout_ms: None,
        };
        browser_answer(self.s.rt.browser_action(&a.sandbox, action).await)
    }

    #[tool(
        description = "Start a fresh browser in a sandbox, replacing a running or crashed one \
        (all its tabs close). Returns the browser's status."
    )]
    async fn browser_restart(&self, a: Parameters<Args<BrowserSandboxArgs>>) -> ToolResult {
        let a = match args(a) {
            Ok(v) => v,
            Err(e) => return Ok(e),
        };
        match self.s.rt.browser_restart(&a.sandbox).await {
            Ok(st) => answer(Ok(st)),
            Err(e) => Ok(tool_error(e)),
        }
    }
}
