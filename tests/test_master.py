"""smap -daemon: the prefork master and its jailed children, started as
root on high ports, checked from /proc, the scoreboard, the spool, the
log and what SMTP clients see."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from support.daemons import Daemon
from support.programs import command, free_port, nobody_ids, proc_status, wait_for
from smapd import spool as queue
from smapd.prefork.scoreboard import BUSY, FREE, IDLE, STOPPING

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the master binds, chroots and drops privileges as root")


def transaction(s, body=b"Subject: t\r\n\r\nhello\r\n", helo="client.example.test", quit=True):
    """A whole SMTP transaction after the greeting; the 250's text."""
    assert s.cmd(f"EHLO {helo}")[0] == 250
    assert s.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert s.cmd("RCPT TO:<b@example.net>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    code, lines = s.cmd(body + b".\r\n")
    assert code == 250, lines
    if quit:
        assert s.cmd("QUIT")[0] == 221
        s.close()
    return lines[-1]


def in_data(d):
    """A new session, greeted, inside DATA: the 354 received."""
    s = d.connect()
    assert s.reply()[0] == 220
    for line in ("EHLO client.example.test", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>"):
        assert s.cmd(line)[0] == 250
    assert s.cmd("DATA")[0] == 354
    return s


def spooled(spool, prefix="sma"):
    return sorted(f for f in os.listdir(spool) if f.startswith(prefix))


def read_spooled(spool, name):
    with open(os.path.join(spool, name), "rb") as f:
        env = queue.read_envelope(f)
        return env, f.read()


# ------------------------------------------------------------------ jail

def test_master_is_the_only_root_process_and_children_are_jailed(daemon):
    d = daemon("smap: minspare 3\nsmap: maxspare 3\n")
    d.wait_idle(3)
    s = d.connect()
    assert s.reply()[0] == 220
    uid, gid = nobody_ids()
    assert proc_status(d.master)["Uid"].split()[0] == "0"
    kids = d.kids()
    assert len(kids) >= 3  # a fourth may be starting: the busy one left two spare
    for pid in kids:
        wait_for(lambda: os.readlink(f"/proc/{pid}/root") != "/", what="the child to enter its jail")
        st = proc_status(pid)
        assert st["Uid"].split() == [str(uid)] * 4
        assert st["Gid"].split() == [str(gid)] * 4
        assert st["Groups"].split() == [str(gid)]
        assert st["CapEff"] == "0000000000000000" and st["CapPrm"] == "0000000000000000"
        # Nothing can come back through an exec: no bounding set, no_new_privs.
        assert st["CapBnd"] == "0000000000000000" and st["CapAmb"] == "0000000000000000"
        assert st["NoNewPrivs"] == "1"
        assert os.readlink(f"/proc/{pid}/root") == str(d.spool)
        assert os.readlink(f"/proc/{pid}/cwd") == str(d.spool)
        # Every path the child opens resolves under its root, the spool:
        assert not os.path.exists(f"/proc/{pid}/root/etc/passwd")
        # and it holds no descriptor that leads out of it (a directory to
        # fchdir to, a file of the master's).
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            assert target.startswith(("socket:", "pipe:", "/dev/null", "anon_inode:")), (pid, fd, target)
    assert transaction(s).startswith("250 2.0.0 Ok: queued as ")
    # The lookup ran inside the jail through the resolver prepared outside it.
    [name] = spooled(d.spool)
    env, body = read_spooled(d.spool, name)
    assert b"from client.example.test (client.example.test [127.0.0.1])" in body


def test_children_refuse_to_run_as_root_and_the_master_says_so(daemon):
    d = daemon(start=False)
    d.table.write_text(d.table.read_text().replace("userid nobody", "userid root"))
    r = subprocess.run([command("smap"), "-daemon", "-f", "--config", str(d.table)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "refusing to run children as uid 0" in r.stderr
    assert not d.pidfile.exists() or d.pidfile.read_text() == ""


def test_children_dying_at_boot_are_respawned_with_growing_pauses(daemon):
    d = daemon("smap: minspare 1\nsmap: maxspare 1\n")
    d.wait_idle(1)
    os.rename(d.spool, str(d.spool) + ".away")  # the jail is gone: every new child fails to chroot
    try:
        for pid in d.kids():
            os.kill(pid, signal.SIGKILL)
        d.syslog.wait(r"died while starting \(exit status 3\); next child in 2s")
        started = time.monotonic()
        d.syslog.wait(r"next child in 4s")
        assert time.monotonic() - started > 1.5  # paused, not a fork storm
        assert len(re.findall(r"died while starting", d.log())) <= 4
    finally:
        os.rename(str(d.spool) + ".away", d.spool)
    d.wait_idle(1)
    s = d.connect()
    assert s.reply()[0] == 220
    transaction(s)


# ------------------------------------------------------------------ pool

def test_two_hundred_sessions_against_fifty_children(daemon):
    d = daemon("smap: minspare 5\nsmap: maxspare 8\nsmap: maxchildren 50\nsmap: maxperhost 250\nsmap: maxpernet 250\n")
    d.wait_idle(5)
    results, most = [], [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            most[0] = max(most[0], len(d.kids()))
            done.wait(0.05)  # a sampling period, not a synchronisation

    def client(i):
        try:
            s = d.connect()
            code, lines = s.reply()
            if code != 220:
                results.append(("refused", code))
                return
            transaction(s, body=f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode())
            results.append(("ok", i))
        except Exception as e:  # what a client would see: recorded, asserted below
            results.append(("error", repr(e)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    watcher.join()
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors[:5]
    refused = [r for r in results if r[0] == "refused"]
    assert all(400 <= code < 500 for _, code in refused)
    ok = [r for r in results if r[0] == "ok"]
    assert len(ok) + len(refused) == 200
    assert len(spooled(d.spool)) == len(ok)
    assert most[0] <= 50
    assert d.proc.poll() is None
    d.wait_idle(8)  # shrinks back to maxspare
    b = d.board()
    live = [b.slot(i) for i in range(b.slots) if b.state(i) != FREE]
    assert b.header()["retired"] + sum(slot.served for slot in live) == 200
    b.close()


def test_maxperhost(daemon):
    d = daemon("smap: minspare 4\nsmap: maxspare 6\nsmap: maxperhost 2\n")
    d.wait_idle(4)
    first, second = d.connect(), d.connect()
    assert first.reply()[0] == 220 and second.reply()[0] == 220
    third = d.connect()
    code, lines = third.reply()
    assert code == 421 and lines[0].startswith("421 4.7.0") and third.closed()
    d.syslog.wait(r"refused: too many connections from this host \(maxperhost 2\)")
    transaction(first)
    wait_for(lambda: d.count(BUSY) == 1, what="the first session's slot to be free")
    fourth = d.connect()
    assert fourth.reply()[0] == 220
    transaction(fourth)
    transaction(second)


def test_maxperhost_counts_sessions_of_old_children_after_a_reload(daemon):
    """After HUP the children that are in a session finish it as
    'stopping' (an older generation): they still count for maxperhost,
    or one address would hold twice the limit after each reload."""
    d = daemon("smap: minspare 4\nsmap: maxspare 6\nsmap: maxperhost 2\n")
    d.wait_idle(4)
    first, second = d.connect(), d.connect()
    assert first.reply()[0] == 220 and second.reply()[0] == 220
    d.signal(signal.SIGHUP)
    d.syslog.wait(r"reloaded: listening on")
    wait_for(lambda: d.count(STOPPING) == 2, what="the two sessions to be in stopping children")
    third = d.connect()
    code, lines = third.reply()
    assert code == 421 and lines[0].startswith("421 4.7.0"), lines
    assert third.closed()
    transaction(first)
    wait_for(lambda: d.count(STOPPING) == 1 and d.count(BUSY) == 0,
             what="the first old child and the refusing one to be done")
    fourth = d.connect()
    assert fourth.reply()[0] == 220
    transaction(fourth)
    transaction(second)


def test_after_quit_the_child_does_not_wait_for_the_clients_close(daemon):
    """After its 221 a client has nothing in flight: the child closes at
    once and is free for the next connection, instead of lingering until
    the client's own close (two seconds for a client that keeps its end
    open, a round trip for every other)."""
    d = daemon("smap: minspare 1\nsmap: maxspare 1\n")
    d.wait_idle(1)
    s = d.connect()
    assert s.reply()[0] == 220
    assert s.cmd("QUIT")[0] == 221
    assert s.closed()  # our end stays open
    wait_for(lambda: d.count(BUSY) == 0 and d.count(IDLE) >= 1, timeout=1.0, what="the child idle again")
    s.close()


def test_titles_and_smapctl_stats(daemon):
    d = daemon("smap: minspare 2\nsmap: maxspare 2\n")
    d.wait_idle(2)
    s = d.connect()
    assert s.reply()[0] == 220
    assert s.cmd("EHLO client.example.test")[0] == 250
    assert s.cmd("MAIL FROM:<a@example.org>")[0] == 250

    def cmdline(pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode()
    wait_for(lambda: "smap: 127.0.0.1 MAIL" in [cmdline(p) for p in d.kids()], what="the busy child's title")
    assert "smap: idle" in [cmdline(p) for p in d.kids()]
    wait_for(lambda: re.fullmatch(r"smap: master, \d+ children, 1 busy", cmdline(d.master)),
             what="the master's title")
    r = subprocess.run([command("smapctl"), "stats", "--config", str(d.table)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"master pid {d.master}, up \d+s, generation 0, \d+ children of 100: 1 busy", r.stdout)
    assert re.search(r"^\s+\d+\s+\d+ busy\s+\d+s\s+0  127\.0\.0\.1 MAIL$", r.stdout, re.M), r.stdout
    transaction(s)


def test_listen_without_address_serves_ipv4_and_ipv6(daemon):
    d = daemon(start=False)
    d.write_table("smap: minspare 2\n", listen=[str(d.port)])
    d.start()
    for addr in ("127.0.0.1", "::1"):
        s = d.connect(addr)
        assert s.reply()[0] == 220
        transaction(s)
    d.syslog.wait(r"connect host=unknown/::1 id=\S+$")


# --------------------------------------------------------------- signals

def test_hup_reloads_without_dropping_sessions(daemon):
    d = daemon("smap: minspare 2\nsmap: maxspare 4\nsmap: banner before reload\n")
    d.wait_idle(2)
    held = []
    for _ in range(3):
        s = d.connect()
        assert s.reply() == (220, ["220 before reload"])
        assert s.cmd("EHLO client.example.test")[0] == 250
        assert s.cmd("MAIL FROM:<a@example.org>")[0] == 250
        held.append(s)
    old = set(d.kids())

    # A broken table is refused; the old one keeps serving.
    good = d.table.read_text()
    d.table.write_text(good + "smap: maxchildren lots\n")
    d.signal(signal.SIGHUP)
    d.syslog.wait(r"reload refused: the table has errors")
    assert re.search(r"netperm-table:\d+: .*maxchildren", d.log())
    s = d.connect()
    assert s.reply() == (220, ["220 before reload"])
    transaction(s)

    # A good one replaces every child; a new listener is bound, the old kept.
    port2 = free_port()
    d.write_table("smap: minspare 2\nsmap: maxspare 4\nsmap: banner after reload\n",
                  listen=[f"127.0.0.1:{d.port}", f"127.0.0.1:{port2}"])
    d.signal(signal.SIGHUP)
    d.syslog.wait(r"reloaded: listening on 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+")
    for port in (d.port, port2):
        s = wait_for(lambda: _greets(d, port, "after reload"), what="a new child's greeting")
        transaction(s)
    # Sessions that began before the reload end normally, each in its old child.
    for s in held:
        assert s.cmd("RCPT TO:<b@example.net>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        assert s.cmd(b"Subject: held\r\n\r\nx\r\n.\r\n")[0] == 250
        assert s.cmd("QUIT")[0] == 221
    wait_for(lambda: not (old & set(d.kids())), what="the old children to exit")
    assert len(spooled(d.spool)) == 6


def _greets(d, port, banner):
    s = d.connect(port=port)
    if s.reply() == (220, [f"220 {banner}"]):
        return s
    s.close()
    return None


def test_usr1_reopens_the_log_and_replaces_the_children(daemon):
    d = daemon("smap: minspare 2\nsmap: maxspare 2\n")
    d.wait_idle(2)
    old = set(d.kids())
    d.signal(signal.SIGUSR1)
    d.syslog.wait(r"log reopened; replacing the children")
    wait_for(lambda: not (old & set(d.kids())) and d.count(IDLE) == 2, what="new children")
    s = d.connect()
    assert s.reply()[0] == 220
    transaction(s)
    d.syslog.wait(r"bytes=\d+ from=<a@example.org>")  # the new children log through the new socket


def test_term_lets_a_session_in_data_complete(daemon):
    d = daemon("smap: minspare 2\n")
    d.wait_idle(2)
    s = in_data(d)
    s.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    d.signal(signal.SIGTERM)
    d.syslog.wait(r"stopping: \d+ children")

    def refused():
        try:
            socket.create_connection(("127.0.0.1", d.port), timeout=5).close()
            return False
        except ConnectionRefusedError:
            return True
    wait_for(refused, what="no more listening while the last session ends")
    assert d.proc.poll() is None
    assert s.cmd(b"second half\r\n.\r\n")[0] == 250
    assert s.cmd("QUIT")[0] == 221
    assert d.proc.wait(20) == 0
    [name] = spooled(d.spool)
    assert read_spooled(d.spool, name)[1].endswith(b"first half\nsecond half\n")
    assert not d.pidfile.exists() and not d.scoreboard.exists()
    d.syslog.wait(r"stopped$")


def test_int_stops_at_once_and_leaves_nothing_half_written(daemon):
    d = daemon("smap: minspare 2\n")
    d.wait_idle(2)
    s = in_data(d)
    s.send(b"Subject: cut\r\n\r\nhalf\r\n")
    wait_for(lambda: spooled(d.spool, "xma"), what="the message being written")
    d.signal(signal.SIGINT)
    assert d.proc.wait(20) == 0
    assert s.closed()
    assert spooled(d.spool) == [] and spooled(d.spool, "xma") == []


def test_kill_9_of_a_child_gets_it_replaced(daemon):
    d = daemon("smap: minspare 2\nsmap: maxspare 2\n")
    d.wait_idle(2)
    # A busy one: its client loses the connection, nothing is spooled.
    s = in_data(d)
    s.send(b"Subject: killed\r\n\r\npartial\r\n")
    b = d.board()
    busy = [b.slot(i).pid for i in range(b.slots) if b.state(i) == BUSY]
    b.close()
    [victim] = busy
    os.kill(victim, signal.SIGKILL)
    assert s.closed()
    d.syslog.wait(rf"child {victim} killed by signal 9 in a session")
    # An idle one.
    idle = [p for p in d.kids() if p != victim][0]
    os.kill(idle, signal.SIGKILL)
    d.syslog.wait(rf"child {idle} killed by signal 9$")
    d.wait_idle(2)
    assert not ({victim, idle} & set(d.kids()))
    assert spooled(d.spool) == []
    s = d.connect()
    assert s.reply()[0] == 220
    transaction(s)
    assert len(spooled(d.spool)) == 1


def test_kill_9_of_the_master(daemon):
    d = daemon("smap: minspare 3\n")
    d.wait_idle(3)
    s = in_data(d)
    s.send(b"Subject: orphan\r\n\r\nbegun under the old master\r\n")
    kids = d.kids()
    os.kill(d.master, signal.SIGKILL)
    d.proc.wait(20)
    # The idle children go at once; the busy one finishes its session.
    wait_for(lambda: sum(1 for p in kids if _alive(p)) == 1, what="the idle children to exit")
    # It no longer listens: a new master binds the same port at once.
    d2 = Daemon(d.base / "again", d.dns_port)
    d2.port = d.port
    d2.spool = d.spool
    d2.write_table("smap: minspare 1\n")
    d2.start()
    try:
        assert s.cmd(b"finished\r\n.\r\n")[0] == 250
        assert s.cmd("QUIT")[0] == 221
        wait_for(lambda: not any(_alive(p) for p in kids), what="the last old child to exit")
        s2 = d2.connect()
        assert s2.reply()[0] == 220
        transaction(s2)
    finally:
        d2.stop()
    names = spooled(d.spool)
    assert len(names) == 2 and spooled(d.spool, "xma") == []
    bodies = [read_spooled(d.spool, n)[1] for n in names]
    assert any(b.endswith(b"begun under the old master\nfinished\n") for b in bodies)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --------------------------------------------------------- pid file, detach

def test_detaches_writes_and_removes_its_pid_file(daemon):
    d = daemon("smap: minspare 1\n", start=False)
    r = subprocess.run([command("smap"), "-daemon", "--config", str(d.table)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    pid = int(wait_for(lambda: d.pidfile.read_text().strip(), what="the pid file"))
    try:
        st = proc_status(pid)
        assert int(st["PPid"]) != os.getpid() and st["Uid"].split()[0] == "0"
        d.syslog.wait(rf"<22>smap\[{pid}\]: started: listening on 127\.0\.0\.1:{d.port}")
        again = subprocess.run([command("smap"), "-daemon", "--config", str(d.table)], capture_output=True,
                               text=True, timeout=30)
        assert again.returncode == 1
        assert f"already running: the pid file {d.pidfile} is locked by pid {pid}" in again.stderr
        s = d.connect()
        assert s.reply()[0] == 220
        transaction(s)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not _alive(pid), what="the master to stop")
    wait_for(lambda: not d.pidfile.exists(), what="the pid file to go")
    assert not d.scoreboard.exists()


def test_a_reader_never_sees_the_header_half_written(tmp_path):
    """smapctl stats (and each child, for the stress flag) reads the header
    while the master rewrites it (at every reap, at every change of stress).
    A rewrite must never show a reader anything but the old or the new
    header: struct's pack_into clears its bytes before it fills them."""
    from smapd.prefork.scoreboard import Scoreboard
    path = str(tmp_path / "board")
    board = Scoreboard.create(path, 8, os.getpid())
    pid = os.fork()
    if pid == 0:  # the master's part: rewrite the header as fast as it can
        try:
            n = 0
            while True:
                n += 1
                board.set_header(os.getppid(), n % 3, n, stress=bool(n & 1))
        finally:
            os._exit(0)
    try:
        seen, deadline = 0, time.monotonic() + 2
        reader = Scoreboard.open_readonly(path)
        while time.monotonic() < deadline:
            assert reader.mm[:8] == b"SMAPSB02"
            assert reader.header()["slots"] == 8
            seen += 1
        reader.close()
        assert seen > 1000
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
