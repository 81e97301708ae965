"""DNS for the suite: resolver objects and forward-confirmed client names.

What it does: builds dnspython resolvers (from `resolver ADDR[:PORT]`
lines or resolv.conf) before a process enters its jail, and turns a client
address into a name only when the name's A/AAAA records contain that
address again (a forward-confirmed reverse name); otherwise the client is
`unknown`, which is what FWTK host rules and the log lines call it.

What it trusts: the configured resolvers' answers, as far as DNS can be
trusted; a PTR name alone is never trusted.

What it must never do: raise on DNS trouble (time-outs, SERVFAIL and
garbage give None), wait longer than its lifetime, or return a name that
did not confirm.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Optional, Sequence

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename

from smapd.addresses import client_address, parse_resolver_spec  # noqa: F401 (part of this API)

#: Answers a resolver keeps (per process; honouring their TTLs).
CACHE_ENTRIES = 2048
#: How many PTR names are tried; a client that publishes more gets no name.
MAX_PTR_NAMES = 8
#: The record types the suite reads or meets in answers.  dnspython
#: imports a type's module when it first parses one, which a jailed
#: process cannot: these are loaded before the jail (any other type then
#: parses as generic rdata).  Loading all types would cost every inetd
#: start about 15 ms more.
TYPES = ("A", "AAAA", "PTR", "CNAME", "SOA", "NS", "MX", "TXT")


def prepare_types() -> None:
    for name in TYPES:
        dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(name))


def make_resolver(specs: Sequence = (), lifetime: float = 5.0) -> dns.resolver.Resolver:
    """A resolver for the given servers (`ADDR[:PORT]` texts or parsed
    (addr, port) pairs), or from /etc/resolv.conf when there are none.
    Build it before chroot: the jail has no resolv.conf."""
    if specs:
        res = dns.resolver.Resolver(configure=False)
        pairs = [s if isinstance(s, tuple) else parse_resolver_spec(s) for s in specs]
        res.nameservers = [a for a, _ in pairs]
        res.nameserver_ports = {a: p for a, p in pairs}
    else:
        res = dns.resolver.Resolver()
    res.lifetime = lifetime
    res.timeout = min(lifetime, 2.0)
    # One search of the name as given: a PTR name is absolute.
    res.search = []
    res.use_search_by_default = False
    # A child of smap -daemon serves hundreds of connections; the same
    # clients and zones come back.  The cache keeps answers for their TTL
    # only, so it never answers for longer than the zone allows.
    res.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
    return res


def confirmed_name(addr, resolver: dns.resolver.Resolver, lifetime: float = None) -> Optional[str]:
    """The forward-confirmed reverse name of `addr` (lower case, no
    trailing dot), or None: no PTR, DNS trouble, or no PTR name whose
    A/AAAA records contain the address.  All look-ups together take at
    most `lifetime` seconds (the resolver's own by default)."""
    return lookup_client(addr, resolver, lifetime)[0]


#: Confirmed names already found, per process: {(resolver, address):
#: (expiry, name)}, for as long as both answers that confirmed the name
#: live.  The resolver's cache holds those answers too, but asking it
#: again (building the PTR name, two cache look-ups, the comparison) was
#: a tenth of a daemon child's time per session (bench/NOTES.md).
_confirmed = {}


def lookup_client(addr, resolver: dns.resolver.Resolver, lifetime: float = None):
    """(confirmed name or None, paranoid): `paranoid` is True when the
    address has PTR names but none of them leads back to it (TCP
    wrappers' PARANOID); DNS trouble is not paranoia."""
    key = (resolver, addr)
    known = _confirmed.get(key)
    if known is not None:
        if known[0] > time.time():
            return known[1], False
        del _confirmed[key]
    try:
        a = client_address(addr)
    except ValueError:
        return None, False
    deadline = time.monotonic() + (resolver.lifetime if lifetime is None else lifetime)

    def resolve(qname, rtype):
        left = deadline - time.monotonic()
        if left <= 0:
            raise dns.exception.Timeout()
        return resolver.resolve(qname, rtype, lifetime=left)

    rtype = "A" if a.version == 4 else "AAAA"
    try:
        ptr = resolve(dns.reversename.from_address(str(a)), "PTR")
    except (dns.exception.DNSException, OSError, ValueError):
        return None, False
    paranoid = True
    for rr in list(ptr)[:MAX_PTR_NAMES]:
        name = rr.target
        try:
            answer = resolve(name, rtype)
        except dns.exception.Timeout:
            return None, False
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except (dns.exception.DNSException, OSError, ValueError):
            paranoid = False  # trouble, not a lie
            continue
        for fwd in answer:
            try:
                if ipaddress.ip_address(fwd.address) == a:
                    found = name.to_text(omit_final_dot=True).lower()
                    if len(_confirmed) >= CACHE_ENTRIES:
                        _confirmed.clear()
                    _confirmed[key] = (min(ptr.expiration, answer.expiration), found)
                    return found, False
            except ValueError:
                continue
    return None, paranoid
