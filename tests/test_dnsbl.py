"""DNSBL scoring and the sender domain's name servers (smapd.smap.dns_checks), against
real DNS servers on loopback.

The network, built once for the module:

    check_rbls / sender_domain_ns
        │ (resolver: 127.0.0.1:dnsmasq)
        ▼
    dnsmasq ── local data: example.test (NS records), nons.test (no NS)
        ├── /bl.test/ /v6.test/ /allow.test/ /err.test/ /park.test/ ──▶ rbldnsd
        ├── /slow1.test/ … /slow3.test/ and /slow.test/ ──▶ a UDP socket that never answers
        └── everything else ──▶ rbldnsd, DNSSEC-validated against a root
            trust anchor no answer can satisfy: servfail.test is BOGUS, SERVFAIL

dnsmasq validates only what it forwards to its default server, so the
answers of the named zones and its local data are not affected.  The silent
socket is a real server that hangs (bound, never read): a query to it times
out as one to a dead DNSBL does.
"""

import os
import socket
import subprocess
import sys
import time

import dns.reversename
import pytest

from support.dnsmasq import wire_name
from support.programs import ROOT, free_port, nobody_ids
from rbldnsd import DnsblNet
from smapd.table import keywords as config
from smapd.dnsclient import make_resolver
from smapd.smap.dns_checks import (RblResult, check_rbls, filter_matches, parse_filter, query_name,
                         sender_domain_ns)

ZONES = {
    # zen-style: one zone, two datasets, two answers for 192.0.2.7.
    "bl.test": [("ip4set", ":127.0.0.2:Listed as spam source, see http://bl.test/$\n"
                           "192.0.2.7\n192.0.2.8\n198.51.100.0/24\n"),
                ("ip4set", ":127.0.0.10:Policy listing\n192.0.2.7\n192.0.2.9\n")],
    "v6.test": [("ip6trie", ":127.0.0.3:IPv6 listed\n2001:db8::7\n2001:db8:1::/48\n")],
    "allow.test": [("ip4set", ":127.0.0.2:allowlisted\n192.0.2.7\n192.0.2.9\n")],
    # A list that refuses this site's queries (Spamhaus' code for a public resolver).
    "err.test": [("ip4set", ":127.255.255.254:query refused\n0.0.0.0/1\n128.0.0.0/1\n")],
    # An expired list whose domain now answers with a parking address.
    "park.test": [("ip4set", ":192.0.2.250:parked\n0.0.0.0/1\n128.0.0.0/1\n")],
    # Anything, unsigned: behind the validating dnsmasq it is BOGUS.
    "servfail.test": [("generic", "www A 192.0.2.5\n")],
}


def Net(base):
    return DnsblNet(base, ZONES, ("bl.test", "v6.test", "allow.test", "err.test", "park.test"), records=(
        "--local=/example.test/", "--local=/nons.test/",
        f"--dns-rr=example.test,2,{wire_name('ns1.example.test')}",
        f"--dns-rr=example.test,2,{wire_name('ns2.example.test')}",
        f"--dns-rr=sub2.example.test,2,{wire_name('ns.sub2.example.test')}",
        "--host-record=host.example.test,192.0.2.1",
        "--host-record=a.b.c.example.test,192.0.2.2",
        "--host-record=host.sub2.example.test,192.0.2.3",
        "--host-record=mail.nons.test,192.0.2.4",
    ), silent_zones=("slow.test", "slow1.test", "slow2.test", "slow3.test"))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = Net(tmp_path_factory.mktemp("dnsbl"))
    yield n
    n.stop()


def rbls(*specs):
    """config.Rbl objects from table arguments, as the table gives them."""
    t = config.RblType()
    return [t.parse_one(s) for s in specs]


def timed(fn, *args, **kw):
    start = time.monotonic()
    value = fn(*args, **kw)
    return value, time.monotonic() - start


# ----------------------------------------------------------- names and filters

def test_query_name():
    assert query_name("192.0.2.7", "zen.example") == "7.2.0.192.zen.example"
    assert query_name("192.0.2.7", "zen.example.") == "7.2.0.192.zen.example"
    # A dual-stack listener's view of an IPv4 client is the IPv4 client.
    assert query_name("::ffff:192.0.2.7", "bl.test") == "7.2.0.192.bl.test"
    v6 = query_name("2001:db8::7", "v6.test")
    assert v6 == "7.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.v6.test"
    # The same nibbles as the ip6.arpa name.
    assert v6[:-len("v6.test")] == dns.reversename.from_address("2001:db8::7").to_text()[:-len("ip6.arpa.")]
    with pytest.raises(ValueError):
        query_name("not-an-address", "bl.test")


