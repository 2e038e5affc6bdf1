"""SWE-ReX's own RemoteRuntime (PyPI swe-rex) against hull's SWE-ReX routes.

Usage: swerex_client.py check BASE_URL TOKEN HOST_DIR
       swerex_client.py bench URL TOKEN N      (prints the p50 of run_in_session `true`)

BASE_URL is <daemon>/v1/sandboxes/ID/swerex; HOST_DIR a host directory
holding a file `secret` that the sandbox must never reach. Prints "ok" when
every check passed; any failed assertion ends it with a traceback.
"""

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import zipfile

import aiohttp

from swerex.exceptions import (
    BashIncorrectSyntaxError,
    CommandTimeoutError,
    NonZeroExitCodeError,
    SessionDoesNotExistError,
    SessionExistsError,
    SwerexException,
)
from swerex.runtime.abstract import (
    BashAction,
    BashInterruptAction,
    CloseBashSessionRequest,
    Command,
    CreateBashSessionRequest,
    ReadFileRequest,
    UploadRequest,
    WriteFileRequest,
)
from swerex.runtime.remote import RemoteRuntime

QUIET = logging.getLogger("swerex-test")
QUIET.disabled = True


def runtime(url, token):
    return RemoteRuntime(host=url, port=None, auth_token=token, logger=QUIET)


async def raises(cls, coro):
    try:
        r = await coro
    except cls as e:
        return e
    raise AssertionError(f"expected {cls.__name__}, got {r!r}")


async def sessions(r, url):
    # create, run, state across calls, duplicate and unknown sessions
    assert (await r.create_session(CreateBashSessionRequest())).session_type == "bash"
    await raises(SessionExistsError, r.create_session(CreateBashSessionRequest()))
    o = await r.run_in_session(BashAction(command="echo hi", timeout=10))
    assert (o.output, o.exit_code, o.expect_string) == ("hi\n", 0, "SHELLPS1PREFIX"), o
    o = await r.run_in_session(BashAction(command="cd /tmp\nexport X=42", timeout=10))
    o = await r.run_in_session(BashAction(command="echo $X; pwd", timeout=10))
    assert o.output == "42\n/tmp\n", o
    o = await r.run_in_session(BashAction(command="echo err >&2; (exit 3)", check="silent"))
    assert (o.output, o.exit_code) == ("err\n", 3), o
    o = await r.run_in_session(BashAction(command="false", check="ignore"))
    assert o.exit_code is None, o
    e = await raises(NonZeroExitCodeError, r.run_in_session(BashAction(command="echo out; false", error_msg="mine")))
    assert str(e).startswith("mine: Command 'echo out; false' failed with exit code 1"), e
    assert "'out\\n'" in str(e), e
    e = await raises(BashIncorrectSyntaxError, r.run_in_session(BashAction(command="echo (")))
    assert "syntax error" in e.extra_info["bash_stderr"], e.extra_info
    # the session is untouched by a refused command
    o = await r.run_in_session(BashAction(command="echo $X"))
    assert o.output == "42\n", o

    # timeout: partial output, the command is stopped, the session lives on
    e = await raises(CommandTimeoutError, r.run_in_session(BashAction(command="echo started; sleep 30; echo never", timeout=1)))
    assert "timeout after 1.0 seconds" in str(e), e
    out = e.extra_info["output"]
    assert out.startswith("started\n") and "never" not in out, e.extra_info
    o = await r.run_in_session(BashInterruptAction())
    assert o.exit_code == 0, o
    o = await r.run_in_session(BashAction(command="echo $X; pwd"))
    assert o.output == "42\n/tmp\n", o

    # interactive program: expect, input, interrupt, quit
    o = await r.run_in_session(BashAction(command="python3 -q -i", is_interactive_command=True, expect=[">>> "], timeout=20))
    assert o.expect_string == ">>> ", o
    o = await r.run_in_session(BashAction(command="6*7", is_interactive_command=True, expect=[">>> "], timeout=10))
    assert (o.output, o.expect_string) == ("42", ">>> "), o
    e = await raises(CommandTimeoutError, r.run_in_session(BashAction(command="import time; time.sleep(60)", is_interactive_command=True, expect=["NEVERMATCHES"], timeout=0.5)))
    o = await r.run_in_session(BashInterruptAction(expect=[">>> "], timeout=2))
    assert o.expect_string == ">>> " and "KeyboardInterrupt" in o.output, o
    o = await r.run_in_session(BashAction(command="exit()", is_interactive_quit=True, timeout=10))
    assert o.expect_string == "SHELLPS1PREFIX", o
    o = await r.run_in_session(BashAction(command="echo back; echo $X"))
    assert o.output == "back\n42\n", o

    # interrupt of a program that ignores Ctrl-C: Ctrl-Z and kill
    try:
        await r.run_in_session(BashAction(command="sh -c 'trap \"\" INT; exec sleep 60'", is_interactive_command=True, expect=["NEVERMATCHES"], timeout=0.5))
    except CommandTimeoutError:
        pass
    o = await r.run_in_session(BashInterruptAction(timeout=0.3, n_retry=2))
    assert o.exit_code == 0, o
    o = await r.run_in_session(BashAction(command="echo alive"))
    assert o.output == "alive\n", o

    # unknown sessions, closing
    await raises(SessionDoesNotExistError, r.run_in_session(BashAction(command="true", session="nope")))
    await raises(SessionDoesNotExistError, r.run_in_session(BashAction(command="true", session="../x")))
    await raises(SessionDoesNotExistError, r.close_session(CloseBashSessionRequest(session="nope")))
    await raises(ValueError, r.create_session(CreateBashSessionRequest(session="bad name/..")))
    await r.create_session(CreateBashSessionRequest(session="second", startup_source=["/etc/profile"], startup_timeout=10))
    await r.close_session(CloseBashSessionRequest(session="second"))
    await raises(SessionDoesNotExistError, r.run_in_session(BashAction(command="true", session="second")))


