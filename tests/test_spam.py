"""smap's spam checks through smap -daemon, against real DNS servers: DNSBL
zones served by rbldnsd behind a dnsmasq resolver, NS records (present,
NXDOMAIN, SERVFAIL) for `nospam ns-required`, strict RFC 821 senders, and
the spam database, changed while smap runs."""

import os
import socket
import time

import pytest

from support.daemons import Daemon
from support.dnsmasq import wire_name
from support.programs import wait_for
from support.smtp import Smtp
from rbldnsd import DnsblNet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap -daemon binds and jails as root")

ZONES = {
    "bl.test": [("ip4set", ":127.0.0.2:spam source\n127.0.0.2\n127.0.0.3\n"),
                ("ip4set", ":127.0.0.10:policy listing\n127.0.0.3\n")],
    "weak.test": [("ip4set", ":127.0.0.2:weak evidence\n127.0.0.4\n127.0.0.5\n")],
    "weak2.test": [("ip4set", ":127.0.0.2:more weak evidence\n127.0.0.5\n")],
    "v6.test": [("ip6trie", ":127.0.0.2:IPv6 spam source\n::1\n")],
    "servfail.test": [("generic", "www A 192.0.2.5\n")],
}


def Net(base):
    """rbldnsd for the zones, dnsmasq in front as the resolver smap uses."""
    return DnsblNet(base, ZONES, ("bl.test", "weak.test", "weak2.test", "v6.test"), records=(
        "--local=/example.test/", "--local=/nxd.test/", "--local=/127.in-addr.arpa/", "--local=/ip6.arpa/",
        f"--dns-rr=example.test,2,{wire_name('ns.example.test')}",
        "--host-record=host.sub.example.test,192.0.2.1",
    ), silent_zones=("slow.test",))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = Net(tmp_path_factory.mktemp("spamnet"))
    yield n
    n.stop()


@pytest.fixture
def smap_with(tmp_path, net):
    started = []

    def start(extra, listen=None):
        d = Daemon(tmp_path / f"d{len(started)}", net.dns.port)
        d.write_table("smap: minspare 2\nsmap: errors-max 100\nsmap: dns-timeout 1\n" + extra,
                      listen=listen or [f"127.0.0.1:{d.port}"])
        started.append(d)
        return d.start()
    yield start
    for d in started:
        d.stop()


def mail_from(d, sender="someone@example.test", source="127.0.0.1", addr="127.0.0.1", port=None):
    """The reply to MAIL FROM from a client at `source`."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect((addr, port or d.port))
    s = Smtp(sock)
    try:
        assert s.reply()[0] == 220
        assert s.cmd("EHLO client.example.test")[0] == 250
        return s.cmd(f"MAIL FROM:<{sender}>")
    finally:
        s.close()


def test_dnsbl_scores(smap_with):
    v6 = socket.socket(socket.AF_INET6)
    v6.bind(("::1", 0))
    port6 = v6.getsockname()[1]
    v6.close()
    d = smap_with("smap: nospam maps-rbl\nsmap: rbl bl.test=127.0.0.[2..11]*2\nsmap: rbl weak.test\n"
                  "smap: rbl weak2.test\nsmap: rbl v6.test*2\nsmap: rbl-threshold 2\nsmap: relay-hosts 127.0.0.3\n",
                  listen=None)
    assert mail_from(d, source="127.0.0.1")[0] == 250                      # listed nowhere
    code, lines = mail_from(d, source="127.0.0.2")                         # bl.test, weight 2
    assert code == 554 and "blocked using bl.test" in lines[0]
    assert mail_from(d, source="127.0.0.4")[0] == 250                      # weak.test alone: 1 < 2
    code, lines = mail_from(d, source="127.0.0.5")                         # weak + weak2: 1 + 1
    assert code == 554 and "weak.test" in lines[0] and "weak2.test" in lines[0]
    assert mail_from(d, source="127.0.0.3")[0] == 250                      # listed, but relay-hosts
    d.syslog.wait(r"host=unknown/127\.0\.0\.2 refused: DNSBL score 2 \(threshold 2\): bl\.test")
    # IPv6: ::1 in nibble form in v6.test.
    d.stop()
    d2 = smap_with("smap: nospam maps-rbl\nsmap: rbl v6.test*2\nsmap: rbl-threshold 2\n",
                   listen=[f"[::1]:{port6}"])
    code, lines = mail_from(d2, source="::1", addr="::1", port=port6)
    assert code == 554 and "blocked using v6.test" in lines[0]


def test_a_zone_that_times_out_gives_4xx(smap_with):
    d = smap_with("smap: nospam maps-rbl\nsmap: rbl slow.test*2\nsmap: rbl weak.test\nsmap: rbl-threshold 3\n")
    t0 = time.monotonic()
    code, lines = mail_from(d, source="127.0.0.4")   # weak.test 1 + the silent zone's 2 could reach 3
    assert code == 451 and lines[0].startswith("451 4.7.1")
    assert time.monotonic() - t0 < 10
    assert mail_from(d, source="127.0.0.1")[0] == 250  # 0 + 2 cannot reach 3: clean
    d.syslog.wait(r"zones failing: slow\.test \(timeout\)")


def test_ns_required(smap_with):
    d = smap_with("smap: nospam ns-required\n")
    assert mail_from(d, "a@example.test")[0] == 250
    assert mail_from(d, "a@host.sub.example.test")[0] == 250     # NS found higher up
    assert mail_from(d, "")[0] == 250                            # bounces are not checked
    code, lines = mail_from(d, "a@nowhere.nxd.test")
    assert code == 553 and lines[0].startswith("553 5.1.8")
    code, lines = mail_from(d, "a@www.servfail.test")
    assert code == 451 and lines[0].startswith("451 4.1.8")
    d.syslog.wait(r"refused: ns-required: nowhere\.nxd\.test: nxdomain")


def test_rfc821(smap_with):
    d = smap_with("smap: nospam RFC821\n")
    assert mail_from(d, "a.b@example.test")[0] == 250
    for bad in ('"quoted"@example.test', "a@[192.0.2.1]", "a@localhost"):
        code, lines = mail_from(d, bad)
        assert code == 553 and lines[0].startswith("553 5.1.7"), bad


def test_spam_database_changes_without_a_restart(smap_with, tmp_path):
    db = tmp_path / "spamdb"
    db.write_text("# clients\n127.0.0.7\n127.0.1.0/24\n# senders\nspam@bad.example\n*.junk.example\n"
                  "junk.example\n")
    d = smap_with(f"smap: spam-database {db}\n")
    code, lines = mail_from(d, source="127.0.0.7")
    assert code == 554 and "blocked" in lines[0]
    assert mail_from(d, source="127.0.1.9")[0] == 554
    assert mail_from(d, "spam@bad.example")[0] == 554
    assert mail_from(d, "x@mail.junk.example")[0] == 554
    assert mail_from(d, "x@junk.example")[0] == 554
    assert mail_from(d, "ham@bad.example")[0] == 250
    d.syslog.wait(rf"client in the spam database \({db}:2: 127\.0\.0\.7\)")
    # Changed while smap runs: the master reloads, new children use it.
    db.write_text("ham@bad.example\n")
    d.syslog.wait(rf"{db} changed: reloading")
    wait_for(lambda: mail_from(d, "ham@bad.example")[0] == 554, what="the new database in use")
    assert mail_from(d, source="127.0.0.7")[0] == 250
