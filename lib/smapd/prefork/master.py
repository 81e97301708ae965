"""The prefork master of `smap -daemon` (and of `ssl-gw -d`), and its children.

What it does, as root: validates the whole configuration (the table, the
accounts, the jail); connects the log; lets the service prepare, reading
each file once, what a jailed child lacks (resolver objects, DNS record
types, the time zone, the host name, TLS contexts, the policy's files: a
file that cannot be used stops it here); takes the pid file's lock; binds
every listener before the first fork (SO_REUSEADDR; an address-less
`listen` gets one IPv4 and one IPv6-only socket); maps the scoreboard;
`gc.freeze()`; detaches with python-daemon unless told to
stay in the foreground; writes its pid.  Then it only keeps the pool:
between `minspare` and `maxspare` idle children, at most `maxchildren`,
spawning again after a child that died at boot only after a pause that
doubles up to a minute.  Signal handlers only wake the main loop:
HUP re-reads the table (a broken one is logged and the old kept; new
listeners bound, gone ones closed; every child replaced, sessions in
progress finishing first), TERM stops gracefully (up to
`shutdown-timeout`), INT and QUIT stop at once, USR1 reopens the log
(children are replaced so that they use the new socket), CHLD reaps.
Files the children read only through the master (a spam database, a
password file outside the jail) are watched: a change reloads as HUP.
Given listeners that inetd (`wait`) or systemd (`Accept=no`) handed
over (activation.py), it binds none, stays in the foreground, keeps them
across reloads, and stops when its starter is gone or after `idle-exit`
seconds without a connection.

Each child (still root for a moment) resets its signals, enters the jail
through privsep (chroot, setgroups, setgid, setuid, verified: a failure
exits EXIT_BOOT), asks to be told when the master dies, then serves one
connection at a time: accept, mark its slot busy with the client's
address, let the service serve, mark idle; it exits after `maxrequests`
connections, when told to stop, or when the master is gone.

What it trusts: the table (read by root) and its own records of which
children it forked.  The scoreboard is written by children that talk to
the Internet: its states are only counted, its pids never signalled.

What it must never do: read a byte from a client (children do that), run
a session as root, hold a connection a child accepted, or exit leaving
children that keep listening.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from smapd import log as slog
from smapd.table.netperm import ConfigError
from smapd.addresses import client_address
from smapd.prefork.pidfile import PidFile
from smapd.prefork.privsep import EXIT_BOOT, PR_SET_PDEATHSIG, PrivsepError, enter_jail, jail_for, prctl
from smapd.exits import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, Unusable
from smapd.prefork.scoreboard import BUSY, IDLE, STARTING, STOPPING, Scoreboard

log = logging.getLogger("smapd")

try:  # imported now: after the privilege drop the interpreter's files may be out of reach
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # pragma: no cover - a declared dependency
    _setproctitle = None

#: The signals the master handles (through its wakeup pipe).
MASTER_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD}
#: Seconds the master sleeps at most between two looks at the pool.
TICK = 1.0
#: Seconds children get to end after a fast stop before they are killed.
FAST_GRACE = 5.0
#: The longest pause between two spawns after children died at boot.
MAX_BOOT_PAUSE = 60.0
#: Seconds an excess idle child is left before it is stopped (no flapping).
SHRINK_AFTER = 2.0
#: Seconds the kernel holds a connection to a client-first listener that
#: has sent nothing (TCP_DEFER_ACCEPT); after them it is accepted anyway,
#: and the service's first-byte deadline ends it.
DEFER_ACCEPT = 10
#: Stress (as Postfix's smtpd under its process limit): from this share of
#: maxchildren busy, children apply their short time limits; below the
#: second share, the normal ones again (two, so that it does not flap).
STRESS_ON, STRESS_OFF = 0.8, 0.6


def title(text: str) -> None:
    if _setproctitle:
        _setproctitle(text)


class _StopWaiting(BaseException):
    """Raised by a child's TERM handler while the child waits for a
    connection: epoll_wait is restarted after a signal (PEP 475) and does
    not notice listeners closed under it, so the handler ends the wait."""


#: Only one waiting child is woken per new connection (Linux 4.5): with
#: poll(2) every idle child woke for each one, and all but one found
#: nothing to accept (the thundering herd: a fifth of the machine at 800
#: handshakes/s with 20 idle children, bench/NOTES.md).
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)


def _waiter():
    """(a poller for a child's wait, its readable flag, the flag for a
    listener): epoll with EPOLLEXCLUSIVE where there is one, else poll."""
    if hasattr(select, "epoll"):
        return select.epoll(), select.EPOLLIN, select.EPOLLIN | EPOLLEXCLUSIVE
    return select.poll(), select.POLLIN, select.POLLIN


class FastStop(BaseException):
    """Raised in a child by INT/QUIT: unwind now (spool files are removed
    on the way out), no lingering."""


@dataclass(frozen=True)
class ListenSpec:
    """What a service asks to listen on: address (None: all), port, and a
    tag the service gets back with each connection (e.g. TLS on accept)."""
    addr: Optional[str]
    port: int
    tag: object = None
    #: The client speaks first (TLS): the kernel wakes a child only once
    #: bytes have arrived (TCP_DEFER_ACCEPT), so silent connections do
    #: not take children (Linux; elsewhere a plain listener).
    client_first: bool = False
    #: Handed over by inetd (`wait`) or systemd (`Accept=no`), not bound
    #: from the table (activation.py): a reload keeps it.
    handed: bool = False

    def __str__(self):
        host = "*" if self.addr is None else (f"[{self.addr}]" if ":" in self.addr else self.addr)
        return f"{host}:{self.port}" + (" (handed over)" if self.handed else "")


class Service:
    """What a program gives the master.  `prog` is the log and title name.
    Optional: `setup_log(settings, debug)` to log its own way (the
    master calls it at start, on HUP and USR1) and `log_files()`, the
    descriptors of that log the detached master must keep."""

    prog = "smap"

    def load(self):
        """Read the table again (HUP); raises ConfigError."""
        raise NotImplementedError

    def problems(self, settings, standalone: bool = False) -> list:
        """What makes these settings unusable, seen without reading the
        files they name (error texts); `standalone`: no listeners of its
        own (one connection on fd 0, or listeners handed over)."""
        return []

    def unavailable(self, conn: socket.socket, addr: str, settings, reason: str) -> None:
        """Tell a client that the service cannot serve it now, and close."""
        conn.close()

    def listeners(self, settings) -> list:
        raise NotImplementedError

    def prepare(self, settings) -> object:
        """Everything a jailed child needs and cannot load itself, read
        once; exits.Unusable when a file it names cannot be used."""
        return None

    def serve(self, conn: socket.socket, addr: str, tag, prepared, child: "Child") -> None:
        raise NotImplementedError


def peer_address(sockaddr) -> str:
    """The client's address as text, IPv4-mapped IPv6 written as IPv4."""
    return str(client_address(sockaddr[0]))


