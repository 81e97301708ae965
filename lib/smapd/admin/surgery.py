"""`smapctl hold`, `release`, `delete`, `requeue` and `flush`: changing the queue.

What it does: hold moves a message from the spool into the holddir,
where smapd never looks (it lists the spool directory only, so a held
message costs its scans nothing); release and requeue move it back, due
now; requeue also brings a message back from bad/, or makes one in the
spool due now with its last error forgotten; flush makes messages due
now; delete removes a message from wherever it is.  Then smapd is woken
through the `.trigger` FIFO.  Each change is logged, on smapd's syslog
facility and socket, with the operator who asked and the reason given.

Every change is made holding the file's fcntl lock, the one a delivery
child of smapd holds from the moment it claims a file until the file is
handed off, deferred or bounced (handoff/deliver.py: claim).  An
operation on a message being handed off therefore waits (up to `--wait`
seconds) and then acts on what the hand-off left: nothing when the file
was delivered, the file in bad/ when it was refused there.  A move is a
link and an unlink on one file system, each directory synced; a delete
is one unlink: a message is never half in two places, nor half gone.

What it trusts: the operator who runs it; smapd's table for where the
directories are; the names it is given are only queue ids (a `/` or a
dot-name matches nothing).

What it must never do: act on a file without its lock; follow a
symbolic link (root runs this, and whoever runs as smap's user can
plant one in the spool); replace a file of the same name; lose a
message it was only asked to move.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import signal
import stat
import sys
import time

from smapd import spool
from smapd.files import fsync_dir
from smapd.admin import queue
from smapd.spool import TRIGGER, poke_trigger


class Busy(Exception):
    """The lock was not granted within the wait."""


def _lock(fd: int, wait: float) -> None:
    """The exclusive fcntl lock of `fd`, waiting up to `wait` seconds for
    the delivery child that holds it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        if wait <= 0:
            raise Busy() from None

    def expired(*_):
        raise Busy()
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, wait)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # a blocking wait, ended by the alarm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def locked(path: str, wait: float):
    """The locked descriptor of the file at `path`; None when, once the
    lock was granted, the name no longer holds that file (handed off or
    moved while we waited)."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        _lock(fd, wait)
        try:
            st, mine = os.lstat(path), os.fstat(fd)
            same = (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        yield fd if same else None
    finally:
        os.close(fd)  # drops the lock


def open_holddir(s, create: bool) -> int:
    """A descriptor of the holddir, never through a symbolic link, on the
    spool's file system; made (0700, the operator's) when `create`."""
    path = s["holddir"]
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP) and os.path.islink(path):
            raise OSError(e.errno, f"{path} is a symbolic link (never followed)") from None
        raise OSError(e.errno, f"{path}: {e.strerror}") from None
    if os.fstat(fd).st_dev != os.stat(s["directory"]).st_dev:
        os.close(fd)
        raise OSError(errno.EXDEV, f"{path} is not on the file system of the spool {s['directory']}")
    return fd


def _dir_fd(s, place: str, create: bool = False) -> int:
    if place == "hold":
        return open_holddir(s, create)
    path = queue.directories(s)[place]
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"{path}: {e.strerror}" + (" (a symbolic link, never followed)"
                                                          if e.errno == errno.ELOOP else "")) from None


def _move(s, m: queue.Message, to: str) -> None:
    """`m` (locked by the caller) from its directory into `to`'s: link,
    unlink, both directories synced; never replaces a file there."""
    src, dst = _dir_fd(s, m.place), _dir_fd(s, to, create=True)
    name = os.path.basename(m.path)
    try:
        os.link(name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
        fsync_dir(dst)
        os.unlink(name, dir_fd=src)
        fsync_dir(src)
    finally:
        os.close(src)
        os.close(dst)


def _due_now(fd: int) -> None:
    now = time.time()
    os.utime(fd, (now, now))  # smapd's next attempt is the file's mtime


# What each command may act on, and what it does there: (place) ->
# (what it does to the locked file, the word for the output and the log).
def _hold(s, m, fd):
    _move(s, m, "hold")
    return "held"


def _release(s, m, fd):
    _due_now(fd)
    _move(s, m, "spool")
    return "released"


def _requeue(s, m, fd):
    spool.clear_error(fd)
    _due_now(fd)
    if m.place != "spool":
        _move(s, m, "spool")
    return "requeued"


def _flush(s, m, fd):
    _due_now(fd)
    return "made due"


def _delete(s, m, fd):
    d = _dir_fd(s, m.place)
    try:
        os.unlink(os.path.basename(m.path), dir_fd=d)
        fsync_dir(d)
    finally:
        os.close(d)
    return "deleted"


COMMANDS = {
    "hold": ({"spool": _hold}, "held"),
    "release": ({"hold": _release}, "released"),
    "requeue": ({"spool": _requeue, "hold": _requeue, "bad": _requeue}, "requeued"),
    "flush": ({"spool": _flush}, "made due"),
    "delete": ({"spool": _delete, "hold": _delete, "bad": _delete}, "deleted"),
}
#: Where `all` takes its messages from, for the commands that take it.
ALL_FROM = {"hold": "spool", "release": "hold", "requeue": "bad", "flush": "spool"}


def expand_ids(ids, stdin=None) -> list:
    """The ids as given, `-` replaced by the ids read from stdin (any
    white space between them), duplicates dropped."""
    out = []
    for i in ids:
        if i == "-":
            out += (stdin or sys.stdin).read().split()
        else:
            out.append(i)
    return list(dict.fromkeys(queue.bare_id(i) for i in out))


def operator() -> str:
    """Who asks, for the log: the user, and sudo's caller when there is one."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    who = f"{name} (uid {uid})"
    if os.environ.get("SUDO_USER"):
        who += f", by sudo for {os.environ['SUDO_USER']}"
    return who


