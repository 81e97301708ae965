"""TCP wrappers (hosts.allow / hosts.deny) as libwrap reads them, for ssl-gw:
the reference deployment's files, every pattern kind, EXCEPT, options,
and tables made of random text."""

import os
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from support.libwrap import Libwrap
from support.programs import REFERENCE
from smapd.sslgw.tcpwrap import Client, Decision, Tables, check


def tables(tmp_path, allow=None, deny=None):
    """Write hosts.allow and/or hosts.deny into tmp_path; load them."""
    if allow is not None:
        (tmp_path / "hosts.allow").write_text(allow)
    if deny is not None:
        (tmp_path / "hosts.deny").write_text(deny)
    return Tables(str(tmp_path))


def where(tmp_path, name, line):
    return f"{tmp_path / name}:{line}"


def client(addr="192.0.2.7", name=None, paranoid=False):
    return Client(addr, name, paranoid)


# ------------------------------------------------------------ the reference

def test_reference_files():
    t = Tables(REFERENCE)
    assert t.warnings == []
    for service in ("imap", "pop3"):
        d = t.check(service, client("10.1.2.3"))
        assert d.allowed and d.where == os.path.join(REFERENCE, "hosts.allow") + ":1"
        d = t.check(service, client("127.0.0.1", "localhost"))
        assert not d.allowed
        assert d.where == os.path.join(REFERENCE, "hosts.deny") + ":1"
        assert d.reason == "hosts.deny:1: pop3,imap: ALL"
    d = t.check("smtp", client("127.0.0.1"))
    assert d.allowed and d.where is None


def test_convenience_check_and_missing_files(tmp_path):
    d = check("imap", client("10.9.9.9"), directory=REFERENCE)
    assert d.allowed and d.where.endswith("hosts.allow:1")
    d = check("imap", client("203.0.113.1"), directory=str(tmp_path))  # no files: as if empty
    assert d.allowed and d.where is None
    assert Tables(str(tmp_path)).warnings == []


# ------------------------------------------------------------ client patterns

def matches(tmp_path, pattern, c):
    """Does `svc: pattern` in hosts.allow match client c?"""
    t = tables(tmp_path, allow=f"svc: {pattern}\n")
    return t.check("svc", c).where is not None