async def execute(r):
    c = await r.execute(Command(command=["echo", "x"]))
    assert (c.stdout, c.stderr, c.exit_code) == ("x\n", "", 0), c
    c = await r.execute(Command(command="echo $0; echo e >&2; exit 3", shell=True))
    assert (c.stdout, c.stderr, c.exit_code) == ("/bin/sh\n", "e\n", 3), c
    c = await r.execute(Command(command=["sh", "-c", "echo a; echo b >&2"], merge_output_streams=True))
    assert (c.stdout, c.stderr) == ("a\nb\n", ""), c
    c = await r.execute(Command(command="pwd; echo $V", shell=True, cwd="/tmp", env={"V": "v"}))
    assert c.stdout == "/tmp\nv\n", c
    e = await raises(FileNotFoundError, r.execute(Command(command="no-such-program")))
    assert "no-such-program" in str(e), e
    e = await raises(CommandTimeoutError, r.execute(Command(command=["sleep", "30"], timeout=0.5)))
    assert str(e) == "Timeout (0.5s) exceeded while running command", e
    e = await raises(NonZeroExitCodeError, r.execute(Command(command=["false"], check=True)))
    assert str(e) == "Command ['false'] failed with exit code 1. Stdout:\n''\nStderr:\n''", e


async def files(r, host_dir):
    await r.write_file(WriteFileRequest(path="/tmp/new/dir/a.txt", content="héllo\n"))
    assert (await r.read_file(ReadFileRequest(path="/tmp/new/dir/a.txt"))).content == "héllo\n"
    await r.execute(Command(command="printf 'a\\377b' > /tmp/bin", shell=True))
    await raises(ValueError, r.read_file(ReadFileRequest(path="/tmp/bin")))
    c = await r.read_file(ReadFileRequest(path="/tmp/bin", errors="replace"))
    assert c.content == "a\ufffdb", c
    await raises(FileNotFoundError, r.read_file(ReadFileRequest(path="/nonexistent")))
    await raises(IsADirectoryError, r.read_file(ReadFileRequest(path="/tmp")))
    await raises(LookupError, r.read_file(ReadFileRequest(path="/tmp/bin", encoding="utf-16")))

    # path traversal: `..` and symlinks resolve inside the sandbox
    secret = os.path.join(host_dir, "secret")
    await raises(FileNotFoundError, r.read_file(ReadFileRequest(path="/../../../.." + secret)))
    await r.execute(Command(command=["ln", "-s", "/", "/tmp/up"]))
    await raises(FileNotFoundError, r.read_file(ReadFileRequest(path="/tmp/up/../../.." + secret)))
    await r.write_file(WriteFileRequest(path="/../../.." + host_dir + "/pwned", content="x"))
    assert not os.path.exists(os.path.join(host_dir, "pwned"))
    c = await r.execute(Command(command=["cat", host_dir + "/pwned"]))
    assert c.stdout == "x", c  # it landed inside the sandbox

    # upload: a file, and a directory (zip form)
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "one.txt")
        with open(f, "w") as fh:
            fh.write("one\n")
        await r.upload(UploadRequest(source_path=f, target_path="/up/file/one.txt"))
        assert (await r.read_file(ReadFileRequest(path="/up/file/one.txt"))).content == "one\n"
        tree = os.path.join(d, "tree")
        os.makedirs(os.path.join(tree, "sub", "deeper"))
        with open(os.path.join(tree, "sub", "run.sh"), "w") as fh:
            fh.write("#!/bin/sh\necho ran\n")
        os.chmod(os.path.join(tree, "sub", "run.sh"), 0o755)
        with open(os.path.join(tree, "top.txt"), "w") as fh:
            fh.write("top\n")
        await r.upload(UploadRequest(source_path=tree, target_path="/up/tree"))
        c = await r.execute(Command(command="cat /up/tree/top.txt; /up/tree/sub/run.sh; test -d /up/tree/sub/deeper && echo dir", shell=True))
        assert c.stdout == "top\nran\ndir\n", c

        # a hostile zip (names with .. and absolute names) stays in the target
        z = os.path.join(d, "evil.zip")
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("../../../../" + host_dir.lstrip("/") + "/zipped", "z")
            zf.writestr("/abs.txt", "a")
        await post_zip(r, z, "/up/evil", "true")
        c = await r.execute(Command(command="find /up/evil -type f | sort", shell=True))
        assert c.stdout == "/up/evil/abs.txt\n/up/evil/" + host_dir.lstrip("/") + "/zipped\n", c
        assert not os.path.exists(os.path.join(host_dir, "zipped"))
        # not a zip at all
        with open(z, "wb") as fh:
            fh.write(b"garbage")
        try:
            await post_zip(r, z, "/up/bad", "true")
        except Exception as e:  # zipfile.BadZipFile
            assert type(e).__name__ == "BadZipFile", e
        else:
            raise AssertionError("a broken zip was accepted")


