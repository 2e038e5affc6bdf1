"""The official Python MCP client (PyPI `mcp`) against hull.

Usage: mcp_client.py stdio HULL_BINARY
       mcp_client.py http URL TOKEN

Lists the tools, creates a busybox sandbox, runs a command in it, writes
and reads a file, checks that a bad call is a tool error, destroys the
sandbox; then runs Python with code_run in a host sandbox (state, an image,
a traceback; needs python3-ipykernel on the host). Prints "ok" and exits 0 when every check passes.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


def field(obj, snake, camel):
    """An attribute by its 2.x (snake_case) or 1.x (camelCase) name."""
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel)


def is_error(r):
    return bool(field(r, "is_error", "isError"))


def result(r):
    """A tool result's structured content (or its text parsed as JSON)."""
    structured = field(r, "structured_content", "structuredContent")
    if structured is not None:
        return structured
    return json.loads(r.content[0].text)


async def exercise(session):
    init = await session.initialize()
    assert field(init, "server_info", "serverInfo").name, init
    tools = await session.list_tools()
    names = {t.name for t in tools.tools}
    for want in ("sandbox_create", "exec", "shell_run", "file_read", "snapshot_create"):
        assert want in names, names
    for t in tools.tools:
        assert t.description, t.name
        schema = field(t, "input_schema", "inputSchema")
        assert schema.get("type") == "object", (t.name, schema)

    created = await session.call_tool("sandbox_create", {"template": "busybox"})
    assert not is_error(created), created
    sid = result(created)["id"]
    try:
        ran = await session.call_tool("exec", {"sandbox": sid, "command": "echo hi from $0"})
        assert not is_error(ran), ran
        out = result(ran)
        assert out["stdout"] == "hi from sh\n" and out["exit_code"] == 0, out
        wrote = await session.call_tool(
            "file_write", {"sandbox": sid, "path": "/tmp/m", "content": "mcp data"}
        )
        assert not is_error(wrote), wrote
        read = await session.call_tool("file_read", {"sandbox": sid, "path": "/tmp/m"})
        assert "mcp data" in json.dumps(result(read)), read
        bad = await session.call_tool("exec", {"sandbox": "no-such-sandbox", "argv": ["true"]})
        assert is_error(bad), bad
        assert "not_found" in bad.content[0].text, bad.content[0].text
    finally:
        gone = await session.call_tool("sandbox_destroy", {"sandbox": sid})
        assert not is_error(gone), gone
    await exercise_code(session)


# A 1x1 PNG, displayed by the code and expected back as MCP image content.
PNG_HEX = (
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)


async def exercise_code(session):
    """code_run in a host sandbox (python3-ipykernel on the host): state
    persists, images come as image content, an exception is a traceback."""
    created = await session.call_tool("sandbox_create", {"template": "host"})
    assert not is_error(created), created
    sid = result(created)["id"]
    try:
        first = await session.call_tool(
            "code_run", {"sandbox": sid, "code": "x = 6 * 7\nprint('set')"}
        )
        assert not is_error(first), first
        assert first.content[0].text == "set\n", first.content
        again = await session.call_tool("code_run", {"sandbox": sid, "code": "x"})
        assert again.content[0].text == "42", again.content
        assert result(again)["results"][0]["text/plain"] == "42", result(again)
        shown = await session.call_tool(
            "code_run",
            {
                "sandbox": sid,
                "code": "from IPython.display import Image, display\n"
                f"display(Image(data=bytes.fromhex('{PNG_HEX}')))",
            },
        )
        images = [c for c in shown.content if c.type == "image"]
        assert len(images) == 1, shown.content
        assert field(images[0], "mime_type", "mimeType") == "image/png", images[0]
        assert images[0].data.startswith("iVBORw0KGgo"), images[0].data[:20]
        raised = await session.call_tool("code_run", {"sandbox": sid, "code": "1/0"})
        assert not is_error(raised), raised
        assert "ZeroDivisionError" in raised.content[0].text, raised.content
        assert "\x1b[" not in raised.content[0].text, raised.content
        listed = await session.call_tool("code_contexts", {"sandbox": sid})
        names = [c["context"] for c in result(listed)["contexts"]]
        assert names == ["default"], names
        bad = await session.call_tool(
            "code_run", {"sandbox": sid, "code": "1", "context": "../x"}
        )
        assert is_error(bad) and "invalid_argument" in bad.content[0].text, bad
    finally:
        gone = await session.call_tool("sandbox_destroy", {"sandbox": sid})
        assert not is_error(gone), gone


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(
            command=sys.argv[2], args=["mcp"], env=dict(os.environ)
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await exercise(session)
    elif mode == "http":
        import httpx2

        url, token = sys.argv[2], sys.argv[3]
        client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        async with client:
            async with streamable_http_client(url, http_client=client) as (read, write):
                async with ClientSession(read, write) as session:
                    await exercise(session)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("ok")


asyncio.run(main())
