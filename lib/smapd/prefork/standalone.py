"""Stand-alone (inetd) mode: one connection on fd 0, as inetd, xinetd or
systemd's Accept=yes hand it to a program.

What it does: tells whether the program was started so
(`stderr_is_socket`), and then points fds 1 and 2 away from the client
(`silence_inetd_output`), so that nothing but the protocol reaches it.

What it trusts: the descriptors it was started with.

What it must never do: write to fd 1 or 2 under inetd.
"""

from __future__ import annotations

import os
import stat


def stderr_is_socket() -> bool:
    """Started by inetd: fds 0, 1 and 2 are the client's connection."""
    try:
        return stat.S_ISSOCK(os.fstat(2).st_mode)
    except OSError:
        return False


def silence_inetd_output(prog: str) -> bool:
    """Under inetd, fds 1 and 2 are the client's connection: nothing but
    the protocol may reach it, not a usage message, not a traceback.
    Point them at /dev/null (fd 0 still holds the connection) and report
    whether we are under inetd; an argument error is then logged."""
    if not stderr_is_socket():
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    return True