@pytest.mark.parametrize("pattern, c, expected", [
    ("ALL", client(), True),
    ("all", client("2001:db8::1"), True),
    # LOCAL: a confirmed name without a dot
    ("LOCAL", client(name="mailhost"), True),
    ("LOCAL", client(name="mail.example.com"), False),
    ("LOCAL", client(), False),
    ("LOCAL", client(name="mailhost", paranoid=True), False),
    # KNOWN, UNKNOWN and PARANOID split every client in three
    ("KNOWN", client(name="mail.example.com"), True),
    ("known", client(name="mail.example.com"), True),
    ("KNOWN", client(), False),
    ("KNOWN", client(paranoid=True), False),
    ("UNKNOWN", client(), True),
    ("UNKNOWN", client(name="mail.example.com"), False),
    ("UNKNOWN", client(paranoid=True), False),
    ("UNKNOWN", client("not-an-address"), True),
    ("PARANOID", client(paranoid=True), True),
    ("PARANOID", client(), False),
    ("PARANOID", client(name="mail.example.com"), False),
    # .domain: a suffix of the confirmed name
    (".example.com", client(name="mail.example.com"), True),
    (".example.com", client(name="A.Example.COM"), True),
    (".EXAMPLE.com", client(name="a.b.example.com"), True),
    (".example.com", client(name="example.com"), False),
    (".example.com", client(name="mailexample.com"), False),
    (".example.com", client(), False),
    (".7", client("192.0.2.7"), True),   # libwrap's string_match: a suffix of the address text too
    (".0.2.7", client("192.0.2.7", name="mail.example.com"), True),
    # host names: exact, without regard to case, only when confirmed
    ("mail.example.com", client(name="MAIL.example.com"), True),
    ("mail.example.com", client(name="mail.example.com."), True),
    ("mail.example.com", client(name="smtp.example.com"), False),
    ("mail.example.com", client(name="mail.example.com", paranoid=True), False),
    ("mail.example.com", client(), False),
    # net.: a prefix of the dotted IPv4 address
    ("192.168.", client("192.168.5.4"), True),
    ("192.168.", client("192.169.0.1"), False),
    ("192.168.", client("10.192.168.1"), False),
    ("10.", client("10.200.1.1"), True),
    ("10.", client("100.1.1.1"), False),
    ("192.0.2.", client("192.0.2.255"), True),
    ("192.0.2.", client("2001:db8::1"), False),
    # net/mask and net/len
    ("10.0.0.0/255.0.0.0", client("10.1.2.3"), True),
    ("10.0.0.0/255.0.0.0", client("11.0.0.1"), False),
    ("192.0.2.0/255.255.255.128", client("192.0.2.127"), True),
    ("192.0.2.0/255.255.255.128", client("192.0.2.128"), False),
    ("10.0.0.0/8", client("10.255.255.255"), True),
    ("10.0.0.0/8", client("9.255.255.255"), False),
    ("192.0.2.0/25", client("192.0.2.127"), True),
    ("192.0.2.0/25", client("192.0.2.128"), False),
    ("0.0.0.0/0.0.0.0", client("203.0.113.9"), True),
    ("0.0.0.0/0.0.0.0", client("2001:db8::1"), False),
    ("0.0.0.0/0", client("203.0.113.9"), False),          # libwrap: /0 matches nothing (a warning)
    ("127.0.0.1/255.0.0.255", client("127.9.9.1"), True),  # a mask need not be contiguous
    ("127.0.0.1/32x", client("127.0.0.1"), True),          # atoi(3): the digits, then anything
    ("0177.0.0.1/32", client("127.0.0.1"), True),          # inet_addr(3): octal, and hex too
    # IPv6, in brackets since a ':' ends the client list
    ("[2001:db8::]/32", client("2001:db8:1::5"), True),
    ("[2001:db8::]/32", client("2001:db9::1"), False),
    ("[2001:DB8::]/32", client("2001:db8::1"), True),
    ("[2001:db8::1]", client("2001:db8::1"), True),
    ("[2001:db8::1]", client("2001:db8:0:0::1"), True),
    ("[2001:db8::1]", client("2001:db8::2"), False),
    ("[2001:db8::1]", client("192.0.2.7"), False),
    # an IPv4 client (IPv4-mapped ones too) is never matched by an IPv6 pattern
    ("[::ffff:10.0.0.0]/104", client("10.1.2.3"), False),
    ("[::ffff:10.0.0.0]/104", client("::ffff:10.1.2.3"), False),
    ("[::ffff:127.0.0.1]", client("127.0.0.1"), False),
    ("[::]/0", client("192.0.2.7"), False),
    ("[::]/0", client("2001:db8::1"), True),
    ("[2001:db8::1]/32", client("2001:db8:ffff::1"), True),  # the net's host bits are masked off
    # a bare address; an address pattern never matches a name
    ("192.0.2.7", client("192.0.2.7"), True),
    ("192.0.2.7", client("192.0.2.70"), False),
    ("192.0.2.7", client("192.0.2.8", name="192.0.2.7"), False),
    # wildcards, on addresses and on names
    ("192.0.2.*", client("192.0.2.200"), True),
    ("192.0.2.*", client("192.0.3.1"), False),
    ("192.0.?.7", client("192.0.2.7"), True),
    ("192.0.?.7", client("192.0.22.7"), False),
    ("10.*", client("192.0.2.1", name="10.example.com"), True),  # wildcards: address and name
    ("1*", client("10.0.0.1"), True),
    ("mail.example.", client(name="mail.example.com"), True),     # a prefix of the name, too
    ("ALL@ALL", client("10.0.0.1"), True),         # no ident query: the user is "unknown"
    ("UNKNOWN@10.0.0.1", client("10.0.0.1"), True),
    ("KNOWN@ALL", client("10.0.0.1"), False),
    ("mail!example", client(name="mail!example"), True),
    ("*", client("2001:db8::1"), True),
    ("*.example.com", client(name="a.b.example.com"), True),
    ("*.example.com", client(name="example.com"), False),
    ("*.EXAMPLE.com", client(name="mail.example.COM"), True),
    ("mail?.example.com", client(name="mail1.example.com"), True),
    ("mail?.example.com", client(name="mail12.example.com"), False),
    ("mail*", client(), False),
    ("mail*", client(name="mail.example.com", paranoid=True), False),
])
def test_client_patterns(tmp_path, pattern, c, expected):
    assert matches(tmp_path, pattern, c) is expected
    # And Debian's libwrap says the same (a paranoid client has no name for it).
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    name = None if c.paranoid or not c.name else c.name.rstrip(".")
    assert Libwrap(str(tmp_path)).allows("svc", c.addr, name, c.paranoid) is expected


