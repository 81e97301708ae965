"""Reliability, scenario 2: the spool's file system fills up.  The spool
of `smap -daemon` is a 4 MB tmpfs mounted by the test (as root, unmounted
after).  The MTA is down (the fake sendmail exits 75), so smapd keeps
every file while three clients send messages of 100 to 400 kB: the
spool fills, and smap must answer the end of DATA with 451 4.3.0 (never
a 250 for what it could not write, never a broken connection), leaving
no xma file.  Then the MTA comes back: smapd drains the spool, space
returns, and new mail is accepted again.  Fill and drain repeat for
RELIABILITY_SECONDS (default: one cycle, at least 15 s).  The audit: every
250 delivered exactly once, no 451 ever delivered, nothing in bad/."""

import os
import subprocess
import time

import pytest

from support.daemons import Daemon
from support.programs import wait_for
from harness import (Clients, FakeMta, Ledger, Smapd, audit, bad_files, copies, kill, make_rng, seconds,
                     spool_files)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")

FULL = "451 4.3.0 Error: local error in processing, try again later"


def test_full_spool_answers_451_and_loses_nothing(public_tmp, loopback_dns):
    seed, rng = make_rng("full spool")
    duration = seconds(15)
    base = public_tmp / "smap"
    mnt = base / "spool"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True)
    d = smapd = clients = None
    try:
        d = Daemon(base, loopback_dns,
                   "smap: minspare 3\nsmap: maxspare 6\nsmap: maxperhost 100\nsmap: maxpernet 100\n")
        mta = FakeMta(public_tmp)
        smapd = Smapd(public_tmp, d.spool, [mta.path])
        d.start()
        smapd.start()
        ledger = Ledger(f"full{seed}")

        def refused():
            return len(ledger.by_kind("refused"))

        cycles, lowest_free = 0, None
        end = time.monotonic() + duration
        while cycles == 0 or time.monotonic() < end:
            cycles += 1
            mta.set("exit 75")  # the MTA is down: smapd keeps every message
            before = refused()
            clients = Clients(d.port, ledger, rng, n=3, size=(100_000, 400_000), pause=(0.0, 0.05)).start()
            wait_for(lambda: refused() >= before + 5, timeout=60, what="smap to refuse messages on a full spool")
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize
            lowest_free = free if lowest_free is None else min(lowest_free, free)
            # (a refused message's space is freed at once: "full" is "less than a message")
            assert free < 500_000, f"451 with {free} octets free: the spool was not full"
            mta.set("ok")  # the MTA is back: smapd drains, space returns
            acked = len(ledger.acked())
            wait_for(lambda: len(ledger.acked()) >= acked + 10, timeout=60,
                     what="new mail to be accepted once the spool drains")
            clients.stop()
            wait_for(lambda: not spool_files(d.spool) and smapd.settled(), timeout=60, what="the spool to drain")
        assert d.proc.poll() is None, "the smap master died"
        answers = {(o[1], o[2]) for o in ledger.by_kind("refused").values()}
        assert answers == {(451, FULL)}, f"smap answered a full spool with {answers}"
        assert not ledger.by_kind("broken"), f"connections broke on a full spool: {ledger.by_kind('broken')}"
        assert "cannot write the spool file: No space left on device" in d.log()
        audit("full spool", seed, ledger, mta.delivered(mta.calls(ledger)), copies(spool_files(d.spool), ledger),
              copies(bad_files(d.spool), ledger), xma=spool_files(d.spool, "xma"),
              logs={"smapd": smapd.log(), "smap": d.log()},
              report={"cycles": cycles, "refused_451": refused(), "lowest_free_octets": lowest_free,
                      "seconds": duration})
    except BaseException:
        if smapd:
            print(smapd.log()[-3000:])
        raise
    finally:
        if clients:
            clients.stopping.set()
        if smapd:
            smapd.close()
        if d:
            d.stop()
            for pid in d.kids() if d.proc else ():
                kill(pid)
        subprocess.run(["umount", "-l", str(mnt)], check=False)
