"""A syslog socket of the test's own."""

import re
import socket

from support.programs import wait_for


class Syslog:
    """A syslog socket of the test's own, as rsyslog would offer one, read
    all the time by a thread: a syslog daemon that stops reading makes
    every logging process block (the datagram queue is short)."""

    def __init__(self, path):
        import threading
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.lines = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.lines.append(data.decode("utf-8", "replace").rstrip("\x00"))

    def read(self):
        return list(self.lines)

    def wait(self, pattern):
        return wait_for(lambda: [l for l in self.read() if re.search(pattern, l)], what=f"log line {pattern!r}")

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()
