"""Live tests of ``sb.browser``, ``sb.mcp`` and ``sb.code.run_stream``,
sync and async, against the session's daemon: a page in a ``host``
sandbox (the host's Chromium), a stdio MCP server written with PyPI
``mcp`` (its packages uploaded from /var/cache/hull/venv-mcp), streamed
code runs; then hostile input (unknown tabs, selectors that match
nothing, bad names, a command that is not an MCP server)."""

from __future__ import annotations

import asyncio
import glob
import json
import os

import httpx
import pytest
from conftest import Daemon, skip_or_fail

import hull

PAGE = """<!doctype html><html><head><title>Form</title></head><body>
<h1>Hello from hull</h1>
<input id="q" value="x">
<select id="s"><option value="a">Apple</option><option value="b">Banana</option></select>
<button id="go" onclick="document.getElementById('out').textContent = 'clicked ' +
  document.getElementById('q').value + ' ' + document.getElementById('s').value">Go</button>
<p id="out"></p>
</body></html>"""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_browser(client: hull.Hull, daemon: Daemon) -> None:
    with client.sandbox(template="host") as sb:
        sb.files.write("/tmp/page.html", PAGE)
        br = sb.browser
        tab = br.open("file:///tmp/page.html")
        assert tab.title == "Form" and tab.url == "file:///tmp/page.html"
        assert br.status().state == hull.models.BrowserState.RUNNING
        assert "Hello from hull" in br.text(tab)
        br.type(tab, "#q", "hello", clear=True)
        assert br.select(tab, "#s", "Banana") == ["b"]
        br.click(tab, "#go")
        assert br.wait_for(tab.id, "#out")
        assert br.text(tab, "#out") == "clicked hello b"
        assert br.evaluate(tab, "({n: 1 + 1, s: document.title})") == {"n": 2, "s": "Form"}
        assert br.evaluate(tab, "Promise.resolve([1, 'two'])") == [1, "two"]
        tree = br.accessibility(tab)
        assert tree is not None and tree.role
        png = br.screenshot(tab)
        full = br.screenshot(tab, full_page=True)
        assert png.startswith(PNG_MAGIC) and full.startswith(PNG_MAGIC)
        other = br.navigate(br.open(), "file:///tmp/page.html")
        assert {t.id for t in br.tabs()} >= {tab.id, other.id}
        br.close(other)
        assert other.id not in {t.id for t in br.tabs()}

        # Hostile input.
        with pytest.raises(hull.NotFound):
            br.click(tab, "#no-such-element", timeout=1)
        with pytest.raises(hull.NotFound):
            br.text("NO-SUCH-TAB")
        with pytest.raises(hull.NotFound):
            br.screenshot("NO-SUCH-TAB")
        with pytest.raises(hull.InvalidArgument):
            br.evaluate(tab, "throw new Error('boom')")
        with pytest.raises(hull.InvalidArgument):
            br.click(tab, "[[[not a selector")
        assert not br.wait_for(tab, "#never", timeout=0.3)

        # The CDP URL: only on TCP; there it answers CDP's discovery request.
        with pytest.raises(hull.InvalidArgument, match="hull serve --listen"):
            _ = br.cdp_url
        with hull.Hull(url=daemon.url, token=daemon.token) as tcp:
            url = tcp.get(sb.id).browser.cdp_url
            assert url == daemon.url.rstrip("/") + f"/v1/sandboxes/{sb.id}/browser/cdp"
            r = httpx.get(url + "/json/version", headers={"authorization": f"Bearer {daemon.token}"}, timeout=30)
            assert r.status_code == 200 and r.json()["webSocketDebuggerUrl"].endswith(f"/{sb.id}/browser/cdp")

        restarted = br.restart()
        assert restarted.state == hull.models.BrowserState.RUNNING and restarted.pid
        with pytest.raises(hull.NotFound):
            br.text(tab)  # its tabs went with the old browser
        stopped = br.stop()
        assert stopped.state == hull.models.BrowserState.STOPPED and br.status().state == stopped.state
        # Any action starts a fresh one; the old tab is gone.
        assert tab.id not in {t.id for t in br.tabs()}
    with pytest.raises(hull.NotFound):
        sb.browser.status()


def test_browser_async(daemon: Daemon) -> None:
    async def go() -> None:
        async with daemon.aclient() as c, c.sandbox(template="host") as sb:
            await sb.files.write("/tmp/page.html", PAGE)
            tab = await sb.browser.open("file:///tmp/page.html")
            assert "Hello from hull" in await sb.browser.text(tab)
            assert (await sb.browser.screenshot(tab)).startswith(PNG_MAGIC)
            assert await sb.browser.evaluate(tab, "document.title") == "Form"
            await sb.browser.close(tab)
            assert (await sb.browser.stop()).state == hull.models.BrowserState.STOPPED

    asyncio.run(go())


# --- streamed code runs ----------------------------------------------------------


