"""ssl-gw: TLS in front of a plain service, with stunnel 3.x's command line.

What it does: turns the stunnel letters into settings on top of the
table (`-p` pem, `-r` connect, `-d` accept, `-v` verify, `-A` ca-file,
`-a` ca-dir, `-s` userid, `-g` groupid, `-t` timeout, `-C` ciphers, `-P`
pidfile; a letter wins over the table's line), prepares what a
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

import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass, field

from smapd.table import keywords
from smapd import dnsclient
from smapd import log as slog
from smapd.sslgw import relay
from smapd import tls
from smapd.sockets import no_delay, readable
from smapd.table.netperm import ConfigError, Diagnostic, Table, check_hosts
from smapd.addresses import client_address
from smapd.exits import Unusable
from smapd.prefork.privsep import pre_jail

log = logging.getLogger("smapd")

#: stunnel 3 letter -> keyword it sets.
LETTERS = {"-p": "pem", "-r": "connect", "-d": "accept", "-v": "verify", "-A": "ca-file", "-a": "ca-dir",
           "-s": "userid", "-g": "groupid", "-t": "timeout", "-C": "ciphers", "-P": "pidfile"}

#: stunnel's -D levels (syslog priorities) as logging levels.
DEBUG_LEVELS = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
                4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}

LOOKUP_LIFETIME = 5.0


@dataclass(frozen=True)
class CommandLine:
    """Where a setting given by a letter comes from."""
    where: str
    file: str = "command line"
    line: int = 0


def apply_options(settings, opts: dict) -> list:
    """Put the stunnel letters into `settings`; the errors, as Diagnostics."""
    errors = []
    for letter, keyword in LETTERS.items():
        if letter not in opts:
            continue
        value = opts[letter]
        if letter == "-P" and value == "":
            settings.override(keyword, None, CommandLine(f"command line {letter}"))
            continue
        kw = keywords.KEYWORDS[(keywords.SSLGW, keyword)]
        try:
            parsed = kw.type.parse([value])
        except ValueError as e:
            errors.append(Diagnostic("command line", 0, "error", f"{letter} {value}: {e}"))
            continue
        settings.override(keyword, parsed, CommandLine(f"command line {letter}"))
    return errors


def load_settings(table: str, names: tuple, opts: dict):
    """ssl-gw's settings: the table's lines for `names`, the letters over
    them, then the rules between keywords (table/rules.py) on the result.
    ConfigError with every error."""
    from smapd.table.rules import evaluate
    settings = keywords.load_or_die(Table.read(table), keywords.SSLGW, names, rules=False).settings
    errors = apply_options(settings, opts)
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
    backend: tuple            # (family, sockaddr)
    backend_text: str
    wrappers: object          # tcpwrap.Tables, or None
    hosts: tuple
    resolver: object
    handshake_timeout: float
    connect_timeout: float
    idle: float
    maxperhost: int = 0
    maxpernet: int = 0
    needs_names: bool = field(default=True)


class GatewayError(Unusable):
    """What makes a gateway impossible: no certificate, a key that will not
    load, no backend address."""


def prepare(settings, service: str) -> Prepared:
    """Raises GatewayError with the reason (file and line where there is one)."""
    pem = settings["pem"]
    if pem is None:
        raise GatewayError("no certificate: give -p PEM, or pem in the table")
    connect = settings["connect"]
    if connect is None:
        raise GatewayError("no backend: give -r [host:]port")
    verify = settings["verify"]
    try:
        context = tls.server_context(pem, tls_min=settings["tls-min"], ciphers=settings["ciphers"], verify=verify,
                                     ca_file=settings["ca-file"], ca_dir=settings["ca-dir"], half_close=True)
        local = tls.local_certificates(settings["ca-file"], settings["ca-dir"]) if verify >= 3 else frozenset()
    except tls.TlsError as e:
        raise GatewayError(str(e)) from None
    if verify >= 3 and not local:
        raise GatewayError("verify level 3 needs the clients' certificates installed locally (-A or -a)")
    host, port = connect
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise GatewayError(f"backend {host}:{port}: {e.strerror}") from None
    wrappers = None
    if settings["tcpwrappers"]:
        from smapd.sslgw import tcpwrap
        wrappers = tcpwrap.Tables(settings["tcpwrappers-dir"])
        for w in wrappers.warnings:
            log.warning("%s", w)
    hosts = settings["hosts"]
    needs_names = bool(wrappers and wrappers.needs_names) or any(
        p.kind in ("name", "unknown") for rule in hosts for p in rule.patterns)
    return Prepared(service=service, context=context, verify=verify, local=local, backend=(family, sockaddr),
                   backend_text=f"{host}:{port}", wrappers=wrappers, hosts=hosts,
                   resolver=dnsclient.make_resolver(settings["resolver"], lifetime=LOOKUP_LIFETIME),
                   handshake_timeout=settings["handshake-timeout"], connect_timeout=settings["connect-timeout"],
                   idle=settings["timeout"], maxperhost=settings["maxperhost"], maxpernet=settings["maxpernet"],
                   needs_names=needs_names)


def admitted(gw: Prepared, addr: str, port: int, server_addr: str = None) -> bool:
    """TCP wrappers and `hosts`, before any TLS byte; logs a refusal.  The
    client's name is looked up only when a rule can use it."""
    name, paranoid = dnsclient.lookup_client(addr, gw.resolver) if gw.needs_names else (None, False)
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


