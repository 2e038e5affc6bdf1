"""Parts of the SDK that need no daemon: endpoint resolution, value forms,
error mapping, request validation, and unpacking hostile tar archives."""

from __future__ import annotations

import datetime
import io
import os
import tarfile
from pathlib import Path

import pytest

import hull
from hull import _ops as ops
from hull import _tar
from hull._config import resolve_endpoint
from hull.errors import error_from_response


def test_endpoint_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("HULL_URL", "HULL_TOKEN", "HULL_SOCKET"):
        monkeypatch.delenv(k, raising=False)
    default = resolve_endpoint()
    assert default.url is None and default.socket  # the config file's, or /run/hull/hull.sock
    monkeypatch.setenv("HULL_SOCKET", "/tmp/x.sock")
    assert resolve_endpoint().socket == "/tmp/x.sock"
    monkeypatch.setenv("HULL_URL", "http://127.0.0.1:7070/")
    monkeypatch.setenv("HULL_TOKEN", " abc\n")
    ep = resolve_endpoint()
    assert (ep.url, ep.token, ep.socket) == ("http://127.0.0.1:7070", "abc", None)
    # Explicit arguments win over the environment.
    assert resolve_endpoint(socket="/tmp/y.sock").socket == "/tmp/y.sock"
    assert resolve_endpoint(url="http://h:1", token="t").token == "t"
    for bad in ("127.0.0.1:7070", "ftp://h:1", "http://h:1/v1", "http://"):
        with pytest.raises(hull.InvalidArgument, match="http://HOST:PORT"):
            resolve_endpoint(url=bad)


def test_sizes_and_durations() -> None:
    assert hull.parse_size("512M") == 512 << 20
    assert hull.parse_size("1.5G") == 3 << 29
    assert hull.parse_size(4096) == 4096
    for bad in ("12X", "", "-1M", "M", True, -1, 1.5):
        with pytest.raises(hull.InvalidArgument):
            hull.parse_size(bad)  # type: ignore[arg-type]
    assert hull.parse_duration("1h30m") == 5400
    assert hull.parse_duration("250ms") == 0.25
    assert hull.parse_duration("2.5") == 2.5
    assert hull.parse_duration(datetime.timedelta(minutes=2)) == 120
    for bad in ("10x", "", "1h 30m", "-5", float("nan"), -1, "h", None):
        with pytest.raises(hull.InvalidArgument):
            hull.parse_duration(bad)  # type: ignore[arg-type]


def test_error_mapping() -> None:
    e = error_from_response(
        404, b'{"error":{"kind":"not_found","message":"no sandbox x","reason":"command_not_found"}}'
    )
    assert type(e) is hull.NotFound and e.message == "no sandbox x" and e.status == 404
    assert e.reason == "command_not_found"
    # Unknown reasons read as none; unknown kinds fall back on the status.
    e = error_from_response(409, b'{"error":{"kind":"brand_new","message":"m","reason":"later"}}')
    assert type(e) is hull.Conflict and e.kind == "brand_new" and e.reason is None
    e = error_from_response(502, b"<html>bad gateway</html>")
    assert type(e) is hull.Internal and "bad gateway" in e.message
    e = error_from_response(401, b"")
    assert type(e) is hull.Unauthenticated
    assert issubclass(hull.DaemonUnreachable, hull.Unavailable)
    for cls in (hull.NotFound, hull.Conflict, hull.InvalidArgument):
        assert issubclass(cls, hull.HullError)


def test_request_validation() -> None:
    assert ops.argv("echo hi") == ["/bin/sh", "-c", "echo hi"]
    assert ops.argv(("ls", "-l")) == ["ls", "-l"]
    with pytest.raises(hull.InvalidArgument):
        ops.argv(["ls", 3])  # type: ignore[list-item]
    with pytest.raises(hull.InvalidArgument):
        ops.argv(b"ls")  # type: ignore[arg-type]
    with pytest.raises(hull.InvalidArgument, match="cpus"):
        ops.create(cpus="lots")  # type: ignore[arg-type]
    with pytest.raises(hull.InvalidArgument, match="profile"):
        ops.create(profile="fast")
    with pytest.raises(hull.InvalidArgument):
        ops.exec_request("true", stdin=b"\xff\xfe")
    with pytest.raises(hull.InvalidArgument):
        ops.fork("snap", True)  # type: ignore[arg-type]
    with pytest.raises(hull.InvalidArgument):
        ops.file_write("sb", "/x", b"", mode=0o17777)
    with pytest.raises(hull.InvalidArgument):
        ops.file_write("sb", "/x", b"", mode="rwx")
    with pytest.raises(hull.InvalidArgument):
        ops.inspect("")
    # Ids are one path segment, whatever they hold.
    assert ops.inspect("../../v1/info").path == "/v1/sandboxes/..%2F..%2Fv1%2Finfo"
    body, wait = ops.exec_request(["true"], timeout="2s")
    assert b'"timeout_seconds":2.0' in body and wait == 2 + ops.TIMEOUT_MARGIN
    assert ops.create(from_snapshot="s1").body == b'{"labels":{},"limits":{},"env":{},"from":"s1"}'


