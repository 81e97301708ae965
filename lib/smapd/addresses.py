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


def parse_resolver_spec(spec: str) -> tuple:
    """`ADDR[:PORT]`, `[V6]:PORT` or a bare IPv6 address -> (addr, port).
    Raises ValueError with a sentence."""
    addr, port = spec, 53
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0:
            raise ValueError(f"missing ']' in {spec!r}")
        addr, rest = spec[1:close], spec[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected ':PORT' after ']' in {spec!r}")
            port = rest[1:]
    elif spec.count(":") == 1:
        addr, port = spec.split(":")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{addr!r} is not an IP address (a resolver is given by address)") from None
    try:
        port = int(port)
    except ValueError:
        raise ValueError(f"bad port {port!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return addr, port
