"""smapctl trace and report on the log of a live set-up: smap -daemon in
front, smapd handing off by SMTP to a private Postfix set up as the
recipe of smapd(8) says.  smap and smapd log to the test's syslog
socket, which writes the lines into a file as rsyslog does (RFC 3339
time stamps); Postfix logs into its own maillog_file (classic time
stamps); both files are given with --log, as an operator gives them.

What is sent: one message over STARTTLS; then one plain session with a
relay attempt and an unknown recipient refused, a message, and a second
message to a recipient smap knows and Postfix does not, which smapd
bounces to the sender (a DSN through the spool).  trace must print each
message's lines from smap's connect to Postfix's `removed` and no line
of another message; report must count exactly what was sent and refused.

A second smapd hands off with Postfix's sendmail, where no queue id
comes back: trace links its hand-off to Postfix's pickup line only when
no other hand-off could claim that line.

The EXAMPLES of smapctl(8) for trace and report are run against the same
logs, and their output must have the form the page shows.
"""

import gzip
import grp
import json
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
from pathlib import Path

import pytest

from postfix import Postfix, recipe_main_cf, recipe_master_cf, unprivileged_sendmail
from support.daemons import Daemon
from support.logs import Syslog
from support.process import stop
from support.programs import ROOT, command, free_port, make_spool, nobody_ids, run, wait_for
from support.smtp import InetdSmap

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap and smapd drop to nobody")

ALICE, BOB, CAROL = "alice@example.org", "bob@example.net", "carol@example.net"
#: Known to smap's recipients map, unknown to Postfix: smapd bounces it.
GHOST = "ghost@example.net"
CLIENT = "client.example.test/127.0.0.1"
MESSAGE = "From: Alice <alice@example.org>\r\nSubject: traced\r\n\r\nhello\r\n"
SMAPCTL_PAGE = Path(ROOT) / "man" / "man8" / "smapctl.8"


def public_dir():
    """A directory that smap's and smapd's user (nobody) can traverse."""
    d = Path(tempfile.mkdtemp(prefix="smapd-logs-", dir="/tmp"))
    os.chmod(d, 0o755)
    return d


def queued_as(reply: bytes) -> str:
    return re.search(rb"queued as (\w+)", reply).group(1).decode()


class Setup:
    """smap -daemon, smapd and Postfix, their logs, and what was sent."""

    def __init__(self, base, tmp, dns_port, pki):
        self.base, self.pki = base, pki
        self.mta_port = free_port()
        self.postfix = Postfix(tmp, main_cf=recipe_main_cf(), master_cf=recipe_master_cf(self.mta_port),
                               mailboxes=[ALICE, BOB, CAROL])
        recipients = base / "recipients"
        recipients.write_text(f"{BOB}\n{CAROL}\n{GHOST}\n")
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        self.smap = Daemon(base, dns_port,
                           f"smap: ssl {pki.server_pem}\nsmap: recipients {recipients}\n"
                           f"smapd: directory {base / 'spool'}\nsmapd: userid nobody\nsmapd: groupid {group}\n"
                           f"smapd: mta smtp:127.0.0.1:{self.mta_port}\nsmapd: wakeup 1\n"
                           f"smapd: log-socket {base / 'log'}\n")
        self.log = base / "mail.log"
        self.smap.syslog.write_file(self.log)
        self.smapd = None

    def start(self):
        self.postfix.start()
        self.smap.start()
        self.smapd_err = open(self.base / "smapd.stderr", "a+b")
        self.smapd = subprocess.Popen([command("smapd"), "-f", "--config", str(self.smap.table)],
                                      stdin=subprocess.DEVNULL, stdout=self.smapd_err, stderr=self.smapd_err)
        self.smap.syslog.wait(r"smapd\[\d+\]: started: ")

    def stop(self):
        if self.smapd is not None:
            stop(self.smapd, timeout=30)
            self.smapd_err.close()
        self.smap.stop()
        self.postfix.stop()

    @property
    def logs(self):
        """The --log options of every smapctl command here."""
        return ["--log", str(self.log), "--log", self.postfix.log_file]

    def send(self):
        with smtplib.SMTP("127.0.0.1", self.smap.port, local_hostname="client.example.test", timeout=30) as s:
            s.starttls(context=self.pki.client_context())
            s.ehlo()
            s.mail(ALICE)
            assert s.rcpt(BOB)[0] == 250
            self.tls = queued_as(s.data(MESSAGE)[1])
        with smtplib.SMTP("127.0.0.1", self.smap.port, local_hostname="client.example.test", timeout=30) as s:
            s.ehlo()
            s.mail(ALICE)
            assert s.rcpt("victim@far.example")[0] == 554        # relay refused
            assert s.rcpt("nosuch@example.net")[0] == 550        # not in the recipients map
            assert s.rcpt(CAROL)[0] == 250
            self.plain = queued_as(s.data(MESSAGE)[1])
            s.mail(ALICE)
            assert s.rcpt(GHOST)[0] == 250
            self.bounced = queued_as(s.data(MESSAGE)[1])

    def settle(self):
        """Wait until everything sent has been delivered and logged."""
        for address in (BOB, CAROL, ALICE):             # Alice gets the bounce
            self.postfix.wait_delivered(address, 1)
        text = wait_for(lambda: (t := self.log.read_text()).count(" sent (") == 3 and " failed: " in t and t,
                        timeout=30, what="smapd's hand-off lines")
        self.dsn = re.search(rf"id={self.bounced} .* failed: .*\(DSN id=(\w+)\)", text).group(1)
        self.mta = {qid: queued_as(m.encode()) for qid in (self.tls, self.plain, self.dsn)
                    for m in re.findall(rf"id={qid} from=.* sent \(.*\)", text)}
        wait_for(lambda: all(f"{q}: removed" in self.postfix.log() for q in self.mta.values()), timeout=30,
                 what="Postfix to remove the messages")


