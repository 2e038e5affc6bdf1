"""The asyncio client: :class:`AsyncHull` and its handles.

The same names as the synchronous ``Hull`` (``hull._sync``), with
awaitable methods, over one ``httpx.AsyncClient``; both build their
requests with ``hull._ops``, so they cannot drift apart. Two differences
of form: :meth:`AsyncHull.sandbox` is an ``async with`` block, and
:meth:`AsyncSandbox.exec_stream` returns an async iterator directly (no
``await``). Local file work (packing and unpacking directories, reading
files to upload) runs in worker threads through ``anyio``, so the event
loop is not blocked by the disk.

``sb.browser``, ``sb.mcp`` and :meth:`AsyncCode.run_stream` (an async
iterator, no ``await``) are there too.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import IO, Any, TypeVar

import anyio.to_thread
import httpx

from . import _ops as ops
from . import _tar
from . import models as m
from ._config import Duration, Endpoint, Size, resolve_endpoint
from ._sync import _CHUNK, _CONNECT_TIMEOUT, _JSON, FileListing, transport_error
from ._version import __version__
from .errors import Conflict, InvalidArgument, NotFound, Unavailable, error_from_api, error_from_response

T = TypeVar("T")


async def _file_chunks(f: IO[bytes]) -> AsyncIterator[bytes]:
    while True:
        b = await anyio.to_thread.run_sync(f.read, _CHUNK)
        if not b:
            return
        if not isinstance(b, (bytes, bytearray)):
            raise InvalidArgument("file objects given as data must be opened in binary mode")
        yield bytes(b)


async def _iter_chunks(it: Iterable[bytes]) -> AsyncIterator[bytes]:
    for b in it:
        yield b


def _body(data: Any) -> bytes | AsyncIterable[bytes]:
    """An upload body: bytes as they are, text as UTF-8, a binary file read
    in chunks, an iterable or async iterable of chunks streamed."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "read"):
        return _file_chunks(data)
    if isinstance(data, AsyncIterable):
        return data
    if isinstance(data, Iterable):
        return _iter_chunks(data)
    raise InvalidArgument(
        f"data must be bytes, str, a binary file or an (async) iterable of bytes (got {type(data).__name__})"
    )