def test_wildcards_take_linear_time(tmp_path):
    import time
    t = tables(tmp_path, allow="svc: " + "*a" * 20 + "*b.example.com\n")
    start = time.monotonic()
    assert t.check("svc", client(name="a" * 240 + ".example.com")).where is None
    assert time.monotonic() - start < 1.0


@settings(max_examples=500, deadline=None)
@given(glob=st.text("ab*?", max_size=8), text=st.text("ab", max_size=8))
def test_wildcards_mean_what_a_regex_would(glob, text):
    import re
    from smapd.sslgw.tcpwrap import _wildcard_match
    regex = "".join(".*" if c == "*" else "." if c == "?" else c for c in glob)
    assert _wildcard_match(glob, text) is bool(re.fullmatch(regex, text, re.DOTALL))


@pytest.mark.parametrize("pattern, c, text", [
    ("10.0.*.0/24", client("10.0.0.1"), "the net of net/mask must be a dotted quad"),
    ("[2001:db8::*]", client("2001:db8::1"), "not an IPv6 address"),
    ("@trusted", client(name="mail.example.com"), "NIS netgroups are not supported"),
    ("user@10.0.0.1", client("10.0.0.1"), "ident (RFC 931)"),
    ("10.0.0.0/33", client("10.0.0.1"), "a prefix length of 1 to 32"),
    ("10.0.0.0/0", client("10.0.0.1"), "a prefix length of 1 to 32"),
    ("10.0.0.0/255.0.0", client("10.0.0.1"), "a prefix length of 1 to 32"),
    ("10.1.2.3/255.0.0.0", client("10.1.2.3"), "bits set outside its mask"),
    ("10.1.2.3/255.255.255.255", client("10.1.2.3"), "write /32"),
    ("[2001:db8::]/255.255.0.0", client("2001:db8::1"), "must be 0 to 128"),
    ("[2001:db8::]/129", client("2001:db8::1"), "must be 0 to 128"),
    ("[10.0.0.1]", client("10.0.0.1"), "not an IPv6 address"),
])
def test_unusable_patterns_warn_and_never_match(tmp_path, pattern, c, text):
    t = tables(tmp_path, allow=f"svc: {pattern}\n")
    assert t.check("svc", c).allowed and t.check("svc", c).where is None
    assert len(t.warnings) == 1
    assert t.warnings[0].startswith(where(tmp_path, "hosts.allow", 1) + ": ")
    assert text in t.warnings[0] and "never matches" in t.warnings[0]


def test_client_list_separators_and_ipv6_colons(tmp_path):
    t = tables(tmp_path, allow="svc: 10.0.0.1,10.0.0.2 , 10.0.0.3\t[2001:db8::1],[2001:db8:1::]/48 : deny\n",
               deny="svc: 192.0.2.\n")
    for addr in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8:1:ffff::1"):
        d = t.check("svc", client(addr))
        assert not d.allowed and d.where == where(tmp_path, "hosts.allow", 1), addr
    assert t.check("svc", client("10.0.0.4")).allowed
    assert t.warnings == []


# ------------------------------------------------------------ EXCEPT

def test_except_in_client_list(tmp_path):
    t = tables(tmp_path, allow="svc: ALL EXCEPT 10.0.0.0/8\n")
    assert t.check("svc", client("192.0.2.1")).where is not None
    assert t.check("svc", client("10.1.2.3")).where is None


def test_except_nests_right_to_left(tmp_path):
    # ALL EXCEPT (10/8 EXCEPT 10.1/16): 10.1.x.x is back in.
    t = tables(tmp_path, deny="svc: ALL except 10.0.0.0/8 EXCEPT 10.1.0.0/16\n")
    assert not t.check("svc", client("192.0.2.1")).allowed
    assert t.check("svc", client("10.2.0.1")).allowed
    assert not t.check("svc", client("10.1.2.3")).allowed
    t = tables(tmp_path, deny="svc: ALL EXCEPT .example.com EXCEPT bad.example.com EXCEPT KNOWN\n")
    # KNOWN removes every named client from the innermost list again
    assert t.check("svc", client(name="bad.example.com")).allowed
    assert not t.check("svc", client()).allowed