@pytest.fixture(scope="module")
def mail(tmp_path_factory, loopback_dns, pki):
    base = public_dir()
    setup = Setup(base, tmp_path_factory.mktemp("postfix"), loopback_dns, pki)
    try:
        setup.start()
        setup.send()
        setup.settle()
        yield setup
    finally:
        setup.stop()
        shutil.rmtree(base, ignore_errors=True)


def smapctl(*args):
    return run("smapctl", *args)


def trace(mail, qid, *options):
    r = smapctl("trace", qid, *mail.logs, *options)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()


def assert_in_order(lines, patterns):
    """Each pattern matches a line, in this order (other lines between),
    the suite's and Postfix's apart: the lines of each file keep their
    order, those of one second come file after file."""
    for mine in (False, True):
        part = [l for l in lines if (" postfix/" in l) == mine]
        i = 0
        for pattern in (p for p in patterns if (" postfix/" in p) == mine):
            while i < len(part) and not re.search(pattern, part[i]):
                i += 1
            assert i < len(part), f"no line {pattern!r} in order in:\n" + "\n".join(lines)
            i += 1


def mta_lines(qid, client=r"client\.example\.test\[127\.0\.0\.1\]"):
    """Postfix's lines of its queue id `qid`, from its smtpd (told of the
    client by XCLIENT) to its removal."""
    return [rf" postfix/smap/smtpd\[\d+\]: {qid}: client={client}$",
            rf" postfix/qmgr\[\d+\]: {qid}: from=<[^>]*>, size=\d+, nrcpt=1 \(queue active\)$",
            rf" postfix/virtual\[\d+\]: {qid}: to=<[^>]+>, .*status=sent \(delivered to maildir\)$",
            rf" postfix/qmgr\[\d+\]: {qid}: removed$"]


def test_trace_follows_a_message_from_connect_to_postfix(mail):
    a, x = mail.tls, mail.mta[mail.tls]
    lines = trace(mail, a)
    assert_in_order(lines, [
        rf" smap\[\d+\]: connect host={CLIENT} id={a}$",
        rf" smap\[\d+\]: host={CLIENT} TLS TLSv1\.[23] \S+ \(\d+ bits\) id={a}$",
        rf" smap\[\d+\]: host={CLIENT} bytes=\d+ from=<{ALICE}> to=<{BOB}> nrcpt=1 id={a}$",
        rf" smap\[\d+\]: disconnect host={CLIENT} messages=1 bytes=\d+ id={a}$",
        rf" smapd\[\d+\]: id={a} from=<{ALICE}> nrcpt=1 sent \(smtp:127\.0\.0\.1:{mail.mta_port}: "
        rf"250 2\.0\.0 Ok: queued as {x}\) delay=[\d.]+ to=<{BOB}>$",
        *mta_lines(x)])
    # Nothing of another message: every line is of this one's smap id or
    # of its Postfix queue id.
    assert [l for l in lines if not re.search(rf"\bid={a}\b| {x}: ", l)] == []
    # The same lines, by Postfix's queue id; in JSON, with both ids.
    doc = json.loads(smapctl("trace", x, *mail.logs, "--json").stdout)
    assert (doc["suite_ids"], doc["mta_ids"]) == ([a], [x])
    assert [line["text"] for line in doc["lines"]] == [l.split(": ", 1)[1] for l in lines]
    assert {line["program"] for line in doc["lines"]} >= {"smap", "smapd", "postfix/qmgr", "postfix/virtual"}


