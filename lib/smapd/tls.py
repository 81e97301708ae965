"""TLS contexts for smap (STARTTLS, smtps) and ssl-gw, built once, before any jail.

What it does: `server_context()` builds an `ssl.SSLContext` from a PEM
holding the private key and the certificate (chain): TLS 1.2 at least
(`tls-min 1.3` for 1.3 only), AEAD ciphers with forward secrecy only
(ECDHE with AES-GCM or ChaCha20; TLS 1.3's suites are all of that kind),
no compression, no renegotiation at all (which covers the client-initiated
kind), the server's cipher order.  Client certificates follow stunnel 3's
verify levels (`-v`):
  0  none asked for (Python's ssl cannot ask and then ignore the answer,
     which is what stunnel 3 did; not asking is the honest equivalent);
  1  asked for; verified when one is offered (a bad one fails the handshake);
  2  required and verified;
  3  required, verified, and the certificate itself must be one of the
     certificates installed locally (`-A` file, `-a` directory), compared
     DER-exact: a different certificate with the same subject is refused
     (stunnel 3 compared only the subject name).
`describe()` and `peer_subject()` give the log its words.

What it trusts: the PEM and CA files the operator configured (read as
root, before the jail: the private key stays root's file).

What it must never do: allow a protocol older than TLS 1.2, a cipher
without forward secrecy or authentication, compression or renegotiation,
or accept a level-3 client on its subject alone.
"""

from __future__ import annotations

import os
import ssl
from typing import Optional

#: TLS 1.2 suites: forward secrecy and AEAD only.  (TLS 1.3 suites are fixed.)
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP:!DSS"

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(Exception):
    """A configuration that cannot make a context (file and reason in the text)."""


