"""smapctl stats against the live suite: smap -daemon spools, smapd (as
nobody) hands off through a gate to a private Postfix's sendmail, and an
ssl-gw -d runs beside them, all reading one table.  `stats smapd` lists a
delivery while it runs, then its deferral (the error, the deferred
message in the queue), then the hand-off, and counts what smapd handed
off; `--json` says the same in numbers; smapd's process title says it in
short; `--prometheus` parses with prometheus_client's parser and its
counters are the scoreboards' and smapd's status's; a stopped or killed
smapd is said to be so (exit 1).  The commands are those of the EXAMPLES
of smapctl(8).  (The chain is test_smapctl_queue's: its Chain and its
module-wide fixture.)"""

import grp
import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.process import stop
from support.programs import command, free_port, nobody_ids, wait_for
from test_smapctl_queue import chain  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap -daemon, ssl-gw -d and smapd drop privileges as root")


@pytest.fixture(scope="module")
def live(chain, pki):  # noqa: F811
    """The chain with smapd running and an ssl-gw -d of the same table."""
    c = chain
    c.gw_scoreboard = c.base / "gw.scoreboard"
    with open(c.table, "a") as f:
        f.write(f"ssl-gw: scoreboard {c.gw_scoreboard}\nssl-gw: pidfile {c.base / 'gw.pid'}\nssl-gw: minspare 1\n")
    c.gw_port = free_port()
    log = open(c.base / "gw.log", "a+b")
    gw = subprocess.Popen([command("ssl-gw"), "--config", str(c.table), "-f", "-d", f"127.0.0.1:{c.gw_port}",
                           "-r", f"127.0.0.1:{free_port()}", "-p", pki.server_pem, "-s", "nobody",
                           "-g", grp.getgrgid(nobody_ids()[1]).gr_name],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: b"started: listening" in (c.base / "gw.log").read_bytes() or gw.poll() is not None,
                 what="ssl-gw to start")
        assert gw.poll() is None, (c.base / "gw.log").read_text()
        c.start_smapd()
        yield c
    finally:
        c.stop_smapd()
        stop(gw)
        log.close()


def smapd_json(c):
    r = c.smapctl("stats", "--json", "smapd")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def shell_env(c):
    """For the man page's shell lines: smapctl on PATH, the table of the chain."""
    return dict(os.environ, NETPERM_TABLE=str(c.table), PATH=f"{Path(command('smapctl')).parent}:{os.environ['PATH']}")


def title(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode()


def test_stats_smapd_lists_a_delivery_then_its_deferral_then_the_hand_off(live):
    c = live
    (c.gate / "open").unlink()
    (c.gate / "fail").touch()
    before = smapd_json(c)["status"]["counters"]
    qid = c.send(b"Subject: slow\r\n\r\nwaits at the gate\r\n")
    wait_for(lambda: (c.gate / "waiting").exists(), what="the hand-off to reach the gate")

    # While it runs: listed with its child's pid, the one titled "delivering ID".
    def listed():
        r = c.smapctl("stats", "smapd")
        return r if re.search(rf"^ +\d+ {qid} +\d+s  1 of 1$", r.stdout, re.M) else None
    r = wait_for(listed, what="the delivery in smapctl stats smapd")
    assert r.returncode == 0, r.stderr
    assert re.match(rf"smapd pid {c.smapd.pid}, up \d+s, sendmail {re.escape(str(c.script))}: "
                    r"1 of 6 deliveries running\n", r.stdout), r.stdout  # maxchildren: the default
    [d] = smapd_json(c)["status"]["deliveries"]
    assert d["id"] == qid and title(d["pid"]) == f"smapd: delivering {qid}"
    wait_for(lambda: re.fullmatch(r"smapd: 1 delivery, queue 1 \(oldest \d+s\), [\d.]+/min", title(c.smapd.pid)),
             what="smapd's title")

    # The MTA fails (exit 75): deferred, with its error, and the queue says so.
    (c.gate / "open").touch()

    def deferred():
        doc = smapd_json(c)
        s = doc["status"]
        return doc if s["counters"]["deferred"] == before["deferred"] + 1 and not s["deliveries"] else None
    doc = wait_for(deferred, what="the deferral in smapd's status")
    err = doc["status"]["errors"][-1]
    assert (err["id"], err["outcome"]) == (qid, "deferred") and f"{c.script} exited 75" in err["error"], err
    assert doc["status"]["counters"]["handed_off"] == before["handed_off"]
    spool = doc["queue"]["spool"]
    assert (spool["messages"], spool["deferred"], doc["queue"]["bad"]["messages"]) == (1, 1, 0), doc["queue"]
    assert spool["oldest"] <= doc["status"]["written"]
    r = c.smapctl("stats", "smapd")
    assert re.search(r"^queue: 1 in the spool \(oldest \d+s, 1 deferred\), 0 held, 0 in bad/$", r.stdout, re.M)
    assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {qid} deferred: {re.escape(str(c.script))} exited 75$",
                     r.stdout, re.M), r.stdout
    assert not re.search(r"^ +PID ID", r.stdout, re.M)   # no delivery runs

    # Made due now, it goes through: handed off, the queue empty.
    (c.gate / "fail").unlink()
    assert c.smapctl("flush", qid).returncode == 0

    def handed_off():
        doc = smapd_json(c)
        return doc if doc["status"]["counters"]["handed_off"] == before["handed_off"] + 1 else None
    doc = wait_for(handed_off, what="the hand-off in smapd's status")
    assert doc["status"]["counters"]["deferred"] == before["deferred"] + 1
    assert doc["queue"]["spool"]["messages"] == 0 and doc["queue"]["spool"]["oldest"] is None
    wait_for(lambda: any(b"waits at the gate" in m for m in c.delivered()), what="the message in the Maildir")


