"""Serving one smap client, in inetd mode and in the children of `smap -daemon`.

What it does: the pieces both modes share (the protocol's settings and
the session's limits from the table, what to load before the jail, the
client's forward-confirmed name, the `hosts` rules, running the session)
and, for `smap -daemon`, the service the prefork master (master.py)
runs: the listeners of `listen` (`smtps` ones with TLS on accept), what
a child needs prepared (resolver, record types, time zone, host name, the
TLS context with its key, the policy's data: spam database and password
file, which the master watches for changes), and per connection:
`maxperhost` (421 4.7.0 beyond it, before any DNS work), the name lookup
(inside the jail, through the resolver prepared outside it), the `hosts`
rules, the policy's hooks (policy.py) and the session, which reports its
SMTP stage to the child's title and slot.

What it trusts: the table as root read it; nothing from the client.

What it must never do: serve a client the `hosts` rules refuse, or start
a session outside the jail when running as root.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from smapd.table import keywords
from smapd import dnsclient
from smapd.table.netperm import Table, check_hosts
from smapd.exits import Unusable
from smapd.prefork.pidfile import pidfile_path
from smapd.smap.protocol import Protocol, Settings as ProtocolSettings
from smapd.smap.session import Limits, Session, TlsSetup, lingering_close, log_refusal

log = logging.getLogger("smapd")

#: Seconds the client's name may take to look up.
LOOKUP_LIFETIME = 10.0


def protocol_settings(settings) -> ProtocolSettings:
    return ProtocolSettings(hostname=settings["hostname"], maxbytes=settings["maxbytes"],
                            maxrecip=settings["maxrecip"], errors_max=settings["errors-max"],
                            banner=settings["banner"], starttls=settings["ssl"] is not None,
                            auth=tuple(m.lower() for m in settings["auth"]) if settings["md5file"] else (),
                            auth_requires_tls=settings["auth-requires-tls"])


def limits(settings, stressed=None) -> Limits:
    return Limits(idle=settings["timeout"], session=settings["session-timeout"],
                  min_rate=settings["min-data-rate"], crlf=settings["crlf"],
                  stress_idle=settings["stress-timeout"], stress_session=settings["stress-session-timeout"],
                  stressed=stressed)


def prepare_for_jail(settings) -> None:
    """Load now what cannot be loaded inside the jail."""
    from smapd.prefork.privsep import pre_jail
    pre_jail()
    settings.resolve_system_defaults()  # the FQDN default asks the resolver and /etc/hosts


#: `ssl-auth` as a verify level of tls.server_context.
SSL_AUTH_LEVELS = {"none": 0, "optional": 1, "required": 2}


def tls_context(settings):
    """The SSLContext of `ssl` (None without it): built as root, before the
    jail, since the key is root's.  Raises tls.TlsError."""
    if settings["ssl"] is None:
        return None
    from smapd import tls
    return tls.server_context(settings["ssl"], verify=SSL_AUTH_LEVELS[settings["ssl-auth"]],
                              ca_file=settings["ssl-ca"], system_cas=True)


def make_resolver(settings):
    return dnsclient.make_resolver(settings["resolver"], lifetime=LOOKUP_LIFETIME)


def client_name(addr: str, resolver) -> str:
    return dnsclient.confirmed_name(addr, resolver) or "unknown"


def refuse(sock, result, name: str, addr: str) -> None:
    """Send a refusal's replies (before the greeting) and close."""
    for why in result.log:
        log_refusal(name, addr, why, result.replies[-1])
    try:
        sock.settimeout(10)
        sock.sendall(b"".join(r.render() for r in result.replies))
    except OSError:
        pass
    lingering_close(sock, idle_peer=True)


def admitted(settings, proto: Protocol, sock, name: str, addr: str) -> bool:
    """The `hosts` rules; a refused client has had its 554 when this says False."""
    permitted, rule = check_hosts(settings["hosts"], addr, None if name == "unknown" else name)
    if not permitted:
        refuse(sock, proto.refuse_client(f"deny use of gateway ({rule.where if rule else 'no hosts rule matches'})"),
               name, addr)
    return permitted


def policy_setup(settings, resolver):
    """The checks' data (policy.py), read before the jail.  Raises OSError
    or auth.AuthFileError naming the file."""
    from smapd.smap import policy
    return policy.Checks.from_settings(settings, resolver)


def run_session(sock, proto: Protocol, settings, spool_dir: str, name: str, addr: str, observer=None,
                tls_context=None, smtps: bool = False, setup=None, child=None) -> None:
    if setup is not None:
        from smapd.smap import policy
        policy.new_session(setup, addr, name, spool_dir).hooks(proto)
    if child is not None and proto.verify_password is not None:
        count_auth_failures(proto, child, addr, settings["auth-failures-max"], settings["auth-failures-window"])
    tls = TlsSetup(tls_context, on_connect=smtps) if tls_context is not None else None
    # A pool's child knows the stress of the pool; inetd mode has none.
    stressed = getattr(child, "stressed", None)
    Session(sock, proto, limits(settings, stressed), spool_dir, settings["hostname"], name, addr,
            greet_delay=settings["greet-delay"], observer=observer, tls=tls).serve()  # closes the connection


