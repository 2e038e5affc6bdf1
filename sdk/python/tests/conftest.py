"""Fixtures: a live hull daemon on a private state directory and socket.

The daemon is ``hull serve`` from ``HULL_BIN`` (default: the workspace's
debug build under /var/cache/hull/target), on a temporary directory under
/tmp, also listening on a free loopback TCP port (for the ``HULL_URL`` +
``HULL_TOKEN`` path). At the end of the session every sandbox a test left
behind fails the run; then the daemon's ``system/reset`` removes all it
made on the host, the daemon is stopped by its pid, and the directory is
removed.

Creating sandboxes needs root. Without root, or without the binary, the
live tests skip with a message, except under ``CI=true`` or
``HULL_TEST_PRIVILEGED=1``, where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import hull

DEFAULT_BIN = "/var/cache/hull/target/x86_64-unknown-linux-gnu/debug/hull"
REPO = Path(__file__).resolve().parents[3]


def strict() -> bool:
    """Skips are failures (CI)."""
    return os.environ.get("CI") == "true" or os.environ.get("HULL_TEST_PRIVILEGED") == "1"


def skip_or_fail(why: str) -> None:
    """Skip the test, or fail it under CI."""
    if strict():
        pytest.fail(f"{why} (CI=true / HULL_TEST_PRIVILEGED=1: not skipping)", pytrace=False)
    pytest.skip(why)


@dataclass
class Daemon:
    """A running daemon started by the fixture."""

    dir: Path
    socket: str
    state: Path
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self) -> hull.Hull:
        """A synchronous client on the unix socket."""
        return hull.Hull(socket=self.socket)

    def aclient(self) -> hull.AsyncHull:
        """An asyncio client on the unix socket."""
        return hull.AsyncHull(socket=self.socket)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the daemon we started (by its pid), SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """The session's daemon (see the module docstring)."""
    if os.geteuid() != 0:
        skip_or_fail("live SDK tests need root (sandboxes use namespaces, mounts and cgroups)")
    binary = os.environ.get("HULL_BIN") or DEFAULT_BIN
    if not os.access(binary, os.X_OK):
        skip_or_fail(f"no hull binary at {binary} (build it with `cargo build -p hull`, or set HULL_BIN)")
    d = Path(tempfile.mkdtemp(prefix="hull-py", dir="/tmp"))
    # Sandbox root is an unprivileged host uid: it must be able to reach
    # the state directory (mkdtemp makes it 0700).
    os.chmod(d, 0o755)
    sock = str(d / "hull.sock")
    state = d / "state"
    log = d / "daemon.log"
    addr = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("HULL_URL", "HULL_TOKEN", "HULL_SOCKET")}
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [binary, "serve", "--socket", sock, "--state-dir", str(state), "--listen", addr],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hull serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
            if (state / "token").exists() and os.path.exists(sock):
                try:
                    with hull.Hull(socket=sock) as c:
                        c.health()
                    break
                except hull.HullError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"hull serve did not answer in 30 s:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        token = (state / "token").read_text().strip()
        yield Daemon(d, sock, state, f"http://{addr}", token, proc, log)
    finally:
        leftovers: list[str] = []
        try:
            if proc.poll() is None:
                with hull.Hull(socket=sock, timeout=300) as c:
                    leftovers = [sb.id for sb in c.list()]
                    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=300) as raw:
                        raw.post("http://localhost/v1/system/reset").raise_for_status()
        finally:
            _stop(proc)
            if request.session.testsfailed:
                tail = "".join(log.read_text(errors="replace").splitlines(True)[-60:])
                print(f"\n--- daemon log (last 60 lines) ---\n{tail}")
            shutil.rmtree(d, ignore_errors=True)
        assert not leftovers, f"tests left sandboxes behind: {leftovers}"


@pytest.fixture
def client(daemon: Daemon) -> Iterator[hull.Hull]:
    """A synchronous client of the session's daemon."""
    with daemon.client() as c:
        yield c


@pytest.fixture
def sandbox(client: hull.Hull) -> Iterator[hull.Sandbox]:
    """A fresh ``busybox`` sandbox, destroyed after the test."""
    with client.sandbox(template="busybox") as sb:
        yield sb


@pytest.fixture
def host_sandbox(client: hull.Hull) -> Iterator[hull.Sandbox]:
    """A fresh ``host`` sandbox (bash, python3), destroyed after the test."""
    with client.sandbox(template="host") as sb:
        yield sb


@pytest.fixture(scope="session")
def openapi() -> dict:
    """``docs/openapi.json`` of this checkout (or ``HULL_OPENAPI``)."""
    import json

    p = Path(os.environ.get("HULL_OPENAPI") or REPO / "docs" / "openapi.json")
    if not p.is_file():
        pytest.fail(f"{p} not found: run the tests from the hull checkout, or set HULL_OPENAPI", pytrace=False)
    return json.loads(p.read_text())