def bind(spec: ListenSpec) -> list:
    """The listening sockets of one spec (non-blocking); OSError on failure."""
    if spec.addr is None:
        targets = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    else:
        targets = [(socket.AF_INET6 if ":" in spec.addr else socket.AF_INET, spec.addr)]
    out = []
    try:
        for family, host in targets:
            try:
                s = socket.socket(family, socket.SOCK_STREAM)
            except OSError as e:
                if spec.addr is None and family == socket.AF_INET6 and e.errno == errno.EAFNOSUPPORT:
                    continue  # a kernel without IPv6: the IPv4 socket serves
                raise
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, spec.port))
            except OSError as e:
                if spec.addr is None and family == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:
                    out.pop().close()
                    continue
                raise OSError(e.errno, f"cannot listen on {spec}: {e.strerror}") from None
            if spec.client_first and hasattr(socket, "TCP_DEFER_ACCEPT"):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
            s.listen(socket.SOMAXCONN)
            s.setblocking(False)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


# ----------------------------------------------------------------------
# The child.

def _parent_death_signal(signum: int) -> None:
    """Linux: have the kernel send `signum` when the master dies.  Set
    after the privilege drop, which clears it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):
        pass


class Child:
    """A forked child: jail, then one connection at a time."""

    def __init__(self, master: "Master", slot: int, sigmask=()):
        self.master = master
        self.sigmask = sigmask
        self.board = master.board
        self.slot = slot
        self.service = master.service
        self.settings = master.settings
        self.prepared = master.prepared
        self.listeners = [(s, spec) for spec, socks in master.listeners.items() for s in socks]
        self.stop = False
        self.busy_with = None
        self.waiting = False   # in the wait for a connection (see _StopWaiting)
        self.prog = master.service.prog

    # --- what the service calls
    def stage(self, text: str) -> None:
        """The session's stage (an SMTP command): title and scoreboard."""
        self.board.set_stage(self.slot, text)
        title(f"{self.prog}: {self.busy_with} {text}")

    def sessions_from(self, addr: str) -> int:
        return self.board.sessions_from(addr)

    def sessions_from_net(self, addr: str) -> int:
        return self.board.sessions_from_net(addr)

    def stressed(self) -> bool:
        return self.board.stress()

    def auth_failed(self, addr: str, window: float) -> None:
        self.board.auth_failed(self.slot, addr, window)

    def auth_failures(self, addr: str, window: float) -> int:
        """Over every child of the pool (the scoreboard)."""
        return self.board.auth_failures(addr, window)

    # --- signals
    def _on_term(self, *a):
        self.stop = True
        for s, _ in self.listeners:  # a copy of ours: the others keep listening
            s.close()
        if self.busy_with is not None:
            self.board.set_state(self.slot, STOPPING)
        if self.waiting:
            raise _StopWaiting()

    def _on_int(self, *a):
        raise FastStop()

    def run(self) -> None:
        """Never returns: the process ends with os._exit (no atexit of the
        master's, no pid file removal, no buffered output flushed twice)."""
        status = EXIT_OK
        try:
            status = self._run()
        except FastStop:
            status = EXIT_OK
        except BaseException:
            try:
                log.exception("child: internal error")
            except BaseException:
                pass
            status = EXIT_RUNTIME
        os._exit(status)

    def _run(self) -> int:
        m = self.master
        signal.set_wakeup_fd(-1)
        for fd in (m.wake_r, m.wake_w, m.need_r, m.alive_w, m.pidfile.fd if m.pidfile else None):
            if fd is not None:
                os.close(fd)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_int)
        signal.signal(signal.SIGQUIT, self._on_int)
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.sigmask)  # blocked by the master around fork
        title(f"{self.prog}: idle")
        s = self.settings
        if m.jail is not None:
            directory, uid, gid = m.jail
            try:
                enter_jail(directory, uid, gid, m.allow_root)
            except PrivsepError as e:
                log.error("child cannot enter its jail: %s", str(e))
                return EXIT_BOOT
        _parent_death_signal(signal.SIGTERM)
        if os.getppid() != m.pid:
            return EXIT_OK  # the master died before we could ask
        poller, readable, listening = _waiter()
        by_fd = {}
        try:
            for sock, spec in self.listeners:
                by_fd[sock.fileno()] = (sock, spec)
                poller.register(sock.fileno(), listening)
        except (ValueError, OSError):
            if self.stop:  # told to stop while starting: the listeners are closed
                return EXIT_OK
            raise
        poller.register(m.alive_r, readable)
        self.board.set_state(self.slot, IDLE)
        served, maxrequests, minspare = 0, s["maxrequests"], s["minspare"]
        while not self.stop and served < maxrequests:
            self.waiting = True
            try:
                if self.stop:
                    break
                events = poller.poll()
            except InterruptedError:
                continue
            except _StopWaiting:
                break
            finally:
                self.waiting = False
            if self.stop:
                break
            ready = [fd for fd, ev in events if fd in by_fd and ev & readable]
            if any(fd == m.alive_r for fd, _ in events):
                break  # the master is gone
            for fd in ready:
                sock, spec = by_fd[fd]
                try:
                    conn, peer = sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue  # another child was quicker
                except OSError as e:
                    if self.stop:
                        break
                    if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                        continue
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.error("accept: %s", e.strerror)
                        time.sleep(0.1)  # resource shortage: do not spin
                        continue
                    raise
                served += 1
                self._serve(conn, peer, spec, minspare)
                break  # look at stop and maxrequests before the next accept
            if os.getppid() != m.pid:
                break
        return EXIT_OK

    def _serve(self, conn, peer, spec, minspare) -> None:
        addr = peer_address(peer)
        self.busy_with = addr
        self.board.set_state(self.slot, STOPPING if self.stop else BUSY, addr, "")
        title(f"{self.prog}: {addr}")
        if self.board.count(IDLE) < minspare:
            try:
                os.write(self.master.need_w, b"!")  # the master spawns more
            except OSError:
                pass
        conn.setblocking(True)
        try:
            self.service.serve(conn, addr, spec.tag, self.prepared, self)
        finally:
            conn.close()
            self.busy_with = None
            self.board.served_one(self.slot)
            if not self.stop:
                self.board.set_state(self.slot, IDLE)
                title(f"{self.prog}: idle")