def test_stats_smapd_counts_the_hand_offs_and_the_drain(live):
    c = live
    before = smapd_json(c)["status"]["counters"]["handed_off"]
    delivered = len(c.delivered())
    ids = [c.send(f"Subject: {i}\r\n\r\ncounted\r\n".encode()) for i in range(3)]
    wait_for(lambda: len(c.delivered()) == delivered + 3, what="three messages in the Maildir")
    doc = wait_for(lambda: (d := smapd_json(c))["status"]["counters"]["handed_off"] == before + 3 and d,
                   what="three hand-offs in smapd's status")
    s = doc["status"]
    assert s["pid"] == c.smapd.pid and s["program"] == "smapd" and s["handoff"] == f"sendmail {c.script}"
    assert s["drain"]["per_minute"] > 0 and not set(ids) & {e["id"] for e in s["errors"]}
    r = c.smapctl("stats", "smapd")
    assert (f"since the start: {before + 3} handed off, " in r.stdout
            and re.search(r"; [\d.]+ a minute over the last \dm", r.stdout)), r.stdout
    assert r.stdout.splitlines()[2] == "queue: 0 in the spool, 0 held, 0 in bad/"
    # The man page's example, through jq.
    r = subprocess.run(["sh", "-c", "smapctl stats --json smapd | jq .status.counters"], capture_output=True,
                       text=True, env=shell_env(c))
    assert r.returncode == 0 and json.loads(r.stdout) == s["counters"], r.stderr
    assert r.stdout.startswith('{\n  "handed_off": ')
    wait_for(lambda: re.fullmatch(r"smapd: 0 deliveries, queue 0, [\d.]+/min", title(c.smapd.pid)),
             what="smapd's title")
    # The status file is smapd's (nobody's), in the spool, and no message.
    st = os.lstat(c.spool / ".status")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == nobody_ids()[0]
    queue = json.loads(c.smapctl("queue", "--json").stdout)
    assert queue["messages"] == [] and queue["queues"][0]["messages"] == 0


def test_stats_smapd_counts_a_move_to_bad(live):
    c = live
    before = smapd_json(c)["status"]["counters"]
    # A file of the spool that is no spool file (planted, or truncated):
    # smapd moves it to bad/ and says why.
    from smapd.spool import new_queue_id
    qid = new_queue_id()
    planted = c.spool / f"xma{qid}"
    planted.write_bytes(b"not an envelope\n")
    os.chown(planted, *nobody_ids())
    planted.chmod(0o660)
    planted.rename(c.spool / f"sma{qid}")
    doc = wait_for(lambda: (d := smapd_json(c))["status"]["counters"]["bad"] == before["bad"] + 1 and d,
                   what="the move to bad/ in smapd's status")
    err = doc["status"]["errors"][-1]
    assert (err["id"], err["outcome"]) == (qid, "bad") and err["error"].startswith("corrupt spool file: "), err
    assert doc["queue"]["bad"]["messages"] >= 1 and doc["status"]["counters"]["handed_off"] == before["handed_off"]
    r = c.smapctl("stats", "smapd")
    assert f", {before['bad'] + 1} moved to bad/;" in r.stdout and f" {qid} bad: corrupt spool file: " in r.stdout
    (c.spool / "bad" / f"sma{qid}").unlink()   # the other tests find bad/ empty


