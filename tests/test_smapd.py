"""smapd, the installed program, against a fake MTA that only forces exit
statuses (and records what it was given): delivery, back-off, bounces,
refusals, time-outs, batches with SENT lines, planted and corrupt spool
files, the trigger, two smapd on one spool, signals, and SIGKILL."""

import email
import os
import re
import signal
import subprocess
import time

import pytest

from support.programs import command, make_spool, nobody_ids, wait_for
from smapd import spool as spool_module
from support.fake_mta import FakeMta
from support.process import stop

class Env:
    """A spool, a fake MTA and a table for smapd, where nobody can use them."""

    def __init__(self, base, extra=""):
        self.base = base
        self.spool = make_spool(base / "spool")
        self.bad = self.spool / "bad"
        self.fake = FakeMta(base)
        self.mta = self.fake.path
        self.table = base / "netperm-table"
        self.write_table(extra)
        self.procs = []

    def write_table(self, extra=""):
        import grp
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        self.table.write_text(f"smapd: directory {self.spool}\nsmapd: userid nobody\nsmapd: groupid {group}\n"
                              f"smapd: sendmail {self.mta}\nsmapd: wakeup 1\nsmapd: retry-max 2\n" + extra)
        self.table.chmod(0o644)

    def mode(self, m):
        self.fake.set(m)

    def queue(self, sender="a@x.example", rcpts=("b@y.example",), body=b"Subject: t\n\nhello\n"):
        """A committed message whose first line names its queue id."""
        qid = spool_module.new_queue_id()
        w = spool_module.SpoolWriter(str(self.spool), sender, list(rcpts), f"Received: {qid}\n".encode(), qid)
        w.write(body)
        w.commit()
        if os.geteuid() == 0:
            os.chown(self.spool / ("sma" + qid), *nobody_ids())
        return qid

    def plant(self, name, data: bytes):
        p = self.spool / name
        p.write_bytes(data)
        if os.geteuid() == 0:
            os.chown(p, *nobody_ids())
        return p

    def start(self):
        log = open(self.base / f"smapd{len(self.procs)}.log", "a+b")
        p = subprocess.Popen([command("smapd"), "-d", "--config", str(self.table)], stdout=log, stderr=log)
        p.logfile = log
        self.procs.append(p)
        wait_for(lambda: "started:" in self.log(p), what="smapd to start")
        return p

    def log(self, p=None):
        out = b""
        for q in ([p] if p else self.procs):
            q.logfile.seek(0)
            out += q.logfile.read()
        return out.decode("utf-8", "replace")

    def calls(self):
        """[(argv lines, body)] in order."""
        return self.fake.calls()

    def spooled(self):
        return sorted(f for f in os.listdir(self.spool) if f.startswith("sma"))

    def stop(self):
        stop(*self.procs)


@pytest.fixture
def env(public_tmp):
    e = Env(public_tmp)
    yield e
    e.stop()


def test_delivers_with_exact_argv_and_body(env):
    ids = [env.queue(rcpts=("b@y.example", "c@y.example")), env.queue(sender="")]
    p = env.start()
    wait_for(lambda: env.spooled() == [], what="the spool to drain")
    calls = env.calls()
    assert len(calls) == 2
    argvs = sorted(c[0] for c in calls)
    assert argvs == sorted([["-oi", "-f", "a@x.example", "--", "b@y.example", "c@y.example"],
                            ["-oi", "-f", "", "--", "b@y.example"]])
    assert sorted(body for _, body in calls) == sorted(f"Received: {q}\nSubject: t\n\nhello\n".encode()
                                                        for q in ids)
    for qid in ids:
        wait_for(lambda: f"id={qid} from=" in env.log(p), what="the delivery log line")
    # The hand-off's line: the delay since smap received it, and the recipients.
    assert re.search(rf"id={ids[0]} from=<a@x\.example> nrcpt=2 sent delay=\d+\.\d\d to=<b@y\.example>,<c@y\.example>$",
                     env.log(p), re.M), env.log(p)
    # smapd itself runs as nobody, with no other group
    with open(f"/proc/{p.pid}/status") as f:
        status = f.read()
    uid, gid = nobody_ids()
    assert re.search(rf"^Uid:\t{uid}\t{uid}\t{uid}\t{uid}$", status, re.M)
    assert re.search(rf"^Groups:\t{gid}\s*$", status, re.M)