def test_filter_syntax():
    assert filter_matches(None, "127.0.0.2") and filter_matches(None, "127.1.2.3")
    # No filter: error codes and addresses outside 127/8 are no listing.
    assert not filter_matches(None, "127.255.255.254")
    assert not filter_matches(None, "192.0.2.250")
    assert filter_matches("127.0.0.2", "127.0.0.2") and not filter_matches("127.0.0.2", "127.0.0.3")
    f = "127.0.0.[2..11]"
    assert [filter_matches(f, f"127.0.0.{i}") for i in (1, 2, 10, 11, 12)] == [False, True, True, True, False]
    f = "127.0.0.[2;4]"
    assert [filter_matches(f, f"127.0.0.{i}") for i in (2, 3, 4)] == [True, False, True]
    f = "127.0.[0;1].[2;8..9]"
    assert filter_matches(f, "127.0.1.9") and filter_matches(f, "127.0.0.2")
    assert not filter_matches(f, "127.0.2.2") and not filter_matches(f, "127.0.1.7")
    # An explicit filter may name an error code; then it counts.
    assert filter_matches("127.255.255.254", "127.255.255.254")
    assert parse_filter("127.0.0.[2..3]") == (frozenset({127}), frozenset({0}), frozenset({0}), frozenset({2, 3}))
    for bad in ("127.0.0", "127.0.0.[11..2]", "127.0.0.[256]", "127.0.0.[2;;4]", "127.0.0.[2...4]", "127.0.0.x"):
        with pytest.raises(ValueError):
            parse_filter(bad)
    # Whatever the table accepts as a filter is one this module reads.
    assert config.RblType().parse_one("zen.test=127.0.0.[2..11]*2").filter == "127.0.0.[2..11]"


def test_verdict_bounds():
    """The verdict from a result: the failed zones' weights bound the
    score; only a verdict they could not change is final."""
    assert RblResult(score=2).verdict(2) == "listed"
    assert RblResult(score=1).verdict(2) == "clean"
    assert RblResult(score=1, failed=[("x", "timeout")], failed_weights=[1]).verdict(2) == "tempfail"
    assert RblResult(score=0, failed=[("x", "timeout")], failed_weights=[1]).verdict(2) == "clean"
    assert RblResult(score=2, failed=[("x", "timeout")], failed_weights=[1]).verdict(2) == "listed"
    # A failed allowlist could have saved a listed client: 4xx, not 5xx.
    assert RblResult(score=2, failed=[("a", "timeout")], failed_weights=[-5]).verdict(2) == "tempfail"
    assert RblResult(score=9, failed=[("a", "timeout")], failed_weights=[-5]).verdict(2) == "listed"


# ------------------------------------------------------------ scoring (rbldnsd)

def test_listed_with_weight(net):
    r = check_rbls("192.0.2.8", rbls("bl.test*2"), net.resolver())
    assert r.score == 2 and r.listed == [("bl.test", ["127.0.0.2"], 2)] and r.failed == []
    assert r.verdict(2) == "listed" and r.verdict(3) == "clean"
    # The default weight is 1.
    assert check_rbls("192.0.2.8", rbls("bl.test"), net.resolver()).score == 1


def test_not_listed(net):
    r = check_rbls("192.0.2.1", rbls("bl.test*2", "v6.test"), net.resolver())
    assert (r.score, r.listed, r.failed, r.ignored) == (0, [], [], [])
    assert r.verdict(1) == "clean"


def test_two_answers_and_filters(net):
    # 192.0.2.7 answers 127.0.0.2 and 127.0.0.10, as zen does.
    r = check_rbls("192.0.2.7", rbls("bl.test=127.0.0.[2..11]*2"), net.resolver())
    assert r.listed == [("bl.test", ["127.0.0.2", "127.0.0.10"], 2)] and r.score == 2
    # Two entries for one zone, each with its filter and weight: both count.
    r = check_rbls("192.0.2.7", rbls("bl.test=127.0.0.2*3", "bl.test=127.0.0.10*1"), net.resolver())
    assert r.score == 4 and r.listed == [("bl.test", ["127.0.0.2"], 3), ("bl.test", ["127.0.0.10"], 1)]
    # A filter that excludes 127.0.0.10: 192.0.2.9 is listed only so.
    r = check_rbls("192.0.2.9", rbls("bl.test=127.0.0.[2..9]*2"), net.resolver())
    assert r.score == 0 and r.listed == [] and r.ignored == [("bl.test", ["127.0.0.10"])]
    assert r.verdict(1) == "clean"
    r = check_rbls("192.0.2.9", rbls("bl.test=127.0.0.[2;10]*2"), net.resolver())
    assert r.score == 2


