"""smapctl check, run as the operator runs it, on the reference table and others."""

import hashlib
import os
import re
import subprocess
import tempfile

import pytest

from support.programs import REFERENCE_TABLE, run

REFERENCE_WARNINGS = [
    ":6: note: 'smmap' is smap installed under another name: run as smmap, it reads the 'smmap:' lines",
    ":6: note: 'smmapd' is smapd installed under another name: run as smmapd, it reads the 'smmapd:' lines",
    ":13: warning: executable /usr/local/etc/smmapd is accepted for compatibility only: smapd forks its "
    "delivery children and runs no separate delivery program, so the path is unused",
    ":22: warning: smmap: ssl-auth optional without ssl-ca: client certificates are verified against the "
    "system's CA store and logged, but exempt no one (any public CA signs certificates for anyone): to let "
    "certificate holders relay, name your own CA with ssl-ca",
    ":32: warning: smmap: nospam maps-rbl but no 'rbl' zone is configured, so no DNSBL is queried (the MAPS "
    "RBL the original patch used is long gone): add 'rbl ZONE' lines",
    ":44: warning: 'smtpd' names no program of the suite (nearest: smapd); 'wakeup' is a keyword of smapd "
    "(here: smmapd); this line is ignored: did you mean 'smmapd: wakeup 15'? (smmapd uses the default, "
    "wakeup 30)",
    ":47: warning: 'smtpd' names no program of the suite (nearest: smapd); 'maxrecip' is a keyword of smap "
    "(here: smmap); this line is ignored: did you mean 'smmap: maxrecip 100'? (the default, 100, is the same)",
    ":48: warning: 'smtpd' names no program of the suite (nearest: smapd); 'maxbytes' is a keyword of smap "
    "(here: smmap); this line is ignored: did you mean 'smmap: maxbytes 4000000'? (smmap uses the default, "
    "maxbytes 10240000)",
]


def _no_passwd_entry(uid):
    import pwd
    try:
        pwd.getpwuid(uid)
        return False
    except KeyError:
        return True


# The reference's "userid 99" is Red Hat's nobody; where uid 99 has no
# passwd entry (Debian), smapd's MTA may refuse to run as it.
#: What the full check (not -n) adds, in the order check prints it.
MACHINE_WARNINGS = [":6: warning: smmapd: userid 99: uid 99 has no passwd entry: the MTA's sendmail, which smapd "
                    "runs as this user, may refuse it (Postfix's postdrop says 'unknown uid')"] \
    if _no_passwd_entry(99) else []

NO_RELAY_CONTROL = "no relay-domain, relay-hosts or recipients line"


def check(*args, env=None, keep_relay_error=False):
    """smapctl check's exit status and lines.  Small tables of these tests
    have no relay lines: the error that says so (its own test below) is
    taken out, with the summary's count and the exit status it caused,
    unless asked for."""
    r = run("smapctl", "check", *args, env=env)
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    code = r.returncode
    if not keep_relay_error:
        dropped = [line for line in lines if NO_RELAY_CONTROL in line]
        lines = [line for line in lines if NO_RELAY_CONTROL not in line]
        if dropped and lines:
            m = re.match(r"^(.*): (\d+) errors?, (\d+) warnings?$", lines[-1])
            if m:
                e = int(m.group(2)) - len(dropped)
                w = int(m.group(3))
                lines[-1] = f"{m.group(1)}: {e} error{'' if e == 1 else 's'}, {w} warning{'' if w == 1 else 's'}"
                if e == 0 and code == 1:
                    code = 0
    return code, lines


def test_no_relay_control_is_an_error(table):
    path = table("smap: maxrecip 10\n")
    code, lines = check("-n", "--config", path, keep_relay_error=True)
    assert code == 1
    assert lines == [f"{path}: error: smap: no relay-domain, relay-hosts or recipients line: smap would accept "
                     "mail for every domain from anyone (an open relay), and the MTA cannot refuse what smapd "
                     "hands it as a local submission",
                     f"{path}: 1 error, 0 warnings"]
    for text in ("smap: relay-domain example.org\n", "smap: relay-hosts 192.0.2.0/24\n",
                 "ssl-gw: timeout 60\n", "smapd: wakeup 10\n"):
        # Relay control is asked of smap only, and only of a table that
        # configures it.
        code, lines = check("-n", "--config", table(text), keep_relay_error=True)
        assert code == 0 and lines[-1].endswith(": 0 errors, 0 warnings"), (text, lines)
    code, lines = check("-n", "--config", table("ssl-gw: timeout 60\n"), "smap", keep_relay_error=True)
    assert code == 1 and NO_RELAY_CONTROL in lines[0]


