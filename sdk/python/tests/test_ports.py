"""Live tests of ``sb.expose``, ``sb.ports`` and ``sb.unexpose``, sync and
async, over the unix socket and over TCP with the token: an HTTP server
(python3 -m http.server over /etc) inside a ``host`` sandbox, reached
through the daemon's reverse proxy with the SDK's own HTTP client; then
hostile input (port 0 / 70000 / a string, an unknown protocol, removing
a port that is not exposed, no token)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import Daemon

import hull

SERVE = "cd /etc && (python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 &)"


def _get_until_ok(http: httpx.Client, url: str) -> httpx.Response:
    """The server starts in the background: retry while the proxy says 502."""
    deadline = time.monotonic() + 20
    while True:
        r = http.get(url)
        if r.status_code != 502 or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_expose_http(daemon: Daemon, client: hull.Hull, host_sandbox: hull.Sandbox) -> None:
    sb = host_sandbox
    assert sb.exec(["/bin/sh", "-c", SERVE]).exit_code == 0
    x = sb.expose(8080)
    assert isinstance(x, hull.ExposedPort)
    assert (x.port, x.protocol, x.sandbox) == (8080, hull.models.PortProtocol.HTTP, sb.id)
    assert x.path == f"/v1/sandboxes/{sb.id}/ports/8080/http/"
    assert x.url == "http://localhost" + x.path
    r = _get_until_ok(client.http, x.url + "os-release")
    assert r.status_code == 200, r.text
    with open("/etc/os-release", "rb") as f:
        assert r.content == f.read()
    assert sb.expose(8080).created_at == x.created_at, "idempotent"

    # Over TCP: the URL is the daemon's, and it needs the token.
    with hull.Hull(url=daemon.url, token=daemon.token) as tcp:
        y = tcp.get(sb.id).expose(8080)
        assert y.url == daemon.url + y.path
        r = tcp.http.get(y.url + "os-release")
        assert r.status_code == 200
        assert httpx.get(y.url + "os-release").status_code == 401
        t = tcp.get(sb.id).expose(9000, protocol="tcp")
        assert t.url == "ws" + daemon.url[len("http") :] + f"/v1/sandboxes/{sb.id}/ports/9000/tcp"

    assert [p.port for p in sb.ports()] == [8080, 9000]
    sb.unexpose(9000)
    assert [p.port for p in sb.ports()] == [8080]
    r = client.http.get(x.url.replace("8080", "9000") + "x")
    assert r.status_code == 404

    # Hostile input.
    for bad in (0, 70000, -1, "8080", True, None):
        with pytest.raises(hull.InvalidArgument):
            sb.expose(bad)  # type: ignore[arg-type]
    with pytest.raises(hull.InvalidArgument):
        sb.expose(8080, protocol="udp")
    with pytest.raises(hull.NotFound):
        sb.unexpose(8081)
    with pytest.raises(hull.NotFound):
        client.get("nope-nope")


def test_expose_async(daemon: Daemon) -> None:
    async def main() -> None:
        async with daemon.aclient() as c:
            sb = await c.create(template="host")
            try:
                assert (await sb.exec(["/bin/sh", "-c", SERVE])).exit_code == 0
                x = await sb.expose(8080)
                assert x.url == "http://localhost" + x.path
                deadline = time.monotonic() + 20
                while True:
                    r = await c.http.get(x.url + "os-release")
                    if r.status_code != 502 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                assert r.status_code == 200, r.text
                assert [p.port for p in await sb.ports()] == [8080]
                await sb.unexpose(8080)
                assert await sb.ports() == []
                with pytest.raises(hull.NotFound):
                    await sb.unexpose(8080)
            finally:
                await sb.destroy()

    asyncio.run(main())
