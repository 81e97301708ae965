"""Reliability, scenario 1: a stream of messages through `smap -daemon`,
handed by smapd to a real private Postfix (through its sendmail, and by
SMTP to the re-injection smtpd of the recipe in etc/postfix/, with
XCLIENT, several files per connection), while SIGKILLs fall at
seeded random moments on smap's children (mid-session), on smapd alone
(its delivery children go on as orphans), on one delivery child (its
MTA, in a session of its own, goes on) and on smapd with all its
delivery children at once.  smapd is started again after each kill of
smapd.  Then the audit (harness.py): every 250 is in a Maildir or the
spool, duplicates only on the queue ids of killed delivery children
(at-least-once), no stray xma file, nothing in bad/.

RELIABILITY_SECONDS sets the length of the stream (default 20 s);
RELIABILITY_SEED replays a schedule of kills."""

import collections
import contextlib
import os
import time

import pytest

from support.daemons import Daemon
from support.programs import wait_for
from harness import (RCPT, SENDER, Clients, Ledger, Smapd, audit, bad_files, cmdline, copies, kill, maildir_files,
                     make_rng, poll_until, seconds, soaking, spool_files)
from postfix import Postfix, recipe_main_cf, recipe_master_cf, unprivileged_sendmail
from support.programs import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap -daemon binds, chroots and drops privileges as root")


@pytest.fixture(params=["sendmail", "smtp"])
def handoff(request, tmp_path):
    """(the running Postfix, the context that lets smapd reach it, smapd's
    hand-off as Smapd's keyword arguments)."""
    if request.param == "sendmail":
        postfix = Postfix(tmp_path)
        how = lambda: {"sendmail": ["/usr/sbin/sendmail", "-C", postfix.config_dir]}  # noqa: E731
        reach = unprivileged_sendmail
    else:
        port = free_port()
        postfix = Postfix(tmp_path, main_cf=recipe_main_cf(), master_cf=recipe_master_cf(port))
        how = lambda: {"mta": f"smtp:127.0.0.1:{port}"}  # noqa: E731
        reach = lambda _: contextlib.nullcontext()  # noqa: E731
    postfix.start()
    try:
        yield postfix, reach(postfix), how()
    finally:
        postfix.stop()


def test_sigkill_stream_loses_nothing(handoff, public_tmp, loopback_dns):
    postfix, reach, how = handoff
    seed, rng = make_rng("sigkill stream")
    duration = seconds(20)
    postfix.add_mailbox(RCPT, SENDER)
    with reach:
        d = Daemon(public_tmp / "smap", loopback_dns,
                   "smap: minspare 3\nsmap: maxspare 6\nsmap: maxchildren 20\nsmap: maxperhost 100\n"
                   "smap: maxpernet 100\n")
        smapd = Smapd(public_tmp, d.spool, **how)
        clients = None
        try:
            d.start()
            smapd.start()
            ledger = Ledger(f"kill{seed}")
            clients = Clients(d.port, ledger, rng, n=2).start()
            kills = collections.Counter()
            dup_allowance = collections.Counter()   # queue id -> delivery children killed on it
            killed_smap = []
            end = time.monotonic() + duration
            while time.monotonic() < end:
                time.sleep(rng.uniform(0.2, 1.2))  # the moment of the next kill: the schedule, not a synchronisation
                kind = rng.choices(["smap child", "delivery child", "smapd", "smapd and children"], [4, 3, 1, 1])[0]
                if kind == "smap child":
                    busy = sorted(p for p in d.kids() if cmdline(p).startswith("smap: 127."))
                    if busy:
                        pid = rng.choice(busy)
                        if kill(pid):
                            killed_smap.append(pid)
                            kills[kind] += 1
                elif kind == "delivery child":
                    running = poll_until(smapd.deliveries, 1.0)  # a hand-off under way, if one comes
                    if running:
                        pid, qid = rng.choice(sorted(running))
                        if smapd.kill_delivery(pid):
                            dup_allowance[qid] += 1
                            kills[kind] += 1
                else:
                    for qid in smapd.kill(with_children=kind == "smapd and children"):
                        dup_allowance[qid] += 1
                        kills["delivery child"] += 1
                    kills[kind] += 1
                    smapd.start()
            clients.stop()
            assert d.proc.poll() is None, "the smap master died"
            # smapd keeps a file whose delivery child crashed aside for a
            # minute (in memory): the short run restarts it, as an operator
            # would; the soak waits that minute out.
            if not soaking():
                smapd.stop()
                smapd.start()

            def settled():
                return (not spool_files(d.spool) and smapd.settled()
                        and "Mail queue is empty" in postfix.queue())
            wait_for(settled, timeout=150 if soaking() else 60, what="smapd and Postfix to deliver everything")
            count = len(maildir_files(postfix))
            time.sleep(1)  # a second look: nothing still on its way
            assert settled() and len(maildir_files(postfix)) == count
            xma = spool_files(d.spool, "xma")
            audit("sigkill stream", seed, ledger, copies(maildir_files(postfix), ledger, maildir=True),
                  copies(spool_files(d.spool), ledger), copies(bad_files(d.spool), ledger),
                  dup_allowance=dup_allowance, unacked_allowance=len(killed_smap),
                  xma=xma, killed_smap_pids=killed_smap,
                  logs={"smapd": smapd.log(), "smap": d.log()},
                  report={"kills": dict(kills), "duplicates_allowed": sum(dup_allowance.values()),
                          "seconds": duration})
            # The xma files of children killed in DATA were never
            # acknowledged; smapd removes them once a day old: aged, they go.
            day_ago = time.time() - 2 * 86400
            for x in xma:
                os.utime(x, (day_ago, day_ago))
            wait_for(lambda: not spool_files(d.spool, "xma"), timeout=15, what="smapd to remove the stale xma files")
            assert smapd.log().count("an unfinished spool file older than a day") == len(xma)
            assert len(ledger.acked()) >= 20 and sum(kills.values()) >= 5, "the scenario exercised too little"
        except BaseException:
            print(smapd.log()[-3000:])
            raise
        finally:
            if clients:
                clients.stopping.set()
            smapd.close()
            d.stop()
            for pid in d.kids() if d.proc else ():
                kill(pid)