class AsyncHull:
    """An asyncio client of one hull daemon: the same as ``hull.Hull``
    (same endpoint rules, same names), with awaitable methods.

    Example::

        async with hull.AsyncHull() as client:
            async with client.sandbox(template="busybox") as sb:
                print((await sb.exec("echo hi")).stdout)
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
        max_connections: int = 256,
    ) -> None:
        self.endpoint: Endpoint = resolve_endpoint(socket, url, token)
        headers = {"user-agent": f"hull-sdk-python/{__version__}"}
        if self.endpoint.token:
            headers["authorization"] = f"Bearer {self.endpoint.token}"
        self._timeout = httpx.Timeout(timeout, connect=_CONNECT_TIMEOUT)
        self._unbounded = httpx.Timeout(None, connect=_CONNECT_TIMEOUT)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        if self.endpoint.url is not None:
            self._http = httpx.AsyncClient(
                base_url=self.endpoint.url, headers=headers, timeout=self._timeout, trust_env=False, limits=limits
            )
        else:
            transport = httpx.AsyncHTTPTransport(uds=self.endpoint.socket, limits=limits)
            self._http = httpx.AsyncClient(
                transport=transport,
                base_url="http://localhost",
                headers=headers,
                timeout=self._timeout,
                trust_env=False,
            )
        #: Snapshots: list, get, remove, export, import.
        self.snapshots = AsyncSnapshots(self)
        #: Templates: list, save, remove, import an image, build from Debian.
        self.templates = AsyncTemplates(self)

    # --- plumbing ---------------------------------------------------------

    def _read_timeout(self, rt: ops.ReadTimeout) -> httpx.Timeout:
        if isinstance(rt, ops._Default):
            return self._timeout
        if rt is None:
            return self._unbounded
        return httpx.Timeout(rt, connect=_CONNECT_TIMEOUT)

    async def _call(self, call: ops.Call[T]) -> T:
        headers = call.headers or (_JSON if call.body is not None else None)
        try:
            r = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                content=call.body,
                headers=headers,
                timeout=self._read_timeout(call.read_timeout),
            )
        except httpx.TransportError as e:
            raise transport_error(self.endpoint, e) from e
        if r.status_code >= 400:
            raise error_from_response(r.status_code, r.content)
        return call.parse(r.content)

    async def _open_stream(
        self,
        method: str,
        path: str,
        *,
        params: ops.Params | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: ops.ReadTimeout = None,
    ) -> httpx.Response:
        req = self._http.build_request(
            method, path, params=params, content=body, headers=headers, timeout=self._read_timeout(read_timeout)
        )
        try:
            resp = await self._http.send(req, stream=True)
        except httpx.TransportError as e:
            raise transport_error(self.endpoint, e) from e
        if resp.status_code >= 400:
            try:
                content = await resp.aread()
            except httpx.TransportError as e:
                raise transport_error(self.endpoint, e) from e
            finally:
                await resp.aclose()
            raise error_from_response(resp.status_code, content)
        return resp

    async def _download(self, path: str, params: ops.Params | None, out: IO[bytes]) -> None:
        resp = await self._open_stream("GET", path, params=params)
        try:
            async for chunk in resp.aiter_bytes():
                await anyio.to_thread.run_sync(out.write, chunk)
        except httpx.TransportError as e:
            raise transport_error(self.endpoint, e) from e
        finally:
            await resp.aclose()

    async def _lines(self, resp: httpx.Response) -> AsyncIterator[bytes]:
        """NDJSON lines of a streamed answer, split on ``\\n`` only."""
        buf = bytearray()
        try:
            async for chunk in resp.aiter_raw():
                buf += chunk
                while True:
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line = bytes(buf[:i])
                    del buf[: i + 1]
                    if line.strip():
                        yield line
        except httpx.TransportError as e:
            raise transport_error(self.endpoint, e) from e
        if bytes(buf).strip():
            yield bytes(buf)

    # --- lifecycle ------------------------------------------------------------

    @property
    def http(self) -> httpx.AsyncClient:
        """The SDK's own ``httpx.AsyncClient`` (base URL or unix socket and
        credentials set): an exposed port's ``url`` works with it."""
        return self._http

    async def close(self) -> None:
        """Close the client's connections (sandboxes keep running)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncHull:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncHull({self.endpoint.describe()!r})"

    # --- the daemon ---------------------------------------------------------

    async def health(self) -> m.Health:
        """``GET /v1/health``: the daemon answers (no token needed on TCP)."""
        return await self._call(ops.health())

    async def version(self) -> m.Version:
        """The daemon's version, API version and guest protocol range."""
        return await self._call(ops.version())

    async def info(self) -> m.HostInfo:
        """What the daemon's host supports (``hull info``)."""
        return await self._call(ops.info())

    # --- sandboxes ----------------------------------------------------------

    async def create(
        self,
        template: str | None = None,
        *,
        profile: str | None = None,
        name: str | None = None,
        ttl: Duration | None = None,
        idle_timeout: Duration | None = None,
        memory: Size | None = None,
        cpus: float | None = None,
        pids: int | None = None,
        disk: Size | None = None,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        from_snapshot: str | m.Snapshot | None = None,
        network: Any = None,
    ) -> AsyncSandbox:
        """Create a sandbox and return its handle (arguments as for ``Hull.create``)."""
        info = await self._call(
            ops.create(
                template,
                profile=profile,
                name=name,
                ttl=ttl,
                idle_timeout=idle_timeout,
                memory=memory,
                cpus=cpus,
                pids=pids,
                disk=disk,
                env=env,
                labels=labels,
                user=user,
                workdir=workdir,
                from_snapshot=from_snapshot,
                network=network,
            )
        )
        return AsyncSandbox(self, info)

    @contextlib.asynccontextmanager
    async def sandbox(
        self,
        template: str | None = None,
        *,
        profile: str | None = None,
        name: str | None = None,
        ttl: Duration | None = None,
        idle_timeout: Duration | None = None,
        memory: Size | None = None,
        cpus: float | None = None,
        pids: int | None = None,
        disk: Size | None = None,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        from_snapshot: str | m.Snapshot | None = None,
        network: Any = None,
    ) -> AsyncIterator[AsyncSandbox]:
        """A sandbox for the ``async with`` block: created on entry,
        destroyed on exit whatever happens (one already gone is fine)."""
        sb = await self.create(
            template,
            profile=profile,
            name=name,
            ttl=ttl,
            idle_timeout=idle_timeout,
            memory=memory,
            cpus=cpus,
            pids=pids,
            disk=disk,
            env=env,
            labels=labels,
            user=user,
            workdir=workdir,
            from_snapshot=from_snapshot,
            network=network,
        )
        try:
            yield sb
        finally:
            await sb._destroy_quietly()

    async def get(self, id_or_name: str) -> AsyncSandbox:
        """A handle to an existing sandbox (``NotFound`` when there is none)."""
        return AsyncSandbox(self, await self._call(ops.inspect(id_or_name)))

    async def list(self, labels: Mapping[str, str] | None = None) -> list[AsyncSandbox]:
        """Sandboxes, oldest first; with ``labels``, only those with every one."""
        return [AsyncSandbox(self, i) for i in await self._call(ops.list_sandboxes(labels))]

    async def fork(
        self,
        snapshot: str | m.Snapshot,
        n: int,
        *,
        profile: str | None = None,
        ttl: Duration | None = None,
        labels: Mapping[str, str] | None = None,
        memory: Size | None = None,
        cpus: float | None = None,
        pids: int | None = None,
        disk: Size | None = None,
        network: Any = None,
    ) -> builtins.list[AsyncSandbox]:
        """``n`` new sandboxes (1 to 1024) born from ``snapshot``, all or none."""
        infos = await self._call(
            ops.fork(
                snapshot, n, profile=profile, ttl=ttl, labels=labels, memory=memory, cpus=cpus, pids=pids, disk=disk,
                network=network,
            )
        )
        return [AsyncSandbox(self, i) for i in infos]