def test_except_in_daemon_list(tmp_path):
    t = tables(tmp_path, deny="ALL EXCEPT imap: ALL\n")
    assert t.check("imap", client()).allowed
    assert not t.check("pop3", client()).allowed
    t = tables(tmp_path, deny="ALL EXCEPT pop* EXCEPT pop3s: ALL\n")
    assert not t.check("imap", client()).allowed
    assert t.check("pop3", client()).allowed
    assert not t.check("pop3s", client()).allowed


def test_except_with_nothing_around_it(tmp_path):
    t = tables(tmp_path, allow="svc: EXCEPT 10.0.0.1\nsvc: 10.0.0.1 EXCEPT\n")
    d = t.check("svc", client("10.0.0.1"))
    assert d.where == where(tmp_path, "hosts.allow", 2)
    assert [w.split(": ", 1)[0] for w in t.warnings] == [where(tmp_path, "hosts.allow", n) for n in (1, 2)]
    assert "matches nothing" in t.warnings[0] and "excepts nothing" in t.warnings[1]


# ------------------------------------------------------------ daemons

def test_daemon_patterns(tmp_path):
    t = tables(tmp_path, allow="IMAP: 10.0.0.1\npop*: 10.0.0.2\n.143: 10.0.0.3\nlocalhost.110: 10.0.0.4\n",
               deny="ALL: ALL\n")
    assert t.check("imap", client("10.0.0.1")).allowed
    assert not t.check("imaps", client("10.0.0.1")).allowed
    assert t.check("POP3", client("10.0.0.2")).allowed
    assert t.check("pop3s", client("10.0.0.2")).allowed
    assert t.check("localhost.143", client("10.0.0.3")).allowed
    assert not t.check("localhost.1430", client("10.0.0.3")).allowed
    assert t.check("localhost.110", client("10.0.0.4")).allowed
    assert not t.check("imap", client("10.0.0.2")).allowed


def test_daemon_at_server_address(tmp_path):
    t = tables(tmp_path, deny="imap@192.0.2.1, ALL@[2001:db8::1]: ALL\n")
    assert not t.check("imap", client(), server_addr="192.0.2.1").allowed
    assert t.check("imap", client(), server_addr="192.0.2.2").allowed
    assert t.check("imap", client()).allowed                   # no server address: never matches
    assert not t.check("pop3", client(), server_addr="2001:db8::1").allowed
    assert t.check("pop3", client(), server_addr="192.0.2.1").allowed
    assert t.warnings == []


def test_daemon_at_server_name_is_unknown(tmp_path):
    t = tables(tmp_path, deny="imap@mail.example.com: ALL\npop3@UNKNOWN: ALL\n")
    assert t.check("imap", client(), server_addr="192.0.2.1").allowed
    assert not t.check("pop3", client(), server_addr="192.0.2.1").allowed
    assert t.warnings[0] == (f"{where(tmp_path, 'hosts.deny', 1)}: 'imap@mail.example.com': ssl-gw does not "
                             "look its own address up, so the server's name is \"unknown\" to this pattern "
                             "(libwrap would look it up)")


# ------------------------------------------------------------ files and lines

def test_first_matching_line_decides_and_allow_wins(tmp_path):
    t = tables(tmp_path, allow="imap: 10.0.0.0/8\nimap: 10.1.0.0/16\n", deny="imap: 10.1.2.3\nALL: ALL\n")
    d = t.check("imap", client("10.1.2.3"))
    assert d.allowed and d.where == where(tmp_path, "hosts.allow", 1)
    assert d.reason == "hosts.allow:1: imap: 10.0.0.0/8"
    d = t.check("imap", client("192.0.2.1"))
    assert not d.allowed and d.where == where(tmp_path, "hosts.deny", 2)