def count_auth_failures(proto: Protocol, child, addr: str, limit: int, window: int) -> None:
    """A failed AUTH counts for the client's address over every session
    of the pool (the child's scoreboard), so that parallel connections
    and many sessions do not multiply a guesser's tries; at `limit`
    within `window` seconds, AUTH gets 454 4.7.0 before any password is
    looked at."""
    verify = proto.verify_password

    def counted(user, password):
        ok = verify(user, password)
        if not ok:
            child.auth_failed(addr, window)
        return ok

    def blocked():
        n = child.auth_failures(addr, window)
        return f"{n} AUTH failures from this address in {window}s (auth-failures-max {limit})" if n >= limit else None
    proto.verify_password = counted
    proto.auth_blocked = blocked


# ----------------------------------------------------------------------
# smap -daemon

@dataclass
class Prepared:
    """What every session of smap needs, made before the jail."""
    resolver: object
    spool_dir: str      # "/" inside the jail; the spool's path when not jailed
    tls_context: object = None
    setup: object = None            # policy.Checks


class SmapService:
    """smap's side of the master (see master.Service)."""

    def __init__(self, prog: str, name: str, table: str):
        self.prog = prog
        self.name = name
        self.table = table

    def load(self):
        return keywords.load_or_die(Table.read(self.table), keywords.SMAP, (self.name,)).settings

    def problems(self, settings, standalone: bool = False) -> list:
        out = []
        directory = settings["directory"]
        if not os.path.isdir(directory):
            out.append(f"directory {directory} ({settings.where('directory')}): not a directory")
        # The rules between keywords (listen … smtps needs ssl, auth needs
        # md5file, ...) were applied when the table was loaded.
        return out

    def unavailable(self, conn, addr: str, settings, reason: str) -> None:
        """421 4.3.0 and close (the client is to try again later)."""
        refuse(conn, Protocol(protocol_settings(settings), "unknown", addr).unavailable(reason), "unknown", addr)

    def watched_files(self, settings) -> list:
        """Files outside the jail whose change means a reload (the master
        stats them; its children could not)."""
        return [f for f in (settings["spam-database"], settings["md5file"], settings["recipients"]) if f]

    def listeners(self, settings) -> list:
        from smapd.prefork.master import ListenSpec
        return [ListenSpec(l.addr, l.port, "smtps" if l.tls else None, client_first=l.tls) for l in settings["listen"]]

    def prepare(self, settings) -> Prepared:
        """Reads the key, the spam database and the password file once;
        Unusable names the one that cannot be used."""
        from smapd.smap.password_file import AuthFileError
        from smapd.tls import TlsError
        prepare_for_jail(settings)
        jailed = os.geteuid() == 0
        resolver = make_resolver(settings)
        try:
            context = tls_context(settings)
        except TlsError as e:
            raise Unusable(f"ssl ({settings.where('ssl')}): {e}") from None
        try:
            setup = policy_setup(settings, resolver)
        except (OSError, AuthFileError) as e:
            raise Unusable(str(e)) from None
        return Prepared(resolver, "/" if jailed else os.path.abspath(settings["directory"]), context, setup)

    def serve(self, conn, addr: str, tag, prepared: Prepared, child) -> None:
        s = child.settings
        held = child.sessions_from(addr)
        if held > s["maxperhost"]:
            proto = Protocol(protocol_settings(s), "unknown", addr)
            refuse(conn, proto.too_many_connections(s["maxperhost"]), "unknown", addr)
            return
        if child.sessions_from_net(addr) > s["maxpernet"]:
            proto = Protocol(protocol_settings(s), "unknown", addr)
            refuse(conn, proto.too_many_from_network(s["maxpernet"]), "unknown", addr)
            return
        name = client_name(addr, prepared.resolver)
        proto = Protocol(protocol_settings(s), name, addr)
        if admitted(s, proto, conn, name, addr):
            run_session(conn, proto, s, prepared.spool_dir, name, addr, observer=child.stage,
                        tls_context=prepared.tls_context, smtps=tag == "smtps", setup=prepared.setup, child=child)


def daemon_main(settings, prog: str, name: str, table: str, args, handed=None) -> int:
    """smap -daemon, or the master on the listeners inetd or systemd
    handed over (`handed`, activation.py), which never detaches."""
    from smapd.prefork.master import Master
    detached = not (args.foreground or args.debug or handed)
    master = Master(SmapService(prog, name, table), settings, args.foreground, args.debug, args.allow_root,
                    pidfile_path(settings, args.pidfile, detached), settings["scoreboard"], handed)
    return master.start()
