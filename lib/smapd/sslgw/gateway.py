"""ssl-gw: TLS in front of a plain service, with stunnel 3.x's command line.

What it does: turns the stunnel letters into settings on top of the
table (`-p` pem, `-r` connect, `-d` accept, `-v` verify, `-A` ca-file,
`-a` ca-dir, `-s` userid, `-g` groupid, `-t` timeout, `-C` ciphers, `-P`
pidfile, `-D` log-facility; a letter wins over the table's line), and
stunnel 3's roles (`Role`): a TLS server in front of `-r` or of a program
(`-l`, the decrypted stream on its stdin and stdout), or with `-c` a TLS
client in front of a TLS server at `-r`, after `-n`'s STARTTLS (or STLS)
when asked (negotiate.py).  It prepares what a
connection needs while still root (the TLS context with its key, the
locally installed certificates of verify level 3, the backend's address,
the TCP wrappers tables, the resolver), and serves connections: in inetd
mode the one on fd 0, through the skeleton's stand-alone path
(prefork/standalone.py: dropping to `-s`/`-g`, and into `directory` when
set, before the client is checked), with `-d` through the prefork master.

Per connection, in this order: `maxperhost` and `maxpernet` (daemon mode), the TCP
wrappers (hosts.allow, hosts.deny, under the service name: `-N`, else
the `-r` argument with `:` turned into `.`, as stunnel does) and the
table's `hosts` rules, all before any TLS byte; the handshake (within
`handshake-timeout`); verify level 3's DER comparison; the backend
connection (within `connect-timeout`); the relay (relay.py) until both
sides are done or `timeout` seconds pass idle.  Log lines are stunnel's:
`SERVICE connected from ADDR:PORT`, `... REFUSED by libwrap`,
`Connection closed: N bytes sent to SSL, M bytes sent to socket`.

What it trusts: the operator's command line and table.

What it must never do: send a TLS byte to a client the wrappers or the
hosts rules refuse, connect the backend before the handshake succeeded,
or relay as root.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field, replace

from smapd.table import keywords
from smapd import log as slog
from smapd.sslgw import negotiate, relay
from smapd import tls
from smapd.sockets import no_delay, readable
from smapd.table.netperm import ConfigError, Diagnostic, Table, check_hosts
from smapd.addresses import client_address
from smapd.exits import Unusable
from smapd.prefork.activation import defers_accept
from smapd.prefork.privsep import pre_jail

log = logging.getLogger("smapd")

#: stunnel 3 letter -> keyword it sets.
LETTERS = {"-p": "pem", "-r": "connect", "-d": "accept", "-v": "verify", "-A": "ca-file", "-a": "ca-dir",
           "-s": "userid", "-g": "groupid", "-t": "timeout", "-C": "ciphers", "-P": "pidfile"}

#: stunnel's -D levels (syslog priorities) as logging levels.
DEBUG_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
                4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}


def debug_level(text: str) -> tuple:
    """stunnel's `-D [facility.]level` -> (facility or None, level 0-7);
    ValueError with the reason."""
    import logging.handlers
    facility, _, level = text.rpartition(".")
    if level not in [str(i) for i in range(8)]:
        raise ValueError("the level is 0 to 7, after an optional facility and a dot (mail.7)")
    if facility and facility.lower() not in logging.handlers.SysLogHandler.facility_names:
        raise ValueError(f"{facility!r} is not a syslog facility")
    return (facility.lower() or None), int(level)


@dataclass(frozen=True)
class Role:
    """What this ssl-gw is, from stunnel 3's letters: a TLS server in front
    of -r (the default), a TLS server in front of a program (`program`:
    -l's argv), or a TLS client (-c) in front of the TLS server at -r,
    negotiating `negotiate` (-n) first."""

    client: bool = False
    program: tuple = ()
    negotiate: str = None

LOOKUP_LIFETIME = 5.0


@dataclass(frozen=True)
class CommandLine:
    """Where a setting given by a letter comes from."""
    where: str
    file: str = "command line"
    line: int = 0


def apply_options(settings, opts: dict, service: str = "ssl-gw", prog: str = "ssl-gw") -> list:
    """Put the stunnel letters into `settings`; the errors, as Diagnostics.
    stunnel 3's `-P none` (or an empty -P) writes no pid file, and `-P
    dir/` writes PROG.SERVICE.pid in that directory."""
    errors = []
    if "-D" in opts:
        facility, _ = debug_level(opts["-D"])
        if facility:
            settings.override("log-facility", facility, CommandLine("command line -D"))
    for letter, keyword in LETTERS.items():
        if letter not in opts:
            continue
        value = opts[letter]
        if letter == "-P" and value in ("", "none"):
            settings.override(keyword, None, CommandLine(f"command line {letter}"))
            continue
        if letter == "-P" and value.endswith("/"):
            value = os.path.join(value, f"{prog}.{service}.pid")
        kw = keywords.KEYWORDS[(keywords.SSLGW, keyword)]
        try:
            parsed = kw.type.parse([value])
        except ValueError as e:
            errors.append(Diagnostic("command line", 0, "error", f"{letter} {value}: {e}"))
            continue
        settings.override(keyword, parsed, CommandLine(f"command line {letter}"))
    return errors


def load_settings(table: str, names: tuple, opts: dict, optional: bool = False):
    """ssl-gw's settings: the table's lines for `names`, the letters over
    them, then the rules between keywords (table/rules.py) on the result.
    `optional`: a missing table is an empty one (the default table, which
    stunnel 3's users never had).  ConfigError with every error."""
    from smapd.table.rules import evaluate
    if optional and not os.path.lexists(table):
        parsed = Table.parse(b"", table)
    else:
        parsed = Table.read(table)
    settings = keywords.load_or_die(parsed, keywords.SSLGW, names, rules=False).settings
    errors = apply_options(settings, opts, names[-1], names[0])
    errors += [d for d in evaluate(settings, table) if d.severity == "error"]
    if errors:
        raise ConfigError(errors)
    return settings


def service_name(remote: str) -> str:
    """stunnel's TCP-wrappers service name: `-r imap` gives `imap`,
    `-r localhost:143` gives `localhost.143`."""
    return remote.replace(":", ".")


@dataclass
class Prepared:
    """What every connection of one ssl-gw needs, made before the jail."""
    service: str
    context: ssl.SSLContext
    verify: int
    local: frozenset
    backend: tuple            # (family, sockaddr); None with -l
    backend_text: str
    wrappers: object          # tcpwrap.Tables, or None
    hosts: tuple
    resolver: object
    handshake_timeout: float
    connect_timeout: float
    idle: float
    stress_timeout: float = 10.0
    maxperhost: int = 0
    maxpernet: int = 0
    needs_names: bool = field(default=True)
    role: Role = field(default_factory=Role)
    server_hostname: str = None  # -c: the name sent in the ClientHello (SNI)


class GatewayError(Unusable):
    """What makes a gateway impossible: no certificate, a key that will not
    load, no backend address, no program to run."""


def _check_program(program: str, directory: str) -> None:
    """-l's program must be an absolute path (no shell, no PATH) to an
    executable file, inside the jail when there is one."""
    if not os.path.isabs(program):
        raise GatewayError(f"-l {program}: give the program's absolute path (it is run without a shell)")
    path = os.path.join(directory, program.lstrip("/")) if directory else program
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        where = f" inside the directory {directory}" if directory else ""
        raise GatewayError(f"-l {program}: not an executable file{where}")


def prepare(settings, service: str, role: Role = Role()) -> Prepared:
    """Raises GatewayError with the reason (file and line where there is one)."""
    pem = settings["pem"]
    if pem is None and not role.client:
        raise GatewayError("no certificate: give -p PEM, or pem in the table")
    connect = settings["connect"]
    if connect is None and not role.program:
        raise GatewayError("no backend: give -r [host:]port, or -l program")
    verify = settings["verify"]
    common = dict(tls_min=settings["tls-min"], ciphers=settings["ciphers"], verify=verify,
                  ca_file=settings["ca-file"], ca_dir=settings["ca-dir"])
    try:
        if role.client:
            context = tls.client_context(pem, **common)
        else:
            context = tls.server_context(pem, **common, half_close=True)
        local = tls.local_certificates(settings["ca-file"], settings["ca-dir"]) if verify >= 3 else frozenset()
    except tls.TlsError as e:
        raise GatewayError(str(e)) from None
    if verify >= 3 and not local:
        raise GatewayError(f"verify level 3 needs the {'server' if role.client else 'clients'}' certificates "
                           "installed locally (-A or -a)")
    backend, server_hostname = None, None
    if role.program:
        _check_program(role.program[0], settings["directory"])
        backend_text = role.program[0]
    else:
        host, port = connect
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as e:
            raise GatewayError(f"backend {host}:{port}: {e.strerror}") from None
        backend, backend_text = (family, sockaddr), f"{host}:{port}"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            server_hostname = host  # SNI takes names only
    wrappers = None
    if settings["tcpwrappers"]:
        from smapd.sslgw import tcpwrap
        wrappers = tcpwrap.Tables(settings["tcpwrappers-dir"])
        for w in wrappers.warnings:
            log.warning("%s", w)
    hosts = settings["hosts"]
    needs_names = bool(wrappers and wrappers.needs_names) or any(
        p.kind in ("name", "unknown") for rule in hosts for p in rule.patterns)
    return Prepared(service=service, context=context, verify=verify, local=local, backend=backend,
                   backend_text=backend_text, wrappers=wrappers, hosts=hosts,
                   resolver=_resolver(settings) if needs_names else None,
                   handshake_timeout=settings["handshake-timeout"], connect_timeout=settings["connect-timeout"],
                   idle=settings["timeout"], stress_timeout=settings["stress-timeout"],
                   maxperhost=settings["maxperhost"], maxpernet=settings["maxpernet"],
                   needs_names=needs_names, role=role, server_hostname=server_hostname)


def _resolver(settings):
    """dnspython is imported only when a rule needs the client's name: it
    is most of an inetd start's imports (bench/NOTES.md)."""
    from smapd import dnsclient
    return dnsclient.make_resolver(settings["resolver"], lifetime=LOOKUP_LIFETIME)


def admitted(gw: Prepared, addr: str, port: int, server_addr: str = None) -> bool:
    """TCP wrappers and `hosts`, before any TLS byte; logs a refusal.  The
    client's name is looked up only when a rule can use it."""
    name, paranoid = (None, False)
    if gw.needs_names:
        from smapd import dnsclient  # imported before the jail, by _resolver
        name, paranoid = dnsclient.lookup_client(addr, gw.resolver)
    if gw.wrappers is not None:
        from smapd.sslgw import tcpwrap
        decision = gw.wrappers.check(gw.service, tcpwrap.Client(addr, name, paranoid), server_addr)
        if not decision.allowed:
            log.warning("%s: connection from %s:%d REFUSED by libwrap (%s)", gw.service, addr, port,
                        decision.reason)
            return False
    if gw.hosts:
        permitted, rule = check_hosts(gw.hosts, addr, name)
        if not permitted:
            log.warning("%s: connection from %s:%d REFUSED by the table (%s)", gw.service, addr, port,
                        rule.where if rule else "no hosts rule matches")
            return False
    return True


#: The tag of the daemon's listeners, which defer the accept until the
#: client has spoken (prefork/master.py: TCP_DEFER_ACCEPT).
DEFERRED = "deferred"
#: Seconds a connection from such a listener may wait for its first byte
#: (the ClientHello): it was accepted with the byte there, or after the
#: kernel's deferral, already idle for DEFER_ACCEPT seconds.
FIRST_BYTE = 2.0


def handle(conn: socket.socket, addr: str, port: int, gw: Prepared, first_byte: float = None,
           stressed=None) -> None:
    """One admitted client: handshake (or, with -c, the connection to the
    TLS server), backend or program, relay, log.  Closes `conn`.
    `first_byte`: seconds for the ClientHello to begin, else the
    handshake time-out is all.  `stressed()`: is the pool under stress
    (None: there is no pool, as in inetd mode)?  Then `stress-timeout`
    bounds the handshake and an idle relay."""
    started = time.monotonic()
    limits = _Limits(gw, stressed)
    log.info("%s connected from %s:%d", gw.service, addr, port)
    if first_byte is not None and not readable(conn, min(first_byte, gw.handshake_timeout)):
        log.warning("%s: SSL_accept from %s:%d: no ClientHello within %gs", gw.service, addr, port,
                    min(first_byte, gw.handshake_timeout))
        conn.close()
        return
    # No Nagle on either relay socket (stunnel sets it too): each read is
    # relayed as one write, and a small trailing write would otherwise
    # wait for the peer's delayed ACK (40 ms), as would a fatal alert
    # before the close.
    try:
        no_delay(conn)
    except OSError:
        pass
    if gw.role.client:
        _as_client(conn, addr, port, gw, started, limits)
    else:
        _as_server(conn, addr, port, gw, started, limits)


@dataclass(frozen=True)
class _Limits:
    """The time limits of one connection, shorter while the pool is under
    stress (prefork/master.py decides, the scoreboard tells)."""
    gw: Prepared
    stressed: object

    def handshake(self) -> float:
        if self.stressed is not None and self.stressed():
            return min(self.gw.handshake_timeout, self.gw.stress_timeout)
        return self.gw.handshake_timeout

    def relay_stress(self):
        return None if self.stressed is None else (self.stressed, self.gw.stress_timeout)


def _as_server(conn, addr: str, port: int, gw: Prepared, started: float, limits: _Limits) -> None:
    handshake = limits.handshake()
    try:
        conn.settimeout(handshake)
        sock = gw.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as e:
        log.warning("%s: %s:%d: %s", gw.service, addr, port, e)
        conn.close()
        return
    backend = program = None
    try:
        try:
            sock.do_handshake()
        except socket.timeout:
            log.warning("%s: SSL_accept from %s:%d: timed out after %gs", gw.service, addr, port, handshake)
            return
        except (ssl.SSLError, OSError) as e:
            log.warning("%s: SSL_accept from %s:%d: %s", gw.service, addr, port, tls.handshake_failure(e))
            return
        refused = tls.check_peer(sock, gw.verify, gw.local)
        if refused:
            log.warning("%s: %s:%d: REFUSED: %s", gw.service, addr, port, refused)
            return
        if log.isEnabledFor(logging.INFO):  # -D 4 and below: not even the words
            subject = tls.peer_subject(sock) if gw.verify else None
            if subject:
                log.info("%s: VERIFY OK: %s", gw.service, subject)
            log.info("%s: %s:%d: %s", gw.service, addr, port, tls.describe(sock))
        if gw.role.program:
            backend, program = _run_program(gw, addr, port)
        else:
            backend = _connect_backend(gw)
        if backend is not None:
            _relay(sock, backend, gw, addr, port, started, limits)
    finally:
        if backend is not None:
            backend.close()
        sock.close()
        if program is not None:
            _reap(program, gw)


def _as_client(conn, addr: str, port: int, gw: Prepared, started: float, limits: _Limits) -> None:
    """-c: the plain client on `conn`, TLS to the server at -r (after -n's
    negotiation)."""
    backend = _connect_backend(gw)
    if backend is None:
        conn.close()
        return
    sock = None
    handshake = limits.handshake()
    try:
        if gw.role.negotiate:
            try:
                negotiate.negotiate(gw.role.negotiate, backend, conn, handshake, socket.gethostname())
            except (negotiate.NegotiationError, OSError) as e:
                log.warning("%s: %s with %s: %s", gw.service, gw.role.negotiate, gw.backend_text, e)
                return
        backend.settimeout(handshake)
        sock = gw.context.wrap_socket(backend, server_side=False, server_hostname=gw.server_hostname,
                                      do_handshake_on_connect=False)
        try:
            sock.do_handshake()
        except socket.timeout:
            log.warning("%s: SSL_connect to %s: timed out after %gs", gw.service, gw.backend_text, handshake)
            return
        except (ssl.SSLError, OSError) as e:
            log.warning("%s: SSL_connect to %s: %s", gw.service, gw.backend_text, tls.handshake_failure(e))
            return
        refused = tls.check_peer(sock, gw.verify, gw.local)
        if refused:
            log.warning("%s: %s: REFUSED: %s", gw.service, gw.backend_text, refused)
            return
        log.info("%s: %s: %s", gw.service, gw.backend_text, tls.describe(sock))
        _relay(sock, conn, gw, addr, port, started, limits)
    finally:
        (sock or backend).close()
        conn.close()


def _connect_backend(gw: Prepared):
    """The connection to -r, or None (logged)."""
    backend = socket.socket(gw.backend[0], socket.SOCK_STREAM)
    try:
        no_delay(backend)
        backend.settimeout(gw.connect_timeout)
        backend.connect(gw.backend[1])
        return backend
    except OSError as e:
        log.error("%s: connect to %s: %s", gw.service, gw.backend_text,
                  "timed out" if isinstance(e, socket.timeout) else (e.strerror or e))
        backend.close()
        return None


#: Seconds a -l program has to exit once its stream is closed.
PROGRAM_EXIT = 5.0


def _run_program(gw: Prepared, addr: str, port: int) -> tuple:
    """-l: the program with the stream as its stdin, stdout and stderr (as
    inetd gives it), no shell, the environment stunnel 3 gives (REMOTE_HOST)
    and a PATH.  (our end of the stream, the process), or (None, None)."""
    ours, theirs = socket.socketpair()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "REMOTE_HOST": addr, "REMOTE_PORT": str(port)}
    try:
        program = subprocess.Popen(list(gw.role.program[1:]), executable=gw.role.program[0],
                                   stdin=theirs, stdout=theirs, stderr=theirs, env=env, cwd="/",
                                   close_fds=True, preexec_fn=_default_signals)
    except OSError as e:
        log.error("%s: cannot run %s: %s", gw.service, gw.role.program[0], e.strerror or e)
        ours.close()
        return None, None
    finally:
        theirs.close()
    log.info("%s: %s:%d: running %s (pid %d)", gw.service, addr, port, gw.role.program[0], program.pid)
    return ours, program


def _default_signals() -> None:
    # A child ignores HUP and USR1 (the master's signals); a program must
    # not inherit that.
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _reap(program, gw: Prepared) -> None:
    """Wait for a -l program (its stream is closed); kill it if it stays."""
    try:
        status = program.wait(PROGRAM_EXIT)
    except subprocess.TimeoutExpired:
        program.kill()
        status = program.wait()
        log.warning("%s: %s (pid %d) killed: still running %gs after its stream closed", gw.service,
                    gw.role.program[0], program.pid, PROGRAM_EXIT)
        return
    if status:
        log.warning("%s: %s (pid %d) exited with status %d", gw.service, gw.role.program[0], program.pid, status)


def _relay(tls_sock, plain, gw: Prepared, addr: str, port: int, started: float, limits: _Limits) -> None:
    counts = relay.relay(tls_sock, plain, gw.idle, stress=limits.relay_stress())
    log.info("Connection closed: %d bytes sent to SSL, %d bytes sent to socket", counts.to_ssl,
             counts.to_socket)
    log.info("%s: %s:%d: %s after %.2fs", gw.service, addr, port, counts.ended_by, time.monotonic() - started)


def _server_address(conn) -> str:
    """The address the client reached (daemon@host patterns match it)."""
    try:
        return str(client_address(conn.getsockname()[0]))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------
# inetd mode

def inetd_main(svc: "SslGwService", settings, allow_root: bool = False) -> int:
    """One connection on fd 0, served by the skeleton's stand-alone path
    (prefork/standalone.py) with the service a daemon's children run:
    prepared as root, then the jail, then TCP wrappers, the handshake and
    the relay."""
    from smapd.prefork.standalone import serve_one
    _setup_log(svc.prog, settings, svc.opts, inetd=True, logfile=svc.logfile)
    return serve_one(svc, settings, allow_root)


def _setup_log(prog: str, settings, opts: dict, inetd: bool, logfile=None):
    """syslog (facility from the table), or `-o FILE`, or stderr with -f in
    the foreground; `-D LEVEL` as stunnel's syslog level."""
    debug = "-f" in opts and not inetd
    logger = slog.setup(prog, settings["log-facility"], debug, settings["log-socket"], logfile=logfile)
    if "-D" in opts:
        logger.setLevel(DEBUG_LEVELS[debug_level(opts["-D"])[1]])
    return logger


def open_logfile(opts: dict):
    """stunnel's -o FILE, opened for appending (before any jail), or None."""
    return open(opts["-o"], "a", buffering=1) if "-o" in opts else None


# ----------------------------------------------------------------------
# ssl-gw -d

class SslGwService:
    """ssl-gw's side of the master (see master.Service)."""

    def __init__(self, prog: str, names: tuple, table: str, opts: dict, service: str,
                 role: Role = Role(), optional_table: bool = False):
        self.prog = prog
        self.names = names
        self.table = table
        self.opts = opts
        self.service = service
        self.role = role
        self.optional_table = optional_table
        self.logfile = open_logfile(opts)

    def setup_log(self, settings, debug: bool):
        """At start, on HUP and on USR1: -o's file is opened again (after a
        rotation, the new file), then the log set up."""
        if self.logfile is not None and self.logfile.fileno() >= 0 and \
                os.path.exists(self.opts["-o"]) and \
                os.stat(self.opts["-o"]).st_ino != os.fstat(self.logfile.fileno()).st_ino:
            self.logfile = open_logfile(self.opts)
        return _setup_log(self.prog, settings, self.opts, inetd=False, logfile=self.logfile)

    def log_files(self) -> list:
        """Descriptors the detached master keeps (python-daemon closes the rest)."""
        return [self.logfile.fileno()] if self.logfile else []

    def load(self):
        return load_settings(self.table, self.names, self.opts, self.optional_table)

    def problems(self, settings, standalone: bool = False) -> list:
        out = []
        if settings["accept"] is None and not standalone:
            out.append("no listener: give -d [host:]port")
        directory = settings["directory"]
        if directory and not os.path.isdir(directory):
            out.append(f"directory {directory}: not a directory")
        return out

    def listeners(self, settings) -> list:
        from smapd.prefork.master import ListenSpec
        host, port = settings["accept"]
        if self.role.client:
            # -c's clients speak plain text, and many wait for the server's
            # greeting: no deferred accept, no first-byte deadline.
            return [ListenSpec(host, port, None)]
        return [ListenSpec(host, port, DEFERRED, client_first=True)]

    def prepare(self, settings) -> Prepared:
        settings.resolve_system_defaults()
        gw = prepare(settings, self.service, self.role)
        pre_jail(dns=gw.needs_names)
        return gw

    def serve(self, conn, addr: str, tag, gw: Prepared, child) -> None:
        port = conn.getpeername()[1]
        if child.sessions_from(addr) > gw.maxperhost:
            log.warning("%s: connection from %s:%d refused: more than maxperhost %d", gw.service, addr, port,
                        gw.maxperhost)
            conn.close()
            return
        if child.sessions_from_net(addr) > gw.maxpernet:
            log.warning("%s: connection from %s:%d refused: more than maxpernet %d from its network", gw.service,
                        addr, port, gw.maxpernet)
            conn.close()
            return
        if admitted(gw, addr, port, _server_address(conn)):
            handle(conn, addr, port, gw, first_byte=FIRST_BYTE if tag == DEFERRED else None,
                   stressed=getattr(child, "stressed", None))
        else:
            conn.close()


def daemon_main(svc: SslGwService, settings, allow_root: bool = False, handed=None) -> int:
    """ssl-gw -d, or the master on the listeners inetd or systemd handed
    over (activation.py: then -d's address is not used, the master stays
    in the foreground, and a pid file is written only when -P or the
    table names one)."""
    from smapd.prefork.master import Master
    foreground = "-f" in svc.opts
    pidfile = settings["pidfile"] if not handed or settings.is_set("pidfile") else None
    if handed and not svc.role.client:
        # A socket unit's DeferAcceptSec= is TCP_DEFER_ACCEPT: the client
        # has spoken when a child wakes, as on the daemon's own listeners.
        handed = {replace(spec, tag=DEFERRED, client_first=True) if defers_accept(socks[0]) else spec: socks
                  for spec, socks in handed.items()}
    master = Master(svc, settings, foreground, foreground, allow_root, pidfile, settings["scoreboard"], handed)
    return master.start()
