"""A real DNS server for the tests: dnsmasq answering only from its command line."""

import os
import shutil
import socket
import subprocess
from support.process import stop

from support.programs import free_port, wait_for


class DnsServer:
    """dnsmasq answering only from its command line, on 127.0.0.1:port."""

    def __init__(self, tmp_path, records):
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        assert os.access(binary, os.X_OK), "dnsmasq is not installed (make test installs it)"
        self.log = tmp_path / "dnsmasq.log"
        for attempt in range(3):
            # A free port is free when asked, not necessarily when dnsmasq
            # binds it (TCP and UDP both): another try on another port.
            self.port = free_port(socket.SOCK_DGRAM)
            args = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                    "--bind-interfaces", "--listen-address=127.0.0.1",
                    f"--port={self.port}", f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--user=root",
                    "--log-queries", f"--log-facility={self.log}", *records]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_for(self._answers, what=f"dnsmasq on port {self.port}")
                return
            except AssertionError as e:
                # "in use", or an exit with nothing said (seen once at the
                # start of a run): another port, another try.
                if attempt == 2 or not ("in use" in str(e) or str(e).rstrip().endswith("exited:")):
                    raise

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self.proc.stderr.read().decode()}")
        import dns.message
        import dns.query
        q = dns.message.make_query("ready.invalid.", "A")
        try:
            dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.2)
            return True
        except Exception:
            return False

    def resolver(self):
        from smapd.dnsclient import make_resolver
        return make_resolver([f"127.0.0.1:{self.port}"], lifetime=3.0)

    def stop(self):
        stop(self.proc, timeout=5)


def wire_name(name):
    """A domain name in DNS wire form, as hex (dnsmasq's --dns-rr data)."""
    return (b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0").hex()


LOOPBACK_RECORDS = ("--local=/example.test/", "--local=/example.org/", "--local=/127.in-addr.arpa/",
                    "--local=/ip6.arpa/", "--host-record=client.example.test,127.0.0.1",
                    # A client from "outside", for what smapd passes on to the MTA.
                    "--host-record=outside.example.test,127.0.0.44",
                    # Name servers for the senders' domains (nospam ns-required).
                    f"--dns-rr=example.test,2,{wire_name('ns.example.test')}",
                    f"--dns-rr=example.org,2,{wire_name('ns.example.org')}")