def test_template_names_from_files() -> None:
    assert ops.template_name_from_file("/x/Alpine_3.20.tar") == "alpine-3-20"
    assert ops.template_name_from_file("img.tar.gz") == "img"
    with pytest.raises(hull.InvalidArgument, match="name="):
        ops.template_name_from_file("___.tar")


def _tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    buf.seek(0)
    return buf


def _entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = kind
    t.mode = mode
    t.linkname = link
    return t


def test_unpack_refuses_escapes(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    arch = _tar_bytes(
        (_entry("./ok.txt", mode=0o4755), b"fine"),
        (_entry("../evil.txt"), b"x"),
        (_entry("/abs.txt"), b"x"),
        (_entry("a/../../evil2.txt"), b"x"),
        (_entry("dev", kind=tarfile.CHRTYPE), None),
        (_entry("sub", kind=tarfile.DIRTYPE, mode=0o500), None),
        (_entry("sub/inner.txt"), b"inner"),
        (_entry("link", kind=tarfile.SYMTYPE, link=str(outside)), None),
        (_entry("hard", kind=tarfile.LNKTYPE, link="ok.txt"), None),
    )
    skipped = _tar.unpack(arch, dest)
    assert sorted(skipped) == sorted(["../evil.txt", "/abs.txt", "a/../../evil2.txt", "dev"])
    assert (dest / "ok.txt").read_bytes() == b"fine"
    assert (dest / "ok.txt").stat().st_mode & 0o7777 == 0o755  # no setuid
    assert (dest / "sub" / "inner.txt").read_bytes() == b"inner"
    assert (dest / "sub").stat().st_mode & 0o777 == 0o500  # applied after its entries
    assert os.readlink(dest / "link") == str(outside)
    assert (dest / "hard").read_bytes() == b"fine"
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "evil2.txt").exists()
    os.chmod(dest / "sub", 0o700)

    # Writing through a symlink the archive planted fails the unpack.
    dest2 = tmp_path / "dest2"
    arch = _tar_bytes(
        (_entry("link", kind=tarfile.SYMTYPE, link=str(outside)), None),
        (_entry("link/pwned.txt"), b"x"),
    )
    with pytest.raises(hull.InvalidArgument, match="not a directory"):
        _tar.unpack(arch, dest2)
    assert not (outside / "pwned.txt").exists()

    # A file entry over a planted symlink replaces the link, not its target.
    target = outside / "victim.txt"
    target.write_text("safe")
    dest3 = tmp_path / "dest3"
    arch = _tar_bytes(
        (_entry("v", kind=tarfile.SYMTYPE, link=str(target)), None),
        (_entry("v"), b"overwritten"),
    )
    _tar.unpack(arch, dest3)
    assert target.read_text() == "safe" and (dest3 / "v").read_bytes() == b"overwritten"

    # Hard links may only point at regular files inside the destination.
    for link in ("../outside/victim.txt", "/etc/passwd", "sub"):
        arch = _tar_bytes(
            (_entry("sub", kind=tarfile.DIRTYPE, mode=0o755), None),
            (_entry("h", kind=tarfile.LNKTYPE, link=link), None),
        )
        with pytest.raises(hull.InvalidArgument, match="hard link"):
            _tar.unpack(arch, tmp_path / "dest4")


def test_pack_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("hello")
    os.symlink("d/f.txt", src / "l")
    with _tar.pack(src) as f:
        _tar.unpack(f, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "f.txt").read_text() == "hello"
    assert os.readlink(tmp_path / "out" / "l") == "d/f.txt"


