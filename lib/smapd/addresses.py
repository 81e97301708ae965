"""Client addresses as every program of the suite compares them.

What it does: `client_address()` turns what accept() or a table gives
into an ipaddress object, an IPv4 client reaching an IPv6 socket seen as
the IPv4 address it is.

What it trusts: nothing: a malformed address is a ValueError.

What it must never do: look a name up.
"""

from __future__ import annotations

import ipaddress


def client_address(addr) -> ipaddress._BaseAddress:
    """The address as matching sees it: an IPv4-mapped IPv6 address (a
    dual-stack listener's view of an IPv4 client) becomes the IPv4
    address, and a scope id is dropped."""
    if not isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr = ipaddress.ip_address(str(addr).split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr
