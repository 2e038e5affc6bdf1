"""The API calls, described once for both clients.

Each function here validates its arguments and returns a :class:`Call`: the
method, path, query, JSON body and how to read the answer. ``Hull`` sends
it with ``httpx.Client`` and ``AsyncHull`` with ``httpx.AsyncClient``, so
the two clients cannot drift apart; only streaming bodies (exec output,
uploads, downloads, archives, template builds) are handled by each client
itself. No I/O happens here.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from . import models as m
from ._config import Duration, Endpoint, Size, millis, parse_duration, parse_size, whole_seconds
from .errors import Internal, InvalidArgument

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

#: Extra time the HTTP read waits beyond a call's own timeout (the daemon
#: answers at most ~10 s after an exec's timeout, ~2 s after a shell's).
TIMEOUT_MARGIN = 30.0


class _Default:
    """Marker: use the client's default read timeout."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()

ReadTimeout = float | None | _Default

#: A query string as (name, value) pairs.
Params = list[tuple[str, str | int | float | bool | None]]


@dataclass(slots=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[bytes], T]
    params: Params | None = None
    #: JSON bytes (sent as ``application/json`` unless ``headers`` says
    #: otherwise), or an iterable / async iterable of chunks for uploads.
    body: Any = None
    read_timeout: ReadTimeout = DEFAULT
    headers: dict[str, str] = field(default_factory=dict)


def _none(_: bytes) -> None:
    return None


def _build(model: type[R], **kw: Any) -> R:
    """A request model, with pydantic's complaints turned into ``InvalidArgument``."""
    try:
        return model(**kw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}" for err in e.errors())
        raise InvalidArgument(f"invalid {model.__name__}: {problems}") from None


def _json(req: BaseModel) -> bytes:
    return req.model_dump_json(by_alias=True, exclude_none=True).encode()


def seg(s: str, what: str = "id") -> str:
    """One path segment: an id or name, percent-encoded."""
    if not isinstance(s, str) or not s:
        raise InvalidArgument(f"{what} must be a non-empty string (got {s!r})")
    return quote(s, safe="")


def sb(id_: str, rest: str = "") -> str:
    """The path of a sandbox route."""
    return f"/v1/sandboxes/{seg(id_, 'sandbox id or name')}{rest}"


def labels_query(labels: Mapping[str, str] | None) -> Params | None:
    """``label=k=v`` filters."""
    if not labels:
        return None
    return [("label", f"{k}={v}") for k, v in labels.items()]


def ref(x: Any, what: str) -> str:
    """The id (or name) of a snapshot, sandbox or template given as a model,
    a handle or a string."""
    if isinstance(x, str):
        return x
    for attr in ("id", "name"):
        v = getattr(x, attr, None)
        if isinstance(v, str) and v:
            return v
    raise InvalidArgument(f"{what}: expected an id, a name or an object with an id (got {x!r})")


def argv(cmd: str | Sequence[str]) -> list[str]:
    """A command as argv: a string is a shell line (``/bin/sh -c``)."""
    if isinstance(cmd, str):
        return ["/bin/sh", "-c", cmd]
    if isinstance(cmd, (bytes, bytearray)):
        raise InvalidArgument("cmd must be a str (a shell line) or a list of str (argv), not bytes")
    out = list(cmd)
    if not all(isinstance(a, str) for a in out):
        raise InvalidArgument(f"cmd must be a list of str (got {out!r})")
    return out


def _limits(memory: Size | None, cpus: float | None, pids: int | None, disk: Size | None) -> m.LimitsRequest:
    return _build(
        m.LimitsRequest,
        memory_bytes=None if memory is None else parse_size(memory, "memory"),
        cpus=cpus,
        pids=pids,
        disk_bytes=None if disk is None else parse_size(disk, "disk"),
    )


# --- daemon ----------------------------------------------------------------


def health() -> Call[m.Health]:
    return Call("GET", "/v1/health", m.Health.model_validate_json)


def version() -> Call[m.Version]:
    return Call("GET", "/v1/version", m.Version.model_validate_json)


def info() -> Call[m.HostInfo]:
    return Call("GET", "/v1/info", m.HostInfo.model_validate_json)


# --- sandboxes -------------------------------------------------------------