def handle(conn: socket.socket, addr: str, port: int, gw: Prepared, first_byte: float = None) -> None:
    """One admitted client: handshake, backend, relay, log.  Closes `conn`.
    `first_byte`: seconds for the ClientHello to begin, else the
    handshake time-out is all."""
    started = time.monotonic()
    log.info("%s connected from %s:%d", gw.service, addr, port)
    if first_byte is not None and not readable(conn, min(first_byte, gw.handshake_timeout)):
        log.warning("%s: SSL_accept from %s:%d: no ClientHello within %gs", gw.service, addr, port,
                    min(first_byte, gw.handshake_timeout))
        conn.close()
        return
    try:
        # No Nagle on either relay socket (stunnel sets it too): each read
        # is relayed as one write, and a small trailing write would
        # otherwise wait for the peer's delayed ACK (40 ms), as would a
        # fatal alert before the close.
        no_delay(conn)
        conn.settimeout(gw.handshake_timeout)
        sock = gw.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as e:
        log.warning("%s: %s:%d: %s", gw.service, addr, port, e)
        conn.close()
        return
    backend = None
    try:
        try:
            sock.do_handshake()
        except socket.timeout:
            log.warning("%s: SSL_accept from %s:%d: timed out after %gs", gw.service, addr, port,
                        gw.handshake_timeout)
            return
        except (ssl.SSLError, OSError) as e:
            log.warning("%s: SSL_accept from %s:%d: %s", gw.service, addr, port, tls.handshake_failure(e))
            return
        refused = tls.check_peer(sock, gw.verify, gw.local)
        if refused:
            log.warning("%s: %s:%d: REFUSED: %s", gw.service, addr, port, refused)
            return
        subject = tls.peer_subject(sock)
        if subject:
            log.info("%s: VERIFY OK: %s", gw.service, subject)
        log.info("%s: %s:%d: %s", gw.service, addr, port, tls.describe(sock))
        try:
            backend = socket.socket(gw.backend[0], socket.SOCK_STREAM)
            no_delay(backend)
            backend.settimeout(gw.connect_timeout)
            backend.connect(gw.backend[1])
        except OSError as e:
            log.error("%s: connect to %s: %s", gw.service, gw.backend_text,
                      "timed out" if isinstance(e, socket.timeout) else (e.strerror or e))
            return
        counts = relay.relay(sock, backend, gw.idle)
        log.info("Connection closed: %d bytes sent to SSL, %d bytes sent to socket", counts.to_ssl,
                 counts.to_socket)
        log.info("%s: %s:%d: %s after %.2fs", gw.service, addr, port, counts.ended_by,
                 time.monotonic() - started)
    finally:
        if backend is not None:
            backend.close()
        sock.close()


def _server_address(conn) -> str:
    """The address the client reached (daemon@host patterns match it)."""
    try:
        return str(client_address(conn.getsockname()[0]))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------
# inetd mode

def inetd_main(settings, prog: str, names: tuple, table: str, opts: dict, service: str,
               allow_root: bool = False) -> int:
    """One connection on fd 0, served by the skeleton's stand-alone path
    (prefork/standalone.py) with the service a daemon's children run:
    prepared as root, then the jail, then TCP wrappers, the handshake and
    the relay."""
    from smapd.prefork.standalone import serve_one
    svc = SslGwService(prog, names, table, opts, service)
    _setup_log(prog, settings, opts, inetd=True, logfile=svc.logfile)
    return serve_one(svc, settings, allow_root)


def _setup_log(prog: str, settings, opts: dict, inetd: bool, logfile=None):
    """syslog (facility from the table), or `-o FILE`, or stderr with -f in
    the foreground; `-D LEVEL` as stunnel's syslog level."""
    debug = "-f" in opts and not inetd
    logger = slog.setup(prog, settings["log-facility"], debug, settings["log-socket"], logfile=logfile)
    if "-D" in opts:
        logger.setLevel(DEBUG_LEVELS[int(opts["-D"])])
    return logger


def open_logfile(opts: dict):
    """stunnel's -o FILE, opened for appending (before any jail), or None."""
    return open(opts["-o"], "a", buffering=1) if "-o" in opts else None


# ----------------------------------------------------------------------
# ssl-gw -d

class SslGwService:
    """ssl-gw's side of the master (see master.Service)."""

    def __init__(self, prog: str, names: tuple, table: str, opts: dict, service: str):
        self.prog = prog
        self.names = names
        self.table = table
        self.opts = opts
        self.service = service
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
        return load_settings(self.table, self.names, self.opts)

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
        return [ListenSpec(host, port, DEFERRED, client_first=True)]

    def prepare(self, settings) -> Prepared:
        pre_jail()
        settings.resolve_system_defaults()
        return prepare(settings, self.service)

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
            handle(conn, addr, port, gw, first_byte=FIRST_BYTE if tag == DEFERRED else None)
        else:
            conn.close()


def daemon_main(settings, prog: str, names: tuple, table: str, opts: dict, service: str,
                allow_root: bool = False) -> int:
    from smapd.prefork.master import Master
    foreground = "-f" in opts
    master = Master(SslGwService(prog, names, table, opts, service), settings, foreground, foreground,
                    allow_root, settings["pidfile"], settings["scoreboard"])
    return master.start()
