"""The socket session's framing and time limits, and the spool writer's
promises (lock, trigger, commit), in-process over real socket pairs."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from support.programs import wait_for
from support.smtp import Smtp
from smapd import spool as spool_module
from smapd.smap import session as session_module
from smapd.smap.protocol import MAX_COMMAND, Protocol, Settings
from smapd.smap.session import CHUNK, Framer, Limits, Session


class ChunkedSocket:
    """A socket stand-in that hands out pre-cut chunks, to put line ends
    and dots exactly on recv boundaries."""

    def __init__(self, chunks):
        self.chunks = list(chunks)

    def settimeout(self, t):
        pass

    def recv(self, n, flags=0):
        if flags:
            return self.chunks[0][:1] if self.chunks else b""
        return self.chunks.pop(0) if self.chunks else b""


def framer(chunks, crlf="strict"):
    return Framer(ChunkedSocket(chunks), Limits(crlf=crlf))


def message(chunks, crlf="strict", maxbytes=10 ** 9):
    out = []
    info = framer(chunks, crlf).read_message(out.append, maxbytes)
    return b"".join(out), info


@pytest.mark.parametrize("crlf", ["strict", "normalize"])
def test_cr_on_a_recv_boundary(crlf):
    f = framer([b"NOOP\r", b"\nQUIT\r\n"], crlf)
    assert f.read_command() == (b"NOOP", False, False)
    assert f.read_command() == (b"QUIT", False, False)
    body, info = message([b"a\r", b"\n.", b"\r", b"\n"], crlf)
    assert body == b"a\n" and not info.bad_eol


def test_command_length_limit_counts_the_crlf():
    ok = b"N" * (MAX_COMMAND - 2)
    assert framer([ok + b"\r\n"]).read_command() == (ok, False, False)
    assert framer([ok + b"X\r\nNOOP\r\n"]).read_command() == (b"", True, False)
    f = framer([b"X" * 700, b"Y" * 700 + b"\r", b"\nNOOP\r\n"])
    assert f.read_command() == (b"", True, False)
    assert f.read_command() == (b"NOOP", False, False)  # not split, not lost


@pytest.mark.parametrize("size", [CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK])
def test_long_lines_cross_chunks(size):
    line = b"." + b"z" * size
    chunks = [line[i:i + 4096] for i in range(0, len(line), 4096)] + [b"\r\n.\r", b"\n"]
    body, info = message(chunks)
    assert body == line[1:] + b"\n" and info.size == len(body) and not info.bad_eol


def test_a_lone_dot_after_a_partly_written_long_line_is_not_the_end():
    long = b"q" * (2 * CHUNK)
    body, _ = message([long, b".", b"\r\n", b"tail\r\n.\r\n"])
    assert body == long + b".\ntail\n"


def test_dot_on_a_boundary_ends_the_message():
    body, _ = message([b"one\r\n", b".", b"\r\n", b"NOOP\r\n"])
    assert body == b"one\n"


def test_maxbytes_reads_to_the_end():
    body, info = message([b"x" * 100 + b"\r\n" for _ in range(10)] + [b".\r\n"], maxbytes=250)
    assert info.too_big and info.size == 1010 and len(body) <= 250


# ------------------------------------------------------------ time limits

def run_session(limits, client_actions, spool="/nonexistent"):
    server, client = socket.socketpair()
    sess = Session(server, Protocol(Settings(hostname="test.example")), limits, str(spool),
                   "test.example", "unknown", "192.0.2.7")
    t = threading.Thread(target=sess.serve, daemon=True)
    t.start()
    s = Smtp(client)
    try:
        return client_actions(s), t
    finally:
        s.close()
        wait_for(lambda: not t.is_alive(), timeout=30, what="the session to end")


def test_idle_timeout():
    def client(s):
        assert s.reply()[0] == 220
        return s.reply(), s.closed()
    (reply, closed), _ = run_session(Limits(idle=0.5, session=30), client)
    assert reply == (421, ["421 4.4.2 test.example Error: timeout exceeded"]) and closed


def test_session_deadline_with_a_busy_client():
    def client(s):
        assert s.reply()[0] == 220
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            code, lines = s.cmd("NOOP")
            if code != 250:
                return code, lines, time.monotonic() - t0
        return None
    (code, lines, elapsed), _ = run_session(Limits(idle=5, session=1.5), client)
    assert (code, lines) == (421, ["421 4.4.2 test.example Error: session time limit exceeded"])
    assert elapsed < 5


def test_minimum_data_rate(monkeypatch, tmp_path):
    monkeypatch.setattr(session_module, "RATE_GRACE", 0.3)

    def client(s):
        assert s.reply()[0] == 220
        for line in ("HELO c.example", "MAIL FROM:<a@x.example>", "RCPT TO:<b@y.example>"):
            assert s.cmd(line)[0] == 250
        assert s.cmd("DATA")[0] == 354
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            s.send(b"x")
            time.sleep(0.05)  # the trickling client itself, not synchronisation
            try:
                s.sock.settimeout(0.01)
                return s.reply()
            except (socket.timeout, TimeoutError):
                s.sock.settimeout(30)
        return None
    reply, _ = run_session(Limits(idle=5, session=60, min_rate=1000), client, tmp_path)
    assert reply == (421, ["421 4.4.2 test.example Error: data rate too low"])


def test_a_client_that_does_not_read_cannot_outlive_the_deadline(monkeypatch):
    monkeypatch.setattr(session_module, "FINAL_SEND", 0.5)
    monkeypatch.setattr(session_module, "LINGER", 0.5)
    server, client = socket.socketpair()
    for s in (server, client):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sess = Session(server, Protocol(Settings(hostname="test.example", errors_max=10 ** 6)),
                   Limits(idle=1, session=2), "/nonexistent", "test.example", "unknown", "192.0.2.7")
    t = threading.Thread(target=sess.serve, daemon=True)
    t0 = time.monotonic()
    t.start()
    client.settimeout(0.5)
    try:
        client.sendall(b"NOOP\r\n" * 5000)
    except (socket.timeout, OSError):
        pass  # smap stopped reading: it is blocked writing replies we never read
    wait_for(lambda: not t.is_alive(), timeout=20, what="the session to give up")
    assert time.monotonic() - t0 < 2 + session_module.FINAL_SEND + session_module.LINGER + 2
    client.close()


# --------------------------------------------------------------- spool

def writer(directory):
    return spool_module.SpoolWriter(str(directory), "a@x.example", ["b@y.example"], b"Received: x\n")


def lock_held_elsewhere(path):
    """Can another process take the fcntl lock on `path`?"""
    code = ("import fcntl, sys\nf = open(sys.argv[1], 'rb+')\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX | "
            "fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(1)\n")
    return subprocess.run([sys.executable, "-c", code, path]).returncode == 1


def test_the_temporary_file_is_locked_and_private_until_commit(tmp_path):
    w = writer(tmp_path)
    w.write(b"body\n")
    assert os.path.basename(w.temp).startswith("xma")
    assert os.stat(w.temp).st_mode & 0o777 == 0o660   # the writer and its group (smapd), whatever the umask
    assert lock_held_elsewhere(w.temp)
    w.commit()
    assert not os.path.exists(w.temp)
    assert not lock_held_elsewhere(w.final)
    assert open(w.final, "rb").read() == b"FROM <a@x.example>\nRCPT <b@y.example>\nBODY\nReceived: x\nbody\n"


@settings(max_examples=200, deadline=None)
@given(value=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
       | st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_attribute_values_read_back_unchanged_whatever_the_client_said(tmp_path_factory, value):
    """An ATTR value is xtext on disk: one line of printable ASCII, and
    the reader returns what the writer was given, blanks, `+`, `=`,
    8-bit octets and all."""
    d = tmp_path_factory.mktemp("attr")
    w = spool_module.SpoolWriter(str(d), "a@x.example", ["b@y.example"], b"Received: x\n",
                                 attributes={"helo": value, "client-addr": "192.0.2.1", "login": None})
    w.commit()
    data = open(w.final, "rb").read()
    head = data.split(b"\nRCPT ", 1)[0]
    assert all(0x21 <= c <= 0x7e or c == 0x20 or c == 0x0a for c in head)
    assert head.count(b"\n") == 2   # FROM and the two attributes given a value: one line each
    with open(w.final, "rb") as f:
        env = spool_module.read_envelope(f)
    assert env.attributes == {"helo": value, "client-addr": "192.0.2.1"}
    assert env.recipients == ["b@y.example"] and env.sender == "a@x.example"


@pytest.mark.parametrize("head, why", [
    (b"ATTR helo=x\nFROM <a@x.example>\n", "the first line is not FROM"),
    (b"FROM <a@x.example>\nRCPT <b@y.example>\nATTR helo=x\n", "not between FROM and the first RCPT"),
    (b"FROM <a@x.example>\nATTR helo=a+zz\n", "bad envelope line"),
    (b"FROM <a@x.example>\nATTR Helo=x\n", "bad envelope line"),
    (b"FROM <a@x.example>\nATTR helo=a b\n", "bad envelope line")])
def test_misplaced_or_malformed_attributes_make_a_file_corrupt(tmp_path, head, why):
    path = tmp_path / "smaX"
    path.write_bytes(head + b"RCPT <b@y.example>\nBODY\nhi\n")
    with open(path, "rb") as f, pytest.raises(spool_module.Corrupt, match=why):
        spool_module.read_envelope(f)


def test_commit_pokes_the_trigger_fifo(tmp_path):
    fifo = tmp_path / ".trigger"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = writer(tmp_path)
        w.commit()
        assert os.read(fd, 16) == b"\n"
    finally:
        os.close(fd)
    writer(tmp_path).commit()  # no reader: still fine


def test_directory_fsync_failure_takes_the_message_back(tmp_path, monkeypatch):
    def fail(directory):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(spool_module, "fsync_dir", fail)
    w = writer(tmp_path)
    with pytest.raises(OSError):
        w.commit()
    assert os.listdir(tmp_path) == []


def test_queue_ids_are_unique():
    ids = {spool_module.new_queue_id() for _ in range(10000)}
    assert len(ids) == 10000 and all(i.isalnum() for i in ids)
