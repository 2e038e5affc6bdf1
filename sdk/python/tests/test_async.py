"""The asyncio client against a live daemon: every method of ``AsyncHull``
and its handles, concurrent forks with ``asyncio.gather``, and hostile
input. Each test runs its own event loop (``asyncio.run``)."""

from __future__ import annotations

import asyncio
import functools
import io
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, skip_or_fail

import hull


def run(coro_fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A sync test of an async function (no pytest-asyncio needed)."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(coro_fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


async def wait_until(pred: Callable[[], Awaitable[bool]], what: str, secs: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + secs
    while not await pred():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@run
async def test_daemon_and_tcp(daemon: Daemon) -> None:
    async with daemon.aclient() as c:
        assert (await c.health()).status == "ok"
        assert (await c.version()).api == "v1"
        assert "busybox" in {t.name for t in (await c.info()).templates}
        assert "AsyncHull(" in repr(c)
    async with hull.AsyncHull(url=daemon.url, token=daemon.token) as c:
        async with c.sandbox(template="busybox") as sb:
            assert (await sb.exec("echo tcp")).stdout == "tcp\n"
    async with hull.AsyncHull(url=daemon.url, token="f" * 64) as c:
        with pytest.raises(hull.Unauthenticated):
            await c.list()


@run
async def test_lifecycle_and_handles(daemon: Daemon) -> None:
    async with daemon.aclient() as c:
        sb = await c.create(
            "busybox",
            name="apy-one",
            labels={"suite": "apy"},
            ttl="5m",
            memory="128M",
            cpus=0.25,
            pids=32,
            disk="32M",
            env={"E": "e"},
            user="nobody",
            workdir="/tmp",
            idle_timeout="10m",
        )
        try:
            assert sb.name == "apy-one" and sb.state == "running" and "apy-one" in repr(sb)
            assert (await c.get("apy-one")).id == sb.id
            assert [s.id for s in await c.list(labels={"suite": "apy"})] == [sb.id]
            assert (await sb.info()).limits.pids == 32
            assert (await sb.exec("echo $E; id -un; pwd")).stdout == "e\nnobody\n/tmp\n"
            assert (await sb.pause()).state == "paused"
            with pytest.raises(hull.Conflict):
                await sb.exec("true")
            assert (await sb.resume()).state == "running"
            assert (await sb.set_ttl(0)).expires_at is None
            assert (await sb.stop()).state == "stopped"
        finally:
            await sb.destroy()
        with pytest.raises(hull.NotFound):
            await sb.info()
        with pytest.raises(hull.NotFound):
            await c.get("apy-one")
        with pytest.raises(hull.InvalidArgument):
            await c.create("busybox", name="-bad-")
        with pytest.raises(RuntimeError):
            async with c.sandbox(template="busybox") as sb2:
                sid = sb2.id
                raise RuntimeError("boom")
        with pytest.raises(hull.NotFound):
            await c.get(sid)
        async with await c.create("busybox") as sb3:
            sid3 = sb3.id
        with pytest.raises(hull.NotFound):
            await c.get(sid3)


@run
async def test_exec_stream_background(daemon: Daemon) -> None:
    async with daemon.aclient() as c, c.sandbox(template="busybox") as sb:
        r = await sb.exec(["sh", "-c", "cat; echo err >&2; exit 2"], stdin="in", env={"A": "1"}, cwd="/", timeout=30)
        assert (r.stdout, r.stderr, r.exit_code) == ("in", "err\n", 2)
        assert (await sb.exec("sleep 30", timeout="300ms")).timed_out
        with pytest.raises(hull.NotFound):
            await sb.exec(["no-such-program"])
        stream = sb.exec_stream("echo a; echo b >&2; exit 7")
        items = [ev async for ev in stream]
        assert isinstance(items[-1], hull.ExecExit) and items[-1].exit_code == 7 and stream.exit_code == 7
        chunks = [ev for ev in items if isinstance(ev, hull.OutputChunk)]
        assert "".join(ch.data for ch in chunks if ch.stream == "stdout") == "a\n"
        assert b"".join(ch.raw for ch in chunks if ch.stream == "stderr") == b"b\n"
        with pytest.raises(hull.NotFound):
            async for _ in sb.exec_stream(["no-such-program"]):
                pass
        async with sb.exec_stream("echo ready; exec sleep 300") as s:
            first = await s.__anext__()
            assert isinstance(first, hull.OutputChunk) and first.data == "ready\n"
        started = s.started
        assert started is not None

        async def stream_gone() -> bool:
            return not any(p.id == started.id and p.running for p in await sb.processes())

        await wait_until(stream_gone, "the streamed command to be killed")
        p = await sb.exec_background("exec sleep 300")
        assert any(x.id == p.id and x.running for x in await sb.processes())
        await sb.signal(p, 9)

        async def bg_gone() -> bool:
            return not any(x.id == p.id and x.running for x in await sb.processes())

        await wait_until(bg_gone, "the background process to end")
        with pytest.raises(hull.Conflict):
            await sb.signal(p.id, 9)


@run
async def test_files(daemon: Daemon, tmp_path: Path) -> None:
    async with daemon.aclient() as c, c.sandbox(template="busybox") as sb:
        f = sb.files
        assert (await f.write("/w/a.txt", "text", mode=0o640)).mode & 0o777 == 0o640
        assert await f.read("/w/a.txt") == b"text" and await f.read_text("/w/a.txt") == "text"

        async def agen():
            for part in (b"x", b"y"):
                yield part

        assert (await f.write("/w/gen", agen())).size == 2
        assert (await f.write("/w/it", [b"1", b"2", b"3"])).size == 3
        assert (await f.write("/w/file", io.BytesIO(b"from a file"))).size == 11
        assert (await f.stat("/w")).is_dir
        assert await f.exists("/w/a.txt") and not await f.exists("/w/none")
        assert {e.path for e in await f.list("/w")} == {"/w/a.txt", "/w/gen", "/w/it", "/w/file"}
        await f.mkdir("/w/d/e")
        assert len(await f.list("/w", depth=3)) == 6
        await f.rename("/w/a.txt", "/w/d/e/a.txt")
        with pytest.raises(hull.Conflict):
            await f.remove("/w/d")
        await f.remove("/w/d", recursive=True)
        await f.remove("/w/gen")
        with pytest.raises(hull.NotFound):
            await f.read("/w/gen")
        with pytest.raises(hull.InvalidArgument):
            await f.stat("not/absolute")
        src = tmp_path / "src"
        (src / "s").mkdir(parents=True)
        (src / "s" / "f.txt").write_text("deep")
        assert await f.upload(src, "/up") == "/up"
        single = tmp_path / "single.txt"
        single.write_text("single")
        assert await f.upload(single, "/up") == "/up/single.txt"
        out = tmp_path / "out"
        await f.download("/up", out)
        assert (out / "s" / "f.txt").read_text() == "deep" and (out / "single.txt").read_text() == "single"
        assert await f.download("/up/single.txt", tmp_path / "copy.txt") == str(tmp_path / "copy.txt")


@run
async def test_shell_and_code(daemon: Daemon) -> None:
    async with daemon.aclient() as c, c.sandbox(template="host") as sb:
        async with await sb.shell("main", cwd="/tmp", env={"V": "v"}) as sh:
            assert sh.name == "main" and "main" in repr(sh)
            r = await sh.run("X=1; echo $V; pwd")
            assert r.output == "v\n/tmp\n" and r.ok
            assert (await sh.run("sleep 60", timeout=0.3)).timed_out
            assert (await sh.run("echo go; sleep 60", idle_timeout=0.3)).idle_timed_out
            assert (await sh.run("echo $X")).output == "1\n"
            assert (await (await sb.shell("main")).run("echo $X")).output == "1\n"
            await sh.send("read line; echo got:$line\n")
            got = await sh.send("hello\n", expect="got:hello")
            assert got.matched
            assert (await sh.expect("never-printed", timeout=0.2)).timed_out
            assert [s.session for s in await sb.shells()] == ["main"]
        assert await sb.shells() == []
        with pytest.raises(hull.NotFound):
            await sh.close()

        code = sb.code
        assert (await code.run("y = 6 * 7")).error is None
        assert (await code.run("y")).text == "42"
        assert (await code.create("ctx2")).context == "ctx2"
        assert {x.context for x in await code.list()} == {"default", "ctx2"}
        assert (await code.run("import time; time.sleep(60)", context="ctx2", timeout=0.3)).timed_out
        task = asyncio.create_task(code.run("import time; time.sleep(60)", context="ctx2"))
        while not task.done():
            await code.interrupt("ctx2")
            await asyncio.wait({task}, timeout=0.2)
        res = task.result()
        assert res.error is not None and res.error.name == "KeyboardInterrupt"
        assert (await code.restart("default")).alive
        assert (await code.run("'y' in dir()")).text == "False"
        await code.stop("ctx2")
        with pytest.raises(hull.NotFound):
            await code.interrupt("ctx2")


@run
async def test_snapshots_fork_gather_rollback(daemon: Daemon, tmp_path: Path) -> None:
    async with daemon.aclient() as c, c.sandbox(template="busybox") as sb:
        await sb.files.write("/counter", "0")
        snap = await sb.snapshot("apy-snap", labels={"suite": "apy"})
        assert (await c.snapshots.get("apy-snap")).id == snap.id
        assert [s.id for s in await c.snapshots.list(labels={"suite": "apy"})] == [snap.id]
        # The rollout pattern: fork, step every sandbox concurrently, collect, destroy.
        forks = await c.fork(snap, 8, profile="rollout", ttl="10m")
        try:

            async def step(i: int, s: hull.AsyncSandbox) -> int:
                await s.files.write("/counter", str(i))
                r = await s.exec("echo $(( $(cat /counter) * 2 ))")
                return int(r.stdout)

            rewards = await asyncio.gather(*(step(i, s) for i, s in enumerate(forks)))
            assert rewards == [2 * i for i in range(8)]
        finally:
            await asyncio.gather(*(s.destroy() for s in forks))
        await sb.files.write("/counter", "changed")
        assert (await sb.rollback("apy-snap")).snapshot == snap.id
        assert await sb.files.read("/counter") == b"0"
        archive = tmp_path / "apy.tar.zst"
        await c.snapshots.export(snap, archive)
        buf = io.BytesIO()
        await c.snapshots.export(snap, buf)
        assert buf.getvalue()[:4] == b"\x28\xb5\x2f\xfd"
        imported = await c.snapshots.import_archive(archive, name="apy-imported")
        t = await c.templates.save(imported, "apy-saved")
        assert t.snapshot == imported.id and "apy-saved" in {x.name for x in await c.templates.list()}
        async with c.sandbox(template="apy-saved") as sb2:
            assert await sb2.files.read("/counter") == b"0"
        await c.templates.remove("apy-saved")
        await c.snapshots.remove(imported)
        with pytest.raises(hull.NotFound):
            await c.snapshots.get(imported)
        with pytest.raises(hull.NotFound):
            await c.fork("no-such-snapshot", 2)
        with pytest.raises(hull.InvalidArgument):
            await c.fork(snap, 0)
        await sb.destroy()
        await c.snapshots.remove(snap)


@run
async def test_templates_import_and_build(daemon: Daemon, tmp_path: Path) -> None:
    from test_sync import _tar, oci_image

    layer = _tar([("etc/", None, 0o755, None), ("etc/greeting", b"hi\n", 0o644, None)])
    image = tmp_path / "apy-image.tar"
    image.write_bytes(oci_image([layer], {"Env": ["K=v"]}))
    async with daemon.aclient() as c:
        t = await c.templates.import_image(image, name="apy-image")
        try:
            assert t.name == "apy-image" and t.config is not None and t.config.env == {"K": "v"}
            with pytest.raises(hull.Conflict):
                await c.templates.import_image(image, name="apy-image")
            async with c.sandbox(template="apy-image") as sb:
                assert await sb.files.read("/etc/greeting") == b"hi\n"
        finally:
            await c.templates.remove("apy-image")
        # A build streams its progress to on_event; an exception there ends
        # the call and closes the connection, which cancels the build.
        if not shutil.which("mmdebstrap"):
            skip_or_fail("mmdebstrap is not installed (apt-get install mmdebstrap)")
        with pytest.raises(hull.InvalidArgument):
            await c.templates.build("Bad Name", debian="bookworm")
        events: list[hull.models.BuildEvent] = []

        class Enough(Exception):
            pass

        def on_event(ev: hull.models.BuildEvent) -> None:
            events.append(ev)
            raise Enough

        with pytest.raises(Enough):
            await c.templates.build("apy-deb", debian="bookworm", on_event=on_event)
        assert len(events) == 1 and events[0].event in ("phase", "log", "progress")
        assert "apy-deb" not in {x.name for x in await c.templates.list()}
