"""File helpers shared by every program: the few system calls whose
order decides whether a write survives a crash.

What it does: `fsync_dir()` makes a rename or an unlink in a directory
durable.

What it trusts: the caller's path.

What it must never do: follow a symbolic link where the caller asked for
the directory itself, or swallow an error.
"""

from __future__ import annotations

import os


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
