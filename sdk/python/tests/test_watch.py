"""Live tests of ``sb.files.watch`` (sync and async) against the session's
daemon: changes made inside the sandbox arrive as typed events, recursion
follows new directories, the watch ends when its directory goes; hostile
input (a missing path, a file, a relative path, an unknown sandbox) is
the API's error at the call."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Daemon

import hull
from hull import models as m


def until(w: hull.FileWatch, want: tuple[str, str]) -> list[m.FileWatchEvent]:
    """Events of ``w`` up to and including ``want`` (``(type, name)``)."""
    seen: list[m.FileWatchEvent] = []
    for ev in w:
        seen.append(ev)
        if (ev.type, getattr(ev, "name", None)) == want:
            return seen
    raise AssertionError(f"the watch ended before {want}: {seen}")


def kinds(seen: list[m.FileWatchEvent]) -> set[tuple[str, str]]:
    return {(e.type, getattr(e, "name", "")) for e in seen}


def test_watch(sandbox: hull.Sandbox, client: hull.Hull) -> None:
    fs = sandbox.files
    fs.mkdir("/w/sub")
    with fs.watch("/w", recursive=True) as w:
        fs.write("/w/a.txt", "1")
        sandbox.exec(
            "echo 2 >> /w/a.txt; chmod 600 /w/a.txt; mkdir -p /w/sub/deep; echo 3 > /w/sub/deep/f; rm /w/a.txt"
        )
        seen = until(w, ("remove", "a.txt"))
        for want in [("create", "a.txt"), ("write", "a.txt"), ("chmod", "a.txt"), ("create", "sub/deep/f")]:
            assert want in kinds(seen), seen
        created = next(e for e in seen if isinstance(e, m.WatchCreate) and e.name == "sub/deep/f")
        assert created.path == "/w/sub/deep/f"
    # Not recursive: changes in subdirectories are not reported.
    with fs.watch("/w") as w:
        fs.write("/w/sub/inner", "x")
        fs.write("/w/top", "x")
        seen = until(w, ("create", "top"))
        assert not any("inner" in getattr(e, "name", "") for e in seen), seen
    # The watched directory removed: the iteration raises NotFound.
    w = fs.watch("/w")
    fs.remove("/w", recursive=True)
    with pytest.raises(hull.NotFound):
        for _ in w:
            pass
    # Hostile input fails at the call.
    fs.write("/file", "x")
    with pytest.raises(hull.NotFound):
        fs.watch("/nope")
    with pytest.raises(hull.InvalidArgument):
        fs.watch("/file")
    with pytest.raises(hull.InvalidArgument):
        fs.watch("relative")
    with pytest.raises(hull.NotFound):
        client.get("no-such-sandbox").files.watch("/")


def test_watch_async(daemon: Daemon) -> None:
    async def run() -> None:
        async with daemon.aclient() as c, c.sandbox(template="busybox") as sb:
            await sb.files.mkdir("/aw")
            w = await sb.files.watch("/aw", recursive=True)
            async with w:
                await sb.files.write("/aw/b.txt", "x")
                await sb.exec("mkdir /aw/d; echo y > /aw/d/inner; rm /aw/b.txt")
                seen: list[m.FileWatchEvent] = []
                async for ev in w:
                    seen.append(ev)
                    if (ev.type, getattr(ev, "name", None)) == ("remove", "b.txt"):
                        break
                for want in [("create", "b.txt"), ("create", "d"), ("create", "d/inner")]:
                    assert want in kinds(seen), seen
            with pytest.raises(hull.NotFound):
                await sb.files.watch("/nope")
            # Closed watches give their slots back: many in a row work.
            # (a slot is given back once the sandbox has seen the close, so a
            # refusal is retried).
            opened = 0
            for _ in range(400):
                try:
                    async with await sb.files.watch("/aw"):
                        opened += 1
                except hull.ResourceExhausted:
                    await asyncio.sleep(0.05)
                if opened == 40:
                    break
            assert opened == 40

    asyncio.run(asyncio.wait_for(run(), 120))