def server_context(pem: str, *, tls_min: str = "1.2", ciphers: Optional[str] = None, verify: int = 0,
                   ca_file: Optional[str] = None, ca_dir: Optional[str] = None,
                   system_cas: bool = False, half_close: bool = False) -> ssl.SSLContext:
    """A server context.  `verify` is the stunnel level 0-3; `system_cas`:
    verify client certificates against the system's CAs when no ca_file or
    ca_dir is given (smap's `ssl-auth` without `ssl-ca`).  `half_close`
    (ssl-gw): a client's TCP FIN without close_notify ends its direction
    only, as stunnel treats it, instead of failing the connection (OpenSSL
    3 would then refuse to send the backend's answer); the protocols
    relayed delimit their own messages, so a cut stream is not taken for
    a whole one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[tls_min]
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_SINGLE_ECDH_USE | ssl.OP_SINGLE_DH_USE)
    if half_close:
        ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    try:
        ctx.set_ciphers(ciphers or DEFAULT_CIPHERS)
    except ssl.SSLError:
        raise TlsError(f"no usable cipher in {ciphers!r}") from None
    try:
        ctx.load_cert_chain(pem, password=_no_password)
    except FileNotFoundError:
        raise TlsError(f"{pem}: no such file") from None
    except PermissionError:
        raise TlsError(f"{pem}: permission denied") from None
    except (ssl.SSLError, ValueError, TypeError) as e:
        raise TlsError(f"{pem}: not a usable private key and certificate ({_reason(e)})") from None
    if verify > 0:
        ctx.verify_mode = ssl.CERT_OPTIONAL if verify == 1 else ssl.CERT_REQUIRED
        if ca_file or ca_dir:
            try:
                ctx.load_verify_locations(cafile=ca_file, capath=ca_dir)
            except (OSError, ssl.SSLError) as e:
                raise TlsError(f"{ca_file or ca_dir}: cannot load CA certificates ({_reason(e)})") from None
        elif system_cas:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        else:
            raise TlsError(f"verify level {verify} needs CA certificates (-A file or -a directory)")
        if verify >= 3:
            # The local installation is the trust: a client's certificate
            # installed alone (without its CA) verifies.
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def client_context(pem: Optional[str] = None, *, tls_min: str = "1.2", ciphers: Optional[str] = None,
                   verify: int = 0, ca_file: Optional[str] = None, ca_dir: Optional[str] = None) -> ssl.SSLContext:
    """ssl-gw -c's context, for the TLS server it connects to: the same
    protocols and ciphers as a server context, `pem` as the client
    certificate when given, and stunnel 3's levels for the server's
    certificate: 0 not verified (stunnel 3's default), 1 and 2 verified
    against `ca_file`/`ca_dir` (a server always shows one, so "when
    offered" is always), 3 also one of the locally installed ones
    (`check_peer`).  The name is not compared with the certificate, as
    stunnel 3 did not: level 3 pins the certificate itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = VERSIONS[tls_min]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    try:
        ctx.set_ciphers(ciphers or DEFAULT_CIPHERS)
    except ssl.SSLError:
        raise TlsError(f"no usable cipher in {ciphers!r}") from None
    ctx.check_hostname = False
    if pem:
        try:
            ctx.load_cert_chain(pem, password=_no_password)
        except OSError as e:
            raise TlsError(f"{pem}: {e.strerror}") from None
        except (ssl.SSLError, ValueError, TypeError) as e:
            raise TlsError(f"{pem}: not a usable private key and certificate ({_reason(e)})") from None
    if verify <= 0:
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if not (ca_file or ca_dir):
        raise TlsError(f"verify level {verify} needs CA certificates (-A file or -a directory)")
    try:
        ctx.load_verify_locations(cafile=ca_file, capath=ca_dir)
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"{ca_file or ca_dir}: cannot load CA certificates ({_reason(e)})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    if verify >= 3:
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def _no_password():
    # Called only for an encrypted key: a daemon has nobody to ask.
    raise TypeError("the private key is encrypted; a daemon cannot ask for its pass phrase")


def _reason(e) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


def local_certificates(ca_file: Optional[str] = None, ca_dir: Optional[str] = None) -> frozenset:
    """The DER of every certificate in `ca_file` and in the files of
    `ca_dir` (verify level 3's "locally installed" certificates)."""
    paths = [ca_file] if ca_file else []
    if ca_dir:
        paths += sorted(os.path.join(ca_dir, n) for n in os.listdir(ca_dir)
                        if os.path.isfile(os.path.join(ca_dir, n)))
    out = set()
    for path in paths:
        try:
            with open(path, "r", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise TlsError(f"{path}: {e.strerror}") from None
        for block in text.split("-----BEGIN CERTIFICATE-----")[1:]:
            body = block.split("-----END CERTIFICATE-----", 1)[0]
            pem = "-----BEGIN CERTIFICATE-----" + body + "-----END CERTIFICATE-----\n"
            try:
                out.add(ssl.PEM_cert_to_DER_cert(pem))
            except ValueError:
                continue
    return frozenset(out)


def check_peer(sock: ssl.SSLSocket, verify: int, local: frozenset = frozenset()) -> Optional[str]:
    """After the handshake: None when the peer may go on, else why not
    (level 3: its certificate is not one of the local ones)."""
    if verify < 3:
        return None
    side = "client" if sock.server_side else "server"
    der = sock.getpeercert(binary_form=True)
    if der is None:
        return f"no {side} certificate"
    if der not in local:
        return f"{side} certificate {peer_subject(sock) or '?'} is not one of the locally installed ones"
    return None


_SHORT = {"countryName": "C", "stateOrProvinceName": "ST", "localityName": "L", "organizationName": "O",
          "organizationalUnitName": "OU", "commonName": "CN"}


def peer_subject(sock: ssl.SSLSocket) -> Optional[str]:
    """The verified client certificate's subject in OpenSSL's one-line
    form (`/C=DE/O=Example/CN=client`), or None."""
    try:
        cert = sock.getpeercert()
    except (ValueError, ssl.SSLError):
        return None
    if not cert:
        return None
    return "".join(f"/{_SHORT.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn) or None


def handshake_failure(e: OSError) -> str:
    """Why a server-side handshake failed, for the log: OpenSSL's reason
    and, for a client certificate that did not verify, the verifier's
    own words and code, as stunnel logs them (`CERTIFICATE_VERIFY_FAILED:
    certificate has expired (X509 error 10)`).  Python's ssl module has
    no verify callback, so the depth and subject of the certificate at
    fault are not known here."""
    reason = _reason(e)
    if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
        return f"{reason}: {e.verify_message} (X509 error {e.verify_code})"
    return reason


def describe(sock: ssl.SSLSocket) -> str:
    """`TLSv1.3 TLS_AES_256_GCM_SHA384 (256 bits)` for the log."""
    cipher = sock.cipher()
    if not cipher:
        return sock.version() or "TLS"
    name, _, bits = cipher
    return f"{sock.version()} {name} ({bits} bits)"
