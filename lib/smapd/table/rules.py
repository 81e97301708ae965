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

from dataclasses import dataclass
from typing import Callable, Iterable

from smapd.table.keywords import SMAP, SMAPD, SSLGW
from smapd.table.netperm import Diagnostic

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Rule:
    name: str                                  # for tests and the man page
    programs: tuple
    keyword: str                               # the line the finding points at ("" = the table)
    severity: str
    violations: Callable[[object], Iterable[str]]   # settings -> the text of each violation
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


def _open_relay_hosts(s):
    for pattern in s["relay-hosts"]:
        if pattern.kind in ("any", "unknown") or (pattern.kind == "address" and pattern.mask == 0):
            yield f"relay-hosts {pattern.text} makes smap an open relay"


def _open_relay_domain(s):
    for pattern in s["relay-domain"]:
        if pattern.strip("*") == "":
            yield f"relay-domain {pattern} accepts mail for every domain: an open relay"


def _no_relay_control(s):
    if s.origins and not s["relay-domain"] and not s["relay-hosts"]:
        yield ("no relay-domain and no relay-hosts line: smap accepts mail for every domain, as the FWTK smap "
               "did; the MTA behind smapd must refuse to relay")


def _minspare_above_maxspare(s):
    if s["minspare"] > s["maxspare"]:
        yield f"minspare {s['minspare']} is above maxspare {s['maxspare']}"


def _maxspare_above_maxchildren(s):
    if s.is_set("maxspare") and s["maxspare"] > s["maxchildren"]:
        yield (f"maxspare {s['maxspare']} is above maxchildren {s['maxchildren']} "
               f"(the pool never keeps more than {s['maxchildren']} children)")


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
         "relay-hosts may not match every client (*, unknown, 0.0.0.0/0, ::/0)."),
    Rule("open-relay-domain", (SMAP,), "relay-domain", ERROR, _open_relay_domain,
         "relay-domain may not match every domain (*)."),
    Rule("no-relay-control", (SMAP,), "", WARNING, _no_relay_control,
         "A table with lines for smap but neither relay-domain nor relay-hosts leaves relay control to the"
         " MTA behind smapd."),
    Rule("minspare-above-maxspare", (SMAP, SSLGW), "minspare", ERROR, _minspare_above_maxspare,
         "minspare may not be above maxspare."),
    Rule("maxspare-above-maxchildren", (SMAP, SSLGW), "maxspare", WARNING, _maxspare_above_maxchildren,
         "maxspare above maxchildren: the pool never holds more than maxchildren children, idle ones "
         "included."),
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
        for text in rule.violations(settings):
            file, line = where(settings, rule.keyword, table)
            out.append(Diagnostic(file, line, rule.severity, f"{name}: {text}"))
    return out
