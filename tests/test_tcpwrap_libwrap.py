"""ssl-gw's TCP wrappers against Debian's libwrap itself: generated
hosts.allow / hosts.deny pairs, each asked for every test client (IPv4 and
IPv6, with a name confirmed through the test's DNS server, without one, and
paranoid) and a few services, must get the same answer from
`smapd.sslgw.tcpwrap` as from libwrap's hosts_access(3) (support/libwrap.py).
"""

import random

import pytest

from smapd.dnsclient import lookup_client
from smapd.sslgw.tcpwrap import Client, Tables
from support.dnsmasq import wire_name
from support.libwrap import Libwrap

#: address -> what the test DNS server says of it.
CLIENTS = ("127.0.0.1", "127.0.0.4", "127.0.0.5", "127.0.0.9", "10.1.2.3", "::1", "2001:db8::5", "2001:db8:1::9")
DNS_RECORDS = (
    "--local=/example.test/", "--local=/127.in-addr.arpa/", "--local=/10.in-addr.arpa/", "--local=/ip6.arpa/",
    "--host-record=host1.example.test,127.0.0.1",
    "--host-record=loc,127.0.0.4",                       # LOCAL: no dot
    # PARANOID: the PTR name's address is another one.
    "--ptr-record=5.0.0.127.in-addr.arpa,liar.example.test",
    "--host-record=liar.example.test,127.0.0.99",
    "--host-record=Mixed.Example.TEST,10.1.2.3",
    "--host-record=host6.example.test,::1",
    "--host-record=1host.example.test,2001:db8::5",
    # 127.0.0.9 and 2001:db8:1::9 have no PTR: unknown.
    f"--dns-rr=example.test,2,{wire_name('ns.example.test')}",
)
SERVICES = ("imap", "pop3", "localhost.143")
SERVERS = (None, "127.0.0.1", "::1")

DAEMONS = ("imap", "IMAP", "pop3", "ALL", "all", "im*", "i?ap", ".143", "localhost.143", "imap@127.0.0.1",
           "imap@127.0.0.2", "ALL@[::1]", "ALL@127.", "imap@127.0.0.0/255.0.0.0", "pop3@ALL", "imap@host1.example.test",
           "imap@", "@imap", "localhost.", "KNOWN", "[imap]", ".map", "*", "imap@[::1]", "ALL@[::1]/128",
           "imap@127.0.0.1/32", "imap@LOCAL", "imap@unknown")
HOSTS = ("ALL", "KNOWN", "UNKNOWN", "PARANOID", "LOCAL", "known", "127.0.0.1", "127.0.0.01", "127.0.0.4",
         "127.0.0.5/255.255.255.254", "127.0.0.0/255.255.255.248", "127.0.0.0/29", "127.0.0.0/255.255.255.0",
         "127.0.0.1/32", "127.0.0.1/33", "127.0.0.0/0.0.0.255", "127.", "10.", "127.0.0", "127.0.0.",
         "[::1]", "[::1]/128", "[2001:db8::]/32", "[2001:db8::]/48", "[::ffff:127.0.0.0]/125", "[::ffff:127.0.0.1]",
         "[2001:db8::5]/ffff::", "[::]/0", "::1", ".example.test", ".test", "example.test", "host1.example.test",
         "HOST1.EXAMPLE.TEST", "mixed.example.test", "*.example.test", "host?.example.test", "127.0.0.*", "1*",
         "*", "2001:db8::*", "loc", "host6.example.test", "1host.example.test", "liar.example.test",
         "unknown", "paranoid", "ALL@127.0.0.1", "KNOWN@ALL", "UNKNOWN@ALL", "root@ALL", "@netgroup",
         "192.168.1.0/24", "0.0.0.0/0", "[::1", "EXCEPT", "0.0.0.0/0.0.0.0", "127.0.0.1/255.255.255.255",
         "127.0.0.1/255.0.0.255", "0177.0.0.1/32", "0x7f.0.0.0/8", "127.0.0.1/32x", "10.0.0.0/8.0", "[::1]/x",
         "[::1]/00128", "[0:0::1]", "[127.0.0.1]", "host1.example.", ".0.0.1", "1host*", "*.", ".ex*", "?",
         "unk*@ALL", "ALL@[::1]", "KNOWN@KNOWN", "#", "@LIST_A@", "@LIST_B@", "/nonexistent/list")
