"""FWTK host patterns and hosts rules, with names from a real DNS server."""

import pytest

from smapd import dnsclient as sdns
from smapd.table.netperm import Rule, check_hosts, compile_host_pattern, compile_host_rule


@pytest.mark.parametrize("pattern, addr, name, expected", [
    ("*", "192.0.2.7", None, True),
    ("unknown", "192.0.2.7", None, True),
    ("unknown", "192.0.2.7", "mx.example.com", False),
    ("UNKNOWN", "192.0.2.7", None, True),
    ("192.0.2.7", "192.0.2.7", None, True),
    ("192.0.2.7", "192.0.2.8", None, False),
    ("192.0.2.*", "192.0.2.200", None, True),
    ("192.0.2.*", "192.0.3.1", None, False),
    ("192.0.*.7", "192.0.99.7", None, True),
    ("192.0.2.1?", "192.0.2.15", None, True),
    ("192.0.2.1?", "192.0.2.150", None, False),
    ("192.0.2.0/24", "192.0.2.255", None, True),
    ("192.0.2.0/24", "192.0.3.0", None, False),
    ("192.0.2.5/24", "192.0.2.1", None, True),  # host bits ignored, as FWTK masks both
    ("10.0.0.0/255.0.0.0", "10.20.30.40", None, True),
    ("10.0.0.0:255.0.0.0", "10.20.30.40", None, True),
    ("10.0.0.0:255.0.0.0", "11.0.0.1", None, False),
    ("10.0.0.3:255.0.0.255", "10.99.99.3", None, True),  # non-contiguous mask
    ("10.0.0.3:255.0.0.255", "10.99.99.4", None, False),
    ("0.0.0.0/0", "203.0.113.1", None, True),
    ("0.0.0.0/0", "2001:db8::1", None, False),
    ("2001:db8::/32", "2001:db8:ffff::1", None, True),
    ("2001:db8::/32", "2001:db9::1", None, False),
    ("2001:DB8::1", "2001:db8::1", None, True),
    ("::ffff:10.0.0.0/104", "10.1.2.3", None, True),
    ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", None, True),
    ("example.com.", "192.0.2.7", "example.com", True),
    ("::/0", "192.0.2.1", None, False),
    ("192.0.2.7", "::ffff:192.0.2.7", None, True),  # an IPv4 client on an IPv6 socket
    ("192.0.2.0/24", "::ffff:192.0.2.9", None, True),
    ("fe80::1", "fe80::1%eth0", None, True),
    ("*.example.com", "192.0.2.7", "mx.example.com", True),
    ("*.example.com", "192.0.2.7", "a.b.example.com", True),
    ("*.example.com", "192.0.2.7", "MX.Example.COM.", True),
    ("*.example.com", "192.0.2.7", "example.com", False),
    ("*.example.com", "192.0.2.7", None, False),  # a name pattern needs a confirmed name
    ("mx.example.com", "192.0.2.7", "mx.example.com", True),
    ("mx?.example.com", "192.0.2.7", "mx1.example.com", True),
])
def test_pattern(pattern, addr, name, expected):
    assert compile_host_pattern(pattern).matches(addr, name) is expected


@pytest.mark.parametrize("pattern", [
    "300.1.1.1", "192.0.2.0/33", "10.0.0.0:255.0.0.256", "2001:db8::/129", "exa mple", "a/b", "1.2.3",
    "::zz", "héllo.example", "2001:db8::*",
])
def test_bad_patterns(pattern):
    with pytest.raises(ValueError):
        compile_host_pattern(pattern)


def rule(line, *args, flag="permit"):
    return compile_host_rule(Rule(("smap",), "hosts", flag, args, "t", line))


