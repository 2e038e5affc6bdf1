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
    AsyncSandbox,
    AuthenticationException,
    FilesystemEventType,
    InvalidArgumentException,
    RateLimitException,
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


def poll(handle, until, what, rounds=300):
    """Events of a sync watch handle until `until(events)` holds (a
    generous bound: a missing event, not slowness, fails)."""
    seen = []
    for _ in range(rounds):
        seen += handle.get_new_events()
        if until(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{what}: the events never came; seen {seen}")


def pairs(events):
    return {(e.name, e.type) for e in events}


@case
def offline():
    # allow_internet_access=False: hull's network policy `none`, only `lo`.
    sb = Sandbox.create(allow_internet_access=False)
    try:
        devs = [l.split(":")[0].strip() for l in sb.commands.run("cat /proc/net/dev").stdout.splitlines()[2:]]
        check(devs == ["lo"], f"interfaces: {devs}")
        check(Sandbox.get_info(sb.sandbox_id).allow_internet_access is False, "info says offline")
    finally:
        sb.kill()
    # allow_internet_access=True: hull's `open`, an eth0 from the pool.
    sb = Sandbox.create(allow_internet_access=True)
    try:
        devs = [l.split(":")[0].strip() for l in sb.commands.run("cat /proc/net/dev").stdout.splitlines()[2:]]
        check(sorted(devs) == ["eth0", "lo"], f"interfaces: {devs}")
        check(Sandbox.get_info(sb.sandbox_id).allow_internet_access is True, "info says online")
    finally:
        sb.kill()


@case
def watch():
    T = FilesystemEventType
    sb = Sandbox.create()
    try:
        fs = sb.files
        fs.make_dir("/tmp/w/sub")
        h = fs.watch_dir("/tmp/w", recursive=True)
        fs.write("/tmp/w/a.txt", "1")
        sb.commands.run(
            "echo more >> /tmp/w/a.txt; chmod 600 /tmp/w/a.txt; mv /tmp/w/a.txt /tmp/w/b.txt; "
            "mkdir -p /tmp/w/sub/deep; echo x > /tmp/w/sub/deep/f; rm /tmp/w/b.txt"
        )
        seen = poll(h, lambda ev: ("b.txt", T.REMOVE) in pairs(ev), "recursive watch")
        for want in [
            ("a.txt", T.CREATE),
            ("a.txt", T.WRITE),
            ("a.txt", T.CHMOD),
            ("a.txt", T.RENAME),
            ("b.txt", T.CREATE),
            ("sub/deep", T.CREATE),
            ("sub/deep/f", T.CREATE),
        ]:
            check(want in pairs(seen), f"{want} in {seen}")
        names = [e.name for e in seen]
        check(names.index("a.txt") < names.index("b.txt"), f"in order: {names}")
        h.stop()
        try:
            h.get_new_events()
            raise AssertionError("a stopped watcher has no events")
        except SandboxException:
            pass
        # Without recursion, changes in subdirectories are not reported;
        # relative paths are under the user's home.
        fs.make_dir("/root/rw/sub")
        h = fs.watch_dir("rw")
        fs.write("/root/rw/sub/inner", "1")
        fs.write("/root/rw/top", "1")
        seen = poll(h, lambda ev: ("top", T.CREATE) in pairs(ev), "flat watch")
        check(not any("inner" in e.name for e in seen), f"flat: {seen}")
        h.stop()
        # Hostile: missing, a file, too many watchers, unknown watcher ids.
        try:
            fs.watch_dir("/tmp/nope")
            raise AssertionError("watching a missing directory")
        except FileNotFoundException:
            pass
        try:
            fs.watch_dir("/tmp/w/sub/deep/f")
            raise AssertionError("watching a file")
        except InvalidArgumentException as e:
            check("not a directory" in str(e), f"file: {e}")
        held = []
        try:
            for _ in range(100):
                held.append(fs.watch_dir("/tmp/w"))
            raise AssertionError("watchers are bounded")
        except RateLimitException:
            check(len(held) >= 8, f"bounded at {len(held)}")
        for x in held:
            x.stop()
        # A freed slot can be used again (the guest frees it on stop).
        for _ in range(100):
            try:
                fs.watch_dir("/tmp/w").stop()
                break
            except RateLimitException:
                time.sleep(0.1)
        else:
            raise AssertionError("stopped watchers never gave their slots back")
        url = os.environ["E2B_SANDBOX_URL"]
        hdr = {
            "E2b-Sandbox-Id": sb.sandbox_id,
            "E2b-Sandbox-Port": "49983",
            "X-Access-Token": sb._envd_access_token,
            "Content-Type": "application/json",
        }
        with httpx.Client() as c:
            for m in ["GetWatcherEvents", "RemoveWatcher"]:
                r = c.post(f"{url}/filesystem.Filesystem/{m}", headers=hdr, json={"watcherId": "nope"})
                check(r.status_code == 404 and r.json()["code"] == "not_found", f"{m}: {r.text}")
            r = c.post(f"{url}/filesystem.Filesystem/CreateWatcher", headers=hdr, json={"path": "/tmp/w", "includeEntry": True})
            check(r.status_code == 501, f"include_entry: {r.status_code} {r.text}")
        # The watched directory removed: the next poll says so.
        h = fs.watch_dir("/tmp/w")
        fs.remove("/tmp/w")
        err = None
        for _ in range(300):
            try:
                h.get_new_events()
            except SandboxException as e:
                err = e
                break
            time.sleep(0.1)
        check(isinstance(err, NotFoundException) and "removed" in str(err), f"removed: {err!r}")
    finally:
        sb.kill()


@case
def watch_async():
    import asyncio

    T = FilesystemEventType

    async def run():
        sb = await AsyncSandbox.create()
        try:
            await sb.files.make_dir("/tmp/aw")
            got = []
            done = asyncio.Event()
            exits = []

            def on_event(e):
                got.append((e.name, e.type))
                if (e.name, e.type) == ("b.txt", T.REMOVE):
                    done.set()

            h = await sb.files.watch_dir("/tmp/aw", on_event, on_exit=exits.append, recursive=True)
            await sb.files.write("/tmp/aw/b.txt", "x")
            await sb.commands.run("echo y >> /tmp/aw/b.txt; mkdir /tmp/aw/d; echo z > /tmp/aw/d/inner; rm /tmp/aw/b.txt")
            await asyncio.wait_for(done.wait(), 30)
            for want in [("b.txt", T.CREATE), ("b.txt", T.WRITE), ("d", T.CREATE), ("d/inner", T.CREATE)]:
                check(want in got, f"{want} in {got}")
            await h.stop()
            check(exits == [None], f"a stopped watch exits cleanly: {exits}")
            try:
                await sb.files.watch_dir("/tmp/nope", on_event)
                raise AssertionError("watching a missing directory")
            except FileNotFoundException:
                pass
            # Removing the watched directory ends the watch with an error.
            ended = asyncio.Event()
            errs = []

            def on_exit(err):
                errs.append(err)
                ended.set()

            await sb.files.make_dir("/tmp/aw2")
            await sb.files.watch_dir("/tmp/aw2", lambda e: None, on_exit=on_exit)
            await sb.files.remove("/tmp/aw2")
            await asyncio.wait_for(ended.wait(), 30)
            check(len(errs) == 1 and errs[0] is not None, f"removed: {errs}")
        finally:
            await sb.kill()

    asyncio.run(run())


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
        Sandbox.create(network={"allow_out": ["192.0.2.1"]})
        raise AssertionError("allow_out rules are refused")
    except SandboxException as e:
        check("allowOut" in str(e), f"message: {e}")
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
        # Outputs stream while the code runs: the code waits for a file
        # that only the first callback writes, so it finishes "released"
        # only if that callback came while it was still running.
        arrivals = []

        def on_first(m):
            arrivals.append(m.line)
            if m.line.startswith("first"):
                sb.files.write("/tmp/go", "go")

        ex = sb.run_code(
            "import os, time\nprint('first', flush=True)\n"
            "for _ in range(600):\n"
            "    if os.path.exists('/tmp/go'): break\n"
            "    time.sleep(0.1)\n"
            "print('second:', 'released' if os.path.exists('/tmp/go') else 'never released')",
            on_stdout=on_first,
        )
        check(arrivals == ["first\n", "second: released\n"], f"streamed: {arrivals}")
        # The execute_result is the main result; display_data are not.
        shown = []
        ex = sb.run_code(
            "from IPython.display import display, HTML\ndisplay(HTML('<i>d</i>'))\n6 * 7",
            on_result=shown.append,
        )
        check([r.is_main_result for r in ex.results] == [False, True], f"main: {ex.results}")
        check(ex.text == "42" and ex.results[0].html == "<i>d</i>", f"results: {ex.results}")
        check(len(shown) == 2, f"on_result: {shown}")
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
