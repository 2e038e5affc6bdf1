"""The unmodified E2B SDKs (e2b 2.63.0, e2b-code-interpreter 2.11.5) against
a hull daemon. Configured only through the SDK's own environment variables,
which the Rust harness (crates/server/tests/compat_e2b.rs) sets:
E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY. Prints "ok" when every case
passed; any failure raises.

usage: e2b_client.py [case...]   (all cases without arguments)
"""

import io
import os
import sys
import time

import httpx
from e2b import (
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    TimeoutException,
)
from e2b.sandbox.filesystem.filesystem import FileType

CASES = {}


def case(f):
    CASES[f.__name__] = f
    return f


def check(cond, what):
    if not cond:
        raise AssertionError(what)


@case
def lifecycle():
    sb = Sandbox.create(timeout=120, metadata={"suite": "e2b", "case": "lifecycle"})
    try:
        check(sb.is_running(), "a new sandbox runs")
        info = sb.get_info()
        check(info.sandbox_id == sb.sandbox_id, f"get_info id: {info}")
        check(info.metadata.get("suite") == "e2b", f"metadata: {info.metadata}")
        listed = Sandbox.list(query=SandboxQuery(metadata={"case": "lifecycle"})).next_items()
        check([s.sandbox_id for s in listed] == [sb.sandbox_id], f"list by metadata: {listed}")
        sb.set_timeout(600)
        end = sb.get_info().end_at.timestamp()
        check(end > time.time() + 500, f"set_timeout moved the end: {end}")
        # Another client connects by id and runs a command.
        other = Sandbox.connect(sb.sandbox_id)
        check(other.commands.run("echo hi").stdout == "hi\n", "connect + run")
        # Pause: envd no longer answers; connect resumes.
        check(sb.pause() is True, "pause")
        check(not sb.is_running(), "a paused sandbox is not running")
        check(Sandbox.connect(sb.sandbox_id).commands.run("true").exit_code == 0, "connect resumes")
        check(sb.is_running(), "running again")
    finally:
        check(sb.kill() is True, "kill")
    check(not sb.is_running(), "a killed sandbox is not running")
    check(Sandbox.kill(sb.sandbox_id) is False, "a second kill finds nothing")
    try:
        Sandbox.get_info(sb.sandbox_id)
        raise AssertionError("get_info of a killed sandbox")
    except NotFoundException:
        pass


@case
def commands():
    sb = Sandbox.create()
    try:
        r = sb.commands.run("echo out; echo err >&2")
        check((r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0), f"run: {r}")
        # Streaming callbacks see the output as it comes.
        seen = []
        r = sb.commands.run(
            "for i in 1 2 3; do echo $i; echo e$i >&2; sleep 0.05; done",
            on_stdout=lambda s: seen.append(("out", s)),
            on_stderr=lambda s: seen.append(("err", s)),
        )
        check([s for k, s in seen if k == "out"] == ["1\n", "2\n", "3\n"], f"stdout callbacks: {seen}")
        check([s for k, s in seen if k == "err"] == ["e1\n", "e2\n", "e3\n"], f"stderr callbacks: {seen}")
        # Exit codes.
        try:
            sb.commands.run("echo before; exit 3")
            raise AssertionError("a failing command raises")
        except CommandExitException as e:
            check((e.exit_code, e.stdout) == (3, "before\n"), f"exit: {e.exit_code} {e.stdout!r}")
        # Environment, working directory, user.
        r = sb.commands.run("echo $FOO; pwd; id -u", envs={"FOO": "bar"}, cwd="/tmp", user="root")
        check(r.stdout == "bar\n/tmp\n0\n", f"envs/cwd/user: {r.stdout!r}")
        # A background process: listed, killed by pid.
        h = sb.commands.run("sleep 60", background=True)
        pids = [p.pid for p in sb.commands.list()]
        check(h.pid in pids, f"{h.pid} in {pids}")
        check(sb.commands.kill(h.pid) is True, "kill by pid")
        try:
            h.wait()
            raise AssertionError("a killed command raises")
        except CommandExitException as e:
            check(e.exit_code == -1, f"killed: {e.exit_code}")
        check(sb.commands.kill(h.pid) is False, "killing it again finds nothing")
        check(h.pid not in [p.pid for p in sb.commands.list()], "gone from the list")
        # Stdin: send, then close.
        h = sb.commands.run("cat", background=True, stdin=True)
        sb.commands.send_stdin(h.pid, "abc\n")
        h.send_stdin("def\n")
        h.close_stdin()
        check(h.wait().stdout == "abc\ndef\n", "stdin reached cat")
        # Without stdin=True, stdin is closed: cat ends at once.
        check(sb.commands.run("cat").stdout == "", "no stdin")
        # Disconnect and reconnect: the process goes on.
        h = sb.commands.run("for i in 1 2 3 4 5; do echo $i; sleep 0.1; done", background=True)
        h.disconnect()
        h2 = sb.commands.connect(h.pid)
        r = h2.wait()
        check(r.exit_code == 0 and r.stdout.strip().endswith("5"), f"reconnected: {r}")
        # The command's timeout kills it.
        try:
            sb.commands.run("sleep 30", timeout=1)
            raise AssertionError("a timed-out command raises")
        except TimeoutException:
            pass
        # A terminal: input typed, output as PTY bytes, resize, exit.
        from e2b.sandbox.commands.command_handle import PtySize

        t = sb.pty.create(PtySize(rows=24, cols=80))
        sb.pty.resize(t.pid, PtySize(rows=30, cols=100))
        sb.pty.send_stdin(t.pid, b"stty size; echo pty-$((6*7)); exit 0\n")
        seen = []
        t.wait(on_pty=lambda b: seen.append(bytes(b)))
        text = b"".join(seen).decode(errors="replace")
        check("30 100" in text and "pty-42" in text, f"pty output: {text!r}")
        # A command that does not exist: bash says so, exit 127.
        try:
            sb.commands.run("no-such-command-hull")
            raise AssertionError("127 raises")
        except CommandExitException as e:
            check(e.exit_code == 127, f"127: {e.exit_code}")
    finally:
        sb.kill()