OPTIONS = ("", "", "", ": allow", ": deny", ": ALLOW", ": severity auth.info", ": severity auth.info : deny",
           ": bogus", ": allow : deny", ": deny : allow", ": allow x", ": ", ": severity", ": keepalive")
SEPARATORS = (" ", ", ", ",", "\t")
ENDINGS = ("\n", "\n", "\n", "\r\n", "")


def _list(rng, words):
    parts = [rng.choice(words) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        parts += ["EXCEPT"] + [rng.choice(words) for _ in range(rng.randint(1, 2))]
    sep = rng.choice(SEPARATORS)
    return sep.join(parts)


#: Lines of another shape: comments, '#' in the middle, continuations,
#: CR LF, and the longest line libwrap reads (2046 characters) and a longer.
SPECIAL_LINES = ("# a comment", "", "   ", "imap ALL", "imap: 127.0.0.1 # office", "imap: \\\n 127.0.0.1",
                 "ALL: ALL # 127.0.0.1", "imap: # ALL", " # ALL: ALL", "imap: ALL # EXCEPT 127.0.0.1",
                 "imap: 127.0.0.1\\\r\n 10.1.2.3", "imap: 127.0.0.1 \\\n\nimap: 10.1.2.3",
                 "imap: " + " ".join(["10.9.9.9"] * 225) + " 127.0.0.1 12345",
                 "imap: " + " ".join(["10.9.9.9"] * 225) + " 127.0.0.1 123456")
#: /file lists: '#' is no comment there; the second has no final newline.
LISTS = {"@LIST_A@": "127.0.0.1 # 10.1.2.3\n[::1]\n2001:db8::/32 host6.example.test\n",
         "@LIST_B@": "@LIST_A@\n10.0.0.0/8 [2001:db8::5] .example.test"}


def _line(rng):
    if rng.random() < 0.08:
        return rng.choice(SPECIAL_LINES)
    return f"{_list(rng, DAEMONS)}: {_list(rng, HOSTS)}{rng.choice(OPTIONS)}"


def _table(rng):
    if rng.random() < 0.15:
        return None  # no file at all
    lines = [_line(rng) for _ in range(rng.randint(0, 4))]
    ending = rng.choice(ENDINGS)
    return "\n".join(lines) + (ending if lines else "")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    """address -> (confirmed name or None, paranoid), from the test DNS."""
    from support.dnsmasq import DnsServer
    server = DnsServer(tmp_path_factory.mktemp("dns"), DNS_RECORDS)
    try:
        resolver = server.resolver()
        found = {addr: lookup_client(addr, resolver) for addr in CLIENTS}
    finally:
        server.stop()
    # The DNS server said what the test expects of it.
    assert found["127.0.0.1"] == ("host1.example.test", False)
    assert found["127.0.0.4"] == ("loc", False)
    assert found["127.0.0.5"] == (None, True)
    assert found["10.1.2.3"] == ("mixed.example.test", False)
    assert found["127.0.0.9"] == (None, False)
    assert found["::1"] == ("host6.example.test", False)
    return found


def _write(path, text, lists):
    if path.exists():
        path.unlink()
    if text is not None:
        for mark, list_path in lists.items():
            text = text.replace(mark, list_path)
        path.write_bytes(text.encode())


def test_same_decisions_as_libwrap(tmp_path, names):
    libwrap = Libwrap(str(tmp_path))
    rng = random.Random(20261203)
    lists = {mark: str(tmp_path / mark.strip("@").lower()) for mark in LISTS}
    for mark, text in LISTS.items():
        _write(tmp_path / mark.strip("@").lower(), text, lists)
    differences, asked = [], 0
    for _ in range(400):
        allow, deny = _table(rng), _table(rng)
        _write(tmp_path / "hosts.allow", allow, lists)
        _write(tmp_path / "hosts.deny", deny, lists)
        ours = Tables(str(tmp_path))
        for addr in CLIENTS:
            name, paranoid = names[addr]
            for service in SERVICES:
                for server in SERVERS:
                    theirs = libwrap.allows(service, addr, name, paranoid, server)
                    mine = ours.check(service, Client(addr, name, paranoid), server)
                    asked += 1
                    if mine.allowed != theirs:
                        differences.append(f"allow={allow!r} deny={deny!r} service={service} client={addr} "
                                           f"name={name} paranoid={paranoid} server={server}: "
                                           f"libwrap {'grants' if theirs else 'refuses'}, ssl-gw {mine.reason}")
    assert asked > 20000
    assert not differences, f"{len(differences)} of {asked} decisions differ:\n" + "\n".join(differences[:40])
