"""smapd: the spool runner daemon.

What it does (once daemon.py has dropped privileges and made the
spool its working directory): loops: reap delivery children; scan the `sma*`
files; fork a child for each due file not already being delivered, up to
`maxchildren` (each child claims its file with an fcntl lock, see
deliver.py, so two smapd on one spool deliver each message once); remove
`xma*` files older than a day (with a log line); then sleep until the
`.trigger` FIFO is written (smap pokes it after each commit), a child
ends or reports, a signal comes, or `wakeup` seconds pass.  Before each
sleep it publishes its status (status.py: the file `.status` that
`smapctl stats smapd` reads, and the process title), which it learns from
its own scans and from what each delivery child reports on a pipe.

Signals (handlers only write the self-pipe): HUP re-reads the table (a
broken one is logged and the old settings kept), TERM and INT stop
scanning and let running deliveries finish, CHLD wakes the loop.

What it trusts: its table and the MTA's exit statuses.

What it must never do: deliver from anywhere but its working directory,
retry a file in a loop, or exit with a delivery half-done: the children
finish before smapd does.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import stat
import time

from smapd.table import keywords
from smapd.handoff import deliver
# Imported now, with the rest: after the privilege drop the interpreter's
# files may be out of reach.
from smapd.handoff import verifier
from smapd.handoff.status import Reporter, Status
from smapd.table.netperm import ConfigError, Table
from smapd import spool
from smapd.spool import TEMP_PREFIX, TRIGGER

log = logging.getLogger("smapd")

STALE_TEMP = 86400
#: Seconds a file whose delivery child crashed is left alone.
CRASH_PAUSE = 60
#: Spool files one delivery child sends through one SMTP/LMTP connection
#: at most (the sendmail path: one per child).
FILES_PER_CONNECTION = 50
#: While deliveries run, the spool is scanned at most this often, however
#: often smap's trigger wakes us: under a stream of mail each scan then
#: finds several files for one child and one connection, not one file
#: for a fork, a connection and an MTA session of its own.  Costs a new
#: message at most this much latency, and nothing when smapd is idle.
SCAN_GAP = 0.1


try:  # imported now: after the privilege drop the interpreter's files may be out of reach
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # pragma: no cover - a declared dependency
    _setproctitle = None


def _title(text: str) -> None:
    if _setproctitle:
        _setproctitle(text)


def handoff_text(settings) -> str:
    """How smapd hands off, for its start line and its status."""
    if settings["mta"]:
        return f"mta {settings['mta']}"
    return "sendmail " + " ".join(settings["sendmail"])


def context(settings) -> deliver.DeliverySettings:
    return deliver.DeliverySettings(sendmail=settings["sendmail"], baddir=settings["baddir"],
                           retry_max=settings["retry-max"], timeout=settings["sendmail-timeout"],
                           directory=".", mta=settings["mta"])


class Runner:
    def __init__(self, settings, reload=None, prog="smapd", close_in_children=()):
        self.settings = settings
        #: Descriptors a delivery child must not keep (the pid file's: its
        #: flock would outlive smapd in a child that is still delivering).
        self.close_in_children = tuple(close_in_children)
        self.reload_settings = reload   # callable giving new settings, or raising ConfigError
        self.prog = prog
        self.children = {}              # pid -> the spool file names it delivers
        self.skip_until = {}            # spool file name -> time before which it is not tried
        self.stopping = False
        self.want_reload = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.fifo = None
        self._fifo_keep = None
        self.verifier = None            # pid of the recipient verifier (verifier.py), when running
        self.verifier_after = 0.0       # no restart before this time (a verifier that dies at once)
        self.last_scan = -SCAN_GAP      # time.monotonic() of the last scan
        self.reports = {}               # pid -> the read end of its delivery child's report pipe
        self.status = Status(prog, handoff_text(settings), settings["maxchildren"])

    # ------------------------------------------------------------ setup

    def open_trigger(self) -> None:
        """The FIFO smap writes to; held open for writing too, so that a
        read never sees end-of-file between two writers.  Anything else
        under that name (a file, a symlink: whoever can write the spool
        can plant one) is replaced by a FIFO."""
        try:
            st = os.lstat(TRIGGER)
            if not stat.S_ISFIFO(st.st_mode):
                log.warning("%s was not a FIFO (mode %o): replaced", TRIGGER, st.st_mode)
                os.unlink(TRIGGER)
        except FileNotFoundError:
            pass
        try:
            os.mkfifo(TRIGGER, 0o622)
        except FileExistsError:
            pass
        flags = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fifo = os.open(TRIGGER, os.O_RDONLY | flags)
        if not stat.S_ISFIFO(os.fstat(self.fifo).st_mode):
            raise OSError(f"{TRIGGER} is not a FIFO")
        os.fchmod(self.fifo, 0o622)  # smap may run under another uid than ours
        self._fifo_keep = os.open(TRIGGER, os.O_WRONLY | flags)

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGCHLD, lambda *a: None)

    def _on_hup(self, *a):
        self.want_reload = True

    def _on_term(self, *a):
        self.stopping = True

    # ------------------------------------------------------------- loop

    def run(self) -> int:
        self.open_trigger()
        self.install_signals()
        log.info("started: spool %s, %s, wakeup %ds, maxchildren %d", os.getcwd(), handoff_text(self.settings),
                 self.settings["wakeup"], self.settings["maxchildren"])
        while True:
            self.reap()
            if self.want_reload:
                self.want_reload = False
                self.reload()
            if self.stopping:
                self.stop_verifier()
                if not self.children and self.verifier is None:
                    self.status.remove()
                    log.info("stopped")
                    return 0
                if not self.status.stopping:
                    self.status.stop()
            else:
                self.start_verifier()
                gap = self.last_scan + SCAN_GAP - time.monotonic()
                if self.children and gap > 0:
                    self.sleep(gap)   # woken early by a trigger or a child's end: reaps, then here again
                    continue
                self.last_scan = time.monotonic()
                next_due = self.scan()
                self.remove_stale_temps()
            self.sleep(self.settings["wakeup"] if self.stopping else next_due)

    def scan(self) -> float:
        """Start children for due files; returns seconds until the next
        known due time (at most `wakeup`)."""
        now = time.time()
        wait = float(self.settings["wakeup"])
        busy = {n for names in self.children.values() for n in names}
        for name, until in list(self.skip_until.items()):
            if until <= now:
                del self.skip_until[name]
        try:
            names = spool.list_spool(".")
        except OSError as e:
            log.error("cannot read the spool: %s", e.strerror)
            return wait
        self.status.scanned(names)
        due = []
        for name in names:
            if name in busy or name in self.skip_until:
                continue
            try:
                when = os.lstat(name).st_mtime
            except FileNotFoundError:
                continue
            if when > now:
                wait = min(wait, when - now)
                continue
            due.append(name)
        # The sendmail path runs one MTA process per file anyway; over
        # SMTP/LMTP a child sends several files through one connection,
        # the due files shared among the free children.
        free = self.settings["maxchildren"] - len(self.children)
        per = 1
        if self.settings["mta"] and free > 0:
            per = max(1, min(FILES_PER_CONNECTION, -(-len(due) // free)))
        for i in range(0, len(due), per):
            if len(self.children) >= self.settings["maxchildren"]:
                return 0.5  # look again soon: a child will end
            self.spawn(due[i:i + per])
        return max(wait, 0.05)

    def _in_child(self) -> None:
        """What every child of smapd drops of it, first thing after fork."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)
        for fd in (*self.close_in_children, *self.reports.values()):
            os.close(fd)

    def spawn(self, names: list) -> None:
        ctx = context(self.settings)
        try:
            # Non-blocking at both ends: a child never waits for smapd to
            # read its reports (status.py), nor smapd for a child to write.
            report_r, report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            # The hand-off matters more than its report.
            log.error("cannot make a delivery child's report pipe: %s (its outcome is not counted)", e.strerror)
            report_r = report_w = None
        try:
            pid = os.fork()
        except OSError as e:
            for fd in (report_r, report_w):
                if fd is not None:
                    os.close(fd)
            log.error("cannot fork a delivery child: %s", e.strerror)
            for name in names:
                self.skip_until[name] = time.time() + CRASH_PAUSE
            return
        if pid == 0:
            code = 1
            try:
                self._in_child()
                if report_r is not None:
                    os.close(report_r)
                reporter = Reporter(report_w)
                # A delivery, once begun, is finished: ^C on smapd -d or a
                # TERM to the process group must not kill the child while
                # the MTA (in a session of its own) goes on, which would
                # make the message go out twice.
                for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                    signal.signal(s, signal.SIG_IGN)
                # The title names the file in flight: the one a kill of
                # this child could hand off twice.
                def starting(i, name):
                    of = f" ({i + 1} of {len(names)})" if len(names) > 1 else ""
                    _title(f"{self.prog}: delivering {name[len(spool.READY_PREFIX):]}{of}")
                    reporter.begin(name)
                code = deliver.deliver_all(names, ctx, starting)
                reporter.end()
            except BaseException:
                log.exception("delivery of %s failed", ", ".join(names))
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = names
        if report_r is not None:
            os.close(report_w)
            self.reports[pid] = report_r
        self.status.child_started(pid, names)

    # ------------------------------------------------------------ verifier

    def start_verifier(self) -> None:
        """The recipient verifier, when the table asks for it and it is
        not running (it is restarted at most every CRASH_PAUSE/6 s)."""
        if not self.settings["recipient-verify"] or self.verifier is not None or time.time() < self.verifier_after:
            return
        self.verifier_after = time.time() + CRASH_PAUSE / 6
        try:
            pid = os.fork()
        except OSError as e:
            log.error("cannot fork the recipient verifier: %s", e.strerror)
            return
        if pid == 0:
            code = 1
            try:
                self._in_child()
                for s in (signal.SIGHUP, signal.SIGTERM):
                    signal.signal(s, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # ^C on smapd -d: smapd stops it
                _title(f"{self.prog}: recipient verifier")
                verifier.serve(self.settings, context(self.settings).hostname)
            except BaseException:
                log.exception("the recipient verifier failed")
            finally:
                logging.shutdown()
                os._exit(code)
        self.verifier = pid

    def stop_verifier(self) -> None:
        if self.verifier is not None:
            try:
                os.kill(self.verifier, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        while self.children or self.verifier is not None:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                for pid in list(self.children):
                    self.child_gone(pid)
                self.children.clear()
                self.verifier = None
                return
            if pid == 0:
                return
            if pid == self.verifier:
                self.verifier = None
                if not self.stopping and os.waitstatus_to_exitcode(status) != -signal.SIGTERM:
                    log.error("the recipient verifier ended with status %d; restarted",
                              os.waitstatus_to_exitcode(status))
                continue
            names = self.children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            crashed = names and code not in (deliver.DONE, deliver.SKIPPED, deliver.STUCK)
            self.child_gone(pid, f"delivery child {pid} ended with status {code}" if crashed else None)
            if not names or code == deliver.DONE:
                continue
            # The child's worst outcome applies to each of its files; those
            # it handed off are gone or rescheduled, so it matters only for
            # the others.
            if code == deliver.SKIPPED:
                # Locked by another process, or not due: not again at once.
                pause = max(1, min(self.settings["wakeup"], 10))
            elif code == deliver.STUCK:
                pause = CRASH_PAUSE  # the child has said why
            else:
                log.error("delivery child %d for %s ended with status %d; not retried for %ds", pid,
                          ", ".join(names), code, CRASH_PAUSE)
                pause = CRASH_PAUSE
            for name in names:
                self.skip_until[name] = time.time() + pause

    def child_gone(self, pid: int, problem: str = None) -> None:
        """A delivery child was reaped: the rest of its reports, then its
        end, for the status."""
        self.read_reports(pid)
        fd = self.reports.pop(pid, None)
        if fd is not None:
            os.close(fd)
        self.status.child_ended(pid, problem)

    def read_reports(self, only: int = None) -> None:
        """What the delivery children (or the child `only`) have reported;
        a pipe at its end (its child is gone) is closed."""
        for pid, fd in list(self.reports.items()):
            if only is not None and pid != only:
                continue
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not data:
                    os.close(self.reports.pop(pid))
                    break
                self.status.child_output(pid, data)

    def publish(self) -> None:
        self.status.publish(_title)

    def remove_stale_temps(self) -> None:
        now = time.time()
        try:
            names = [n for n in os.listdir(".") if n.startswith(TEMP_PREFIX)]
        except OSError:
            return
        for n in names:
            try:
                if now - os.stat(n).st_mtime > STALE_TEMP:
                    os.unlink(n)
                    log.warning("removed %s: an unfinished spool file older than a day (never acknowledged)", n)
            except OSError:
                pass

    def sleep(self, seconds: float) -> None:
        self.publish()
        due = self.status.due_in()
        if due is not None:
            seconds = min(seconds, due + 0.01)
        p = select.poll()
        p.register(self.fifo, select.POLLIN)
        p.register(self.wake_r, select.POLLIN)
        for fd in self.reports.values():
            p.register(fd, select.POLLIN)
        try:
            p.poll(max(0, int(seconds * 1000)))
        except InterruptedError:
            pass
        self.read_reports()
        for fd in (self.fifo, self.wake_r):
            try:
                os.read(fd, 65536)  # bounded: a busy writer cannot keep us here
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise

    def reload(self) -> None:
        if not self.reload_settings:
            return
        try:
            self.settings = self.reload_settings()
        except ConfigError as e:
            for d in e.diagnostics:
                log.error("reload refused, the old settings stay: %s", str(d))
            return
        log.info("reloaded the table")
        self.status.configure(handoff_text(self.settings), self.settings["maxchildren"])
        # A verifier with other settings (or none wanted): stopped, and
        # started again by the loop when still wanted.
        self.stop_verifier()
        self.verifier_after = 0.0


def load(path: str, name: str):
    """The settings of smapd under `name`, or ConfigError."""
    return keywords.load_or_die(Table.read(path), keywords.SMAPD, (name,)).settings
