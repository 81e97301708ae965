"""The pid file of a daemon (smap -daemon, smapd, ssl-gw -d).

What it does: opens the file (never through a symlink) and takes an
flock on it before the daemon detaches, so that a second daemon with
the same pid file is refused with the first one's pid, whatever a
stale file says; writes the pid once the daemon has its final pid;
removes the file at stop.  The lock lives as long as the daemon holds
the descriptor (children close their copy at once).

What it trusts: the path the operator gave.

What it must never do: follow a symlink, or remove a pid file another
running daemon holds.
"""

from __future__ import annotations

import errno
import fcntl
import os


class PidFile:
    def __init__(self, path: str):
        self.path = path
        self.fd = None

    def lock(self) -> None:
        """OSError (with the text to show) when another daemon holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise OSError(e.errno, f"cannot open the pid file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise OSError(errno.EEXIST, f"already running: the pid file {self.path} is locked "
                                        f"by pid {other or '?'}") from None
        self.fd = fd

    def write(self, pid: int = None) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid or os.getpid()}\n".encode(), 0)

    def remove(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def pidfile_path(settings, option=None, detached=True):
    """The pid file of a daemon: --pidfile, else the table's `pidfile`;
    the default (/var/run/NAME.pid) only when it detaches, so that a
    foreground run by an ordinary user needs no /var/run."""
    if option:
        return option
    if detached or settings.is_set("pidfile"):
        return settings["pidfile"]
    return None