def test_trace_of_a_session_s_second_message_and_its_bounce(mail):
    """The session's connect and disconnect carry its first message's id:
    they are in, that message's lines and the refusals before it are out;
    smapd's bounce (a DSN of its own id) is followed into Postfix."""
    b, c, d, y = mail.plain, mail.bounced, mail.dsn, mail.mta[mail.dsn]
    lines = trace(mail, c)
    assert_in_order(lines, [
        rf" smap\[\d+\]: connect host={CLIENT} id={b}$",
        rf" smap\[\d+\]: host={CLIENT} bytes=\d+ from=<{ALICE}> to=<{GHOST}> nrcpt=1 id={c}$",
        rf" smap\[\d+\]: disconnect host={CLIENT} messages=2 bytes=\d+ id={b}$",
        rf" smapd\[\d+\]: id={c} from=<{ALICE}> to=<{GHOST}> failed: 550 5\.1\.1 .*; bounced to <{ALICE}> "
        rf"\(DSN id={d}\)$",
        rf" smapd\[\d+\]: id={d} from=<> nrcpt=1 sent \(.*queued as {y}\)",
        *mta_lines(y, client=r"localhost\[127\.0\.0\.1\]")])     # smapd's own message: no XCLIENT
    assert [l for l in lines if f"id={b}" in l] == [lines[0], lines[2]]
    assert not [l for l in lines if "refused" in l or mail.mta[b] in l]
    # The first message of that session has the refusals before it.
    first = trace(mail, b)
    assert_in_order(first, [rf"connect host={CLIENT} id={b}$",
                            rf"refused: relay to <victim@far\.example> denied .*; code=554 5\.7\.1 id={b} ",
                            rf"refused: unknown recipient <nosuch@example\.net> .*; code=550 5\.1\.1 id={b} ",
                            rf"to=<{CAROL}> nrcpt=1 id={b}$", rf"disconnect host=.* id={b}$",
                            rf"smapd\[\d+\]: id={b} .* sent ", *mta_lines(mail.mta[b])])
    assert not [l for l in first if c in l or d in l]


def test_trace_reads_rotated_and_compressed_logs(mail, tmp_path):
    """The log cut in three, the oldest part gzipped, given oldest first:
    the same trace."""
    lines = mail.log.read_text().splitlines(keepends=True)
    third = len(lines) // 3
    with gzip.open(tmp_path / "mail.log.2.gz", "wt") as f:
        f.writelines(lines[:third])
    (tmp_path / "mail.log.1").write_text("".join(lines[third:2 * third]))
    (tmp_path / "mail.log").write_text("".join(lines[2 * third:]))
    parts = [a for n in ("mail.log.2.gz", "mail.log.1", "mail.log") for a in ("--log", str(tmp_path / n))]
    r = smapctl("trace", mail.tls, *parts, "--log", mail.postfix.log_file)
    assert (r.returncode, r.stdout.splitlines()) == (0, trace(mail, mail.tls))


def test_trace_says_what_it_cannot_find(mail, tmp_path):
    r = smapctl("trace", "0NOSUCHIDP0", *mail.logs)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"smapctl: trace: no line of {mail.log}, {mail.postfix.log_file} concerns 0NOSUCHIDP0\n"
    for command in (("trace", mail.tls), ("report",)):
        r = smapctl(*command, "--log", str(tmp_path / "nosuch.log"))
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr == f"smapctl: cannot read {tmp_path / 'nosuch.log'}: No such file or directory\n"


