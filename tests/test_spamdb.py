"""The spam database: every kind of entry, the file format and its
warnings, the bounded-time glob matcher, re-reading a changed file, and
files and addresses made of random text."""

import fnmatch
import os
import random
import string
import time

import pytest
from hypothesis import given, settings, strategies as st

from smapd.smap.spamdb import MAX_FILE_BYTES, Glob, SpamDatabase


def db_of(tmp_path, text, name="spam-db"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return SpamDatabase.load(str(p)), str(p)


# ------------------------------------------------------------ client entries

@pytest.mark.parametrize("entry, addr, expected", [
    ("192.0.2.1", "192.0.2.1", True),
    ("192.0.2.1", "192.0.2.2", False),
    ("2001:db8::25", "2001:db8::25", True),
    ("2001:DB8::25", "2001:db8:0:0::25", True),
    ("2001:db8::25", "2001:db8::26", False),
    ("192.0.2.0/24", "192.0.2.200", True),
    ("192.0.2.0/24", "192.0.3.1", False),
    ("192.0.2.77/24", "192.0.2.1", True),                # host bits ignored
    ("2001:db8::/32", "2001:db8:ffff::1", True),
    ("2001:db8::/32", "2001:db9::1", False),
    ("192.0.2.0/255.255.255.0", "192.0.2.9", True),
    ("192.0.2.0/255.255.255.0", "192.0.1.9", False),
    ("192.0.2.0:255.255.255.0", "192.0.2.9", True),      # FWTK spelling
    ("10.0.0.1/255.0.0.255", "10.77.88.1", True),        # a non-contiguous mask, as FWTK allows
    ("10.0.0.1/255.0.0.255", "10.77.88.2", False),
    ("192.0.2.*", "192.0.2.44", True),
    ("192.0.2.*", "192.0.20.44", False),
    ("10.*.*.*", "10.1.2.3", True),
    ("10.*", "10.200.1.1", True),                        # '*' runs over dots
    ("10.*", "110.1.1.1", False),
    ("192.0.2.1?", "192.0.2.15", True),
    ("192.0.2.1?", "192.0.2.1", False),
    ("192.0.2.1?", "192.0.2.150", False),
    ("192.0.2.*", "2001:db8::1", False),                 # IPv4 globs never match IPv6
    ("192.0.2.0/24", "2001:db8::1", False),
    ("::ffff:192.0.2.0/120", "192.0.2.3", True),         # a mapped prefix is an IPv4 network
    ("::ffff:192.0.2.3", "192.0.2.3", True),
])
def test_client_entries(entry, addr, expected):
    db = SpamDatabase.parse(f"# the list\n{entry}\n", "db")
    assert db.warnings == []
    assert db.client_listed(addr) == (f"db:2: {entry}" if expected else None)


@pytest.mark.parametrize("entry", ["192.0.2.1", "192.0.2.0/24", "192.0.2.*", "192.0.2.0/255.255.255.0"])
def test_ipv4_mapped_client_is_ipv4(entry):
    db = SpamDatabase.parse(entry + "\n", "db")
    for addr in ("::ffff:192.0.2.1", "::FFFF:192.0.2.1", "::ffff:c000:201"):
        assert db.client_listed(addr) == f"db:1: {entry}"
    assert db.client_listed("::ffff:192.0.3.1") is None
    import ipaddress
    assert db.client_listed(ipaddress.ip_address("::ffff:192.0.2.1")) == f"db:1: {entry}"


def test_not_an_address_matches_nothing():
    db = SpamDatabase.parse("10.*\n0.0.0.0/0\n::/0\n", "db")
    for addr in ("", "unknown", "mail.example.com", "10.1.2", "[10.1.2.3]", "10.1.2.3\n", "::g"):
        assert db.client_listed(addr) is None
    assert db.client_listed("fe80::1%eth0") == "db:3: ::/0"


# ------------------------------------------------------------ sender entries

SENDERS = """\
user@example.com
*@spam.example
postmaster@*
*-bounce@*.lists.example
x?z@example.org
example.net
.example.edu
*.example.info
spam*.example
"""


@pytest.mark.parametrize("sender, line", [
    ("user@example.com", 1),
    ("USER@Example.COM", 1),            # case-insensitive, local part included
    ("user@example.com.", 1),           # a trailing dot on the domain
    ("<user@example.com>", 1),          # one pair of brackets tolerated
    ("other@example.com", None),
    ("user@mail.example.com", None),
    ("anyone@spam.example", 2),
    ("Anyone@SPAM.example.", 2),
    ("a@b@spam.example", 2),            # the domain is after the last '@'
    ("anyone@sub.spam.example", None),  # *@domain is that domain only
    ("postmaster@anywhere.test", 3),
    ("POSTMASTER@x", 3),
    ("postmasters@x", None),
    ("news-bounce@a.lists.example", 4),
    ("news-bounce@lists.example", None),
    ("xyz@example.org", 5),
    ("xz@example.org", None),
    ("x??z@example.org", None),
    ("someone@example.net", 6),
    ("someone@EXAMPLE.NET.", 6),
    ("someone@mail.example.net", None),  # a domain is exact
    ("someone@example.edu", None),       # .domain: subdomains only
    ("someone@mail.example.edu", 7),
    ("someone@a.b.example.edu", 7),
    ("someone@badexample.edu", None),
    ("someone@example.info", None),
    ("someone@mail.example.info", 8),
    ("someone@spamhaus.example", 9),
    ("someone@spam.example.org", None),
    ("postmaster", None),               # no domain at all
    ("", None),                         # the null sender is not listed here
])
def test_sender_entries(sender, line):
    db = SpamDatabase.parse(SENDERS, "db")
    assert db.warnings == []
    expected = None if line is None else f"db:{line}: {SENDERS.splitlines()[line - 1]}"
    assert db.sender_listed(sender) == expected


def test_null_sender():
    db = SpamDatabase.parse("# bounces from this host are all spam\n<>   # yes, all of them\n", "db")
    assert db.warnings == []
    assert db.sender_listed("") == "db:2: <>"
    assert db.sender_listed("<>") == "db:2: <>"
    assert db.sender_listed("mailer-daemon@example.com") is None
    # Without '<>', no entry matches the null sender, not even a glob.
    db = SpamDatabase.parse("*@*\nexample.com\n.com\n", "db")
    assert db.sender_listed("") is None
    assert db.sender_listed("a@example.com") == "db:1: *@*"


def test_sender_entries_do_not_match_clients_and_back():
    db = SpamDatabase.parse("192.0.2.1\nexample.com\nuser@example.com\n", "db")
    assert db.sender_listed("user@192.0.2.1") is None
    assert db.client_listed("192.0.2.1") == "db:1: 192.0.2.1"
    assert db.sender_listed("user@[192.0.2.1]") is None
    db = SpamDatabase.parse("*@[192.0.2.1]\n", "db")
    assert db.sender_listed("User@[192.0.2.1]") == "db:1: *@[192.0.2.1]"


def test_the_earliest_matching_line_is_reported():
    text = "*@*.example.com\n.example.com\nmail.example.com\n*@mail.example.com\nu@mail.example.com\n"
    db = SpamDatabase.parse(text, "db")
    assert db.sender_listed("u@mail.example.com") == "db:1: *@*.example.com"
    db = SpamDatabase.parse("\n".join(reversed(text.splitlines())), "db")
    assert db.sender_listed("u@mail.example.com") == "db:1: u@mail.example.com"
    assert db.sender_listed("v@mail.example.com") == "db:2: *@mail.example.com"
    db = SpamDatabase.parse("10.*\n10.0.0.0/8\n10.1.2.3\n", "db")
    assert db.client_listed("10.1.2.3") == "db:1: 10.*"
    db = SpamDatabase.parse("10.1.2.3\n10.0.0.0/8\n10.*\n", "db")
    assert db.client_listed("10.1.2.3") == "db:1: 10.1.2.3"
    assert db.client_listed("10.9.9.9") == "db:2: 10.0.0.0/8"
    # A word listed twice counts at its first line.
    db = SpamDatabase.parse("a@b.example\n192.0.2.1\na@b.example\n192.0.2.1\n", "db")
    assert db.sender_listed("a@b.example") == "db:1: a@b.example"
    assert db.client_listed("192.0.2.1") == "db:2: 192.0.2.1"


# ------------------------------------------------------------ the file format

def test_comments_blanks_and_line_ends(tmp_path):
    text = ("# a comment\n"
            "   # an indented comment\n"
            "\n"
            " \t \n"
            "192.0.2.1# not a comment: part of the word\n"
            "  spam.example\t# a comment after a tab\n"
            "a#b@example.com   # '#' inside a word is part of it\n"
            "198.51.100.7\r\n"
            "last.example")                       # no newline at the end
    db, path = db_of(tmp_path, text)
    [warning] = db.warnings
    assert warning.startswith(f"{path}:5: more than one word ('192.0.2.1#', then 'not')")
    assert db.sender_listed("x@spam.example") == f"{path}:6: spam.example"
    assert db.sender_listed("a#b@example.com") == f"{path}:7: a#b@example.com"
    assert db.client_listed("198.51.100.7") == f"{path}:8: 198.51.100.7"
    assert db.sender_listed("x@last.example") == f"{path}:9: last.example"
    assert len(db) == 4


BAD_LINES = [
    ("192.0.2.300", "bad address"),
    ("192.0.2.0/33", "bad network"),
    ("192.0.2.0/255.255.255.256", "bad address or mask"),
    ("1.2.3", "bad address"),
    ("300.*", "bad IPv4 glob"),
    ("1.2.3.4.*", "four parts"),
    ("2001:db8::*", "prefix"),
    ("[192.0.2.1]", "not an address, a network, a sender address or a domain"),
    ("[2001:db8::1]", "without [ ]"),
    ("two words", "more than one word"),
    ("@example.com", "write *@example.com"),
    ("user@", "write user@*"),
    ("*", "nearly every"),
    ("*.*", "nearly every"),
    ("?*", "nearly every"),
    (".*", "nearly every"),
    ("exa mple.com # two words", "more than one word"),
    ("ex!ample.com", "not an address"),
    ("a..b.example", "not an address"),
    ("münchen.example", "not an address"),
    ("foo:bar", "bad host pattern"),
    ("12345", "never all digits"),
    ("mail.123", "never all digits"),
    ("exam\x0bple.com", "control character"),
    ("exam\x00ple.com", "control character"),
    ("192.0.2.1\r\r", "control character"),
]


@pytest.mark.parametrize("bad, message", BAD_LINES)
def test_bad_lines_are_warnings_and_the_rest_still_works(tmp_path, bad, message):
    text = f"# spam\n192.0.2.1\n{bad}\nuser@example.com\n"
    db, path = db_of(tmp_path, text)
    assert len(db.warnings) == 1, db.warnings
    w = db.warnings[0]
    assert w.startswith(f"{path}:3: ") and message in w and w.endswith("; line ignored"), w
    assert db.client_listed("192.0.2.1") == f"{path}:2: 192.0.2.1"
    assert db.sender_listed("user@example.com") == f"{path}:4: user@example.com"
    assert len(db) == 2


def test_all_bad_lines_at_once_give_one_warning_each(tmp_path):
    data = "".join(f"{bad}\n" for bad, _ in BAD_LINES).encode() + b"\xff\xfe.example\nok.example\n"
    db, path = db_of(tmp_path, data)
    assert [w.split(": ", 1)[0] for w in db.warnings] == [f"{path}:{i}" for i in range(1, len(BAD_LINES) + 2)]
    assert "not valid UTF-8" in db.warnings[-1]
    assert db.sender_listed("a@ok.example") == f"{path}:{len(BAD_LINES) + 2}: ok.example"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        SpamDatabase.load(str(tmp_path / "missing"))
    with pytest.raises(OSError, match="not a regular file"):
        SpamDatabase.load(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(OSError, match="not a regular file"):
        SpamDatabase.load(str(fifo))               # and it does not hang
    assert time.monotonic() - t0 < 5
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(OSError, match="larger than"):
        SpamDatabase.load(str(big))


def test_stamp_and_changed(tmp_path):
    db, path = db_of(tmp_path, "192.0.2.1\n")
    st = os.stat(path)
    assert db.stamp == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    assert not db.changed()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert db.changed()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not db.changed()
    os.unlink(path)
    assert db.changed()                            # a missing file counts as changed
    assert SpamDatabase.parse("x.example\n").changed()


# ------------------------------------------------------------ globs

@given(st.text(alphabet="ab?*@.", max_size=12), st.text(alphabet="ab@.*?", max_size=16))
@settings(max_examples=2000, deadline=None)
def test_glob_agrees_with_fnmatch(pattern, text):
    assert Glob(pattern).matches(text) == fnmatch.fnmatchcase(text, pattern)


@pytest.mark.parametrize("pattern, text, expected", [
    ("*a", "*ba", True),        # a '*' in the text is an ordinary character
    ("a*", "a", True),
    ("*", "", True),
    ("", "", True),
    ("", "a", False),
    ("a*b*c", "abc", True),
    ("a*b*c", "acb", False),
    ("*ab*ab*", "abab", True),
    ("*ab*ab*", "aba", False),
    ("a?c", "a\nc", True),
    ("*x*", "a" * 10000, False),
])
def test_glob_cases(pattern, text, expected):
    assert Glob(pattern).matches(text) is expected


def test_pathological_senders_take_bounded_time():
    """Many `*` patterns a backtracking matcher would take ages over,
    against long addresses chosen to almost match them."""
    rng = random.Random(1)
    entries = ["*" + "a*" * k + "b@*" for k in range(1, 40)]
    entries += ["*" + "?*" * k + "@*.b" for k in range(1, 40)]
    entries += ["".join(rng.choice("a*?") for _ in range(40)) + "@b*" for _ in range(2000)]
    db = SpamDatabase.parse("\n".join(entries) + "\n", "db")
    assert db.warnings == []
    senders = ["a" * 480 + "@" + "a" * 30, "a" * 500 + "@", "@" * 500, "a@" * 250,
               "".join(rng.choice("a@.b") for _ in range(510))]
    senders += ["".join(rng.choice(string.ascii_lowercase) for _ in range(500)) + "@x" for _ in range(20)]
    t0 = time.monotonic()
    for s in senders:
        db.sender_listed(s)
    assert time.monotonic() - t0 < 10              # a few hundred ms on a slow machine


def test_thousands_of_entries_are_fast():
    rng = random.Random(2)
    lines = [f"10.{i >> 8 & 255}.{i & 255}.{rng.randrange(256)}" for i in range(5000)]
    lines += [f"10.{i}.0.0/16" for i in range(100, 200)]
    lines += [f"2001:db8:{i:x}::/48" for i in range(3000)]
    lines += [f"user{i}@example{i % 50}.com" for i in range(5000)]
    lines += [f"spam{i}.example" for i in range(5000)]
    lines += [f".sub{i}.example" for i in range(5000)]
    lines += [f"*@junk{i}.example" for i in range(5000)]
    lines += [f"192.0.{i}.*" for i in range(200)]
    lines += [f"*-bulk{i}-*@*" for i in range(200)]
    db = SpamDatabase.parse("\n".join(lines) + "\n", "db")
    assert db.warnings == [] and len(db) == len(lines)
    assert db.client_listed("10.150.3.4") == f"db:{lines.index('10.150.0.0/16') + 1}: 10.150.0.0/16"
    assert db.sender_listed("x@a.b.sub4999.example") == f"db:{lines.index('.sub4999.example') + 1}: .sub4999.example"
    assert db.sender_listed("x-bulk199-y@z") == f"db:{len(lines)}: *-bulk199-*@*"
    assert db.client_listed("192.0.199.9") == f"db:{len(lines) - 200}: 192.0.199.*"
    t0 = time.monotonic()
    for i in range(1000):
        db.client_listed(f"203.0.113.{i % 256}")
        db.client_listed(f"2001:db9::{i:x}")
        db.sender_listed(f"nobody{i}@mail.clean{i}.example")
    assert time.monotonic() - t0 < 10              # well under a second in practice


# ------------------------------------------------------------ random input

@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_raise(data):
    db = SpamDatabase.parse(data, "db")
    assert all(w.startswith("db:") for w in db.warnings)
    db.client_listed("192.0.2.1")
    db.sender_listed("a@b.example")


LINE_PIECES = st.sampled_from(["192.0.2.", "10.", "*", "?", "/", ":", "::", "@", ".", "#", " ", "\t", "<>",
                               "example", "com", "ffff", "255", "0", "24", "-", "_", "[", "]", "\r", "\x00",
                               "é", "user", "\n"])


@given(st.lists(LINE_PIECES, max_size=60).map("".join), st.text(max_size=60), st.text(max_size=60))
@settings(max_examples=500, deadline=None)
def test_random_files_and_addresses_never_raise(text, addr, sender):
    db = SpamDatabase.parse(text, "db")
    for w in db.warnings:
        assert w.startswith("db:") and w.endswith("; line ignored")
    for a in (addr, sender, "192.0.2.1", "::ffff:10.0.0.1", "2001:db8::1"):
        r = db.client_listed(a)
        assert r is None or r.startswith("db:")
    for s in (sender, addr, "", "<>", "a@b.example.", "@", "a@"):
        r = db.sender_listed(s)
        assert r is None or r.startswith("db:")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_text_files_load_from_disk(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("h") / "db"
    p.write_bytes(text.encode("utf-8"))
    db = SpamDatabase.load(str(p))
    assert not db.changed()
