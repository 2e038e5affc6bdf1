//! The Python SDK (`sdk/python`, distribution `hull-sdk`) built as a wheel,
//! installed into a virtualenv under /var/cache/hull (outside the
//! checkout), and its pytest suite run against this build's `hull`: the
//! suite's fixture starts `hull serve` on a private state directory, socket
//! and TCP port, and stops it by pid at the end. So `cargo nextest run
//! --workspace` covers the SDK. Without root, python3-venv or PyPI this
//! skips with a message, and fails instead under `HULL_TEST_PRIVILEGED=1`
//! or `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hull_testkit::privileged;

const VENV: &str = "/var/cache/hull/venv-sdk";
/// Installed once; the SDK itself is reinstalled from the checkout each run.
const TOOLS: &[&str] = &["pytest>=8,<10", "hatchling>=1.20"];

fn strict() -> bool {
    std::env::var("HULL_TEST_PRIVILEGED").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true")
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python")
}

fn show(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run a setup step; `Err` with its output when it fails.
fn step(what: &str, cmd: &mut Command) -> Result<(), String> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("{what} failed ({}):\n{}", o.status, show(&o))),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The venv's python with the SDK from this checkout installed (as a wheel
/// built by hatchling) and pytest, or the reason it could not be made.
fn venv_with_sdk() -> Result<PathBuf, String> {
    let python = Path::new(VENV).join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import pytest, hatchling, httpx, pydantic"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready(&python) {
        step(
            "python3 -m venv (apt-get install python3-venv)",
            Command::new("python3").args(["-m", "venv", "--clear", VENV]),
        )?;
        // The SDK's own dependencies (httpx, pydantic) come with it below;
        // the tools once, from PyPI.
        step(
            "pip install pytest hatchling (PyPI needed)",
            Command::new(Path::new(VENV).join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .args(TOOLS),
        )?;
    }
    // Dependencies first (a no-op once present), then the SDK from the
    // checkout, rebuilt each run without touching the index.
    step(
        "pip install ./sdk/python (PyPI needed for httpx, pydantic)",
        Command::new(Path::new(VENV).join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-build-isolation",
            ])
            .arg(sdk_dir()),
    )?;
    step(
        "pip install --force-reinstall ./sdk/python",
        Command::new(Path::new(VENV).join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-build-isolation",
                "--no-deps",
                "--force-reinstall",
            ])
            .arg(sdk_dir()),
    )?;
    Ok(python)
}

/// The whole pytest suite of `sdk/python/tests` against this build.
#[test]
fn python_sdk() {
    if !privileged("python_sdk") {
        return;
    }
    let python = match venv_with_sdk() {
        Ok(p) => p,
        Err(why) => {
            assert!(!strict(), "python_sdk: {why}");
            eprintln!("SKIP python_sdk: {why}");
            return;
        }
    };
    let o = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests",
        ])
        .current_dir(sdk_dir())
        .env("HULL_BIN", env!("CARGO_BIN_EXE_hull"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The tests import the installed wheel, not the source tree.
        .env_remove("PYTHONPATH")
        .env_remove("HULL_URL")
        .env_remove("HULL_TOKEN")
        .env_remove("HULL_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("running pytest");
    let out = show(&o);
    // pytest exits 5 when it collected nothing: that is a failure too.
    assert!(o.status.success(), "pytest failed ({}):\n{out}", o.status);
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or("")
        .to_string();
    assert!(
        !summary.contains("skipped") || !strict(),
        "python_sdk: tests skipped under CI:\n{out}"
    );
    eprintln!("python_sdk: {summary}");
    // The installed package is the one from this checkout.
    let where_ = Command::new(&python)
        .args(["-c", "import hull, sys; sys.stdout.write(hull.__file__)"])
        .env_remove("PYTHONPATH")
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&where_.stdout).starts_with(VENV),
        "hull imported from outside the venv: {}",
        show(&where_)
    );
}