def test_reference_table_syntax_only():
    code, lines = check("-n", "--config", REFERENCE_TABLE)
    assert code == 0
    assert lines == [REFERENCE_TABLE + w for w in REFERENCE_WARNINGS] + [
        f"{REFERENCE_TABLE}: 0 errors, 6 warnings"]


def test_reference_table_on_a_machine_without_its_files():
    # The reference names files of its own host; here none of them exists.
    for path in ("/var/spool/smmap", "/var/ssl/certs/mail.pem", "/etc/smtppass", "/etc/spamdb"):
        assert not os.path.exists(path), f"{path} exists on this machine; the test expects it not to"
    code, lines = check("--config", REFERENCE_TABLE)
    assert code == 1
    for w in MACHINE_WARNINGS + REFERENCE_WARNINGS:
        assert REFERENCE_TABLE + w in lines
    errors = [line[len(REFERENCE_TABLE):] for line in lines if ": error: " in line]
    assert errors == [
        ":10: error: smmap: directory /var/spool/smmap: cannot use it: No such file or directory",
        ":10: error: smmapd: directory /var/spool/smmap: cannot use it: No such file or directory",
        ":19: error: smmap: ssl /var/ssl/certs/mail.pem: cannot use it: No such file or directory",
        ":26: error: smmap: md5file /etc/smtppass: cannot use it: No such file or directory",
        ":35: error: smmap: spam-database /etc/spamdb: cannot use it: No such file or directory",
        ":38: error: smmapd: baddir /var/spool/smmap/bad: cannot use it: No such file or directory",
    ]
    assert lines[-1] == f"{REFERENCE_TABLE}: 6 errors, {6 + len(MACHINE_WARNINGS)} warnings"


def make_pem(path, mode=0o600):
    key, crt = str(path) + ".key", str(path) + ".crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-subj", "/CN=mail.example.test", "-days", "2"], check=True, capture_output=True)
    with open(path, "wb") as f:
        f.write(open(key, "rb").read() + open(crt, "rb").read())
    os.chmod(path, mode)
    os.unlink(key)
    os.unlink(crt)
    return str(path)


def relocated_reference(tmp_path, spool_owner=99):
    """The reference table with only its paths moved under tmp_path, and
    every file and directory it names really there."""
    root = tmp_path / "root"
    spool = root / "var/spool/smmap"
    (spool / "bad").mkdir(parents=True)
    for d in (spool, spool / "bad"):
        if os.geteuid() == 0:
            os.chown(d, spool_owner, spool_owner)
        else:
            os.chmod(d, 0o777)
    (root / "var/ssl/certs").mkdir(parents=True)
    make_pem(root / "var/ssl/certs/mail.pem")
    (root / "etc").mkdir()
    pw = root / "etc/smtppass"
    pw.write_text("user:" + hashlib.md5(b"secret").hexdigest() + "\n")
    pw.chmod(0o600)
    (root / "etc/spamdb").write_text("192.0.2.0/24\n")
    text = open(REFERENCE_TABLE).read()
    for path in ("/var/spool/smmap", "/var/ssl/certs/mail.pem", "/etc/smtppass", "/etc/spamdb"):
        text = text.replace(" " + path, " " + str(root) + path)
    table = tmp_path / "netperm-table"
    table.write_text(text)
    return str(table), root


def test_reference_table_with_its_files_in_place(tmp_path):
    assert os.access("/usr/sbin/sendmail", os.X_OK), "Postfix's sendmail is missing (make test installs it)"
    table, _ = relocated_reference(tmp_path)
    code, lines = check("--config", table)
    assert code == 0, lines
    assert lines == [table + w for w in MACHINE_WARNINGS + REFERENCE_WARNINGS] + [
        f"{table}: 0 errors, {6 + len(MACHINE_WARNINGS)} warnings"]


