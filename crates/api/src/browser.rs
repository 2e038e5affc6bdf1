//! Wire types of the browser tool: a headless Chromium inside a sandbox,
//! driven with high-level actions (`POST /v1/sandboxes/{id}/browser/actions`)
//! or over its raw CDP WebSocket (`GET /v1/sandboxes/{id}/browser/cdp`).
//!
//! A tab is named by its CDP target id (as Playwright and Puppeteer see
//! it). Outputs are bounded: page text and evaluation results by
//! [`MAX_BROWSER_TEXT`], accessibility snapshots by [`MAX_AX_NODES`],
//! screenshots by [`MAX_SCREENSHOT_BYTES`] and [`MAX_SCREENSHOT_HEIGHT`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Characters of page text or of an evaluation result's JSON returned at
/// most (the rest is dropped and `truncated` set).
pub const MAX_BROWSER_TEXT: usize = 1 << 20;
/// Nodes in an accessibility snapshot at most.
pub const MAX_AX_NODES: usize = 5000;
/// Bytes of one screenshot (PNG) at most.
pub const MAX_SCREENSHOT_BYTES: usize = 16 << 20;
/// Pixels of a full-page screenshot's height at most (taller pages are cut).
pub const MAX_SCREENSHOT_HEIGHT: u32 = 16384;
/// Longest URL, selector, typed text or expression accepted.
pub const MAX_BROWSER_INPUT: usize = 256 << 10;
/// Timeout of an action that names none.
pub const DEFAULT_BROWSER_TIMEOUT_MS: u64 = 30_000;
/// Longest timeout an action may ask for.
pub const MAX_BROWSER_TIMEOUT_MS: u64 = 10 * 60_000;

/// Whether a sandbox's browser runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BrowserState {
    /// None runs: never started, or stopped.
    Stopped,
    Running,
    /// It exited or its connection broke; `error` says how. `restart` (or
    /// `start`) starts a fresh one.
    Crashed,
}

/// A sandbox's browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BrowserStatus {
    pub state: BrowserState,
    /// Its pid inside the sandbox.
    pub pid: Option<i32>,
    /// The guest's id of its process (`GET .../processes`).
    pub process: Option<String>,
    /// `Chrome/156.0...`.
    pub version: Option<String>,
    /// Unix seconds.
    pub started_at: Option<u64>,
    /// Why it is `crashed`.
    pub error: Option<String>,
    /// The raw CDP WebSocket route of this browser (relative to the API).
    pub cdp_path: String,
}

/// A tab (a CDP page target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BrowserTab {
    /// The CDP target id: the `tab` of other actions.
    pub id: String,
    pub url: String,
    pub title: String,
}

/// One high-level action, tagged by `action`. Actions that can block take
/// `timeout_ms` (default 30 s, at most 10 min). The browser starts on the
/// first action if it does not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrowserAction {
    /// Open a new tab (at `url`, else `about:blank`) and wait for its load.
    Open {
        #[serde(default)]
        url: Option<String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Load `url` in the tab and wait for its load.
    Navigate {
        tab: String,
        url: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Click the centre of the first element matching the CSS selector
    /// (scrolled into view; real mouse events).
    Click {
        tab: String,
        selector: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Focus the first element matching the selector and type `text`
    /// (key events), after its current value unless `clear`.
    Type {
        tab: String,
        selector: String,
        text: String,
        #[serde(default)]
        clear: bool,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Select the options of a `<select>` whose value (or else visible
    /// text) is in `values`; fires `input` and `change`.
    Select {
        tab: String,
        selector: String,
        values: Vec<String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Wait until an element matches the selector (and, with `visible`,
    /// has a box); `found: false` after the timeout.
    WaitFor {
        tab: String,
        selector: String,
        #[serde(default)]
        visible: bool,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// The page's visible text (`innerText` of the body, or of the first
    /// element matching `selector`), at most 1 Mi characters.
    Text {
        tab: String,
        #[serde(default)]
        selector: Option<String>,
    },
    /// The accessibility tree: role, name, value, children; ignored nodes
    /// left out; at most 5000 nodes.
    Accessibility { tab: String },
    /// A PNG of the viewport, or of the whole page with `full_page` (at
    /// most 16384 px tall, 16 MiB).
    Screenshot {
        tab: String,
        #[serde(default)]
        full_page: bool,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Evaluate a JavaScript expression in the page (promises are
    /// awaited); the result as JSON (at most 1 Mi characters of it).
    Evaluate {
        tab: String,
        expression: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// The open tabs.
    Tabs {},
    /// Close a tab.
    Close { tab: String },
}

/// A node of an accessibility snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AxNode {
    pub role: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub children: Vec<AxNode>,
}

/// What an action returned, tagged by `action` like the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BrowserActionResult {
    Open {
        tab: BrowserTab,
    },
    Navigate {
        tab: BrowserTab,
    },
    Click {
        tab: String,
    },
    Type {
        tab: String,
    },
    Select {
        tab: String,
        /// The values now selected.
        selected: Vec<String>,
    },
    WaitFor {
        tab: String,
        /// False when the timeout passed first.
        found: bool,
    },
    Text {
        tab: String,
        text: String,
        truncated: bool,
    },
    Accessibility {
        tab: String,
        tree: Option<AxNode>,
        /// Nodes in `tree`.
        nodes: usize,
        truncated: bool,
    },
    Screenshot {
        tab: String,
        /// The PNG, base64.
        png: String,
        width: u32,
        height: u32,
        /// The page was taller than a screenshot may be.
        truncated: bool,
    },
    Evaluate {
        tab: String,
        /// The result as JSON (`null` for `undefined`, functions and other
        /// values JSON cannot hold); absent when `truncated`.
        #[schema(value_type = Object)]
        value: Option<serde_json::Value>,
        /// With `truncated`: the first 1 Mi characters of the JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_prefix: Option<String>,
        truncated: bool,
    },
    Tabs {
        tabs: Vec<BrowserTab>,
    },
    Close {
        tab: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_tagged_and_strict() {
        let a: BrowserAction =
            serde_json::from_str(r##"{"action":"click","tab":"T","selector":"#b"}"##).unwrap();
        assert_eq!(
            a,
            BrowserAction::Click {
                tab: "T".into(),
                selector: "#b".into(),
                timeout_ms: None
            }
        );
        let t: BrowserAction = serde_json::from_str(r#"{"action":"tabs"}"#).unwrap();
        assert_eq!(t, BrowserAction::Tabs {});
        assert!(
            serde_json::from_str::<BrowserAction>(
                r#"{"action":"click","tab":"T","selector":"a","x":1}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<BrowserAction>(r#"{"action":"fly"}"#).is_err());
        assert!(serde_json::from_str::<BrowserAction>(r#"{"action":"tabs","extra":1}"#).is_err());
        assert!(serde_json::from_str::<BrowserAction>(r#"{"tab":"T"}"#).is_err());
    }
}
