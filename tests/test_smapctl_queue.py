"""smapctl's queue surgery against the live chain: smap -daemon spools,
smapd (as nobody) hands off through a gate to a private Postfix's
sendmail, Postfix delivers into a Maildir.  hold keeps a message from
the hand-off and release gives it back; delete waits for the lock of a
hand-off in progress; show prints the message as queued; requeue and
flush make messages due; queue --json feeds delete - through jq;
queue --shape counts by domain; show-config names the winning line;
check --json lists the diagnostics.  The commands are those of the
EXAMPLES of smapctl(8)."""

import grp
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from postfix import Postfix, unprivileged_sendmail
from support.daemons import Daemon
from support.process import stop
from support.programs import command, nobody_ids, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap -daemon and smapd drop privileges as root")

RCPT, SENDER = "sink@example.net", "sender@example.org"


class Chain:
    """smap -daemon and Postfix for the module; smapd started per test."""

    def __init__(self, base: Path, dns_port: int):
        self.base = base
        self.postfix = Postfix(base)
        self.smap = Daemon(base / "smap", dns_port, "smap: maxperhost 100\nsmap: maxpernet 100\n")
        self.spool = self.smap.spool
        # The MTA's stand-in gate: open while the file `open` exists; a
        # hand-off that finds it closed waits there, holding its lock, and
        # then exits 75 (deferred) if the file `fail` exists.
        self.gate = base / "gate"
        self.gate.mkdir(mode=0o777)
        self.gate.chmod(0o777)
        (self.gate / "open").touch()
        self.script = script = base / "sendmail-gate"
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        self.table = self.smap.table  # one table for smap, smapd and smapctl, as in the reference deployment
        with open(self.table, "a") as f:
            f.write(f"smapd: directory {self.spool}\nsmapd: userid nobody\nsmapd: groupid {group}\n"
                    f"smapd: sendmail {script}\nsmapd: wakeup 1\nsmapd: retry-max 3600\n"
                    f"smapd: log-socket {self.smap.syslog.path}\n")
        self.smapd = None

    def write_gate(self):
        """The gate, once Postfix runs (its configuration directory is
        then the running instance's)."""
        self.script.write_text(f"#!/bin/sh\ntouch {self.gate}/waiting\n"
                               f"while [ ! -e {self.gate}/open ]; do sleep 0.02; done\nrm -f {self.gate}/waiting\n"
                               f"[ -e {self.gate}/fail ] && exit 75\n"
                               f"exec /usr/sbin/sendmail -C {self.postfix.config_dir} \"$@\"\n")
        self.script.chmod(0o755)

    def start_smapd(self):
        self.smapd = subprocess.Popen([command("smapd"), "-f", "--config", str(self.table)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: f"smapd[{self.smapd.pid}]: started:" in self.smap.log(), what="smapd to start")

    def stop_smapd(self):
        if self.smapd is not None:
            stop(self.smapd)
            self.smapd = None

    def send(self, body=b"Subject: test\r\n\r\nhello\r\n", rcpts=(RCPT,)) -> str:
        s = self.smap.connect()
        assert s.reply()[0] == 220
        assert s.cmd("EHLO client.example.test")[0] == 250
        assert s.cmd(f"MAIL FROM:<{SENDER}>")[0] == 250
        for r in rcpts:
            assert s.cmd(f"RCPT TO:<{r}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        code, lines = s.cmd(body + b".\r\n")
        assert code == 250, lines
        assert s.cmd("QUIT")[0] == 221
        return lines[0].rsplit(" ", 1)[1]

    def smapctl(self, *args, stdin=None):
        return subprocess.run([command("smapctl"), *args, "--config", str(self.table)], input=stdin,
                              capture_output=True, text=True, timeout=60)

    def delivered(self):
        return self.postfix.mailbox(RCPT)

    def spooled(self, directory=None):
        d = Path(directory or self.spool)
        return sorted(n[3:] for n in os.listdir(d) if n.startswith("sma")) if d.is_dir() else []


@pytest.fixture(scope="module")
def chain(loopback_dns):
    base = Path(tempfile.mkdtemp(prefix="smapd-test-", dir="/tmp"))
    base.chmod(0o755)  # smapd and Postfix's sendmail, as nobody, run the gate from here
    c = Chain(base, loopback_dns)
    c.postfix.start()
    c.postfix.add_mailbox(RCPT, SENDER)
    c.write_gate()
    try:
        with unprivileged_sendmail(c.postfix):
            c.smap.start()
            try:
                yield c
            finally:
                c.stop_smapd()
                stop(c.smap.proc)
                c.smap.syslog.close()
    finally:
        c.postfix.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ch(chain):
    """The chain with smapd stopped, the gate open and the queue empty."""
    chain.stop_smapd()
    for name in ("fail",):
        (chain.gate / name).unlink(missing_ok=True)
    (chain.gate / "open").touch()
    for d in (chain.spool, chain.spool / "hold", chain.spool / "bad"):
        for n in chain.spooled(d):
            os.unlink(d / f"sma{n}")
    yield chain
    chain.stop_smapd()


def test_hold_keeps_a_message_from_the_hand_off_and_release_gives_it_back(ch):
    before = len(ch.delivered())
    held = ch.send(b"Subject: held\r\n\r\nwait for me\r\n")
    r = ch.smapctl("hold", held, "--reason", "looks odd")
    assert (r.returncode, r.stdout) == (0, f"held {held}\n"), r.stderr
    assert ch.spooled() == [] and ch.spooled(ch.spool / "hold") == [held]
    ch.smap.syslog.wait(rf"smapctl\[\d+\]: id={held} held by root \(uid 0\); it was in spool: looks odd")
    ch.start_smapd()
    other = ch.send(b"Subject: other\r\n\r\nnot held\r\n")
    wait_for(lambda: len(ch.delivered()) == before + 1, what="the message that is not held")
    assert b"not held" in ch.delivered()[-1]
    # smapd handed off the other one and never the held one
    assert not [line for line in ch.smap.syslog.read() if f"id={held}" in line and "smapd[" in line]
    r = ch.smapctl("queue")
    assert f"hold {ch.spool}/hold: 1 message" in r.stdout and "next=never (held)" in r.stdout, r.stdout
    r = ch.smapctl("release", "all")
    assert (r.returncode, r.stdout) == (0, f"released {held}\n"), r.stderr
    wait_for(lambda: len(ch.delivered()) == before + 2, what="the released message")
    assert b"wait for me" in ch.delivered()[-1]
    assert ch.spooled(ch.spool / "hold") == []


def test_delete_waits_for_the_hand_off_that_holds_the_lock(ch):
    (ch.gate / "open").unlink()
    (ch.gate / "fail").touch()
    ch.start_smapd()
    qid = ch.send(b"Subject: delete me\r\n\r\nnever delivered\r\n")
    wait_for(lambda: (ch.gate / "waiting").exists(), what="the hand-off to reach the gate")
    # The hand-off holds the lock: with --wait 0, delete gives up at once.
    r = ch.smapctl("delete", "--wait", "0", qid)
    assert r.returncode == 1 and "still locked by a hand-off" in r.stderr, r.stderr
    assert ch.spooled() == [qid]
    deleting = subprocess.Popen([command("smapctl"), "delete", qid, "--reason", "spam", "--config", str(ch.table)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # smapctl waits in the kernel for the lock (a blocked waiter in /proc/locks)
    wait_for(lambda: any("->" in line and f" {deleting.pid} " in line
                         for line in Path("/proc/locks").read_text().splitlines()), what="smapctl to wait for the lock")
    assert deleting.poll() is None and ch.spooled() == [qid]
    (ch.gate / "open").touch()  # the MTA fails: smapd defers the file and lets go of it
    out, err = deleting.communicate(timeout=30)
    assert (deleting.returncode, out) == (0, f"deleted {qid}\n"), err
    assert ch.spooled() == [] and not any(b"never delivered" in m for m in ch.delivered())
    log = ch.smap.log()
    assert f"id={qid} deferred" in log
    ch.smap.syslog.wait(rf"smapctl\[\d+\]: id={qid} deleted by root \(uid 0\); it was in spool: spam")


def test_show_prints_the_message_exactly_as_queued(ch):
    body = b"Subject: show me\r\nX-Long: " + b"x" * 900 + b"\r\n\r\n..a stuffed dot\r\n8-bit \xc3\xa9\r\n"
    qid = ch.send(body, rcpts=(RCPT, "second@example.net"))
    r = subprocess.run([command("smapctl"), "show", "-m", qid, "--config", str(ch.table)], capture_output=True)
    assert r.returncode == 0, r.stderr
    raw = (ch.spool / f"sma{qid}").read_bytes()
    assert r.stdout == raw[raw.index(b"\nBODY\n") + 6:]
    received, _, message = r.stdout.partition(b"\n" + b"Subject")
    assert received.startswith(b"Received: from client.example.test")
    assert b"Subject" + message == body.replace(b"\r\n", b"\n").replace(b"\n..", b"\n.")
    r = ch.smapctl("show", qid)
    lines = r.stdout.splitlines()
    assert lines[0] == f"*** ENVELOPE RECORDS {qid} ***"
    assert f"sender: <{SENDER}>" in lines and f"recipient: <{RCPT}> (pending)" in lines
    assert "recipient: <second@example.net> (pending)" in lines and "attribute: client-addr=127.0.0.1" in lines
    assert f"*** MESSAGE CONTENTS {qid} ***" in lines
    doc = json.loads(ch.smapctl("show", "--json", qid).stdout)
    assert doc[0]["id"] == qid and doc[0]["sender"] == SENDER and doc[0]["pending"] == 2
    r = ch.smapctl("show", "NOSUCH1")
    assert r.returncode == 1 and "no message NOSUCH1" in r.stderr


def test_queue_json_through_jq_feeds_delete_from_stdin(ch):
    ids = [ch.send(rcpts=("a@example.com",)), ch.send(rcpts=("b@example.com", "c@example.net")),
           ch.send(rcpts=(RCPT,))]
    doc = json.loads(ch.smapctl("queue", "--json").stdout)
    assert sorted(m["id"] for m in doc["messages"]) == sorted(ids)
    assert {q["queue"]: q["messages"] for q in doc["queues"]} == {"spool": 3, "hold": 0, "bad": 0}
    # The man page's example: delete what is queued for example.com
    pipeline = (f"smapctl queue --json --config {ch.table} | jq -r '.messages[] | "
                f"select(any(.recipients[]; .address | endswith(\"@example.com\"))) | .id' | "
                f"smapctl delete --config {ch.table} --reason 'domain gone' -")
    r = subprocess.run(["sh", "-c", pipeline], capture_output=True, text=True,
                       env=dict(os.environ, PATH=f"{Path(command('smapctl')).parent}:{os.environ['PATH']}"))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(["deleted", ids[0], "deleted", ids[1]])
    assert ch.spooled() == [ids[2]]


def test_queue_shape_counts_messages_by_domain_and_age(ch):
    for rcpts in (("a@example.com",), ("b@example.com", "c@example.net"), ("d@example.org",)):
        ch.send(rcpts=rcpts)
    lines = ch.smapctl("queue", "--shape").stdout.splitlines()
    assert lines[0].split() == ["T", "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"]
    rows = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines[1:]}
    assert rows["TOTAL"][:2] == [3, 3] and rows["example.com"][:2] == [2, 2]
    assert rows["example.net"][:2] == [1, 1] and rows["example.org"][:2] == [1, 1]
    doc = json.loads(ch.smapctl("queue", "--shape", "--json").stdout)
    assert doc["total"]["count"] == 3 and doc["domains"][0] == {"domain": "example.com", "count": 2,
                                                                 "by_age": [2] + [0] * 9}


def test_requeue_and_flush_one_message_of_the_spool(ch):
    (ch.gate / "fail").touch()
    ch.start_smapd()
    before = len(ch.delivered())
    qid = ch.send(b"Subject: retried\r\n\r\nsecond try\r\n")
    wait_for(lambda: f"id={qid} deferred" in ch.smap.log(), what="the deferral")
    r = ch.smapctl("queue")
    assert "next=in " in r.stdout and "last error:" in r.stdout, r.stdout
    (ch.gate / "fail").unlink()
    r = ch.smapctl("flush", qid)
    assert (r.returncode, r.stdout) == (0, f"made due {qid}\n"), r.stderr
    wait_for(lambda: len(ch.delivered()) == before + 1, what="the flushed message")
    # requeue of a spooled message: due now, its last error forgotten
    (ch.gate / "fail").touch()
    qid = ch.send()
    wait_for(lambda: f"id={qid} deferred" in ch.smap.log(), what="the second deferral")
    ch.stop_smapd()
    r = ch.smapctl("requeue", qid)
    assert (r.returncode, r.stdout) == (0, f"requeued {qid}\n"), r.stderr
    r = ch.smapctl("queue", "--json")
    m = json.loads(r.stdout)["messages"][0]
    assert m["id"] == qid and m["last_error"] is None and m["next_attempt"] <= m["arrival"] + m["age"] + 2


def test_show_config_names_the_line_that_wins(ch, tmp_path):
    table = tmp_path / "netperm-table"
    table.write_text("smapd: directory /var/spool/smap\nsmapd: wakeup 5\n*: wakeup 9\n"
                     "smap: permit-hosts 127.0.0.1\nsmap: deny-hosts *\n")
    r = subprocess.run([command("smapctl"), "show-config", "-n", "smapd", "--config", str(table)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"# smapd, reading the lines of smapd (and *) in {table}"
    assert [line for line in lines if line.startswith("wakeup")] == \
        [f"wakeup 5                   # {table}:2; {table}:3 ignored (the first line wins)"]
    r = subprocess.run([command("smapctl"), "show-config", "smapd", "--json", "--config", str(table)],
                       capture_output=True, text=True)
    settings = {e["keyword"]: e for e in json.loads(r.stdout)["settings"]}
    assert settings["wakeup"]["source"] == f"{table}:2" and settings["wakeup"]["ignored"] == \
        [{"file": str(table), "line": 3}]
    assert settings["baddir"]["source"] == "default" and settings["baddir"]["value"] == "/var/spool/smap/bad"
    r = subprocess.run([command("smapctl"), "show-config", "smap", "-n", "--config", str(table)],
                       capture_output=True, text=True)
    assert f"permit-hosts 127.0.0.1  # {table}:4" in r.stdout and f"deny-hosts *            # {table}:5" \
        in r.stdout, r.stdout


def test_check_json_lists_each_diagnostic_with_its_place(tmp_path):
    table = tmp_path / "netperm-table"
    table.write_text("smapd: wakeup 5\nsmapd: wakeup 9\nsmap: maxbytes lots\nsmapd: wakup 1\n")
    r = subprocess.run([command("smapctl"), "check", "-n", "--json", "--config", str(table)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    found = {(d["line"], d["severity"], d["program"], d["keyword"]) for d in doc["diagnostics"]}
    assert {(2, "warning", "smapd", "wakeup"), (3, "error", "smap", "maxbytes"),
            (4, "warning", "smapd", "wakup")} <= found
    assert doc["errors"] == len([d for d in doc["diagnostics"] if d["severity"] == "error"])