async def post_zip(r, path, target, unzip):
    # The same request RemoteRuntime.upload makes for a directory, with a zip of our own.
    async with aiohttp.ClientSession() as s:
        with open(path, "rb") as f:
            data = aiohttp.FormData()
            data.add_field("file", f, filename="x.zip", content_type="application/zip")
            data.add_field("target_path", target)
            data.add_field("unzip", unzip)
            async with s.post(f"{r._api_url}/upload", data=data, headers=r._headers) as resp:
                await r._handle_response_errors(resp)


async def auth_and_unknown(url, token):
    bad = runtime(url, "wrong")
    a = await bad.is_alive(timeout=10)
    assert not a.is_alive and "401" in a.message and "Invalid API Key" in a.message, a
    e = await raises(aiohttp.ClientResponseError, bad.execute(Command(command=["true"])))
    assert e.status == 401, e
    none = runtime(url, "")
    e = await raises(aiohttp.ClientResponseError, none.run_in_session(BashAction(command="true")))
    assert e.status == 401, e
    gone = runtime(url.replace("/sandboxes/", "/sandboxes/no-such-sandbox-").rsplit("/swerex", 1)[0] + "/swerex", token)
    a = await gone.is_alive(timeout=10)
    assert not a.is_alive and "404" in a.message, a
    e = await raises(aiohttp.ClientResponseError, gone.run_in_session(BashAction(command="true")))
    assert e.status == 404, e


async def check(url, token, host_dir):
    r = runtime(url, token)
    await r.wait_until_alive(timeout=10)
    assert (await r.is_alive(timeout=10)).is_alive
    await auth_and_unknown(url, token)
    await sessions(r, url)
    await execute(r)
    await files(r, host_dir)
    await r.close()
    await raises(SessionDoesNotExistError, r.run_in_session(BashAction(command="true")))
    print("ok")


async def bench(url, token, n):
    r = runtime(url, token)
    await r.wait_until_alive(timeout=30)
    await r.create_session(CreateBashSessionRequest(session="bench"))
    a = BashAction(command="true", session="bench", timeout=30)
    for _ in range(10):
        await r.run_in_session(a)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await r.run_in_session(a)
        times.append((time.perf_counter() - t) * 1000)
    await r.close_session(CloseBashSessionRequest(session="bench"))
    times.sort()
    print(f"p50 {statistics.median(times):.2f} ms  p90 {times[int(n * 0.9)]:.2f} ms  n {n}")


if __name__ == "__main__":
    mode, url, token, arg = sys.argv[1:5]
    if mode == "check":
        asyncio.run(check(url, token, arg))
    else:
        asyncio.run(bench(url, token, int(arg)))
