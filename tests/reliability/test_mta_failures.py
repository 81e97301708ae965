"""Reliability, scenario 3: the MTA fails in every way while mail keeps
coming through `smap -daemon`.  smapd hands off to a fake sendmail whose
behaviour a mode file sets, switched at seeded random moments: ok,
temporary refusals (exit 75, 69), a hang (killed at smapd's
sendmail-timeout of 1 s, then retried), crashes (SIGSEGV, SIGKILL), a
bounce (exit 67: the MTA took the message) and a permanent refusal
(exit 64: the file goes to bad/).  At the end the MTA is well again and
the spool drains.  The audit: every 250 ends exactly once in one place,
delivered (exit 0), bounced (67) or in bad/ (only the messages a 64
refused), none twice, none lost; smapd logged each kind of failure it
met.  RELIABILITY_SECONDS sets the length (default 20 s)."""

import os
import time

import pytest

from support.daemons import Daemon
from support.programs import wait_for
from harness import (Clients, FakeMta, Ledger, Smapd, audit, bad_files, copies, kill, make_rng, seconds, session,
                     spool_files)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap -daemon binds, chroots and drops privileges as root")

#: mode -> (weight in the schedule, what smapd logs when a hand-off meets it)
MODES = {
    "ok": (4, None),
    "exit 75": (2, "deferred: {mta} exited 75"),
    "exit 69": (1, "deferred: {mta} exited 69"),
    "hang": (2, "deferred: {mta} timed out after 1s and was killed"),
    "crash": (1, "deferred: {mta} killed by signal 11"),
    "kill": (1, "deferred: {mta} killed by signal 9"),
    "exit 67": (0.5, "bounced by the MTA ({mta} exited 67)"),
    "exit 64": (0.5, "refused by the MTA: {mta} exited 64"),
}


def test_mta_failures_deliver_everything_once(public_tmp, loopback_dns):
    seed, rng = make_rng("MTA failures")
    duration = seconds(20)
    d = Daemon(public_tmp / "smap", loopback_dns,
               "smap: minspare 3\nsmap: maxspare 6\nsmap: maxperhost 100\nsmap: maxpernet 100\n")
    mta = FakeMta(public_tmp)
    smapd = Smapd(public_tmp, d.spool, [mta.path], "smapd: sendmail-timeout 1\n")
    clients = None
    try:
        d.start()
        smapd.start()
        ledger = Ledger(f"mta{seed}")
        switches = 0
        clients = Clients(d.port, ledger, rng, n=2, pause=(0.0, 0.3)).start()
        # Every mode once (in a seeded order), then seeded random ones;
        # each lasts until a hand-off has met it, and a random while more.
        schedule = rng.sample(list(MODES), len(MODES))
        end = time.monotonic() + duration
        while schedule or time.monotonic() < end:
            mode = schedule.pop(0) if schedule else rng.choices(list(MODES), [w for w, _ in MODES.values()])[0]
            met_before = mta.met(mode)
            mta.set(mode)
            switches += 1
            wait_for(lambda: mta.met(mode) > met_before, timeout=20,
                     what=f"a hand-off to meet the MTA in mode {mode!r}")
            time.sleep(rng.uniform(0.2, 1.5))  # how long the MTA stays so: the schedule, not a synchronisation
        mta.set("ok")
        clients.stop()
        wait_for(lambda: not spool_files(d.spool) and smapd.settled(), timeout=60,
                 what="the spool to drain once the MTA is well")
        assert d.proc.poll() is None, "the smap master died"
        calls = mta.calls(ledger)
        met = {mode for mode, *_ in calls}
        log = smapd.log()
        missing = [mode for mode in met if MODES[mode][1] and MODES[mode][1].format(mta=mta.path) not in log]
        assert not missing, f"smapd did not log these MTA failures: {missing}"
        refused = {marker for mode, marker, _, _ in calls if mode == "exit 64"}
        # Delivered (exit 0) or taken by the MTA to bounce (67): both end the message's way.
        delivered = mta.delivered(calls, modes=("ok", "exit 67"))
        in_bad = copies(bad_files(d.spool), ledger)
        audit("MTA failures", seed, ledger, delivered, copies(spool_files(d.spool), ledger), in_bad,
              expect_bad=refused, xma=spool_files(d.spool, "xma"),
              logs={"smapd": smapd.log(), "smap": d.log()},
              report={"hand_offs": len(calls), "failed_hand_offs": sum(1 for c in calls if not c[3]),
                      "by_mode": {m: sum(1 for c in calls if c[0] == m) for m in sorted(met)},
                      "bounced": sum(1 for c in calls if c[0] == "exit 67"), "refused_to_bad": len(refused),
                      "mode_switches": switches, "seconds": duration})
        assert set(in_bad) == refused, "a message refused with 64 is not in bad/"
        assert met == set(MODES) and len(ledger.acked()) >= 20, "the scenario exercised too little"
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


def test_an_mta_that_exits_leaving_a_child_on_its_stderr(public_tmp, loopback_dns):
    """A sendmail-compatible MTA that accepts the message (exit 0 at once)
    but leaves a background process of its own session on its stderr
    (a delivery it forked without closing its descriptors).  smapd should
    take the exit status when the MTA exits: one hand-off, done at once."""
    d = Daemon(public_tmp / "smap", loopback_dns)
    mta = FakeMta(public_tmp)
    mta.set("detach")
    smapd = Smapd(public_tmp, d.spool, [mta.path], "smapd: sendmail-timeout 3\n")
    try:
        d.start()
        smapd.start()
        ledger = Ledger("detach")
        assert session(d.port, ledger, lambda: 1000) == 1
        wait_for(lambda: mta.met("detach"), what="the hand-off")
        mta.set("ok")
        started = time.monotonic()
        wait_for(lambda: not spool_files(d.spool) and smapd.settled(), timeout=30, what="the spool to drain")
        waited = time.monotonic() - started
        calls = mta.calls(ledger)
        assert [c[0] for c in calls] == ["detach"] and waited < 3 and "timed out" not in smapd.log(), (
            f"the MTA exited 0 at once, yet smapd handed the message off {len(calls)} times "
            f"({[c[0] for c in calls]}), its delivery child waited {waited:.0f}s (sendmail-timeout 3), and it "
            f"logged:\n{smapd.log()}")
    finally:
        mta.kill_detached()
        smapd.close()
        d.stop()
        for pid in d.kids() if d.proc else ():
            kill(pid)
