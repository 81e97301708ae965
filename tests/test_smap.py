"""smap in inetd mode, the installed program on a real TCP connection:
SMTP smuggling, hostile input, and durability of the spool."""

import errno
import os
import re
import signal
import socket
import subprocess
import threading

import pytest

from support.programs import make_spool, wait_for
from support.smtp import Smtp
from smapd import spool as spool_module
from smapd.handoff import deliver
from smapd.smap.protocol import Protocol, Settings
from smapd.smap.session import Limits, Session
from support.process import stop


def spool_files(spool, prefix=""):
    return sorted(f for f in os.listdir(spool) if f.startswith(prefix) and f != "bad")


def envelope(s, sender="a@example.org", rcpts=("b@example.net",)):
    assert s.reply()[0] == 220
    assert s.cmd("EHLO client.example")[0] == 250
    assert s.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    for r in rcpts:
        assert s.cmd(f"RCPT TO:<{r}>")[0] == 250
    assert s.cmd("DATA")[0] == 354


@pytest.fixture
def spool(tmp_path):
    return make_spool(tmp_path / "spool")


# --------------------------------------------------------------- smuggling

SMUGGLED = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n"
SEQUENCES = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\n.\r", b"\r.\n",
             b"\r\n\x00.\r\n", b"\r\n.\r\r\n"]


@pytest.mark.parametrize("mode", ["strict", "normalize"])
@pytest.mark.parametrize("seq", SEQUENCES, ids=[repr(s)[2:-1] for s in SEQUENCES])
def test_smuggling_never_ends_the_message(smap_table, spool, smap, mode, seq):
    table = smap_table(spool, f"smap: crlf {mode}\n")
    s = smap(table).smtp
    envelope(s)
    s.send(b"Subject: test\r\n\r\nbefore" + seq + SMUGGLED + b"after\r\n.\r\n")
    code, lines = s.reply()
    # One reply for the one message: accepted as a whole, or refused as a whole.
    assert code in (250, 550), lines
    assert s.cmd("QUIT") == (221, ["221 2.0.0 Bye"])
    assert s.closed()
    files = spool_files(spool, "sma")
    if code == 550:
        assert lines[0].startswith(("550 5.5.2", "550 5.6.0")) and files == []
        return
    assert len(files) == 1
    body = open(os.path.join(spool, files[0]), "rb").read()
    head = body.split(b"BODY\n")[0].splitlines()
    # The envelope is the client's own: its ATTR lines, then its one recipient.
    assert [l for l in head if not l.startswith(b"ATTR ")] == [b"FROM <a@example.org>", b"RCPT <b@example.net>"]
    assert b"smuggled" in body and body.endswith(b"after\n")
    assert b"\r" not in body  # one canonical line form for the MTA


def test_strict_mode_refuses_every_bare_line_end(smap_table, spool, smap):
    # In strict mode each sequence makes the message invalid: nothing is spooled.
    for seq in SEQUENCES:
        if seq == b"\r\n\x00.\r\n":
            continue
        s = smap(smap_table(spool)).smtp
        envelope(s)
        s.send(b"x" + seq + b"y\r\n.\r\n")
        code, lines = s.reply()
        assert (code, lines) == (550, ["550 5.5.2 Error: bare <LF>/<CR> received"]), seq
        s.cmd("QUIT")
    assert spool_files(spool) == []


def test_bare_lf_commands_are_not_executed_in_strict_mode(smap_table, spool, smap):
    s = smap(smap_table(spool)).smtp
    assert s.reply()[0] == 220
    assert s.cmd("HELO c.example")[0] == 250
    # One line to smap: "MAIL FROM:<a@x.example>\nRCPT TO:<b@y.example>"
    assert s.cmd(b"MAIL FROM:<a@x.example>\nRCPT TO:<b@y.example>\r\n") == \
        (500, ["500 5.5.2 Error: bare <CR> or <LF> in command"])
    assert s.cmd("RCPT TO:<b@y.example>")[0] == 503  # MAIL was never executed
    s.send(b"QUIT\n")  # not a command yet: still waiting for CRLF
    assert s.cmd("") == (500, ["500 5.5.2 Error: bare <CR> or <LF> in command"])
    assert s.cmd("QUIT")[0] == 221