class AsyncSandbox:
    """A handle to one sandbox, as ``hull.Sandbox`` with awaitable methods.
    Used with ``async with``, the sandbox is destroyed at the end."""

    def __init__(self, client: AsyncHull, info: m.SandboxInfo) -> None:
        self._client = client
        self._info = info
        #: The sandbox's id.
        self.id: str = info.id
        #: File operations inside the sandbox.
        self.files = AsyncFiles(self)
        #: The code interpreter (Python contexts).
        self.code = AsyncCode(self)
        #: The sandbox's headless browser (Chromium).
        self.browser = AsyncBrowser(self)
        #: MCP servers hosted inside the sandbox.
        self.mcp = AsyncMcp(self)

    @property
    def name(self) -> str | None:
        """The sandbox's name, if it has one."""
        return self._info.name

    @property
    def state(self) -> m.SandboxState:
        """The state as of the last answer about this sandbox."""
        return self._info.state

    @property
    def last_info(self) -> m.SandboxInfo:
        """The whole record as of the last answer about this sandbox."""
        return self._info

    @property
    def client(self) -> AsyncHull:
        """The client this handle calls through."""
        return self._client

    def __repr__(self) -> str:
        return f"AsyncSandbox(id={self.id!r}, name={self.name!r}, state={str(self.state)!r})"

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._destroy_quietly()

    async def _destroy_quietly(self) -> None:
        try:
            await self.destroy()
        except NotFound:
            pass

    def _update(self, info: m.SandboxInfo) -> m.SandboxInfo:
        self._info = info
        return info

    async def info(self) -> m.SandboxInfo:
        """The sandbox's record now, with its events."""
        return self._update(await self._client._call(ops.inspect(self.id)))

    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: Duration | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: str | bytes | None = None,
    ) -> m.ExecResult:
        """Run a command and wait for it (as ``Sandbox.exec``)."""
        return await self._client._call(
            ops.exec_(self.id, cmd, timeout=timeout, env=env, cwd=cwd, user=user, stdin=stdin)
        )

    def exec_stream(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: Duration | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: str | bytes | None = None,
    ) -> AsyncExecStream:
        """An async iterator of the command's output chunks, then its
        :class:`~hull.models.ExecExit` (``async for ev in sb.exec_stream(...)``;
        not awaited). The request is sent at the first iteration."""
        body, wait = ops.exec_request(cmd, timeout=timeout, env=env, cwd=cwd, user=user, stdin=stdin)
        return AsyncExecStream(self._client, ops.sb(self.id, "/exec/stream"), body, wait)

    async def exec_background(
        self,
        cmd: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Duration | None = None,
    ) -> m.ProcessStarted:
        """Start a command in the background; returns its process id."""
        return await self._client._call(ops.exec_background(self.id, cmd, timeout=timeout, env=env, cwd=cwd, user=user))

    async def processes(self) -> list[m.ProcessInfo]:
        """Processes started through the agent."""
        return await self._client._call(ops.processes(self.id))

    async def signal(self, process: str | m.ProcessStarted | m.ProcessInfo, signal: int) -> None:
        """Send ``signal`` (1-64) to a process's group."""
        await self._client._call(ops.signal(self.id, process, signal))

    async def pause(self) -> m.SandboxInfo:
        """Freeze the sandbox's processes."""
        return self._update(await self._client._call(ops.lifecycle(self.id, "pause")))

    async def resume(self) -> m.SandboxInfo:
        """Thaw a paused sandbox."""
        return self._update(await self._client._call(ops.lifecycle(self.id, "resume")))

    async def stop(self) -> m.SandboxInfo:
        """Kill its processes; the record stays as ``stopped`` until destroyed."""
        return self._update(await self._client._call(ops.lifecycle(self.id, "stop")))

    async def network(self) -> m.SandboxNetwork:
        """Its network policy (header values redacted) and addresses."""
        return await self._client._call(ops.get_network(self.id))

    async def set_network(self, policy: str | Mapping[str, Any] | m.NetworkPolicy) -> m.SandboxNetwork:
        """Replace its network policy (``"none"``, ``"open"``,
        ``"allow:example.com,10.0.0.0/8"``, or the JSON form); new
        connections see it at once."""
        return await self._client._call(ops.set_network(self.id, policy))

    async def set_ttl(self, ttl: Duration) -> m.SandboxInfo:
        """Remaining lifetime from now; 0 removes the TTL."""
        return self._update(await self._client._call(ops.set_ttl(self.id, ttl)))

    async def destroy(self) -> None:
        """Destroy the sandbox, in any state."""
        await self._client._call(ops.destroy(self.id))

    async def expose(self, port: int, protocol: str | m.PortProtocol = "http") -> m.ExposedPort:
        """Make a TCP port of the sandbox reachable through the daemon
        (idempotent); ``.url`` is behind the API's credentials."""
        return await self._client._call(ops.expose(self._client.endpoint, self.id, port, protocol))

    async def ports(self) -> list[m.ExposedPort]:
        """The exposed ports, by port."""
        return await self._client._call(ops.ports(self._client.endpoint, self.id))

    async def unexpose(self, port: int) -> None:
        """Stop exposing a port."""
        await self._client._call(ops.unexpose(self.id, port))

    async def snapshot(self, name: str | None = None, *, labels: Mapping[str, str] | None = None) -> m.Snapshot:
        """Capture the sandbox's files (it keeps running)."""
        return await self._client._call(ops.snapshot(self.id, name, labels))

    async def rollback(self, snapshot: str | m.Snapshot) -> m.SandboxInfo:
        """Make the sandbox's files the snapshot's; its processes restart."""
        return self._update(await self._client._call(ops.rollback(self.id, snapshot)))

    async def shell(
        self,
        name: str = "default",
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> AsyncShellSession:
        """A persistent bash session: opened, or the existing one of that name."""
        try:
            opened = await self._client._call(ops.shell_open(self.id, name, cwd, env, user))
        except Conflict:
            for s in await self.shells():
                if s.session == name:
                    return AsyncShellSession(self, s.session, s.pid)
            raise
        return AsyncShellSession(self, opened.session, opened.pid)

    async def shells(self) -> list[m.ShellSessionInfo]:
        """The sandbox's shell sessions."""
        return await self._client._call(ops.shell_list(self.id))


class AsyncExecStream:
    """The output of :meth:`AsyncSandbox.exec_stream`: an async iterator of
    :class:`~hull.models.OutputChunk` then one :class:`~hull.models.ExecExit`;
    :meth:`aclose` (or the end of ``async with``) before the exit kills the
    command."""

    def __init__(self, client: AsyncHull, path: str, body: bytes, read_timeout: ops.ReadTimeout) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._read_timeout = read_timeout
        self._resp: httpx.Response | None = None
        self._lines: AsyncIterator[bytes] | None = None
        self._done = False
        #: The ``started`` event (guest process id and pid), once seen.
        self.started: m.ExecStarted | None = None
        #: How the command ended, once the stream reached its end.
        self.result: m.ExecExit | None = None

    @property
    def exit_code(self) -> int | None:
        """The exit code, once the stream reached its end."""
        return None if self.result is None else self.result.exit_code

    def __aiter__(self) -> AsyncExecStream:
        return self

    async def __anext__(self) -> m.OutputChunk | m.ExecExit:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._lines is None:
                self._resp = await self._client._open_stream(
                    "POST", self._path, body=self._body, headers=_JSON, read_timeout=self._read_timeout
                )
                self._lines = self._client._lines(self._resp)
            async for line in self._lines:
                ev = ops.parse_event(line)
                if isinstance(ev, m.OutputChunk):
                    return ev
                if isinstance(ev, m.ExecStarted):
                    self.started = ev
                    continue
                if isinstance(ev, m.ExecExit):
                    self.result = ev
                    await self.aclose()
                    return ev
                raise error_from_api(ev.model_dump(mode="json"), 200)
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        raise Unavailable(
            "the exec stream ended before the command's exit was reported (the daemon or the guest went away)"
        )

    async def aclose(self) -> None:
        """Close the connection; a command still running is killed."""
        self._done = True
        if self._lines is not None:
            with contextlib.suppress(RuntimeError):
                await self._lines.aclose()  # type: ignore[attr-defined]
        if self._resp is not None:
            await self._resp.aclose()

    async def __aenter__(self) -> AsyncExecStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncFiles:
    """File operations inside a sandbox (``sb.files``), as ``hull.Files``."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    @property
    def _c(self) -> AsyncHull:
        return self._sb._client

    async def read(self, path: str) -> bytes:
        """The file's bytes."""
        return await self._c._call(
            ops.Call("GET", ops.sb(self._sb.id, "/files"), bytes, params=ops.path_params(path), read_timeout=None)
        )

    async def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The file's content decoded as text."""
        return (await self.read(path)).decode(encoding, errors)

    async def watch(self, path: str, *, recursive: bool = False) -> AsyncFileWatch:
        """Watch a directory (as ``Files.watch``): awaited, the watch is in
        place; then ``async for`` its changes, and :meth:`AsyncFileWatch.aclose`
        (or ``async with``) ends it."""
        resp = await self._c._open_stream(
            "GET", ops.sb(self._sb.id, "/files/watch"), params=ops.watch_params(path, recursive), read_timeout=None
        )
        return AsyncFileWatch(self._c, resp)

    async def write(self, path: str, data: Any, *, mode: int | str | None = None) -> m.FileInfo:
        """Write a file atomically: bytes, text, a binary file, or an (async)
        iterable of byte chunks."""
        return await self._c._call(ops.file_write(self._sb.id, path, _body(data), mode, data))

    async def list(self, path: str = "/", *, depth: int = 1) -> FileListing:
        """Entries under a directory, to ``depth`` levels; ``.truncated`` when cut."""
        fl = await self._c._call(ops.file_list(self._sb.id, path, depth))
        return FileListing(fl.entries, fl.truncated)

    async def stat(self, path: str) -> m.FileInfo:
        """A file's metadata."""
        return await self._c._call(ops.file_stat(self._sb.id, path))

    async def exists(self, path: str) -> bool:
        """Whether something exists at ``path``."""
        try:
            await self.stat(path)
        except NotFound:
            return False
        return True

    async def mkdir(self, path: str, *, parents: bool = True) -> None:
        """Make a directory."""
        await self._c._call(ops.file_mkdir(self._sb.id, path, parents))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, symlink or (with ``recursive``, non-empty) directory."""
        await self._c._call(ops.file_remove(self._sb.id, path, recursive))

    async def rename(self, src: str, dst: str) -> None:
        """Rename within the sandbox."""
        await self._c._call(ops.file_rename(self._sb.id, src, dst))

    async def upload(self, local: str | os.PathLike[str], remote: str) -> str:
        """Copy a local file or directory into the sandbox (as ``Files.upload``)."""
        local = os.fspath(local)
        if os.path.isdir(local):
            tmp = await anyio.to_thread.run_sync(_tar.pack, local)
            with tmp:
                await self._c._call(
                    ops.Call(
                        "PUT",
                        ops.sb(self._sb.id, "/files/archive"),
                        ops._none,
                        params=ops.path_params(remote),
                        body=_file_chunks(tmp),
                        headers=ops.sized({"content-type": "application/x-tar"}, tmp),
                        read_timeout=None,
                    )
                )
            return remote
        target = remote
        if remote.endswith("/") or (await self.exists(remote) and (await self.stat(remote)).is_dir):
            target = ops.remote_join(remote, os.path.basename(local))
        mode = os.stat(local).st_mode & 0o777
        with open(local, "rb") as f:
            await self.write(target, f, mode=mode)
        return target

    async def download(self, remote: str, local: str | os.PathLike[str]) -> str:
        """Copy a sandbox file or directory to the host (as ``Files.download``)."""
        local = os.fspath(local)
        st = await self.stat(remote)
        if st.is_dir:
            with tempfile.TemporaryFile() as spool:
                await self._c._download(ops.sb(self._sb.id, "/files/archive"), ops.path_params(remote), spool)
                spool.seek(0)
                skipped = await anyio.to_thread.run_sync(_tar.unpack, spool, local)
            for s in skipped:
                warnings.warn(f"hull: skipped an archive entry outside {local}: {s}", stacklevel=2)
            return local
        target = local
        if os.path.isdir(local):
            target = os.path.join(local, os.path.basename(remote.rstrip("/")))
        tmp = target + ".hull-part"
        try:
            with open(tmp, "wb") as out:
                await self._c._download(ops.sb(self._sb.id, "/files"), ops.path_params(remote), out)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return target


class AsyncFileWatch:
    """The changes of a directory watched with :meth:`AsyncFiles.watch`, as
    an async iterator; :meth:`aclose` ends the watch."""

    def __init__(self, client: AsyncHull, resp: httpx.Response) -> None:
        self._resp = resp
        self._lines = client._lines(resp)
        self._done = False

    def __aiter__(self) -> AsyncFileWatch:
        return self

    async def __anext__(self) -> m.FileWatchEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            async for line in self._lines:
                ev = ops.parse_watch_event(line)
                if isinstance(ev, m.ApiError):
                    raise error_from_api(ev.model_dump(mode="json"), 200)
                return ev
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        raise Unavailable("the watch ended without a reason (the daemon went away)")

    async def aclose(self) -> None:
        """End the watch (the daemon stops watching inside the sandbox)."""
        self._done = True
        with contextlib.suppress(ValueError, RuntimeError):
            await self._lines.aclose()  # type: ignore[attr-defined]
        await self._resp.aclose()

    async def __aenter__(self) -> AsyncFileWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncShellSession:
    """A persistent bash session, as ``hull.ShellSession`` with awaitable methods."""

    def __init__(self, sandbox: AsyncSandbox, name: str, pid: int) -> None:
        self._sb = sandbox
        #: The session's name.
        self.name = name
        #: The shell's pid inside the sandbox.
        self.pid = pid

    def __repr__(self) -> str:
        return f"AsyncShellSession(sandbox={self._sb.id!r}, name={self.name!r})"

    async def run(
        self,
        command: str,
        *,
        timeout: Duration | None = None,
        idle_timeout: Duration | None = None,
        max_output: int | None = None,
    ) -> m.ShellRunResult:
        """Run a command as if typed at the prompt and wait for it."""
        return await self._sb._client._call(
            ops.shell_run(self._sb.id, self.name, command, timeout, idle_timeout, max_output)
        )

    async def send(
        self,
        input: str,
        *,
        expect: str | None = None,
        timeout: Duration | None = None,
        max_output: int | None = None,
    ) -> m.ShellSendResult:
        """Type ``input`` and collect output until ``expect`` matches (or a pause)."""
        return await self._sb._client._call(ops.shell_send(self._sb.id, self.name, input, expect, timeout, max_output))

    async def expect(self, pattern: str, *, timeout: Duration | None = None) -> m.ShellSendResult:
        """Wait, typing nothing, until the output matches ``pattern``."""
        return await self.send("", expect=pattern, timeout=timeout)

    async def close(self) -> None:
        """End the session and everything it started."""
        await self._sb._client._call(ops.shell_close(self._sb.id, self.name))

    async def __aenter__(self) -> AsyncShellSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(NotFound):
            await self.close()


class AsyncCode:
    """The code interpreter (``sb.code``), as ``hull.Code`` with awaitable methods."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def run(self, code: str, *, context: str | None = None, timeout: Duration | None = None) -> m.CodeRunResult:
        """Run code in ``context`` (``default`` when absent, created on first use)."""
        return await self._sb._client._call(ops.code_run(self._sb.id, code, context, timeout))

    def run_stream(self, code: str, *, context: str | None = None, timeout: Duration | None = None) -> AsyncCodeStream:
        """Run code and iterate (``async for``) over its outputs as they come,
        the last a :class:`~hull.models.CodeEnd`; closing early interrupts it."""
        path, body, wait = ops.code_stream(self._sb.id, code, context, timeout)
        return AsyncCodeStream(self._sb._client, path, body, wait)

    async def create(self, context: str, *, language: str | None = None) -> m.CodeContextInfo:
        """Start a named context."""
        return await self._sb._client._call(ops.code_create(self._sb.id, context, language))

    async def list(self) -> list[m.CodeContextInfo]:
        """The sandbox's contexts."""
        return await self._sb._client._call(ops.code_list(self._sb.id))

    async def restart(self, context: str = "default") -> m.CodeContextInfo:
        """A fresh kernel under the same name."""
        return await self._sb._client._call(ops.code_restart(self._sb.id, context))

    async def interrupt(self, context: str = "default") -> None:
        """Interrupt the code running in the context."""
        await self._sb._client._call(ops.code_interrupt(self._sb.id, context))

    async def stop(self, context: str = "default") -> None:
        """Stop the context's kernel."""
        await self._sb._client._call(ops.code_stop(self._sb.id, context))


class AsyncCodeStream:
    """The events of :meth:`AsyncCode.run_stream`, as ``hull.CodeStream``
    with ``async for``; :meth:`aclose` before the end interrupts the code."""

    def __init__(self, client: AsyncHull, path: str, body: bytes, read_timeout: ops.ReadTimeout) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._read_timeout = read_timeout
        self._resp: httpx.Response | None = None
        self._lines: AsyncIterator[bytes] | None = None
        self._done = False
        #: The ``end`` event, once the stream reached it.
        self.result: m.CodeEnd | None = None

    def __aiter__(self) -> AsyncCodeStream:
        return self

    async def __anext__(self) -> m.CodeEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._lines is None:
                self._resp = await self._client._open_stream(
                    "POST", self._path, body=self._body, headers=_JSON, read_timeout=self._read_timeout
                )
                self._lines = self._client._lines(self._resp)
            async for line in self._lines:
                ev = ops.parse_code_event(line)
                if isinstance(ev, m.ApiError):
                    raise error_from_api(ev.model_dump(mode="json"), 200)
                if isinstance(ev, m.CodeEnd):
                    self.result = ev
                    await self.aclose()
                return ev
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        raise Unavailable("the code stream ended before its end event (the daemon or the kernel went away)")

    async def aclose(self) -> None:
        """Close the connection; code still running is interrupted."""
        self._done = True
        if self._lines is not None:
            with contextlib.suppress(RuntimeError):
                await self._lines.aclose()  # type: ignore[attr-defined]
        if self._resp is not None:
            await self._resp.aclose()

    async def __aenter__(self) -> AsyncCodeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncBrowser:
    """The sandbox's headless Chromium (``sb.browser``), as ``hull.Browser`` with awaitable methods, started by the
    first call. Tabs are given as ids or :class:`~hull.models.BrowserTab`;
    ``timeout`` (default 30 s) bounds loads and waits. The sandbox needs
    Chromium (``Unavailable`` says what to install)."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def _call(self, call: ops.Call[T]) -> T:
        return await self._sb._client._call(call)

    @property
    def cdp_url(self) -> str:
        """The raw CDP URL for Playwright's ``connect_over_cdp`` (with the
        client's token as ``Authorization: Bearer``); ``InvalidArgument``
        on a unix-socket client."""
        return ops.endpoint_url(self._sb._client.endpoint, ops.sb(self._sb.id, "/browser/cdp"), "a CDP URL")

    async def status(self) -> m.BrowserStatus:
        """Whether the browser runs (``stopped``, ``running``, ``crashed``)."""
        return await self._call(ops.browser_status(self._sb.id))

    async def start(self) -> m.BrowserStatus:
        """Start the browser if none runs."""
        return await self._call(ops.browser_lifecycle(self._sb.id, "start"))

    async def stop(self) -> m.BrowserStatus:
        """Kill the browser; its tabs are gone."""
        return await self._call(ops.browser_lifecycle(self._sb.id, "stop"))

    async def restart(self) -> m.BrowserStatus:
        """A fresh browser (after a crash, or to start over)."""
        return await self._call(ops.browser_lifecycle(self._sb.id, "restart"))

    async def open(self, url: str | None = None, *, timeout: Duration | None = None) -> m.BrowserTab:
        """A new tab at ``url`` (``about:blank`` when absent), loaded."""
        return await self._call(ops.browser_open(self._sb.id, url, timeout))

    async def navigate(self, tab: str | m.BrowserTab, url: str, *, timeout: Duration | None = None) -> m.BrowserTab:
        """Load ``url`` in the tab and wait for it."""
        return await self._call(ops.browser_navigate(self._sb.id, tab, url, timeout))

    async def click(self, tab: str | m.BrowserTab, selector: str, *, timeout: Duration | None = None) -> None:
        """Click the first element matching the CSS selector."""
        await self._call(ops.browser_click(self._sb.id, tab, selector, timeout))

    async def type(
        self,
        tab: str | m.BrowserTab,
        selector: str,
        text: str,
        *,
        clear: bool = False,
        timeout: Duration | None = None,
    ) -> None:
        """Type ``text`` into the first element matching the selector
        (after its value, or instead of it with ``clear``)."""
        await self._call(ops.browser_type(self._sb.id, tab, selector, text, clear, timeout))

    async def select(
        self, tab: str | m.BrowserTab, selector: str, values: str | Sequence[str], *, timeout: Duration | None = None
    ) -> builtins.list[str]:
        """Select options of a ``<select>`` by value or text; the values now selected."""
        return await self._call(ops.browser_select(self._sb.id, tab, selector, values, timeout))

    async def wait_for(
        self, tab: str | m.BrowserTab, selector: str, *, visible: bool = False, timeout: Duration | None = None
    ) -> bool:
        """Wait for an element to match (and be visible); ``False`` after the timeout."""
        return await self._call(ops.browser_wait_for(self._sb.id, tab, selector, visible, timeout))

    async def text(self, tab: str | m.BrowserTab, selector: str | None = None) -> str:
        """The page's visible text (or an element's)."""
        return await self._call(ops.browser_text(self._sb.id, tab, selector))

    async def accessibility(self, tab: str | m.BrowserTab) -> m.AxNode | None:
        """The page's accessibility tree."""
        return await self._call(ops.browser_accessibility(self._sb.id, tab))

    async def screenshot(self, tab: str | m.BrowserTab, *, full_page: bool = False) -> bytes:
        """A PNG of the viewport, or of the whole page with ``full_page``."""
        return await self._call(ops.browser_screenshot(self._sb.id, tab, full_page))

    async def evaluate(self, tab: str | m.BrowserTab, expression: str, *, timeout: Duration | None = None) -> Any:
        """Evaluate a JavaScript expression in the page (promises awaited); its value from JSON."""
        return await self._call(ops.browser_evaluate(self._sb.id, tab, expression, timeout))

    async def tabs(self) -> builtins.list[m.BrowserTab]:
        """The open tabs."""
        return await self._call(ops.browser_tabs(self._sb.id))

    async def close(self, tab: str | m.BrowserTab) -> None:
        """Close a tab."""
        await self._call(ops.browser_close(self._sb.id, tab))


