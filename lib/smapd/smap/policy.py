"""smap's relay control and anti-spam checks, in the order they run.

What it does: `Checks.from_settings()` gathers, before the jail, what the
checks need (relay domains and hosts, the `nospam` checks, the DNSBL
zones and resolver, the spam database, the password file);
`SessionPolicy` applies it to one connection.  The order, visible here
and nowhere else:

  connect  hosts rules (service.py, before anything else);
           spam-database client entries and the DNSBL score, computed now
           and enforced at MAIL, so that a listed client may still
           authenticate (AUTH, or a verified TLS client certificate) first
  MAIL     for clients that are not exempt (relay-hosts, authenticated,
           verified certificate): the client verdicts above, then
           `nospam RFC821` (strict path syntax), spam-database sender
           entries, `nospam ns-required` (the sender's domain has NS
           records)
  RCPT     routing tricks (`%`, `!`, `@` in a quoted local part) from
           clients that are not exempt; the `recipients` map; then
           `relay-domain` (the recipient's domain after the last `@`,
           brackets and a trailing dot removed, case-folded) unless the
           client is exempt; then `recipient-verify` (smapd's verifier
           asks the MTA) for recipients of a relay-domain
  (maxrecip and the rest are the protocol's own, protocol.py)

Each check is a small function returning None (go on) or a `Refusal`:
the SMTP reply (4xx for DNS trouble, 5xx for a policy refusal) and the
reason for the log.  A table without any `relay-domain` and `relay-hosts`
line is refused at start (rules.py, no-relay-control): the FWTK's "accept
everything, the MTA decides" is an open relay behind a modern MTA, which
takes smapd's hand-off as a local submission.  `Checks` built without
them (unit tests) still accept every well-formed recipient.

What it trusts: the table and the files it names (read as root); DNS
answers only as far as the checks go (a DNS failure never refuses for
good).

What it must never do: refuse for good because DNS failed, let an
unauthenticated outsider relay, or log a password.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from typing import Optional

from smapd.addresses import client_address
from smapd.smap.protocol import Reply, reply
from smapd.prefork.privsep import pre_jail

log = logging.getLogger("smapd")


@dataclass(frozen=True)
class Refusal:
    reply: Reply
    why: str


@dataclass
class Checks:
    """What the checks need, made once per configuration, before the jail."""
    hostname: str = "localhost"
    relay_domains: tuple = ()
    relay_hosts: tuple = ()
    nospam: frozenset = frozenset()
    rbls: tuple = ()
    rbl_threshold: int = 1
    resolver: object = None
    dns_timeout: float = 5.0
    spamdb: object = None          # spamdb.SpamDatabase, or None
    passwords: object = None       # password_file.PasswordFile, or None
    #: A verified client certificate exempts its client only when it was
    #: verified against the operator's own CA (`ssl-ca`): the system's
    #: public CAs sign certificates for anyone.
    certificates_exempt: bool = False
    recipients: object = None      # recipients.RecipientMap, or None
    #: Ask smapd's recipient verifier (verify_client.py) about recipients of our domains.
    recipient_verify: bool = False

    @property
    def relay_control(self) -> bool:
        return bool(self.relay_domains or self.relay_hosts or self.recipients)

    @classmethod
    def from_settings(cls, settings, resolver=None) -> "Checks":
        """Raises OSError (spam database) or password_file.AuthFileError (md5file)."""
        spamdb = passwords = None
        if settings["spam-database"]:
            from smapd.smap import spamdb as sdb
            spamdb = sdb.SpamDatabase.load(settings["spam-database"])
            for w in spamdb.warnings:
                log.warning("%s", w)
        recipients = None
        if settings["recipients"]:
            from smapd.smap.recipients import RecipientMap
            recipients = RecipientMap.load(settings["recipients"])
            for w in recipients.warnings:
                log.warning("%s", w)
        if settings["auth"] and settings["md5file"]:
            from smapd.smap import password_file
            passwords = password_file.PasswordFile.load(settings["md5file"])
        nospam = frozenset(x.lower() for x in settings["nospam"])
        if "maps-rbl" in nospam or "ns-required" in nospam:
            pre_jail("smapd.smap.dns_checks")  # now: a jailed child cannot import
        if settings["recipient-verify"]:
            pre_jail("smapd.smap.verify_client")
        return cls(hostname=settings["hostname"], relay_domains=tuple(d.lower() for d in settings["relay-domain"]),
                   relay_hosts=settings["relay-hosts"], nospam=nospam, rbls=settings["rbl"],
                   rbl_threshold=settings["rbl-threshold"], resolver=resolver,
                   dns_timeout=settings["dns-timeout"], spamdb=spamdb, passwords=passwords,
                   certificates_exempt=bool(settings["ssl-ca"]), recipients=recipients,
                   recipient_verify=settings["recipient-verify"])


@dataclass
class SessionPolicy:
    """The checks for one client.  `at_connect()` runs the client checks;
    `mail()` and `rcpt()` are the protocol's hooks."""
    setup: Checks
    addr: str
    name: Optional[str] = None
    internal: bool = False
    client_refusal: Optional[Refusal] = None
    spool_dir: str = "/"              # where the verifier's socket is ("/" in the jail)

    def __post_init__(self):
        self.internal = any(p.matches(self.addr, self.name) for p in self.setup.relay_hosts)

    def exempt(self, proto) -> bool:
        """Internal, authenticated or certificate-verified clients (against
        ssl-ca only) skip the spam checks and may relay."""
        return self.internal or bool(proto.auth_user) or (bool(proto.tls_peer) and self.setup.certificates_exempt)

    def at_connect(self) -> None:
        if self.internal:
            return
        for check in CONNECT_CHECKS:
            refusal = check(self)
            if refusal is not None:
                self.client_refusal = refusal
                return

    def mail(self, proto, sender: str) -> Optional[Refusal]:
        if self.exempt(proto):
            return None
        for check in MAIL_CHECKS:
            refusal = check(self, proto, sender)
            if refusal is not None:
                return refusal
        return None

    def rcpt(self, proto, recipient: str) -> Optional[Refusal]:
        for check in RCPT_CHECKS:
            refusal = check(self, proto, recipient)
            if refusal is not None:
                return refusal
        return None

    def verify_password(self, user: str, password: bytes) -> bool:
        return self.setup.passwords is not None and self.setup.passwords.verify(user, password)

    def hooks(self, proto) -> None:
        """Attach the checks to a Protocol."""
        proto.check_sender = lambda path: _pair(self.mail(proto, path))
        proto.check_recipient = lambda path: _pair(self.rcpt(proto, path))
        if self.setup.passwords is not None:
            proto.verify_password = self.verify_password