def test_first_matching_rule_decides_and_no_match_denies():
    rules = [rule(1, "192.0.2.7", flag="deny"), rule(2, "192.0.2.0/24", "-auth"), rule(3, "*.example.com")]
    ok, r = check_hosts(rules, "192.0.2.7", None)
    assert (ok, r.where) == (False, "t:1")
    ok, r = check_hosts(rules, "192.0.2.8", None)
    assert (ok, r.where, r.options) == (True, "t:2", ("-auth",))
    ok, r = check_hosts(rules, "203.0.113.5", "mail.example.com")
    assert (ok, r.where) == (True, "t:3")
    assert check_hosts(rules, "203.0.113.5", None) == (False, None)
    assert check_hosts([], "203.0.113.5", None) == (True, None)


def test_rule_needs_prefix_and_patterns():
    with pytest.raises(ValueError, match="permit- or deny-"):
        compile_host_rule(Rule(("smap",), "hosts", None, ("*",), "t", 1))
    with pytest.raises(ValueError, match="at least one host pattern"):
        rule(1, "-auth")


# ------------------------------------------------------------ with real DNS

RECORDS = (
    "--local=/example.test/", "--local=/2.0.192.in-addr.arpa/", "--local=/8.b.d.0.1.0.0.2.ip6.arpa/",
    # confirmed both ways, IPv4 and IPv6
    "--host-record=good.example.test,192.0.2.10,2001:db8::10",
    # a PTR whose name points elsewhere: does not confirm
    "--ptr-record=11.2.0.192.in-addr.arpa,liar.example.test",
    "--host-record=liar.example.test,192.0.2.99",
    # two PTR names, only the second confirms
    "--ptr-record=12.2.0.192.in-addr.arpa,nowhere.example.test",
    "--ptr-record=12.2.0.192.in-addr.arpa,second.example.test",
    "--host-record=second.example.test,192.0.2.12",
)


def test_forward_confirmed_names(dns_server):
    server = dns_server(*RECORDS)
    res = server.resolver()
    assert sdns.confirmed_name("192.0.2.10", res) == "good.example.test"
    assert sdns.confirmed_name("2001:db8::10", res) == "good.example.test"
    assert sdns.confirmed_name("::ffff:192.0.2.10", res) == "good.example.test"
    assert sdns.confirmed_name("192.0.2.11", res) is None  # PTR does not confirm
    assert sdns.confirmed_name("192.0.2.12", res) == "second.example.test"
    assert sdns.confirmed_name("192.0.2.13", res) is None  # no PTR at all
    log = server.log.read_text()
    assert "liar.example.test" in log and "192.0.2.99" in log  # the forward look-up really happened


def test_hosts_rules_with_real_dns(dns_server):
    server = dns_server(*RECORDS)
    res = server.resolver()
    rules = [rule(1, "*.example.test"), rule(2, "unknown", flag="deny"), rule(3, "*")]

    def decide(addr):
        ok, r = check_hosts(rules, addr, sdns.confirmed_name(addr, res))
        return ok, r.where

    assert decide("192.0.2.10") == (True, "t:1")
    assert decide("192.0.2.11") == (False, "t:2")  # liar.example.test is not trusted
    assert decide("192.0.2.13") == (False, "t:2")


def test_dns_trouble_gives_no_name():
    # A resolver pointed at a port where nothing answers: a time-out, no name, no exception.
    from support.programs import free_port
    res = sdns.make_resolver([f"127.0.0.1:{free_port()}"], lifetime=0.5)
    assert sdns.confirmed_name("192.0.2.10", res) is None


@pytest.mark.parametrize("spec, expected", [
    ("127.0.0.1", ("127.0.0.1", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)),
])
def test_resolver_specs(spec, expected):
    assert sdns.parse_resolver_spec(spec) == expected


@pytest.mark.parametrize("spec", ["ns.example.com", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]5"])
def test_bad_resolver_specs(spec):
    with pytest.raises(ValueError):
        sdns.parse_resolver_spec(spec)


def test_prepared_types_parse_without_imports():
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    sdns.prepare_types()
    for name in sdns.TYPES:
        cls = dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(name))
        assert cls is not dns.rdata.GenericRdata, name
