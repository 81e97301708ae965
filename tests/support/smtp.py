"""Talking SMTP to smap byte by byte, and smap started in inetd mode on a socket pair."""

import socket
import subprocess

from support.programs import command


class Smtp:
    """A minimal SMTP client on a socket, for tests that need byte-level
    control (pipelining, bare LFs, oversized lines)."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(30)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def reply(self):
        """One whole reply: (code, [lines])."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed; got {lines!r} {self.buf!r}")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("ascii"))
            if line[3:4] == b" ":
                return int(line[:3]), lines

    def cmd(self, line):
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line)
        return self.reply()

    def closed(self):
        """True when the server has closed (EOF after any buffered text)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


class InetdSmap:
    """The installed smap started as inetd starts it: an accepted TCP
    connection on fds 0, 1 and 2; with -d the log goes to a file on fd 2."""

    def __init__(self, table, argv0="smap", extra_args=(), debug=True, source="127.0.0.1"):
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        with socket.socket(family) as listener:
            listener.bind((source if family == socket.AF_INET6 else "127.0.0.1", 0))
            listener.listen(1)
            client = socket.create_connection(listener.getsockname()[:2], source_address=(source, 0))
            conn, _ = listener.accept()
        args = [argv0, "--config", table, *(["-d"] if debug else []), *extra_args]
        # The log goes to a file: a pipe nobody reads would block smap.
        import tempfile
        self.logfile = tempfile.TemporaryFile()
        # Without -d, fd 2 is the connection too, as inetd leaves it.
        self.proc = subprocess.Popen(args, executable=command("smap"), stdin=conn, stdout=conn,
                                     stderr=self.logfile if debug else conn, close_fds=True)
        conn.close()
        self.smtp = Smtp(client)

    @property
    def log(self):
        """What smap logged so far."""
        self.logfile.seek(0)
        return self.logfile.read().decode("utf-8", "replace")

    def wait(self):
        self.smtp.close()
        return self.proc.wait(30)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.smtp.close()