def test_files_and_accounts(tmp_path):
    table, root = relocated_reference(tmp_path)
    pem = root / "var/ssl/certs/mail.pem"
    pem.chmod(0o644)
    pw = root / "etc/smtppass"
    from smapd.smap.password_file import hash_password
    pw.write_text("# users\nuser:" + "0" * 32 + "\nbroken line\nother:" + hash_password(b"x", iterations=1000)
                  + "\nshort:abc\n")
    pw.chmod(0o644)
    text = open(table).read().replace("userid 99", "userid no-such-user-here")
    text = text.replace("sendmail /usr/sbin/sendmail", f"sendmail {root}/etc/spamdb")
    text += "smmapd: sendmail /usr/sbin/sendmail\n"
    open(table, "w").write(text)
    code, lines = check("--config", table)
    assert code == 1
    body = "\n".join(lines)
    assert f"{table}:6: error: smmap: userid no-such-user-here: no such user" in lines
    assert f"{table}:6: error: smmapd: userid no-such-user-here: no such user" in lines
    assert re.search(re.escape(f"{table}:19: warning: smmap: ssl {pem}: holds a private key and is readable "
                               "by everyone (mode 0644); make it 0600"), body)
    assert f"{table}:26: warning: smmap: md5file {pw}: holds password hashes and is readable by everyone " \
           "(mode 0644); make it 0600" in lines
    # The file read as smap reads it (auth.PasswordFile), problems named by line, secrets never shown.
    assert f"{pw}:3: error: not user:hash (no ':')" in lines
    assert f"{pw}:5: error: user short: not an MD5 hash (32 hex digits) nor a $pbkdf2-sha256$ entry of " \
           "smapctl passwd" in lines
    assert not any(line.startswith(f"{pw}:4:") or line.startswith(f"{pw}:2:") for line in lines)
    assert f"{table}:16: error: smmapd: sendmail {root}/etc/spamdb: is not executable" in lines
    assert f"{table}:49: warning: sendmail is already set at line 16; the first line wins and this one is " \
           "ignored" in lines


def test_bad_pem_and_world_writable_password_file(tmp_path, table):
    pem = tmp_path / "bad.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    pw = tmp_path / "pw"
    pw.write_text("u:" + "a" * 32 + "\n")
    pw.chmod(0o666)
    spool = tmp_path / "spool"
    spool.mkdir()
    path = table(f"smap: directory {spool}\nsmap: userid 0\nsmap: ssl {pem}\nsmap: auth plain\n"
                 f"smap: md5file {pw}\n")
    code, lines = check("--config", path)
    assert code == 1
    assert f"{path}:2: warning: smap: userid 0: root: the programs refuse this unless started with --allow-root" \
        in lines
    assert any(line.startswith(f"{path}:3: error: smap: ssl {pem}: is not a usable key and certificate")
               for line in lines), lines
    assert f"{path}:5: error: smap: md5file {pw}: is writable by everyone (mode 0666)" in lines


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own the spool as another user")
def test_spool_not_writable_by_the_user(tmp_path, table):
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    os.chown(spool, 0, 0)
    path = table(f"smap: directory {spool}\nsmap: userid nobody\n")
    code, lines = check("--config", path)
    assert code == 1
    assert any(line.startswith(f"{path}:1: error: smap: directory {spool}: is not writable by nobody/")
               for line in lines), lines


def test_syntax_errors_and_bad_values(table):
    path = table("smap: maxbytes lots\nsmap userid nobody\nsmap: crlf strict extra\n")
    code, lines = check("-n", "--config", path)
    assert code == 1
    assert lines == [
        f"{path}:1: error: maxbytes: 'lots' is not a whole number",
        f"{path}:2: error: no ':' after the program list (expected 'program: keyword args…')",
        f"{path}:3: error: crlf takes one argument (crlf strict|normalize), found 2",
        f"{path}: 3 errors, 0 warnings",
    ]


def test_names_of_other_programs(table):
    path = table("ftp-gw: timeout 5\nnetacl-fingerd: permit-hosts *\nmailer: frob 1\nsmpad: wakeup 3\n"
                 "smap-in: maxbytes 100\nsmapd: wakeup 5\nsmap: maxrecip 2\n")
    code, lines = check("-n", "--config", path)
    assert code == 0
    assert lines == [
        f"{path}:3: note: 'mailer' is not a program of the suite; its lines are left to it",
        f"{path}:4: warning: 'smpad' names no program of the suite (nearest: smapd); 'wakeup' is a keyword of "
        "smapd; this line is ignored: did you mean 'smapd: wakeup 3'?",
        f"{path}:5: note: 'smap-in' is smap installed under another name: run as smap-in, it reads the "
        "'smap-in:' lines",
        f"{path}: 0 errors, 1 warning",
    ]


