"""`smapctl queue`, `requeue` and `flush`: the operator's view of the spool.

What it does: lists the committed messages of smapd's spool and of its
baddir (id, age, size, sender, recipients, next attempt, last error);
moves refused messages from baddir back into the spool; makes every
deferred message due now and wakes smapd through the `.trigger` FIFO.

What it trusts: smapd's table for where the spool is; nothing in the
spool files (spool.read_envelope checks them).

What it must never do: touch a message smapd is delivering (requeue and
flush take the fcntl lock first and skip a locked file), or lose one: a
requeue is a rename within one file system.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from smapd.table import keywords
from smapd import spool
from smapd.table.netperm import Table
from smapd.spool import READY_PREFIX, TRIGGER, poke_trigger, queue_id_time


def settings(path: str, name: str):
    return keywords.load_or_die(Table.read(path), keywords.SMAPD, (name,)).settings


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _entries(directory: str):
    for name in spool.list_spool(directory):
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise spool.Corrupt(f"not a regular file (mode {st.st_mode:o})")
            # Never through a symlink, never blocking on a FIFO: root runs this.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                env = spool.read_envelope(f)
            problem = None
        except FileNotFoundError:
            continue
        except (OSError, spool.Corrupt) as e:
            env, problem = None, str(e)
        yield name[len(READY_PREFIX):], path, st, env, problem


def list_queue(s, out) -> int:
    now = time.time()
    for title, directory in (("spool", s["directory"]), ("bad", s["baddir"])):
        if title == "bad" and os.path.islink(directory):
            print(f"bad {directory}: a symbolic link, not followed (smapd refuses it too)", file=out)
            continue
        rows = list(_entries(directory))
        print(f"{title} {directory}: {len(rows)} message{'' if len(rows) == 1 else 's'}", file=out)
        for qid, path, st, env, problem in rows:
            born = queue_id_time(qid) or st.st_ctime
            due = st.st_mtime
            when = "now" if due <= now else f"in {_age(due - now)}"
            if title == "bad":
                when = "never (bad)"
            if env is None:
                print(f"  {qid}  {st.st_size}  {_age(now - born)}  unreadable: {problem}", file=out)
                continue
            pending = env.pending
            print(f"  {qid}  size={st.st_size}  age={_age(now - born)}  next={when}  from=<{env.sender}>  "
                  f"rcpt={len(pending)}/{len(env.recipients)} pending", file=out)
            for r in pending[:10]:
                print(f"      to=<{r}>", file=out)
            if len(pending) > 10:
                print(f"      ... and {len(pending) - 10} more", file=out)
            error = spool.get_error(path)
            if error:
                print(f"      last error: {error}", file=out)
    return 0


def _locked_do(path: str, action) -> bool:
    """Run action() holding the file's lock; False if smapd holds it."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        action(fd)
        return True
    finally:
        os.close(fd)


def requeue(s, ids, out, err) -> int:
    bad, spool_dir = s["baddir"], s["directory"]
    if os.path.islink(bad):
        # Whoever runs as smap's user could have planted it: files from
        # wherever it points would be linked into the spool, as root.
        print(f"smapctl: {bad} is a symbolic link: not followed, nothing requeued", file=err)
        return 1
    names = spool.list_spool(bad)
    if ids != ["all"]:
        wanted = {READY_PREFIX + i if not i.startswith(READY_PREFIX) else i for i in ids}
        missing = sorted(wanted - set(names))
        for m in missing:
            print(f"smapctl: no {m[len(READY_PREFIX):]} in {bad}", file=err)
        names = sorted(wanted & set(names))
    now = time.time()
    for name in names:
        src, dst = os.path.join(bad, name), os.path.join(spool_dir, name)

        def move(fd, src=src, dst=dst):
            spool.clear_error(fd)
            os.utime(fd, (now, now))
            os.link(src, dst)  # never replaces a file of that name in the spool
            os.unlink(src)
        try:
            moved = _locked_do(src, move)
        except OSError as e:
            print(f"smapctl: {name}: {e.strerror}", file=err)
            return 1
        if not moved:
            print(f"smapctl: {name[len(READY_PREFIX):]} is locked by another process; not requeued", file=err)
            continue
        print(f"requeued {name[len(READY_PREFIX):]}", file=out)
    poke_trigger(spool_dir)
    return 1 if ids != ["all"] and missing else 0


def flush(s, out, err) -> int:
    spool_dir = s["directory"]
    now = time.time()
    made_due = 0
    for name in spool.list_spool(spool_dir):
        path = os.path.join(spool_dir, name)
        try:
            if os.stat(path).st_mtime > now and _locked_do(path, lambda fd: os.utime(fd, (now, now))):
                made_due += 1
        except OSError:
            continue
    listening = _trigger_has_reader(spool_dir)
    poke_trigger(spool_dir)
    print(f"{made_due} deferred message{'' if made_due == 1 else 's'} made due; "
          + ("smapd woken" if listening else "no smapd is listening on " + os.path.join(spool_dir, TRIGGER)),
          file=out)
    return 0 if listening else 1


def _trigger_has_reader(spool_dir: str) -> bool:
    try:
        fd = os.open(os.path.join(spool_dir, TRIGGER), os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # ENXIO: a FIFO without a reader; ENOENT: none; ELOOP: a symlink
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