def test_normalize_mode_accepts_bare_lf_in_data(smap_table, spool, smap):
    s = smap(smap_table(spool, "smap: crlf normalize\n")).smtp
    envelope(s)
    s.send(b"Subject: lf\n\nline one\nline two\r\n.\r\n")
    assert s.reply()[0] == 250
    f = spool_files(spool, "sma")[0]
    assert open(os.path.join(spool, f), "rb").read().endswith(b"Subject: lf\n\nline one\nline two\n")


def test_greet_delay_refuses_early_talkers(smap_table, spool, smap):
    table = smap_table(spool, "smap: greet-delay 2\n")
    hasty = smap(table)
    # smap has logged the connection: it is now in its greet-delay.
    wait_for(lambda: "connect host=" in hasty.log, what="smap to start")
    # It has sent the first line of its greeting only (postscreen's pregreet test).
    hasty.smtp.send(b"EHLO hasty.example\r\n")
    assert hasty.smtp.reply() == (554, ["220-test.example ESMTP",
                                        "554 5.5.0 Protocol error: talking before the greeting"])
    wait_for(lambda: "early talker" in hasty.log, what="the refusal in the log")
    patient = smap(table).smtp
    assert patient.reply() == (220, ["220-test.example ESMTP", "220 test.example SMTP/smap Ready."])
    assert patient.cmd("QUIT")[0] == 221


# ----------------------------------------------------------- hostile input

def test_control_characters_and_dashes(smap_table, spool, smap):
    s = smap(smap_table(spool)).smtp
    assert s.reply()[0] == 220
    assert s.cmd(b"HELO a\x00b\r\n") == (501, ["501 5.5.2 Error: control characters are not allowed in commands"])
    assert s.cmd(b"HELO a\x1bb\r\n")[0] == 501
    assert s.cmd(b"HELO caf\xc3\xa9\r\n") == (501, ["501 5.5.2 Error: 8-bit characters are not allowed in commands"])
    assert s.cmd("HELO c.example")[0] == 250
    assert s.cmd("MAIL FROM:<-f/etc/passwd@x.example>")[0] == 553
    assert s.cmd("MAIL FROM:<a@x.example>")[0] == 250
    assert s.cmd("RCPT TO:<-oQ/tmp@y.example>") == \
        (553, ["553 5.1.3 Bad recipient address: an address may not start with '-'"])
    assert s.cmd(b"RCPT TO:<b\x00@y.example>\r\n")[0] == 501
    assert s.cmd("QUIT")[0] == 221
    assert spool_files(spool) == []


def test_quoted_local_parts_are_judged_dequoted(smap_table, spool, smap):
    """What smapd would refuse never gets 250; what gets 250 is spooled as
    written and passes smapd's check."""
    s = smap(smap_table(spool)).smtp
    assert s.reply()[0] == 220
    assert s.cmd("EHLO c.example")[0] == 250
    assert s.cmd("MAIL FROM:<a@x.example>")[0] == 250
    for refused, c in (("|prog@example.org", "|"), ('"|prog"@example.org', "|"), ('"-oQ/tmp"@example.org', "-"),
                       ('"/etc/passwd"@example.org', "/")):
        assert s.cmd(f"RCPT TO:<{refused}>") == \
            (553, [f"553 5.1.3 Bad recipient address: an address may not start with '{c}', quoted or not"])
    accepted = ['"john doe"@example.org', '"a>b"@example.org', '"a<b>c"@example.org']
    for a in accepted:
        assert s.cmd(f"RCPT TO:<{a}>") == (250, ["250 2.1.5 Ok"])
    assert s.cmd("DATA")[0] == 354
    assert s.cmd("Subject: q\r\n\r\nhi\r\n.")[0] == 250
    [name] = spool_files(spool)
    with open(os.path.join(spool, name), "rb") as f:
        env = spool_module.read_envelope(f)
    assert env.recipients == accepted
    assert [deliver.address_problem(r) for r in env.recipients] == [None] * 3