def test_unreachable_daemon(tmp_path: Path) -> None:
    with hull.Hull(socket=str(tmp_path / "nothing.sock")) as c:
        with pytest.raises(hull.DaemonUnreachable, match="cannot reach the hull daemon at .*nothing.sock"):
            c.version()
    import asyncio

    async def go() -> None:
        async with hull.AsyncHull(socket=str(tmp_path / "nothing.sock")) as c:
            with pytest.raises(hull.DaemonUnreachable):
                await c.version()

    asyncio.run(go())


@pytest.mark.parametrize(
    "sync_cls,async_cls",
    [
        (hull.Hull, hull.AsyncHull),
        (hull.Sandbox, hull.AsyncSandbox),
        (hull.Files, hull.AsyncFiles),
        (hull.Code, hull.AsyncCode),
        (hull.Browser, hull.AsyncBrowser),
        (hull.Mcp, hull.AsyncMcp),
        (hull.ShellSession, hull.AsyncShellSession),
        (hull.Snapshots, hull.AsyncSnapshots),
        (hull.Templates, hull.AsyncTemplates),
    ],
)
def test_sync_and_async_have_the_same_surface(sync_cls: type, async_cls: type) -> None:
    import inspect

    def public(cls: type) -> dict[str, object]:
        return {n: v for n, v in vars(cls).items() if not n.startswith("_")}

    s, a = public(sync_cls), public(async_cls)
    assert set(s) == set(a), f"only sync: {set(s) - set(a)}, only async: {set(a) - set(s)}"
    for name, fn in s.items():
        afn = a[name]
        if isinstance(fn, property):
            assert isinstance(afn, property), name
            continue
        assert list(inspect.signature(fn).parameters) == list(inspect.signature(afn).parameters), name  # type: ignore[arg-type]
        # Streams are iterators (no await); a URL is computed locally.
        if name not in ("exec_stream", "run_stream", "sandbox", "url"):
            assert inspect.iscoroutinefunction(afn), f"{async_cls.__name__}.{name} is not awaitable"


def test_browser_and_mcp_arguments_are_checked_before_any_request() -> None:
    with pytest.raises(hull.InvalidArgument, match="tab"):
        ops.browser_click("sb", 42, "a", None)
    with pytest.raises(hull.InvalidArgument, match="tab"):
        ops.browser_screenshot("sb", "", False)
    with pytest.raises(hull.InvalidArgument, match="values"):
        ops.browser_select("sb", "t", "select", [1], None)  # type: ignore[list-item]
    with pytest.raises(hull.InvalidArgument, match="expression"):
        ops.browser_evaluate("sb", "t", None, None)  # type: ignore[arg-type]
    with pytest.raises(hull.InvalidArgument):
        ops.mcp_start("sb", "x", [b"cat"], None, None, None, None, None)  # type: ignore[list-item]
    with pytest.raises(hull.InvalidArgument, match="MCP server name"):
        ops.mcp_stop("sb", "")
    # A tab as a model, names percent-encoded into one segment.
    tab = hull.BrowserTab(id="T1", url="about:blank", title="")
    assert b'"tab":"T1"' in ops.browser_text("sb", tab, None).body
    assert ops.mcp_path("s b", "a/b") == "/v1/sandboxes/s%20b/mcp/a%2Fb"


def test_urls_for_other_clients_need_a_tcp_endpoint(tmp_path: Path) -> None:
    tcp = hull.Endpoint(url="http://127.0.0.1:7070/", token="t")
    assert ops.endpoint_url(tcp, "/v1/sandboxes/x/browser/cdp", "a CDP URL") == (
        "http://127.0.0.1:7070/v1/sandboxes/x/browser/cdp"
    )
    with pytest.raises(hull.InvalidArgument, match="hull serve --listen"):
        ops.endpoint_url(hull.Endpoint(socket=str(tmp_path / "s.sock")), "/v1/x", "a CDP URL")


def test_code_events_parse_and_unknown_ones_are_internal_errors() -> None:
    assert ops.parse_code_event(b'{"type":"stdout","text":"hi"}') == hull.models.CodeStdout(text="hi")
    end = ops.parse_code_event(b'{"type":"end","timed_out":false,"truncated":false,"execution_count":3}')
    assert isinstance(end, hull.CodeEnd) and end.execution_count == 3
    err = ops.parse_code_event(b'{"type":"error","error":{"kind":"unavailable","message":"kernel died"}}')
    assert isinstance(err, hull.models.ApiError) and err.message == "kernel died"
    with pytest.raises(hull.Internal):
        ops.parse_code_event(b'{"type":"bogus"}')
