"""The rules between keywords, each declared once, as data.

What it does: `RULES` lists every rule that ties one keyword of a program
to another (programs, the keyword whose line the finding points at, error
or warning, and the test, which yields the text of each violation);
`evaluate()` applies them to one program's settings.  keywords.load()
evaluates them, so `smapctl check` and every program's start-up and
reload see the same findings: an error refuses the table everywhere (exit
2 with file:line, or "reload refused"), a warning is `check`'s to tell.
Where a program adjusts a value instead (a clamp), the rule is a warning
that says so.

What it trusts: settings that keywords.load() has typed.

What it must never do: look at the machine (accounts, files, sockets):
those findings are `smapctl check`'s (admin/check.py) and the programs'
own, since a rule here must give the same verdict wherever it runs.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable

from smapd.table.keywords import SMAP, SMAPD, SSLGW
from smapd.table.netperm import Diagnostic, compile_host_pattern

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Rule:
    name: str                                  # for tests and the man page
    programs: tuple
    keyword: str                               # the line the finding points at ("" = the table)
    severity: str
    # settings -> each violation: its text, or (text, the netperm Rule of
    # the line that holds it) when that is not the keyword's first line
    violations: Callable[[object], Iterable]
    doc: str = ""                              # the rule in one sentence, for netperm-table(5)


def _ssl_auth_needs_ssl(s):
    if s["ssl-auth"] != "none" and not s["ssl"]:
        yield f"ssl-auth {s['ssl-auth']} needs an 'ssl' certificate"


def _ssl_auth_without_ca(s):
    if s["ssl-auth"] != "none" and s["ssl"] and not s["ssl-ca"]:
        yield (f"ssl-auth {s['ssl-auth']} without ssl-ca: client certificates are verified against the system's "
               "CA store and logged, but exempt no one (any public CA signs certificates for anyone): to let "
               "certificate holders relay, name your own CA with ssl-ca")


def _smtps_needs_ssl(s):
    if any(listen.tls for listen in s["listen"]) and not s["ssl"]:
        yield "listen … smtps needs an 'ssl' certificate: TLS on accept needs a key and a certificate"


def _auth_needs_md5file(s):
    if s["auth"] and not s["md5file"]:
        yield "auth needs an md5file with the passwords"


def _md5file_without_auth(s):
    if s["md5file"] and not s["auth"]:
        yield "md5file is set but no 'auth' mechanism is offered"


def _auth_never_offered(s):
    if s["auth"] and s["auth-requires-tls"] and not s["ssl"]:
        yield ("AUTH is offered only inside TLS (auth-requires-tls yes) and no 'ssl' certificate is set, so AUTH "
               "is never offered")


def _maps_rbl_without_zone(s):
    if "maps-rbl" in s["nospam"] and not s["rbl"]:
        yield ("nospam maps-rbl but no 'rbl' zone is configured, so no DNSBL is queried (the MAPS RBL the "
               "original patch used is long gone): add 'rbl ZONE' lines")


def _zone_without_maps_rbl(s):
    if s["rbl"] and "maps-rbl" not in s["nospam"]:
        yield "rbl zones are queried only with 'nospam maps-rbl'"


# Addresses and names that stand for "anyone": a pattern (or the lines
# read so far, together) matching all of them opens the relay.
_EVERY_ADDRESS = ("0.0.0.1", "9.9.9.9", "100.64.1.2", "127.0.0.1", "192.0.2.77", "223.255.254.253",
                  "255.255.255.255")
_EVERY_NAME = ("a.b", "mail.example.com", "x-1.y.z.example.net", "host.spam.example")


def _matches_every_name(pattern) -> bool:
    return pattern.kind == "name" and all(pattern.matches("192.0.2.1", n) for n in _EVERY_NAME)


def _open_relay_hosts(s):
    """At the line that completes it: a pattern for anyone (`*`, `unknown`,
    `*.*`, `*.*.*.*`) or networks that together cover a whole address
    family (`0.0.0.0/1 128.0.0.0/1`, spread over lines or not)."""
    covered = {4: [], 6: []}
    told = set()
    for rule in s.origins.get("relay-hosts", []):
        for text in rule.args:
            pattern = compile_host_pattern(text)
            if pattern.kind in ("any", "unknown") or _matches_every_name(pattern) or (
                    pattern.kind == "addrglob" and all(pattern.matches(a, None) for a in _EVERY_ADDRESS)):
                yield f"relay-hosts {text} matches every client: an open relay", rule
                continue
            if pattern.kind != "address":
                continue
            cls = ipaddress.IPv4Network if pattern.version == 4 else ipaddress.IPv6Network
            bits = 32 if pattern.version == 4 else 128
            mask = pattern.mask
            prefix = bin(mask).count("1")
            if mask != ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1):
                continue   # a non-contiguous FWTK mask: never a whole family
            covered[pattern.version].append(cls((pattern.net, prefix)))
            whole = list(ipaddress.collapse_addresses(covered[pattern.version]))
            if not (whole and whole[0].prefixlen == 0) or pattern.version in told:
                continue
            told.add(pattern.version)
            if prefix == 0:
                yield f"relay-hosts {text} matches every client: an open relay", rule
            else:
                family = "IPv4" if pattern.version == 4 else "IPv6"
                yield (f"relay-hosts {', '.join(str(n) for n in covered[pattern.version])} together match "
                       f"every {family} client: an open relay"), rule


def _open_relay_domain(s):
    for rule in s.origins.get("relay-domain", []):
        for domain in rule.args:
            # Every domain has a dot-free label and at most a few dots:
            # a glob matching all of these probes matches every domain.
            if all(fnmatch.fnmatchcase(probe, domain.lower())
                   for probe in ("com", "example.org", "a.b.c.example", "x-1.y.z.w.example.net")) \
                    or domain.strip("*.") == "":
                yield f"relay-domain {domain} accepts mail for every domain: an open relay", rule


def _no_relay_control(s):
    if not s["relay-domain"] and not s["relay-hosts"] and not s["recipients"]:
        yield ("no relay-domain, relay-hosts or recipients line: smap would accept mail for every domain from "
               "anyone (an open relay), and the MTA cannot refuse what smapd hands it as a local submission")


def _mta_and_sendmail(s):
    if s["mta"] and s.is_set("sendmail"):
        yield f"mta {s['mta']} and sendmail are both set: smapd hands off one way; remove one"


def _verify_needs_mta(s):
    if s["recipient-verify"] and not s["mta"]:
        yield "recipient-verify needs mta: the verifier asks the MTA by SMTP or LMTP"


def _minspare_above_maxspare(s):
    if s["minspare"] > s["maxspare"]:
        yield f"minspare {s['minspare']} is above maxspare {s['maxspare']}"


def _maxspare_above_maxchildren(s):
    if s.is_set("maxspare") and s["maxspare"] > s["maxchildren"]:
        yield (f"maxspare {s['maxspare']} is above maxchildren {s['maxchildren']} "
               f"(the pool never keeps more than {s['maxchildren']} children)")


def _maxperhost_above_maxpernet(s):
    if s["maxperhost"] > s["maxpernet"]:
        yield (f"maxperhost {s['maxperhost']} is above maxpernet {s['maxpernet']}: one address holds no more "
               f"than its network's {s['maxpernet']} connections")


def _verify_needs_cas(s):
    if s["verify"] >= 1 and not (s["ca-file"] or s["ca-dir"]):
        yield f"verify {s['verify']} needs ca-file or ca-dir"


RULES = (
    Rule("ssl-auth-needs-ssl", (SMAP,), "ssl-auth", ERROR, _ssl_auth_needs_ssl,
         "ssl-auth optional or required needs ssl: client certificates come with TLS."),
    Rule("ssl-auth-without-ca", (SMAP,), "ssl-auth", WARNING, _ssl_auth_without_ca,
         "ssl-auth without ssl-ca verifies client certificates against the system's CA store and logs them, "
         "but a certificate exempts its client (relay, no spam checks) only when verified against ssl-ca."),
    Rule("smtps-needs-ssl", (SMAP,), "listen", ERROR, _smtps_needs_ssl,
         "A listen line with smtps needs ssl."),
    Rule("auth-needs-md5file", (SMAP,), "auth", ERROR, _auth_needs_md5file,
         "auth needs md5file, the passwords to check against."),
    Rule("md5file-without-auth", (SMAP,), "md5file", WARNING, _md5file_without_auth,
         "md5file without auth is never used."),
    Rule("auth-never-offered", (SMAP,), "auth", WARNING, _auth_never_offered,
         "auth with auth-requires-tls yes (the default) and no ssl is never offered."),
    Rule("maps-rbl-without-zone", (SMAP,), "nospam", WARNING, _maps_rbl_without_zone,
         "nospam maps-rbl without an rbl zone queries no DNSBL."),
    Rule("zone-without-maps-rbl", (SMAP,), "rbl", WARNING, _zone_without_maps_rbl,
         "rbl zones are queried only with nospam maps-rbl."),
    Rule("open-relay-hosts", (SMAP,), "relay-hosts", ERROR, _open_relay_hosts,
         "relay-hosts may not match every client (*, unknown, *.*, *.*.*.*, 0.0.0.0/0, ::/0, nor networks "
         "that together cover an address family, such as 0.0.0.0/1 128.0.0.0/1); the finding names the "
         "line that completes the pattern."),
    Rule("open-relay-domain", (SMAP,), "relay-domain", ERROR, _open_relay_domain,
         "relay-domain may not match every domain (*, *.*)."),
    Rule("no-relay-control", (SMAP,), "", ERROR, _no_relay_control,
         "smap needs relay control: at least one relay-domain, relay-hosts or recipients line, since mail "
         "that smapd hands to the MTA is a local submission, which the MTA's relay restrictions never see."),
    Rule("mta-and-sendmail", (SMAPD,), "mta", ERROR, _mta_and_sendmail,
         "mta and sendmail may not both be set: smapd hands off by SMTP/LMTP or by sendmail, not both."),
    Rule("recipient-verify-needs-mta", (SMAPD,), "recipient-verify", ERROR, _verify_needs_mta,
         "smapd's recipient-verify needs mta: the verifier asks the MTA by SMTP or LMTP."),
    Rule("minspare-above-maxspare", (SMAP, SSLGW), "minspare", ERROR, _minspare_above_maxspare,
         "minspare may not be above maxspare."),
    Rule("maxspare-above-maxchildren", (SMAP, SSLGW), "maxspare", WARNING, _maxspare_above_maxchildren,
         "maxspare above maxchildren: the pool never holds more than maxchildren children, idle ones "
         "included."),
    Rule("maxperhost-above-maxpernet", (SMAP, SSLGW), "maxperhost", WARNING, _maxperhost_above_maxpernet,
         "maxperhost above maxpernet: an address holds no more than its network (/24, /64) may; raise maxpernet "
         "too."),
    Rule("verify-needs-cas", (SSLGW,), "verify", ERROR, _verify_needs_cas,
         "verify 1 to 3 needs ca-file or ca-dir (-A, -a) to verify against."),
)
assert not [p for r in RULES for p in r.programs if p not in (SMAP, SMAPD, SSLGW)]


def where(settings, keyword: str, table: str):
    """(file, line) of the first line that set `keyword`, else the table."""
    o = settings.origins.get(keyword) if keyword else None
    if isinstance(o, list):
        o = o[0]
    return (o.file, o.line) if o is not None else (table, 0)


def evaluate(settings, table: str, rules=RULES) -> list:
    """The findings of `rules` on one program's settings, as diagnostics
    (`table`: the file a finding about the whole table names)."""
    name = settings.names[0] if settings.names else settings.program
    out = []
    for rule in rules:
        if settings.program not in rule.programs:
            continue
        for found in rule.violations(settings):
            if isinstance(found, tuple):
                text, origin = found
                file, line = origin.file, origin.line
            else:
                text = found
                file, line = where(settings, rule.keyword, table)
            out.append(Diagnostic(file, line, rule.severity, f"{name}: {text}", keyword=rule.keyword or "",
                                  program=settings.program))
    return out