def test_temporary_failure_backs_off_in_mtime_then_delivers(env):
    env.mode("exit 75")
    qid = env.queue()
    p = env.start()
    wait_for(lambda: f"id={qid} deferred: " in env.log(p), what="the deferral")
    f = env.spool / ("sma" + qid)
    mtime = os.stat(f).st_mtime
    assert time.time() < mtime <= time.time() + 2.5, "the next attempt is kept in the mtime"
    assert os.getxattr(f, "user.smapd.error").decode().endswith("exited 75")
    assert "next attempt in 2s" in env.log(p)
    env.mode("ok")
    wait_for(lambda: env.spooled() == [], what="the retry")
    assert len(env.calls()) >= 2


@pytest.mark.parametrize("mode, outcome", [("exit 67", "done"), ("exit 64", "bad"), ("exit 1", "bad")])
def test_exit_statuses(env, mode, outcome):
    env.mode(mode)
    qid = env.queue()
    p = env.start()
    if outcome == "done":
        wait_for(lambda: env.spooled() == [], what="the bounce")
        wait_for(lambda: "bounced by the MTA" in env.log(p), what="the log line")
        assert os.listdir(env.bad) == []
    else:
        wait_for(lambda: os.listdir(env.bad) == ["sma" + qid], what="the move to bad/")
        status = mode.split()[1]
        wait_for(lambda: f"id={qid} moved to " in env.log(p), what="the log line")
        assert f"refused by the MTA: {env.mta} exited {status}" in env.log(p)
        assert env.spooled() == []


@pytest.mark.parametrize("mode, why", [("kill", "killed by signal 9"), ("hang", "timed out after 1s")])
def test_signals_and_timeouts_are_temporary(env, mode, why):
    env.write_table("smapd: sendmail-timeout 1\n")
    env.mode(mode)
    qid = env.queue()
    p = env.start()
    wait_for(lambda: f"id={qid} deferred: " in env.log(p), timeout=15, what="the deferral")
    assert why in env.log(p)
    assert env.spooled() == ["sma" + qid] and os.listdir(env.bad) == []
    env.mode("ok")
    wait_for(lambda: env.spooled() == [], what="the retry")


def test_batches_with_sent_lines_never_duplicate(env):
    rcpts = [f"r{i}@y.example" for i in range(150)]
    env.mode("second-fails")
    qid = env.queue(rcpts=rcpts)
    p = env.start()
    wait_for(lambda: f"id={qid} deferred: " in env.log(p), what="the failed second batch")
    head = open(env.spool / ("sma" + qid), "rb").read().split(b"BODY\n")[0].decode()
    assert head.count("\nSENT <") == 100
    wait_for(lambda: env.spooled() == [], what="the retry of the rest")
    handed = [r for argv, _ in env.calls() for r in argv[argv.index("--") + 1:]]
    # first batch 100, failed batch 50, retried batch 50: each recipient handed
    # off once, counting only the successful runs
    assert len(env.calls()) == 3
    ok = [argv for i, (argv, _) in enumerate(env.calls()) if i != 1]
    delivered = [r for argv in ok for r in argv[argv.index("--") + 1:]]
    assert sorted(delivered) == sorted(rcpts)
    assert len(handed) == 200


