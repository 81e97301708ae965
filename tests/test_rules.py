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
}
#: How each program is run so that it stops right after its table: on a
#: standard input that is not a socket, once the table has been accepted.
RUNS = {
    "smap": (["smap"], "standard input is not a connected socket"),
    "ssl-gw": (["ssl-gw", "-r", "143"], "standard input is not a connected socket"),
}


def test_every_rule_has_a_case():
    assert sorted(CASES) == sorted(r.name for r in RULES)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_check_and_the_program_agree(rule, table):
    text, line = CASES[rule.name]
    path = table(text)
    program = rule.programs[0]
    expected = [str(f"{path}:{line}" if line else path) + f": {rule.severity}: {program}: " + t
                for t in rule.violations(_settings(path, program))]
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