def test_comments_blank_lines_and_continuations(tmp_path):
    t = tables(tmp_path, allow=(
        "# hosts.allow \\\n"            # 1: a comment that continues ...
        "imap: 172.16.0.1\n"            # 2: ... so this is comment too
        "\n"                            # 3
        "   # indented\n"              # 4: no comment (not in the first column), and no ':'
        "pop3,\\\n"                     # 5: the entry starts here
        " imap: 10.0.0.0/8 \\\n"        # 6
        "  192.0.2.0/24\n"              # 7
        "imap: 198.51.100.1 # no comment 203.0.113.1\n"  # 8: '#' is a word like the others
        "im\\\n"                        # 9: joined with nothing in between: "imap"
        "ap: 198.51.100.2\n"))          # 10
    d = t.check("imap", client("192.0.2.7"))
    assert d.allowed and d.where == where(tmp_path, "hosts.allow", 5)
    assert d.reason == "hosts.allow:5: pop3, imap: 10.0.0.0/8 192.0.2.0/24"
    assert t.check("pop3", client("10.3.3.3")).where == where(tmp_path, "hosts.allow", 5)
    assert t.check("imap", client("172.16.0.1")).where is None
    assert t.check("imap", client("198.51.100.1")).where == where(tmp_path, "hosts.allow", 8)
    assert t.check("imap", client("203.0.113.1")).where == where(tmp_path, "hosts.allow", 8)
    assert t.check("imap", client("198.51.100.2")).where == where(tmp_path, "hosts.allow", 9)
    assert [w.split(": ", 1) for w in t.warnings] == [
        [where(tmp_path, "hosts.allow", 4), "missing ':' separator (daemon_list : client_list [: option ...]): "
                                            "skipped"],
        [where(tmp_path, "hosts.allow", 8), "'#' after the start of a line is no comment: libwrap reads the words "
                                            "after it as part of the entry, and so does ssl-gw"]]


def test_crlf_lines(tmp_path):
    # A CR is a blank to the lists; a backslash before CR LF continues
    # nothing (libwrap looks for it just before the newline).
    t = tables(tmp_path, deny="imap: 10.0.0.1\r\npop3: \\\r\n 10.0.0.2\r\n")
    assert not t.check("imap", client("10.0.0.1")).allowed
    assert t.check("pop3", client("10.0.0.2")).allowed
    assert [w.split(": ", 1)[0] for w in t.warnings] == [where(tmp_path, "hosts.deny", 3)]


def test_malformed_lines_are_reported_and_skipped(tmp_path):
    t = tables(tmp_path, deny=(
        "imap ALL\n"              # 1: no ':'
        ": ALL\n"                 # 2: no daemons
        "imap:\n"                 # 3: no clients
        "imap: , \n"              # 4: no clients either
        "imap: 10.0.0.1\0\n"      # 5: a NUL
        "imap[: ALL\n"            # 6: an unclosed '[' hides the ':'
        "imap: 10.0.0.2\n"))      # 7: fine
    assert t.check("imap", client("10.0.0.1")).allowed
    d = t.check("imap", client("10.0.0.2"))
    assert not d.allowed and d.where == where(tmp_path, "hosts.deny", 7)
    assert [w.split(": ", 1)[0] for w in t.warnings] == [where(tmp_path, "hosts.deny", n) for n in range(1, 7)]
    assert "missing ':' separator" in t.warnings[0]
    assert "empty daemon list" in t.warnings[1]
    assert "empty client list" in t.warnings[2] and "empty client list" in t.warnings[3]
    assert "NUL" in t.warnings[4]
    assert "missing ':' separator" in t.warnings[5]