@pytest.mark.parametrize("envelope, why", [
    (b"FROM <-f@x.example>\nRCPT <b@y.example>\nBODY\nhi\n",
     "refused: sender address <-f@x.example>: an address may not start with '-'"),
    (b'FROM <"|cmd"@x.example>\nRCPT <b@y.example>\nBODY\nhi\n', "may not start with '|', quoted or not"),
    (b"FROM <a b@x.example>\nRCPT <b@y.example>\nBODY\nhi\n", "not local-part@domain"),
    (b"FROM <a@x.example>\nRCPT <b@y.example>\n", "corrupt spool file: no BODY line (truncated file)"),
    (b"FROM <a@x.example>\nRCPT <b@y.example>\nhi\n", "corrupt spool file: bad envelope line b'hi'"),
    (b"RCPT <b@y.example>\nBODY\nhi\n", "corrupt spool file: the first line is not FROM"),
    (b"FROM <a@x.example>\nBODY\nhi\n", "corrupt spool file: no RCPT line"),
])
def test_planted_and_corrupt_files_go_to_bad(env, envelope, why):
    env.plant("smaPLANTED1", envelope)
    p = env.start()
    wait_for(lambda: os.listdir(env.bad) == ["smaPLANTED1"], what="the move to bad/")
    wait_for(lambda: "id=PLANTED1 moved to " in env.log(p), what="the log line")
    assert why in env.log(p)
    assert env.calls() == []  # the MTA never saw it


def test_a_refused_recipient_is_bounced_alone(env):
    """A recipient smapd refuses (here planted: smap refuses them at RCPT)
    takes no other recipient with it: the good ones are handed off, each
    refused one is named in the log and in one RFC 3464 report to the
    sender, queued through the spool from the null sender."""
    env.plant("smaPLANTED2", b'FROM <a@x.example>\nRCPT <good@y.example>\nRCPT <|/bin/sh>\n'
                             b'RCPT <"-oQ/tmp"@y.example>\nRCPT <"john doe"@y.example>\nBODY\n'
                             b"Subject: planted\nMessage-ID: <p2@x.example>\n\nsecret body\n")
    p = env.start()
    wait_for(lambda: len(env.calls()) == 2 and env.spooled() == [], what="the hand-off and the bounce")
    assert os.listdir(env.bad) == []
    (argv1, body1), (argv2, body2) = sorted(env.calls(), key=lambda c: c[0][c[0].index("-f") + 1] == "")
    assert argv1[argv1.index("--") + 1:] == ["good@y.example", '"john doe"@y.example']
    assert body1.endswith(b"\n\nsecret body\n")
    assert argv2[argv2.index("-f") + 1] == "" and argv2[argv2.index("--") + 1:] == ["a@x.example"]
    log = env.log(p)
    assert "id=PLANTED2 from=<a@x.example> to=<|/bin/sh> failed: 553 5.1.3 refused by smapd: " in log
    assert "to=<\"-oQ/tmp\"@y.example> failed: " in log and "may not start with '-', quoted or not" in log
    report = email.message_from_bytes(body2)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    text, status, headers = report.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    recipients = [part["Final-Recipient"] for part in status.get_payload()[1:]]
    assert recipients == ["rfc822; |/bin/sh", 'rfc822; "-oQ/tmp"@y.example']
    assert {part["Action"] for part in status.get_payload()[1:]} == {"failed"}
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <p2@x.example>" in headers.get_payload() and b"secret body" not in body2


def test_no_bounce_for_the_null_sender(env):
    env.plant("smaPLANTED3", b"FROM <>\nRCPT <|/bin/sh>\nBODY\nSubject: x\n\nhi\n")
    p = env.start()
    wait_for(lambda: env.spooled() == [], what="the refusal")
    assert env.calls() == [] and os.listdir(env.bad) == []
    assert "id=PLANTED3 from=<> to=<|/bin/sh> failed: " in env.log(p)
    assert "no bounce (null sender)" in env.log(p)


def test_the_trigger_wakes_smapd(env):
    env.write_table("smapd: wakeup 3600\n")
    p = env.start()
    qid = env.queue()  # commit pokes .trigger
    wait_for(lambda: env.spooled() == [], timeout=10, what="delivery on the trigger")
    assert f"id={qid} from=" in env.log(p)


