//! Privileged tests of the browser tool with a real Chromium (the host's
//! Debian `chromium`, seen through the `host` template) against pages
//! served inside the sandbox on its loopback by `python3 -m http.server`:
//! every action, hostile inputs (unknown tabs, bad selectors, waits that
//! time out, huge outputs), a killed browser that reports clearly and
//! restarts, and no Chromium left behind by destroy.

mod common;

use common::Kit;
use hull_api::{
    AxNode, BrowserAction, BrowserActionResult, BrowserState, ErrorKind, LimitsRequest,
    MAX_BROWSER_TEXT,
};

/// Whether to run: root and Chromium installed (missing under
/// `HULL_TEST_PRIVILEGED=1` is a failure).
pub fn ready(test: &str) -> bool {
    if !common::privileged(test) {
        return false;
    }
    let ok = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if !ok {
        if std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: chromium is not installed (apt-get install chromium)");
        }
        eprintln!("SKIP {test}: chromium is not installed");
        return false;
    }
    true
}

const INDEX: &str = r#"<!doctype html>
<html><head><title>Hull test</title></head>
<body>
<h1>Form</h1>
<label for="name">Name</label> <input id="name" type="text">
<select id="color"><option value="red">Red</option><option value="green">Green</option></select>
<button id="go" onclick="setTimeout(() => { const o = document.getElementById('out'); o.textContent = 'Hi ' + document.getElementById('name').value + ', ' + document.getElementById('color').value; o.className = 'done'; }, 200)">Go</button>
<p id="out"></p>
<a href="/page2.html">next</a>
</body></html>
"#;

const PAGE2: &str = r#"<!doctype html>
<html><head><title>Second</title></head>
<body><div style="height: 3000px">tall</div><p>bottom</p></body></html>
"#;

/// Write the site and serve it on 127.0.0.1:8765 inside the sandbox.
async fn serve_site(kit: &Kit, id: &str) {
    let script = format!(
        "mkdir -p /tmp/site && cat > /tmp/site/index.html <<'EOF'\n{INDEX}EOF\n\
         cat > /tmp/site/page2.html <<'EOF'\n{PAGE2}EOF\n"
    );
    let r = kit.sh(id, &script).await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    kit.rt
        .exec_background(
            id,
            hull_api::ExecRequest {
                cmd: [
                    "python3",
                    "-m",
                    "http.server",
                    "8765",
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    "/tmp/site",
                ]
                .map(String::from)
                .to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("http.server starts");
    let r = kit
        .sh(
            id,
            "for i in $(seq 100); do python3 -c 'import urllib.request as u; u.urlopen(\"http://127.0.0.1:8765/\")' 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
        )
        .await;
    assert_eq!(r.exit_code, Some(0), "the site answers: {r:?}");
}

async fn act(kit: &Kit, id: &str, a: BrowserAction) -> BrowserActionResult {
    let what = format!("{a:?}");
    kit.rt
        .browser_action(id, a)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", &what[..what.len().min(200)]))
}

async fn act_err(kit: &Kit, id: &str, a: BrowserAction) -> hull_api::ApiError {
    let what = format!("{a:?}");
    match kit.rt.browser_action(id, a).await {
        Ok(r) => panic!("{what} succeeded: {r:?}"),
        Err(e) => e,
    }
}

async fn eval(kit: &Kit, id: &str, tab: &str, expr: &str) -> serde_json::Value {
    match act(
        kit,
        id,
        BrowserAction::Evaluate {
            tab: tab.into(),
            expression: expr.into(),
            timeout_ms: None,
        },
    )
    .await
    {
        BrowserActionResult::Evaluate {
            value: Some(v),
            truncated: false,
            ..
        } => v,
        other => panic!("evaluate {expr}: {other:?}"),
    }
}

fn find_ax<'a>(n: &'a AxNode, role: &str, name: &str) -> Option<&'a AxNode> {
    if n.role == role && n.name == name {
        return Some(n);
    }
    n.children.iter().find_map(|c| find_ax(c, role, name))
}