class AsyncMcp:
    """MCP servers hosted in the sandbox (``sb.mcp``), as ``hull.Mcp`` with awaitable methods: each registered
    stdio server is served at its own streamable-HTTP endpoint."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def start(
        self,
        name: str,
        command: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        startup_timeout: Duration | None = None,
        session_idle_timeout: Duration | None = None,
    ) -> m.McpServerInfo:
        """Register a stdio MCP server (``command``: argv, or a shell line).
        The daemon checks that it answers ``initialize``; one that does not
        raises ``InvalidArgument`` quoting its output."""
        return await self._sb._client._call(
            ops.mcp_start(self._sb.id, name, command, env, cwd, user, startup_timeout, session_idle_timeout)
        )

    async def list(self) -> builtins.list[m.McpServerInfo]:
        """The registered servers, with their open session counts."""
        return await self._sb._client._call(ops.mcp_list(self._sb.id))

    async def stop(self, name: str) -> None:
        """Unregister a server; its sessions end."""
        await self._sb._client._call(ops.mcp_stop(self._sb.id, name))

    def url(self, name: str) -> str:
        """The server's MCP endpoint URL (``InvalidArgument`` on a unix-socket client)."""
        return ops.endpoint_url(self._sb._client.endpoint, ops.mcp_path(self._sb.id, name), "an MCP endpoint URL")


