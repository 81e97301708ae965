"""A syslog socket of the test's own."""

import datetime
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
        self._file = None
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
            line = data.decode("utf-8", "replace").rstrip("\x00")
            self.lines.append(line)
            if self._file is not None:
                self._write(line)

    def write_file(self, path, hostname=None):
        """From now on, also append each line received to the file `path`,
        as rsyslog's RSYSLOG_FileFormat writes a mail log: an RFC 3339
        time stamp (the arrival's, in microseconds), the host name, then
        `program[pid]: text` without its <PRI>.  Each line is flushed at
        once, so a reader sees whole lines only."""
        self._hostname = hostname or socket.gethostname().split(".")[0]
        self._file = open(path, "a", encoding="utf-8", errors="replace")

    def _write(self, line):
        # The <PRI>, and the RFC 3164 time stamp that syslog(3) sends (the
        # suite's programs send none): the file's stamp replaces it.
        text = re.sub(r"^<\d+>(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d )?", "", line)
        stamp = datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="microseconds")
        self._file.write(f"{stamp} {self._hostname} {text}\n")
        self._file.flush()

    def read(self):
        return list(self.lines)

    def wait(self, pattern):
        return wait_for(lambda: [l for l in self.read() if re.search(pattern, l)], what=f"log line {pattern!r}")

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()
        if self._file is not None:
            self._file.close()