def test_a_line_libwrap_cannot_read_stops_the_file(tmp_path):
    # A last line without its newline: hosts.deny refuses every client that
    # gets that far, as libwrap does; the warning says so.
    t = tables(tmp_path, deny="imap: 10.0.0.1\nimap: 10.0.0.2")
    d = t.check("pop3", client("10.0.0.9"))
    assert not d.allowed and d.where == where(tmp_path, "hosts.deny", 2)
    assert d.reason == "hosts.deny line 2 is without a newline at its end: refused, as libwrap refuses"
    assert t.check("imap", client("10.0.0.1")).where == where(tmp_path, "hosts.deny", 1)
    assert [w.split(": ", 1)[0] for w in t.warnings] == [where(tmp_path, "hosts.deny", 2)]
    assert "libwrap stops reading the file there" in t.warnings[0]
    # In hosts.allow such a line, or one longer than 2046 characters, ends
    # the file: nothing after it is granted.
    long = "imap: " + "10.9.9.9 " * 225 + "10.0.0.3 1234567"
    assert len(long) == 2047
    t = tables(tmp_path, allow=f"imap: 10.0.0.1\n{long}\nimap: 10.0.0.4\n", deny="ALL: ALL\n")
    assert t.check("imap", client("10.0.0.1")).allowed
    assert not t.check("imap", client("10.0.0.3")).allowed
    assert not t.check("imap", client("10.0.0.4")).allowed
    assert "line 2 is longer than libwrap's 2046 characters" in t.warnings[0]
    t = tables(tmp_path, allow=f"{long[:-1]}\n", deny="ALL: ALL\n")      # 2046: fine
    assert t.check("imap", client("10.0.0.3")).allowed and t.warnings == []


def test_unreadable_files(tmp_path):
    (tmp_path / "hosts.allow").mkdir()
    t = tables(tmp_path, deny="imap: 10.0.0.1\n")
    assert t.check("pop3", client("10.0.0.1")).allowed        # hosts.allow gives nothing
    assert not t.check("imap", client("10.0.0.1")).allowed
    assert t.warnings == [f"{tmp_path / 'hosts.allow'}: cannot be read: not a regular file"]
    (tmp_path / "hosts.deny").unlink()
    (tmp_path / "hosts.deny").mkdir()
    t.reload()
    d = t.check("pop3", client("10.0.0.1"))                   # libwrap refuses when hosts.deny is unreadable
    assert not d.allowed and d.where == str(tmp_path / "hosts.deny")


def test_reload(tmp_path):
    t = tables(tmp_path, deny="imap: ALL\nbroken\n")
    assert not t.check("imap", client()).allowed and len(t.warnings) == 1
    (tmp_path / "hosts.deny").write_text("pop3: ALL\n")
    assert not t.check("imap", client()).allowed               # nothing is read until reload
    t.reload()
    assert t.check("imap", client()).allowed
    assert not t.check("pop3", client()).allowed
    assert t.warnings == []


# ------------------------------------------------------------ /file lists

def test_file_lists(tmp_path):
    lst = tmp_path / "trusted"
    lst.write_text("10.0.0.0/8\n.example.com  192.0.2.7\t[2001:db8::]/32 2001:db9::/32\n"
                   "# old: 172.16.0.1\n[2001:db8:1::1]")
    t = tables(tmp_path, allow=f"svc: {lst}\n", deny="svc: ALL\n")
    assert t.check("svc", client("10.9.8.7")).allowed
    assert t.check("svc", client("198.51.100.1", "mail.example.com")).allowed
    assert t.check("svc", client("192.0.2.7")).allowed
    assert t.check("svc", client("2001:db8::7")).allowed
    assert not t.check("svc", client("2001:db9::7")).allowed   # IPv6 nets need brackets, here too
    assert t.check("svc", client("172.16.0.1")).allowed        # '#' is no comment in a list
    assert t.check("svc", client("2001:db8:1::1")).allowed     # the last line needs no newline
    assert not t.check("svc", client("198.51.100.1")).allowed
    assert [w.split(": ", 1)[1] for w in t.warnings] == [
        "'2001:db9::/32': the net of net/mask must be a dotted quad (or an [IPv6] address in brackets): "
        "never matches",
        "'#' is no comment in a /file list: libwrap reads the words after it as patterns, and so does ssl-gw"]
    # read with the tables, not at check time (ssl-gw checks in its chroot)
    lst.unlink()
    assert t.check("svc", client("10.9.8.7")).allowed
    t.reload()
    assert not t.check("svc", client("10.9.8.7")).allowed
    assert t.warnings == [f"{where(tmp_path, 'hosts.allow', 1)}: '{lst}': no such file: matches nothing"]


def test_file_list_words_warn_with_their_own_line(tmp_path):
    lst = tmp_path / "list"
    lst.write_text("10.0.0.1\n@netgroup EXCEPT 10.0.0.2\n")
    t = tables(tmp_path, allow=f"svc: {lst} EXCEPT 10.0.0.1\n")
    assert t.check("svc", client("10.0.0.2")).where == where(tmp_path, "hosts.allow", 1)
    assert t.check("svc", client("10.0.0.1")).where is None
    assert [w.split(": ", 1)[0] for w in t.warnings] == [f"{lst}:2", f"{lst}:2"]