def test_named_programs_and_env(table):
    path = table("imap: verify 2\nimap: ca-file /nonexistent/ca.pem\n")
    code, lines = check("-n", "imap=ssl-gw", env={"NETPERM_TABLE": path})
    assert code == 0 and lines == [f"{path}: 0 errors, 0 warnings"]
    code, lines = check("imap=ssl-gw", env={"NETPERM_TABLE": path})
    assert code == 1
    assert lines[0] == f"{path}:2: error: imap: ca-file /nonexistent/ca.pem: cannot use it: No such file or directory"
    code, lines = check("-n", "--config", path, "pop=bogus", "mailer")
    assert code == 1
    assert lines[:2] == [
        f"{path}: error: pop=bogus: 'bogus' is not a program of the suite (smap, smapd, ssl-gw)",
        f"{path}: error: cannot tell which program 'mailer' is; write mailer=smap, mailer=smapd or mailer=ssl-gw",
    ]


def test_contradictions(table, tmp_path):
    path = table("smap: ssl-auth required\nsmap: auth login\nsmap: rbl zen.example.org\n"
                 "smap: minspare 30\nsmap: directory /a\nsmapd: directory /b\n"
                 "ssl-gw: verify 2\n")
    code, lines = check("-n", "--config", path)
    assert code == 1
    assert lines == [
        f"{path}:1: error: smap: ssl-auth required needs an 'ssl' certificate",
        f"{path}:2: error: smap: auth needs an md5file with the passwords",
        f"{path}:2: warning: smap: AUTH is offered only inside TLS (auth-requires-tls yes) and no 'ssl' "
        "certificate is set, so AUTH is never offered",
        f"{path}:3: warning: smap: rbl zones are queried only with 'nospam maps-rbl'",
        f"{path}:4: error: smap: minspare 30 is above maxspare 20",
        f"{path}:6: warning: smap spools into /a but smapd reads /b",
        f"{path}:7: error: ssl-gw: verify 2 needs ca-file or ca-dir",
        f"{path}: 4 errors, 3 warnings",
    ]


