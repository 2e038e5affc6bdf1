//! E2B compatibility with the real SDKs: a daemon's router on a TCP
//! listener over a private runtime, driven by the unmodified `e2b` and
//! `e2b-code-interpreter` Python packages (pinned; installed into a venv
//! under /var/cache/hull on first use) running
//! `tests/python/e2b_client.py`, configured only through `E2B_API_URL`,
//! `E2B_SANDBOX_URL` and `E2B_API_KEY`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{Fixture, privileged};
use hull_server::{Auth, router};

/// The upload cap: the script's oversize upload (2 MiB) passes it.
const MAX_UPLOAD: u64 = 1 << 20;
const PINS: [(&str, &str); 2] = [("e2b", "2.63.0"), ("e2b-code-interpreter", "2.11.5")];

/// Whether `python` has exactly the pinned packages.
fn has_pins(python: &Path) -> bool {
    let probe = PINS
        .iter()
        .map(|(p, _)| format!("m.version('{p}')"))
        .collect::<Vec<_>>()
        .join(", ");
    let want = PINS.iter().map(|(_, v)| *v).collect::<Vec<_>>().join(" ");
    Command::new(python)
        .args([
            "-c",
            &format!("import e2b, e2b_code_interpreter, importlib.metadata as m; print({probe})"),
        ])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == want)
}

/// A python with the pinned E2B SDKs: the shared compat venv when it has
/// them, else /var/cache/hull/venv-e2b, made on first use. `None` after a
/// SKIP message (a failure under `HULL_TEST_PRIVILEGED=1`).
fn python_e2b(test: &str) -> Option<PathBuf> {
    for venv in ["/var/cache/hull/venv-e2b", "/var/cache/hull/venv-compat"] {
        let p = Path::new(venv).join("bin/python");
        if has_pins(&p) {
            return Some(p);
        }
    }
    const VENV: &str = "/var/cache/hull/venv-e2b";
    let python = Path::new(VENV).join("bin/python");
    let pins: Vec<String> = PINS.iter().map(|(p, v)| format!("{p}=={v}")).collect();
    let made = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear", VENV])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(Path::new(VENV).join("bin/pip"))
            .args(["install", "-q"])
            .args(&pins)
            .status()
            .is_ok_and(|s| s.success());
    if !made || !has_pins(&python) {
        let why = format!(
            "could not install {} into {VENV} (python3-venv and PyPI needed)",
            pins.join(" ")
        );
        assert!(
            std::env::var("HULL_TEST_PRIVILEGED").as_deref() != Ok("1"),
            "{test}: {why}"
        );
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    Some(python)
}

/// Whether the host template's python3 has ipykernel (the interpreter case).
fn have_ipykernel(test: &str) -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import ipykernel"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("HULL_TEST_PRIVILEGED").as_deref() != Ok("1"),
            "{test}: python3-ipykernel is not installed (apt-get install python3-ipykernel)"
        );
        eprintln!("SKIP {test} (interpreter case): python3-ipykernel is not installed");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_sdks_drive_hull() {
    if !privileged("e2b_sdks_drive_hull") {
        return;
    }
    let Some(python) = python_e2b("e2b_sdks_drive_hull") else {
        return;
    };
    let f = Fixture::new().await;
    let token = hull_server::ensure_token(f.dir.path()).unwrap();
    let app = router(
        f.rt.clone(),
        Auth::Bearer(Arc::new(token.clone())),
        MAX_UPLOAD,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let escape = format!("/tmp/hull-e2b-escape-{}", std::process::id());
    let mut cases = vec![
        "lifecycle",
        "commands",
        "files",
        "offline",
        "watch",
        "watch_async",
        "hostile",
    ];
    if have_ipykernel("e2b_sdks_drive_hull") {
        cases.push("interpreter");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/e2b_client.py");
    let (esc, key) = (escape.clone(), format!("e2b_{}", token.trim()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(&cases)
            .env("E2B_API_URL", format!("http://{addr}/e2b"))
            .env("E2B_SANDBOX_URL", format!("http://{addr}/e2b/sandbox"))
            .env("E2B_API_KEY", key)
            .env("HULL_ESCAPE_PATH", esc)
            .env_remove("E2B_DEBUG")
            .env_remove("E2B_DOMAIN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "e2b_client.py failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !Path::new(&escape).exists(),
        "a sandbox path escaped to the host: {escape}"
    );
    let left =
        f.rt.list(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>();
    assert!(
        left.is_empty(),
        "the script kills what it creates: {left:?}"
    );
    server.abort();
    f.finish().await;
}
