"""DNS policy checks of smap: DNSBL scoring and the sender domain's name servers.

What it does: `check_rbls` asks every configured DNSBL zone (`rbl
ZONE[=FILTER][*WEIGHT]`) about a client address, all zones at once with
one overall deadline, and scores the answers as Postfix's postscreen
does: each zone whose A answer matches its filter adds its weight
(negative weights make allowlists), and `RblResult.verdict` compares the
sum with `rbl-threshold`.  `sender_domain_ns` walks from a sender domain
towards the root until it finds an NS RRset (`nospam ns-required`).

What it trusts: the answers of the configured resolver, as far as DNS can
be trusted; a DNSBL answer only within its filter (with no filter: an
address in 127.0.0.0/8 outside the error codes 127.255.255.0/24, see
`filter_matches`).  The zones and filters come from the checked table.

What it must never do: raise on DNS trouble, wait past its deadline, let
DNS trouble turn into a refusal (a zone that did not answer can only make
the verdict "tempfail", which the caller answers 4xx, never 5xx), or touch
the file system or import a module at query time: it runs in a chrooted,
unprivileged process, so everything it needs is imported here, before
the jail (privsep.pre_jail imports it, and loads the record types).
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from smapd.addresses import client_address
from smapd.table.keywords import parse_filter

#: What a zone with no filter may answer to list a client (RFC 5782: a
#: DNSBL answers 127.0.0.0/8).  An expired DNSBL domain that was
#: wildcarded to a parking address must not list the whole Internet.
LISTING_NET = ipaddress.ip_network("127.0.0.0/8")
#: Answers that are not listings but error codes (Spamhaus: 127.255.255.252
#: typing error, .254 query through a public resolver, .255 too many
#: queries).  Counting them would refuse every client the day a list stops
#: serving this site.  An explicit filter may still name them.
ERROR_CODES_NET = ipaddress.ip_network("127.255.255.0/24")

# A label of a mail domain as RFC 5321 allows it, plus '_' (seen in the
# wild, harmless); anything else cannot be a delegated domain.
_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass
class RblResult:
    """The outcome of one client's DNSBL look-ups."""

    #: Sum of the weights of the entries whose zone lists the client.
    score: int = 0
    #: [(zone, [answer addresses matching the entry's filter], weight)],
    #: one item per matching `rbl` entry (a zone may carry several).
    listed: list = field(default_factory=list)
    #: [(zone, reason)] for zones that timed out or failed (SERVFAIL,
    #: REFUSED, network error, deadline).
    failed: list = field(default_factory=list)
    #: [(zone, [addresses])] for zones that answered A records no entry
    #: accepted: not a listing, but worth a log line (an error code such
    #: as 127.255.255.254 says the list refuses this site's queries).
    ignored: list = field(default_factory=list)
    #: The weights of the entries of the failed zones: what the score
    #: might have been, had they answered.
    failed_weights: list = field(default_factory=list)

    def verdict(self, threshold: int) -> str:
        """"listed" when the score reaches `threshold` whatever the failed
        zones would have said; "clean" when it stays below whatever they
        would have said; otherwise "tempfail": DNS trouble decided the
        outcome, so the caller answers 4xx.  A failed allowlist zone
        (negative weight) that could have pulled a listed client below the
        threshold makes "tempfail" too: DNS trouble never gives 5xx."""
        low = self.score + sum(w for w in self.failed_weights if w < 0)
        high = self.score + sum(w for w in self.failed_weights if w > 0)
        if low >= threshold:
            return "listed"
        if high < threshold:
            return "clean"
        return "tempfail"