def create(
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
    from_snapshot: Any = None,
    network: Any = None,
) -> Call[m.SandboxInfo]:
    req = _build(
        m.CreateSandbox,
        template=template,
        profile=profile,
        name=name,
        labels=dict(labels or {}),
        limits=_limits(memory, cpus, pids, disk),
        ttl_seconds=None if ttl is None else whole_seconds(ttl, "ttl"),
        idle_timeout_seconds=None if idle_timeout is None else whole_seconds(idle_timeout, "idle_timeout"),
        env=dict(env or {}),
        user=user,
        workdir=workdir,
        network=network_policy(network),
        **{"from": None if from_snapshot is None else ref(from_snapshot, "from_snapshot")},
    )
    return Call("POST", "/v1/sandboxes", m.SandboxInfo.model_validate_json, body=_json(req))


def inspect(id_: str) -> Call[m.SandboxInfo]:
    return Call("GET", sb(id_), m.SandboxInfo.model_validate_json)


def list_sandboxes(labels: Mapping[str, str] | None = None) -> Call[list[m.SandboxInfo]]:
    return Call(
        "GET",
        "/v1/sandboxes",
        lambda b: m.SandboxList.model_validate_json(b).sandboxes,
        params=labels_query(labels),
    )


def destroy(id_: str) -> Call[None]:
    return Call("DELETE", sb(id_), _none)


def lifecycle(id_: str, verb: str) -> Call[m.SandboxInfo]:
    """``pause``, ``resume`` or ``stop``."""
    return Call("POST", sb(id_, f"/{verb}"), m.SandboxInfo.model_validate_json)


def network_policy(p: Any) -> m.NetworkPolicy | str | None:
    """A policy as the SDK takes it: ``None``, the string form, a dict or a model."""
    if p is None or isinstance(p, (str, m.NetworkPolicy)):
        return p
    if isinstance(p, Mapping):
        return _build(m.NetworkPolicy, **dict(p))
    raise InvalidArgument(f"network must be a string like 'allow:example.com', a dict or a NetworkPolicy (got {p!r})")


def get_network(id_: str) -> Call[m.SandboxNetwork]:
    return Call("GET", sb(id_, "/network"), m.SandboxNetwork.model_validate_json)


def set_network(id_: str, policy: Any) -> Call[m.SandboxNetwork]:
    p = network_policy(policy)
    if p is None:
        raise InvalidArgument("set_network needs a policy (use 'none' to allow nothing)")
    body = json.dumps(p).encode() if isinstance(p, str) else _json(p)
    return Call("PUT", sb(id_, "/network"), m.SandboxNetwork.model_validate_json, body=body)


def set_ttl(id_: str, ttl: Duration) -> Call[m.SandboxInfo]:
    req = _build(m.SetTtl, ttl_seconds=whole_seconds(ttl, "ttl"))
    return Call("PUT", sb(id_, "/ttl"), m.SandboxInfo.model_validate_json, body=_json(req))


# --- exec and processes --------------------------------------------------------


def exec_request(
    cmd: str | Sequence[str],
    *,
    timeout: Duration | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: str | None = None,
    stdin: str | bytes | None = None,
    background: bool = False,
    tty: bool = False,
) -> tuple[bytes, ReadTimeout]:
    """The JSON body of an exec, and how long to wait for its answer."""
    if isinstance(stdin, (bytes, bytearray)):
        try:
            stdin = bytes(stdin).decode()
        except UnicodeDecodeError:
            raise InvalidArgument("stdin must be text (UTF-8); the API carries no binary stdin") from None
    secs = None if timeout is None else parse_duration(timeout, "timeout")
    req = _build(
        m.ExecRequest,
        cmd=argv(cmd),
        env=dict(env or {}),
        cwd=cwd,
        user=user,
        stdin=stdin,
        timeout_seconds=secs,
        background=background,
        tty=tty,
    )
    wait: ReadTimeout = None if secs is None else secs + TIMEOUT_MARGIN
    return _json(req), wait


def exec_(id_: str, cmd: str | Sequence[str], **kw: Any) -> Call[m.ExecResult]:
    body, wait = exec_request(cmd, **kw)
    return Call("POST", sb(id_, "/exec"), m.ExecResult.model_validate_json, body=body, read_timeout=wait)


def exec_background(id_: str, cmd: str | Sequence[str], **kw: Any) -> Call[m.ProcessStarted]:
    body, _ = exec_request(cmd, background=True, **kw)
    return Call("POST", sb(id_, "/exec"), m.ProcessStarted.model_validate_json, body=body)


