"""The fixtures, and only they: what they are made of lives in
tests/support/ (programs, DNS, SMTP, syslog, daemons, TLS, the fake MTA,
process stop, the system files a test may change).

The tests use the programs as an operator does: the commands installed by
`make test` into .venv (found on PATH), real sockets, real servers.  A
component that is missing fails the test; nothing is skipped for it.
"""

import os
import shutil
import signal
import sys

import pytest

from support import system_files
from support.programs import ROOT

# The package under test, for the tests that import it (the programs they
# run are the installed ones).
sys.path.insert(0, os.path.join(ROOT, "lib"))

from support.daemons import Daemon  # noqa: E402
from support.dnsmasq import LOOPBACK_RECORDS, DnsServer  # noqa: E402
from support.programs import nobody_ids  # noqa: E402
from support.smtp import InetdSmap  # noqa: E402
from support.tables import relay_control  # noqa: E402
from support.tls import Pki  # noqa: E402


@pytest.fixture
def table(tmp_path):
    """Write a table into the test's directory: table("smap: maxbytes 1") -> path."""
    def write(text, name="netperm-table"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return write


@pytest.fixture
def dns_server(tmp_path):
    servers = []

    def start(*records):
        s = DnsServer(tmp_path, records)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


# ------------------------------------------------------------------ smap


@pytest.fixture(scope="session")
def loopback_dns(tmp_path_factory):
    """One dnsmasq for the whole run: 127.0.0.1 is client.example.test,
    forward-confirmed; everything else under the test zones is NXDOMAIN.
    No test depends on the machine's own DNS."""
    server = DnsServer(tmp_path_factory.mktemp("dns"), LOOPBACK_RECORDS)
    yield server.port
    server.stop()


@pytest.fixture
def smap_table(tmp_path, loopback_dns):
    """smap_table(spool, extra="", name="smap") -> the path of a table for
    smap with the spool, a test host name and the test's DNS server."""
    import grp

    def write(spool, extra="", name="smap"):
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        text = (f"{name}: directory {spool}\n{name}: hostname test.example\n"
                f"{name}: resolver 127.0.0.1:{loopback_dns}\n{name}: userid nobody\n{name}: groupid {group}\n"
                + relay_control(name, extra) + extra)
        p = tmp_path / "netperm-table"
        p.write_text(text)
        return str(p)
    return write


@pytest.fixture
def smap(tmp_path):
    started = []

    def start(table, **kw):
        s = InetdSmap(table, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.kill()


@pytest.fixture
def public_tmp():
    """A directory every user can traverse (tmp_path's parents are root's
    only): for what a program reads or runs after dropping to nobody."""
    import tempfile
    d = tempfile.mkdtemp(prefix="smapd-test-", dir="/tmp")
    os.chmod(d, 0o755)
    from pathlib import Path
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------ processes, logs


# ------------------------------------------------------------ smap -daemon


@pytest.fixture
def daemon(tmp_path, loopback_dns):
    started = []

    def make(extra="", listen=None, start=True, relay_control=True):
        d = Daemon(tmp_path / f"d{len(started)}", loopback_dns, extra, listen, relay_control) if started else \
            Daemon(tmp_path, loopback_dns, extra, listen, relay_control)
        started.append(d)
        return d.start() if start else d
    yield make
    for d in started:
        d.stop()
        for pid in d.kids() if d.proc else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="session")
def pki():
    import tempfile
    from pathlib import Path
    d = Path(tempfile.mkdtemp(prefix="smapd-pki-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield Pki(d)
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------- the machine's defaults


def pytest_sessionstart(session):
    # A run killed while a system file was replaced left it so: mend it.
    if os.geteuid() == 0:
        system_files.restore_leftovers()
