"""hull: the Python client of the hull agent runtime.

``Hull`` (synchronous) and ``AsyncHull`` (asyncio) talk to a hull daemon
over its unix socket (``HULL_SOCKET``, default ``/run/hull/hull.sock``) or
over TCP (``HULL_URL`` + ``HULL_TOKEN``), and hand out handles to
sandboxes: exec, streaming exec, files, shell sessions, code contexts,
snapshots, forks and rollbacks. Errors are raised as one exception class
per API error kind (``hull.NotFound``, ``hull.Conflict``, ...), each a
``hull.HullError``. Models of the API's bodies are in ``hull.models``.

Quick start::

    import hull

    with hull.Hull() as client, client.sandbox(template="busybox") as sb:
        r = sb.exec("echo hello; exit 3")
        print(r.stdout, r.exit_code)        # hello  3
"""

from . import models
from ._async import (
    AsyncBrowser,
    AsyncCode,
    AsyncCodeStream,
    AsyncExecStream,
    AsyncFiles,
    AsyncFileWatch,
    AsyncHull,
    AsyncMcp,
    AsyncSandbox,
    AsyncShellSession,
    AsyncSnapshots,
    AsyncTemplates,
)
from ._config import Endpoint, parse_duration, parse_size
from ._sync import (
    Browser,
    Code,
    CodeStream,
    ExecStream,
    FileListing,
    Files,
    FileWatch,
    Hull,
    Mcp,
    Sandbox,
    ShellSession,
    Snapshots,
    Templates,
)
from ._version import __version__
from .errors import (
    Conflict,
    DaemonUnreachable,
    HullError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .models import (
    AxNode,
    BrowserStatus,
    BrowserTab,
    CodeContextInfo,
    CodeEnd,
    CodeRunResult,
    ExecExit,
    ExecResult,
    ExposedPort,
    FileInfo,
    McpServerInfo,
    OutputChunk,
    SandboxInfo,
    SandboxState,
    ShellRunResult,
    ShellSendResult,
    Snapshot,
    TemplateInfo,
)

__all__ = [
    "__version__",
    "models",
    "Hull",
    "AsyncHull",
    "Sandbox",
    "AsyncSandbox",
    "Files",
    "AsyncFiles",
    "FileWatch",
    "AsyncFileWatch",
    "FileListing",
    "Code",
    "AsyncCode",
    "CodeStream",
    "AsyncCodeStream",
    "Browser",
    "AsyncBrowser",
    "Mcp",
    "AsyncMcp",
    "ShellSession",
    "AsyncShellSession",
    "ExecStream",
    "AsyncExecStream",
    "Snapshots",
    "AsyncSnapshots",
    "Templates",
    "AsyncTemplates",
    "Endpoint",
    "parse_duration",
    "parse_size",
    "HullError",
    "InvalidArgument",
    "Unauthenticated",
    "PermissionDenied",
    "NotFound",
    "Conflict",
    "ResourceExhausted",
    "Unavailable",
    "Internal",
    "DaemonUnreachable",
    "ExecResult",
    "ExecExit",
    "OutputChunk",
    "FileInfo",
    "SandboxInfo",
    "SandboxState",
    "ShellRunResult",
    "ShellSendResult",
    "CodeRunResult",
    "CodeContextInfo",
    "Snapshot",
    "TemplateInfo",
    "CodeEnd",
    "BrowserStatus",
    "BrowserTab",
    "AxNode",
    "McpServerInfo",
    "ExposedPort",
]
