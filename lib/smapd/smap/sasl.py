"""The SASL decoding of SMTP AUTH (RFC 4954): what a client sends.

What it does: decodes one SASL response line (`b64decode_strict`) and a
PLAIN response (`decode_plain`, RFC 4616).  The protocol state machine
imports it; checking the password is the caller's (password_file.py).

What it trusts: nothing: every decoder refuses what is not strictly
formed (ValueError).

What it must never do: touch a file, a socket or a clock, or put a
decoded password into an exception.
"""

from __future__ import annotations

import base64
import re

_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")



def b64decode_strict(text: str) -> bytes:
    """The bytes of one SASL response line (RFC 4954): strict base64, no
    whitespace, correct padding, no stray bits; `=` alone (how a client
    sends an empty initial response) and an empty line are the empty
    response.  ValueError otherwise; the `*` that cancels an exchange is
    the caller's to see first."""
    if not isinstance(text, str):
        raise TypeError("a SASL response is decoded from str")
    if text == "=":
        return b""
    if not _BASE64.fullmatch(text):
        raise ValueError("not base64")
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("not canonical base64")
    return data


class ProxyAuthorizationError(ValueError):
    """A PLAIN response asking to act as another user than the one it
    authenticates (an authzid other than the authcid): we do not
    support proxy authorization."""


def decode_plain(response: bytes):
    """(authzid, authcid, password) of a PLAIN response (RFC 4616):
    `[authzid] NUL authcid NUL passwd`, each UTF-8, authcid and passwd
    not empty.  The two identities are str, the password the bytes sent.
    ValueError when malformed; ProxyAuthorizationError (a ValueError)
    when an authzid is given and is not the authcid."""
    parts = bytes(response).split(b"\0")
    if len(parts) != 3:
        raise ValueError("a PLAIN response is authzid NUL authcid NUL password")
    authzid, authcid, password = parts
    if not authcid:
        raise ValueError("the PLAIN response has no user name")
    if not password:
        raise ValueError("the PLAIN response has no password")
    try:
        authzid_text, authcid_text = authzid.decode("utf-8"), authcid.decode("utf-8")
        password.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the PLAIN response is not UTF-8") from None
    if authzid_text and authzid_text != authcid_text:
        raise ProxyAuthorizationError("authorization as another user is not supported")
    return authzid_text, authcid_text, password