def test_huge_command_line_is_consumed_not_split(smap_table, spool, smap):
    s = smap(smap_table(spool)).smtp
    assert s.reply()[0] == 220
    # 100 KB with something that would be a command after 512 octets.
    line = b"NOOP " + b"x" * 600 + b"QUIT" + b"y" * 100000 + b"\r\n"
    assert s.cmd(line) == (500, ["500 5.5.2 Error: line too long"])
    assert s.cmd("NOOP") == (250, ["250 2.0.0 Ok"])  # the session goes on
    assert s.cmd("QUIT")[0] == 221


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))


def test_ten_thousand_recipients_and_bounded_memory(smap_table, spool, smap):
    proc = smap(smap_table(spool, "smap: maxbytes 1000000\nsmap: errors-max 5\n"))
    s = proc.smtp
    assert s.reply()[0] == 220
    assert s.cmd("EHLO c.example")[0] == 250
    assert s.cmd("MAIL FROM:<a@x.example>")[0] == 250
    # Sent from another thread: smap answers while the client still sends.
    sender = threading.Thread(target=s.send, args=(b"".join(b"RCPT TO:<r%d@y.example>\r\n" % i
                                                            for i in range(10000)),))
    sender.start()
    codes = [s.reply()[0] for _ in range(10000)]
    sender.join()
    assert codes == [250] * 100 + [452] * 9900  # 452 is no error: the session goes on
    assert s.cmd("DATA")[0] == 354
    # 30 MB with a 5 MB line without any line end, against maxbytes 1 MB; holding
    # the message in memory would take smap far over the bound below.
    s.send(b"a" * 5000000 + b"\r\n")
    for _ in range(25):
        s.send(b"b" * 999 + b"\r\n" + b"c" * 1000000)
    s.send(b"\r\n.\r\n")
    assert s.reply() == (552, ["552 5.3.4 Error: message too big"])
    assert spool_files(spool) == []
    hwm = vm_hwm_kb(proc.proc.pid)
    assert hwm < 45000, f"smap peak memory was {hwm} kB (about 28 MB is normal)"
    assert s.cmd("MAIL FROM:<a@x.example>")[0] == 250
    assert s.cmd("RCPT TO:<b@y.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(b"small\r\n.\r\n")[0] == 250
    assert s.cmd("QUIT")[0] == 221
    files = spool_files(spool)
    assert len(files) == 1 and files[0].startswith("sma")


def test_declared_size_over_the_limit(smap_table, spool, smap):
    s = smap(smap_table(spool, "smap: maxbytes 1000\n")).smtp
    assert s.reply()[0] == 220
    ehlo = s.cmd("EHLO c.example")
    assert "250-SIZE 1000" in ehlo[1]
    assert s.cmd("MAIL FROM:<a@x.example> SIZE=1001") == \
        (552, ["552 5.3.4 Error: message size exceeds the fixed limit"])


# -------------------------------------------------------------- durability

def test_sigkill_in_data_leaves_no_message(smap_table, spool, smap):
    proc = smap(smap_table(spool))
    s = proc.smtp
    envelope(s)
    s.send(b"Subject: half\r\n\r\n" + b"x" * 100000 + b"\r\n")
    wait_for(lambda: spool_files(spool, "xma"), what="the temporary spool file")
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)
    assert spool_files(spool, "sma") == []
    # The temporary file stays for smapd to remove when stale; never delivered.
    assert len(spool_files(spool, "xma")) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_full_spool_answers_451_and_loses_nothing(tmp_path, smap_table, smap):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        spool = make_spool(mnt)
        s = smap(smap_table(spool)).smtp
        envelope(s)
        s.send(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 600 + b".\r\n")
        assert s.reply() == (451, ["451 4.3.0 Error: local error in processing, try again later"])
        assert spool_files(spool) == []
        # Space is back: the session goes on and a small message is accepted.
        assert s.cmd("MAIL FROM:<a@x.example>")[0] == 250
        assert s.cmd("RCPT TO:<b@y.example>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        assert s.cmd(b"small\r\n.\r\n")[0] == 250
        assert s.cmd("QUIT")[0] == 221
        assert len(spool_files(spool, "sma")) == 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def session_with_fault(tmp_path, monkeypatch, name, error):
    """An in-process session whose spool meets `error` in os.`name`."""
    import smapd.spool as spool_module
    real = getattr(os, name)
    calls = []

    def failing(*args, **kw):
        calls.append(args)
        raise OSError(error, os.strerror(error))
    monkeypatch.setattr(spool_module.os, name, failing)
    server, client = socket.socketpair()
    session = Session(server, Protocol(Settings(hostname="test.example")), Limits(idle=10, session=30),
                      str(tmp_path), "test.example", "unknown", "192.0.2.7")
    t = threading.Thread(target=session.serve, daemon=True)
    t.start()
    s = Smtp(client)
    envelope(s)
    reply = s.cmd(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    after = s.cmd("NOOP")
    s.cmd("QUIT")
    s.close()
    t.join(10)
    monkeypatch.setattr(spool_module.os, name, real)
    return reply, after, calls


@pytest.mark.parametrize("name", ["fsync", "rename"])
def test_fsync_or_rename_failure_answers_451(tmp_path, monkeypatch, name):
    reply, after, calls = session_with_fault(tmp_path, monkeypatch, name, errno.EIO)
    assert calls, f"os.{name} was never called"
    assert reply == (451, ["451 4.3.0 Error: local error in processing, try again later"])
    assert after == (250, ["250 2.0.0 Ok"])  # the session continues
    assert os.listdir(tmp_path) == []        # no sma, no xma


def test_table_errors_never_reach_the_client(tmp_path, smap, spool):
    bad = tmp_path / "bad-table"
    bad.write_text(f"smap: directory {spool}\nsmap: maxbytes lots\n")
    proc = smap(str(bad), debug=False)
    s = proc.smtp
    assert s.reply() == (421, ["421 4.3.0 Service temporarily unavailable (configuration error)"])
    assert s.closed()
    assert proc.proc.wait(10) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="the jail needs root")
def test_inetd_mode_looks_the_client_up_inside_the_jail(tmp_path, smap_table, loopback_dns):
    """Under inetd, as in a daemon's child, DNS answers about the client
    (a client-controlled reverse zone) are parsed only after chroot and
    setuid: strace shows the order of the system calls."""
    from support.programs import children, command, free_port
    spool = make_spool(tmp_path / "spool")
    table = smap_table(spool, "smap: relay-domain example.org\n")
    trace = tmp_path / "trace"
    port = free_port()
    activate = subprocess.Popen(
        ["systemd-socket-activate", "--accept", "--inetd", "-l", f"127.0.0.1:{port}",
         "strace", "-f", "-qq", "-o", str(trace), "-e", "trace=chroot,setuid,sendto,sendmmsg",
         command("smap"), "--config", table],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def greeting():
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
            except OSError:
                return None
            return s
        s = wait_for(greeting, what="systemd-socket-activate listening")
        c = Smtp(s)
        assert c.reply()[0] == 220
        c.cmd("QUIT")
        c.close()
        wait_for(lambda: not children(activate.pid), what="smap to exit")
    finally:
        stop(activate, timeout=10)
    calls = trace.read_text().splitlines()
    chroot = next(i for i, line in enumerate(calls) if re.search(r"chroot\(\".*\"\)\s+= 0", line))
    setuid = next(i for i, line in enumerate(calls) if re.search(r"setuid\([1-9]\d*\)\s+= 0", line))
    dns = [i for i, line in enumerate(calls) if f"htons({loopback_dns})" in line]
    assert dns, "no DNS query for the client: " + "\n".join(calls)
    assert chroot < setuid < dns[0], "\n".join(calls)
