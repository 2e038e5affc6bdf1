"""Exceptions: one class per API error kind, all under :class:`HullError`.

Every error the daemon answers is ``{"error": {"kind", "message"}}`` with
the kind's HTTP status (``docs/api.md``, "Errors"); the SDK raises the class
of that kind with the server's message, so ``except hull.NotFound`` catches
an unknown sandbox, snapshot, file or command alike. A daemon that cannot
be reached raises :class:`DaemonUnreachable`, a kind of :class:`Unavailable`.
An answer the SDK cannot read as an API error (a proxy's HTML page, say) is
mapped by its HTTP status alone, with the body's start as the message.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
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
    "error_from_response",
]


class HullError(Exception):
    """Base class of every error the SDK raises for the API.

    Attributes:
        kind: the API's error kind (``not_found``, ``conflict``, ...).
        message: the server's message, meant for a person.
        status: the HTTP status of the answer (0 when there was none).
        reason: for exec start failures, ``command_not_found`` or
            ``command_not_executable``; ``None`` otherwise.
    """

    kind: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        reason: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        if kind is not None:
            self.kind = kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status}, reason={self.reason!r})"


class InvalidArgument(HullError):
    """400 ``invalid_argument``: a bad value, body, query or path."""

    kind = "invalid_argument"


class Unauthenticated(HullError):
    """401 ``unauthenticated``: TCP without the right bearer token (``HULL_TOKEN``)."""

    kind = "unauthenticated"


class PermissionDenied(HullError):
    """403 ``permission_denied``: the guest refused (``EACCES``, ``EPERM``, ``EROFS``)."""

    kind = "permission_denied"


class NotFound(HullError):
    """404 ``not_found``: unknown sandbox, snapshot, template, file, process,
    session, context, or a command that does not exist (``reason ==
    "command_not_found"``)."""

    kind = "not_found"


class Conflict(HullError):
    """409 ``conflict``: not allowed in the current state (exec in a paused
    sandbox, ...), a name taken, a file that exists, something busy."""

    kind = "conflict"


class ResourceExhausted(HullError):
    """429 ``resource_exhausted``: over an upload limit, out of space,
    memory, processes, sessions or contexts."""

    kind = "resource_exhausted"


class Unavailable(HullError):
    """503 ``unavailable``: the guest agent does not answer, or the host
    cannot provide a template or feature."""

    kind = "unavailable"


class Internal(HullError):
    """500 ``internal``: a host-side failure; the message names the step."""

    kind = "internal"


class DaemonUnreachable(Unavailable):
    """The daemon could not be reached at all (no socket, connection
    refused, TCP address not answering)."""


_BY_KIND: dict[str, type[HullError]] = {
    c.kind: c
    for c in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        Conflict,
        ResourceExhausted,
        Unavailable,
        Internal,
    )
}

_BY_STATUS: dict[int, type[HullError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    405: InvalidArgument,
    409: Conflict,
    413: InvalidArgument,
    429: ResourceExhausted,
    503: Unavailable,
    507: ResourceExhausted,
}

_REASONS = {"command_not_found", "command_not_executable"}


def error_from_api(err: Any, status: int = 0) -> HullError:
    """The exception for an ``ApiError`` object (``{"kind", "message", "reason"}``),
    as found in error bodies and in streamed ``error`` events."""
    if not isinstance(err, dict):
        return Internal(f"malformed error from the daemon: {err!r}", status=status)
    kind = err.get("kind")
    message = err.get("message")
    if not isinstance(message, str):
        message = f"the daemon answered an error without a message ({err!r})"
    reason = err.get("reason")
    # Unknown reasons read as none (docs/api.md).
    reason = reason if reason in _REASONS else None
    cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        cls = _BY_STATUS.get(status, Internal)
        return cls(message, status=status, reason=reason, kind=kind if isinstance(kind, str) else None)
    return cls(message, status=status, reason=reason)


def error_from_response(status: int, body: bytes) -> HullError:
    """The exception for an error answer: its JSON body when it is one,
    else the class of its status with the body's start as the message."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return error_from_api(doc["error"], status)
    text = body[:500].decode("utf-8", "replace").strip() or f"HTTP status {status}"
    cls = _BY_STATUS.get(status, Internal if status >= 500 else InvalidArgument)
    return cls(f"unexpected answer from the daemon (HTTP {status}): {text}", status=status)