def test_report_counts_what_was_sent(mail):
    r = smapctl("report", *mail.logs, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["logs"] == [str(mail.log), mail.postfix.log_file]
    assert doc["connections"] == 2
    assert doc["received"] | {"senders": None, "clients": None} == \
        {"messages": 3, "recipients": 3, "bytes": doc["received"]["bytes"], "senders": None, "clients": None}
    assert doc["received"]["senders"] == [{"name": ALICE, "count": 3}]
    assert doc["received"]["clients"] == [{"name": CLIENT, "count": 3}]
    assert doc["refused"] == {
        "total": 2, "permanent": 2, "temporary": 0,
        "checks": [{"check": "relay to <...> denied", "count": 1, "codes": {"554 5.7.1": 1}},
                   {"check": "unknown recipient <...>", "count": 1, "codes": {"550 5.1.1": 1}}],
        "clients": [{"name": CLIENT, "count": 2}], "senders": [{"name": ALICE, "count": 2}]}
    # Handed off: the two messages Postfix took, and the bounce.
    assert doc["delivered"] == {"messages": 3, "recipients": 3}
    assert doc["deferred"] == {"messages": 0, "deferrals": 0}
    assert doc["bounced"] == {"messages": 1, "recipients": 1}
    assert doc["bad"] == {"messages": 0}
    assert doc["tls"]["sessions"] == 1 and doc["tls"]["failed"] == 0
    assert [p["count"] for p in doc["tls"]["protocols"]] == [1] and re.match(r"TLSv1\.[23]$",
                                                                          doc["tls"]["protocols"][0]["name"])
    assert doc["auth"] == {"sessions": 0, "mechanisms": []}
    text = smapctl("report", *mail.logs).stdout
    assert re.search(r"^ +3  received \(3 recipients, \S+ bytes\)$", text, re.M), text
    assert re.search(r"^ +2  refused \(2 permanent, 0 temporary\)$", text, re.M), text
    assert re.search(r"^ +1  relay to <\.\.\.> denied \(554 5\.7\.1\)$", text, re.M), text


# ------------------------------------------------------------------ the sendmail hand-off


def test_sendmail_handoff_is_linked_to_pickup_only_when_certain(mail, public_tmp):
    """Three messages spooled, then handed off by one smapd through
    Postfix's sendmail: the one from a sender of its own is linked to
    Postfix's pickup line and followed to `removed`; the two from one
    sender at the same time are not (which pickup line is whose cannot
    be told), and trace says so."""
    postfix = mail.postfix
    postfix.add_mailbox("solo@example.org", "pair@example.org", BOB)
    spool = make_spool(public_tmp / "spool")
    group = grp.getgrgid(nobody_ids()[1]).gr_name
    table = public_tmp / "netperm-table"
    table.write_text(
        f"smap, smapd: directory {spool}\nsmap, smapd: userid nobody\nsmap, smapd: groupid {group}\n"
        f"smap, smapd: log-socket {public_tmp / 'log'}\nsmap: hostname smap.example.test\n"
        f"smap: resolver 127.0.0.1:{mail.smap.dns_port}\nsmap: relay-domain example.net\n"
        f"smapd: sendmail /usr/sbin/sendmail -C {postfix.config_dir}\nsmapd: wakeup 1\n")
    table.chmod(0o644)
    syslog = Syslog(public_tmp / "log")
    log = public_tmp / "mail.log"
    syslog.write_file(log)
    ids = {}
    for sender in ("solo@example.org", "pair@example.org", "pair@example.org"):
        smap = InetdSmap(str(table), debug=False)
        s = smap.smtp
        assert s.reply()[0] == 220 and s.cmd("EHLO client.example.test")[0] == 250
        assert s.cmd(f"MAIL FROM:<{sender}>")[0] == 250 and s.cmd(f"RCPT TO:<{BOB}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        code, reply = s.cmd(MESSAGE.encode() + b".\r\n")
        ids.setdefault(sender, []).append(queued_as(reply[0].encode()))
        s.cmd("QUIT")
        smap.wait()
    with unprivileged_sendmail(postfix):
        smapd = subprocess.Popen([command("smapd"), "-f", "--config", str(table)], stdin=subprocess.DEVNULL)
        try:
            postfix.wait_delivered(BOB, 4)      # the TLS message of the fixture, and these three
            wait_for(lambda: log.read_text().count(" sent delay=") == 3, what="smapd's three hand-offs")
            wait_for(lambda: postfix.log().count("/pickup[") >= 3 and
                     postfix.log().count(": removed") >= 6, what="Postfix to take the three and remove them")
        finally:
            stop(smapd, timeout=30)
            syslog.close()
    logs = ["--log", str(log), "--log", postfix.log_file]
    [solo] = ids["solo@example.org"]
    r = smapctl("trace", solo, *logs)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    [pickup] = [l for l in lines if "/pickup[" in l]
    qid = re.search(r": (\w+): uid=\d+ from=<solo@example\.org>$", pickup).group(1)
    assert_in_order(lines, [rf" smap\[\d+\]: connect host={CLIENT} id={solo}$",
                            rf" smapd\[\d+\]: id={solo} from=<solo@example\.org> nrcpt=1 sent delay=",
                            rf" postfix/qmgr\[\d+\]: {qid}: from=<solo@example\.org>",
                            rf" postfix/virtual\[\d+\]: {qid}: to=<{BOB}>, .*status=sent",
                            rf" postfix/qmgr\[\d+\]: {qid}: removed$"])
    assert [l for l in lines if not re.search(rf"\bid={solo}\b| {qid}: ", l)] == []
    for pair in ids["pair@example.org"]:
        r = smapctl("trace", pair, *logs)
        assert r.returncode == 0 and not [l for l in r.stdout.splitlines() if " postfix/" in l], r.stdout
        assert r.stderr == (f"smapctl: trace: {pair}: the MTA's queue id of the sendmail hand-off is not certain "
                            "(1 hand-off(s) of other messages from <pair@example.org> at the same time): the "
                            "MTA's lines are left out\n")


# ------------------------------------------------------------------ the man page


def examples(page_text):
    """[(command line, [output lines])] of the page's examples of trace
    and report: each `# smapctl trace|report ...` line of an EXAMPLES
    display, with the lines that follow it up to the next command or the
    display's end."""
    found = []
    section = page_text.split("\n.Sh EXAMPLES\n", 1)[1].split("\n.Sh ", 1)[0]
    for display in re.findall(r"^\.Bd -literal[^\n]*\n(.*?)^\.Ed$", section, re.S | re.M):
        for block in re.split(r"^(?=[$#] )", display, flags=re.M):
            lines = block.replace("\\e", "\\").splitlines()
            if lines and re.match(r"[$#] smapctl (trace|report) ", lines[0]):
                found.append((lines[0][2:], lines[1:]))
    return found


def unwrapped(lines):
    """Log lines as the page wraps them (an indented line continues the
    one before) made whole again."""
    return re.sub(r"\n +", " ", "\n".join(lines)).splitlines()


def shape(text):
    """`text` without what differs from run to run: queue ids, pids,
    addresses, client names, paths and numbers (with their plurals)."""
    text = re.sub(r"\[\d+\]", "[PID]", text)
    text = re.sub(r"\b(id=|queued as |\(DSN id=)\w+", r"\1ID", text)
    text = re.sub(r"^(\S+: )[0-9A-Za-z]{5,}: ", r"\1QID: ", text)
    text = re.sub(r"<[^<>]*>", "<ADDR>", text)
    text = re.sub(r"\b(host|client)=\S+", r"\1=CLIENT", text)
    text = re.sub(r"(?<![\w/])/[^\s,)]+", "PATH", text)
    text = re.sub(r"\d+(\.\d+)*[kMG]?", "N", text)
    text = re.sub(r"(N [a-z]+)s\b", r"\1", text)
    return " ".join(text.split())


def log_shapes(lines):
    """The shapes of trace's lines without their time stamps and hosts:
    the suite's and the MTA's apart, since each file's order is kept
    but lines of one second interleave by file."""
    shapes = [shape(re.sub(r"^\S+ +(\d+ [\d:]+ )?\S+ ", "", line)) for line in lines]
    return [s for s in shapes if not s.startswith("postfix/")], [s for s in shapes if s.startswith("postfix/")]


def test_the_man_page_examples_run(mail):
    """Each example of smapctl(8) for trace and report, run on the
    fixture's logs (with its queue id, and the fixture's --log options
    for the page's), prints lines of the shapes the page shows; the
    report's example shows its head, the grand totals."""
    found = examples(SMAPCTL_PAGE.read_text())
    assert sorted(cmd.split()[1] for cmd, _ in found) == ["report", "trace"], \
        f"{SMAPCTL_PAGE}: its EXAMPLES should show one trace and one report, not {found}"
    for cmd, shown in found:
        words = re.sub(r" (--log|-l) \S+", "", cmd).split()
        words = [mail.plain if re.fullmatch(r"[0-9A-Z]+P[0-9A-Z]+", w) else w for w in words[1:]]
        r = smapctl(*words, *mail.logs)
        assert r.returncode == 0, (cmd, r.stderr)
        got = r.stdout.splitlines()
        if words[0] == "trace":
            assert log_shapes(got) == log_shapes(unwrapped(shown)), (cmd, r.stdout)
        else:
            assert [shape(l) for l in got[:len(shown)]] == [shape(l) for l in shown], (cmd, r.stdout)
