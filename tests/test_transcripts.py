"""The transcript corpus (tests/transcripts/*.txt), run twice: through the
pure protocol state machine, and through the socket session over a real
socket pair with the spool in a temporary directory.

Format: `S: reply line` (a trailing `*` matches any rest), `C: client
line` (consecutive C lines are sent together, as one pipelined group),
`D: n` (the reply before it was delayed n seconds, the tarpit: checked
on the state machine only), `!set key=value…` (settings), `#` comments.
A transcript that starts with C lines has the client talk before the
greeting.
"""

import glob
import os
import socket
import threading

import pytest

from smapd.smap.protocol import Protocol, Settings
from smapd.smap.session import Limits, Session

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transcripts")
FILES = sorted(glob.glob(os.path.join(HERE, "*.txt")))


def load(path):
    settings = dict(hostname="test.example")
    steps = []
    for raw in open(path, encoding="ascii").read().splitlines():
        if not raw or raw.startswith("#"):
            continue
        if raw.startswith("!set "):
            for item in raw[5:].split():
                key, value = item.split("=")
                settings[key.replace("-", "_")] = int(value)
            continue
        kind, text = raw[:2], raw[3:] if len(raw) > 2 else ""
        assert kind in ("S:", "C:", "D:"), f"{path}: bad line {raw!r}"
        if kind == "C:" and steps and steps[-1][0] == "C":
            steps[-1][1].append(text)
        elif kind == "C:":
            steps.append(("C", [text]))
        else:
            steps.append((kind[0], text))
    return Settings(**settings), steps


def matches(expected, actual):
    if expected.endswith("*"):
        return actual.startswith(expected[:-1])
    return actual == expected


def expected_output(steps, with_delays=True):
    return [f"{k}: {t}" for k, t in steps if k == "S" or (k == "D" and with_delays)]


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_state_machine(path):
    settings, steps = load(path)
    proto = Protocol(settings)
    out = []

    def emit(result):
        for r in result.replies:
            out.extend(f"S: {line}" for line in r.text.split("\r\n"))
        if result.delay:
            out.append(f"D: {result.delay:g}")
        return result

    closed = False
    emit(proto.early_talker() if steps[0][0] == "C" else proto.connect())
    closed = proto.closed
    in_data, size = False, 0
    for kind, value in steps:
        if kind != "C" or closed:
            continue
        for i, line in enumerate(value):
            if closed:
                break
            if in_data:
                if line == ".":
                    in_data = False
                    r = emit(proto.data_end(size, too_big=size > settings.maxbytes))
                    if r.action == "spool":
                        emit(proto.spooled("QUEUEID"))
                else:
                    size += len(line[1:] if line.startswith(".") else line) + 1
                continue
            r = emit(proto.line(line.encode(), pipelined=i < len(value) - 1))
            if r.action == "data":
                emit(proto.data_started())
                in_data, size = True, 0
            closed = r.closes
    want = expected_output(steps)
    assert len(out) == len(want), "\n".join(out)
    for w, a in zip(want, out):
        assert matches(w, a), f"expected {w!r}, got {a!r}"


def read_line(f):
    line = f.readline()
    assert line, "the server closed the connection"
    assert line.endswith(b"\r\n"), f"reply without CRLF: {line!r}"
    return line[:-2].decode("ascii")


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_socket_session(path, tmp_path):
    settings, steps = load(path)
    server, client = socket.socketpair()
    client.settimeout(15)
    session = Session(server, Protocol(settings, "unknown", "192.0.2.7"), Limits(idle=15, session=60),
                      str(tmp_path), "test.example", "unknown", "192.0.2.7")
    if steps[0][0] == "C":  # the early talker speaks before the server runs
        client.sendall(b"".join(line.encode() + b"\r\n" for line in steps[0][1]))
        steps = steps[1:]
    thread = threading.Thread(target=session.serve, daemon=True)
    thread.start()
    f = client.makefile("rb")
    try:
        for kind, value in steps:
            if kind == "C":
                client.sendall(b"".join(line.encode() + b"\r\n" for line in value))
            elif kind == "S":
                got = read_line(f)
                assert matches(value, got), f"expected {value!r}, got {got!r}"
        assert f.read() == b"", "the server said more, or did not close"
    finally:
        f.close()  # the file object keeps the descriptor open otherwise
        client.close()
        thread.join(10)
        server.close()
    assert not thread.is_alive()
    queued = sum(1 for k, t in steps if k == "S" and t.startswith("250 2.0.0 Ok: queued as"))
    files = sorted(os.listdir(tmp_path))
    assert len(files) == queued and all(f.startswith("sma") for f in files), files
