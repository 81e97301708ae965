"""Netperm-table text the tests share.

smap refuses a table without relay control (rules.py, no-relay-control).
Tests about something else get `RELAY_DOMAINS`, the domains they send to,
unless their own lines already say who may receive mail.
"""

import re

# Every domain the tests address mail to, and nothing wider: an outsider
# still cannot relay to far.example or other.example.
RELAY_DOMAINS = ("example.org", "example.net", "example.com", "example.test", "x.example", "y.example",
                 "z.example", "b.example", "localdomain.com", "mail.example.com")

_CONTROL = re.compile(r"^\s*[^:#\n]*:\s*(relay-domain|relay-hosts|recipients)\b", re.M)


def relay_control(name: str, extra: str = "") -> str:
    """The line to add for program `name` unless `extra` already has a
    relay-domain or relay-hosts line."""
    if _CONTROL.search(extra):
        return ""
    return f"{name}: relay-domain {' '.join(RELAY_DOMAINS)}\n"
