"""Logging for every program of the suite: syslog, or stderr with -d.

What it does: `setup()` sends the `smapd` logger to syslog (facility mail
unless configured otherwise) through a socket opened at once, so that it
keeps working after chroot; with `debug` it logs to stderr instead.
Every log line is `PROGRAM[PID]: text`, FWTK style.

What it trusts: nothing a peer sends.  Every argument interpolated into a
log line (`log.info("from=%s", sender)`) is passed through `sanitize()`:
control characters, bidirectional overrides and backslashes are escaped
and the text is capped in length, so a client can neither forge a log
line nor flood one.  The format string itself is always the program's
own constant and never contains peer text.

What it must never do: raise because a log line could not be written, or
let a newline from outside reach the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import sys
import unicodedata

#: The longest piece of peer text kept in one log line (after escaping).
MAX_PEER_TEXT = 256
#: The longest whole log line.
MAX_LINE = 2048

SYSLOG_SOCKETS = ("/dev/log", "/var/run/log", "/var/run/syslog")

logger = logging.getLogger("smapd")


def _escape(ch: str) -> str:
    o = ord(ch)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def _unsafe(ch: str) -> bool:
    o = ord(ch)
    if o < 0x20 or o == 0x7f or 0x80 <= o < 0xa0:
        return True
    # Format (bidi overrides, zero-width), surrogates from undecodable
    # bytes, line/paragraph separators: all can make a line lie.
    return unicodedata.category(ch) in ("Cf", "Cs", "Zl", "Zp", "Co", "Cn")


def sanitize(value, limit: int = MAX_PEER_TEXT, backslash: bool = True) -> str:
    """Peer text made safe for a log line: escaped and at most `limit`
    characters (a cut is marked with '...').  A backslash is doubled so
    that an escape in the output always comes from here, never from the
    peer (`backslash=False` for text already sanitised piecewise)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "backslashreplace")
    elif not isinstance(value, str):
        value = str(value)
    # Most text is printable ASCII (0x20-0x7e: nothing to escape), and
    # every log line passes here: the character loop below cost a mail
    # session more than its three syslog records' formatting otherwise.
    if len(value) <= limit and value.isascii() and value.isprintable() and not (backslash and "\\" in value):
        return value
    out, size = [], 0
    for ch in value:
        piece = "\\\\" if (ch == "\\" and backslash) else (_escape(ch) if _unsafe(ch) else ch)
        size += len(piece)
        if size > limit:
            out.append("...")
            break
        out.append(piece)
    return "".join(out)


class _Formatter(logging.Formatter):
    """`program[pid]: message`, with every argument sanitised."""

    def __init__(self, program: str, stamp: bool):
        super().__init__()
        self.program, self.stamp = program, stamp

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, dict):
            args = {k: _clean_arg(v) for k, v in args.items()}
        elif args:
            args = tuple(_clean_arg(a) for a in args)
        try:
            text = record.msg % args if args else str(record.msg)
        except (TypeError, ValueError):
            text = f"{record.msg!r} {args!r}"
        text = sanitize(text, MAX_LINE, backslash=False)
        if record.exc_info and record.levelno >= logging.ERROR:
            text += " (" + sanitize(repr(record.exc_info[1]), MAX_PEER_TEXT) + ")"
        line = f"{self.program}[{os.getpid()}]: {text}"
        if self.stamp:
            line = f"{self.formatTime(record, '%b %d %H:%M:%S')} {line}"
        return line


def _clean_arg(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v  # numbers keep %d formatting
    return sanitize(v)


class _SafeSyslogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record):
        # A full or vanished syslog socket must not kill a mail session.
        pass


def _is_socket(stream) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(stream.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):
        return False


def find_syslog_socket():
    for path in SYSLOG_SOCKETS:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


def lost_when_detached(log: logging.Logger) -> bool:
    """Whether `log` writes to stderr, which a detached daemon points at
    /dev/null: it then has nowhere to log, and must not detach."""
    return any(isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in log.handlers)


REFUSE_DETACH = ("no syslog socket to log to: refusing to detach and log nowhere; "
                 "start the syslog daemon, name its socket with log-socket, or stay in the foreground "
                 "(-f logs to stderr while there is no syslog)")


def setup(program: str, facility: str = "mail", debug: bool = False,
          socket_path: str = None, stream=None, logfile=None) -> logging.Logger:
    """Point the suite's logger at syslog (or stderr when `debug`, or the
    open file `logfile`: ssl-gw's -o, with time stamps).

    The syslog socket is connected here, before any chroot.  Where there
    is no syslog socket the lines go to stderr, with one line saying so.
    """
    # What no line of ours shows (the caller's file and line, thread and
    # process names): the logging HOWTO's "Optimization"; a record per
    # line otherwise walks the stack to find its caller.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if logfile is not None:
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        logger.propagate = False
        handler = logging.StreamHandler(logfile)
        handler.setFormatter(_Formatter(program, stamp=True))
        logger.addHandler(handler)
        return logger
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    handler = None
    note = None
    if not debug:
        path = socket_path or find_syslog_socket()
        if path:
            fac = logging.handlers.SysLogHandler.facility_names[facility]
            handler = _SafeSyslogHandler(address=path, facility=fac)
            sock = getattr(handler, "socket", None)
            if sock is None or sock.fileno() < 0:
                # The handler swallows the failure and would retry at every
                # line, which a chrooted process cannot: say so now.
                handler.close()
                handler = None
                note = f"cannot connect to syslog at {path}; logging to stderr"
        else:
            note = "no syslog socket (" + ", ".join(SYSLOG_SOCKETS) + "); logging to stderr"
    if handler is None:
        if stream is None and not debug and _is_socket(sys.stderr):
            # Under inetd stderr is the client's connection: a log line
            # there would be sent to the peer.  Better lost than leaked.
            handler = logging.NullHandler()
            note = None
        else:
            handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_Formatter(program, stamp=not debug))
    else:
        handler.setFormatter(_Formatter(program, stamp=False))
    logger.addHandler(handler)
    if note:
        logger.warning("%s", note)
    return logger
