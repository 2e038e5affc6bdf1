"""The official Python MCP client (PyPI `mcp`) against an MCP server hosted
inside a sandbox (`/v1/sandboxes/{id}/mcp/{name}`), over streamable HTTP
on TCP with the API token.

Usage: mcp_host_client.py URL TOKEN HOSTNAME

The server is the FastMCP script of crates/server/tests/mcp_host.rs: its
`whereami` tool writes /tmp/mcp-<tag> and reports the hostname, which must
be the sandbox's (HOSTNAME); `slow` reports progress and logs; `counter`
counts per process. Prints "ok" and exits 0 when every check passes.
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


def field(obj, snake, camel):
    """An attribute by its 2.x (snake_case) or 1.x (camelCase) name."""
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel)


def result(r):
    assert not field(r, "is_error", "isError"), r
    structured = field(r, "structured_content", "structuredContent")
    if structured is not None:
        return structured.get("result", structured)
    try:
        return json.loads(r.content[0].text)
    except ValueError:
        return r.content[0].text


async def main():
    url, token, hostname = sys.argv[1], sys.argv[2], sys.argv[3]
    logs = []

    async def on_log(params):
        logs.append(params)

    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write, logging_callback=on_log) as session:
                init = await session.initialize()
                assert field(init, "server_info", "serverInfo").name == "sandboxed", init
                tools = await session.list_tools()
                names = sorted(t.name for t in tools.tools)
                assert names == ["counter", "crash", "slow", "whereami"], names

                where = result(await session.call_tool("whereami", {"tag": "python"}))
                assert where["hostname"] == hostname, (where, hostname)
                assert "mcp-python" in where["files"], where

                progress = []

                async def on_progress(done, total, message):
                    progress.append((done, total))

                slow = await session.call_tool(
                    "slow", {"steps": 3}, progress_callback=on_progress
                )
                assert result(slow) == "ok", slow
                assert progress == [(1, 3), (2, 3), (3, 3)], progress

                assert result(await session.call_tool("counter", {})) == 1
                assert result(await session.call_tool("counter", {})) == 2
                # The log notification `slow` sent came on an event stream.
                assert any("slow done" in json.dumps(getattr(l, "data", "")) for l in logs), logs
    print("ok")


asyncio.run(main())
