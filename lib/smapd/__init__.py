"""The smapd suite: smap, smapd, ssl-gw and smapctl.

A re-implementation of the TIS Firewall Toolkit mail proxies (smap, smapd)
and of the stunnel 3.x TLS wrapper.  Each module's docstring says what it
does, what it trusts and what it must never do.
"""

__version__ = "0.1.0"

#: Where every program looks for its table unless --config or
#: NETPERM_TABLE says otherwise (the FWTK location).
DEFAULT_TABLE = "/usr/local/etc/netperm-table"