def test_two_smapd_deliver_each_message_once(env):
    env.mode("slow")
    env.write_table("smapd: maxchildren 4\n")
    ids = [env.queue() for _ in range(12)]
    env.start()
    env.start()
    wait_for(lambda: env.spooled() == [], timeout=60, what="the spool to drain")
    bodies = sorted(b for _, b in env.calls())
    assert bodies == sorted(f"Received: {q}\nSubject: t\n\nhello\n".encode() for q in ids)


def test_stale_temporary_files_are_removed(env):
    old = env.plant("xmaSTALE1", b"FROM <a@x.example>\n")
    young = env.plant("xmaYOUNG1", b"FROM <a@x.example>\n")
    two_days = time.time() - 2 * 86400
    os.utime(old, (two_days, two_days))
    p = env.start()
    wait_for(lambda: not old.exists(), what="the stale file to go")
    assert young.exists()
    assert "removed xmaSTALE1: an unfinished spool file older than a day" in env.log(p)


def test_sighup_reloads_and_keeps_the_old_table_when_broken(env):
    p = env.start()
    env.write_table("smapd: maxchildren lots\n")
    p.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused, the old settings stay" in env.log(p), what="the refusal")
    assert "maxchildren: 'lots' is not a whole number" in env.log(p)
    env.write_table("smapd: maxchildren 2\n")
    p.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded the table" in env.log(p), what="the reload")
    env.queue()
    wait_for(lambda: env.spooled() == [], what="delivery after the reload")


def test_sigterm_lets_running_deliveries_finish(env):
    env.mode("slow")
    qid = env.queue()
    p = env.start()
    wait_for(lambda: env.calls(), what="the hand-off to start")
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
    assert env.spooled() == [] and f"id={qid} from=" in env.log(p)
    assert "stopped" in env.log(p)


