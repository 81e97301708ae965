"""Typed settings from the table: defaults, first match, repeats, errors."""

import pytest

from smapd.table import keywords as config
from smapd.table.keywords import KEYWORDS, Listen, SMAP, SMAPD, SSLGW, load, load_or_die
from smapd.table.netperm import ConfigError, Table


def loaded(text, program=SMAP, names=("smap",)):
    # The keywords alone: the rules between them are test_rules.py's.
    return load(Table.parse(text.encode(), "t"), program, names, rules=False)


def messages(result):
    return [str(d) for d in result.diagnostics]


def test_defaults():
    s = loaded("").settings
    assert s["maxbytes"] == 10240000 and s["maxrecip"] == 100 and s["timeout"] == 300
    assert s["userid"] == "nobody" and s["directory"] == "/var/spool/smap"
    assert s["listen"] == (Listen(None, 25),)
    assert s["crlf"] == "strict" and s["auth-requires-tls"] is True and s["errors-max"] == 20
    assert s.where("maxbytes") == "default"
    d = loaded("smapd: directory /q\n", SMAPD, ("smapd",)).settings
    assert d["baddir"] == "/q/bad" and d["wakeup"] == 30 and d["sendmail"] == ("/usr/sbin/sendmail",)


def test_first_line_wins_and_later_duplicates_warn():
    r = loaded("*: maxbytes 5\nsmap: maxbytes 6\nsmap: maxbytes 7\n")
    assert r.settings["maxbytes"] == 5 and r.settings.where("maxbytes") == "t:1"
    assert messages(r) == [
        "t:2: warning: maxbytes is already set at line 1; the first line wins and this one is ignored",
        "t:3: warning: maxbytes is already set at line 1; the first line wins and this one is ignored"]


def test_repeated_keywords_in_file_order():
    r = loaded("smap: relay-domain b.example *.C.example\nsmap: rbl z1.example\n"
               "smap: relay-domain a.example\nsmap: rbl z2.example=127.0.0.[2..11]*3\n"
               "smap: nospam RFC821\nsmap: nospam maps-rbl\n")
    s = r.settings
    assert s["relay-domain"] == ("b.example", "*.c.example", "a.example")
    assert [(x.zone, x.filter, x.weight) for x in s["rbl"]] == [
        ("z1.example", None, 1), ("z2.example", "127.0.0.[2..11]", 3)]
    assert s["nospam"] == ("RFC821", "maps-rbl")
    assert s.where("relay-domain") == "t:1, t:3"


def test_only_my_names_and_star():
    r = loaded("smmap: maxbytes 1\nsmap: maxbytes 2\n*: maxrecip 3\nsmtpd: maxrecip 4\n", names=("smmap",))
    assert r.settings["maxbytes"] == 1 and r.settings["maxrecip"] == 3
    assert r.diagnostics == []


def test_listen_forms():
    s = loaded("smap: listen smtps\nsmap: listen 2525\nsmap: listen 127.0.0.1:25\nsmap: listen [::1]:465 smtps\n"
               "smap: listen *:smtp\n").settings
    assert s["listen"] == (Listen(None, 465, True), Listen(None, 2525), Listen("127.0.0.1", 25), Listen("::1", 465, True), Listen(None, 25))


def test_hosts_rules_compiled_with_flags():
    s = loaded("smap: permit-hosts 192.0.2.0/24 -auth\nsmap: deny-hosts *\n").settings
    rules = s["hosts"]
    assert [(h.flag, h.options, h.where) for h in rules] == [("permit", ("-auth",), "t:1"), ("deny", (), "t:2")]