@case
def files():
    sb = Sandbox.create()
    try:
        fs = sb.files
        info = fs.write("/tmp/e2b/a.txt", "hello")
        check(info.path == "/tmp/e2b/a.txt" and info.name == "a.txt", f"write info: {info}")
        check(fs.read("/tmp/e2b/a.txt") == "hello", "read text")
        fs.write("/tmp/e2b/b.bin", b"\x00\x01\xff")
        check(bytes(fs.read("/tmp/e2b/b.bin", format="bytes")) == b"\x00\x01\xff", "read bytes")
        # A file object streams as application/octet-stream.
        fs.write("/tmp/e2b/c.bin", io.BytesIO(b"x" * 300_000))
        check(len(fs.read("/tmp/e2b/c.bin", format="bytes")) == 300_000, "streamed upload")
        # Several files in one call.
        res = fs.write_files([{"path": "/tmp/e2b/m1", "data": "1"}, {"path": "/tmp/e2b/m2", "data": "2"}])
        check([w.path for w in res] == ["/tmp/e2b/m1", "/tmp/e2b/m2"], f"write_files: {res}")
        names = sorted(e.name for e in fs.list("/tmp/e2b"))
        check(names == ["a.txt", "b.bin", "c.bin", "m1", "m2"], f"list: {names}")
        e = fs.get_info("/tmp/e2b/a.txt")
        check(e.type == FileType.FILE and e.size == 5, f"get_info: {e}")
        check(fs.exists("/tmp/e2b/a.txt") and not fs.exists("/tmp/e2b/nope"), "exists")
        check(fs.make_dir("/tmp/e2b/d/e") is True, "make_dir")
        check(fs.make_dir("/tmp/e2b/d/e") is False, "make_dir of an existing dir")
        check(fs.get_info("/tmp/e2b/d").type == FileType.DIR, "a directory")
        deep = fs.list("/tmp/e2b/d", depth=2)
        check([x.path for x in deep] == ["/tmp/e2b/d/e"], f"depth 2: {deep}")
        moved = fs.rename("/tmp/e2b/a.txt", "/tmp/e2b/d/a2.txt")
        check(moved.path == "/tmp/e2b/d/a2.txt", f"rename: {moved}")
        fs.remove("/tmp/e2b/d")
        check(not fs.exists("/tmp/e2b/d"), "remove is recursive")
        # Relative paths are under the user's home (root here).
        fs.write("rel.txt", "r")
        check(fs.read("/root/rel.txt") == "r", "relative path")
        # Written files are seen by commands.
        check(sb.commands.run("cat /tmp/e2b/m1 /tmp/e2b/m2").stdout == "12", "files and commands agree")
        try:
            fs.read("/tmp/e2b/missing")
            raise AssertionError("reading a missing file raises")
        except FileNotFoundException:
            pass
        # Paths cannot leave the sandbox.
        escape = os.environ["HULL_ESCAPE_PATH"]
        fs.write("/../../../.." + escape, "inside")
        check(fs.read(escape) == "inside", "the path resolved inside the sandbox")
        # Oversize uploads are refused (the harness sets a 1 MiB limit).
        try:
            fs.write("/tmp/big", b"x" * (2 << 20))
            raise AssertionError("an oversize upload is refused")
        except SandboxException as e:
            check("413" in str(e) or "limit" in str(e), f"oversize: {e}")
    finally:
        sb.kill()


