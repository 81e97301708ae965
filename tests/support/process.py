"""Stopping the processes a test started."""

import signal
import subprocess


def stop(*procs, timeout: float = 20, sig=signal.SIGTERM) -> None:
    """Send `sig` (TERM) to each process still running, wait up to
    `timeout` seconds for all of them, then KILL what is left."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        if p is None:
            continue
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