def test_sigkill_under_a_stream_loses_nothing(env):
    """smapd and its children killed with SIGKILL again and again while
    messages keep arriving: every message is delivered at least once;
    duplicates are counted and reported (the goal is zero)."""
    env.write_table("smapd: maxchildren 4\nsmapd: retry-max 1\n")
    env.mode("ok")
    ids = []
    kills = 0
    for round in range(8):
        ids += [env.queue() for _ in range(6)]
        p = env.start()
        wait_for(lambda: len(env.calls()) > 0 and len(env.spooled()) < len(ids), timeout=20,
                 what="some deliveries")
        # smapd and every child of it, at once
        kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        for pid in [p.pid] + [int(k) for k in kids]:
            try:
                os.kill(int(pid), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        p.wait(10)
    p = env.start()
    wait_for(lambda: env.spooled() == [], timeout=60, what="the spool to drain")
    delivered = {}
    for _, body in env.calls():
        delivered[body] = delivered.get(body, 0) + 1
    handoffs = len(env.calls())
    lost = sum(1 for q in ids if delivered.get(f"Received: {q}\nSubject: t\n\nhello\n".encode(), 0) == 0)
    duplicates = sum(n - 1 for n in delivered.values())
    print(f"\nSIGKILL test: {len(ids)} messages, {kills} processes killed, {handoffs} hand-offs, "
          f"{duplicates} duplicates, {lost} lost")
    assert lost == 0 and os.listdir(env.bad) == []
    assert 0 <= duplicates <= kills


def smapctl(env, *args):
    return subprocess.run([command("smapctl"), *args, "--config", str(env.table)], capture_output=True, text=True)


def test_smapctl_queue_requeue_and_flush(env):
    env.mode("exit 75")
    deferred = env.queue(rcpts=("b@y.example", "c@y.example"))
    env.plant("smaREFUSED1", b"FROM <-x@y.example>\nRCPT <a@x.example>\nBODY\nhi\n")
    env.write_table("smapd: retry-max 3600\n")
    p = env.start()
    wait_for(lambda: f"id={deferred} deferred" in env.log(p) and os.listdir(env.bad), what="one deferral, one refusal")
    r = smapctl(env, "queue")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"spool {env.spool}: 1 message"
    assert re.match(rf"  {deferred}  size=\d+  age=\d+s  next=in \d+s  from=<a@x\.example>  rcpt=2/2 pending$",
                    lines[1]), lines
    assert lines[2:4] == ["      to=<b@y.example>", "      to=<c@y.example>"]
    assert lines[4] == f"      last error: {env.mta} exited 75"
    assert lines[5] == f"bad {env.bad}: 1 message"
    assert lines[6].startswith("  REFUSED1  ") and "next=never (bad)" in lines[6]
    assert "last error: refused: sender address <-x@y.example>: an address may not start with '-'" in r.stdout

    # flush: the deferred message is due now and smapd is woken
    env.mode("ok")
    r = smapctl(env, "flush")
    assert (r.returncode, r.stdout.strip()) == (0, "1 deferred message made due; smapd woken")
    wait_for(lambda: env.spooled() == [], what="the flushed delivery")

    # requeue from bad/: back in the spool, due now (refused again here, as its address still is bad)
    r = smapctl(env, "requeue", "NOSUCH")
    assert r.returncode == 1 and "no NOSUCH in" in r.stderr
    r = smapctl(env, "requeue", "REFUSED1")
    assert (r.returncode, r.stdout) == (0, "requeued REFUSED1\n")
    wait_for(lambda: env.log(p).count("id=REFUSED1 moved to ") == 2, what="the second refusal")


def test_smapctl_flush_without_smapd(env):
    r = smapctl(env, "flush")
    assert r.returncode == 1 and "no smapd is listening on" in r.stdout


def test_detaches_writes_its_pid_file_and_syslogs(env, public_tmp):
    import socket
    rundir = public_tmp / "run"
    rundir.mkdir()
    if os.geteuid() == 0:
        os.chown(rundir, *nobody_ids())  # so that smapd, as nobody, can remove its pid file
    logsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    logsock.bind(str(public_tmp / "log"))
    logsock.settimeout(10)
    pidfile = rundir / "smapd.pid"
    env.write_table(f"smapd: pidfile {pidfile}\nsmapd: log-socket {public_tmp / 'log'}\n")
    r = subprocess.run([command("smapd"), "--config", str(env.table)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""  # the parent returns at once
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pid file"))
    try:
        line = logsock.recv(4096).decode()
        assert re.match(rf"<22>smapd\[{pid}\]: started: spool {env.spool}", line), line
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        # detached: the command has returned, the daemon lives on, no longer our child
        assert int(re.search(r"^PPid:\t(\d+)$", status, re.M).group(1)) != os.getpid()
        uid, _ = nobody_ids()
        assert re.search(rf"^Uid:\t{uid}\t", status, re.M)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert f.read().startswith(b"smapd: ")  # setproctitle
        env.queue()
        wait_for(lambda: env.spooled() == [], what="delivery by the detached smapd")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2],
             what="smapd to stop")
    wait_for(lambda: not pidfile.exists(), what="the pid file to go")
    logsock.close()


@pytest.mark.parametrize("n", [150, 250])
def test_every_batch_gets_the_whole_body(env, n):
    rcpts = [f"r{i}@y.example" for i in range(n)]
    qid = env.queue(rcpts=rcpts)
    env.start()
    wait_for(lambda: env.spooled() == [], what="the spool to drain")
    calls = env.calls()
    assert [len(argv) - 4 for argv, _ in calls] == [min(100, n - i) for i in range(0, n, 100)]
    assert all(body == f"Received: {qid}\nSubject: t\n\nhello\n".encode() for _, body in calls)
    assert sorted(r for argv, _ in calls for r in argv[4:]) == sorted(rcpts)


def test_what_is_not_a_regular_file_goes_to_bad_without_spinning(env):
    # planted as a compromised smap (running as nobody) could plant them
    os.mkdir(env.spool / "smaADIR1")
    os.symlink("/etc/passwd", env.spool / "smaALINK1")
    os.mkfifo(env.spool / "smaAFIFO1")
    if os.geteuid() == 0:
        for n in ("smaADIR1", "smaALINK1", "smaAFIFO1"):
            os.chown(env.spool / n, *nobody_ids(), follow_symlinks=False)
    p = env.start()
    wait_for(lambda: sorted(os.listdir(env.bad)) == ["smaADIR1", "smaAFIFO1", "smaALINK1"],
             what=f"all three in bad/: {env.log(p)}")
    assert env.calls() == [] and env.spooled() == []
    assert os.readlink(env.bad / "smaALINK1") == "/etc/passwd"  # moved, never followed
    wait_for(lambda: "id=ALINK1 moved to " in env.log(p), what="the log line")
    assert "not a regular file" in env.log(p)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def test_a_file_locked_elsewhere_is_skipped_without_spinning(env):
    import fcntl
    qid = env.queue()
    fd = os.open(env.spool / ("sma" + qid), os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # as another smapd (or smapctl) would hold it
    try:
        p = env.start()
        before = cpu_seconds(p.pid)
        time.sleep(2)  # the measuring window, not synchronisation
        assert cpu_seconds(p.pid) - before < 0.5, "smapd keeps forking for a locked file"
        assert env.calls() == []
    finally:
        os.close(fd)
    wait_for(lambda: env.spooled() == [], timeout=20, what="delivery once the lock is gone")


def test_a_trigger_that_is_not_a_fifo_is_replaced(env):
    (env.spool / ".trigger").write_text("planted")
    p = env.start()
    assert ".trigger was not a FIFO" in env.log(p)
    import stat as st
    assert st.S_ISFIFO(os.lstat(env.spool / ".trigger").st_mode)
    before = cpu_seconds(p.pid)
    env.queue()
    wait_for(lambda: env.spooled() == [], what="delivery")
    assert cpu_seconds(p.pid) - before < 1.0


def test_pid_file_never_written_through_a_symlink(env, public_tmp):
    victim = public_tmp / "victim"
    victim.write_text("precious\n")
    link = public_tmp / "smapd.pid"
    os.symlink(victim, link)
    env.write_table(f"smapd: pidfile {link}\n")
    r = subprocess.run([command("smapd"), "-d", "--config", str(env.table)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "cannot open the pid file" in r.stderr
    assert victim.read_text() == "precious\n"


def test_interrupting_smapd_does_not_duplicate(env):
    env.mode("slow")
    env.queue()
    p = subprocess.Popen([command("smapd"), "-d", "--config", str(env.table)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: env.calls(), what="the hand-off to start")
        os.killpg(p.pid, signal.SIGINT)  # ^C: the whole process group
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert len(env.calls()) == 1 and env.spooled() == []


def test_smapctl_queue_never_follows_a_symlink(env, public_tmp):
    secret = public_tmp / "secret"
    secret.write_text("FROM <root-secret@x>\nRCPT <hash@y>\nBODY\n")
    secret.chmod(0o600)
    os.symlink(secret, env.spool / "smaLEAK1")
    r = smapctl(env, "queue")
    assert r.returncode == 0 and "root-secret" not in r.stdout
    assert "LEAK1" in r.stdout and "not a regular file" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="plants as the jailed uid: needs root")
def test_smapctl_never_follows_a_bad_symlink(env, public_tmp):
    elsewhere = public_tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "smaFOREIGN1").write_text("FROM <root-secret@x>\nRCPT <b@y.example>\nBODY\nsecret\n")
    as_jailed_uid(env.spool, f"import os; os.rename('bad', 'bad.old'); os.symlink({str(elsewhere)!r}, 'bad')")
    r = smapctl(env, "queue")
    assert r.returncode == 0 and "root-secret" not in r.stdout and "not followed" in r.stdout, r.stdout
    r = smapctl(env, "requeue", "all")
    assert r.returncode == 1 and "is a symbolic link: not followed, nothing requeued" in r.stderr, r.stderr
    assert env.spooled() == [] and os.listdir(elsewhere) == ["smaFOREIGN1"]


def test_what_cannot_be_moved_is_left_alone_not_retried_in_a_loop(env):
    os.mkdir(env.spool / "smaROOTDIR1")  # root's, in the spool: smapd (nobody) cannot move it
    p = env.start()
    wait_for(lambda: "id=ROOTDIR1 cannot move to" in env.log(p), what="the refusal")
    env.queue()
    wait_for(lambda: env.spooled() == ["smaROOTDIR1"], what="the other message to go")
    assert env.log(p).count("id=ROOTDIR1 cannot move to") == 1


def as_jailed_uid(cwd, code):
    """Python `code` run in `cwd` as smap's jailed uid: what a compromised
    smap child can do to the spool."""
    uid, gid = nobody_ids()

    def drop():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    subprocess.run(["/usr/bin/python3", "-c", code], cwd=cwd, preexec_fn=drop, check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="plants as the jailed uid: needs root")
def test_a_bad_symlink_planted_as_the_jailed_uid_is_never_followed(env, public_tmp):
    outside = public_tmp / "outside"
    outside.mkdir()
    os.chown(outside, *nobody_ids())   # writable by smapd: only the link check keeps files out
    p = env.start()
    as_jailed_uid(env.spool, f"import os; os.rename('bad', 'bad.old'); os.symlink({str(outside)!r}, 'bad')")
    env.plant("smaPLANTED1", b"FROM <a@x.example>\nRCPT <b@y.example>\n")   # corrupt: for bad/
    os.write(os.open(env.spool / ".trigger", os.O_WRONLY | os.O_NONBLOCK), b"x")
    wait_for(lambda: "id=PLANTED1 cannot move to" in env.log(p), what=f"the refusal: {env.log(p)}")
    assert "symbolic link" in env.log(p)
    assert os.listdir(outside) == []
    assert "smaPLANTED1" in env.spooled()        # kept, with its last error
    assert "moved to" not in env.log(p)


@pytest.mark.skipif(os.geteuid() != 0, reason="plants as the jailed uid: needs root")
def test_smapd_refuses_to_start_with_a_bad_symlink(env, public_tmp):
    as_jailed_uid(env.spool, f"import os; os.rmdir('bad'); os.symlink({str(public_tmp)!r}, 'bad')")
    r = subprocess.run([command("smapd"), "-d", "--config", str(env.table)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert f"baddir {env.bad} " in r.stderr and "cannot be used: it is a symbolic link (never followed)" in r.stderr, \
        r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="changes ids: needs root")
def test_smapd_as_a_user_of_its_own_in_smaps_group(env):
    """The recommended set-up: smap's files (its jailed user's, mode 0660)
    handed off by smapd running as another user of the same group, and
    smapctl check content with it."""
    import grp
    import pwd
    daemon = pwd.getpwnam("daemon")
    group = grp.getgrgid(nobody_ids()[1]).gr_name
    text = env.table.read_text()
    assert f"smapd: userid nobody\nsmapd: groupid {group}\n" in text
    env.table.write_text(text.replace("smapd: userid nobody\n", "smapd: userid daemon\n"))
    os.chown(env.fake.dir / "calls", daemon.pw_uid, nobody_ids()[1])
    qid = env.queue()
    st = os.stat(env.spool / ("sma" + qid))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (*nobody_ids(), 0o660)
    p = env.start()
    wait_for(lambda: env.spooled() == [], what="the hand-off")
    assert len(env.calls()) == 1 and f"id={qid} from=<a@x.example> nrcpt=1 sent" in env.log(p)
    assert proc_uid(p.pid) == daemon.pw_uid
    r = subprocess.run([command("smapctl"), "check", "--config", str(env.table)], capture_output=True, text=True)
    assert " error: " not in r.stdout, r.stdout


def proc_uid(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])
