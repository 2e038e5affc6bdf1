"""The synchronous client against a live daemon: every method, with
hostile input (unknown ids, bad names, wrong states, oversize bodies)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, skip_or_fail

import hull


def wait_until(pred: Callable[[], bool], what: str, secs: float = 20.0) -> None:
    """Poll ``pred`` until it holds (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + secs
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- the daemon and its endpoints ------------------------------------------------


def test_daemon_calls(client: hull.Hull) -> None:
    assert client.health().status == "ok"
    v = client.version()
    assert v.api == "v1" and v.protocol_min <= v.protocol_max
    info = client.info()
    assert {"host", "busybox"} <= {t.name for t in info.templates}
    assert info.defaults.memory_bytes > 0
    assert "Hull(" in repr(client)


def test_tcp_with_token(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    with hull.Hull(url=daemon.url, token=daemon.token) as c:
        with c.sandbox(template="busybox") as sb:
            assert sb.exec("echo tcp").stdout == "tcp\n"
    # HULL_URL + HULL_TOKEN from the environment win over the socket.
    monkeypatch.setenv("HULL_URL", daemon.url)
    monkeypatch.setenv("HULL_TOKEN", daemon.token)
    monkeypatch.setenv("HULL_SOCKET", "/nonexistent/hull.sock")
    with hull.Hull() as c:
        assert c.endpoint.url == daemon.url
        assert c.version().api == "v1"
    monkeypatch.setenv("HULL_TOKEN", "0" * 64)
    with hull.Hull() as c:
        assert c.health().status == "ok"  # no token needed there
        with pytest.raises(hull.Unauthenticated):
            c.list()
    monkeypatch.delenv("HULL_TOKEN")
    with hull.Hull() as c, pytest.raises(hull.Unauthenticated):
        c.version()
    # HULL_SOCKET alone.
    monkeypatch.delenv("HULL_URL")
    monkeypatch.setenv("HULL_SOCKET", daemon.socket)
    with hull.Hull() as c:
        assert c.endpoint.socket == daemon.socket and c.version().api == "v1"


# --- sandboxes -------------------------------------------------------------------


def test_create_get_list_info_destroy(client: hull.Hull) -> None:
    sb = client.create(
        "busybox",
        name="py-create",
        profile="session",
        ttl="10m",
        idle_timeout=600,
        memory="256M",
        cpus=0.5,
        pids=64,
        disk="64M",
        env={"GREETING": "hi"},
        labels={"suite": "py", "case": "create"},
        user="1000",
        workdir="/tmp",
    )
    try:
        assert (sb.name, sb.state) == ("py-create", hull.SandboxState.RUNNING)
        assert sb.state == "running" and str(sb.state) == "running"
        lim = sb.last_info.limits
        assert (lim.memory_bytes, lim.cpus, lim.pids, lim.disk_bytes) == (256 << 20, 0.5, 64, 64 << 20)
        r = sb.exec("echo $GREETING; id -u; pwd")
        assert r.stdout == "hi\n1000\n/tmp\n"
        got = client.get("py-create")
        assert got.id == sb.id and got.last_info.labels == {"suite": "py", "case": "create"}
        assert [s.id for s in client.list(labels={"case": "create"})] == [sb.id]
        assert client.list(labels={"case": "nothing-has-this"}) == []
        assert sb.id in {s.id for s in client.list()}
        info = sb.info()
        assert info.expires_at is not None and info.idle_timeout_seconds == 600
        assert [e.kind for e in info.events][:1] == ["created"]
        assert "py-create" in repr(sb)
        # The name is taken.
        with pytest.raises(hull.Conflict, match="py-create"):
            client.create("busybox", name="py-create")
    finally:
        sb.destroy()
    with pytest.raises(hull.NotFound):
        sb.info()
    with pytest.raises(hull.NotFound):
        sb.destroy()


def test_create_hostile(client: hull.Hull) -> None:
    with pytest.raises(hull.InvalidArgument, match="DNS label|name"):
        client.create("busybox", name="Not A Name")
    with pytest.raises(hull.NotFound):
        client.create("no-such-template")
    with pytest.raises(hull.InvalidArgument):
        client.create("busybox", memory="1K")  # below the minimum
    with pytest.raises(hull.InvalidArgument):
        client.create("busybox", ttl="400d")  # over 30 days
    with pytest.raises(hull.NotFound):
        client.create(from_snapshot="no-such-snapshot")
    for bad in ("no-such-sandbox", "../../etc", "x" * 300, "a/b"):
        with pytest.raises((hull.NotFound, hull.InvalidArgument)):
            client.get(bad)
    with pytest.raises(hull.InvalidArgument, match="64"):
        client.list(labels={f"k{i}": "v" for i in range(65)})


def test_network_policy(client: hull.Hull) -> None:
    """Policies in both forms at create, read back (secrets redacted), changed live."""
    if not client.info().network.startswith("available"):
        pytest.skip(f"no sandbox networking: {client.info().network}")
    with client.sandbox(template="busybox", profile="rollout") as sb:
        assert sb.info().network is not None and sb.info().network.mode == "none"
        assert sb.network().summary == "none"
        # Created without an interface: widened in place.
        n = sb.set_network("allow:198.51.100.0/24:80")
        assert n.summary == "allow:198.51.100.0/24:80" and len(n.addresses) == 2
        assert sb.set_network("none").summary == "none"
    with client.sandbox(template="busybox", network="allow:198.51.100.0/24:80") as sb:
        n = sb.network()
        assert n.summary == "allow:198.51.100.0/24:80" and len(n.addresses) == 2
        n = sb.set_network(
            {"mode": "open", "headers": [{"domain": "api.example.com", "set": {"Authorization": "Bearer s3cret"}}]}
        )
        assert n.policy.mode == "open" and n.policy.headers[0].set == {"Authorization": "***"}
        assert "s3cret" not in sb.info().model_dump_json()
        assert sb.set_network("none").summary == "none"
        with pytest.raises(hull.InvalidArgument):
            sb.set_network("allow:10.0.0.1/8")
        with pytest.raises(hull.InvalidArgument):
            sb.set_network(42)  # type: ignore[arg-type]
    with pytest.raises(hull.InvalidArgument):
        client.create(template="busybox", network="sideways")


def test_sandbox_context_manager_always_destroys(client: hull.Hull) -> None:
    with pytest.raises(RuntimeError):
        with client.sandbox(template="busybox") as sb:
            sid = sb.id
            raise RuntimeError("boom")
    with pytest.raises(hull.NotFound):
        client.get(sid)
    # Destroyed inside the block: leaving it is still fine.
    with client.sandbox(template="busybox") as sb:
        sb.destroy()
    # A handle is a context manager too.
    with client.create("busybox") as sb2:
        sid2 = sb2.id
    with pytest.raises(hull.NotFound):
        client.get(sid2)


def test_lifecycle(sandbox: hull.Sandbox) -> None:
    assert sandbox.pause().state == "paused" and sandbox.state == "paused"
    with pytest.raises(hull.Conflict):
        sandbox.exec("true")
    with pytest.raises(hull.Conflict):
        sandbox.pause()
    assert sandbox.resume().state == "running"
    with pytest.raises(hull.Conflict):
        sandbox.resume()
    before = sandbox.info().expires_at
    assert sandbox.set_ttl("2h").expires_at != before
    assert sandbox.set_ttl(0).expires_at is None
    with pytest.raises(hull.InvalidArgument):
        sandbox.set_ttl("31d")
    with pytest.raises(hull.InvalidArgument):
        sandbox.set_ttl("soon")
    assert sandbox.stop().state == "stopped"
    with pytest.raises(hull.Conflict):
        sandbox.exec("true")


# --- exec ------------------------------------------------------------------------


def test_exec(sandbox: hull.Sandbox) -> None:
    r = sandbox.exec("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.ok) == ("out\n", "err\n", 3, False)
    r = sandbox.exec(["sh", "-c", 'printf "%s|" "$@"', "argv0", "a b", "c"])
    assert r.stdout == "a b|c|" and r.ok
    assert sandbox.exec(["cat"], stdin="from stdin").stdout == "from stdin"
    assert sandbox.exec("cat", stdin=b"bytes too").stdout == "bytes too"
    assert sandbox.exec("pwd", cwd="/etc").stdout == "/etc\n"
    assert sandbox.exec("echo $A$B", env={"A": "1", "B": "2"}).stdout == "12\n"
    assert sandbox.exec("id -un", user="nobody").stdout == "nobody\n"
    r = sandbox.exec("echo started; sleep 30", timeout=2)
    assert r.timed_out and r.exit_code is None and r.stdout == "started\n" and r.cli_exit_code == 124
    r = sandbox.exec("kill -9 $$")
    assert r.signal == 9 and r.cli_exit_code == 137
    with pytest.raises(hull.NotFound) as e:
        sandbox.exec(["no-such-program"])
    assert e.value.reason == "command_not_found"
    with pytest.raises(hull.PermissionDenied) as e2:
        sandbox.exec(["/etc/passwd"])
    assert e2.value.reason == "command_not_executable"
    with pytest.raises(hull.InvalidArgument):
        sandbox.exec([])
    with pytest.raises(hull.InvalidArgument):
        sandbox.exec("true", cwd="relative")
    with pytest.raises(hull.InvalidArgument):
        sandbox.exec("cat", stdin="x" * (2 << 20))  # over the 1 MiB JSON body limit
    with pytest.raises(hull.InvalidArgument):
        sandbox.exec("true", timeout=-1)


def test_exec_stream(sandbox: hull.Sandbox) -> None:
    stream = sandbox.exec_stream("echo one; echo two >&2; printf '\\342\\200\\250x\\n'; exit 5")
    chunks, end = [], None
    for ev in stream:
        if isinstance(ev, hull.OutputChunk):
            chunks.append(ev)
        else:
            end = ev
    assert isinstance(end, hull.ExecExit) and end.exit_code == 5
    assert stream.result is end and stream.exit_code == 5
    assert stream.started is not None and stream.started.id
    out = b"".join(c.raw for c in chunks if c.stream == "stdout")
    assert out == "one\n\u2028x\n".encode()
    assert "".join(c.data for c in chunks if c.stream == "stderr") == "two\n"
    assert list(stream) == []  # exhausted
    # Errors before the start raise at the first iteration.
    with pytest.raises(hull.NotFound):
        next(iter(sandbox.exec_stream(["no-such-program"])))
    # Closing early kills the command.
    with sandbox.exec_stream("echo ready; exec sleep 300") as s:
        first = next(s)
        assert isinstance(first, hull.OutputChunk) and first.data == "ready\n"
        started = s.started
    assert started is not None

    def gone() -> bool:
        return not any(p.id == started.id and p.running for p in sandbox.processes())

    wait_until(gone, "the streamed command to be killed")
    # A timeout ends the stream with timed_out.
    last = list(sandbox.exec_stream("sleep 30", timeout=0.3))[-1]
    assert isinstance(last, hull.ExecExit) and last.timed_out


def test_background_processes_and_signal(sandbox: hull.Sandbox) -> None:
    p = sandbox.exec_background("exec sleep 300")
    assert p.id and p.pid > 0
    procs = {x.id: x for x in sandbox.processes()}
    assert procs[p.id].running and procs[p.id].background
    sandbox.signal(p, 15)
    wait_until(lambda: not {x.id: x for x in sandbox.processes()}[p.id].running, "the process to end")
    ended = {x.id: x for x in sandbox.processes()}[p.id]
    assert ended.signal == 15
    with pytest.raises(hull.Conflict):
        sandbox.signal(p.id, 15)  # already exited
    with pytest.raises(hull.NotFound):
        sandbox.signal("p999999", 15)
    with pytest.raises(hull.InvalidArgument):
        sandbox.signal(p.id, 99)


# --- files -----------------------------------------------------------------------


def test_files(sandbox: hull.Sandbox, tmp_path: Path) -> None:
    f = sandbox.files
    info = f.write("/work/a/b.txt", "hello\n")
    assert (info.path, info.size, info.mode & 0o777) == ("/work/a/b.txt", 6, 0o644)
    assert f.read("/work/a/b.txt") == b"hello\n"
    assert f.read_text("/work/a/b.txt") == "hello\n"
    assert f.write("/work/bin.dat", bytes(range(256)), mode=0o600).mode & 0o777 == 0o600
    assert f.read("/work/bin.dat") == bytes(range(256))
    assert f.write("/work/x.sh", b"#!/bin/sh\necho x\n", mode="755").mode & 0o777 == 0o755
    assert sandbox.exec("/work/x.sh").stdout == "x\n"
    big = os.urandom(3 << 20)
    with open(tmp_path / "big", "wb") as fh:
        fh.write(big)
    with open(tmp_path / "big", "rb") as fh:
        assert f.write("/work/big", fh).size == len(big)
    assert hashlib.sha256(f.read("/work/big")).digest() == hashlib.sha256(big).digest()
    assert f.write("/work/chunks", iter([b"a", b"b", b"c"])).size == 3
    # A file over the daemon's upload limit (1 GiB by default; sparse here)
    # is refused from its Content-Length before anything is sent.
    with open(tmp_path / "sparse", "wb") as fh:
        fh.truncate((1 << 30) + 1)
    with open(tmp_path / "sparse", "rb") as fh, pytest.raises(hull.InvalidArgument, match="larger than the limit"):
        f.write("/work/huge", fh)
    assert not f.exists("/work/huge")
    st = f.stat("/work/a")
    assert st.is_dir and not st.is_file
    assert f.exists("/work/a/b.txt") and not f.exists("/work/nope")
    names = sorted(e.path for e in f.list("/work"))
    assert names == ["/work/a", "/work/big", "/work/bin.dat", "/work/chunks", "/work/x.sh"]
    deep = f.list("/work", depth=2)
    assert "/work/a/b.txt" in {e.path for e in deep} and deep.truncated is False
    f.mkdir("/work/m/n")
    assert f.stat("/work/m/n").is_dir
    with pytest.raises(hull.Conflict):
        f.mkdir("/work/m", parents=False)
    f.rename("/work/a/b.txt", "/work/m/n/c.txt")
    assert f.read("/work/m/n/c.txt") == b"hello\n" and not f.exists("/work/a/b.txt")
    with pytest.raises(hull.Conflict):
        f.remove("/work/m")
    f.remove("/work/m", recursive=True)
    f.remove("/work/chunks")
    assert not f.exists("/work/m") and not f.exists("/work/chunks")
    # Hostile paths.
    with pytest.raises(hull.NotFound):
        f.read("/no/such/file")
    with pytest.raises(hull.InvalidArgument):
        f.read("relative/path")
    with pytest.raises(hull.InvalidArgument):
        f.list("/work", depth=0)
    with pytest.raises(hull.InvalidArgument):
        f.write("", b"x")
    # `..` stops at the sandbox's root.
    f.write("/../../../../tmp/escape.txt", "inside")
    assert f.read("/tmp/escape.txt") == b"inside"
    assert not Path("/tmp/escape.txt").exists() or Path("/tmp/escape.txt").read_bytes() != b"inside"


def test_upload_download(sandbox: hull.Sandbox, tmp_path: Path) -> None:
    f = sandbox.files
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "sub" / "inner.bin").write_bytes(b"\x00\x01")
    os.chmod(src / "sub" / "inner.bin", 0o750)
    os.symlink("top.txt", src / "link")
    assert f.upload(src, "/data") == "/data"
    assert f.read("/data/sub/inner.bin") == b"\x00\x01"
    assert f.stat("/data/link").kind == "symlink"
    one = tmp_path / "one.sh"
    one.write_text("#!/bin/sh\necho one\n")
    os.chmod(one, 0o755)
    assert f.upload(one, "/data/") == "/data/one.sh"  # into a directory, keeping the name
    assert f.upload(one, "/data/sub") == "/data/sub/one.sh"
    assert f.upload(one, "/data/renamed.sh") == "/data/renamed.sh"
    assert f.stat("/data/renamed.sh").mode & 0o777 == 0o755
    assert sandbox.exec("/data/renamed.sh").stdout == "one\n"
    out = tmp_path / "out"
    assert f.download("/data", out) == str(out)
    assert (out / "top.txt").read_text() == "top"
    assert (out / "sub" / "inner.bin").read_bytes() == b"\x00\x01"
    assert os.readlink(out / "link") == "top.txt"
    assert (out / "sub" / "inner.bin").stat().st_mode & 0o777 == 0o750
    assert f.download("/data/top.txt", tmp_path) == str(tmp_path / "top.txt")
    assert (tmp_path / "top.txt").read_text() == "top"
    assert f.download("/data/top.txt", tmp_path / "named.txt") == str(tmp_path / "named.txt")
    with pytest.raises(hull.NotFound):
        f.download("/nothing", tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.hull-part").exists()
    with pytest.raises(FileNotFoundError):
        f.upload(tmp_path / "missing", "/data/x")


# --- shell sessions --------------------------------------------------------------


def test_shell_sessions(host_sandbox: hull.Sandbox) -> None:
    sb = host_sandbox
    sh = sb.shell()
    assert sh.name == "default" and sh.pid > 0
    r = sh.run("cd /tmp && export X=41 && f() { echo $((X+1)); }")
    assert r.ok and r.cwd == "/tmp"
    r = sh.run("f; pwd")
    assert r.output == "42\n/tmp\n" and r.exit_code == 0
    assert sh.run("false").exit_code == 1
    # Opening an existing name gives that session.
    again = sb.shell()
    assert again.pid == sh.pid and again.run("echo $X").output == "41\n"
    r = sh.run("sleep 60", timeout=0.5)
    assert r.timed_out and sh.run("echo $X").output == "41\n"
    r = sh.run("echo start; sleep 60", idle_timeout=2)
    assert r.idle_timed_out and r.output.startswith("start")
    r = sh.run("seq 1 100000", max_output=1000)
    assert r.truncated
    # Interactive input: send and expect.
    assert sh.send("python3 -i -q\n", expect=">>> $").matched
    out = sh.send("6*7\n", expect=">>> $")
    assert out.matched and "42" in out.output
    assert sh.expect(">>> never", timeout=0.3).timed_out
    with pytest.raises(hull.Conflict):
        sh.run("true")  # the terminal is held by python
    sh.send("exit()\n", expect=r"\$ ?$|^$", timeout=2)
    with pytest.raises(hull.InvalidArgument):
        sh.send("x", expect="(unclosed")
    with sb.shell("second", cwd="/etc", env={"Y": "y"}) as second:
        assert second.run("pwd; echo $Y").output == "/etc\ny\n"
        assert {s.session for s in sb.shells()} == {"default", "second"}
    assert {s.session for s in sb.shells()} == {"default"}
    sh.close()
    assert sb.shells() == []
    with pytest.raises(hull.NotFound):
        sh.run("true")
    with pytest.raises(hull.NotFound):
        sh.close()
    with pytest.raises(hull.InvalidArgument):
        sb.shell("bad name!")


def test_shell_needs_bash(sandbox: hull.Sandbox) -> None:
    with pytest.raises(hull.NotFound, match="bash") as e:
        sandbox.shell()
    assert e.value.reason == "command_not_found"


# --- code interpreter ------------------------------------------------------------


def test_code(host_sandbox: hull.Sandbox) -> None:
    code = host_sandbox.code
    r = code.run("x = 41\nprint('set')")
    assert r.stdout == "set\n" and r.error is None
    r = code.run("x + 1")
    assert r.text == "42" and r.results == [{"text/plain": "42"}]
    r = code.run("1/0")
    assert r.error is not None and r.error.name == "ZeroDivisionError" and r.error.traceback
    info = code.create("other")
    assert info.context == "other" and info.alive and info.language == "python"
    with pytest.raises(hull.Conflict):
        code.create("other")
    assert code.run("'x' in dir()", context="other").text == "False"
    assert {c.context for c in code.list()} == {"default", "other"}
    r = code.run("import time; time.sleep(60)", timeout=0.5)
    assert r.timed_out and code.run("x").text == "41"
    # Interrupt a run in progress from another thread.
    result: dict[str, hull.CodeRunResult] = {}
    t = threading.Thread(
        target=lambda: result.setdefault("r", code.run("import time; time.sleep(60)", context="other"))
    )
    t.start()
    deadline = time.monotonic() + 30
    while t.is_alive() and time.monotonic() < deadline:
        code.interrupt("other")
        t.join(0.2)
    t.join()
    err = result["r"].error
    assert err is not None and err.name == "KeyboardInterrupt"
    restarted = code.restart("default")
    assert restarted.alive and code.run("'x' in dir()").text == "False"
    code.stop("other")
    assert {c.context for c in code.list()} == {"default"}
    with pytest.raises(hull.NotFound):
        code.stop("other")
    with pytest.raises(hull.NotFound):
        code.restart("nothing")
    with pytest.raises(hull.InvalidArgument):
        code.create("bad name!")


# --- snapshots, fork, rollback ---------------------------------------------------


def test_snapshot_fork_rollback(client: hull.Hull, sandbox: hull.Sandbox, tmp_path: Path) -> None:
    sandbox.files.write("/state.txt", "v1")
    snap = sandbox.snapshot("py-snap", labels={"suite": "py"})
    assert snap.name == "py-snap" and snap.sandbox == sandbox.id and snap.template == "busybox"
    with pytest.raises(hull.Conflict):
        sandbox.snapshot("py-snap")
    with pytest.raises(hull.InvalidArgument):
        sandbox.snapshot("Bad Name")
    assert client.snapshots.get("py-snap").id == snap.id
    assert [s.id for s in client.snapshots.list(labels={"suite": "py"})] == [snap.id]
    sandbox.files.write("/state.txt", "v2")
    info = sandbox.rollback(snap)
    assert info.snapshot == snap.id and sandbox.files.read("/state.txt") == b"v1"
    forks = client.fork("py-snap", 3, profile="rollout", ttl=600, labels={"fork": "yes"}, memory="128M")
    try:
        assert len(forks) == 3 and len({s.id for s in forks}) == 3
        for i, sb in enumerate(forks):
            assert sb.last_info.profile == "rollout" and sb.last_info.limits.memory_bytes == 128 << 20
            assert sb.files.read("/state.txt") == b"v1"
            sb.files.write("/state.txt", f"fork{i}")
        assert [sb.files.read("/state.txt") for sb in forks] == [b"fork0", b"fork1", b"fork2"]
        assert {s.id for s in client.list(labels={"fork": "yes"})} == {s.id for s in forks}
        with pytest.raises(hull.Conflict):
            client.snapshots.remove(snap)  # in use
    finally:
        for sb in forks:
            sb.destroy()
    with pytest.raises(hull.InvalidArgument):
        client.fork(snap, 0)
    with pytest.raises(hull.InvalidArgument):
        client.fork(snap, 5000)
    with pytest.raises(hull.NotFound):
        client.fork("no-such-snapshot", 1)
    with pytest.raises(hull.NotFound):
        sandbox.rollback("no-such-snapshot")
    # Export and import (under another name), then a sandbox from it.
    archive = tmp_path / "snap.tar.zst"
    client.snapshots.export(snap, archive)
    buf = io.BytesIO()
    client.snapshots.export("py-snap", buf)
    assert archive.read_bytes()[:4] == b"\x28\xb5\x2f\xfd" and buf.getvalue()[:4] == b"\x28\xb5\x2f\xfd"
    imported = client.snapshots.import_archive(archive, name="py-imported")
    assert imported.name == "py-imported" and imported.id != snap.id
    with pytest.raises(hull.Conflict):
        client.snapshots.import_archive(io.BytesIO(buf.getvalue()), name="py-imported")
    with pytest.raises(hull.InvalidArgument):
        client.snapshots.import_archive(io.BytesIO(b"not an archive"), name="py-bad")
    with client.sandbox(from_snapshot=imported) as sb:
        assert sb.files.read("/state.txt") == b"v1"
    # Templates saved from a snapshot.
    t = client.templates.save(imported, "py-saved")
    assert t.name == "py-saved" and t.snapshot == imported.id
    assert "py-saved" in {x.name for x in client.templates.list()}
    with client.sandbox(template="py-saved") as sb:
        assert sb.files.read("/state.txt") == b"v1"
    with pytest.raises(hull.Conflict):
        client.templates.save(imported, "py-saved")
    client.templates.remove("py-saved")
    with pytest.raises(hull.NotFound):
        client.templates.remove("py-saved")
    with pytest.raises(hull.InvalidArgument):
        client.templates.remove("busybox")
    client.snapshots.remove(imported)
    with pytest.raises(hull.NotFound):
        client.snapshots.get(imported.id)
    sandbox.destroy()
    client.snapshots.remove("py-snap")
    with pytest.raises(hull.NotFound):
        client.snapshots.remove("py-snap")


# --- templates: images and Debian builds -----------------------------------------


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _tar(entries: list[tuple[str, bytes | None, int, str | None]]) -> bytes:
    """A tar of (name, data or None for a directory, mode, symlink target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data, mode, link in entries:
            t = tarfile.TarInfo(name)
            t.mode, t.mtime = mode, 1_700_000_000
            if link is not None:
                t.type, t.linkname = tarfile.SYMTYPE, link
                tf.addfile(t)
            elif data is None:
                t.type = tarfile.DIRTYPE
                tf.addfile(t)
            else:
                t.size = len(data)
                tf.addfile(t, io.BytesIO(data))
    return buf.getvalue()


def oci_image(layers: list[bytes], config: dict) -> bytes:
    """An OCI image layout in a tar, as ``crates/testkit/src/oci.rs`` makes it."""
    blobs, descs, diff_ids = [], [], []
    for layer in layers:
        diff_ids.append(f"sha256:{_sha(layer)}")
        gz = gzip.compress(layer, compresslevel=1)
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{_sha(gz)}",
                "size": len(gz),
            }
        )
        blobs.append(gz)
    cfg = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": config, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{_sha(cfg)}",
                "size": len(cfg),
            },
            "layers": descs,
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": f"sha256:{_sha(manifest)}",
                    "size": len(manifest),
                    "annotations": {"org.opencontainers.image.ref.name": "latest"},
                }
            ],
        }
    ).encode()
    blobs += [cfg, manifest]
    entries: list[tuple[str, bytes | None, int, str | None]] = [
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644, None),
        ("index.json", index, 0o644, None),
    ]
    entries += [(f"blobs/sha256/{_sha(b)}", b, 0o644, None) for b in blobs]
    return _tar(entries)


def test_template_import_image(client: hull.Hull, tmp_path: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        skip_or_fail("no busybox on the host (apt-get install busybox-static)")
    layer = _tar(
        [("bin/", None, 0o755, None), ("bin/busybox", Path(busybox).read_bytes(), 0o755, None)]
        + [(f"bin/{a}", None, 0o777, "busybox") for a in ("sh", "cat", "pwd", "id")]
        + [("etc/", None, 0o755, None), ("etc/hello.txt", b"from the image\n", 0o644, None)]
    )
    image = tmp_path / "Py_Image.tar"
    image.write_bytes(oci_image([layer], {"Env": ["FROM_IMAGE=yes"], "WorkingDir": "/etc"}))
    t = client.templates.import_image(image)
    assert t.name == "py-image" and t.config is not None and t.config.env.get("FROM_IMAGE") == "yes"
    try:
        with pytest.raises(hull.Conflict):
            client.templates.import_image(image)  # the name is taken
        with client.sandbox(template="py-image") as sb:
            assert sb.exec("cat hello.txt; echo $FROM_IMAGE").stdout == "from the image\nyes\n"
        with pytest.raises(hull.NotFound):
            client.templates.import_image(image, name="py-image-ref", reference="no-such-ref")
        bad = tmp_path / "bad.tar"
        bad.write_bytes(b"garbage" * 100)
        with pytest.raises(hull.InvalidArgument):
            client.templates.import_image(bad, name="py-bad")
    finally:
        client.templates.remove("py-image")
    assert "py-image" not in {x.name for x in client.templates.list()}


def test_template_build(client: hull.Hull) -> None:
    if not shutil.which("mmdebstrap"):
        skip_or_fail("mmdebstrap is not installed (apt-get install mmdebstrap)")
    with pytest.raises(hull.InvalidArgument):
        client.templates.build("Bad Name", debian="bookworm")
    events: list[hull.models.BuildEvent] = []
    try:
        t = client.templates.build("py-deb", debian="bookworm", on_event=events.append)
    except hull.Unavailable as e:
        skip_or_fail(f"Debian build unavailable here: {e}")
    try:
        assert t.name == "py-deb" and t.config is not None and "bookworm" in (t.config.source or "")
        assert {"phase", "done"} <= {e.event for e in events}
        with client.sandbox(template="py-deb") as sb:
            assert sb.exec("cat /etc/debian_version").stdout.startswith("12.")
    finally:
        client.templates.remove("py-deb")
