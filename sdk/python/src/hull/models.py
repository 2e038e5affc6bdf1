"""Typed models of the hull API's bodies (pydantic 2).

Each model mirrors one component of ``docs/openapi.json``, named in its
``__openapi__`` class variable (a test checks every field's name, type and
whether it is required against that document). Models of answers ignore
fields they do not know, so a newer daemon that adds fields still works;
models of requests refuse unknown fields, as the daemon does. Where a
component's name would clash with an SDK class (``Sandbox`` is the handle
you call methods on), the model gets another name: the API's ``Sandbox``
record is :class:`SandboxInfo`, ``ShellSession`` is
:class:`ShellSessionInfo`, ``CodeContext`` is :class:`CodeContextInfo`.
"""

from __future__ import annotations

import base64
import enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "SandboxState",
    "Profile",
    "SubstrateKind",
    "ErrorKind",
    "ErrorReason",
    "ApiError",
    "Limits",
    "LimitsRequest",
    "SandboxEvent",
    "SandboxInfo",
    "SandboxList",
    "CreateSandbox",
    "SetTtl",
    "ExecRequest",
    "ExecResult",
    "ExecStarted",
    "OutputChunk",
    "ExecExit",
    "ProcessStarted",
    "ProcessInfo",
    "ProcessList",
    "SignalRequest",
    "FileInfo",
    "FileList",
    "MkdirRequest",
    "RenameRequest",
    "ShellOpenRequest",
    "ShellOpened",
    "ShellSessionInfo",
    "ShellSessions",
    "ShellRunRequest",
    "ShellRunResult",
    "ShellSendRequest",
    "ShellSendResult",
    "CodeContextRequest",
    "CodeContextInfo",
    "CodeContexts",
    "CodeRunRequest",
    "CodeRunError",
    "CodeRunResult",
    "CreateSnapshot",
    "Snapshot",
    "SnapshotList",
    "Rollback",
    "Fork",
    "ForkResult",
    "ImageConfig",
    "TemplateInfo",
    "TemplateList",
    "SaveTemplate",
    "BuildTemplate",
    "BuildEvent",
    "Version",
    "HostInfo",
    "Health",
]


class _StrEnum(str, enum.Enum):
    """A string enum that compares and prints as its value."""

    def __str__(self) -> str:
        return str(self.value)


class SandboxState(_StrEnum):
    """Lifecycle states of a sandbox."""

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Profile(_StrEnum):
    """Presets over TTL and idle timeout: ``rollout`` (30 s fixed TTL) or
    ``session`` (40 min, extended by activity)."""

    ROLLOUT = "rollout"
    SESSION = "session"


class SubstrateKind(_StrEnum):
    """The isolation substrate a sandbox runs on."""

    CONTAINER = "container"


class ErrorKind(_StrEnum):
    """The closed set of error kinds every API error maps to."""

    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class ErrorReason(_StrEnum):
    """What exactly went wrong, for errors a client handles differently from
    others of their kind; reasons this SDK does not know read as ``UNKNOWN``."""

    COMMAND_NOT_FOUND = "command_not_found"
    COMMAND_NOT_EXECUTABLE = "command_not_executable"
    UNKNOWN = "unknown"


class _Answer(BaseModel):
    """Base of models the daemon sends: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    __openapi__: ClassVar[str]


class _Request(BaseModel):
    """Base of models the SDK sends: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    __openapi__: ClassVar[str]


class ApiError(_Answer):
    """An API error: a kind and a message a person can act on."""

    __openapi__ = "ApiError"
    kind: ErrorKind
    message: str
    reason: ErrorReason | None = None

    @field_validator("reason", mode="before")
    @classmethod
    def _unknown_reason(cls, v: Any) -> Any:
        if v is None or v in ErrorReason._value2member_map_:
            return v
        return ErrorReason.UNKNOWN


# --- sandboxes --------------------------------------------------------------


class Limits(_Answer):
    """Limits in force on a sandbox."""

    __openapi__ = "Limits"
    memory_bytes: int
    cpus: float
    pids: int
    disk_bytes: int


class LimitsRequest(_Request):
    """Limits as requested; absent fields take the daemon's defaults."""

    __openapi__ = "LimitsRequest"
    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None
    disk_bytes: int | None = None