def processes(id_: str) -> Call[list[m.ProcessInfo]]:
    return Call("GET", sb(id_, "/processes"), lambda b: m.ProcessList.model_validate_json(b).processes)


def signal(id_: str, process: Any, sig: int) -> Call[None]:
    pid = process if isinstance(process, str) else ref(process, "process")
    req = _build(m.SignalRequest, signal=int(sig))
    return Call("POST", sb(id_, f"/processes/{seg(pid, 'process id')}/signal"), _none, body=_json(req))


class _ExecError(BaseModel):
    """The ``error`` event of a streaming exec."""

    type: Literal["error"]
    error: m.ApiError


_EVENT = TypeAdapter(
    Annotated[
        m.ExecStarted | m.OutputChunk | m.ExecExit | _ExecError,
        Field(discriminator="type"),
    ]
)


def parse_event(line: bytes) -> m.ExecStarted | m.OutputChunk | m.ExecExit | m.ApiError:
    """One NDJSON line of a streaming exec (an ``error`` event gives its ``ApiError``)."""
    try:
        ev = _EVENT.validate_json(line)
    except ValidationError as e:
        raise Internal(f"unreadable exec event from the daemon ({e.error_count()} problems): {line[:200]!r}") from None
    return ev.error if isinstance(ev, _ExecError) else ev


# --- files -------------------------------------------------------------------


def _path(p: str | os.PathLike[str]) -> str:
    s = os.fspath(p)
    if not isinstance(s, str) or not s:
        raise InvalidArgument(f"path must be a non-empty string (got {p!r})")
    return s


def _mode(mode: int | str | None) -> str | None:
    if mode is None:
        return None
    if isinstance(mode, int) and not isinstance(mode, bool):
        if not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"mode {mode:#o} is out of range (0 to 0o7777)")
        return format(mode, "o")
    if isinstance(mode, str) and re.fullmatch(r"[0-7]{1,6}", mode):
        return mode
    raise InvalidArgument(f"mode must be an int such as 0o644 or an octal string such as '644' (got {mode!r})")


def path_params(path: str | os.PathLike[str]) -> Params:
    """The query of a file route that takes only ``path``."""
    return [("path", _path(path))]


def watch_params(path: str | os.PathLike[str], recursive: bool) -> Params:
    """The query of ``files/watch``."""
    return [("path", _path(path)), ("recursive", "true" if recursive else "false")]


class _WatchError(BaseModel):
    """The ``error`` event that ends a watch."""

    type: Literal["error"]
    error: m.ApiError


_WATCH_EVENT = TypeAdapter(
    Annotated[
        m.WatchCreate | m.WatchWrite | m.WatchRemove | m.WatchRename | m.WatchChmod | m.WatchOverflow | _WatchError,
        Field(discriminator="type"),
    ]
)


def parse_watch_event(line: bytes) -> m.FileWatchEvent | m.ApiError:
    """One NDJSON line of a watch (an ``error`` event gives its ``ApiError``)."""
    try:
        ev = _WATCH_EVENT.validate_json(line)
    except ValidationError as e:
        raise Internal(f"unreadable watch event from the daemon ({e.error_count()} problems): {line[:200]!r}") from None
    return ev.error if isinstance(ev, _WatchError) else ev


def file_write_params(path: str | os.PathLike[str], mode: int | str | None) -> Params:
    q: Params = [("path", _path(path))]
    md = _mode(mode)
    if md is not None:
        q.append(("mode", md))
    return q


def file_write(
    id_: str, path: str | os.PathLike[str], data: Any, mode: int | str | None, source: Any = None
) -> Call[m.FileInfo]:
    """A file upload; ``data`` is bytes or chunks read from ``source`` (a file)."""
    return Call(
        "PUT",
        sb(id_, "/files"),
        m.FileInfo.model_validate_json,
        params=file_write_params(path, mode),
        body=data,
        headers=sized({"content-type": "application/octet-stream"}, source),
        read_timeout=None,
    )


def file_stat(id_: str, path: str | os.PathLike[str]) -> Call[m.FileInfo]:
    return Call("GET", sb(id_, "/files/stat"), m.FileInfo.model_validate_json, params=[("path", _path(path))])