@pytest.mark.parametrize("line, message", [
    ("smap: maxbytes", "t:1: error: maxbytes takes one argument (maxbytes N), found 0"),
    ("smap: maxbytes 1 2", "t:1: error: maxbytes takes one argument (maxbytes N), found 2"),
    ("smap: maxbytes ten", "t:1: error: maxbytes: 'ten' is not a whole number"),
    ("smap: maxbytes 0", "t:1: error: maxbytes: 0 is out of range (1 or more)"),
    ("smap: greet-delay 301", "t:1: error: greet-delay: 301 is out of range (0..300)"),
    ("smap: crlf loose", "t:1: error: crlf: 'loose' is not one of: strict, normalize"),
    ("smap: auth login cram-md5", "t:1: error: auth: 'cram-md5' is not one of: login, plain"),
    ("smap: directory spool", "t:1: error: directory: 'spool' is not an absolute path"),
    ("smap: listen 70000", "t:1: error: listen: port 70000 out of range (1..65535)"),
    ("smap: listen mail.example.com:25", "t:1: error: listen: 'mail.example.com' is not an IP address"
                                         " (listen on addresses, not names)"),
    ("smap: listen ::1:25", "t:1: error: listen: write an IPv6 address in brackets: [ADDRESS]:PORT, not '::1:25'"),
    ("smap: listen 25 tls", "t:1: error: listen: 'tls': the only listener option is 'smtps'"),
    ("smap: listen 1 2 3", "t:1: error: listen takes 1 to 2 arguments (listen [ADDRESS:]PORT [smtps]), found 3"),
    ("smap: permit-maxbytes 5", "t:1: error: maxbytes takes no permit-/deny- prefix"),
    ("smap: hosts *", "t:1: error: hosts: 'hosts' needs a permit- or deny- prefix (permit-hosts, deny-hosts)"),
    ("smap: permit-hosts 10.0.0.0/40", "t:1: error: permit-hosts: bad network '10.0.0.0/40'"
                                       " (expected addr/len or addr/mask)"),
    ("smap: relay-hosts 300.1.1.1", "t:1: error: relay-hosts: bad address '300.1.1.1'"),
    ("smap: rbl zen", "t:1: error: rbl: 'zen' is not ZONE[=FILTER][*WEIGHT]"
                      " (e.g. zen.example.org=127.0.0.[2..11]*2)"),
    ("smap: resolver ns1.example", "t:1: error: resolver: 'ns1.example' is not an IP address"
                                   " (a resolver is given by address)"),
    ("smap: auth-requires-tls maybe", "t:1: error: auth-requires-tls: 'maybe' is not yes or no"),
    ("smap: userid 'no body'", "t:1: error: userid: 'no body' is not a valid user name or number"),
    ("smap: banner \"a\\tb\"", "t:1: error: banner: control characters are not allowed here"),
])
def test_bad_arguments_are_errors_with_file_and_line(line, message):
    r = loaded(line + "\n")
    assert messages(r) == [message]
    with pytest.raises(ConfigError) as e:
        load_or_die(Table.parse((line + "\n").encode(), "t"), SMAP, ("smap",), rules=False)
    assert str(e.value) == message


def test_unknown_keywords():
    r = loaded("smap: maxbyte 5\nsmap: wakeup 5\nsmap: frobnicate\n*: ftp-option x\n")
    assert messages(r) == [
        "t:1: warning: unknown keyword 'maxbyte' for smap (did you mean 'maxbytes'?); the line is ignored",
        "t:2: warning: unknown keyword 'wakeup' for smap (wakeup is a keyword of smapd); the line is ignored",
        "t:3: warning: unknown keyword 'frobnicate' for smap; the line is ignored"]


def test_broken_lines_of_other_programs_do_not_stop_me():
    text = 'ftp-gw: banner "open\nsmap: maxbytes 5\nsmap userid 1\n'
    r = loaded(text)
    assert messages(r) == ["t:3: error: no ':' after the program list (expected 'program: keyword args…')"]


def test_compatibility_keyword_warns():
    r = loaded("smapd: executable /usr/local/etc/smapd\n", SMAPD, ("smapd",))
    assert messages(r) == ["t:1: warning: executable /usr/local/etc/smapd is accepted for compatibility only: "
                           "smapd forks its delivery children and runs no separate delivery program, "
                           "so the path is unused"]


def test_sslgw_reads_its_service_name():
    r = loaded("imap: verify 2\nssl-gw: connect 143\npop3: verify 3\n", SSLGW, ("ssl-gw", "imap"))
    assert r.settings["verify"] == 2 and r.settings["connect"] == ("127.0.0.1", 143)


def test_every_keyword_is_declared_once_with_doc():
    seen = set()
    for (program, name), kw in KEYWORDS.items():
        assert program in config.PROGRAMS
        assert (program, name) not in seen
        seen.add((program, name))
        assert kw.doc and not kw.doc.endswith("."), (program, name)  # the man page adds the full stop
        assert kw.name == kw.name.lower()
    # the keywords DESIGN.md section 2 names
    for name in ("userid groupid directory maxbytes maxrecip timeout hostname listen maxchildren minspare "
                 "maxspare maxperhost maxrequests pidfile hosts relay-domain relay-hosts auth md5file "
                 "auth-requires-tls ssl ssl-auth ssl-ca nospam rbl rbl-threshold resolver spam-database "
                 "crlf greet-delay errors-max banner").split():
        assert (SMAP, name) in KEYWORDS, name
    for name in "userid groupid directory sendmail baddir wakeup maxchildren executable retry-max sendmail-timeout".split():
        assert (SMAPD, name) in KEYWORDS, name
    for name in ("pem connect accept verify ca-file ca-dir userid groupid directory timeout ciphers tls-min "
                 "hosts tcpwrappers tcpwrappers-dir").split():
        assert (SSLGW, name) in KEYWORDS, name