def _pair(refusal: Optional[Refusal]):
    return None if refusal is None else (refusal.reply, refusal.why)


# ----------------------------------------------------------------- connect

def client_in_spam_database(p: SessionPolicy) -> Optional[Refusal]:
    if p.setup.spamdb is None:
        return None
    entry = p.setup.spamdb.client_listed(p.addr)
    if entry:
        return Refusal(reply(554, "5.7.1", f"Service unavailable; client [{p.addr}] blocked"),
                       f"client in the spam database ({entry})")
    return None


def client_on_dnsbl(p: SessionPolicy) -> Optional[Refusal]:
    if "maps-rbl" not in p.setup.nospam or not p.setup.rbls:
        return None
    from smapd.smap import dns_checks
    result = dns_checks.check_rbls(p.addr, p.setup.rbls, p.setup.resolver, p.setup.dns_timeout)
    verdict = result.verdict(p.setup.rbl_threshold)
    # The zones that count against the client, each once (an allowlist
    # zone's negative weight is not a reason to refuse).
    zones = ", ".join(dict.fromkeys(zone for zone, _, weight in result.listed if weight > 0))
    if verdict == "listed":
        return Refusal(reply(554, "5.7.1", f"Service unavailable; client [{p.addr}] blocked using {zones}"),
                       f"DNSBL score {result.score} (threshold {p.setup.rbl_threshold}): {zones}")
    if verdict == "tempfail":
        failed = ", ".join(f"{zone} ({why})" for zone, why in result.failed)
        return Refusal(reply(451, "4.7.1", f"Service temporarily unavailable; client [{p.addr}] could not be "
                                           "checked, try again later"),
                       f"DNSBL score {result.score} with zones failing: {failed}")
    return None


CONNECT_CHECKS = (client_in_spam_database, client_on_dnsbl)


# -------------------------------------------------------------------- MAIL

def client_verdict(p: SessionPolicy, proto, sender: str) -> Optional[Refusal]:
    return p.client_refusal


_STRICT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_STRICT_LOCAL = re.compile(rf"^{_STRICT_ATOM}(?:\.{_STRICT_ATOM})*$")
_STRICT_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def sender_rfc821(p: SessionPolicy, proto, sender: str) -> Optional[Refusal]:
    """`nospam RFC821`: a sender an MTA could send a bounce to: dot-atom
    local part (no quoted strings), a fully qualified domain name (no
    address literal, no trailing dot, a top-level label of letters)."""
    if "rfc821" not in p.setup.nospam or not sender:
        return None
    local, _, domain = sender.rpartition("@")
    if not _STRICT_LOCAL.match(local) or not _STRICT_DOMAIN.match(domain):
        return Refusal(reply(553, "5.1.7", "Error: sender address rejected: not a valid RFC 821 address"),
                       f"RFC821: sender <{sender}> is not strict RFC 5321 syntax")
    return None


def sender_in_spam_database(p: SessionPolicy, proto, sender: str) -> Optional[Refusal]:
    if p.setup.spamdb is None:
        return None
    entry = p.setup.spamdb.sender_listed(sender)
    if entry:
        return Refusal(reply(554, "5.7.1", f"Error: sender <{sender}> refused"),
                       f"sender in the spam database ({entry})")
    return None