def test_code_run_stream(host_sandbox: hull.Sandbox) -> None:
    code = host_sandbox.code
    events = list(code.run_stream("import sys\nprint('a', flush=True)\nprint('b', file=sys.stderr)\n6 * 7"))
    kinds = [type(e).__name__ for e in events]
    assert kinds[-1] == "CodeEnd" and "CodeStdout" in kinds and "CodeStderr" in kinds, kinds
    out = "".join(e.text for e in events if isinstance(e, hull.models.CodeStdout))
    assert out == "a\n"
    res = [e for e in events if isinstance(e, hull.models.CodeResult)]
    assert res and res[0].data["text/plain"] == "42"
    # Named context, created on first use; its state persists.
    with code.run_stream("z = 5", context="s") as st:
        assert [type(e).__name__ for e in st] == ["CodeEnd"] and st.result is not None
    exc = [e for e in code.run_stream("z / 0", context="s") if isinstance(e, hull.models.CodeException)]
    assert exc and exc[0].name == "ZeroDivisionError"
    with code.run_stream("import time; time.sleep(60)", timeout=0.3) as st:
        end = list(st)[-1]
        assert isinstance(end, hull.CodeEnd) and end.timed_out
    # Closing early interrupts the code; the context lives on.
    st = code.run_stream("import time\nfor i in range(600):\n    print(i, flush=True); time.sleep(0.1)", context="s")
    assert isinstance(next(st), hull.models.CodeStdout)
    st.close()
    assert code.run("z", context="s").text == "5"
    with pytest.raises(hull.InvalidArgument):
        list(code.run_stream("1", context="bad name!"))
    with pytest.raises(hull.NotFound):
        list(
            hull.Sandbox(
                host_sandbox.client, host_sandbox.last_info.model_copy(update={"id": "nosuch"})
            ).code.run_stream("1")
        )


def test_code_run_stream_async(daemon: Daemon) -> None:
    async def go() -> None:
        async with daemon.aclient() as c, c.sandbox(template="host") as sb:
            events = [e async for e in sb.code.run_stream("print('hi')\n1 + 1")]
            assert isinstance(events[-1], hull.CodeEnd)
            assert "".join(e.text for e in events if isinstance(e, hull.models.CodeStdout)) == "hi\n"

    asyncio.run(go())


# --- MCP servers -------------------------------------------------------------------

MCP_SERVER = """
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("sdk-test")

@mcp.tool()
def add(a: int, b: int) -> int:
    \"\"\"Add two numbers.\"\"\"
    return a + b

mcp.run()
"""


def _mcp_site_packages() -> str | None:
    found = glob.glob("/var/cache/hull/venv-mcp/lib/python3*/site-packages")
    return found[0] if found and os.path.isdir(os.path.join(found[0], "mcp")) else None


def test_mcp_registration_errors_list_and_stop(host_sandbox: hull.Sandbox) -> None:
    mcp = host_sandbox.mcp
    assert mcp.list() == []
    with pytest.raises(hull.InvalidArgument, match="hello"):
        mcp.start("garbage", ["sh", "-c", "echo hello; exit 3"])
    with pytest.raises(hull.InvalidArgument):
        mcp.start("a b", ["true"])
    with pytest.raises(hull.NotFound):
        mcp.start("missing", ["/no/such/program"])
    with pytest.raises(hull.NotFound):
        mcp.stop("never-registered")
    assert mcp.list() == []
    with pytest.raises(hull.InvalidArgument, match="hull serve --listen"):
        mcp.url("x")


def test_mcp_server(client: hull.Hull, daemon: Daemon) -> None:
    site = _mcp_site_packages()
    if site is None:
        skip_or_fail("no /var/cache/hull/venv-mcp with the `mcp` package")
        return
    with client.sandbox(template="host") as sb:
        sb.files.upload(site, "/opt/pylib")
        sb.files.write("/srv/server.py", MCP_SERVER)
        info = sb.mcp.start("calc", ["python3", "/srv/server.py"], env={"PYTHONPATH": "/opt/pylib"})
        assert info.name == "calc" and info.server_name == "sdk-test" and info.tools == 1
        assert info.endpoint == f"/v1/sandboxes/{sb.id}/mcp/calc" and info.sessions == 0
        assert [s.name for s in sb.mcp.list()] == ["calc"]
        with pytest.raises(hull.Conflict):
            sb.mcp.start("calc", ["python3", "/srv/server.py"], env={"PYTHONPATH": "/opt/pylib"})

        # Speak MCP to it over TCP, at the URL the SDK gives.
        with hull.Hull(url=daemon.url, token=daemon.token) as tcp:
            url = tcp.get(sb.id).mcp.url("calc")
        h = {"authorization": f"Bearer {daemon.token}", "accept": "application/json, text/event-stream"}
        with httpx.Client(timeout=60, headers=h) as http:
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
            r = http.post(url, json=init, headers={"accept": "application/json"})
            assert r.status_code == 200, r.text
            sid = r.headers["mcp-session-id"]
            assert r.json()["result"]["serverInfo"]["name"] == "sdk-test"
            hs = {"mcp-session-id": sid, "accept": "application/json"}
            assert (
                http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hs).status_code
                == 202
            )
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 2, "b": 40}},
            }
            r = http.post(url, json=call, headers=hs)
            assert r.status_code == 200, r.text
            assert json.dumps(r.json()["result"]).count("42") >= 1
        assert sb.mcp.list()[0].sessions == 1
        sb.mcp.stop("calc")
        assert sb.mcp.list() == []


def test_mcp_async(daemon: Daemon) -> None:
    async def go() -> None:
        async with daemon.aclient() as c, c.sandbox(template="host") as sb:
            assert await sb.mcp.list() == []
            with pytest.raises(hull.InvalidArgument):
                await sb.mcp.start("garbage", "echo not-mcp")
            with pytest.raises(hull.NotFound):
                await sb.mcp.stop("none")

    asyncio.run(go())
