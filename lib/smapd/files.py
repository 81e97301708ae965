"""File helpers shared by every program: the few system calls whose
order decides whether a write survives a crash.

What it does: `fsync_dir()` makes a rename or an unlink in a directory
durable; `read_regular()` reads a file an operator named (a table, a
password file, a spam database, a TCP-wrappers list, a PEM file) without
blocking on a FIFO and without reading more than a bound into memory;
`write_private()` puts a secret at a path as a new file of mode 0600,
atomically, never through a symbolic link.

What it trusts: the caller's path.

What it must never do: block on a FIFO, read an unbounded file, write
through a symbolic link, or swallow an error.
"""

from __future__ import annotations

import errno
import os
import stat


def fsync_dir(directory) -> None:
    """fsync a directory (a path, or an open descriptor of it)."""
    if isinstance(directory, int):
        os.fsync(directory)
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n & ((1 << 20) - 1) else f"{n} bytes"


def read_regular(path, limit: int, follow: bool = True):
    """(bytes, os.stat_result) of the regular file at `path`, at most
    `limit` bytes.  Opened with O_NONBLOCK (a FIFO in its place must not
    hang a daemon's start) and, unless `follow`, O_NOFOLLOW.  OSError
    otherwise: the open's own, EINVAL "not a regular file", EFBIG
    "larger than N"; its strerror is a phrase for "PATH: phrase"."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise OSError(errno.EFBIG, f"larger than {_size(limit)}", os.fspath(path))
    return b"".join(chunks), st


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def existing_kind(path) -> str:
    """What stands at `path`, its links not followed: "missing", "symlink",
    "file" (a regular file) or "other"; OSError when it cannot be told."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def write_private(path: str, data: bytes, owner=None) -> None:
    """Put `data` at `path` as a new file of mode 0600: an O_EXCL temporary
    file beside it, fsync, rename over the name (which never writes
    through a link, whatever stands there), fsync of the directory.
    `owner`: (uid, gid) to give the new file when we may (root)."""
    directory = os.path.dirname(path) or "."
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)   # whatever the umask
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass           # not root: the new file is the operator's own
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)