def run(command: str, s, ids, out, err, wait: float = None, reason: str = None, logger=None) -> int:
    """Carry out `command` on each id; 0 when every one was done."""
    actions, done_word = COMMANDS[command]
    wait = s["sendmail-timeout"] if wait is None else wait
    if ids == ["all"] and command in ALL_FROM:
        place = ALL_FROM[command]
        directory = queue.directories(s)[place]
        if place != "spool" and os.path.islink(directory):
            # Whoever runs as smap's user could have planted it: files from
            # wherever it points would be linked into the spool, as root.
            print(f"smapctl: {directory} is a symbolic link: not followed, nothing {done_word}", file=err)
            return 1
        targets = [m.id for m in queue.in_place(place, directory)]
    else:
        targets = ids
    status = 0
    who = operator()
    for qid in targets:
        try:
            word, m = _one(s, qid, actions, wait)
        except Busy:
            print(f"smapctl: {qid} is still locked by a hand-off after {wait:g}s; not {done_word}", file=err)
            status = 1
            continue
        except OSError as e:
            print(f"smapctl: {qid}: {e.strerror or e}", file=err)
            status = 1
            continue
        if isinstance(word, _Refusal):
            print(f"smapctl: {word}", file=err)
            status = 1
            continue
        print(f"{word} {qid}", file=out)
        if logger is not None:
            logger.info("id=%s %s by %s; it was in %s%s", qid, word, who, m.place, f": {reason}" if reason else "")
    if command != "delete":
        poke_trigger(s["directory"])
    return status


class _Refusal(str):
    """Why a command does not apply to a message (not an error of ours)."""


def _one(s, qid: str, actions: dict, wait: float):
    """(what was done, the message) or (_Refusal, message).  A message that
    moved while we waited for its lock is looked for again: it may be in
    bad/ now, or gone."""
    for _ in range(3):
        m = queue.find(s, qid)
        if m is None:
            return _Refusal(f"no {qid} in the spool, hold or bad directories (delivered, or never there)"), None
        if m.place not in actions:
            return _Refusal(f"{qid} is in {m.place} ({m.path}): " + _why_not(m.place, actions)), m
        try:
            with locked(m.path, wait) as fd:
                if fd is None:
                    continue  # handed off or moved while we waited: look again
                return actions[m.place](s, m, fd), m
        except FileNotFoundError:
            continue
    return _Refusal(f"{qid} keeps moving; try again"), None


def _why_not(place: str, actions: dict) -> str:
    if place == "hold":
        return "held; smapctl release it first"
    if place == "bad":
        return "refused by smapd; smapctl requeue it first"
    return "not " + " or ".join(sorted(actions))


def flush_all(s, out, err) -> int:
    """Every deferred message of the spool due now, and smapd woken."""
    spool_dir = s["directory"]
    now = time.time()
    made_due = 0
    for m in queue.in_place("spool", spool_dir):
        if m.st.st_mtime <= now:
            continue
        try:
            with locked(m.path, 0) as fd:
                if fd is not None:
                    _due_now(fd)
                    made_due += 1
        except (Busy, OSError):
            continue  # being handed off right now: due anyway
    listening = trigger_has_reader(spool_dir)
    poke_trigger(spool_dir)
    print(f"{made_due} deferred message{'' if made_due == 1 else 's'} made due; "
          + ("smapd woken" if listening else "no smapd is listening on " + os.path.join(spool_dir, TRIGGER)),
          file=out)
    return 0 if listening else 1


def trigger_has_reader(spool_dir: str) -> bool:
    try:
        fd = os.open(os.path.join(spool_dir, TRIGGER), os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # ENXIO: a FIFO without a reader; ENOENT: none; ELOOP: a symlink
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    finally:
        os.close(fd)