def file_list(id_: str, path: str | os.PathLike[str], depth: int = 1) -> Call[m.FileList]:
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise InvalidArgument(f"depth must be an int from 1 to 32 (got {depth!r})")
    return Call(
        "GET",
        sb(id_, "/files/list"),
        m.FileList.model_validate_json,
        params=[("path", _path(path)), ("depth", str(depth))],
    )


def file_mkdir(id_: str, path: str | os.PathLike[str], parents: bool = True) -> Call[None]:
    req = _build(m.MkdirRequest, path=_path(path), parents=parents)
    return Call("POST", sb(id_, "/files/mkdir"), _none, body=_json(req))


def file_remove(id_: str, path: str | os.PathLike[str], recursive: bool = False) -> Call[None]:
    q: Params = [("path", _path(path))]
    if recursive:
        q.append(("recursive", "true"))
    return Call("DELETE", sb(id_, "/files"), _none, params=q)


def file_rename(id_: str, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Call[None]:
    req = _build(m.RenameRequest, **{"from": _path(src), "to": _path(dst)})
    return Call("POST", sb(id_, "/files/rename"), _none, body=_json(req))


def sized(headers: dict[str, str], f: Any) -> dict[str, str]:
    """``headers`` plus a ``content-length`` when ``f`` is a regular file
    (what is left of it from its position), so the daemon can refuse an
    upload over its limit before any byte is sent."""
    try:
        st = os.fstat(f.fileno())
        pos = f.tell()
    except (AttributeError, OSError, ValueError):
        return headers
    if not stat.S_ISREG(st.st_mode):
        return headers
    return {**headers, "content-length": str(max(0, st.st_size - pos))}


def remote_join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


# --- snapshots ---------------------------------------------------------------


def snapshot(id_: str, name: str | None = None, labels: Mapping[str, str] | None = None) -> Call[m.Snapshot]:
    req = _build(m.CreateSnapshot, name=name, labels=dict(labels or {}))
    return Call("POST", sb(id_, "/snapshot"), m.Snapshot.model_validate_json, body=_json(req), read_timeout=None)


def rollback(id_: str, snap: Any) -> Call[m.SandboxInfo]:
    req = _build(m.Rollback, snapshot=ref(snap, "snapshot"))
    return Call("POST", sb(id_, "/rollback"), m.SandboxInfo.model_validate_json, body=_json(req), read_timeout=None)


def fork(
    snap: Any,
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
) -> Call[list[m.SandboxInfo]]:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgument(f"n must be an int from 1 to 1024 (got {n!r})")
    req = _build(
        m.Fork,
        n=n,
        profile=profile,
        labels=dict(labels or {}),
        limits=_limits(memory, cpus, pids, disk),
        ttl_seconds=None if ttl is None else whole_seconds(ttl, "ttl"),
        network=network_policy(network),
    )
    return Call(
        "POST",
        f"/v1/snapshots/{seg(ref(snap, 'snapshot'), 'snapshot')}/fork",
        lambda b: m.ForkResult.model_validate_json(b).sandboxes,
        body=_json(req),
        read_timeout=None,
    )


def list_snapshots(labels: Mapping[str, str] | None = None) -> Call[list[m.Snapshot]]:
    return Call(
        "GET",
        "/v1/snapshots",
        lambda b: m.SnapshotList.model_validate_json(b).snapshots,
        params=labels_query(labels),
    )


def get_snapshot(snap: Any) -> Call[m.Snapshot]:
    return Call("GET", f"/v1/snapshots/{seg(ref(snap, 'snapshot'), 'snapshot')}", m.Snapshot.model_validate_json)


def remove_snapshot(snap: Any) -> Call[None]:
    return Call("DELETE", f"/v1/snapshots/{seg(ref(snap, 'snapshot'), 'snapshot')}", _none)


def export_path(snap: Any) -> str:
    return f"/v1/snapshots/{seg(ref(snap, 'snapshot'), 'snapshot')}/export"


def import_snapshot_params(name: str | None) -> Params | None:
    return None if name is None else [("name", name)]


# --- templates ---------------------------------------------------------------


def list_templates() -> Call[list[m.TemplateInfo]]:
    return Call("GET", "/v1/templates", lambda b: m.TemplateList.model_validate_json(b).templates)


def save_template(snap: Any, name: str) -> Call[m.TemplateInfo]:
    req = _build(m.SaveTemplate, name=name, snapshot=ref(snap, "snapshot"))
    return Call("POST", "/v1/templates", m.TemplateInfo.model_validate_json, body=_json(req))


def remove_template(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/templates/{seg(name, 'template name')}", _none)


def template_name_from_file(path: str | os.PathLike[str]) -> str:
    """A template name from an image archive's file name, as ``hull
    template import`` makes it (``alpine-3.20.tar`` -> ``alpine-3-20``)."""
    n = os.path.basename(os.fspath(path)).lower()
    for ext in (".tar.gz", ".tar.zst", ".tgz", ".tar", ".oci"):
        if n.endswith(ext):
            n = n[: -len(ext)]
            break
    name = ""
    for c in n:
        if "a" <= c <= "z" or "0" <= c <= "9":
            name += c
        elif name and not name.endswith("-"):
            name += "-"
    name = name.rstrip("-")[:63].rstrip("-")
    if not name:
        raise InvalidArgument(f"cannot make a template name from {os.fspath(path)!r}: give name=")
    return name


def import_template_params(path: str | os.PathLike[str], name: str | None, reference: str | None) -> Params:
    q: Params = [("name", name if name is not None else template_name_from_file(path))]
    if reference is not None:
        q.append(("reference", reference))
    q.append(("source", os.path.basename(os.fspath(path))))
    return q


def build_body(name: str, debian: str, packages: Sequence[str] | None, mirror: str | None) -> bytes:
    req = _build(
        m.BuildTemplate,
        name=name,
        debian=debian,
        packages=[p for p in (packages or []) if p],
        mirror=mirror,
    )
    return _json(req)


# --- shell sessions ----------------------------------------------------------


def shell_open(
    id_: str, session: str, cwd: str | None, env: Mapping[str, str] | None, user: str | None
) -> Call[m.ShellOpened]:
    req = _build(m.ShellOpenRequest, session=session, cwd=cwd, env=dict(env or {}), user=user)
    return Call("POST", sb(id_, "/shells"), m.ShellOpened.model_validate_json, body=_json(req))


def shell_list(id_: str) -> Call[list[m.ShellSessionInfo]]:
    return Call("GET", sb(id_, "/shells"), lambda b: m.ShellSessions.model_validate_json(b).sessions)


def _shell(id_: str, session: str, rest: str = "") -> str:
    return sb(id_, f"/shells/{seg(session, 'session name')}{rest}")


def shell_run(
    id_: str,
    session: str,
    command: str,
    timeout: Duration | None,
    idle_timeout: Duration | None,
    max_output: int | None,
) -> Call[m.ShellRunResult]:
    req = _build(
        m.ShellRunRequest,
        command=command,
        timeout_ms=None if timeout is None else millis(timeout, "timeout"),
        idle_timeout_ms=None if idle_timeout is None else millis(idle_timeout, "idle_timeout"),
        max_output=max_output,
    )
    # The daemon's default is 10 minutes, and it answers ~2 s after the timeout.
    wait = (req.timeout_ms / 1000 if req.timeout_ms is not None else 600.0) + TIMEOUT_MARGIN
    return Call(
        "POST", _shell(id_, session, "/run"), m.ShellRunResult.model_validate_json, body=_json(req), read_timeout=wait
    )


def shell_send(
    id_: str,
    session: str,
    input: str,
    expect: str | None,
    timeout: Duration | None,
    max_output: int | None,
) -> Call[m.ShellSendResult]:
    req = _build(
        m.ShellSendRequest,
        input=input,
        expect=expect,
        timeout_ms=None if timeout is None else millis(timeout, "timeout"),
        max_output=max_output,
    )
    wait = (req.timeout_ms / 1000 if req.timeout_ms is not None else 30.0) + TIMEOUT_MARGIN
    return Call(
        "POST", _shell(id_, session, "/send"), m.ShellSendResult.model_validate_json, body=_json(req), read_timeout=wait
    )


def shell_close(id_: str, session: str) -> Call[None]:
    return Call("DELETE", _shell(id_, session), _none)


# --- code interpreter --------------------------------------------------------


def _ctx(id_: str, context: str, rest: str = "") -> str:
    return sb(id_, f"/code/contexts/{seg(context, 'context name')}{rest}")


def code_run(id_: str, code: str, context: str | None, timeout: Duration | None) -> Call[m.CodeRunResult]:
    req = _build(
        m.CodeRunRequest,
        code=code,
        context=context,
        timeout_ms=None if timeout is None else millis(timeout, "timeout"),
    )
    # The daemon's default is 5 minutes; a first run also starts the kernel.
    wait = (req.timeout_ms / 1000 if req.timeout_ms is not None else 300.0) + TIMEOUT_MARGIN + 20.0
    return Call("POST", sb(id_, "/code/run"), m.CodeRunResult.model_validate_json, body=_json(req), read_timeout=wait)


def code_create(id_: str, context: str, language: str | None) -> Call[m.CodeContextInfo]:
    req = _build(m.CodeContextRequest, context=context, language=language)
    return Call(
        "POST", sb(id_, "/code/contexts"), m.CodeContextInfo.model_validate_json, body=_json(req), read_timeout=60.0
    )


def code_list(id_: str) -> Call[list[m.CodeContextInfo]]:
    return Call("GET", sb(id_, "/code/contexts"), lambda b: m.CodeContexts.model_validate_json(b).contexts)


def code_restart(id_: str, context: str) -> Call[m.CodeContextInfo]:
    return Call("POST", _ctx(id_, context, "/restart"), m.CodeContextInfo.model_validate_json, read_timeout=60.0)


def code_interrupt(id_: str, context: str) -> Call[None]:
    return Call("POST", _ctx(id_, context, "/interrupt"), _none)


def code_stop(id_: str, context: str) -> Call[None]:
    return Call("DELETE", _ctx(id_, context), _none)


def code_stream(id_: str, code: str, context: str | None, timeout: Duration | None) -> tuple[str, bytes, ReadTimeout]:
    """The route, JSON body and read timeout of a streamed run (``context``
    created on first use, as with ``code/run``)."""
    req = _build(
        m.CodeRunRequest,
        code=code,
        context=context,
        timeout_ms=None if timeout is None else millis(timeout, "timeout"),
    )
    wait = (req.timeout_ms / 1000 if req.timeout_ms is not None else 300.0) + TIMEOUT_MARGIN + 20.0
    return sb(id_, "/code/run/stream"), _json(req), wait


class _CodeError(BaseModel):
    """The ``error`` event of a streamed code run."""

    type: Literal["error"]
    error: m.ApiError


_CODE_EVENT = TypeAdapter(
    Annotated[
        m.CodeStdout | m.CodeStderr | m.CodeResult | m.CodeDisplay | m.CodeException | m.CodeEnd | _CodeError,
        Field(discriminator="type"),
    ]
)


def parse_code_event(line: bytes) -> m.CodeEvent | m.ApiError:
    """One NDJSON line of a streamed code run (an ``error`` event gives its ``ApiError``)."""
    try:
        ev = _CODE_EVENT.validate_json(line)
    except ValidationError as e:
        raise Internal(f"unreadable code event from the daemon ({e.error_count()} problems): {line[:200]!r}") from None
    return ev.error if isinstance(ev, _CodeError) else ev


# --- browser -----------------------------------------------------------------


def browser_status(id_: str) -> Call[m.BrowserStatus]:
    return Call("GET", sb(id_, "/browser"), m.BrowserStatus.model_validate_json)


def browser_lifecycle(id_: str, verb: str) -> Call[m.BrowserStatus]:
    """``start``, ``stop`` or ``restart``."""
    return Call("POST", sb(id_, f"/browser/{verb}"), m.BrowserStatus.model_validate_json, read_timeout=90.0)


def tab_id(tab: Any) -> str:
    """A tab given as its id or a :class:`~hull.models.BrowserTab`."""
    t = tab if isinstance(tab, str) else getattr(tab, "id", None)
    if not isinstance(t, str) or not t:
        raise InvalidArgument(f"tab: expected a tab id or a BrowserTab (got {tab!r})")
    return t


def _result_field(action: str, key: str, convert: Callable[[Any], T]) -> Callable[[bytes], T]:
    """A parser of a ``BrowserActionResult`` that checks its tag and returns one field."""

    def parse(b: bytes) -> T:
        try:
            doc = _DOC.validate_json(b)
            if doc.get("action") != action:
                raise ValueError(f"expected action {action!r}")
            return convert(doc.get(key))
        except (ValidationError, ValueError, TypeError) as e:
            raise Internal(f"unreadable {action} answer from the daemon ({e}): {b[:200]!r}") from None

    return parse


_DOC: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


def _str_list(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected a boolean")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _ax(v: Any) -> m.AxNode | None:
    return None if v is None else m.AxNode.model_validate(v)


def _tabs(v: Any) -> list[m.BrowserTab]:
    if not isinstance(v, list):
        raise ValueError("expected a list of tabs")
    return [m.BrowserTab.model_validate(t) for t in v]


def _timeout_ms(timeout: Duration | None) -> tuple[int | None, float]:
    if timeout is None:
        return None, 30.0 + TIMEOUT_MARGIN
    ms = millis(timeout, "timeout")
    return ms, ms / 1000 + TIMEOUT_MARGIN


def browser_action(
    id_: str,
    action: str,
    parse: Callable[[bytes], T],
    timeout: Duration | None = None,
    optional: tuple[str, ...] = (),
    **fields: Any,
) -> Call[T]:
    """One ``POST .../browser/actions``; the ``optional`` fields are left out when ``None``."""
    ms, wait = _timeout_ms(timeout)
    for k in ("tab", "url", "selector", "text", "expression"):
        if k in fields and not isinstance(fields[k], str) and not (k in optional and fields[k] is None):
            raise InvalidArgument(f"{action}: {k} must be a string (got {fields[k]!r})")
    body: dict[str, Any] = {"action": action, **{k: v for k, v in fields.items() if v is not None}}
    if ms is not None:
        body["timeout_ms"] = ms
    # The first action also starts the browser.
    return Call("POST", sb(id_, "/browser/actions"), parse, body=_DOC.dump_json(body), read_timeout=max(wait, 90.0))


def browser_open(id_: str, url: str | None, timeout: Duration | None) -> Call[m.BrowserTab]:
    parse = _result_field("open", "tab", m.BrowserTab.model_validate)
    return browser_action(id_, "open", parse, timeout, ("url",), url=url)


def browser_navigate(id_: str, tab: Any, url: str, timeout: Duration | None) -> Call[m.BrowserTab]:
    parse = _result_field("navigate", "tab", m.BrowserTab.model_validate)
    return browser_action(id_, "navigate", parse, timeout, tab=tab_id(tab), url=url)


def browser_click(id_: str, tab: Any, selector: str, timeout: Duration | None) -> Call[None]:
    return browser_action(
        id_, "click", _result_field("click", "tab", lambda _: None), timeout, tab=tab_id(tab), selector=selector
    )


def browser_type(id_: str, tab: Any, selector: str, text: str, clear: bool, timeout: Duration | None) -> Call[None]:
    parse = _result_field("type", "tab", lambda _: None)
    return browser_action(id_, "type", parse, timeout, tab=tab_id(tab), selector=selector, text=text, clear=bool(clear))


def browser_select(
    id_: str, tab: Any, selector: str, values: str | Sequence[str], timeout: Duration | None
) -> Call[list[str]]:
    vals = [values] if isinstance(values, str) else list(values)
    if not all(isinstance(v, str) for v in vals):
        raise InvalidArgument(f"values must be strings (got {vals!r})")
    parse = _result_field("select", "selected", _str_list)
    return browser_action(id_, "select", parse, timeout, tab=tab_id(tab), selector=selector, values=vals)


def browser_wait_for(id_: str, tab: Any, selector: str, visible: bool, timeout: Duration | None) -> Call[bool]:
    parse = _result_field("wait_for", "found", _bool)
    return browser_action(id_, "wait_for", parse, timeout, tab=tab_id(tab), selector=selector, visible=bool(visible))


def browser_text(id_: str, tab: Any, selector: str | None) -> Call[str]:
    parse = _result_field("text", "text", _text)
    return browser_action(id_, "text", parse, None, ("selector",), tab=tab_id(tab), selector=selector)


def browser_accessibility(id_: str, tab: Any) -> Call[m.AxNode | None]:
    return browser_action(id_, "accessibility", _result_field("accessibility", "tree", _ax), None, tab=tab_id(tab))


def _evaluated(b: bytes) -> Any:
    d = _result_field("evaluate", "truncated", lambda v: v)
    if d(b):
        prefix = _DOC.validate_json(b).get("json_prefix")
        raise Internal(f"the value's JSON is over 1 Mi characters; return less (it starts {str(prefix)[:200]!r})")
    return _DOC.validate_json(b).get("value")


def browser_evaluate(id_: str, tab: Any, expression: str, timeout: Duration | None) -> Call[Any]:
    return browser_action(id_, "evaluate", _evaluated, timeout, tab=tab_id(tab), expression=expression)


def browser_tabs(id_: str) -> Call[list[m.BrowserTab]]:
    return browser_action(id_, "tabs", _result_field("tabs", "tabs", _tabs))


def browser_close(id_: str, tab: Any) -> Call[None]:
    return browser_action(id_, "close", _result_field("close", "tab", lambda _: None), tab=tab_id(tab))


def browser_screenshot(id_: str, tab: Any, full_page: bool) -> Call[bytes]:
    return Call(
        "GET",
        sb(id_, "/browser/screenshot"),
        bytes,
        params=[("tab", tab_id(tab)), ("full_page", "true" if full_page else "false")],
        read_timeout=90.0,
    )


# --- MCP servers -------------------------------------------------------------


def mcp_start(
    id_: str,
    name: str,
    command: str | Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    user: str | None,
    startup_timeout: Duration | None,
    session_idle_timeout: Duration | None,
) -> Call[m.McpServerInfo]:
    req = _build(
        m.McpServerRequest,
        name=name,
        command=argv(command),
        env=dict(env or {}),
        cwd=cwd,
        user=user,
        startup_timeout_ms=None if startup_timeout is None else millis(startup_timeout, "startup_timeout"),
        session_idle_timeout_seconds=None
        if session_idle_timeout is None
        else whole_seconds(session_idle_timeout, "session_idle_timeout"),
    )
    wait = (req.startup_timeout_ms / 1000 if req.startup_timeout_ms is not None else 30.0) + TIMEOUT_MARGIN
    return Call(
        "POST", sb(id_, "/mcp-servers"), m.McpServerInfo.model_validate_json, body=_json(req), read_timeout=wait
    )


def mcp_list(id_: str) -> Call[list[m.McpServerInfo]]:
    return Call("GET", sb(id_, "/mcp-servers"), lambda b: m.McpServers.model_validate_json(b).servers)


def mcp_stop(id_: str, name: str) -> Call[None]:
    return Call("DELETE", sb(id_, f"/mcp-servers/{seg(name, 'MCP server name')}"), _none)


# --- exposed ports ------------------------------------------------------------


def _port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgument(f"port must be an int from 1 to 65535 (got {port!r})")
    return port


def _absolute(endpoint: Endpoint, x: m.ExposedPort) -> m.ExposedPort:
    """``x`` with ``url`` made from the SDK's own endpoint and ``path``."""
    base = (endpoint.url or "http://localhost").rstrip("/")
    if x.protocol == m.PortProtocol.TCP and base.startswith("http"):
        base = "ws" + base[len("http") :]
    return x.model_copy(update={"url": base + x.path})


def expose(endpoint: Endpoint, id_: str, port: Any, protocol: Any) -> Call[m.ExposedPort]:
    try:
        proto = m.PortProtocol(protocol)
    except ValueError:
        raise InvalidArgument(f"protocol must be 'http' or 'tcp' (got {protocol!r})") from None
    req = _build(m.ExposePort, port=_port(port), protocol=proto)
    return Call(
        "POST",
        sb(id_, "/ports"),
        lambda b: _absolute(endpoint, m.ExposedPort.model_validate_json(b)),
        body=_json(req),
    )


def ports(endpoint: Endpoint, id_: str) -> Call[list[m.ExposedPort]]:
    return Call(
        "GET",
        sb(id_, "/ports"),
        lambda b: [_absolute(endpoint, x) for x in m.ExposedPorts.model_validate_json(b).ports],
    )


def unexpose(id_: str, port: Any) -> Call[None]:
    return Call("DELETE", sb(id_, f"/ports/{_port(port)}"), _none)


def mcp_path(id_: str, name: str) -> str:
    return sb(id_, f"/mcp/{seg(name, 'MCP server name')}")


def endpoint_url(endpoint: Endpoint, path: str, what: str) -> str:
    """The full URL of a daemon route, for clients other than this SDK
    (a CDP client, an MCP client): only a TCP endpoint has one."""
    if endpoint.url is None:
        raise InvalidArgument(
            f"{what} needs the daemon on TCP (`hull serve --listen 127.0.0.1:7070`, then Hull(url=..., token=...)); "
            f"this client talks to the unix socket {endpoint.socket}, which such clients cannot use "
            f"(the route is {path})"
        )
    return endpoint.url.rstrip("/") + path