def test_missing_table_and_usage():
    code, lines = check("--config", "/nonexistent/table")
    assert code == 1
    assert lines[0] == "/nonexistent/table: error: cannot read the table: No such file or directory"
    r = run("smapctl", "check", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr


@pytest.mark.parametrize("sample", ["netperm-table.sample", "netperm-table.standalone"])
def test_sample_table_is_clean(sample):
    from support.programs import ROOT
    path = os.path.join(ROOT, "etc", sample)
    code, lines = check("-n", "--config", path)
    assert (code, lines) == (0, [f"{path}: 0 errors, 0 warnings"])


def test_star_lines_are_checked_for_every_program(table):
    path = table("*: maxbytes lots\n*: wakeup soon\n*: verify 7\n*: ftp-only-keyword x\nsmap: userid 1\n")
    code, lines = check("-n", "--config", path)
    assert code == 1
    assert lines == [
        f"{path}:1: error: maxbytes: 'lots' is not a whole number",
        f"{path}:2: error: wakeup: 'soon' is not a whole number",
        f"{path}:3: error: verify: 7 is out of range (0..3)",
        f"{path}: 3 errors, 0 warnings",
    ]


def test_role_detection():
    from smapd.admin.check import role_of
    assert [role_of(n) for n in ("smap", "smmap", "smmapd", "smap-in", "in.smapd", "ssl_gw", "sslgw",
                                 "ssl-gw-imap")] == ["smap", "smap", "smapd", "smap", "smapd", "ssl-gw",
                                                     "ssl-gw", "ssl-gw"]
    assert [role_of(n) for n in ("smtpd", "sitemap", "spam-map", "sendmailmap", "smtp-map", "imaps")] == [None] * 6


def test_shared_lines_and_service_names(table):
    path = table("smap,smtpd: maxrecip 5\nimaps: connect 143\nsitemap: timeout 5m\n")
    code, lines = check("-n", "--config", path)
    assert code == 0
    assert lines == [
        f"{path}:1: warning: 'smtpd' names no program of the suite (nearest: smapd); 'maxrecip' is a keyword of "
        "smap; the 'smtpd' entry of this line is ignored",
        f"{path}:2: note: 'imaps' names no program of the suite; 'connect' is a keyword of ssl-gw: if imaps is "
        "ssl-gw's service name (-r or -N), check it with 'smapctl check imaps=ssl-gw'; otherwise this line is "
        "ignored",
        f"{path}:3: warning: 'sitemap' names no program of the suite; 'timeout' is a keyword of smap or ssl-gw; "
        "this line is ignored",
        f"{path}: 0 errors, 2 warnings",
    ]


def test_open_relay_settings_are_errors(table):
    path = table("smap: relay-hosts 192.0.2.0/24 *\nsmap: relay-hosts 0.0.0.0/0 unknown\nsmap: relay-domain *\n")
    code, lines = check("-n", "--config", path)
    assert code == 1
    assert lines == [
        f"{path}:1: error: smap: relay-hosts * matches every client: an open relay",
        f"{path}:2: error: smap: relay-hosts 0.0.0.0/0 matches every client: an open relay",
        f"{path}:2: error: smap: relay-hosts unknown matches every client: an open relay",
        f"{path}:3: error: smap: relay-domain * accepts mail for every domain: an open relay",
        f"{path}: 4 errors, 0 warnings",
    ]


def test_encrypted_key_is_refused_without_a_prompt(tmp_path, table):
    key, crt = tmp_path / "k", tmp_path / "c"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-passout", "pass:secret", "-keyout", str(key),
                    "-out", str(crt), "-subj", "/CN=x", "-days", "1"], check=True, capture_output=True)
    pem = tmp_path / "enc.pem"
    pem.write_bytes(key.read_bytes() + crt.read_bytes())
    pem.chmod(0o600)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o777)
    path = table(f"smap: directory {spool}\nsmap: ssl {pem}\n")
    code, lines = check("--config", path)
    assert code == 1
    assert f"{path}:2: error: smap: ssl {pem}: holds an encrypted private key: a daemon has nobody to type its " \
           "pass phrase" in lines


def test_check_reports_what_ssl_gw_would_say_of_hosts_allow(tmp_path):
    wrap = tmp_path / "wrap"
    wrap.mkdir()
    (wrap / "hosts.allow").write_text("imap: ALL : spawn (echo hi)\nbroken line\n")
    path = tmp_path / "netperm-table"
    path.write_text(f"ssl-gw: tcpwrappers-dir {wrap}\n")
    code, lines = check("--config", str(path))
    assert code == 0
    assert f"{path}:1: warning: ssl-gw: {wrap}/hosts.allow:1: option 'spawn' is ignored (ssl-gw runs no commands)" \
        in lines
    assert any(line.startswith(f"{path}:1: warning: ssl-gw: {wrap}/hosts.allow:2: missing ':'") for line in lines)


# ------------------------------------------------------------ what fails at run time

