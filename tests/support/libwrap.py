"""Debian's libwrap (libwrap0, 7.6.q) itself, through ctypes: the oracle
the differential test compares ssl-gw's TCP wrappers with.

Only the tests load it; ssl-gw keeps its own reader (it reads the tables
before its chroot and never runs their commands).  A request is built
with request_init(3) from strings, so libwrap makes no look-up of its own:
the client's name is the one ssl-gw confirmed through the test's DNS
server, or libwrap's "unknown" / "paranoid"; and no option that acts on
the process (spawn, twist, user, umask...) may appear in what is checked,
since libwrap would carry it out in the test process.
"""

import ctypes
import ctypes.util
import os

# tcpd.h's request keys.
RQ_DAEMON, RQ_CLIENT_NAME, RQ_CLIENT_ADDR, RQ_SERVER_ADDR = 2, 4, 5, 8
#: struct request_info is a few KiB in 7.6; room to spare.
REQUEST_BYTES = 1 << 16


class Libwrap:
    """hosts_access(3) of Debian's libwrap on the tables of one directory."""

    def __init__(self, directory):
        self.lib = ctypes.CDLL("libwrap.so.0")
        # hosts_allow_table / hosts_deny_table are libwrap's globals for
        # the two paths (tcpdchk redirects them the same way).
        self._paths = [ctypes.create_string_buffer(os.path.join(directory, name).encode())
                       for name in ("hosts.allow", "hosts.deny")]
        for symbol, buf in zip(("hosts_allow_table", "hosts_deny_table"), self._paths):
            ctypes.c_void_p.in_dll(self.lib, symbol).value = ctypes.addressof(buf)

    def allows(self, service, addr, name=None, paranoid=False, server_addr=None):
        """Would libwrap grant `service` to this client?  `name` is the
        confirmed name or None; `paranoid`: its PTR names do not lead back."""
        text = name if name else ("paranoid" if paranoid else "unknown")
        args = [RQ_DAEMON, ctypes.c_char_p(service.encode()),
                RQ_CLIENT_NAME, ctypes.c_char_p(text.encode()),
                RQ_CLIENT_ADDR, ctypes.c_char_p(addr.encode())]
        if server_addr is not None:
            args += [RQ_SERVER_ADDR, ctypes.c_char_p(server_addr.encode())]
        request = ctypes.create_string_buffer(REQUEST_BYTES)
        self.lib.request_init(request, *args, 0)
        return bool(self.lib.hosts_access(request))