class AsyncSnapshots:
    """Snapshots on the daemon (``client.snapshots``), as ``hull.Snapshots``."""

    def __init__(self, client: AsyncHull) -> None:
        self._c = client

    async def list(self, labels: Mapping[str, str] | None = None) -> list[m.Snapshot]:
        """Every snapshot, oldest first, filtered by labels."""
        return await self._c._call(ops.list_snapshots(labels))

    async def get(self, snapshot: str | m.Snapshot) -> m.Snapshot:
        """One snapshot by id or name."""
        return await self._c._call(ops.get_snapshot(snapshot))

    async def remove(self, snapshot: str | m.Snapshot) -> None:
        """Delete a snapshot."""
        await self._c._call(ops.remove_snapshot(snapshot))

    async def export(self, snapshot: str | m.Snapshot, dest: str | os.PathLike[str] | IO[bytes]) -> None:
        """Write the snapshot as a portable ``.tar.zst`` to a path or a binary file."""
        path = ops.export_path(snapshot)
        if not isinstance(dest, (str, os.PathLike)):
            await self._c._download(path, None, dest)
            return
        target = os.fspath(dest)
        tmp = target + ".hull-part"
        try:
            with open(tmp, "wb") as out:
                await self._c._download(path, None, out)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def import_archive(self, src: str | os.PathLike[str] | IO[bytes], *, name: str | None = None) -> m.Snapshot:
        """Import an archive made by ``export``."""
        params = ops.import_snapshot_params(name)
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open(src, "rb")) if isinstance(src, (str, os.PathLike)) else src
            return await self._c._call(
                ops.Call(
                    "POST",
                    "/v1/snapshots/import",
                    m.Snapshot.model_validate_json,
                    params=params,
                    body=_file_chunks(f),
                    headers=ops.sized({"content-type": "application/zstd"}, f),
                    read_timeout=None,
                )
            )