@case
def hostile():
    # A wrong API key.
    try:
        Sandbox.create(api_key="e2b_" + "0" * 64)
        raise AssertionError("a wrong key is refused")
    except AuthenticationException:
        pass
    try:
        Sandbox.list(api_key="not-a-key").next_items()
        raise AssertionError("a malformed key is refused")
    except AuthenticationException:
        pass
    # Unknown sandboxes.
    try:
        Sandbox.connect("no-such-sandbox")
        raise AssertionError("connect to an unknown sandbox")
    except NotFoundException:
        pass
    check(Sandbox.kill("no-such-sandbox") is False, "kill of an unknown sandbox")
    # Unsupported options say so.
    try:
        Sandbox.create(allow_internet_access=True)
        raise AssertionError("internet access is refused")
    except SandboxException as e:
        check("loopback" in str(e), f"message: {e}")
    sb = Sandbox.create()
    try:
        url = os.environ["E2B_SANDBOX_URL"]
        token = sb._envd_access_token
        base = {"E2b-Sandbox-Id": sb.sandbox_id, "E2b-Sandbox-Port": "49983"}
        with httpx.Client() as c:
            # No or a wrong access token.
            r = c.get(f"{url}/health", headers=base)
            check(r.status_code == 401, f"no token: {r.status_code}")
            r = c.get(f"{url}/health", headers={**base, "X-Access-Token": "x" * 64})
            check(r.status_code == 401, f"wrong token: {r.status_code}")
            ok = {**base, "X-Access-Token": token}
            check(c.get(f"{url}/health", headers=ok).status_code == 204, "health")
            # Another sandbox's id with this sandbox's token.
            r = c.get(f"{url}/health", headers={**ok, "E2b-Sandbox-Id": "no-such-sandbox"})
            check(r.status_code == 401, f"token of another sandbox: {r.status_code}")
            # Bad port headers.
            r = c.get(f"{url}/health", headers={**ok, "E2b-Sandbox-Port": "http"})
            check(r.status_code == 400, f"bad port: {r.status_code}")
            r = c.get(f"{url}/health", headers={**ok, "E2b-Sandbox-Port": "8080"})
            check(r.status_code == 502 and "not open" in r.text, f"closed port: {r.status_code} {r.text}")
            # A malformed Connect message and a binary-protobuf call.
            r = c.post(
                f"{url}/filesystem.Filesystem/Stat",
                headers={**ok, "Content-Type": "application/json"},
                content=b"{not json",
            )
            check(r.status_code == 400 and r.json()["code"] == "invalid_argument", f"bad json: {r.text}")
            r = c.post(
                f"{url}/filesystem.Filesystem/Stat",
                headers={**ok, "Content-Type": "application/proto"},
                content=b"\x0a\x01/",
            )
            check(r.status_code == 415, f"proto: {r.status_code}")
            r = c.post(f"{url}/process.Process/Nope", headers={**ok, "Content-Type": "application/json"}, content=b"{}")
            check(r.status_code == 501, f"unknown method: {r.status_code}")
        # Signals and input to processes that do not exist.
        check(sb.commands.kill(999999) is False, "kill of an unknown pid")
        try:
            sb.commands.send_stdin(999999, "x")
            raise AssertionError("stdin to an unknown pid")
        except NotFoundException:
            pass
    finally:
        sb.kill()
    # The sandbox is gone: its envd says so.
    try:
        sb.commands.run("true")
        raise AssertionError("a killed sandbox runs nothing")
    except SandboxException as e:
        check("was not found" in str(e), f"gone: {e}")


@case
def interpreter():
    from e2b_code_interpreter import Sandbox as CodeSandbox

    sb = CodeSandbox.create()
    try:
        ex = sb.run_code("x = 41\nx + 1")
        check(ex.text == "42", f"text: {ex}")
        check(sb.run_code("x").text == "41", "state persists")
        out = []
        ex = sb.run_code("print('hi')", on_stdout=lambda m: out.append(m.line))
        check(ex.logs.stdout == ["hi\n"] and out == ["hi\n"], f"stdout: {ex.logs} {out}")
        ex = sb.run_code("1/0")
        check(ex.error is not None and ex.error.name == "ZeroDivisionError", f"error: {ex.error}")
        check("ZeroDivisionError" in ex.error.traceback, "traceback")
        ex = sb.run_code("from IPython.display import HTML\nHTML('<b>b</b>')")
        check(ex.results[0].html == "<b>b</b>", f"html: {ex.results}")
        ctx = sb.create_code_context(cwd="/tmp")
        check(sb.run_code("import os; os.getcwd()", context=ctx).text == "'/tmp'", "context cwd")
        ex = sb.run_code("x", context=ctx)
        check(ex.error is not None and ex.error.name == "NameError", "contexts are independent")
        check(ctx.id in [c.id for c in sb.list_code_contexts()], "listed")
        sb.restart_code_context(ctx)
        sb.remove_code_context(ctx)
        check(ctx.id not in [c.id for c in sb.list_code_contexts()], "removed")
        try:
            sb.run_code("1", language="r")
            raise AssertionError("other languages are refused")
        except SandboxException:
            pass
    finally:
        sb.kill()


def main():
    names = sys.argv[1:] or list(CASES)
    for n in names:
        t = time.monotonic()
        CASES[n]()
        print(f"case {n}: {time.monotonic() - t:.2f} s", file=sys.stderr)
    print("ok")


if __name__ == "__main__":
    main()