fn png_of(r: &BrowserActionResult) -> (Vec<u8>, u32, u32, bool) {
    use base64::Engine;
    match r {
        BrowserActionResult::Screenshot {
            png,
            width,
            height,
            truncated,
            ..
        } => (
            base64::engine::general_purpose::STANDARD
                .decode(png)
                .unwrap(),
            *width,
            *height,
            *truncated,
        ),
        other => panic!("not a screenshot: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_a_page_served_in_the_sandbox() {
    if !ready("actions_on_a_page_served_in_the_sandbox") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit
        .create_with(
            "host",
            LimitsRequest {
                memory_bytes: Some(2 << 30),
                ..Default::default()
            },
        )
        .await;
    let id = sb.id.as_str();
    serve_site(&kit, id).await;

    let st = kit.rt.browser_status(id).await.unwrap();
    assert_eq!(st.state, BrowserState::Stopped);

    // Open: the browser starts on first use.
    let tab = match act(
        &kit,
        id,
        BrowserAction::Open {
            url: Some("http://127.0.0.1:8765/".into()),
            timeout_ms: None,
        },
    )
    .await
    {
        BrowserActionResult::Open { tab } => tab,
        other => panic!("{other:?}"),
    };
    assert_eq!(tab.title, "Hull test");
    assert_eq!(tab.url, "http://127.0.0.1:8765/");
    let t = tab.id.clone();
    let st = kit.rt.browser_status(id).await.unwrap();
    assert_eq!(st.state, BrowserState::Running, "{st:?}");
    assert!(
        st.version.as_deref().unwrap_or("").contains("Chrome"),
        "{st:?}"
    );

    match act(&kit, id, BrowserAction::Tabs {}).await {
        BrowserActionResult::Tabs { tabs } => assert!(tabs.iter().any(|x| x.id == t), "{tabs:?}"),
        other => panic!("{other:?}"),
    }

    // Type (ASCII by key events, the rest inserted), select, click, wait.
    act(
        &kit,
        id,
        BrowserAction::Type {
            tab: t.clone(),
            selector: "#name".into(),
            text: "hello wörld".into(),
            clear: false,
            timeout_ms: None,
        },
    )
    .await;
    assert_eq!(
        eval(&kit, id, &t, "document.querySelector('#name').value").await,
        "hello wörld"
    );
    match act(
        &kit,
        id,
        BrowserAction::Select {
            tab: t.clone(),
            selector: "#color".into(),
            values: vec!["green".into()],
            timeout_ms: None,
        },
    )
    .await
    {
        BrowserActionResult::Select { selected, .. } => assert_eq!(selected, ["green"]),
        other => panic!("{other:?}"),
    }
    // By label too.
    match act(
        &kit,
        id,
        BrowserAction::Select {
            tab: t.clone(),
            selector: "#color".into(),
            values: vec!["Red".into()],
            timeout_ms: None,
        },
    )
    .await
    {
        BrowserActionResult::Select { selected, .. } => assert_eq!(selected, ["red"]),
        other => panic!("{other:?}"),
    }
    act(
        &kit,
        id,
        BrowserAction::Click {
            tab: t.clone(),
            selector: "#go".into(),
            timeout_ms: None,
        },
    )
    .await;
    match act(
        &kit,
        id,
        BrowserAction::WaitFor {
            tab: t.clone(),
            selector: "#out.done".into(),
            visible: true,
            timeout_ms: Some(10_000),
        },
    )
    .await
    {
        BrowserActionResult::WaitFor { found, .. } => assert!(found),
        other => panic!("{other:?}"),
    }
    match act(
        &kit,
        id,
        BrowserAction::Text {
            tab: t.clone(),
            selector: Some("#out".into()),
        },
    )
    .await
    {
        BrowserActionResult::Text {
            text, truncated, ..
        } => {
            assert_eq!(text, "Hi hello wörld, red");
            assert!(!truncated);
        }
        other => panic!("{other:?}"),
    }

    // The accessibility tree names the button and the heading.
    match act(&kit, id, BrowserAction::Accessibility { tab: t.clone() }).await {
        BrowserActionResult::Accessibility {
            tree: Some(tree),
            nodes,
            ..
        } => {
            assert!(find_ax(&tree, "button", "Go").is_some(), "{tree:#?}");
            assert!(find_ax(&tree, "heading", "Form").is_some(), "{tree:#?}");
            assert!(nodes > 5);
        }
        other => panic!("{other:?}"),
    }

    // Screenshots: the viewport, then the whole of a tall page.
    let (png, w, h, cut) = png_of(
        &act(
            &kit,
            id,
            BrowserAction::Screenshot {
                tab: t.clone(),
                full_page: false,
                timeout_ms: None,
            },
        )
        .await,
    );
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!((w, h, cut), (1280, 720, false));
    match act(
        &kit,
        id,
        BrowserAction::Navigate {
            tab: t.clone(),
            url: "http://127.0.0.1:8765/page2.html".into(),
            timeout_ms: None,
        },
    )
    .await
    {
        BrowserActionResult::Navigate { tab } => assert_eq!(tab.title, "Second"),
        other => panic!("{other:?}"),
    }
    let (png, w, h, cut) = png_of(
        &act(
            &kit,
            id,
            BrowserAction::Screenshot {
                tab: t.clone(),
                full_page: true,
                timeout_ms: None,
            },
        )
        .await,
    );
    assert_eq!(hull_png_size(&png), Some((w, h)));
    assert!(h > 3000 && w == 1280 && !cut, "{w}x{h}");

    // Evaluate: values, promises, errors, a huge result.
    assert_eq!(eval(&kit, id, &t, "1 + 1").await, 2);
    assert_eq!(
        eval(&kit, id, &t, "Promise.resolve({a: [1, 2]})").await,
        serde_json::json!({"a": [1, 2]})
    );
    assert_eq!(eval(&kit, id, &t, "let q = 3; q * 2").await, 6);
    assert_eq!(
        eval(&kit, id, &t, "undefined").await,
        serde_json::Value::Null
    );
    let e = act_err(
        &kit,
        id,
        BrowserAction::Evaluate {
            tab: t.clone(),
            expression: "no_such_variable".into(),
            timeout_ms: None,
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("no_such_variable"), "{e}");
    match act(
        &kit,
        id,
        BrowserAction::Evaluate {
            tab: t.clone(),
            expression: "'x'.repeat(3000000)".into(),
            timeout_ms: None,
        },
    )
    .await
    {
        BrowserActionResult::Evaluate {
            value: None,
            json_prefix: Some(p),
            truncated: true,
            ..
        } => assert_eq!(p.len(), MAX_BROWSER_TEXT),
        other => panic!("{other:?}"),
    }
    // A page with huge text: capped and marked.
    eval(
        &kit,
        id,
        &t,
        "document.body.innerText = 'y'.repeat(3000000); true",
    )
    .await;
    match act(
        &kit,
        id,
        BrowserAction::Text {
            tab: t.clone(),
            selector: None,
        },
    )
    .await
    {
        BrowserActionResult::Text {
            text, truncated, ..
        } => {
            assert!(truncated);
            assert_eq!(text.len(), MAX_BROWSER_TEXT);
        }
        other => panic!("{other:?}"),
    }

    // Hostile input: unknown tabs, bad selectors, missing elements, a wait
    // that times out, a <select> that is not one, an unreachable URL.
    for bad in ["NOPE", "../../etc", &"A".repeat(5000)] {
        let e = act_err(&kit, id, BrowserAction::Accessibility { tab: bad.into() }).await;
        assert_eq!(e.kind, ErrorKind::NotFound, "{bad}: {e}");
    }
    let e = act_err(
        &kit,
        id,
        BrowserAction::Click {
            tab: t.clone(),
            selector: "##nope[".into(),
            timeout_ms: None,
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("invalid CSS selector"), "{e}");
    let e = act_err(
        &kit,
        id,
        BrowserAction::Click {
            tab: t.clone(),
            selector: "#nope".into(),
            timeout_ms: None,
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    match act(
        &kit,
        id,
        BrowserAction::WaitFor {
            tab: t.clone(),
            selector: "#never".into(),
            visible: false,
            timeout_ms: Some(300),
        },
    )
    .await
    {
        BrowserActionResult::WaitFor { found, .. } => assert!(!found),
        other => panic!("{other:?}"),
    }
    let e = act_err(
        &kit,
        id,
        BrowserAction::WaitFor {
            tab: t.clone(),
            selector: "a[".into(),
            visible: false,
            timeout_ms: Some(1000),
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    let e = act_err(
        &kit,
        id,
        BrowserAction::Select {
            tab: t.clone(),
            selector: "body".into(),
            values: vec!["x".into()],
            timeout_ms: None,
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    let e = act_err(
        &kit,
        id,
        BrowserAction::Navigate {
            tab: t.clone(),
            url: "http://127.0.0.1:8799/".into(),
            timeout_ms: Some(10_000),
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("ERR_CONNECTION_REFUSED"), "{e}");

    // Close: gone from the list; actions on it are not_found.
    act(&kit, id, BrowserAction::Close { tab: t.clone() }).await;
    match act(&kit, id, BrowserAction::Tabs {}).await {
        BrowserActionResult::Tabs { tabs } => assert!(!tabs.iter().any(|x| x.id == t)),
        other => panic!("{other:?}"),
    }
    let e = act_err(
        &kit,
        id,
        BrowserAction::Text {
            tab: t.clone(),
            selector: None,
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    kit.finish().await;
}

fn hull_png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[12..16] != b"IHDR" {
        return None;
    }
    Some((
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_browser_says_so_and_restarts_and_destroy_leaves_none() {
    if !ready("a_killed_browser_says_so_and_restarts_and_destroy_leaves_none") {
        return;
    }
    let kit = Kit::new().await;
    let sb = kit
        .create_with(
            "host",
            LimitsRequest {
                memory_bytes: Some(2 << 30),
                ..Default::default()
            },
        )
        .await;
    let id = sb.id.as_str();
    let st = kit.rt.browser_start(id).await.expect("start");
    assert_eq!(st.state, BrowserState::Running);
    let pid = st.pid.unwrap();
    // Starting again keeps it.
    assert_eq!(kit.rt.browser_start(id).await.unwrap().pid, Some(pid));
    let tab = match act(
        &kit,
        id,
        BrowserAction::Open {
            url: None,
            timeout_ms: None,
        },
    )
    .await
    {
        BrowserActionResult::Open { tab } => tab.id,
        other => panic!("{other:?}"),
    };
    assert_eq!(eval(&kit, id, &tab, "6 * 7").await, 42);

    // Kill Chromium from inside the sandbox.
    let r = kit.sh(id, &format!("kill -9 {pid}")).await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    let e = kit
        .rt
        .browser_action(
            id,
            BrowserAction::Evaluate {
                tab: tab.clone(),
                expression: "1".into(),
                timeout_ms: Some(5000),
            },
        )
        .await
        .expect_err("the browser is dead");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("restart"), "{e}");
    // And keeps saying so, with the reason in the status.
    let e = act_err(&kit, id, BrowserAction::Tabs {}).await;
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    let st = kit.rt.browser_status(id).await.unwrap();
    assert_eq!(st.state, BrowserState::Crashed, "{st:?}");
    assert!(st.error.is_some());

    let st = kit.rt.browser_restart(id).await.expect("restart");
    assert_eq!(st.state, BrowserState::Running);
    assert_ne!(st.pid, Some(pid));
    match act(
        &kit,
        id,
        BrowserAction::Open {
            url: Some("data:text/html,<title>back</title>".into()),
            timeout_ms: None,
        },
    )
    .await
    {
        BrowserActionResult::Open { tab } => assert_eq!(tab.title, "back"),
        other => panic!("{other:?}"),
    }

    // Stop: its profile and process go.
    let procs = kit.rt.processes(id).await.unwrap();
    let profile = procs
        .processes
        .iter()
        .filter(|p| p.running)
        .flat_map(|p| p.argv.iter())
        .find(|a| a.starts_with("/tmp/.hull-browser-"))
        .cloned()
        .expect("the browser's profile in its argv");
    let st = kit.rt.browser_stop(id).await.unwrap();
    assert_eq!(st.state, BrowserState::Stopped);
    let r = kit.sh(id, &format!("test -e {profile}")).await;
    assert_eq!(r.exit_code, Some(1), "the profile is removed");

    // A browser running at destroy leaves no process on the host.
    kit.rt.browser_start(id).await.unwrap();
    let procs = kit.rt.processes(id).await.unwrap();
    let profile = procs
        .processes
        .iter()
        .filter(|p| p.running)
        .flat_map(|p| p.argv.iter())
        .find(|a| a.starts_with("/tmp/.hull-browser-"))
        .cloned()
        .unwrap();
    assert!(
        host_processes_with(&profile) > 0,
        "chromium runs on the host"
    );
    kit.rt.destroy(id).await.unwrap();
    assert_eq!(host_processes_with(&profile), 0, "no chromium left");

    // Actions on a sandbox that is gone, or that does not exist.
    let e = act_err(&kit, id, BrowserAction::Tabs {}).await;
    assert_eq!(e.kind, ErrorKind::NotFound);
    kit.finish().await;
}

/// Host processes whose command line mentions `needle` (Chromium's
/// processes all carry their profile directory).
fn host_processes_with(needle: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&c).contains(needle)
        {
            n += 1;
        }
    }
    n
}