def test_stats_prometheus_parses_and_holds_the_scoreboards_and_the_status(live):
    c = live
    c.send()   # a connection served by smap, a message for smapd
    wait_for(lambda: smapd_json(c)["queue"]["spool"]["messages"] == 0, what="the hand-off")
    # The man page's example, for node_exporter's textfile collector.
    out = c.base / "textfile"
    out.mkdir(exist_ok=True)
    r = subprocess.run(["sh", "-c", f"smapctl stats --prometheus > {out}/smapd.prom.$$ && "
                                    f"mv {out}/smapd.prom.$$ {out}/smapd.prom"], capture_output=True, text=True,
                       env=shell_env(c))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert os.listdir(out) == ["smapd.prom"]
    text = (out / "smapd.prom").read_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["smapd_suite_messages"].type == "counter"
    assert families["smapd_suite_connections_served"].type == "counter"
    assert "# TYPE smapd_suite_messages_total counter\n" in text

    def samples(family, **match):
        return {tuple(s.labels.get(k) for k in ("program", "name", "outcome", "state", "queue")
                      if k in s.labels): s.value
                for s in families[family].samples if all(s.labels.get(k) == v for k, v in match.items())}
    assert samples("smapd_suite_up") == {("smap", "smap"): 1, ("smapd", "smapd"): 1, ("ssl-gw", "ssl-gw"): 1}

    # smapd's counters are its status's, its queue the listing's.
    status = smapd_json(c)
    assert samples("smapd_suite_messages", program="smapd") == {
        ("smapd", "smapd", outcome): n for outcome, n in status["status"]["counters"].items()}
    assert samples("smapd_suite_queue_messages") == {("smapd", "smapd", q): status["queue"][q]["messages"]
                                                     for q in ("spool", "hold", "bad")}
    assert samples("smapd_suite_deliveries") == {("smapd", "smapd"): 0}

    # smap's and ssl-gw's are their scoreboards', as Scoreboard and stats --json read them.
    from smapd.prefork.scoreboard import FREE, Scoreboard
    for program, path in (("smap", c.smap.scoreboard), ("ssl-gw", c.gw_scoreboard)):
        board = Scoreboard.open_readonly(str(path))
        try:
            live_slots = [board.slot(i) for i in range(board.slots) if board.state(i) != FREE]
            served = board.header()["retired"] + sum(s.served for s in live_slots)
            master = board.header()["master"]
        finally:
            board.close()
        doc = json.loads(c.smapctl("stats", "--json", program).stdout)
        assert doc["connections_served"] == served and doc["master"]["pid"] == master and doc["running"]
        assert samples("smapd_suite_connections_served", program=program) == {(program, program): served}
        assert sum(samples("smapd_suite_children", program=program).values()) == len(live_slots)
    assert samples("smapd_suite_connections_served", program="smap")[("smap", "smap")] >= 1

    # Names given: only theirs.
    r = c.smapctl("stats", "--prometheus", "smap")
    assert {s.labels["program"] for f in text_string_to_metric_families(r.stdout) for s in f.samples} == {"smap"}


def test_stats_smapd_says_when_smapd_is_not_running(live):
    c = live
    try:
        c.stop_smapd()   # a clean stop removes the status
        r = c.smapctl("stats", "smapd")
        assert r.returncode == 1 and r.stderr == (f"smapctl: no status file {c.spool}/.status: "
                                                  "smapd is not running\n"), r.stderr
        assert r.stdout == "queue: 0 in the spool, 0 held, 0 in bad/\n"
        r = c.smapctl("stats", "--prometheus", "smapd")
        assert r.returncode == 0
        metrics = {(s.name, s.labels.get("queue")): s.value for f in text_string_to_metric_families(r.stdout)
                   for s in f.samples}
        assert metrics[("smapd_suite_up", None)] == 0 and ("smapd_suite_messages_total", None) not in metrics
        assert metrics[("smapd_suite_queue_messages", "spool")] == 0

        c.start_smapd()   # killed, it leaves its status behind: its pid is dead
        pid = c.smapd.pid
        wait_for(lambda: smapd_json(c)["status"]["pid"] == pid, what="the new smapd's status")
        c.smapd.send_signal(signal.SIGKILL)
        c.smapd.wait()
        c.smapd = None
        r = c.smapctl("stats", "--json", "smapd")
        doc = json.loads(r.stdout)
        assert r.returncode == 1 and not doc["running"] and doc["status"]["pid"] == pid
        assert doc["reason"] == (f"{c.spool}/.status: its pid {pid} is dead: smapd is not running "
                                 "(it was stopped without removing its status)")
        assert r.stderr == f"smapctl: {doc['reason']}\n"
        r = c.smapctl("stats", "--scoreboard", str(c.smap.scoreboard), "smapd")
        assert r.returncode == 2 and "--scoreboard is for smap and ssl-gw" in r.stderr
    finally:
        if c.smapd is None:
            c.start_smapd()
