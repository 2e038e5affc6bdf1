"""The synchronous client: :class:`Hull` and the handles it gives out.

One ``httpx.Client`` per :class:`Hull`, kept open (connections are reused:
close the client, or use it as a context manager, when done). Each method
is one API call, except ``Sandbox.shell`` (a list when the name is taken),
``files.upload``/``download`` (a ``stat`` first) and
``templates.import_image`` (a list first); errors are raised as the
:mod:`hull.errors` class of the API's error kind. Handles
(:class:`Sandbox`, :class:`ShellSession`) hold ids, not live connections,
so they stay valid across daemon restarts. ``AsyncHull`` in
``hull._async`` has the same names with awaitable methods.

``sb.browser`` drives the sandbox's headless Chromium and ``sb.mcp``
hosts stdio MCP servers inside the sandbox; both hand out URLs
(``cdp_url``, ``mcp.url``) for other clients, which need the daemon on TCP.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx

from . import _ops as ops
from . import _tar
from . import models as m
from ._config import Duration, Endpoint, Size, resolve_endpoint
from ._version import __version__
from .errors import (
    Conflict,
    DaemonUnreachable,
    HullError,
    InvalidArgument,
    NotFound,
    Unavailable,
    error_from_api,
    error_from_response,
)

T = TypeVar("T")

_CHUNK = 1 << 20
_JSON = {"content-type": "application/json"}
_CONNECT_TIMEOUT = 10.0


class FileListing(list[m.FileInfo]):
    """The entries of ``files.list``: a list of :class:`~hull.models.FileInfo`,
    with :attr:`truncated` set when the daemon cut the listing (past 10000
    entries or about 1 MiB of JSON)."""

    truncated: bool

    def __init__(self, entries: Iterable[m.FileInfo] = (), truncated: bool = False) -> None:
        super().__init__(entries)
        self.truncated = truncated


def transport_error(endpoint: Endpoint, e: httpx.TransportError) -> HullError:
    """The SDK error for a failure below HTTP."""
    where = endpoint.describe()
    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
        return DaemonUnreachable(
            f"cannot reach the hull daemon at {where}: {e} "
            "(start one with `hull serve`, or run any `hull` command, which starts one; "
            "HULL_SOCKET or HULL_URL + HULL_TOKEN name another)"
        )
    if isinstance(e, httpx.TimeoutException):
        return Unavailable(f"no answer from the hull daemon at {where} in time ({type(e).__name__}: {e})")
    return Unavailable(f"the connection to the hull daemon at {where} failed: {type(e).__name__}: {e}")


def _file_chunks(f: IO[bytes]) -> Iterator[bytes]:
    while True:
        b = f.read(_CHUNK)
        if not b:
            return
        if not isinstance(b, (bytes, bytearray)):
            raise InvalidArgument("file objects given as data must be opened in binary mode")
        yield bytes(b)


def _body(data: bytes | str | IO[bytes] | Iterable[bytes]) -> bytes | Iterable[bytes]:
    """An upload body: bytes as they are, text as UTF-8, a binary file read
    in chunks, an iterable of chunks as it is."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "read"):
        return _file_chunks(data)  # type: ignore[arg-type]
    if isinstance(data, Iterable):
        return data
    raise InvalidArgument(f"data must be bytes, str, a binary file or an iterable of bytes (got {type(data).__name__})")


