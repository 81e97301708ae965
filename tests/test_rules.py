"""Every rule between keywords (lib/smapd/table/rules.py) gives the same
verdict in `smapctl check` and in the program that reads the table: an
error is check's exit 1 and the program's exit 2, with the same line;
a warning is check's to tell, and the program goes on to use the table.
"""

import subprocess

import pytest

from support.programs import command, run
from smapd.table.rules import RULES

RELAY = "smap: relay-domain example.org\n"
#: rule -> (table, the line the finding is on)
CASES = {
    "ssl-auth-needs-ssl": (RELAY + "smap: ssl-auth optional\n", 2),
    "ssl-auth-without-ca": (RELAY + "smap: ssl /nonexistent/key.pem\nsmap: ssl-auth optional\n", 3),
    "smtps-needs-ssl": (RELAY + "smap: listen 127.0.0.1:2525 smtps\n", 2),
    "auth-needs-md5file": (RELAY + "smap: auth login\nsmap: auth-requires-tls no\n", 2),
    "md5file-without-auth": (RELAY + "smap: md5file /nonexistent/pw\n", 2),
    "auth-never-offered": (RELAY + "smap: auth login\nsmap: md5file /nonexistent/pw\n", 2),
    "maps-rbl-without-zone": (RELAY + "smap: nospam maps-rbl\n", 2),
    "zone-without-maps-rbl": (RELAY + "smap: rbl zen.example.org\n", 2),
    "open-relay-hosts": (RELAY + "smap: relay-hosts *\n", 2),
    "open-relay-domain": ("smap: relay-domain *\n", 1),
    "no-relay-control": ("smap: maxbytes 5000\n", 0),
    "minspare-above-maxspare": (RELAY + "smap: minspare 30\nsmap: maxspare 10\n", 2),
    "maxspare-above-maxchildren": (RELAY + "smap: maxspare 50\nsmap: maxchildren 10\n", 2),
    "verify-needs-cas": ("ssl-gw: verify 2\n", 1),
    "maxperhost-above-maxpernet": (RELAY + "smap: maxperhost 100\n", 2),
    "mta-and-sendmail": ("smapd: sendmail /usr/sbin/sendmail\nsmapd: mta smtp:127.0.0.1:10025\n", 2),
    "recipient-verify-needs-mta": ("smapd: recipient-verify yes\n", 1),
}
#: How each program is run so that it stops right after its table: on a
#: standard input that is not a socket, once the table has been accepted.
RUNS = {
    "smap": (["smap"], "standard input is not a connected socket"),
    "ssl-gw": (["ssl-gw", "-r", "143"], "standard input is not a connected socket"),
    "smapd": (["smapd"], ""),   # its rules are errors only: it never gets past them
}


def test_every_rule_has_a_case():
    assert sorted(CASES) == sorted(r.name for r in RULES)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_check_and_the_program_agree(rule, table):
    text, line = CASES[rule.name]
    path = table(text)
    program = rule.programs[0]
    expected = [str(f"{path}:{line}" if line else path) + f": {rule.severity}: {program}: " + _text(v)
                for v in rule.violations(_settings(path, program))]
    assert len(expected) == 1
    r = run("smapctl", "check", "-n", "--config", path, timeout=60)
    found = r.stdout.splitlines()
    assert expected[0] in found, r.stdout
    # The case breaks this rule and no other.
    assert len([f for f in found if ": error: " in f or ": warning: " in f]) == 1, r.stdout
    argv, accepted = RUNS[program]
    p = subprocess.run([command(argv[0]), *argv[1:], "--config", path], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    if rule.severity == "error":
        assert r.returncode == 1
        assert p.returncode == 2, p.stderr
        assert f"{program}: {expected[0]}" in p.stderr.splitlines()
    else:
        assert r.returncode == 0
        assert p.returncode == 1 and accepted in p.stderr, p.stderr
        assert expected[0] not in p.stderr


def _text(violation):
    return violation[0] if isinstance(violation, tuple) else violation


@pytest.mark.parametrize("lines, line, what", [
    (["smap: relay-hosts 0.0.0.0/1 128.0.0.0/1"], 1, "every IPv4 client"),
    (["smap: relay-hosts 192.0.2.0/24", "smap: relay-hosts 0.0.0.0/1", "smap: maxbytes 5000",
      "smap: relay-hosts 128.0.0.0/1"], 4, "every IPv4 client"),
    (["smap: relay-hosts ::/1 8000::/1"], 1, "every IPv6 client"),
    (["smap: relay-domain example.org", "smap: relay-hosts *.*"], 2, "matches every client"),
    (["smap: relay-domain example.org", "smap: relay-hosts *.*.*.*"], 2, "matches every client"),
    (["smap: relay-domain example.org", "smap: relay-hosts unknown"], 2, "matches every client"),
    (["smap: relay-hosts 10.0.0.0/8", "smap: relay-domain example.org *.*"], 2, "every domain"),
    (["smap: relay-hosts 10.0.0.0/8", "smap: relay-domain *.example.org", "smap: relay-domain *"], 3,
     "every domain"),
])
def test_open_relay_patterns_are_errors_at_the_line_that_completes_them(table, lines, line, what):
    path = table("\n".join(lines) + "\n")
    r = run("smapctl", "check", "-n", "--config", path, timeout=60)
    errors = [f for f in r.stdout.splitlines() if ": error: " in f]
    assert r.returncode == 1 and len(errors) == 1, r.stdout
    assert errors[0].startswith(f"{path}:{line}: error: smap: ") and what in errors[0] and "open relay" in errors[0]
    p = subprocess.run([command("smap"), "--config", path], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and errors[0] in p.stderr, p.stderr


@pytest.mark.parametrize("lines", [
    ["smap: relay-hosts 0.0.0.0/2 128.0.0.0/1"],           # 64.0.0.0/2 missing
    ["smap: relay-hosts 0.0.0.0/1", "smap: relay-hosts ::/1"],  # half of each family
    ["smap: relay-hosts 127.0.0.0/8 ::1 *.example.org 192.168.*"],
    ["smap: relay-domain *.example.org example.* ex*.net"],
])
def test_narrow_patterns_are_not_open_relays(table, lines):
    r = run("smapctl", "check", "-n", "--config", table("\n".join(lines) + "\n"), timeout=60)
    assert r.returncode == 0 and "open relay" not in r.stdout, r.stdout


def test_smap_daemon_refuses_a_table_without_relay_control(table):
    path = table("smap: listen 127.0.0.1:1\nsmap: maxbytes 5000\n")
    p = subprocess.run([command("smap"), "-daemon", "-f", "--config", path], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"{path}: error: smap: no relay-domain, relay-hosts or recipients line" in p.stderr
    assert "open relay" in p.stderr


def _settings(path, program):
    from smapd.table import keywords
    from smapd.table.netperm import Table
    names = (program, "ssl-gw") if program == "ssl-gw" else (program,)
    return keywords.load(Table.read(path), program, names, rules=False).settings


def test_sslgw_letters_count_before_the_rules(table):
    """-A gives verify 2 what it needs: the rule sees the letters."""
    path = table("ssl-gw: verify 2\n")
    p = subprocess.run([command("ssl-gw"), "-r", "143", "-A", "/nonexistent/ca.pem", "--config", path],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "standard input is not a connected socket" in p.stderr, p.stderr
    p = subprocess.run([command("ssl-gw"), "-r", "143", "-v", "2", "--config", table("ssl-gw: timeout 60\n")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "ssl-gw: command line: error: ssl-gw: verify 2 needs ca-file or ca-dir" \
        in p.stderr.splitlines(), p.stderr