def query_name(addr, zone: str) -> str:
    """The DNSBL name of `addr` in `zone`, without a final dot:
    192.0.2.7 -> 7.2.0.192.zone; an IPv6 address as its 32 nibbles in
    reverse; an IPv4-mapped IPv6 address as the IPv4 address (that is the
    client).  ValueError if `addr` is not an IP address."""
    a = client_address(addr)
    if a.version == 4:
        labels = reversed(str(a).split("."))
    else:
        labels = reversed(a.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.rstrip(".")


def _matches(compiled, answer: str) -> bool:
    try:
        a = ipaddress.IPv4Address(answer)
    except ValueError:
        return False
    if compiled is None:
        return a in LISTING_NET and a not in ERROR_CODES_NET
    return all(int(o) in allowed for o, allowed in zip(str(a).split("."), compiled))


def filter_matches(filter: Optional[str], answer: str) -> bool:
    """Whether the A answer `answer` counts as a listing under `filter`
    (postscreen syntax, each octet a number or [N;N..M]).  With no
    filter: any address in 127.0.0.0/8 except the error codes
    127.255.255.0/24.  ValueError for a malformed filter."""
    return _matches(parse_filter(filter) if filter is not None else None, answer)


def _trouble(exc: BaseException) -> str:
    """A short reason for a failed look-up, for the log."""
    if isinstance(exc, dns.exception.Timeout):
        return "timeout"
    if isinstance(exc, dns.resolver.NoNameservers):
        said = []
        for err in exc.kwargs.get("errors") or ():
            what = err[3] if len(err) > 3 else err
            text = what if isinstance(what, str) else type(what).__name__
            if text not in said:
                said.append(text)
        return ", ".join(said) or "no name server answered"
    if isinstance(exc, dns.resolver.YXDOMAIN):
        return "YXDOMAIN"
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc}"
    return type(exc).__name__


def _ask_a(resolver, qname: dns.name.Name, deadline: float):
    """("answer", [addresses]) | ("none", None) | ("failed", reason)."""
    left = deadline - time.monotonic()
    if left <= 0:
        return "failed", "timeout"
    try:
        answer = resolver.resolve(qname, dns.rdatatype.A, lifetime=left, search=False)
        return "answer", sorted({rr.address for rr in answer}, key=ipaddress.IPv4Address)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return "none", None
    except Exception as exc:  # noqa: BLE001 -- nothing may escape a thread: it would read as a time-out
        return "failed", _trouble(exc)


def check_rbls(addr, rbls: Sequence, resolver, deadline: float = 5.0) -> RblResult:
    """Score `addr` against the `rbl` entries (config.Rbl: zone, filter,
    weight).  Each zone is asked once, whatever the number of its
    entries; all zones at once, each in a thread of its own, and the
    result is made after `deadline` seconds at most: a zone still
    unanswered then is failed ("timeout").  NXDOMAIN or an answer
    without A records lists nothing.  Raises ValueError only for an
    `addr` that is not an IP address (a caller's bug), never for DNS."""
    result = RblResult()
    if not rbls:
        return result
    end = time.monotonic() + deadline
    zones = {}
    for rbl in rbls:
        zones.setdefault(rbl.zone.rstrip(".").lower(), []).append(rbl)
    names = {}
    for zone, entries in list(zones.items()):
        try:
            names[zone] = dns.name.from_text(query_name(addr, zone))
        except dns.exception.DNSException:
            # Too long a name, an empty label: the table check should have
            # refused the zone; here it is a zone that cannot answer.
            del zones[zone]
            result.failed.append((zone, "bad zone name"))
            result.failed_weights.extend(e.weight for e in entries)

    # Threads, not one socket per zone: the resolver's own retries, server
    # list and TCP fallback stay in one place (dnspython), and a smap child
    # serves one connection, so a handful of short-lived threads is cheap.
    # Daemon threads: one stuck past the deadline cannot hold the process
    # (its own lifetime ends at the same deadline anyway).
    answers = {}
    lock = threading.Lock()

    def ask(zone):
        outcome = _ask_a(resolver, names[zone], end)
        with lock:
            answers[zone] = outcome

    threads = []
    for zone in zones:
        t = threading.Thread(target=ask, args=(zone,), name=f"dnsbl {zone}", daemon=True)
        try:
            t.start()
        except RuntimeError:  # out of threads (a process limit): trouble, not a listing
            with lock:
                answers[zone] = ("failed", "cannot start a thread")
            continue
        threads.append(t)
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    with lock:
        got = dict(answers)

    for zone, entries in zones.items():
        kind, value = got.get(zone, ("failed", "timeout"))
        if kind == "failed":
            result.failed.append((zone, value))
            result.failed_weights.extend(e.weight for e in entries)
            continue
        if kind == "none":
            continue
        accepted = set()
        for e in entries:
            try:
                compiled = parse_filter(e.filter) if e.filter is not None else None
            except ValueError:
                # The table check refuses such a filter; should one reach
                # here, the zone is unusable, not a listing.
                result.failed.append((zone, f"bad filter {e.filter!r}"))
                result.failed_weights.append(e.weight)
                continue
            hits = [a for a in value if _matches(compiled, a)]
            if hits:
                result.listed.append((zone, hits, e.weight))
                result.score += e.weight
                accepted.update(hits)
        rest = [a for a in value if a not in accepted]
        if rest and not accepted:
            result.ignored.append((zone, rest))
    return result


