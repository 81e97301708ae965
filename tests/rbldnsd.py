"""A real, private rbldnsd (the DNSBL server many lists run) for the DNSBL tests.

    from rbldnsd import Rbldnsd

    with Rbldnsd({"bl.test": [("ip4set", ":127.0.0.2:listed\\n192.0.2.7\\n")]}) as rbl:
        ... DNS on 127.0.0.1:rbl.port (UDP): 7.2.0.192.bl.test A 127.0.0.2

Each zone is a list of (dataset type, data text); a zone built from
several datasets answers with the A records of all that list an address
(zen-style 127.0.0.2 and 127.0.0.10 together).  The data files live in a
directory of /tmp that every user can traverse: as root rbldnsd chroots
into it and runs as nobody (it refuses to run as root), otherwise as the
caller.  It runs in the foreground (-n), never reloads on its own (-c 0),
and writes its start-up messages to `rbldnsd.log` there.  rbldnsd answers
only A, TXT (and the SOA/NS given in the data) inside its zones, REFUSED
elsewhere: resolvers in front of it (dnsmasq) forward zones to it.
"""

import os
import shutil
import socket
import subprocess
import tempfile

from support.programs import free_port, nobody_ids, wait_for
from support.process import stop

RBLDNSD = shutil.which("rbldnsd") or "/usr/sbin/rbldnsd"

#: A DS record for the root that matches no key: given to a dnsmasq with
#: --dnssec, what it forwards to its default server fails validation,
#: which is how a test gets a real SERVFAIL from it.
BOGUS_ROOT_ANCHOR = ".,12345,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"


class Rbldnsd:
    def __init__(self, zones):
        assert os.access(RBLDNSD, os.X_OK), "rbldnsd is not installed (make test installs it)"
        self.zones = zones
        self.port = free_port(socket.SOCK_DGRAM)
        self.root = tempfile.mkdtemp(prefix="rbldnsd-test-", dir="/tmp")
        os.chmod(self.root, 0o755)
        self.logfile = os.path.join(self.root, "rbldnsd.log")
        self.proc = None

    def start(self):
        specs = []
        for n, (zone, datasets) in enumerate(self.zones.items()):
            for m, (kind, text) in enumerate(datasets):
                name = f"z{n}-{m}.{kind}"
                path = os.path.join(self.root, name)
                with open(path, "w") as f:
                    f.write(text)
                os.chmod(path, 0o644)
                specs.append(f"{zone}:{kind}:{name}")
        args = [RBLDNSD, "-n", "-c", "0", "-b", f"127.0.0.1/{self.port}"]
        if os.geteuid() == 0:
            uid, gid = nobody_ids()
            args += ["-u", f"{uid}:{gid}", "-r", self.root, "-w", "/"]
        else:
            args += ["-w", self.root]
        with open(self.logfile, "w") as log:
            self.proc = subprocess.Popen(args + specs, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wait_for(self._started, what=f"rbldnsd on 127.0.0.1:{self.port}")
        return self

    def _started(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"rbldnsd exited: {self.log()}")
        # The last line it writes once the zones are loaded and it serves.
        return " started (" in self.log()

    def log(self):
        with open(self.logfile) as f:
            return f.read()

    def stop(self):
        stop(self.proc, timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class DnsblNet:
    """rbldnsd serving `zones`, a validating dnsmasq in front of it (the
    resolver smap is pointed at, on 127.0.0.1:port) that answers
    `records` itself (dnsmasq options), forwards the `forwarded` zones to
    rbldnsd as a stub zone and anything else to it as the upstream, whose
    unsigned answers are then BOGUS (SERVFAIL), and `silent_zones` to a
    server that never answers."""

    def __init__(self, base, zones, forwarded, records=(), silent_zones=()):
        from support.dnsmasq import DnsServer
        self.silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.silent.bind(("127.0.0.1", 0))
        self.rbl = Rbldnsd(zones).start()
        up = f"127.0.0.1#{self.rbl.port}"
        hush = f"127.0.0.1#{self.silent.getsockname()[1]}"
        self.dns = DnsServer(base, (
            *records,
            *(f"--server=/{z}/{up}" for z in forwarded),
            *(f"--server=/{z}/{hush}" for z in silent_zones),
            f"--server={up}", "--dnssec", f"--trust-anchor={BOGUS_ROOT_ANCHOR}",
        ))
        self.port = self.dns.port

    def resolver(self, lifetime=5.0):
        from smapd.dnsclient import make_resolver
        return make_resolver([f"127.0.0.1:{self.port}"], lifetime=lifetime)

    def stop(self):
        self.dns.stop()
        self.rbl.stop()
        self.silent.close()
