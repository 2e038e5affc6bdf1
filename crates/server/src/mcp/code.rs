//! The code interpreter's MCP tools: `code_run` (Python in a persistent
//! context, created on first use), `code_contexts` (list) and
//! `code_restart`. Each is one runtime call, like the REST routes.
//!
//! `code_run` answers as a model reads best: one text block with stdout,
//! stderr, the `text/plain` of results and the traceback (ANSI colours
//! removed), then each PNG or JPEG output as image content; the structured
//! content is the API's `CodeRunResult` with image data replaced by a note
//! (never base64 twice). A Python exception is a normal result (the tool
//! worked; `error` says what the code raised), not a tool error.

use hull_api::*;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::schemars::JsonSchema;
use rmcp::{tool, tool_router};
use serde::Deserialize;

use super::{Args, HullMcp, ToolResult, answer, args, tool_error};

/// MIME types returned as MCP images.
const IMAGE_TYPES: [&str; 2] = ["image/png", "image/jpeg"];

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct CodeRunArgs {
    /// Sandbox id or name (it needs python3 and ipykernel: the `host`
    /// template on a host with python3-ipykernel, or a template built with it).
    sandbox: String,
    /// Python code, run as in a Jupyter cell: the value of the last
    /// expression is returned; `display(...)` and matplotlib plots come back
    /// as images.
    code: String,
    /// Context name ("default" when absent; created on first use).
    /// Variables, imports and definitions persist in it across calls.
    #[serde(default)]
    context: Option<String>,
    /// Interrupt the code after this many milliseconds (5 minutes when
    /// absent); its output so far is returned and the context keeps its state.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ContextArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// Context name ("default" when absent).
    #[serde(default)]
    context: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ContextsArgs {
    /// Sandbox id or name.
    sandbox: String,
}

/// Text without ANSI escape sequences (IPython colours its tracebacks).
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte.
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// The tool answer for one run: text, images, structured content.
pub(crate) fn run_answer(mut r: CodeRunResult) -> CallToolResult {
    let mut text = String::new();
    let mut section = |s: &str| {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(s);
    };
    if !r.stdout.is_empty() {
        section(&r.stdout);
    }
    if !r.stderr.is_empty() {
        section(&format!("[stderr]\n{}", r.stderr));
    }
    let mut images = Vec::new();
    for bundle in &mut r.results {
        let mut shown = false;
        for mime in IMAGE_TYPES {
            if let Some(serde_json::Value::String(data)) = bundle.get(mime) {
                images.push(ContentBlock::image(data.trim().to_string(), mime));
                let note = format!("<{mime}: image content {}>", images.len());
                bundle.insert(mime.to_string(), serde_json::Value::String(note));
                shown = true;
            }
        }
        match bundle.get("text/plain").and_then(|v| v.as_str()) {
            // A figure's `<Figure size ...>` says nothing the image doesn't.
            Some(t) if !shown => section(t),
            Some(_) => {}
            None if !shown => {
                let kinds: Vec<&str> = bundle.keys().map(String::as_str).collect();
                section(&format!("<output of type {}>", kinds.join(", ")));
            }
            None => {}
        }
    }
    if let Some(e) = &r.error {
        let tb: Vec<String> = e.traceback.iter().map(|l| strip_ansi(l)).collect();
        if tb.is_empty() {
            section(&format!("{}: {}", e.name, e.value));
        } else {
            section(&tb.join("\n"));
        }
    }
    if r.truncated {
        section("[hull: output past the limit was dropped]");
    }
    if r.timed_out {
        section("[hull: interrupted by the timeout; the context keeps its state]");
    }
    if text.is_empty() && images.is_empty() {
        text.push_str("(no output)");
    }
    let mut content = Vec::with_capacity(images.len() + 1);
    if !text.is_empty() {
        content.push(ContentBlock::text(text));
    }
    content.extend(images);
    let mut answer = CallToolResult::success(content);
    answer.structured_content = serde_json::to_value(&r).ok();
    answer
}

#[tool_router(router = code_router, vis = "pub(crate)")]
impl HullMcp {
    #[tool(
        description = "Run Python code in a persistent interpreter (a Jupyter kernel) inside a \
        sandbox: variables, imports and definitions persist across calls in the same `context`. \
        Returns stdout, stderr, the value of the last expression, plots and images (as images) \
        and, when the code raised, the traceback."
    )]
    async fn code_run(&self, a: Parameters<Args<CodeRunArgs>>) -> ToolResult {
        let a = match args(a) {
            Ok(a) => a,
            Err(e) => return Ok(e),
        };
        let req = CodeRunRequest {
            code: a.code,
            timeout_ms: a.timeout_ms,
            context: a.context,
        };
        Ok(match self.s.rt.code_run_default(&a.sandbox, req).await {
            Ok(r) => run_answer(r),
            Err(e) => tool_error(e),
        })
    }

    #[tool(
        description = "List a sandbox's Python interpreter contexts (name, kernel pid, alive).",
        annotations(read_only_hint = true)
    )]
    async fn code_contexts(&self, a: Parameters<Args<ContextsArgs>>) -> ToolResult {
        let a = match args(a) {
            Ok(a) => a,
            Err(e) => return Ok(e),
        };
        answer(self.s.rt.code_contexts(&a.sandbox).await)
    }

    #[tool(
        description = "Restart a Python interpreter context with a fresh kernel: its variables \
        are gone, the name stays. Use it when the kernel died or hangs.",
        annotations(destructive_hint = true)
    )]
    async fn code_restart(&self, a: Parameters<Args<ContextArgs>>) -> ToolResult {
        let a = match args(a) {
            Ok(a) => a,
            Err(e) => return Ok(e),
        };
        let context = a.context.unwrap_or_else(|| "default".into());
        answer(self.s.rt.code_restart(&a.sandbox, &context).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[0;31mZeroDivisionError\u{1b}[0m: division by zero"),
            "ZeroDivisionError: division by zero"
        );
        assert_eq!(strip_ansi("plain é"), "plain é");
        assert_eq!(strip_ansi("cut \u{1b}[0;3"), "cut ");
    }

    #[test]
    fn images_become_image_content_once() {
        let mut png = serde_json::Map::new();
        png.insert("image/png".into(), "iVBORw0KGgo=\n".into());
        png.insert("text/plain".into(), "<Figure size 640x480>".into());
        let mut val = serde_json::Map::new();
        val.insert("text/plain".into(), "42".into());
        let r = CodeRunResult {
            stdout: "hi\n".into(),
            results: vec![png, val],
            error: Some(CodeRunError {
                name: "ValueError".into(),
                value: "bad".into(),
                traceback: vec!["\u{1b}[0;31mValueError\u{1b}[0m: bad".into()],
            }),
            ..Default::default()
        };
        let a = run_answer(r);
        let v = serde_json::to_value(&a).unwrap();
        let content = v["content"].as_array().unwrap();
        assert_eq!(content.len(), 2, "{v}");
        assert_eq!(content[0]["text"], "hi\n42\nValueError: bad");
        assert_eq!(content[1]["type"], "image");
        assert_eq!(content[1]["data"], "iVBORw0KGgo=");
        assert_eq!(content[1]["mimeType"], "image/png");
        let s = &v["structuredContent"];
        assert_eq!(s["results"][0]["image/png"], "<image/png: image content 1>");
        assert_eq!(s["error"]["name"], "ValueError");
        assert_ne!(v["isError"], true);
    }
}
