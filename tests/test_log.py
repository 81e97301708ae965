"""Log lines: syslog datagrams as a syslog daemon receives them, stderr with -d,
and peer text that can neither forge a line nor flood one."""

import io
import os
import socket

import pytest

from smapd import log


@pytest.mark.parametrize("raw, shown", [
    ("plain text", "plain text"),
    ("evil\r\nsmap[1]: forged", "evil\\x0d\\x0asmap[1]: forged"),
    ("nul\0byte", "nul\\x00byte"),
    ("esc\x1b[31mred", "esc\\x1b[31mred"),
    ("del\x7f", "del\\x7f"),
    ("c1\x85next", "c1\\x85next"),
    ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"),
    ("line\u2028sep", "line\\u2028sep"),
    ("back\\x0aslash", "back\\\\x0aslash"),
    ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),
    (b"bytes \xff\xfe\r\n", "bytes \\\\xff\\\\xfe\\x0d\\x0a"),
])
def test_sanitize(raw, shown):
    assert log.sanitize(raw) == shown


def test_sanitize_caps_length():
    out = log.sanitize("A" * 100000)
    assert len(out) == log.MAX_PEER_TEXT + 3 and out.endswith("...")
    out = log.sanitize("\0" * 1000)
    assert len(out) <= log.MAX_PEER_TEXT + 3 and "\0" not in out


@pytest.fixture
def syslog_socket(tmp_path):
    path = str(tmp_path / "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()


def test_syslog_mail_facility_and_sanitised_arguments(syslog_socket):
    path, sock = syslog_socket
    logger = log.setup("smmap", socket_path=path)
    logger.info("connect host=%s/%s", "evil\r\nsmmap[1]: exiting", "192.0.2.7")
    data = sock.recv(65536).decode()
    # <22>: facility mail (2) * 8 + info (6)
    assert data == f"<22>smmap[{os.getpid()}]: connect host=evil\\x0d\\x0asmmap[1]: exiting/192.0.2.7\x00"
    logger.warning("refused %s", "x" * 5000)
    data = sock.recv(65536).decode()
    assert data.startswith(f"<20>smmap[{os.getpid()}]: refused xxx") and len(data) < 400


def test_configured_facility(syslog_socket):
    path, sock = syslog_socket
    logger = log.setup("ssl-gw", facility="local3", socket_path=path)
    logger.error("%s", "boom")
    # local3 = 19; 19 * 8 + err (3)
    assert sock.recv(65536).decode() == f"<155>ssl-gw[{os.getpid()}]: boom\x00"


def test_debug_goes_to_stderr():
    stream = io.StringIO()
    logger = log.setup("smap", debug=True, stream=stream)
    logger.info("from=%s size=%d", "<a@b>\n", 12)
    assert stream.getvalue() == f"smap[{os.getpid()}]: from=<a@b>\\x0a size=12\n"


def test_no_syslog_socket_falls_back_to_stderr(tmp_path):
    stream = io.StringIO()
    logger = log.setup("smapd", socket_path=str(tmp_path / "missing"), stream=stream)
    logger.info("%s", "hello")
    lines = stream.getvalue().splitlines()
    assert "cannot connect to syslog at" in lines[0] and lines[0].endswith("logging to stderr")
    assert lines[1].endswith(f"smapd[{os.getpid()}]: hello")


def test_vanished_syslog_does_not_raise(syslog_socket):
    path, sock = syslog_socket
    logger = log.setup("smap", socket_path=path)
    sock.close()
    os.unlink(path)
    logger.info("%s", "nobody listens")  # must not raise
