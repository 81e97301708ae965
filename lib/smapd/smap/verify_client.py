"""smap's side of recipient-verify: one question to smapd's verifier.

What it does: `ask(spool_dir, address)` connects to the verifier's UNIX
socket in the spool (spool.VERIFY_SOCKET: "/.verify" inside the jail),
sends the one line of verify_wire.py and reads the answer: (code,
enhanced status, text), or None when the verifier cannot be reached,
times out or answers nonsense (the caller then answers 451 4.4.3).

What it trusts: nothing of the answer beyond its shape (verify_wire).

What it must never do: wait longer than TIMEOUT, or turn a verifier it
cannot reach into anything but None.
"""

from __future__ import annotations

import os
import socket

from smapd import verify_wire
from smapd.spool import VERIFY_SOCKET

#: Seconds for the whole question: the verifier's probe (10 s at most)
#: and its wait for a free probe.
TIMEOUT = 25.0


def ask(spool_dir: str, address: str):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(os.path.join(spool_dir, VERIFY_SOCKET))
            sock.sendall(verify_wire.request(address))
            data = b""
            while not data.endswith(b"\n") and len(data) < verify_wire.MAX_LINE:
                piece = sock.recv(verify_wire.MAX_LINE)
                if not piece:
                    break
                data += piece
    except (OSError, UnicodeError):
        return None
    return verify_wire.parse_answer(data)
