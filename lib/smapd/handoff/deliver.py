"""smapd's hand-off of one spool file to the real MTA.

What it does: `deliver(name, ctx)` claims `sma<id>` with a non-blocking
fcntl lock (a locked file belongs to another smapd and is skipped),
checks it is still the file it opened and that it is due, reads its
envelope, re-checks every address, and runs

    [sendmail..., "-oi", "-f", SENDER, "--", RCPT...]

with no shell and the message on stdin, at most BATCH recipients at a
time.  The exit status decides (DESIGN.md section 6):

    0                        handed off: the batch's RCPT lines become
                             SENT lines (in place) when more batches
                             remain; the file is unlinked, then unlocked,
                             when none remains
    67 EX_NOUSER             done: the MTA has bounced it
    69 71 72 74 75 77        (EX_UNAVAILABLE, EX_OSERR, EX_OSFILE,
    a signal, the time-out   EX_IOERR, EX_TEMPFAIL, EX_NOPERM) temporary:
                             retried later, the next attempt being the
                             file's mtime
    anything else, a corrupt file, a refused sender
                             moved to baddir with a log line saying why

With `mta` set, `_deliver_smtp()` sends the file by SMTP or LMTP instead
(smtp_client.py), and each recipient's reply decides for it: 2xx SENT
(or the file unlinked), 5xx a bounce, 4xx a retry of the file;
`deliver_all()` sends a child's files through one connection, and syncs
the spool directory once after them, not after each unlink: only a crash
of the host in between (smapd's death does not undo an unlink) brings a
handed-off file back, to be handed off again, never lost.

A recipient whose address mailbox.py refuses (only a planted file, or a
grammar that changed between smap's RCPT and now, has one) is bounced
alone: an RFC 3464 report to the sender goes into the spool (dsn.py),
its RCPT line becomes SENT, and the other recipients are handed off.

What it trusts: the MTA's exit status; nothing in the spool file, which
may be corrupt or planted (spool.read_envelope says what is wrong).

What it must never do: let an address become an option or a shell word,
deliver a file it does not hold the lock on, delete a file that was not
handed off without moving it to baddir and logging why, or hand a
recipient off twice when its SENT line could be written first.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field

from smapd import mailbox, spool
from smapd.files import fsync_dir
from smapd.handoff import dsn
from smapd.handoff.smtp_client import MtaSession, MtaUnavailable
from smapd.spool import queue_id_time, set_error

log = logging.getLogger("smapd")

#: Recipients per sendmail run; SENT lines record each finished batch.
BATCH = 100
#: The shortest wait before a retry.
MIN_RETRY = 60
#: sysexits(3) values that mean "try again later".
TEMPORARY = {69, 71, 72, 74, 75, 77}
EX_NOUSER = 67
#: run_sendmail's status when the batch's addresses do not fit in an
#: argv (E2BIG: only a planted file has such addresses): no later
#: attempt can do better, so the file goes to baddir.
ARGV_TOO_LONG = -1
@dataclass
class DeliverySettings:
    sendmail: tuple            # the command and its fixed arguments
    baddir: str
    retry_max: int = 3600
    timeout: float = 600
    directory: str = "."       # the spool (smapd's working directory)
    hostname: str = field(default_factory=socket.gethostname)   # the Reporting-MTA of bounces, EHLO's name
    mta: object = None         # keywords.Mta: hand off by SMTP/LMTP instead of sendmail
    #: The open connection to `mta`, kept by deliver_all() from one file
    #: to the next (a child's own: never shared between processes).
    session: object = field(default=None, repr=False, compare=False)
    #: Files unlinked since the spool directory was last synced: the
    #: sync is once per child (deliver_all), not once per file.
    unsynced: bool = field(default=False, repr=False, compare=False)


def address_problem(addr: str, sender: bool = False):
    """Why an address from a spool file may not reach the MTA: smap's own
    grammar (mailbox.py), so that nothing smap accepted is refused here.
    Each address is one argv element after `--`: a blank inside a quoted
    local part is no separator."""
    problem = mailbox.problem(addr, sender)
    return f"address <{addr}>: {problem}" if problem else None


def fail_recipients(c, ctx: DeliverySettings, env, failures) -> None:
    """Bounce `failures` ((recipient, enhanced status, reply) each) to the
    sender, then record them as done (SENT), so that the others are
    handed off and these are never tried again.  An OSError (the bounce
    could not be queued, or the SENT lines written) leaves the file for
    a retry: nothing is lost."""
    headers = dsn.original_headers(c.ro, env.body_offset)
    bounce = dsn.queue_bounce(ctx.directory, ctx.hostname, c.id, env.sender, failures, headers,
                              queue_id_time(c.id) or time.time())
    for r, _status, why in failures:
        told = f"bounced to <{env.sender}> (DSN id={bounce})" if bounce else "no bounce (null sender)"
        log.warning("id=%s from=<%s> to=<%s> failed: %s; %s", c.id, env.sender, r, why, told)
    spool.mark_sent(c.fd, env, [r for r, _status, _why in failures])


def next_delay(queue_id: str, st, now: float, retry_max: int) -> float:
    """Exponential back-off kept without any state but the file: wait as
    long as the message is old (so the waits double), at least MIN_RETRY,
    at most retry_max."""
    birth = queue_id_time(queue_id)
    if birth is None or birth > now:
        birth = st.st_ctime
    return float(min(retry_max, max(MIN_RETRY, now - birth)))


class Claim:
    """A locked spool file and what is known of it."""

    def __init__(self, name: str, fd: int, ro: int):
        self.name, self.fd, self.ro = name, fd, ro
        self.id = name[len(spool.READY_PREFIX):]

    def close(self):
        # Only now, when all is done: closing either drops the lock.
        os.close(self.ro)
        os.close(self.fd)


class NotAFile(Exception):
    """An `sma*` name that is no regular file (planted, or a mistake)."""


def claim(name: str):
    """Lock `name` or return None (gone, locked by another smapd, replaced
    since we opened it).  NotAFile for a symlink, directory, FIFO..."""
    try:
        st = os.lstat(name)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise NotAFile(f"not a regular file (mode {st.st_mode:o})")
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise NotAFile(f"cannot open it: {e.strerror}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        same = os.lstat(name).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same or not stat.S_ISREG(os.fstat(fd).st_mode):  # delivered by another smapd meanwhile
        os.close(fd)
        return None
    # A read-only descriptor for the MTA's stdin, opened now and closed
    # with the claim (closing it earlier would drop the lock).
    try:
        ro = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        os.close(fd)
        return None
    if os.fstat(ro).st_ino != os.fstat(fd).st_ino:
        os.close(ro)
        os.close(fd)
        return None
    return Claim(name, fd, ro)


def open_baddir(baddir: str) -> int:
    """A descriptor of `baddir`, opened without following a symbolic link
    in its last component: whoever runs as smap's jailed uid can write the
    spool, and so replace bad/ by a link out of it, where smapd (not
    jailed) would then put files of the attacker's choosing.  Must be a
    directory on the spool's file system (a move is a link and an
    unlink).  Opened afresh for each move, so a swap after the start is
    caught too.  An OSError says why not."""
    try:
        fd = os.open(baddir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP) and os.path.islink(baddir):
            raise OSError(e.errno, "it is a symbolic link (never followed)") from None
        raise
    if os.fstat(fd).st_dev != os.stat(".").st_dev:
        os.close(fd)
        raise OSError(errno.EXDEV, "it is not on the spool's file system")
    return fd


def _move(src: str, baddir: str) -> str:
    """Move `src` (a name in the spool, smapd's working directory) into
    `baddir` without replacing anything there (link, then unlink: an
    existing name gets a suffix .1, .2...); returns the new path.  Every
    step is relative to the two directories' descriptors, never through
    a path that could have been swapped meanwhile."""
    dst = open_baddir(baddir)
    try:
        name = os.path.basename(src)
        target = name
        for n in range(100):
            try:
                st = os.lstat(src)
                if stat.S_ISDIR(st.st_mode):
                    _lexists_in(dst, target)
                    os.rename(src, target, dst_dir_fd=dst)  # a directory cannot be linked
                    break
                try:
                    os.link(src, target, dst_dir_fd=dst, follow_symlinks=False)
                except PermissionError:
                    # protected_hardlinks: a file of another owner cannot be
                    # linked; rename it, having made sure the name is free.
                    _lexists_in(dst, target)
                    os.rename(src, target, dst_dir_fd=dst)
                    break
                os.unlink(src)
                break
            except FileExistsError:
                target = f"{name}.{n + 1}"
        else:
            raise OSError(errno.EEXIST, "too many files of that name", os.path.join(baddir, target))
        fsync_dir(dst)
        fsync_dir(".")
    finally:
        os.close(dst)
    return os.path.join(baddir, target)


def _lexists_in(dir_fd: int, name: str) -> None:
    """FileExistsError when `name` exists in the directory `dir_fd`."""
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    raise FileExistsError(errno.EEXIST, "exists", name)


def move_to_bad(c: Claim, ctx: DeliverySettings, why: str) -> None:
    set_error(c.fd, why)
    try:
        target = _move(c.name, ctx.baddir)
    except OSError as e:
        log.error("id=%s cannot move to %s: %s; kept in the spool (%s)", c.id, ctx.baddir, e.strerror, why)
        reschedule(c, ctx, f"{why}; and moving it to {ctx.baddir} failed: {e.strerror}")
        return
    log.warning("id=%s moved to %s: %s", c.id, target, why)


def move_name_to_bad(name: str, ctx: DeliverySettings, why: str) -> bool:
    """For what cannot be claimed (a symlink, a directory, a FIFO): moved
    by name, never opened.  False when it could not be moved."""
    qid = name[len(spool.READY_PREFIX):]
    try:
        target = _move(name, ctx.baddir)
    except OSError as e:
        log.error("id=%s cannot move to %s: %s (%s)", qid, ctx.baddir, e.strerror, why)
        return False
    log.warning("id=%s moved to %s: %s", qid, target, why)
    return True


def reschedule(c: Claim, ctx: DeliverySettings, why: str) -> None:
    now = time.time()
    st = os.fstat(c.fd)
    delay = next_delay(c.id, st, now, ctx.retry_max)
    set_error(c.fd, why)
    os.utime(c.fd, (now, now + delay))
    log.info("id=%s deferred: %s; next attempt in %ds", c.id, why, delay)


#: The end of the MTA's stderr kept for the log line.
STDERR_KEPT = 8192


def _wait_mta(proc, timeout: float):
    """The MTA's stderr (its end) once it has exited, or None when it
    was killed at the time-out.  Its exit is what counts: a process it
    left behind may hold its stderr open for much longer (a background
    delivery), and waiting for that would hold the claim, then call a
    delivered message timed out and deliver it again."""
    deadline = time.monotonic() + timeout
    err = bytearray()
    pipe = proc.stderr
    try:
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
                return None
            if pipe is None:
                try:
                    proc.wait(timeout=min(left, 1.0))
                except subprocess.TimeoutExpired:
                    pass
                continue
            if select.select([pipe], [], [], min(left, 1.0))[0]:
                chunk = os.read(pipe.fileno(), 4096)
                if chunk:
                    err += chunk
                    del err[:-STDERR_KEPT]
                else:
                    pipe.close()  # end of its stderr; its exit is still to come
                    pipe = None
        for _ in range(64):  # what it wrote before it exited (a leftover may go on writing)
            if pipe is None or not select.select([pipe], [], [], 0)[0]:
                break
            chunk = os.read(pipe.fileno(), 4096)
            if not chunk:
                break
            err += chunk
            del err[:-STDERR_KEPT]
        return bytes(err)
    finally:
        if pipe is not None:
            pipe.close()


def run_sendmail(ctx: DeliverySettings, sender: str, rcpts, fd: int, offset: int):
    """(status, reason): status 0 or a sysexits value, None for a signal
    or the time-out (both temporary), or ARGV_TOO_LONG.  The MTA reads the message
    from `fd` (the claim's read-only descriptor) from `offset` on."""
    argv = [*ctx.sendmail, "-oi", "-f", sender, "--", *rcpts]
    os.lseek(fd, offset, os.SEEK_SET)
    try:
        proc = subprocess.Popen(argv, stdin=fd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
    except OSError as e:
        return ARGV_TOO_LONG if e.errno == errno.E2BIG else None, f"cannot run {ctx.sendmail[0]}: {e.strerror}"
    err = _wait_mta(proc, ctx.timeout)
    if err is None:
        return None, f"{ctx.sendmail[0]} timed out after {ctx.timeout:g}s and was killed"
    text = err.decode("utf-8", "replace").strip().splitlines()
    said = f": {text[-1][:200]}" if text else ""
    if proc.returncode < 0:
        return None, f"{ctx.sendmail[0]} killed by signal {-proc.returncode}{said}"
    return proc.returncode, f"{ctx.sendmail[0]} exited {proc.returncode}{said}"


#: Exit statuses of a delivery child, for the runner: done; skipped (try
#: again after a short while); stuck (could not even be moved to bad/).
DONE, SKIPPED, STUCK = 0, 10, 11


def deliver(name: str, ctx: DeliverySettings) -> int:
    """Hand one spool file off.  Returns DONE (delivered, deferred, moved
    to bad/), SKIPPED (locked by another process, not due, gone) or STUCK
    (not a file, and it could not be moved to bad/)."""
    try:
        c = claim(name)
    except NotAFile as e:
        return DONE if move_name_to_bad(name, ctx, f"refused: {e}") else STUCK
    if c is None:
        return SKIPPED
    try:
        return _deliver(c, ctx)
    finally:
        c.close()


def deliver_all(names, ctx: DeliverySettings, starting=None) -> int:
    """Hand several spool files off in turn, through one connection to
    `mta` (a new transaction per file); `starting(i, name)` is called
    before each (the process title).  Returns the worst outcome:
    STUCK, else SKIPPED, else DONE."""
    worst = DONE
    try:
        for i, name in enumerate(names):
            if starting is not None:
                starting(i, name)
            code = deliver(name, ctx)
            if code == STUCK or (code == SKIPPED and worst == DONE):
                worst = code
    finally:
        if ctx.session is not None:
            ctx.session.quit()
            ctx.session = None
        if ctx.unsynced:
            sync_unlinks(ctx)
    return worst


def sync_unlinks(ctx: DeliverySettings) -> None:
    """Make the child's unlinks durable, once for all its files.  Until
    then a crash of the host (not of smapd: the kernel keeps an unlink)
    brings a handed-off file back, to be handed off again: the hand-off
    is at least once.  Nothing is lost either way."""
    ctx.unsynced = False
    try:
        fsync_dir(ctx.directory)
    except OSError as e:
        log.error("syncing the spool directory after hand-offs failed: %s", e.strerror)


def _deliver(c: Claim, ctx: DeliverySettings) -> int:
    if os.fstat(c.fd).st_mtime > time.time() + 1:
        return SKIPPED  # rescheduled by another smapd meanwhile
    # Never close another descriptor of a locked file: closing any of
    # them drops the process's fcntl lock (POSIX).  Hence closefd=False
    # here, and the claim's read-only descriptor as the MTA's stdin below.
    with open(c.fd, "rb", closefd=False) as f:
        try:
            env = spool.read_envelope(f)
        except spool.Corrupt as e:
            move_to_bad(c, ctx, f"corrupt spool file: {e}")
            return DONE
    problem = address_problem(env.sender, sender=True)
    if problem:
        move_to_bad(c, ctx, f"refused: sender {problem}")
        return DONE
    # Each recipient once: a repeated RCPT line must not hand a recipient
    # off again in a later batch, after its SENT lines were written.
    pending = list(dict.fromkeys(env.pending))
    refused = {r: p for r in pending if (p := address_problem(r))}
    if refused:
        try:
            fail_recipients(c, ctx, env, [(r, "5.1.3", f"553 5.1.3 refused by smapd: {why}")
                                          for r, why in refused.items()])
        except OSError as e:
            reschedule(c, ctx, f"bouncing {len(refused)} refused recipients failed: {e.strerror}")
            return DONE
        pending = [r for r in pending if r not in refused]
    if not pending:
        # Every recipient has a SENT line: nothing is left to hand off, so
        # the file goes as after a last batch (kept, every scan would
        # claim it again at once).
        log.info("id=%s from=<%s> nrcpt=0 sent (every recipient has a SENT line)", c.id, env.sender)
        try:
            os.unlink(c.name)
            fsync_dir(ctx.directory)
        except OSError as e:
            try:
                reschedule(c, ctx, f"removing a file without pending recipients failed: {e.strerror}")
            except OSError:
                pass
        return DONE
    if ctx.mta is not None:
        return _deliver_smtp(c, ctx, env, pending)
    while pending:
        batch, pending = pending[:BATCH], pending[BATCH:]
        status, why = run_sendmail(ctx, env.sender, batch, c.ro, env.body_offset)
        if status is None or status in TEMPORARY:
            if env.sent:
                log.info("id=%s %d of %d recipients handed off before the failure", c.id,
                         len(env.sent), len(env.recipients))
            reschedule(c, ctx, why)
            return DONE
        if status not in (0, EX_NOUSER):
            move_to_bad(c, ctx, f"refused: {why}" if status == ARGV_TOO_LONG else f"refused by the MTA: {why}")
            return DONE
        outcome = "sent" if status == 0 else f"bounced by the MTA ({why})"
        log.info("id=%s from=<%s> nrcpt=%d %s%s", c.id, env.sender, len(batch), outcome, _trail(c, batch))
        if not record_handoff(c, ctx, env, batch, last=not pending):
            return DONE
    return DONE


#: Recipients a hand-off's log line names; the rest are counted.
LOGGED_RECIPIENTS = 5


def _trail(c: Claim, recipients) -> str:
    """The end of a hand-off's log line: ` delay=SECONDS to=<a>,<b>`, the
    delay since smap received the message (its queue id says when), and
    the recipients, the first LOGGED_RECIPIENTS of them."""
    born = queue_id_time(c.id)
    delay = f" delay={max(0.0, time.time() - born):.2f}" if born else ""
    shown = ",".join(f"<{r}>" for r in recipients[:LOGGED_RECIPIENTS])
    more = f",... ({len(recipients) - LOGGED_RECIPIENTS} more)" if len(recipients) > LOGGED_RECIPIENTS else ""
    return f"{delay} to={shown}{more}" if recipients else delay


def record_handoff(c: Claim, ctx: DeliverySettings, env, batch, last: bool) -> bool:
    """After a hand-off: the batch's SENT lines, or, for the `last` one,
    the file unlinked (then unlocked, as the caller closes).  False when
    that failed: the file is then rescheduled, never retried at once,
    which would hand the same batch off again and again."""
    try:
        if last:
            os.unlink(c.name)
            ctx.unsynced = True
        else:
            spool.mark_sent(c.fd, env, batch)
        return True
    except OSError as e:
        log.error("id=%s handed off, but recording it failed: %s", c.id, e.strerror)
        try:
            reschedule(c, ctx, f"recording a hand-off failed: {e.strerror}")
        except OSError:
            pass
        return False


def _deliver_smtp(c: Claim, ctx: DeliverySettings, env, pending) -> int:
    """The pending recipients by SMTP/LMTP, BATCH per transaction (an MTA
    limits recipients per message: Postfix's smtpd_recipient_limit).
    Each recipient's reply decides for it: 2xx handed off (SENT, or the
    file unlinked when none is left), 5xx bounced to the sender (dsn.py),
    4xx tried again later with the file; a broken dialogue is a 4xx for
    the rest."""
    later = {}
    for i in range(0, len(pending), BATCH):
        batch = pending[i:i + BATCH]
        try:
            replies = _transaction(ctx, env, batch, c.ro)
        except MtaUnavailable as e:
            reschedule(c, ctx, str(e))   # earlier batches are recorded already
            return DONE
        sent = [r for r in batch if replies[r].code // 100 == 2]
        failed = [(r, replies[r].status, str(replies[r])) for r in batch if replies[r].code // 100 == 5]
        later.update({r: replies[r] for r in batch if replies[r].code // 100 not in (2, 5)})
        if sent:
            log.info("id=%s from=<%s> nrcpt=%d sent (%s: %s)%s", c.id, env.sender, len(sent), ctx.mta,
                     replies[sent[0]], _trail(c, sent))
        # The delivered ones are recorded first: a bounce that cannot be
        # queued then leaves only the refused recipients for the retry.
        # Not when they were the file's last: the unlink below records
        # them, and syncing SENT lines first would only cost an fsync.
        done = i + BATCH >= len(pending) and not later and not failed
        if not done and not record_handoff(c, ctx, env, sent, last=False):
            return DONE
        if failed:
            try:
                fail_recipients(c, ctx, env, failed)
            except OSError as e:
                reschedule(c, ctx, f"bouncing {len(failed)} refused recipients failed: {e.strerror}")
                return DONE
    if later:
        shown = list(later.items())[:3]
        reschedule(c, ctx, "; ".join(f"<{r}>: {rep}" for r, rep in shown)
                   + (f" and {len(later) - 3} more" if len(later) > 3 else ""))
    else:
        record_handoff(c, ctx, env, [], last=True)
    return DONE


def _transaction(ctx: DeliverySettings, env, batch, fd) -> dict:
    """One transaction on the child's kept connection (opened if need
    be, and kept in ctx.session for the next); MtaUnavailable when the
    MTA cannot be talked to, the connection then closed."""
    session, ctx.session = ctx.session, None
    try:
        try:
            if session is None:
                session = MtaSession(ctx.mta, ctx.hostname, ctx.timeout)
                session.open()
            replies = session.send(env.sender, batch, fd, env.body_offset, env.attributes)
        except MtaUnavailable:
            # A kept connection that the MTA has closed meanwhile fails
            # before the message: once more on a new one.  Never after
            # the body went out, which could deliver it twice.
            if not session.reused or session.body_sent:
                raise
            session.close()
            session = MtaSession(ctx.mta, ctx.hostname, ctx.timeout)
            session.open()
            replies = session.send(env.sender, batch, fd, env.body_offset, env.attributes)
    except MtaUnavailable:
        if session is not None:
            session.close()
        raise
    ctx.session = session   # for the next batch or file; deliver_all() closes it
    return replies
