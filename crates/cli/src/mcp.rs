//! `hull mcp`: an MCP server on stdio for clients that spawn their servers
//! (editors, agent harnesses). It is a bridge, not a second server: each
//! JSON-RPC message read from stdin (one per line) is POSTed to the
//! daemon's `/mcp` over the CLI's transport (the unix socket, or `HULL_URL`
//! with `HULL_TOKEN`), keeping the `Mcp-Session-Id` the daemon hands out,
//! and every JSON-RPC message of the answer (a JSON body, or the `data:`
//! lines of an SSE stream, re-encoded on one line) is written to stdout, one per line.
//!
//! Limits: one request at a time, in order (a long tool call delays the
//! next message; stdio MCP clients send one at a time anyway); no
//! server-initiated stream (`GET /mcp`): hull's tools send no requests or
//! notifications of their own. At the end of stdin the session is closed
//! (`DELETE /mcp`).

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::client::{Client, Endpoint, Stream};

/// Largest message line accepted on stdin: 16 MiB.
const MAX_LINE: usize = 16 << 20;

/// Run the bridge until stdin ends.
pub async fn bridge(client: &Client) -> anyhow::Result<()> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut stdout = tokio::io::stdout();
    let mut session: Option<String> = None;
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut stdin)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await
            .context("reading stdin")?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE {
            anyhow::bail!("a message on stdin is longer than {MAX_LINE} bytes");
        }
        let msg = line.trim();
        if msg.is_empty() {
            continue;
        }
        for out in post(client, &mut session, msg).await? {
            stdout.write_all(out.as_bytes()).await?;
            stdout.write_all(b"\n").await?;
        }
        stdout.flush().await?;
    }
    if let Some(id) = &session {
        // Best effort: the daemon also drops idle sessions.
        let _ = request(client, Method::DELETE, Some(id), Bytes::new()).await;
    }
    Ok(())
}

/// POST one message; the JSON-RPC messages of the answer. A message the
/// daemon refuses outright (HTTP error) becomes a JSON-RPC error answer
/// when it was a request, so the client is never left waiting.
pub(crate) async fn post(
    client: &Client,
    session: &mut Option<String>,
    msg: &str,
) -> anyhow::Result<Vec<String>> {
    let resp = request(
        client,
        Method::POST,
        session.as_deref(),
        Bytes::from(msg.to_string()),
    )
    .await?;
    if let Some(id) = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        *session = Some(id.to_string());
    }
    let status = resp.status();
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the daemon's answer")?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        let id = serde_json::from_str::<serde_json::Value>(msg)
            .ok()
            .and_then(|v| v.get("id").cloned());
        return Ok(match id {
            Some(id) if !id.is_null() => vec![
                serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {
                    "code": -32603,
                    "message": format!("the hull daemon answered {status}: {}", text.trim()),
                }})
                .to_string(),
            ],
            _ => Vec::new(),
        });
    }
    if status == StatusCode::ACCEPTED || text.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(if sse {
        sse_messages(&text)
    } else {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => vec![v.to_string()],
            Err(e) => anyhow::bail!("the daemon's answer is not JSON ({e}): {}", text.trim()),
        }
    })
}

/// The JSON-RPC messages of an SSE body: each event's `data:` lines
/// joined (priming and keep-alive events carry none, or no JSON).
fn sse_messages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for event in text.replace("\r\n", "\n").split("\n\n") {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        // Re-encoded compactly: one message per stdout line.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&data.join("\n"))
            && v.is_object()
        {
            out.push(v.to_string());
        }
    }
    out
}

async fn request(
    client: &Client,
    method: Method,
    session: Option<&str>,
    body: Bytes,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let (authority, token) = match &client.endpoint {
        Endpoint::Unix(_) => ("localhost".to_string(), None),
        Endpoint::Tcp { authority, token } => (authority.clone(), token.clone()),
    };
    let mut req = Request::builder()
        .method(method)
        .uri("/mcp")
        .header("host", authority)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let req = req.body(Full::new(body))?;
    match client.connect().await? {
        Stream::Unix(s) => send(s, req).await,
        Stream::Tcp(s) => send(s, req).await,
    }
}

async fn send<S>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| anyhow!("talking to the hull daemon: {e}"))?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map_err(|e| anyhow!("talking to the hull daemon: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_yield_their_json_messages() {
        let body = "id: 0\nretry: 3000\ndata: \n\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\n: keep-alive\n\ndata: {\"a\":\ndata: 1}\n\n";
        let got: Vec<serde_json::Value> = sse_messages(body)
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
                serde_json::json!({"a": 1})
            ]
        );
    }
}