# ----------------------------------------------------------------------
# The master.

@dataclass
class ChildRecord:
    slot: int
    generation: int
    stopping: bool = False
    born: float = field(default_factory=time.monotonic)


class Master:
    def __init__(self, service: Service, settings, foreground: bool, debug: bool, allow_root: bool,
                 pidfile: Optional[str], scoreboard: str, handed: Optional[dict] = None):
        self.service = service
        self.settings = settings
        #: {ListenSpec: [socket]} from inetd or systemd (activation.py):
        #: the master then listens on those only, stays in the foreground
        #: (its starter waits for it) and exits after `idle-exit` seconds
        #: without a connection.
        self.handed = handed
        self.foreground = foreground or debug or bool(handed)
        self.debug = debug
        self.allow_root = allow_root
        self.pidfile = PidFile(pidfile) if pidfile else None
        self.scoreboard_path = scoreboard
        self.listeners = {}         # ListenSpec -> [socket]
        self.kids = {}              # pid -> ChildRecord
        self.generation = 0
        self.retired = 0
        self.board = None
        self.prepared = None
        self.jail = None
        self.pid = os.getpid()
        self.wake_r = self.wake_w = self.need_r = self.need_w = self.alive_r = self.alive_w = None
        self.signals = []
        self.stopping = None        # None, "graceful" or "fast"
        self.deadline = None
        self.killed = False
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.excess_since = None
        self._title = None
        self.stress = False
        self._watched = None
        self._activity = (None, time.monotonic())   # (connections served so far, when that changed)
        self.starter = os.getppid()                 # who handed the listeners over (inetd, systemd)

    # ------------------------------------------------------------ start

    def start(self) -> int:
        """Everything that can fail is checked while stderr is still the
        operator's terminal; then detach (unless in the foreground, or with
        handed listeners) and serve."""
        s = self.settings
        # With listeners from inetd, stderr is the listening socket's
        # /dev/null (and under systemd the journal): the log must hear it too.
        logger = self.settings_log() if self.handed else None

        def fail(text: str, status: int) -> int:
            if self.handed:
                log.error("%s", text)
            print(f"{self.service.prog}: {text}", file=sys.stderr)
            return status
        try:
            self.jail = jail_for(s, self.allow_root)
        except PrivsepError as e:
            return fail(str(e), EXIT_CONFIG)
        problems = self.service.problems(s, standalone=bool(self.handed))
        if problems:
            for p in problems:
                fail(p, EXIT_CONFIG)
            return EXIT_CONFIG
        logger = logger or self.settings_log()  # first: what prepare() warns about goes to the log
        if not self.foreground and slog.lost_when_detached(logger):
            print(f"{self.service.prog}: {slog.REFUSE_DETACH}", file=sys.stderr)
            return EXIT_RUNTIME
        try:
            self.prepared = self.service.prepare(s)
        except Unusable as e:
            return fail(str(e), EXIT_CONFIG)
        if self.pidfile:
            try:
                self.pidfile.lock()
            except OSError as e:
                return fail(str(e), EXIT_RUNTIME)
        try:
            if self.handed:
                self.listeners = dict(self.handed)
            else:
                for spec in self.service.listeners(s):
                    self.listeners[spec] = bind(spec)
        except OSError as e:
            return fail(e.strerror, EXIT_RUNTIME)
        try:
            self.board = Scoreboard.create(self.scoreboard_path, s["maxchildren"], os.getpid())
        except OSError as e:
            return fail(f"cannot create the scoreboard {self.scoreboard_path}: {e.strerror}", EXIT_RUNTIME)
        if not self.foreground:
            import daemon
            keep = [sock.fileno() for socks in self.listeners.values() for sock in socks]
            keep += [h.socket.fileno() for h in logger.handlers if getattr(h, "socket", None)]
            keep += self.service.log_files() if hasattr(self.service, "log_files") else []
            if self.pidfile:
                keep.append(self.pidfile.fd)
            daemon.DaemonContext(working_directory="/", umask=0o022, files_preserve=keep,
                                 signal_map={}, prevent_core=True).open()
        self.pid = os.getpid()
        self.board.set_header(self.pid, self.generation, 0, time.time())
        # The title before the pid file: rc.subr's check_pidfile knows the
        # process by its title's first word, and `status` may run as soon
        # as the pid file is there.
        self._update_title()
        if self.pidfile:
            self.pidfile.write(self.pid)
        if os.geteuid() != 0:
            log.warning("NOT ROOT (uid %d): children neither chroot nor drop privileges; for testing only",
                        os.geteuid())
        log.info("started: listening on %s; children %s; minspare %d, maxspare %d, maxchildren %d",
                 ", ".join(str(sp) + ("" if sp.tag is None else f" {sp.tag}") for sp in self.listeners),
                 "as uid %d gid %d %s" % (self.jail[1], self.jail[2],
                                          f"in {self.jail[0]}" if self.jail[0] else "(no chroot)") if self.jail
                 else "unjailed", s["minspare"], s["maxspare"], s["maxchildren"])
        try:
            return self.loop()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.pidfile:
            self.pidfile.remove()
        try:
            os.unlink(self.scoreboard_path)
        except OSError:
            pass

    # ------------------------------------------------------------- loop

    def _install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.need_r, self.need_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Children hold the read end; it reads end-of-file once the master is gone.
        self.alive_r, self.alive_w = os.pipe2(os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in MASTER_SIGNALS:
            signal.signal(sig, lambda n, f: None)  # the wakeup fd carries the number
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    def loop(self) -> int:
        self._install_signals()
        gc.freeze()  # what the master built stays shared with every child
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        poller.register(self.need_r, select.POLLIN)
        while True:
            for signum in self._drain(self.wake_r):
                self._on_signal(signum)
            self._drain(self.need_r)
            self.reap()
            if self.stopping:
                if not self.kids:
                    log.info("stopped")
                    return EXIT_OK
                self._stop_progress()
            else:
                self._watch()
                self.maintain()
            self._update_title()
            if self.handed and not self.stopping:
                self._exit_when_idle()
            try:
                poller.poll(int(self._timeout() * 1000))
            except InterruptedError:
                pass

    @staticmethod
    def _drain(fd) -> bytes:
        out = b""
        while True:
            try:
                data = os.read(fd, 512)
            except (BlockingIOError, InterruptedError):
                return out
            if not data:
                return out
            out += data

    def _timeout(self) -> float:
        now = time.monotonic()
        t = TICK
        if self.stopping and self.deadline:
            t = min(t, max(0.0, self.deadline - now))
        if self.next_spawn > now:
            t = min(t, self.next_spawn - now)
        return max(0.01, t)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return
        if signum == signal.SIGHUP and not self.stopping:
            self.reload()
        elif signum == signal.SIGUSR1 and not self.stopping:
            self.settings_log()
            log.info("log reopened; replacing the children")
            self.replace_children()
        elif signum == signal.SIGTERM and not self.stopping:
            self.stopping = "graceful"
            self.deadline = time.monotonic() + self.settings["shutdown-timeout"]
            log.info("stopping: %d children; sessions in progress may take %ds", len(self.kids),
                     self.settings["shutdown-timeout"])
            self._close_listeners()
            self._signal_kids(signal.SIGTERM)
        elif signum in (signal.SIGINT, signal.SIGQUIT) and self.stopping != "fast":
            self._fast_stop("stopping now")

    def _fast_stop(self, why: str) -> None:
        self.stopping = "fast"
        self.deadline = time.monotonic() + FAST_GRACE
        log.info("%s: %d children", why, len(self.kids))
        self._close_listeners()
        self._signal_kids(signal.SIGINT)

    def _stop_progress(self) -> None:
        if time.monotonic() < self.deadline:
            return
        if self.stopping == "graceful":
            self._fast_stop("shutdown-timeout passed, ending the sessions still in progress")
        elif not self.killed:
            log.warning("killing %d children that did not stop", len(self.kids))
            self.killed = True
            self._signal_kids(signal.SIGKILL)

    def _close_listeners(self) -> None:
        for spec, socks in self.listeners.items():
            for s in socks:
                if spec.handed:
                    try:
                        s.setblocking(True)  # as the starter gave it: the flag is shared with its copy
                    except OSError:
                        pass
                s.close()
        self.listeners = {}

    def _exit_when_idle(self) -> None:
        """With handed listeners: when the starter is gone, or after
        `idle-exit` seconds in which no connection was served or in
        progress, stop as TERM does.  The starter (xinetd, systemd) listens
        again once this process is gone, and a connection that arrives
        meanwhile waits in the kernel's queue for the next start."""
        if os.getppid() != self.starter:
            # xinetd stopped leaves its `wait` servers running; nothing
            # would start this one again, and an administrator who stops
            # inetd means its services too.
            log.info("the program that handed the listeners over (pid %d) is gone: stopping", self.starter)
            self._on_signal(signal.SIGTERM)
            return
        limit = self.settings["idle-exit"]
        if not limit:
            return
        states = self.board.states()
        busy = any(states[k.slot:k.slot + 1] in (BUSY, STOPPING) for k in self.kids.values())
        served = self.retired + sum(self.board.slot(k.slot).served for k in self.kids.values())
        now = time.monotonic()
        if busy or served != self._activity[0]:
            self._activity = (served, now)
        elif now - self._activity[1] >= limit:
            log.info("no connection for %ds (idle-exit): exiting; the next one starts %s again",
                     limit, self.service.prog)
            self._on_signal(signal.SIGTERM)

    def _signal_kids(self, signum: int, which=None) -> None:
        for pid, kid in list(self.kids.items()):
            if which is None or kid in which:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    kid.stopping = True
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

    def settings_log(self):
        """(Re)connect the log as the settings say; a service may log its own way."""
        s = self.settings
        if hasattr(self.service, "setup_log"):
            return self.service.setup_log(s, self.debug)
        return slog.setup(self.service.prog, s["log-facility"], self.debug, s["log-socket"])

    # ------------------------------------------------------------- pool

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            kid = self.kids.pop(pid, None)
            if kid is None:
                continue
            state = self.board.state(kid.slot)
            self.retired += self.board.release(kid.slot)
            code = os.waitstatus_to_exitcode(status)
            if code == EXIT_BOOT or (state == STARTING and not kid.stopping):
                self._boot_failed(pid, code)
            elif code < 0:
                if not (self.killed and -code == signal.SIGKILL):
                    log.warning("child %d killed by signal %d%s", pid, -code,
                                " in a session" if state in (BUSY, STOPPING) else "")
            elif code > 0:
                log.warning("child %d exited with status %d", pid, code)

    def _boot_failed(self, pid: int, code: int) -> None:
        self.boot_failures += 1
        pause = min(MAX_BOOT_PAUSE, 2.0 ** (self.boot_failures - 1))
        self.next_spawn = time.monotonic() + pause
        log.error("child %d died while starting (%s); next child in %gs", pid,
                  f"exit status {code}" if code >= 0 else f"signal {-code}", pause)

    def maintain(self) -> None:
        s = self.settings
        states = self.board.states()
        current = [(pid, k) for pid, k in self.kids.items() if k.generation == self.generation and not k.stopping]
        idle = [(pid, k) for pid, k in current if states[k.slot:k.slot + 1] == IDLE]
        starting = sum(1 for _, k in current if states[k.slot:k.slot + 1] == STARTING)
        if idle and self.boot_failures:
            self.boot_failures = 0
            self.next_spawn = 0.0
        minspare = max(1, s["minspare"])
        maxspare = max(minspare, s["maxspare"])
        if len(idle) > maxspare:
            now = time.monotonic()
            if self.excess_since is None:
                self.excess_since = now
            elif now - self.excess_since >= SHRINK_AFTER:
                self.excess_since = None
                idle.sort(key=lambda pk: self.board.slot(pk[1].slot).since)  # longest idle first
                excess = [k for _, k in idle[:len(idle) - maxspare]]
                self._signal_kids(signal.SIGTERM, excess)
            return
        self.excess_since = None
        want = minspare - len(idle) - starting
        room = min(s["maxchildren"], self.board.slots) - len(self.kids)
        if want > 0 and room > 0 and time.monotonic() >= self.next_spawn:
            for _ in range(min(want, room)):
                if not self.spawn():
                    break
                if self.boot_failures:
                    break  # one at a time until a child starts

    def spawn(self) -> bool:
        # The master's own records say which slots are taken, not the board.
        used = {k.slot for k in self.kids.values()}
        slot = next((i for i in range(self.board.slots) if i not in used), None)
        if slot is None:
            return False
        # Claimed before the fork: the child may mark itself idle before
        # the master runs again.
        self.board.claim(slot, 0, self.generation)
        # Signals wait until the child has its own handlers: with the
        # master's, a TERM meant for the newborn child would be written to
        # the master's wakeup pipe and stop the whole server.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.board.release(slot)
            log.error("fork: %s", e.strerror)
            self.next_spawn = time.monotonic() + 1.0
            return False
        if pid == 0:
            Child(self, slot, mask).run()  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.board.set_pid(slot, pid)
        self.kids[pid] = ChildRecord(slot, self.generation)
        return True

    def replace_children(self) -> None:
        """A new generation: every child now running finishes what it is
        doing and exits; new ones are spawned with the current settings."""
        self.generation += 1
        self._signal_kids(signal.SIGTERM)
        self.board.set_header(self.pid, self.generation, self.retired)
        self.maintain()

    def reload(self) -> None:
        try:
            new = self.service.load()
            jail = jail_for(new, self.allow_root)
        except ConfigError as e:
            for d in e.diagnostics:
                log.error("%s", str(d))
            log.error("reload refused: the table has errors; the running configuration stays")
            return
        except PrivsepError as e:
            log.error("reload refused: %s; the running configuration stays", str(e))
            return
        problems = self.service.problems(new, standalone=bool(self.handed))
        try:
            prepared = None if problems else self.service.prepare(new)
        except Unusable as e:
            problems = [str(e)]
        if problems:
            for p in problems:
                log.error("%s", p)
            log.error("reload refused; the running configuration stays")
            return
        specs = list(self.handed) if self.handed else self.service.listeners(new)
        added = {}
        try:
            for spec in specs:
                if spec not in self.listeners:
                    added[spec] = bind(spec)
        except OSError as e:
            for socks in added.values():
                for sock in socks:
                    sock.close()
            log.error("reload refused: %s; the running configuration stays", e.strerror)
            return
        for spec in [sp for sp in self.listeners if sp not in specs]:
            for sock in self.listeners.pop(spec):
                sock.close()
        self.listeners.update(added)
        if new["maxchildren"] > self.board.slots:
            log.warning("maxchildren %d: the scoreboard has %d slots; a larger pool needs a restart",
                        new["maxchildren"], self.board.slots)
        old_log = (self.settings["log-facility"], self.settings["log-socket"])
        self.settings, self.jail = new, jail
        if (new["log-facility"], new["log-socket"]) != old_log:
            self.settings_log()
        gc.unfreeze()
        self.prepared = prepared
        gc.freeze()
        self._watched = None  # the new settings' files, as they are now
        log.info("reloaded: listening on %s; replacing %d children", ", ".join(str(sp) for sp in self.listeners),
                 len(self.kids))
        self.replace_children()

    def _stamps(self) -> dict:
        files = self.service.watched_files(self.settings) if hasattr(self.service, "watched_files") else []
        out = {}
        for path in files:
            try:
                st = os.stat(path)
                out[path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                out[path] = None
        return out

    def _watch(self) -> None:
        """Files the children read only through the master (a spam
        database, a password file outside the jail): a change reloads, as
        HUP does."""
        stamps = self._stamps()
        if self._watched is None:
            self._watched = stamps
        elif stamps != self._watched:
            changed = ", ".join(p for p in stamps if stamps[p] != self._watched.get(p))
            self._watched = stamps
            log.info("%s changed: reloading", changed)
            self.reload()

    def _update_title(self) -> None:
        states = self.board.states()
        busy = sum(1 for k in self.kids.values() if states[k.slot:k.slot + 1] in (BUSY, STOPPING))
        self._judge_stress(busy)
        n = len(self.kids)
        text = f"{self.service.prog}: master, {n} child{'' if n == 1 else 'ren'}, {busy} busy"
        if self.stress:
            text += ", under stress"
        if self.stopping:
            text += ", stopping"
        if text != self._title:
            self._title = text
            title(text)
        self.board.set_header(self.pid, self.generation, self.retired, stress=self.stress)

    def _judge_stress(self, busy: int) -> None:
        """Stress on and off, logged; the scoreboard's header carries it
        to the children (smap(8): Stress)."""
        limit = self.settings["maxchildren"]
        if not self.stress and busy >= max(1, STRESS_ON * limit):
            self.stress = True
            log.warning("stress: %d of %d children busy: short time limits until fewer than %d are",
                        busy, limit, int(STRESS_OFF * limit))
        elif self.stress and busy < STRESS_OFF * limit:
            self.stress = False
            log.info("stress over: %d of %d children busy: normal time limits", busy, limit)