def test_ipv6_and_mapped_clients(net):
    zones = rbls("v6.test*3", "bl.test")
    r = check_rbls("2001:db8::7", zones, net.resolver())
    assert r.listed == [("v6.test", ["127.0.0.3"], 3)] and r.score == 3
    assert check_rbls("2001:db8:1:2::1", zones, net.resolver()).score == 3  # inside the /48
    assert check_rbls("2001:db8::8", zones, net.resolver()).score == 0
    r = check_rbls("::ffff:192.0.2.8", zones, net.resolver())
    assert r.listed == [("bl.test", ["127.0.0.2"], 1)]


def test_allowlist_lowers_the_score(net):
    zones = rbls("bl.test*2", "allow.test*-3")
    r = check_rbls("192.0.2.7", zones, net.resolver())
    assert r.score == -1 and ("allow.test", ["127.0.0.2"], -3) in r.listed
    assert r.verdict(1) == "clean"
    r = check_rbls("192.0.2.8", zones, net.resolver())  # not allowlisted
    assert r.score == 2 and r.verdict(2) == "listed"


def test_error_codes_and_parked_domains_list_nobody(net):
    r = check_rbls("192.0.2.1", rbls("err.test*5", "park.test*5"), net.resolver())
    assert r.score == 0 and r.verdict(1) == "clean" and r.failed == []
    assert sorted(r.ignored) == [("err.test", ["127.255.255.254"]), ("park.test", ["192.0.2.250"])]
    # Named explicitly, they count: the operator asked for it.
    assert check_rbls("192.0.2.1", rbls("err.test=127.255.255.254"), net.resolver()).score == 1


def test_no_zones():
    r, took = timed(check_rbls, "192.0.2.7", [], None)
    assert r == RblResult() and r.verdict(1) == "clean" and took < 0.1


# ------------------------------------------------------- trouble and deadlines

def test_timeout_could_tip_the_score(net):
    zones = rbls("bl.test", "slow1.test")
    r, took = timed(check_rbls, "192.0.2.8", zones, net.resolver(), deadline=1.0)
    assert r.score == 1 and r.failed == [("slow1.test", "timeout")]
    assert 0.9 <= took < 1.6, took
    assert r.verdict(2) == "tempfail"   # slow1.test could have made it 2
    assert r.verdict(3) == "clean"      # it could not have made it 3
    assert r.verdict(1) == "listed"     # already there without it


def test_failed_allowlist_gives_tempfail_not_refusal(net):
    r = check_rbls("192.0.2.8", rbls("bl.test*2", "slow1.test*-5"), net.resolver(), deadline=0.8)
    assert r.score == 2 and r.failed == [("slow1.test", "timeout")]
    assert r.verdict(2) == "tempfail"


def test_zones_are_asked_in_parallel(net):
    zones = rbls("slow1.test", "slow2.test", "slow3.test", "bl.test*2", "v6.test")
    r, took = timed(check_rbls, "192.0.2.8", zones, net.resolver(), deadline=1.0)
    # Three silent zones together take one deadline, not three; and
    # bl.test, asked after them, still answers: one at a time it would
    # have found the shared deadline already spent.
    assert 0.9 <= took < 1.6, took
    assert sorted(r.failed) == [("slow1.test", "timeout"), ("slow2.test", "timeout"), ("slow3.test", "timeout")]
    assert r.listed == [("bl.test", ["127.0.0.2"], 2)] and r.score == 2
    assert r.verdict(2) == "listed" and r.verdict(3) == "tempfail" and r.verdict(6) == "clean"


def test_servfail_fails_the_zone_at_once(net):
    r, took = timed(check_rbls, "192.0.2.8", rbls("servfail.test*2", "bl.test"), net.resolver(), deadline=3.0)
    assert r.failed == [("servfail.test", "SERVFAIL")] and r.score == 1
    assert r.verdict(2) == "tempfail" and r.verdict(4) == "clean"
    assert took < 1.5, took