class SandboxEvent(_Answer):
    """A recorded event in a sandbox's life (``created``, ``paused``, ``oom``, ...)."""

    __openapi__ = "SandboxEvent"
    time: int
    kind: str
    message: str


class NetworkMode(_StrEnum):
    """Network modes (docs/network.md)."""

    NONE = "none"
    ALLOWLIST = "allowlist"
    OPEN = "open"
    RECORD = "record"
    REPLAY = "replay"


class AllowItem(BaseModel):
    """One thing a sandbox may reach: exactly one of ``domain``, ``cidr``,
    ``sandbox`` (a peer), with optional ``ports`` (``"443"``, ``"8000-8100"``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    __openapi__: ClassVar[str] = "AllowItem"
    domain: str | None = None
    cidr: str | None = None
    sandbox: str | None = None
    ports: list[str] = Field(default_factory=list)


class HeaderRuleSpec(BaseModel):
    """Headers set on requests to ``domain`` (values are never returned: ``***``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    __openapi__: ClassVar[str] = "HeaderRuleSpec"
    domain: str
    set: dict[str, str]


class NetworkPolicy(BaseModel):
    """A network policy (docs/network.md). Wherever the SDK takes one, the
    string form (``"open"``, ``"allow:example.com,10.0.0.0/8"``) works too."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    __openapi__: ClassVar[str] = "NetworkPolicy"
    mode: NetworkMode
    allow: list[AllowItem] = Field(default_factory=list)
    headers: list[HeaderRuleSpec] = Field(default_factory=list)
    snapshot: str | None = None


class SandboxNetwork(_Answer):
    """``GET``/``PUT /v1/sandboxes/{id}/network``."""

    __openapi__ = "SandboxNetwork"
    policy: NetworkPolicy
    summary: str
    addresses: list[str] = Field(default_factory=list)


class SandboxInfo(_Answer):
    """A sandbox as the API reports it (the ``Sandbox`` component)."""

    __openapi__ = "Sandbox"
    id: str
    name: str | None = None
    state: SandboxState
    template: str
    profile: Profile
    substrate: SubstrateKind
    labels: dict[str, str]
    limits: Limits
    created_at: int
    expires_at: int | None = None
    idle_timeout_seconds: int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    pid: int | None = None
    snapshot: str | None = None
    error: str | None = None
    events: list[SandboxEvent] = Field(default_factory=list)
    network: NetworkPolicy | None = None


class SandboxList(_Answer):
    """``GET /v1/sandboxes``."""

    __openapi__ = "SandboxList"
    sandboxes: list[SandboxInfo]


class CreateSandbox(_Request):
    """``POST /v1/sandboxes``."""

    __openapi__ = "CreateSandbox"
    template: str | None = None
    profile: Profile | None = None
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    limits: LimitsRequest = Field(default_factory=LimitsRequest)
    ttl_seconds: int | None = None
    idle_timeout_seconds: int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    from_: str | None = Field(default=None, alias="from")
    network: NetworkPolicy | str | None = None


class SetTtl(_Request):
    """``PUT /v1/sandboxes/{id}/ttl``: seconds from now, 0 removes the TTL."""

    __openapi__ = "SetTtl"
    ttl_seconds: int


# --- exec and processes ------------------------------------------------------


class ExecRequest(_Request):
    """``POST /v1/sandboxes/{id}/exec`` and its streaming variants."""

    __openapi__ = "ExecRequest"
    cmd: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    stdin: str | None = None
    timeout_seconds: float | None = None
    tty: bool = False
    rows: int | None = None
    cols: int | None = None
    background: bool = False


class ExecResult(_Answer):
    """The result of an exec: ``stdout``, ``stderr`` (UTF-8, invalid bytes
    replaced) and ``exit_code`` (``None`` when a signal ended it: see
    ``signal``), plus ``timed_out``, ``oom_killed``, ``duration_ms`` and
    ``truncated`` (output past 16 MiB dropped)."""

    __openapi__ = "ExecResult"
    stdout: str
    stderr: str
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    duration_ms: int = 0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the command exited with code 0."""
        return self.exit_code == 0

    @property
    def cli_exit_code(self) -> int:
        """The code ``hull exec`` would exit with: the command's, 124 after a
        timeout, 128+N when signal N ended it."""
        if self.timed_out:
            return 124
        if self.exit_code is not None:
            return self.exit_code
        if self.signal is not None:
            return 128 + self.signal
        return 125


class ExecStarted(_Answer):
    """First event of a streaming exec: the process's guest id and pid."""

    __openapi__ = "ExecEvent#started"
    type: Literal["started"] = "started"
    id: str
    pid: int


class OutputChunk(_Answer):
    """A piece of a streaming exec's output: ``stream`` is ``stdout`` or
    ``stderr``, ``data`` the text (UTF-8, invalid bytes replaced),
    :attr:`raw` the exact bytes."""

    __openapi__ = "ExecEvent#stdout"
    type: Literal["stdout", "stderr"]
    ts_micros: int
    data: str
    data_b64: str

    @property
    def stream(self) -> str:
        """``stdout`` or ``stderr``."""
        return self.type

    @property
    def raw(self) -> bytes:
        """The exact bytes of this chunk."""
        return base64.b64decode(self.data_b64)


class ExecExit(_Answer):
    """Last event of a streaming exec: how the command ended (an
    :class:`ExecResult` without the output, which came as chunks)."""

    __openapi__ = "ExecEvent#exit"
    type: Literal["exit"] = "exit"
    stdout: str
    stderr: str
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    oom_killed: bool = False
    duration_ms: int = 0
    truncated: bool = False


class ProcessStarted(_Answer):
    """Returned by a background exec: the guest's process id (``p3``) and pid."""

    __openapi__ = "ProcessStarted"
    id: str
    pid: int


class ProcessInfo(_Answer):
    """A process started through the agent."""

    __openapi__ = "ProcessInfo"
    id: str
    pid: int
    argv: list[str]
    background: bool
    started_micros: int
    running: bool
    exit_code: int | None = None
    signal: int | None = None


class ProcessList(_Answer):
    """``GET /v1/sandboxes/{id}/processes``."""

    __openapi__ = "ProcessList"
    processes: list[ProcessInfo]


class SignalRequest(_Request):
    """``POST /v1/sandboxes/{id}/processes/{pid}/signal``."""

    __openapi__ = "SignalRequest"
    signal: int


# --- files -----------------------------------------------------------------


class FileInfo(_Answer):
    """A file's metadata; ``kind`` is ``file``, ``dir``, ``symlink`` or ``other``."""

    __openapi__ = "FileInfo"
    path: str
    kind: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    link_target: str | None = None

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        """True for a regular file."""
        return self.kind == "file"


class FileList(_Answer):
    """``GET .../files/list``: entries, and whether the listing was cut."""

    __openapi__ = "FileList"
    entries: list[FileInfo]
    truncated: bool = False


class MkdirRequest(_Request):
    """``POST .../files/mkdir``."""

    __openapi__ = "MkdirRequest"
    path: str
    parents: bool = True


class RenameRequest(_Request):
    """``POST .../files/rename``."""

    __openapi__ = "RenameRequest"
    from_: str = Field(alias="from")
    to: str


# --- shell sessions ----------------------------------------------------------


class ShellOpenRequest(_Request):
    """``POST .../shells``: open a named persistent bash session."""

    __openapi__ = "ShellOpenRequest"
    session: str
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None


class ShellOpened(_Answer):
    """A session that was opened."""

    __openapi__ = "ShellOpened"
    session: str
    pid: int


class ShellSessionInfo(_Answer):
    """A shell session as listed (the ``ShellSession`` component)."""

    __openapi__ = "ShellSession"
    session: str
    pid: int
    cwd: str
    busy: bool
    started_micros: int


class ShellSessions(_Answer):
    """``GET .../shells``."""

    __openapi__ = "ShellSessions"
    sessions: list[ShellSessionInfo]


class ShellRunRequest(_Request):
    """``POST .../shells/{session}/run``."""

    __openapi__ = "ShellRunRequest"
    command: str
    timeout_ms: int | None = None
    idle_timeout_ms: int | None = None
    max_output: int | None = None


class ShellRunResult(_Answer):
    """How a command in a session ended: ``output`` (stdout and stderr
    merged), ``exit_code``, ``cwd`` afterwards, and the flags."""

    __openapi__ = "ShellRunResult"
    output: str
    exit_code: int | None = None
    timed_out: bool
    idle_timed_out: bool
    truncated: bool
    cwd: str
    shell_replaced: bool
    session_ended: bool
    duration_ms: int

    @property
    def ok(self) -> bool:
        """True when the command's ``$?`` was 0."""
        return self.exit_code == 0


class ShellSendRequest(_Request):
    """``POST .../shells/{session}/send``."""

    __openapi__ = "ShellSendRequest"
    input: str
    expect: str | None = None
    timeout_ms: int | None = None
    max_output: int | None = None


class ShellSendResult(_Answer):
    """Output that followed some input; ``matched`` when ``expect`` matched."""

    __openapi__ = "ShellSendResult"
    output: str
    matched: bool
    timed_out: bool
    truncated: bool
    session_ended: bool


# --- code interpreter --------------------------------------------------------


class CodeContextRequest(_Request):
    """``POST .../code/contexts``."""

    __openapi__ = "CodeContextRequest"
    context: str
    language: str | None = None


class CodeContextInfo(_Answer):
    """A code-interpreter context (the ``CodeContext`` component)."""

    __openapi__ = "CodeContext"
    context: str
    language: str
    pid: int
    alive: bool


class CodeContexts(_Answer):
    """``GET .../code/contexts``."""

    __openapi__ = "CodeContexts"
    contexts: list[CodeContextInfo]


class CodeRunRequest(_Request):
    """``POST .../code/run`` and ``.../code/contexts/{context}/run``."""

    __openapi__ = "CodeRunRequest"
    code: str
    context: str | None = None
    timeout_ms: int | None = None


class CodeRunError(_Answer):
    """An exception raised by the code."""

    __openapi__ = "CodeRunError"
    name: str
    value: str
    traceback: list[str]


class CodeRunResult(_Answer):
    """What one run produced: ``stdout``, ``stderr``, ``results`` (MIME
    bundles), ``error``, ``execution_count`` and the flags."""

    __openapi__ = "CodeRunResult"
    stdout: str
    stderr: str
    results: list[dict[str, Any]]
    error: CodeRunError | None = None
    execution_count: int | None = None
    timed_out: bool
    truncated: bool

    @property
    def text(self) -> str | None:
        """The ``text/plain`` of the last result or display that has one."""
        for r in reversed(self.results):
            t = r.get("text/plain")
            if isinstance(t, str):
                return t
        return None


# --- snapshots and templates -------------------------------------------------


class CreateSnapshot(_Request):
    """``POST /v1/sandboxes/{id}/snapshot``."""

    __openapi__ = "CreateSnapshot"
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class Snapshot(_Answer):
    """An immutable capture of a sandbox's files."""

    __openapi__ = "Snapshot"
    id: str
    name: str | None = None
    template: str
    parent: str | None = None
    sandbox: str
    created_at: int
    labels: dict[str, str]
    size_bytes: int
    backend: str


class SnapshotList(_Answer):
    """``GET /v1/snapshots``."""

    __openapi__ = "SnapshotList"
    snapshots: list[Snapshot]


class Rollback(_Request):
    """``POST /v1/sandboxes/{id}/rollback``."""

    __openapi__ = "Rollback"
    snapshot: str


class Fork(_Request):
    """``POST /v1/snapshots/{id}/fork``."""

    __openapi__ = "Fork"
    n: int
    profile: Profile | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    limits: LimitsRequest = Field(default_factory=LimitsRequest)
    ttl_seconds: int | None = None
    network: NetworkPolicy | str | None = None


class ForkResult(_Answer):
    """The new sandboxes of a fork, in order."""

    __openapi__ = "ForkResult"
    sandboxes: list[SandboxInfo]


class ImageConfig(_Answer):
    """Defaults an imported image or a Debian build gives its sandboxes."""

    __openapi__ = "ImageConfig"
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    source: str | None = None


class TemplateInfo(_Answer):
    """A template: built in, imported, built or saved."""

    __openapi__ = "TemplateInfo"
    name: str
    available: bool
    description: str
    note: str | None = None
    snapshot: str | None = None
    config: ImageConfig | None = None


class TemplateList(_Answer):
    """``GET /v1/templates``."""

    __openapi__ = "TemplateList"
    templates: list[TemplateInfo]


class SaveTemplate(_Request):
    """``POST /v1/templates``: a template made of a snapshot."""

    __openapi__ = "SaveTemplate"
    name: str
    snapshot: str


class BuildTemplate(_Request):
    """``POST /v1/templates/build``: a Debian template built with mmdebstrap."""

    __openapi__ = "BuildTemplate"
    name: str
    debian: str
    packages: list[str] = Field(default_factory=list)
    mirror: str | None = None


class BuildEvent(_Answer):
    """One line of a template build's progress: ``event`` is ``phase``
    (``phase`` set), ``log`` (``line``), ``progress`` (``done``/``total``),
    ``done`` (``template``) or ``error`` (``error``)."""

    __openapi__ = "BuildEvent"
    event: Literal["phase", "log", "progress", "done", "error"]
    phase: str | None = None
    line: str | None = None
    done: int | None = None
    total: int | None = None
    template: TemplateInfo | None = None
    error: ApiError | None = None


# --- the daemon ------------------------------------------------------------


class Version(_Answer):
    """``GET /v1/version``."""

    __openapi__ = "Version"
    version: str
    api: str
    protocol_min: int
    protocol_max: int


class HostInfo(_Answer):
    """``GET /v1/info``: what this host supports."""

    __openapi__ = "HostInfo"
    version: str
    instance_id: str
    state_dir: str
    kernel: str
    cgroup_mode: str
    cgroup_controllers: dict[str, str]
    user_namespaces: bool
    idmapped_mounts: bool
    overlayfs: bool
    seccomp: bool
    landlock: bool
    btrfs: bool
    kvm: bool
    kvm_note: str
    tcg: bool
    uid_range: str
    templates: list[TemplateInfo]
    sandboxes: int
    defaults: Limits
    snapshot_store: str | None = None
    network: str = ""


class Health(_Answer):
    """``GET /v1/health``."""

    __openapi__ = "Health"
    status: str


# --- streamed code runs -----------------------------------------------------


class CodeStdout(_Answer):
    """Text a streamed code run wrote to stdout (a long write comes as several)."""

    __openapi__ = "CodeEvent#stdout"
    type: Literal["stdout"] = "stdout"
    text: str


class CodeStderr(_Answer):
    """Text a streamed code run wrote to stderr."""

    __openapi__ = "CodeEvent#stderr"
    type: Literal["stderr"] = "stderr"
    text: str


class CodeResult(_Answer):
    """The value of the last expression, as a MIME bundle (``data``)."""

    __openapi__ = "CodeEvent#result"
    type: Literal["result"] = "result"
    data: dict[str, Any]
    execution_count: int | None = None


class CodeDisplay(_Answer):
    """A ``display(...)`` output, as a MIME bundle (``data``)."""

    __openapi__ = "CodeEvent#display"
    type: Literal["display"] = "display"
    data: dict[str, Any]


class CodeException(_Answer):
    """The code raised: ``name``, ``value`` and ``traceback``."""

    __openapi__ = "CodeEvent#exception"
    type: Literal["exception"] = "exception"
    name: str
    value: str
    traceback: list[str]


class CodeEnd(_Answer):
    """Last event of a streamed code run: ``timed_out`` (the timeout
    interrupted it; the context keeps its state) and ``truncated`` (output
    past the stream's 16 MiB was dropped)."""

    __openapi__ = "CodeEvent#end"
    type: Literal["end"] = "end"
    timed_out: bool
    truncated: bool
    execution_count: int | None = None


CodeEvent = CodeStdout | CodeStderr | CodeResult | CodeDisplay | CodeException | CodeEnd


# --- file watches ------------------------------------------------------------


class WatchCreate(_Answer):
    """An entry was created in (or moved into) a watched directory.
    ``name`` is relative to the watched directory, ``path`` absolute."""

    __openapi__ = "FileWatchEvent#create"
    type: Literal["create"] = "create"
    name: str
    path: str


class WatchWrite(_Answer):
    """A file's content was modified."""

    __openapi__ = "FileWatchEvent#write"
    type: Literal["write"] = "write"
    name: str
    path: str


class WatchRemove(_Answer):
    """An entry was deleted (an empty ``name``: the watched directory itself)."""

    __openapi__ = "FileWatchEvent#remove"
    type: Literal["remove"] = "remove"
    name: str
    path: str


class WatchRename(_Answer):
    """An entry was moved away (its new name, if watched, comes as ``create``)."""

    __openapi__ = "FileWatchEvent#rename"
    type: Literal["rename"] = "rename"
    name: str
    path: str


class WatchChmod(_Answer):
    """An entry's permissions, owner or times changed."""

    __openapi__ = "FileWatchEvent#chmod"
    type: Literal["chmod"] = "chmod"
    name: str
    path: str


class WatchOverflow(_Answer):
    """Events were lost (the sandbox's queue overflowed while the reader
    was slow, or a new subdirectory could not be watched)."""

    __openapi__ = "FileWatchEvent#overflow"
    type: Literal["overflow"] = "overflow"


FileWatchEvent = WatchCreate | WatchWrite | WatchRemove | WatchRename | WatchChmod | WatchOverflow


# --- browser ----------------------------------------------------------------


class BrowserState(str, enum.Enum):
    """Whether a sandbox's browser runs."""

    STOPPED = "stopped"
    RUNNING = "running"
    CRASHED = "crashed"

    def __str__(self) -> str:
        return self.value


class BrowserStatus(_Answer):
    """A sandbox's headless Chromium: ``state`` (``crashed`` with
    ``error``), ``pid``, ``version``, ``cdp_path`` (the raw CDP route)."""

    __openapi__ = "BrowserStatus"
    state: BrowserState
    cdp_path: str
    error: str | None = None
    pid: int | None = None
    process: str | None = None
    started_at: int | None = None
    version: str | None = None


class BrowserTab(_Answer):
    """A browser tab: ``id`` (the ``tab`` of the other calls), ``url``, ``title``."""

    __openapi__ = "BrowserTab"
    id: str
    url: str
    title: str


class AxNode(_Answer):
    """A node of an accessibility snapshot: ``role``, ``name``, ``value``, ``children``."""

    __openapi__ = "AxNode"
    role: str
    name: str | None = None
    value: str | None = None
    children: list[AxNode] | None = None


# --- MCP servers ------------------------------------------------------------


class McpServerRequest(_Request):
    """``POST .../mcp-servers``."""

    __openapi__ = "McpServerRequest"
    name: str
    command: list[str]
    env: dict[str, str] | None = None
    cwd: str | None = None
    user: str | None = None
    startup_timeout_ms: int | None = None
    session_idle_timeout_seconds: int | None = None


class McpServerInfo(_Answer):
    """A registered MCP server: ``endpoint`` is its streamable-HTTP path on
    the daemon (``McpServers.url`` gives the full URL); ``server_name``,
    ``server_version``, ``protocol_version`` and ``tools`` come from the
    registration check, ``sessions`` is the count of open sessions."""

    __openapi__ = "McpServerInfo"
    name: str
    sandbox: str
    command: list[str]
    endpoint: str
    server_name: str
    server_version: str
    protocol_version: str
    sessions: int
    startup_timeout_ms: int
    session_idle_timeout_seconds: int
    created_at: int
    tools: int | None = None


class PortProtocol(_StrEnum):
    """How an exposed port is reached: ``http`` (reverse proxy, WebSocket
    included; raw TCP too) or ``tcp`` (raw TCP over a WebSocket only)."""

    HTTP = "http"
    TCP = "tcp"


class ExposePort(_Request):
    """``POST .../ports``."""

    __openapi__ = "ExposePort"
    port: int
    protocol: PortProtocol | None = None


class ExposedPort(_Answer):
    """An exposed port. ``path`` is its route on the daemon; ``url`` is
    that route made absolute with the SDK's own endpoint (over the unix
    socket, ``http://localhost/...``, which this SDK's HTTP client reaches;
    other clients need the daemon on TCP)."""

    __openapi__ = "ExposedPort"
    port: int
    protocol: PortProtocol
    sandbox: str
    path: str
    url: str
    created_at: int


class ExposedPorts(_Answer):
    """``GET .../ports``."""

    __openapi__ = "ExposedPorts"
    ports: list[ExposedPort]


class McpServers(_Answer):
    """``GET .../mcp-servers``."""

    __openapi__ = "McpServers"
    servers: list[McpServerInfo]