def test_file_lists_in_a_loop(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(f"10.0.0.1 {b}\n")
    b.write_text(f"{a} 10.0.0.2\n")
    t = tables(tmp_path, allow=f"svc: {a}\n")
    assert t.check("svc", client("10.0.0.2")).where is not None
    assert t.check("svc", client("10.0.0.3")).where is None
    assert len(t.warnings) == 1 and "in a loop" in t.warnings[0]


def test_file_list_that_is_not_a_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t = tables(tmp_path, allow=f"svc: {fifo} 10.0.0.1\n")    # must not block
    assert t.check("svc", client("10.0.0.1")).where is not None
    assert t.warnings == [f"{where(tmp_path, 'hosts.allow', 1)}: '{fifo}': cannot be read "
                          "(not a regular file): matches nothing"]


# ------------------------------------------------------------ options

def test_allow_and_deny_options(tmp_path):
    t = tables(tmp_path, allow="imap: .bad.example.com : DENY\nimap: ALL: allow\n",
               deny="pop3: 10.0.0.1: allow\npop3: ALL\n")
    d = t.check("imap", client(name="x.bad.example.com"))
    assert not d.allowed and d.where == where(tmp_path, "hosts.allow", 1)
    assert t.check("imap", client(name="x.good.example.com")).allowed
    d = t.check("pop3", client("10.0.0.1"))
    assert d.allowed and d.where == where(tmp_path, "hosts.deny", 1)
    assert not t.check("pop3", client("10.0.0.2")).allowed
    assert t.warnings == []


def test_spawn_and_twist_are_never_run(tmp_path):
    pwned = tmp_path / "pwned"
    t = tables(tmp_path,
               allow=f"imap: ALL: spawn (touch {pwned}) &\n"
                     f"pop3: 10.0.0.1: severity auth.info : spawn /bin/sh -c 'touch {pwned}'\n",
               deny=f"pop3: ALL: twist /bin/sh -c 'touch {pwned}'\n"
                    f"smtp: ALL: setenv X 1: umask 022: user nobody: nice: keepalive: linger 5: "
                    f"rfc931 3: banners /tmp: group nogroup\n")
    d = t.check("imap", client())
    assert d.allowed and d.where == where(tmp_path, "hosts.allow", 1)   # spawn: the entry decides as usual
    assert t.check("pop3", client("10.0.0.1")).allowed
    d = t.check("pop3", client())
    assert not d.allowed and d.where == where(tmp_path, "hosts.deny", 1)
    assert not t.check("smtp", client()).allowed
    allow, deny = where(tmp_path, "hosts.allow", 1), where(tmp_path, "hosts.deny", 1)
    assert f"{allow}: option 'spawn' is ignored (ssl-gw runs no commands)" in t.warnings
    assert f"{where(tmp_path, 'hosts.allow', 2)}: option 'severity' is ignored " \
           "(ssl-gw logs at its own levels)" in t.warnings
    assert any(w.startswith(f"{deny}: option 'twist' is ignored (ssl-gw runs no commands)") for w in t.warnings)
    smtp = [w for w in t.warnings if w.startswith(where(tmp_path, "hosts.deny", 2))]
    assert [w.split("'")[1] for w in smtp] == ["setenv", "umask", "user", "nice", "keepalive", "linger",
                                               "rfc931", "banners", "group"]
    assert not pwned.exists()


def test_twist_in_hosts_allow_refuses(tmp_path):
    pwned = tmp_path / "pwned"
    t = tables(tmp_path, allow=f"imap: ALL: twist /bin/echo hello; touch {pwned}\n")
    d = t.check("imap", client())
    assert not d.allowed and d.where == where(tmp_path, "hosts.allow", 1)
    assert "twist" in d.reason
    assert not pwned.exists()


@pytest.mark.parametrize("options, problem", [
    ("frobnicate", "unknown option 'frobnicate'"),
    ("allow: severity auth.info", "option 'allow' must be the last option"),
    ("deny = yes", "option 'deny' takes no value"),
    ("spawn", "option 'spawn' needs a value"),
    ("", "empty option"),
    ("severity auth.info : : allow", "empty option"),
])
def test_bad_options_refuse_the_client(tmp_path, options, problem):
    # libwrap refuses a client when the entry that matched it has a bad
    # option, even in hosts.allow; the entry still stops the search.
    t = tables(tmp_path, allow=f"imap: 10.0.0.1: {options}\n")
    d = t.check("imap", client("10.0.0.1"))
    assert not d.allowed and d.where == where(tmp_path, "hosts.allow", 1)
    assert problem in d.reason
    assert any(w.startswith(f"{where(tmp_path, 'hosts.allow', 1)}: {problem}") for w in t.warnings)
    assert t.check("imap", client("10.0.0.2")).allowed


def test_escaped_colon_in_an_option(tmp_path):
    t = tables(tmp_path, allow="imap: ALL: banners /var/lib/a\\:b : deny\n")
    assert not t.check("imap", client()).allowed
    assert t.warnings == [f"{where(tmp_path, 'hosts.allow', 1)}: option 'banners' is ignored "
                          "(ssl-gw sends nothing before the TLS handshake)"]


# ------------------------------------------------------------ any text at all

_PIECES = st.sampled_from([
    ":", ",", " ", "\t", "\n", "\\\n", "\r\n", "#", "EXCEPT", "except", "ALL", "LOCAL", "KNOWN", "UNKNOWN",
    "PARANOID", "[", "]", "/", "@", ".", "*", "?", "=", "\\:", "\0", "imap", "pop3", "10.", "10.0.0.0",
    "255.0.0.0", "/8", "/33", "[2001:db8::]/32", "::1", "allow", "deny", "spawn", "twist", "severity",
    ".example.com", "/nonexistent/list", "\u00e9", "\ufffd", "\udcff"])
_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=40).map("".join)
_CLIENTS = st.builds(Client, st.sampled_from(["10.0.0.1", "192.0.2.7", "2001:db8::1", "garbage"]),
                     st.sampled_from([None, "mail.example.com", "localhost"]), st.booleans())


