"""Where the daemon is, and the value forms the CLI accepts.

The endpoint is found as the ``hull`` CLI finds it: an explicit ``url`` or
``socket`` argument first, then ``HULL_URL`` (with ``HULL_TOKEN``), then
``HULL_SOCKET``, then the ``socket`` key of ``/etc/hull/config.toml``, then
``/run/hull/hull.sock``. Unlike the CLI, the SDK never starts a daemon.

Sizes are bytes or strings such as ``"512M"``; durations are seconds or
strings such as ``"30s"``, ``"10m"``, ``"1h30m"`` (or a ``timedelta``),
read as ``hull_api::limits`` reads them.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from dataclasses import dataclass

from .errors import InvalidArgument

DEFAULT_SOCKET = "/run/hull/hull.sock"
HOST_CONFIG = "/etc/hull/config.toml"

Duration = float | int | str | datetime.timedelta
Size = int | str


@dataclass(frozen=True)
class Endpoint:
    """A resolved daemon address: a unix socket path, or a base URL with an
    optional bearer token."""

    socket: str | None = None
    url: str | None = None
    token: str | None = None

    def describe(self) -> str:
        """The address as a person would write it."""
        return self.url if self.url is not None else str(self.socket)


def _config_socket() -> str | None:
    """The ``socket`` key of the host config file, if it has one."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML reader in the standard library
        return None
    try:
        with open(HOST_CONFIG, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, ValueError):
        return None
    s = doc.get("socket")
    return s if isinstance(s, str) and s else None


def resolve_endpoint(
    socket: str | os.PathLike[str] | None = None,
    url: str | None = None,
    token: str | None = None,
) -> Endpoint:
    """The endpoint for the given arguments and the environment."""
    if url is None and socket is None:
        env_url = os.environ.get("HULL_URL")
        if env_url:
            url = env_url
            if token is None:
                token = os.environ.get("HULL_TOKEN") or None
    if url is not None:
        if not re.match(r"^https?://[^/]+/?$", url):
            raise InvalidArgument(f"the daemon URL must be http://HOST:PORT (got {url!r})")
        return Endpoint(url=url.rstrip("/"), token=token.strip() if token else None)
    if socket is None:
        socket = os.environ.get("HULL_SOCKET") or _config_socket() or DEFAULT_SOCKET
    return Endpoint(socket=os.fspath(socket))


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


def parse_size(v: Size, what: str = "size") -> int:
    """Bytes from an int or a string like ``512M`` (K, M, G, T: powers of 1024)."""
    if isinstance(v, bool):
        raise InvalidArgument(f"{what}: expected bytes or a string like 512M, got {v!r}")
    if isinstance(v, int):
        if v < 0:
            raise InvalidArgument(f"{what} must not be negative (got {v})")
        return v
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", v)
        if m and m.group(2).lower() in _SIZE_UNITS:
            n = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
            if math.isfinite(n):
                return int(n)
        raise InvalidArgument(f"invalid {what} {v!r}: use a number with K, M, G or T (e.g. 512M)")
    raise InvalidArgument(f"{what}: expected bytes or a string like 512M, got {type(v).__name__}")


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(v: Duration, what: str = "duration") -> float:
    """Seconds from a number, a ``timedelta`` or a string like ``1h30m``."""
    if isinstance(v, bool):
        raise InvalidArgument(f"{what}: expected seconds or a string like 30s, got {v!r}")
    if isinstance(v, datetime.timedelta):
        secs = v.total_seconds()
    elif isinstance(v, (int, float)):
        secs = float(v)
    elif isinstance(v, str):
        t = v.strip()
        try:
            secs = float(t)
        except ValueError:
            parts = re.findall(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m|h|d)", t)
            if not t or "".join(n + u for n, u in parts) != t:
                raise InvalidArgument(f"invalid {what} {v!r}: use e.g. 30s, 10m, 1h30m") from None
            secs = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise InvalidArgument(f"{what}: expected seconds or a string like 30s, got {type(v).__name__}")
    if not math.isfinite(secs) or secs < 0:
        raise InvalidArgument(f"{what} must be a non-negative number of seconds (got {v!r})")
    return secs


def whole_seconds(v: Duration, what: str) -> int:
    """A duration rounded up to whole seconds (TTLs and idle timeouts)."""
    return int(math.ceil(parse_duration(v, what)))


def millis(v: Duration, what: str) -> int:
    """A duration in whole milliseconds, rounded up (shell and code timeouts)."""
    return int(math.ceil(parse_duration(v, what) * 1000))