@pytest.mark.skipif(os.geteuid() != 0, reason="accounts and owners: needs root")
def test_check_finds_what_would_fail_at_run_time(tmp_path, public_tmp):
    """Tables that read without error but that smap or smapd cannot run
    with: check says so, with the file and line."""
    import grp as grp_module
    from support.programs import make_spool, nobody_ids
    spool = make_spool(public_tmp / "spool")
    group = grp_module.getgrgid(nobody_ids()[1]).gr_name
    base = (f"smap, smapd: directory {spool}\nsmap: userid nobody\nsmap: groupid {group}\n"
            "smap: relay-domain example.org\nsmapd: sendmail /bin/true\n")

    def lines_of(text, mode=0o644, owner=None):
        path = tmp_path / "netperm-table"
        path.write_text(text)
        os.chmod(path, mode)
        if owner is not None:
            os.chown(path, *owner)
        return str(path), check("--config", str(path))

    # smap and smapd in different groups: smapd could open no spool file.
    path, (code, lines) = lines_of(base + "smapd: userid daemon\nsmapd: groupid daemon\n")
    assert code == 1
    assert f"{path}:7: error: smap runs as uid {nobody_ids()[0]}, gid {nobody_ids()[1]} but smapd as uid 1, gid 1: " \
           "smap's spool files are mode 0660, so smapd could open none of them; give both the same groupid (a " \
           "userid of its own for smapd is fine, and recommended)" in lines, lines
    # A user of its own in smap's group: the recommended set-up, no error.
    path, (code, lines) = lines_of(base + f"smapd: userid daemon\nsmapd: groupid {group}\n")
    assert (code, lines[-1]) == (0, f"{path}: 0 errors, 0 warnings"), lines
    same = base + f"smapd: userid nobody\nsmapd: groupid {group}\n"
    path, (code, lines) = lines_of(same)
    assert (code, lines[-1]) == (0, f"{path}: 0 errors, 0 warnings"), lines

    # A uid with no passwd entry: smapd's MTA may refuse it.
    path, (code, lines) = lines_of(base + "smapd: userid 4242\nsmapd: groupid 4242\n")
    assert f"{path}:6: warning: smapd: userid 4242: uid 4242 has no passwd entry: the MTA's sendmail, which " \
           "smapd runs as this user, may refuse it (Postfix's postdrop says 'unknown uid')" in lines, lines

    # The table writable by everyone, or owned by the jailed user.
    path, (code, lines) = lines_of(same, mode=0o666)
    assert code == 1 and any(l.startswith(f"{path}: error: the table is writable by everyone (mode 0666)")
                             for l in lines), lines
    path, (code, lines) = lines_of(same, owner=nobody_ids())
    assert code == 1 and f"{path}: error: the table is owned by uid {nobody_ids()[0]}, the user the programs " \
                         "drop to: a compromised child could rewrite its own rules; make it root's" in lines, lines
    os.chown(path, 0, 0)

    # A spool writable by everyone.
    os.chmod(spool, 0o777)
    try:
        path, (code, lines) = lines_of(same)
        assert code == 1 and f"{path}:1: error: smap: directory {spool}: is writable by everyone (mode 0777): " \
                             "anyone could plant mail for smapd to hand off; make it 0770, of the group smap and " \
                             "smapd share" in lines, lines
    finally:
        os.chmod(spool, 0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="smapd drops to nobody: needs root")
def test_baddir_on_another_file_system(tmp_path, public_tmp):
    """check and smapd agree, both with the file and line."""
    from support.programs import make_spool, nobody_ids
    spool = make_spool(public_tmp / "spool")
    other = "/dev/shm"
    assert os.stat(other).st_dev != os.stat(spool).st_dev, "this test needs /dev/shm on a file system of its own"
    bad = tempfile.mkdtemp(prefix="smapd-bad-", dir=other)
    try:
        os.chown(bad, *nobody_ids())
        path = tmp_path / "netperm-table"
        path.write_text(f"smapd: directory {spool}\nsmapd: baddir {bad}\nsmapd: sendmail /bin/true\n"
                        "smapd: userid nobody\n")
        code, lines = check("--config", str(path))
        assert code == 1
        assert f"{path}:2: error: smapd: baddir {bad}: is not on the file system of the spool {spool}: smapd " \
               "moves refused files there by link and unlink, and refuses to start" in lines, lines
        r = run("smapd", "-d", "--config", str(path))
        assert r.returncode == 1
        assert f"baddir {bad} ({path}:2) cannot be used: it is not on the spool's file system" in r.stderr, r.stderr
    finally:
        os.rmdir(bad)


def test_recipients_map_is_relay_control_and_its_bad_lines_are_warned(table, tmp_path):
    rmap = tmp_path / "recipients"
    rmap.write_text("alice@example.org\n@lists.example.org\n\"|prog\"@example.org\n  indented@example.org\n")
    path = table(f"smap: maxrecip 10\nsmap: recipients {rmap}\n")
    code, lines = check("--config", path, "smap", keep_relay_error=True)
    found = [line for line in lines if "recipients" in line]
    assert f"{path}:2: warning: smap: {rmap}:3: '\"|prog\"@example.org' is not an address (local-part@domain) " \
        "or @domain; line ignored" in found, lines
    assert f"{path}:2: warning: smap: {rmap}:4: a continuation line (the key must start the line); line ignored" \
        in found, lines
    assert not any(NO_RELAY_CONTROL in line for line in lines)