class AsyncTemplates:
    """Templates on the daemon (``client.templates``), as ``hull.Templates``."""

    def __init__(self, client: AsyncHull) -> None:
        self._c = client

    async def list(self) -> list[m.TemplateInfo]:
        """The built-in templates, then imported, built and saved ones."""
        return await self._c._call(ops.list_templates())

    async def save(self, snapshot: str | m.Snapshot, name: str) -> m.TemplateInfo:
        """Make a snapshot a template."""
        return await self._c._call(ops.save_template(snapshot, name))

    async def remove(self, name: str) -> None:
        """Remove a template."""
        await self._c._call(ops.remove_template(name))

    async def import_image(
        self, path: str | os.PathLike[str], *, name: str | None = None, reference: str | None = None
    ) -> m.TemplateInfo:
        """Import an OCI image archive as a template."""
        params = ops.import_template_params(path, name, reference)
        wanted = params[0][1]
        if any(t.name == wanted for t in await self.list()):
            raise Conflict(f"a template named {wanted!r} already exists (remove it first)")
        with open(os.fspath(path), "rb") as f:
            return await self._c._call(
                ops.Call(
                    "POST",
                    "/v1/templates/import",
                    m.TemplateInfo.model_validate_json,
                    params=params,
                    body=_file_chunks(f),
                    headers=ops.sized({"content-type": "application/x-tar"}, f),
                    read_timeout=None,
                )
            )

    async def build(
        self,
        name: str,
        *,
        debian: str,
        packages: Sequence[str] | None = None,
        mirror: str | None = None,
        on_event: Callable[[m.BuildEvent], None] | None = None,
    ) -> m.TemplateInfo:
        """Build a Debian template with ``mmdebstrap``, calling ``on_event``
        with each progress event."""
        resp = await self._c._open_stream(
            "POST", "/v1/templates/build", body=ops.build_body(name, debian, packages, mirror), headers=_JSON
        )
        try:
            async for line in self._c._lines(resp):
                ev = m.BuildEvent.model_validate_json(line)
                if on_event is not None:
                    on_event(ev)
                if ev.event == "done" and ev.template is not None:
                    return ev.template
                if ev.event == "error" and ev.error is not None:
                    raise error_from_api(ev.error.model_dump(mode="json"), 200)
        finally:
            await resp.aclose()
        raise Unavailable("the template build's stream ended without a result (the daemon went away?)")
