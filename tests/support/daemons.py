"""smap -daemon, xinetd, and the default table they read."""

import contextlib
import grp
import os
import signal
import socket
import subprocess
from support.process import stop

from support import system_files
from support.logs import Syslog
from support.programs import children, command, free_port, make_spool, nobody_ids, wait_for
from support.smtp import Smtp
from support.tables import relay_control


class Daemon:
    """`smap -daemon -f` (as root) with a table of the test's own: `extra`
    lines appended, `listen` specs (default: 127.0.0.1 and a free port)."""

    def __init__(self, base, dns_port, extra="", listen=None, relay_control=True):
        self.base = base
        self.spool = make_spool(base / "spool")
        self.port = free_port()
        self.table = base / "netperm-table"
        self.pidfile = base / "smap.pid"
        self.scoreboard = base / "smap.scoreboard"
        self.syslog = Syslog(base / "log")
        self.dns_port = dns_port
        self.proc = None
        self.relay_control = relay_control
        self.write_table(extra, listen)

    def write_table(self, extra="", listen=None):
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        listen = listen or [f"127.0.0.1:{self.port}"]
        text = (f"smap: directory {self.spool}\nsmap: hostname test.example\n"
                f"smap: resolver 127.0.0.1:{self.dns_port}\nsmap: userid nobody\nsmap: groupid {group}\n"
                f"smap: pidfile {self.pidfile}\nsmap: scoreboard {self.scoreboard}\n"
                f"smap: log-socket {self.base / 'log'}\n"
                + "".join(f"smap: listen {spec}\n" for spec in listen)
                + (relay_control("smap", extra) if self.relay_control else "") + extra)
        self.table.write_text(text)

    def start(self, *args):
        self.proc = subprocess.Popen([command("smap"), "-daemon", "-f", "--config", str(self.table), *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.syslog.wait(r"started: listening on")
        self.master = int(wait_for(lambda: self.pidfile.read_text().strip(), what="the pid file"))
        assert self.master == self.proc.pid
        return self

    def log(self):
        return "\n".join(self.syslog.read())

    def kids(self):
        return children(self.master)

    def board(self):
        from smapd.prefork.scoreboard import Scoreboard
        return Scoreboard.open_readonly(str(self.scoreboard))

    def count(self, state):
        b = self.board()
        try:
            return b.count(state)
        finally:
            b.close()

    def wait_idle(self, n, at_least=False):
        from smapd.prefork.scoreboard import IDLE

        def ok():
            idle, kids = self.count(IDLE), len(self.kids())
            return (idle >= n) if at_least else (idle == n and kids == n)
        wait_for(ok, timeout=20, what=f"{n} idle children")

    def connect(self, addr="127.0.0.1", port=None):
        return Smtp(socket.create_connection((addr, port or self.port), timeout=30))

    def signal(self, sig):
        os.kill(self.master, sig)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.syslog.close()


DEFAULT_TABLE = "/usr/local/etc/netperm-table"


@contextlib.contextmanager
def installed_table(text):
    """`text` as the table of programs started without --config (xinetd
    passes none); whatever was there is put back afterwards
    (support/system_files.py says why, and mends an interrupted run)."""
    with system_files.replaced(DEFAULT_TABLE, text):
        yield DEFAULT_TABLE


@contextlib.contextmanager
def running_xinetd(tmp_path, stanzas, services):
    """The real xinetd on `stanzas` (a list of texts), in the foreground,
    until it says it serves `services` services."""
    conf = tmp_path / "xinetd.conf"
    conf.write_text("defaults\n{\n    instances = 50\n}\n\n" + "\n".join(stanzas))
    xlog = tmp_path / "xinetd.log"
    xinetd = subprocess.Popen(["xinetd", "-dontfork", "-f", str(conf), "-pidfile", str(tmp_path / "xinetd.pid"),
                               "-filelog", str(xlog)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wanted = f"Started working: {services} available service{'s' if services > 1 else ''}"
        wait_for(lambda: xlog.exists() and wanted in xlog.read_text(), what="xinetd to start")
        yield xinetd
    finally:
        stop(xinetd, timeout=10)
        xinetd.stderr.close()