def _normalise_domain(domain: str) -> Optional[str]:
    """The domain in lower case without a final dot, or None when it
    cannot be a delegated DNS name (empty, a literal, non-ASCII, bad
    labels)."""
    if not isinstance(domain, str):
        return None
    d = domain.strip().rstrip(".")
    if not d or not d.isascii() or len(d) > 253:
        return None
    d = d.lower()
    if not all(_LABEL_RE.match(label) for label in d.split(".")):
        return None
    return d


def sender_domain_ns(domain: str, resolver, lifetime: float = 5.0) -> tuple:
    """Whether `domain` is under a delegated zone, for `nospam
    ns-required`:

    ("ok", owner)        an NS RRset at `domain` or at a parent below
                         the top-level domain (owner: where it was found);
    ("nxdomain", domain) the domain itself does not exist (caller: 5xx);
    ("no-ns", domain)    it exists (or cannot be asked) but nothing below
                         the TLD has NS records: a single label, an
                         address literal ([192.0.2.1]), an empty,
                         non-ASCII or malformed domain give this without
                         a query -- none of them can be vouched for by a
                         delegation, which is what ns-required asks;
    ("tempfail", reason) time-out, SERVFAIL, REFUSED or network trouble
                         at any step (caller: 4xx).

    At most `lifetime` seconds in all.  Never raises."""
    d = _normalise_domain(domain)
    if d is None:
        return ("no-ns", domain.strip().rstrip(".").lower() if isinstance(domain, str) else "")
    labels = d.split(".")
    end = time.monotonic() + lifetime
    # Stop before the last label: a TLD's NS RRset says nothing about the
    # sender.
    for i in range(len(labels) - 1):
        name = ".".join(labels[i:])
        left = end - time.monotonic()
        if left <= 0:
            return ("tempfail", "timeout")
        try:
            qname = dns.name.from_text(name)
            answer = resolver.resolve(qname, dns.rdatatype.NS, lifetime=left, search=False)
        except dns.resolver.NXDOMAIN:
            if i == 0:
                return ("nxdomain", d)
            # The domain exists but a parent says it does not: a broken
            # server (empty non-terminals); keep walking up.
            continue
        except dns.resolver.NoAnswer:
            continue
        except Exception as exc:  # noqa: BLE001 -- DNS trouble is a 4xx, never an exception
            return ("tempfail", _trouble(exc))
        # Only an NS RRset owned by the name asked: through a CNAME the
        # records belong to another domain, and the walk goes on upwards.
        if answer.rrset is not None and len(answer.rrset) and answer.rrset.name == qname:
            return ("ok", name)
    return ("no-ns", d)