def sender_domain_has_ns(p: SessionPolicy, proto, sender: str) -> Optional[Refusal]:
    if "ns-required" not in p.setup.nospam or not sender:
        return None
    from smapd.smap import dns_checks
    # Brackets kept: an address literal has no name servers to ask for.
    domain = sender.rpartition("@")[2].rstrip(".").lower()
    outcome, detail = dns_checks.sender_domain_ns(domain, p.setup.resolver, p.setup.dns_timeout)
    if outcome == "ok":
        return None
    if outcome == "tempfail":
        return Refusal(reply(451, "4.1.8", f"Error: sender domain {domain} could not be checked, try again later"),
                       f"ns-required: {domain}: {detail}")
    return Refusal(reply(553, "5.1.8", f"Error: sender domain {domain} has no name servers"),
                   f"ns-required: {domain}: {outcome} ({detail})")


MAIL_CHECKS = (client_verdict, sender_rfc821, sender_in_spam_database, sender_domain_has_ns)


# -------------------------------------------------------------------- RCPT

def recipient_domain(address: str) -> str:
    """The domain after the last `@`, without brackets or a trailing dot,
    in lower case."""
    domain = address.rpartition("@")[2].strip().lower()
    if domain.startswith("[") and domain.endswith("]"):
        domain = domain[1:-1]
    return domain.rstrip(".")


def recipient_routing(p: SessionPolicy, proto, recipient: str) -> Optional[Refusal]:
    """`user%other@ours`, `other!user@ours`, `"user@other"@ours`: routing
    through us that an MTA might honour.  Internal and authenticated
    clients may use them (they are valid addresses); others may not."""
    if not p.setup.relay_control or p.exempt(proto) or recipient == "postmaster":
        return None
    local = recipient.rpartition("@")[0]
    if any(c in local for c in "%!@"):
        return Refusal(reply(554, "5.7.1", "Error: relay access denied (routing characters in the address)"),
                       f"routing characters in <{recipient}>")
    return None


def recipient_known(p: SessionPolicy, proto, recipient: str) -> Optional[Refusal]:
    """The recipient map, for every client, exempt ones included: a
    mailbox that does not exist would be bounced by the MTA, to a sender
    that may be forged."""
    if p.setup.recipients is None or p.setup.recipients.verdict(recipient) != "unknown":
        return None
    return Refusal(reply(550, "5.1.1", f"<{recipient}>: Recipient address rejected: User unknown"),
                   f"unknown recipient <{recipient}> (not in {p.setup.recipients.path})")


def recipient_relay(p: SessionPolicy, proto, recipient: str) -> Optional[Refusal]:
    if not p.setup.relay_control or p.exempt(proto) or recipient == "postmaster":
        return None
    if p.setup.recipients is not None and p.setup.recipients.verdict(recipient) == "known":
        return None
    domain = recipient_domain(recipient)
    if any(fnmatch.fnmatchcase(domain, pattern) for pattern in p.setup.relay_domains):
        return None
    return Refusal(reply(554, "5.7.1", f"<{recipient}>: Relay access denied"),
                   f"relay to <{recipient}> denied (domain {domain} is not a relay-domain)")


def recipient_verified(p: SessionPolicy, proto, recipient: str) -> Optional[Refusal]:
    """`recipient-verify`: a recipient of one of our domains (relay-domain,
    or one the map names without deciding) is asked about, for every
    client: the MTA would bounce it otherwise.  Not postmaster, not what
    the map knows, not what exempt clients relay elsewhere."""
    if not p.setup.recipient_verify or recipient == "postmaster":
        return None
    if p.setup.recipients is not None and p.setup.recipients.verdict(recipient) == "known":
        return None
    domain = recipient_domain(recipient)
    if not any(fnmatch.fnmatchcase(domain, pattern) for pattern in p.setup.relay_domains):
        return None
    from smapd.smap import verify_client
    answer = verify_client.ask(p.spool_dir, recipient)
    if answer is None:
        return Refusal(reply(451, "4.4.3", f"<{recipient}>: Recipient address verification is unavailable, "
                                           "try again later"),
                       f"cannot verify <{recipient}>: smapd's verifier does not answer")
    code, status, text = answer
    if code // 100 == 2:
        return None
    if code // 100 == 5:
        return Refusal(reply(550, status, f"<{recipient}>: Recipient address rejected: undeliverable address"),
                       f"recipient <{recipient}> refused by the MTA: {code} {status} {text}")
    if status == "4.4.3":
        return Refusal(reply(451, "4.4.3", f"<{recipient}>: Recipient address verification is unavailable, "
                                           "try again later"), f"cannot verify <{recipient}>: {text}")
    return Refusal(reply(450, "4.1.1", f"<{recipient}>: Recipient address rejected: unverified address"),
                   f"recipient <{recipient}> unverified: {code} {status} {text}")


RCPT_CHECKS = (recipient_routing, recipient_known, recipient_relay, recipient_verified)


def new_session(setup: Checks, addr: str, name: Optional[str], spool_dir: str = "/") -> SessionPolicy:
    p = SessionPolicy(setup, str(client_address(addr)), None if name in (None, "unknown") else name,
                      spool_dir=spool_dir)
    p.at_connect()
    return p