class Hull:
    """A client of one hull daemon.

    ``Hull()`` connects to the unix socket (``HULL_SOCKET``, else the
    ``socket`` of ``/etc/hull/config.toml``, else ``/run/hull/hull.sock``),
    or to ``HULL_URL`` with ``HULL_TOKEN`` when that is set. ``socket=`` or
    ``url=`` (+ ``token=``) choose explicitly. ``timeout`` bounds ordinary
    calls in seconds; calls that wait for a command (exec, shell, code)
    wait for its own timeout plus a margin, or without limit when it has
    none, and uploads, downloads, forks and snapshots wait without limit.

    Example::

        with hull.Hull() as client, client.sandbox(template="busybox") as sb:
            print(sb.exec("echo hi").stdout)
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.endpoint: Endpoint = resolve_endpoint(socket, url, token)
        headers = {"user-agent": f"hull-sdk-python/{__version__}"}
        if self.endpoint.token:
            headers["authorization"] = f"Bearer {self.endpoint.token}"
        self._timeout = httpx.Timeout(timeout, connect=_CONNECT_TIMEOUT)
        self._unbounded = httpx.Timeout(None, connect=_CONNECT_TIMEOUT)
        if self.endpoint.url is not None:
            self._http = httpx.Client(
                base_url=self.endpoint.url, headers=headers, timeout=self._timeout, trust_env=False
            )
        else:
            transport = httpx.HTTPTransport(uds=self.endpoint.socket)
            self._http = httpx.Client(
                transport=transport,
                base_url="http://localhost",
                headers=headers,
                timeout=self._timeout,
                trust_env=False,
            )
        #: Snapshots: list, get, remove, export, import.
        self.snapshots = Snapshots(self)
        #: Templates: list, save, remove, import an image, build from Debian.
        self.templates = Templates(self)

    # --- plumbing ---------------------------------------------------------

    def _read_timeout(self, rt: ops.ReadTimeout) -> httpx.Timeout:
        if isinstance(rt, ops._Default):
            return self._timeout
        if rt is None:
            return self._unbounded
        return httpx.Timeout(rt, connect=_CONNECT_TIMEOUT)

    def _call(self, call: ops.Call[T]) -> T:
        headers = call.headers or (_JSON if call.body is not None else None)
        try:
            r = self._http.request(
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

    def _open_stream(
        self,
        method: str,
        path: str,
        *,
        params: ops.Params | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: ops.ReadTimeout = None,
    ) -> httpx.Response:
        """Send a request and return the response with its body unread;
        an error answer is raised."""
        req = self._http.build_request(
            method, path, params=params, content=body, headers=headers, timeout=self._read_timeout(read_timeout)
        )
        try:
            resp = self._http.send(req, stream=True)
        except httpx.TransportError as e:
            raise transport_error(self.endpoint, e) from e
        if resp.status_code >= 400:
            try:
                content = resp.read()
            except httpx.TransportError as e:
                raise transport_error(self.endpoint, e) from e
            finally:
                resp.close()
            raise error_from_response(resp.status_code, content)
        return resp

    def _download(self, path: str, params: ops.Params | None, out: IO[bytes]) -> None:
        resp = self._open_stream("GET", path, params=params)
        try:
            for chunk in resp.iter_bytes():
                out.write(chunk)
        except httpx.TransportError as e:
            raise transport_error(self.endpoint, e) from e
        finally:
            resp.close()

    def _lines(self, resp: httpx.Response) -> Iterator[bytes]:
        """NDJSON lines of a streamed answer (split on ``\\n`` only: JSON
        text may hold U+2028 and other characters ``splitlines`` breaks on)."""
        buf = bytearray()
        try:
            for chunk in resp.iter_raw():
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
    def http(self) -> httpx.Client:
        """The SDK's own ``httpx.Client``: the daemon's base URL (or unix
        socket) and credentials are set, so an exposed port's ``url`` works
        with it: ``client.http.get(sb.expose(8080).url + "index.html")``."""
        return self._http

    def close(self) -> None:
        """Close the client's connections (sandboxes keep running)."""
        self._http.close()

    def __enter__(self) -> Hull:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Hull({self.endpoint.describe()!r})"

    # --- the daemon ---------------------------------------------------------

    def health(self) -> m.Health:
        """``GET /v1/health``: the daemon answers (no token needed on TCP)."""
        return self._call(ops.health())

    def version(self) -> m.Version:
        """The daemon's version, API version and guest protocol range."""
        return self._call(ops.version())

    def info(self) -> m.HostInfo:
        """What the daemon's host supports (``hull info``)."""
        return self._call(ops.info())

    # --- sandboxes ----------------------------------------------------------

    def create(
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
    ) -> Sandbox:
        """Create a sandbox (``hull create``) and return its handle; destroy
        it with :meth:`Sandbox.destroy` (or use :meth:`sandbox`).

        Args:
            template: ``host`` (default), ``busybox``, or an imported, built
                or saved template.
            profile: ``session`` (default: 40 min TTL, extended by activity)
                or ``rollout`` (30 s, fixed).
            name: a unique DNS label, usable wherever the id is.
            ttl: lifetime: seconds, ``"10m"`` or a ``timedelta``; 0 for none.
            idle_timeout: destroy after this long without an API call.
            memory, disk: bytes or ``"512M"``; cpus: e.g. ``0.5``; pids: a count.
            env: environment for every process; labels: key/value tags.
            user, workdir: defaults for every process.
            from_snapshot: start from this snapshot (id, name or model).
            network: the network policy: ``"none"``, ``"open"``,
                ``"allow:example.com,10.0.0.0/8"`` or the JSON form as a dict
                (default: the profile's, ``session`` open, ``rollout`` none).
        """
        info = self._call(
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
        return Sandbox(self, info)

    @contextlib.contextmanager
    def sandbox(
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
    ) -> Iterator[Sandbox]:
        """A sandbox for the ``with`` block: created on entry (arguments as
        for :meth:`create`), destroyed on exit whatever happens (one already
        gone is fine)."""
        sb = self.create(
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
            sb._destroy_quietly()

    def get(self, id_or_name: str) -> Sandbox:
        """A handle to an existing sandbox (``NotFound`` when there is none)."""
        return Sandbox(self, self._call(ops.inspect(id_or_name)))

    def list(self, labels: Mapping[str, str] | None = None) -> list[Sandbox]:
        """Sandboxes, oldest first; with ``labels``, only those with every one."""
        return [Sandbox(self, i) for i in self._call(ops.list_sandboxes(labels))]

    def fork(
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
    ) -> builtins.list[Sandbox]:
        """``n`` new sandboxes (1 to 1024) born from ``snapshot``, each with
        private copy-on-write files, all or none (``hull fork``)."""
        infos = self._call(
            ops.fork(
                snapshot, n, profile=profile, ttl=ttl, labels=labels, memory=memory, cpus=cpus, pids=pids, disk=disk,
                network=network,
            )
        )
        return [Sandbox(self, i) for i in infos]


class Sandbox:
    """A handle to one sandbox. ``id``, ``name`` and ``state`` come from the
    last answer that described it (create, get, list, :meth:`info`, pause,
    resume, set_ttl, rollback); :meth:`info` asks again.

    Used as a context manager, the sandbox is destroyed at the end of the
    block.
    """

    def __init__(self, client: Hull, info: m.SandboxInfo) -> None:
        self._client = client
        self._info = info
        #: The sandbox's id.
        self.id: str = info.id
        #: File operations inside the sandbox.
        self.files = Files(self)
        #: The code interpreter (Python contexts).
        self.code = Code(self)
        #: The sandbox's headless browser (Chromium).
        self.browser = Browser(self)
        #: MCP servers hosted inside the sandbox.
        self.mcp = Mcp(self)

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
    def client(self) -> Hull:
        """The client this handle calls through."""
        return self._client

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, name={self.name!r}, state={str(self.state)!r})"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self._destroy_quietly()

    def _destroy_quietly(self) -> None:
        try:
            self.destroy()
        except NotFound:
            pass

    def _update(self, info: m.SandboxInfo) -> m.SandboxInfo:
        self._info = info
        return info

    def info(self) -> m.SandboxInfo:
        """The sandbox's record now, with its events (``hull inspect``)."""
        return self._update(self._client._call(ops.inspect(self.id)))

    # --- processes --------------------------------------------------------

    def exec(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: Duration | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: str | bytes | None = None,
    ) -> m.ExecResult:
        """Run a command and wait for it (``hull exec``).

        ``cmd`` is a shell line (run with ``/bin/sh -c``) or an argv list.
        ``timeout`` kills the process group after that long (``timed_out``
        is then set). ``stdin`` is text written to the command, then closed.
        A nonzero exit is not an error: read ``exit_code``. A program that
        does not exist raises ``NotFound`` (``reason ==
        "command_not_found"``).
        """
        return self._client._call(ops.exec_(self.id, cmd, timeout=timeout, env=env, cwd=cwd, user=user, stdin=stdin))

    def exec_stream(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: Duration | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecStream:
        """Run a command and iterate over its output as it comes: each item
        is an :class:`~hull.models.OutputChunk` (``stream``, ``data``,
        ``raw``), and the last an :class:`~hull.models.ExecExit` with the
        exit code. The request is sent at the first iteration (errors such
        as an unknown command raise there). Closing the stream early (or
        leaving its ``with`` block) kills the command."""
        body, wait = ops.exec_request(cmd, timeout=timeout, env=env, cwd=cwd, user=user, stdin=stdin)
        return ExecStream(self._client, ops.sb(self.id, "/exec/stream"), body, wait)

    def exec_background(
        self,
        cmd: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Duration | None = None,
    ) -> m.ProcessStarted:
        """Start a command in the background and return at once with its
        process id (``p3``): see :meth:`processes` and :meth:`signal`."""
        return self._client._call(ops.exec_background(self.id, cmd, timeout=timeout, env=env, cwd=cwd, user=user))

    def processes(self) -> list[m.ProcessInfo]:
        """Processes started through the agent (``hull ps``)."""
        return self._client._call(ops.processes(self.id))

    def signal(self, process: str | m.ProcessStarted | m.ProcessInfo, signal: int) -> None:
        """Send ``signal`` (1-64) to a process's group (``Conflict`` once it exited)."""
        self._client._call(ops.signal(self.id, process, signal))

    # --- lifecycle ----------------------------------------------------------

    def pause(self) -> m.SandboxInfo:
        """Freeze the sandbox's processes (``running`` -> ``paused``)."""
        return self._update(self._client._call(ops.lifecycle(self.id, "pause")))

    def resume(self) -> m.SandboxInfo:
        """Thaw a paused sandbox (``paused`` -> ``running``)."""
        return self._update(self._client._call(ops.lifecycle(self.id, "resume")))

    def stop(self) -> m.SandboxInfo:
        """Kill its processes and free its host resources; the record stays
        as ``stopped`` until :meth:`destroy`."""
        return self._update(self._client._call(ops.lifecycle(self.id, "stop")))

    def network(self) -> m.SandboxNetwork:
        """Its network policy (header values redacted) and addresses."""
        return self._client._call(ops.get_network(self.id))

    def set_network(self, policy: str | Mapping[str, Any] | m.NetworkPolicy) -> m.SandboxNetwork:
        """Replace its network policy (``"none"``, ``"open"``,
        ``"allow:example.com,10.0.0.0/8"``, or the JSON form); new
        connections see it at once."""
        return self._client._call(ops.set_network(self.id, policy))

    def set_ttl(self, ttl: Duration) -> m.SandboxInfo:
        """Remaining lifetime from now (seconds, ``"1h"``, a ``timedelta``);
        0 removes the TTL (``hull ttl``)."""
        return self._update(self._client._call(ops.set_ttl(self.id, ttl)))

    def destroy(self) -> None:
        """Destroy the sandbox, in any state (``hull rm``)."""
        self._client._call(ops.destroy(self.id))

    # --- exposed ports ------------------------------------------------------

    def expose(self, port: int, protocol: str | m.PortProtocol = "http") -> m.ExposedPort:
        """Make a TCP port of the sandbox reachable through the daemon
        (idempotent; ``hull expose``). ``.url`` is the HTTP reverse proxy
        (``protocol="http"``) or the raw-TCP WebSocket (``"tcp"``), behind
        the same credentials as the API: ``client.http.get(x.url + "path")``."""
        return self._client._call(ops.expose(self._client.endpoint, self.id, port, protocol))

    def ports(self) -> list[m.ExposedPort]:
        """The exposed ports, by port."""
        return self._client._call(ops.ports(self._client.endpoint, self.id))

    def unexpose(self, port: int) -> None:
        """Stop exposing a port (``hull expose ID PORT --rm``)."""
        self._client._call(ops.unexpose(self.id, port))

    # --- snapshots ----------------------------------------------------------

    def snapshot(self, name: str | None = None, *, labels: Mapping[str, str] | None = None) -> m.Snapshot:
        """Capture the sandbox's files (it keeps running; ``hull snapshot``)."""
        return self._client._call(ops.snapshot(self.id, name, labels))

    def rollback(self, snapshot: str | m.Snapshot) -> m.SandboxInfo:
        """Make the sandbox's files the snapshot's; its processes are killed
        and its PID 1 restarted (shell sessions and code contexts end)."""
        return self._update(self._client._call(ops.rollback(self.id, snapshot)))

    # --- tools ----------------------------------------------------------------

    def shell(
        self,
        name: str = "default",
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> ShellSession:
        """A persistent bash session (``hull shell -s NAME``): opened, or
        the existing one of that name (which keeps the ``cwd``, ``env`` and
        ``user`` it was opened with). As a context manager it is closed at
        the end of the block."""
        try:
            opened = self._client._call(ops.shell_open(self.id, name, cwd, env, user))
        except Conflict:
            for s in self.shells():
                if s.session == name:
                    return ShellSession(self, s.session, s.pid)
            raise
        return ShellSession(self, opened.session, opened.pid)

    def shells(self) -> list[m.ShellSessionInfo]:
        """The sandbox's shell sessions (``hull shell --list``)."""
        return self._client._call(ops.shell_list(self.id))


class ExecStream:
    """The output of :meth:`Sandbox.exec_stream`, as an iterator of
    :class:`~hull.models.OutputChunk` then one :class:`~hull.models.ExecExit`.

    After the iteration, :attr:`result` holds the ``ExecExit`` and
    :attr:`started` the process's id and pid. :meth:`close` (or the end of a
    ``with`` block) before the exit kills the command.
    """

    def __init__(self, client: Hull, path: str, body: bytes, read_timeout: ops.ReadTimeout) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._read_timeout = read_timeout
        self._resp: httpx.Response | None = None
        self._lines: Iterator[bytes] | None = None
        self._done = False
        #: The ``started`` event (guest process id and pid), once seen.
        self.started: m.ExecStarted | None = None
        #: How the command ended, once the stream reached its end.
        self.result: m.ExecExit | None = None

    @property
    def exit_code(self) -> int | None:
        """The exit code, once the stream reached its end."""
        return None if self.result is None else self.result.exit_code

    def _open(self) -> Iterator[bytes]:
        self._resp = self._client._open_stream(
            "POST", self._path, body=self._body, headers=_JSON, read_timeout=self._read_timeout
        )
        self._lines = self._client._lines(self._resp)
        return self._lines

    def __iter__(self) -> ExecStream:
        return self

    def __next__(self) -> m.OutputChunk | m.ExecExit:
        if self._done:
            raise StopIteration
        lines = self._lines if self._lines is not None else self._open()
        try:
            for line in lines:
                ev = ops.parse_event(line)
                if isinstance(ev, m.OutputChunk):
                    return ev
                if isinstance(ev, m.ExecStarted):
                    self.started = ev
                    continue
                if isinstance(ev, m.ExecExit):
                    self.result = ev
                    self._done = True
                    self.close()
                    return ev
                raise error_from_api(ev.model_dump(mode="json"), 200)
        except BaseException:
            self._done = True
            self.close()
            raise
        self._done = True
        self.close()
        raise Unavailable(
            "the exec stream ended before the command's exit was reported (the daemon or the guest went away)"
        )

    def close(self) -> None:
        """Close the connection; a command still running is killed."""
        self._done = True
        if self._lines is not None:
            with contextlib.suppress(ValueError):
                self._lines.close()  # type: ignore[attr-defined]
        if self._resp is not None:
            self._resp.close()

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Files:
    """File operations inside a sandbox (``sb.files``). Paths are absolute
    sandbox paths, resolved as if chrooted: ``..`` and symlinks cannot
    leave the sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    @property
    def _c(self) -> Hull:
        return self._sb._client

    def read(self, path: str) -> bytes:
        """The file's bytes (a final symlink is followed inside the sandbox)."""
        return self._c._call(
            ops.Call("GET", ops.sb(self._sb.id, "/files"), bytes, params=ops.path_params(path), read_timeout=None)
        )

    def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The file's content decoded as text."""
        return self.read(path).decode(encoding, errors)

    def watch(self, path: str, *, recursive: bool = False) -> FileWatch:
        """Watch a directory and iterate over its changes as they happen
        (:class:`~hull.models.WatchCreate`, ``WatchWrite``, ``WatchRemove``,
        ``WatchRename``, ``WatchChmod``, ``WatchOverflow``). The watch is in
        place when this returns (a missing directory is ``NotFound``, a file
        ``InvalidArgument``, too many watches ``ResourceExhausted``), so no
        change made afterwards is missed. It runs until :meth:`FileWatch.close`
        (or the end of a ``with`` block); iteration waits for the next change
        and raises the API's error if the watch ends on its own (the
        directory was removed, the sandbox stopped)."""
        resp = self._c._open_stream(
            "GET", ops.sb(self._sb.id, "/files/watch"), params=ops.watch_params(path, recursive), read_timeout=None
        )
        return FileWatch(self._c, resp)

    def write(
        self, path: str, data: bytes | str | IO[bytes] | Iterable[bytes], *, mode: int | str | None = None
    ) -> m.FileInfo:
        """Write a file atomically (parents created). ``data`` is bytes,
        text (UTF-8), a binary file or an iterable of byte chunks (streamed).
        ``mode`` is ``0o644`` (the default) or ``"755"``."""
        return self._c._call(ops.file_write(self._sb.id, path, _body(data), mode, data))

    def list(self, path: str = "/", *, depth: int = 1) -> FileListing:
        """Entries under a directory, to ``depth`` levels (1-32), never through
        symlinks; ``.truncated`` when cut."""
        fl = self._c._call(ops.file_list(self._sb.id, path, depth))
        return FileListing(fl.entries, fl.truncated)

    def stat(self, path: str) -> m.FileInfo:
        """A file's metadata (a symlink is reported itself)."""
        return self._c._call(ops.file_stat(self._sb.id, path))

    def exists(self, path: str) -> bool:
        """Whether something exists at ``path`` (one ``stat``)."""
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def mkdir(self, path: str, *, parents: bool = True) -> None:
        """Make a directory; ``parents`` makes missing parents and accepts an
        existing directory, else an existing one is ``Conflict``."""
        self._c._call(ops.file_mkdir(self._sb.id, path, parents))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, symlink or empty directory; ``recursive`` removes a tree."""
        self._c._call(ops.file_remove(self._sb.id, path, recursive))

    def rename(self, src: str, dst: str) -> None:
        """Rename within the sandbox, replacing a file or empty directory at ``dst``."""
        self._c._call(ops.file_rename(self._sb.id, src, dst))

    def upload(self, local: str | os.PathLike[str], remote: str) -> str:
        """Copy a local file or directory into the sandbox (``hull cp ./x ID:/p``).

        A file goes to ``remote``, or into it keeping its name when
        ``remote`` is an existing directory (or ends with ``/``), with its
        permission bits. A directory's contents land in directory
        ``remote`` (created if missing), sent as tar. Returns the sandbox
        path written."""
        local = os.fspath(local)
        if os.path.isdir(local):
            with _tar.pack(local) as tmp:
                self._c._call(
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
        if remote.endswith("/") or (self.exists(remote) and self.stat(remote).is_dir):
            target = ops.remote_join(remote, os.path.basename(local))
        mode = os.stat(local).st_mode & 0o777
        with open(local, "rb") as f:
            self.write(target, f, mode=mode)
        return target

    def download(self, remote: str, local: str | os.PathLike[str]) -> str:
        """Copy a sandbox file or directory to the host (``hull cp ID:/p ./x``).

        A file goes to ``local``, or into it keeping its name when ``local``
        is an existing directory. A directory's contents land in directory
        ``local`` (created if missing); entries that would leave it are
        skipped with a warning, owners and setuid bits are not restored.
        Returns the local path written."""
        local = os.fspath(local)
        st = self.stat(remote)
        if st.is_dir:
            with tempfile.TemporaryFile() as spool:
                self._c._download(ops.sb(self._sb.id, "/files/archive"), ops.path_params(remote), spool)
                spool.seek(0)
                skipped = _tar.unpack(spool, local)
            for s in skipped:
                warnings.warn(f"hull: skipped an archive entry outside {local}: {s}", stacklevel=2)
            return local
        target = local
        if os.path.isdir(local):
            target = os.path.join(local, os.path.basename(remote.rstrip("/")))
        tmp = target + ".hull-part"
        try:
            with open(tmp, "wb") as out:
                self._c._download(ops.sb(self._sb.id, "/files"), ops.path_params(remote), out)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return target


class FileWatch:
    """The changes of a directory watched with :meth:`Files.watch`, as an
    iterator; :meth:`close` ends the watch."""

    def __init__(self, client: Hull, resp: httpx.Response) -> None:
        self._resp = resp
        self._lines = client._lines(resp)
        self._done = False

    def __iter__(self) -> FileWatch:
        return self

    def __next__(self) -> m.FileWatchEvent:
        if self._done:
            raise StopIteration
        try:
            for line in self._lines:
                ev = ops.parse_watch_event(line)
                if isinstance(ev, m.ApiError):
                    raise error_from_api(ev.model_dump(mode="json"), 200)
                return ev
        except BaseException:
            self.close()
            raise
        self.close()
        raise Unavailable("the watch ended without a reason (the daemon went away)")

    def close(self) -> None:
        """End the watch (the daemon stops watching inside the sandbox)."""
        self._done = True
        with contextlib.suppress(ValueError):
            self._lines.close()  # type: ignore[attr-defined]
        self._resp.close()

    def __enter__(self) -> FileWatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ShellSession:
    """A persistent bash session in a sandbox (from :meth:`Sandbox.shell`):
    its working directory, variables, functions and jobs persist from one
    :meth:`run` to the next."""

    def __init__(self, sandbox: Sandbox, name: str, pid: int) -> None:
        self._sb = sandbox
        #: The session's name.
        self.name = name
        #: The shell's pid inside the sandbox.
        self.pid = pid

    def __repr__(self) -> str:
        return f"ShellSession(sandbox={self._sb.id!r}, name={self.name!r})"

    def run(
        self,
        command: str,
        *,
        timeout: Duration | None = None,
        idle_timeout: Duration | None = None,
        max_output: int | None = None,
    ) -> m.ShellRunResult:
        """Run a command as if typed at the prompt and wait for it. A
        ``timeout`` (default 10 min) or ``idle_timeout`` interrupts it and
        sets ``timed_out``; the session goes on."""
        return self._sb._client._call(ops.shell_run(self._sb.id, self.name, command, timeout, idle_timeout, max_output))

    def send(
        self,
        input: str,
        *,
        expect: str | None = None,
        timeout: Duration | None = None,
        max_output: int | None = None,
    ) -> m.ShellSendResult:
        """Type ``input`` into the session's terminal (``"\\x03"`` is Ctrl-C)
        and collect output until the regex ``expect`` matches, or output
        pauses 200 ms without one, or ``timeout`` (default 30 s) passes."""
        return self._sb._client._call(ops.shell_send(self._sb.id, self.name, input, expect, timeout, max_output))

    def expect(self, pattern: str, *, timeout: Duration | None = None) -> m.ShellSendResult:
        """Wait, typing nothing, until the output matches ``pattern``."""
        return self.send("", expect=pattern, timeout=timeout)

    def close(self) -> None:
        """End the session and everything it started."""
        self._sb._client._call(ops.shell_close(self._sb.id, self.name))

    def __enter__(self) -> ShellSession:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(NotFound):
            self.close()


class Code:
    """The code interpreter (``sb.code``): named Python contexts whose
    variables persist between runs (the sandbox needs ``python3`` and
    ``ipykernel``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def run(self, code: str, *, context: str | None = None, timeout: Duration | None = None) -> m.CodeRunResult:
        """Run code in ``context`` (``default`` when absent, created on first
        use) and wait for it (``hull code``). An exception in the code is not
        an SDK error: read ``error``. A ``timeout`` (default 5 min)
        interrupts it and keeps the context's state."""
        return self._sb._client._call(ops.code_run(self._sb.id, code, context, timeout))

    def run_stream(self, code: str, *, context: str | None = None, timeout: Duration | None = None) -> CodeStream:
        """Run code as :meth:`run` does and iterate over its outputs as the
        kernel produces them: :class:`~hull.models.CodeStdout`,
        ``CodeStderr``, ``CodeResult``, ``CodeDisplay``, ``CodeException``,
        and last a :class:`~hull.models.CodeEnd`. The request is sent at the
        first iteration; closing the stream early interrupts the code (the
        context keeps its state)."""
        path, body, wait = ops.code_stream(self._sb.id, code, context, timeout)
        return CodeStream(self._sb._client, path, body, wait)

    def create(self, context: str, *, language: str | None = None) -> m.CodeContextInfo:
        """Start a named context (``Conflict`` when it exists; at most 8)."""
        return self._sb._client._call(ops.code_create(self._sb.id, context, language))

    def list(self) -> list[m.CodeContextInfo]:
        """The sandbox's contexts."""
        return self._sb._client._call(ops.code_list(self._sb.id))

    def restart(self, context: str = "default") -> m.CodeContextInfo:
        """A fresh kernel under the same name (its state is gone)."""
        return self._sb._client._call(ops.code_restart(self._sb.id, context))

    def interrupt(self, context: str = "default") -> None:
        """Interrupt the code running in the context (``KeyboardInterrupt``)."""
        self._sb._client._call(ops.code_interrupt(self._sb.id, context))

    def stop(self, context: str = "default") -> None:
        """Stop the context's kernel."""
        self._sb._client._call(ops.code_stop(self._sb.id, context))


class CodeStream:
    """The events of :meth:`Code.run_stream`: outputs, then one
    :class:`~hull.models.CodeEnd` (kept in :attr:`result`). :meth:`close`
    (or the end of a ``with`` block) before the end interrupts the code."""

    def __init__(self, client: Hull, path: str, body: bytes, read_timeout: ops.ReadTimeout) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._read_timeout = read_timeout
        self._resp: httpx.Response | None = None
        self._lines: Iterator[bytes] | None = None
        self._done = False
        #: The ``end`` event, once the stream reached it.
        self.result: m.CodeEnd | None = None

    def __iter__(self) -> CodeStream:
        return self

    def __next__(self) -> m.CodeEvent:
        if self._done:
            raise StopIteration
        if self._lines is None:
            self._resp = self._client._open_stream(
                "POST", self._path, body=self._body, headers=_JSON, read_timeout=self._read_timeout
            )
            self._lines = self._client._lines(self._resp)
        try:
            for line in self._lines:
                ev = ops.parse_code_event(line)
                if isinstance(ev, m.ApiError):
                    raise error_from_api(ev.model_dump(mode="json"), 200)
                if isinstance(ev, m.CodeEnd):
                    self.result = ev
                    self.close()
                return ev
        except BaseException:
            self.close()
            raise
        self.close()
        raise Unavailable("the code stream ended before its end event (the daemon or the kernel went away)")

    def close(self) -> None:
        """Close the connection; code still running is interrupted."""
        self._done = True
        if self._lines is not None:
            with contextlib.suppress(ValueError):
                self._lines.close()  # type: ignore[attr-defined]
        if self._resp is not None:
            self._resp.close()

    def __enter__(self) -> CodeStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Browser:
    """The sandbox's headless Chromium (``sb.browser``), started by the
    first call. Tabs are given as ids or :class:`~hull.models.BrowserTab`;
    ``timeout`` (default 30 s) bounds loads and waits. The sandbox needs
    Chromium (``Unavailable`` says what to install)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def _call(self, call: ops.Call[T]) -> T:
        return self._sb._client._call(call)

    @property
    def cdp_url(self) -> str:
        """The raw CDP URL for Playwright's ``connect_over_cdp`` (with the
        client's token as ``Authorization: Bearer``); ``InvalidArgument``
        on a unix-socket client."""
        return ops.endpoint_url(self._sb._client.endpoint, ops.sb(self._sb.id, "/browser/cdp"), "a CDP URL")

    def status(self) -> m.BrowserStatus:
        """Whether the browser runs (``stopped``, ``running``, ``crashed``)."""
        return self._call(ops.browser_status(self._sb.id))

    def start(self) -> m.BrowserStatus:
        """Start the browser if none runs."""
        return self._call(ops.browser_lifecycle(self._sb.id, "start"))

    def stop(self) -> m.BrowserStatus:
        """Kill the browser; its tabs are gone."""
        return self._call(ops.browser_lifecycle(self._sb.id, "stop"))

    def restart(self) -> m.BrowserStatus:
        """A fresh browser (after a crash, or to start over)."""
        return self._call(ops.browser_lifecycle(self._sb.id, "restart"))

    def open(self, url: str | None = None, *, timeout: Duration | None = None) -> m.BrowserTab:
        """A new tab at ``url`` (``about:blank`` when absent), loaded."""
        return self._call(ops.browser_open(self._sb.id, url, timeout))

    def navigate(self, tab: str | m.BrowserTab, url: str, *, timeout: Duration | None = None) -> m.BrowserTab:
        """Load ``url`` in the tab and wait for it."""
        return self._call(ops.browser_navigate(self._sb.id, tab, url, timeout))

    def click(self, tab: str | m.BrowserTab, selector: str, *, timeout: Duration | None = None) -> None:
        """Click the first element matching the CSS selector."""
        self._call(ops.browser_click(self._sb.id, tab, selector, timeout))

    def type(
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
        self._call(ops.browser_type(self._sb.id, tab, selector, text, clear, timeout))

    def select(
        self, tab: str | m.BrowserTab, selector: str, values: str | Sequence[str], *, timeout: Duration | None = None
    ) -> builtins.list[str]:
        """Select options of a ``<select>`` by value or text; the values now selected."""
        return self._call(ops.browser_select(self._sb.id, tab, selector, values, timeout))

    def wait_for(
        self, tab: str | m.BrowserTab, selector: str, *, visible: bool = False, timeout: Duration | None = None
    ) -> bool:
        """Wait for an element to match (and be visible); ``False`` after the timeout."""
        return self._call(ops.browser_wait_for(self._sb.id, tab, selector, visible, timeout))

    def text(self, tab: str | m.BrowserTab, selector: str | None = None) -> str:
        """The page's visible text (or an element's)."""
        return self._call(ops.browser_text(self._sb.id, tab, selector))

    def accessibility(self, tab: str | m.BrowserTab) -> m.AxNode | None:
        """The page's accessibility tree."""
        return self._call(ops.browser_accessibility(self._sb.id, tab))

    def screenshot(self, tab: str | m.BrowserTab, *, full_page: bool = False) -> bytes:
        """A PNG of the viewport, or of the whole page with ``full_page``."""
        return self._call(ops.browser_screenshot(self._sb.id, tab, full_page))

    def evaluate(self, tab: str | m.BrowserTab, expression: str, *, timeout: Duration | None = None) -> Any:
        """Evaluate a JavaScript expression in the page (promises awaited); its value from JSON."""
        return self._call(ops.browser_evaluate(self._sb.id, tab, expression, timeout))

    def tabs(self) -> builtins.list[m.BrowserTab]:
        """The open tabs."""
        return self._call(ops.browser_tabs(self._sb.id))

    def close(self, tab: str | m.BrowserTab) -> None:
        """Close a tab."""
        self._call(ops.browser_close(self._sb.id, tab))


class Mcp:
    """MCP servers hosted in the sandbox (``sb.mcp``): each registered
    stdio server is served at its own streamable-HTTP endpoint."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def start(
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
        return self._sb._client._call(
            ops.mcp_start(self._sb.id, name, command, env, cwd, user, startup_timeout, session_idle_timeout)
        )

    def list(self) -> builtins.list[m.McpServerInfo]:
        """The registered servers, with their open session counts."""
        return self._sb._client._call(ops.mcp_list(self._sb.id))

    def stop(self, name: str) -> None:
        """Unregister a server; its sessions end."""
        self._sb._client._call(ops.mcp_stop(self._sb.id, name))

    def url(self, name: str) -> str:
        """The server's MCP endpoint URL (``InvalidArgument`` on a unix-socket client)."""
        return ops.endpoint_url(self._sb._client.endpoint, ops.mcp_path(self._sb.id, name), "an MCP endpoint URL")


class Snapshots:
    """Snapshots on the daemon (``client.snapshots``, ``hull snapshot ...``)."""

    def __init__(self, client: Hull) -> None:
        self._c = client

    def list(self, labels: Mapping[str, str] | None = None) -> list[m.Snapshot]:
        """Every snapshot, oldest first; with ``labels``, only those with every one."""
        return self._c._call(ops.list_snapshots(labels))

    def get(self, snapshot: str | m.Snapshot) -> m.Snapshot:
        """One snapshot by id or name."""
        return self._c._call(ops.get_snapshot(snapshot))

    def remove(self, snapshot: str | m.Snapshot) -> None:
        """Delete a snapshot (``Conflict`` while sandboxes or snapshots depend on it)."""
        self._c._call(ops.remove_snapshot(snapshot))

    def export(self, snapshot: str | m.Snapshot, dest: str | os.PathLike[str] | IO[bytes]) -> None:
        """Write the snapshot as a portable ``.tar.zst`` to a path or a binary file."""
        path = ops.export_path(snapshot)
        if not isinstance(dest, (str, os.PathLike)):
            self._c._download(path, None, dest)
            return
        target = os.fspath(dest)
        tmp = target + ".hull-part"
        try:
            with open(tmp, "wb") as out:
                self._c._download(path, None, out)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def import_archive(self, src: str | os.PathLike[str] | IO[bytes], *, name: str | None = None) -> m.Snapshot:
        """Import an archive made by :meth:`export` (``hull snapshot import``);
        named ``name``, else its old name if free."""
        params = ops.import_snapshot_params(name)
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open(src, "rb")) if isinstance(src, (str, os.PathLike)) else src
            return self._c._call(
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


class Templates:
    """Templates on the daemon (``client.templates``, ``hull template ...``)."""

    def __init__(self, client: Hull) -> None:
        self._c = client

    def list(self) -> list[m.TemplateInfo]:
        """The built-in templates, then imported, built and saved ones."""
        return self._c._call(ops.list_templates())

    def save(self, snapshot: str | m.Snapshot, name: str) -> m.TemplateInfo:
        """Make a snapshot a template: ``create(template=name)`` starts from it."""
        return self._c._call(ops.save_template(snapshot, name))

    def remove(self, name: str) -> None:
        """Remove a template (a saved one keeps its snapshot; an imported or
        built one loses its files)."""
        self._c._call(ops.remove_template(name))

    def import_image(
        self, path: str | os.PathLike[str], *, name: str | None = None, reference: str | None = None
    ) -> m.TemplateInfo:
        """Import an OCI image archive (OCI layout in a tar, or ``docker
        save``) as a template named ``name`` (default: from the file name, as
        ``hull template import`` makes it)."""
        params = ops.import_template_params(path, name, reference)
        wanted = params[0][1]
        # Before sending what may be gigabytes the daemon would refuse unread.
        if any(t.name == wanted for t in self.list()):
            raise Conflict(f"a template named {wanted!r} already exists (remove it first)")
        with open(os.fspath(path), "rb") as f:
            return self._c._call(
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

    def build(
        self,
        name: str,
        *,
        debian: str,
        packages: Sequence[str] | None = None,
        mirror: str | None = None,
        on_event: Callable[[m.BuildEvent], None] | None = None,
    ) -> m.TemplateInfo:
        """Build a Debian template with ``mmdebstrap`` (``hull template
        build``), calling ``on_event`` with each progress event; returns the
        new template, or raises the build's error."""
        resp = self._c._open_stream(
            "POST", "/v1/templates/build", body=ops.build_body(name, debian, packages, mirror), headers=_JSON
        )
        try:
            for line in self._c._lines(resp):
                ev = m.BuildEvent.model_validate_json(line)
                if on_event is not None:
                    on_event(ev)
                if ev.event == "done" and ev.template is not None:
                    return ev.template
                if ev.event == "error" and ev.error is not None:
                    raise error_from_api(ev.error.model_dump(mode="json"), 200)
        finally:
            resp.close()
        raise Unavailable("the template build's stream ended without a result (the daemon went away?)")