@settings(max_examples=300, deadline=None)
@given(allow=_TEXT, deny=_TEXT, service=st.sampled_from(["imap", "pop3", "", "localhost.143"]), c=_CLIENTS)
def test_any_text_gives_warnings_never_exceptions(allow, deny, service, c):
    with tempfile.TemporaryDirectory() as d:
        for name, text in (("hosts.allow", allow), ("hosts.deny", deny)):
            with open(os.path.join(d, name), "wb") as f:
                f.write(text.encode("utf-8", "surrogatepass"))
        t = Tables(d)
        assert all(isinstance(w, str) and w.startswith(d) for w in t.warnings)
        decision = t.check(service, c, server_addr="192.0.2.1")
        assert isinstance(decision, Decision) and isinstance(decision.allowed, bool)
        assert decision.where is None or decision.where.startswith(d)


def test_the_sample_files_of_etc():
    """etc/hosts.allow and etc/hosts.deny read without a warning and mean what they say."""
    from support.programs import ROOT
    tables = Tables(os.path.join(ROOT, "etc"))
    assert tables.warnings == []
    assert tables.check("imap", Client("10.1.2.3", None)).allowed
    assert tables.check("pop3", Client("2001:db8::7", None)).allowed
    assert not tables.check("imap", Client("198.51.100.7", None)).allowed


@pytest.mark.parametrize("rules, needs", [
    ("imap: ALL\n", False), ("imap: 10.0.0.0/255.0.0.0 EXCEPT 10.1.\n", False), ("imap: 10.*.1.?\n", True),
    ("imap: LOCAL\n", True), ("imap: ALL EXCEPT .example.com\n", True), ("imap: UNKNOWN\n", True),
    ("imap: mail*.example.com\n", True), ("imap: host.example.com\n", True)])
def test_needs_names(tmp_path, rules, needs):
    """ssl-gw looks a client's name up only when some pattern needs it."""
    (tmp_path / "hosts.allow").write_text(rules)
    assert Tables(str(tmp_path)).needs_names is needs


def test_wildcard_star_against_a_star_in_the_text():
    from smapd.sslgw.tcpwrap import _wildcard_match
    assert _wildcard_match("*a", "*ba") and _wildcard_match("a*", "a*b") and not _wildcard_match("*a", "*b")
