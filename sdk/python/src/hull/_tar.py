"""Directories as tar streams, for ``files.upload`` and ``files.download``.

:func:`pack` writes a local directory into an anonymous temporary file
(entries relative to it, symlinks stored as symlinks, sockets skipped), as
``hull cp`` does. :func:`unpack` reads an archive the daemon sent, which is
hostile input: entries with absolute names or ``..`` are skipped and
reported; an entry whose parent is (or would pass through) a symlink, or a
hard link to anything outside the destination, fails the whole unpack;
devices and FIFOs are skipped; ownership, setuid/setgid/sticky bits and
extended attributes are not restored. It does not rely on
``tarfile``'s extraction filters (absent from Python 3.10.0-3.10.11 and
3.11.0-3.11.3, as in Debian 12).
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from typing import IO

from .errors import InvalidArgument

_COPY_CHUNK = 1 << 20


def pack(local_dir: str | os.PathLike[str]) -> IO[bytes]:
    """A temporary file holding ``local_dir``'s contents as a tar archive,
    positioned at its start (the caller closes it)."""
    tmp = tempfile.TemporaryFile()
    try:
        with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(os.fspath(local_dir), arcname=".", recursive=True)
        tmp.seek(0)
    except BaseException:
        tmp.close()
        raise
    return tmp


def _parts(name: str) -> list[str] | None:
    """The components of an entry name below the destination, or ``None``
    when it is absolute or climbs out with ``..``."""
    if name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


def _real_dir(root: str, parts: list[str], create: bool) -> str:
    """``root/parts...``, each component an existing real directory (made
    when missing and ``create``); a symlink or non-directory on the way is
    an error, so nothing is ever written through a link."""
    path = root
    for p in parts:
        path = os.path.join(path, p)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise InvalidArgument(f"archive entry refers to a missing directory {path}") from None
            os.mkdir(path, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"archive entry would be written through {path}, which is not a directory")
    return path


def _clear(path: str) -> None:
    """Remove a non-directory at ``path`` (an entry replaces it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"archive entry would replace the directory {path}")
    os.unlink(path)


def unpack(fileobj: IO[bytes], target: str | os.PathLike[str]) -> list[str]:
    """Unpack the tar stream ``fileobj`` under ``target`` (created if
    missing). Returns the names of the entries it skipped: those leaving
    it, devices and FIFOs."""
    os.makedirs(target, exist_ok=True)
    root = os.path.realpath(target)
    skipped: list[str] = []
    dirs: list[tuple[str, int, float]] = []
    with tarfile.open(fileobj=fileobj, mode="r|") as tf:
        for m in tf:
            parts = _parts(m.name)
            if parts is None:
                skipped.append(m.name)
                continue
            if not parts:
                # The destination itself: keep its own mode.
                continue
            parent = _real_dir(root, parts[:-1], create=True)
            dest = os.path.join(parent, parts[-1])
            if m.isdir():
                try:
                    st = os.lstat(dest)
                    if not stat.S_ISDIR(st.st_mode):
                        raise InvalidArgument(f"archive directory {m.name} collides with a file at {dest}")
                except FileNotFoundError:
                    os.mkdir(dest, 0o700)
                dirs.append((dest, m.mode & 0o777, m.mtime))
            elif m.isfile():
                _clear(dest)
                src = tf.extractfile(m)
                assert src is not None
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while True:
                        chunk = src.read(_COPY_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                    os.fchmod(out.fileno(), m.mode & 0o777)
                os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)
            elif m.issym():
                _clear(dest)
                os.symlink(m.linkname, dest)
            elif m.islnk():
                lparts = _parts(m.linkname)
                if not lparts:
                    raise InvalidArgument(f"hard link {m.name} points outside the destination ({m.linkname})")
                lsrc = os.path.join(_real_dir(root, lparts[:-1], create=False), lparts[-1])
                st = os.lstat(lsrc)
                if not stat.S_ISREG(st.st_mode):
                    raise InvalidArgument(f"hard link {m.name} must point to a regular file ({m.linkname})")
                _clear(dest)
                os.link(lsrc, dest, follow_symlinks=False)
            else:
                skipped.append(m.name)
    # Directory modes last, deepest first, so a read-only one was still
    # writable while its entries were unpacked.
    for path, mode, mtime in reversed(dirs):
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    return skipped