def test_refused_and_unreachable_servers_fail(net):
    # rbldnsd itself, asked about a zone it does not serve, says REFUSED.
    direct = make_resolver([f"127.0.0.1:{net.rbl.port}"], lifetime=2.0)
    r = check_rbls("192.0.2.8", rbls("nowhere.test", "bl.test"), direct)
    assert r.failed == [("nowhere.test", "REFUSED")] and r.score == 1
    # A resolver on a port nobody listens on: the deadline, then "timeout"
    # (UDP cannot tell; the kernel's ICMP error is not reported to it).
    dead = make_resolver([f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"], lifetime=2.0)
    r, took = timed(check_rbls, "192.0.2.8", rbls("bl.test"), dead, deadline=0.5)
    assert r.failed and r.failed[0][0] == "bl.test" and r.verdict(1) == "tempfail"
    assert took < 1.0, took


# ------------------------------------------------------------------- NS walk

def test_ns_at_the_domain(net):
    assert sender_domain_ns("example.test", net.resolver()) == ("ok", "example.test")
    assert sender_domain_ns("Example.TEST.", net.resolver()) == ("ok", "example.test")


def test_ns_at_a_parent(net):
    res = net.resolver()
    assert sender_domain_ns("host.example.test", res) == ("ok", "example.test")
    # Through an empty non-terminal (b.c.example.test, c.example.test).
    assert sender_domain_ns("a.b.c.example.test", res) == ("ok", "example.test")
    # The nearest delegation wins.
    assert sender_domain_ns("host.sub2.example.test", res) == ("ok", "sub2.example.test")


def test_nxdomain(net):
    assert sender_domain_ns("nope.example.test", net.resolver()) == ("nxdomain", "nope.example.test")


def test_no_ns_below_the_tld(net):
    assert sender_domain_ns("mail.nons.test", net.resolver()) == ("no-ns", "mail.nons.test")


def test_tld_and_non_domains_are_not_asked(net):
    res = net.resolver()
    before = net.dns.log.read_text()
    assert sender_domain_ns("test", res) == ("no-ns", "test")
    assert sender_domain_ns("test.", res) == ("no-ns", "test")
    for literal in ("[192.0.2.1]", "[IPv6:2001:db8::1]"):
        assert sender_domain_ns(literal, res) == ("no-ns", literal.lower())
    assert sender_domain_ns("", res) == ("no-ns", "")
    assert sender_domain_ns("bücher.example.test", res)[0] == "no-ns"
    assert sender_domain_ns("a..example.test", res)[0] == "no-ns"
    assert sender_domain_ns("-a.example.test", res)[0] == "no-ns"
    assert net.dns.log.read_text().count("query[") == before.count("query[")


def test_servfail_is_tempfail(net):
    r, took = timed(sender_domain_ns, "www.servfail.test", net.resolver())
    assert r == ("tempfail", "SERVFAIL") and took < 1.5, (r, took)


def test_timeout_is_tempfail(net):
    r, took = timed(sender_domain_ns, "mail.slow.test", net.resolver(), lifetime=1.0)
    assert r == ("tempfail", "timeout")
    assert 0.9 <= took < 1.6, took


# -------------------------------------------------------------- in the jail

JAILED = r"""
import json, os, sys
from smapd.table import keywords as config
from smapd.prefork import privsep
from smapd.dnsclient import make_resolver
from smapd.smap.dns_checks import check_rbls, sender_domain_ns

port, jail, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
res = make_resolver(["127.0.0.1:" + port], lifetime=3.0)
zones = [config.RblType().parse_one(s) for s in ("bl.test=127.0.0.[2..11]*2", "v6.test", "slow1.test")]
privsep.pre_jail("smapd.smap.dns_checks")  # as smap's policy does before its jail
privsep.enter_jail(jail, uid, gid)
assert not os.path.exists("/usr") and not os.path.exists("/etc")
r = check_rbls("192.0.2.7", zones, res, deadline=0.5)
v6 = check_rbls("2001:db8::7", zones, res, deadline=0.5)
out = {"score": r.score, "listed": r.listed, "failed": r.failed, "v6": v6.score,
       "ns": [sender_domain_ns(d, res) for d in ("host.example.test", "nope.example.test", "www.servfail.test")]}
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can chroot")
def test_works_chrooted_and_unprivileged(net, public_tmp):
    """Everything check_rbls and sender_domain_ns need is loaded before
    the jail by privsep.pre_jail: in an empty chroot as nobody they work
    the same."""
    import json
    jail = public_tmp / "jail"
    jail.mkdir()
    uid, gid = nobody_ids()
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "lib"))
    p = subprocess.run([sys.executable, "-c", JAILED, str(net.port), str(jail), str(uid), str(gid)],
                       capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["score"] == 2 and out["listed"] == [["bl.test", ["127.0.0.2", "127.0.0.10"], 2]]
    assert out["failed"] == [["slow1.test", "timeout"]] and out["v6"] == 1
    assert out["ns"] == [["ok", "example.test"], ["nxdomain", "nope.example.test"], ["tempfail", "SERVFAIL"]]
