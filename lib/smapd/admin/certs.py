"""Keys and certificates: `smapctl mkcert` and `smapctl certinfo`.

What it does: `mkcert` makes what stunnel's `make stunnel.pem` made, one
PEM file holding a fresh private key and then its certificate, either
self-signed or signed by a CA of the operator's (`--ca CA.pem`, a file of
the same form), and it makes that CA too (`--make-ca`).  `certinfo`
describes every certificate of a PEM file (names, validity, key,
extensions, the SHA-256 fingerprint as `openssl x509 -fingerprint -sha256`
prints it) and says whether the file's private key is the certificate's
and whether others can read it.  The helpers below (`load_pem_certificates`,
`fingerprint_sha256`, `der`, `format_name`) serve the rest of the suite,
such as ssl-gw's `-v 3`, which compares certificates by their DER bytes.

Certificates are built and parsed with the `cryptography` package (the
certificate API of pyOpenSSL is deprecated); whether a key belongs to a
certificate is asked of OpenSSL itself through pyOpenSSL, with the very
check (SSL_CTX_check_private_key) ssl-gw's TLS context makes when it
loads the file.

What it trusts: the operator's arguments, and the CA file named with
`--ca` (its key signs what mkcert makes).  Nothing in a file given to
certinfo: every name it prints has its control characters escaped.

What it must never do: print a private key; write one to a file that
another user can read, through a symbolic link, or over an existing file
(only with `--force`, and then by renaming a complete new file into
place, so that a daemon reloading on HUP never reads half of one); sign
with a CA key that is not the CA certificate's, or with a certificate
that is not a CA's.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import secrets
import socket
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smapd.exits import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from smapd.files import existing_kind, fsync_dir, read_regular, write_private

#: The key of `--key`.  RSA 2048 is the default because it is the one key
#: every mail client still in use can handshake with (ssl-gw and smap
#: serve the oldest of them); ec:p256 is stronger and much faster.
DEFAULT_KEY = "rsa:2048"
DEFAULT_DAYS = 365
#: A life longer than a century is a typo.
MAX_DAYS = 36500

_RSA_SIZES = (2048, 3072, 4096)
_CURVES = {"p256": ec.SECP256R1, "p384": ec.SECP384R1}
KEY_SPECS = tuple([f"rsa:{n}" for n in _RSA_SIZES] + [f"ec:{c}" for c in _CURVES])

#: notBefore lies this far in the past, so that a host whose clock is a
#: little behind the one that made the certificate accepts it at once.
CLOCK_SKEW = timedelta(minutes=5)

#: certinfo reads no more than this from a file (a PEM file is a few KB;
#: a path naming a device or a huge file must not fill the memory).
MAX_PEM_BYTES = 1 << 20

_SANS_HELP = "DNS:name, IP:address, email:address or URI:uri"


class CertError(Exception):
    """A file that cannot be read or used, or a request that cannot be
    met; the message names the file when there is one."""


# ------------------------------------------------------------------ names

#: Attribute types as OpenSSL's one-line form spells them (`/C=DE/CN=x`),
#: which is what `--subject` takes and what certinfo and ssl-gw's log print.
_NAME_TYPES = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME,
    "emailAddress": NameOID.EMAIL_ADDRESS, "serialNumber": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT, "UID": NameOID.USER_ID, "street": NameOID.STREET_ADDRESS,
    "SN": NameOID.SURNAME, "GN": NameOID.GIVEN_NAME, "title": NameOID.TITLE, "initials": NameOID.INITIALS,
    "pseudonym": NameOID.PSEUDONYM, "dnQualifier": NameOID.DN_QUALIFIER,
    "generationQualifier": NameOID.GENERATION_QUALIFIER, "postalCode": NameOID.POSTAL_CODE,
    "businessCategory": NameOID.BUSINESS_CATEGORY, "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
    "jurisdictionC": NameOID.JURISDICTION_COUNTRY_NAME,
    "jurisdictionST": NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME,
    "jurisdictionL": NameOID.JURISDICTION_LOCALITY_NAME,
}
_NAME_TYPES_FOLDED = {k.casefold(): (k, oid) for k, oid in _NAME_TYPES.items()}
_SHORT_NAMES = {oid: k for k, oid in _NAME_TYPES.items()}
_DOTTED_OID = re.compile(r"[0-2](\.\d+)+")


def printable(text: str) -> str:
    """Text from a certificate, fit for a terminal or a log: control and
    other invisible characters (bidirectional overrides among them) are
    written as \\xHH or \\uHHHH, a backslash as two."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return "".join(out)


def _fields(text: str):
    """The fields of a one-line name (after its leading `/`): (TYPE,
    VALUE, separator) with the escapes undone; TYPE is None for a field
    without `=`; the separator (`/`, `+`, or None at the end) says whether
    the next field starts a new RDN."""
    fields, type_name, chars, escaped = [], None, [], False
    for ch in text:
        if escaped:
            chars.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "=" and type_name is None:
            type_name, chars = "".join(chars).strip(), []
        elif ch in "/+":
            fields.append((type_name, "".join(chars), ch))
            type_name, chars = None, []
        else:
            chars.append(ch)
    if escaped:
        raise ValueError("the subject ends with a lone backslash")
    fields.append((type_name, "".join(chars), None))
    return fields


def _attribute_type(name: str):
    if _DOTTED_OID.fullmatch(name):
        return x509.ObjectIdentifier(name)
    known = _NAME_TYPES.get(name) or _NAME_TYPES_FOLDED.get(name.casefold(), (None, None))[1]
    if known is None:
        raise ValueError(f"unknown attribute type {name!r} in the subject (known: {', '.join(_NAME_TYPES)}, "
                         f"or a dotted OID)")
    return known


def _attribute(oid, type_name: str, value: str) -> x509.NameAttribute:
    """An attribute of a name, or a ValueError that says what X.509 wants."""
    try:
        return x509.NameAttribute(oid, value)
    except ValueError as e:
        if oid == NameOID.COUNTRY_NAME:
            reason = "a country is its two-letter ISO 3166 code"
        elif oid == NameOID.COMMON_NAME:
            reason = f"a common name has 1 to 64 characters, not {len(value)}"
        else:
            reason = str(e)
        raise ValueError(f"{type_name}={value!r}: {reason}") from None


def parse_subject(text: str) -> x509.Name:
    """A name in OpenSSL's one-line form, as `openssl req -subj` takes it:
    `/C=DE/O=Example/CN=mail.example.org`; a backslash escapes the next
    character, `+` instead of `/` joins two attributes into one RDN, and
    an attribute with an empty value is left out (as OpenSSL does)."""
    if not text.startswith("/"):
        raise ValueError(f"the subject {text!r} must have the form /TYPE=VALUE/TYPE=VALUE..., "
                         f"e.g. /O=Example/CN=mail.example.org")
    rdns, current = [], []
    for type_name, value, separator in _fields(text[1:]):
        if type_name is None and value.strip():
            raise ValueError(f"{value!r} in the subject is not TYPE=VALUE")
        if type_name is not None and value:
            current.append(_attribute(_attribute_type(type_name), type_name, value))
        if separator != "+" and current:
            rdns.append(x509.RelativeDistinguishedName(current))
            current = []
    if not rdns:
        raise ValueError(f"the subject {text!r} is empty")
    return x509.Name(rdns)


def format_name(name: x509.Name) -> str:
    """OpenSSL's one-line form of a name, `/C=DE/O=Example/CN=x`, which
    `parse_subject` reads back (`/`, `+` and `\\` in values escaped); what
    stunnel logged as a peer's subject.  Safe to print."""
    parts = []
    for rdn in name.rdns:
        attributes = []
        for attribute in rdn:
            key = _SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)
            value = attribute.value
            if isinstance(value, bytes):
                value = "#" + value.hex()
            value = re.sub(r"([/+])", r"\\\1", printable(value))
            attributes.append(f"{key}={value}")
        parts.append("+".join(attributes))
    return "/" + "/".join(parts) if parts else "(empty)"


def common_name(name: x509.Name):
    """The most specific (last) CN of a name, or None."""
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return values[-1].value if values else None


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}")


def looks_like_hostname(text: str) -> bool:
    """A DNS host name (letters, digits, inner hyphens; a leading `*.`
    wildcard allowed) whose last label is not all digits, so that neither
    "John Smith" nor a mistyped address passes."""
    return (len(text) <= 253 and bool(_HOSTNAME.fullmatch(text))
            and not text.rsplit(".", 1)[-1].isdigit())


def cn_name(cn: str) -> x509.Name:
    """The subject made of one common name (1 to 64 characters, X.509's bound)."""
    return x509.Name([_attribute(NameOID.COMMON_NAME, "CN", cn)])


def parse_cn(text: str) -> str:
    """A common name as --cn takes it."""
    cn_name(text)
    return text


def default_cn(make_ca: bool = False) -> str:
    """This host's FQDN; for a CA, "FQDN CA": a CA named like the server
    it signs would make the server's certificate look self-issued."""
    fqdn = socket.getfqdn()
    return f"{fqdn} CA" if make_ca else fqdn


# -------------------------------------------------------- alternative names

def parse_san(text: str) -> list:
    """Subject alternative names, comma-separated: DNS:mail.example.org,
    IP:192.0.2.1, IP:2001:db8::1, email:postmaster@example.org, URI:...
    (types in any case)."""
    names = []
    for item in text.split(","):
        item = item.strip()
        kind, sep, value = item.partition(":")
        kind = kind.strip().casefold()
        if not sep or not value:
            raise ValueError(f"{item!r} is not TYPE:NAME ({_SANS_HELP})")
        if not value.isascii():
            raise ValueError(f"{item!r}: names in a certificate are ASCII (write a domain in its xn-- form)")
        if kind == "dns":
            if not looks_like_hostname(value):
                raise ValueError(f"{item!r}: {value!r} is not a host name")
            names.append(x509.DNSName(value))
        elif kind == "ip":
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(value)))
            except ValueError:
                raise ValueError(f"{item!r}: {value!r} is not an IP address") from None
        elif kind == "email":
            if value.count("@") != 1 or value.startswith("@") or value.endswith("@") or " " in value:
                raise ValueError(f"{item!r}: {value!r} is not a mail address")
            names.append(x509.RFC822Name(value))
        elif kind == "uri":
            if ":" not in value or " " in value:
                raise ValueError(f"{item!r}: {value!r} is not a URI")
            names.append(x509.UniformResourceIdentifier(value))
        else:
            raise ValueError(f"{item!r}: unknown type {kind!r} ({_SANS_HELP})")
    return names


def format_general_name(name) -> str:
    """One alternative name in the form --san takes. Safe to print."""
    if isinstance(name, x509.DNSName):
        return "DNS:" + printable(name.value)
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return "email:" + printable(name.value)
    if isinstance(name, x509.UniformResourceIdentifier):
        return "URI:" + printable(name.value)
    if isinstance(name, x509.DirectoryName):
        return "DirName:" + format_name(name.value)
    if isinstance(name, x509.RegisteredID):
        return "RID:" + name.value.dotted_string
    if isinstance(name, x509.OtherName):
        return "othername:" + name.type_id.dotted_string
    return type(name).__name__


def default_sans(subject: x509.Name) -> list:
    """A server certificate's names when none are given: its CN, as DNS:
    when it is a host name, as IP: when it is an address (clients check
    the alternative names, not the CN)."""
    cn = common_name(subject)
    if not isinstance(cn, str):
        return []
    try:
        return [x509.IPAddress(ipaddress.ip_address(cn))]
    except ValueError:
        pass
    return [x509.DNSName(cn)] if looks_like_hostname(cn) else []


# ------------------------------------------------------------- keys, days

def parse_key_spec(text: str) -> str:
    spec = text.strip().casefold()
    if spec not in KEY_SPECS:
        raise ValueError(f"unknown key {text!r} (one of {', '.join(KEY_SPECS)})")
    return spec


def parse_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"{days} days is out of range (1 to {MAX_DAYS})")
    return days


def make_key(spec: str = DEFAULT_KEY):
    """A new private key: rsa:2048, rsa:3072, rsa:4096, ec:p256 or ec:p384."""
    kind, _, size = parse_key_spec(spec).partition(":")
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(size))
    return ec.generate_private_key(_CURVES[size]())


def describe_key(key) -> str:
    """"RSA 2048 bits", "EC P-256", ... for a public or private key."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size} bits"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name,
                                                                                      key.curve.name)
        return f"EC {curve} ({key.curve.key_size} bits)"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "Ed25519"
    if isinstance(key, (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)):
        return "Ed448"
    if isinstance(key, (dsa.DSAPublicKey, dsa.DSAPrivateKey)):
        return f"DSA {key.key_size} bits"
    return type(key).__name__


def _signature_hash(key):
    # EdDSA keys hash internally; every other key signs SHA-256.
    return None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()


# ------------------------------------------------------------ certificates

def _extension(cert, cls):
    """The value of the certificate's extension of that class, or None."""
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _new_serial() -> int:
    # 128 random bits, never 0 (RFC 5280 wants a positive serial).
    return 1 + secrets.randbelow((1 << 128) - 1)


def make_certificate(key, subject, *, days=DEFAULT_DAYS, sans=(), ca=None, make_ca=False, client=False):
    """A certificate for `key` (a private key of make_key's kinds).

    `subject` is an x509.Name, a one-line name ("/O=Example/CN=x"), or any
    other string, taken as the common name.  `sans` are x509 general names
    or --san strings; with none, a server certificate gets its CN (see
    default_sans), a client or CA certificate none.  `ca` is the
    (private key, certificate) pair of the issuing CA (see load_ca);
    without it the certificate is self-signed.  `make_ca` makes a CA
    certificate, `client` a client certificate (clientAuth instead of
    serverAuth).  A certificate never outlives its CA: notAfter is cut to
    the CA's.  Bad arguments raise ValueError.
    """
    if make_ca and client:
        raise ValueError("a certificate is a CA's or a client's, not both")
    if isinstance(subject, x509.Name):
        name = subject
    elif subject.startswith("/"):
        name = parse_subject(subject)
    else:
        name = cn_name(subject)
    if not name.rdns:
        raise ValueError("the subject is empty")
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"{days} days is out of range (1 to {MAX_DAYS})")
    alt_names = []
    for item in sans:
        alt_names.extend(parse_san(item) if isinstance(item, str) else [item])
    if not alt_names and not make_ca and not client:
        alt_names = default_sans(name)

    now = datetime.now(timezone.utc).replace(microsecond=0)
    not_after = now + timedelta(days=days)
    issuer, signing_key = name, key
    if ca is not None:
        ca_key, ca_cert = ca
        if ca_cert.subject == name:
            raise ValueError(f"the subject {format_name(name)} is the CA's own: clients would take the "
                             f"certificate for a self-signed one; give it a subject of its own")
        constraints = _extension(ca_cert, x509.BasicConstraints)
        if make_ca and constraints is not None and constraints.path_length == 0:
            raise ValueError(f"the CA {format_name(ca_cert.subject)} may not sign other CAs (pathlen:0)")
        not_after = min(not_after, ca_cert.not_valid_after_utc)
        issuer, signing_key = ca_cert.subject, ca_key

    public_key = key.public_key()
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer)
               .public_key(public_key)
               .serial_number(_new_serial())
               .not_valid_before(now - CLOCK_SKEW)
               .not_valid_after(not_after)
               # Critical for a CA (RFC 5280 4.2.1.9); plain CA:FALSE on a
               # leaf, as OpenSSL's own v3_req writes it.
               .add_extension(x509.BasicConstraints(ca=make_ca, path_length=None), critical=make_ca)
               .add_extension(x509.KeyUsage(
                   digital_signature=not make_ca,
                   content_commitment=False,
                   # RSA key exchange encrypts with the certificate's key;
                   # an EC key only signs (ECDHE).
                   key_encipherment=not make_ca and isinstance(public_key, rsa.RSAPublicKey),
                   data_encipherment=False, key_agreement=False,
                   key_cert_sign=make_ca, crl_sign=make_ca,
                   encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if not make_ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    if ca is not None:
        ca_ski = _extension(ca[1], x509.SubjectKeyIdentifier)
        aki = (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski) if ca_ski is not None
               else x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[0].public_key()))
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(signing_key, _signature_hash(signing_key))


def der(cert) -> bytes:
    """The certificate's DER bytes: what ssl-gw -v 3 compares."""
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint_sha256(cert) -> str:
    """"AB:CD:...", as `openssl x509 -noout -fingerprint -sha256` prints it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def serial_hex(cert) -> str:
    """The serial number in hex, as `openssl x509 -serial` prints it."""
    text = f"{cert.serial_number:X}"
    return text if len(text) % 2 == 0 else "0" + text


def format_time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(delta: timedelta) -> str:
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60)):
        n = int(delta.total_seconds() // seconds)
        if n >= 1:
            return f"{n} {unit}" + ("" if n == 1 else "s")
    return "less than a minute"


def validity_text(cert, now: datetime = None) -> str:
    """"expires in N days" (hours or minutes on its last day), "EXPIRED
    N days ago", or "not yet valid (from ...)"."""
    now = now or datetime.now(timezone.utc)
    if now < cert.not_valid_before_utc:
        return f"not yet valid (valid from {format_time(cert.not_valid_before_utc)})"
    if now >= cert.not_valid_after_utc:
        return f"EXPIRED {_span(now - cert.not_valid_after_utc)} ago"
    return f"expires in {_span(cert.not_valid_after_utc - now)}"


def key_matches(key, cert) -> bool:
    """Whether the private key is the certificate's: OpenSSL's own check
    (SSL_CTX_check_private_key), which ssl-gw's context makes on load."""
    from OpenSSL import SSL
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.use_certificate(cert)
        # use_privatekey itself refuses a key of the certificate's type
        # that is not its key; check_privatekey catches a key of another
        # type, which OpenSSL files under another slot.
        context.use_privatekey(key)
        context.check_privatekey()
    except (SSL.Error, TypeError, ValueError):
        return False
    return True


# ------------------------------------------------------------ reading files

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)
_CERTIFICATE_LABELS = (b"CERTIFICATE", b"X509 CERTIFICATE")


@dataclass
class PemFile:
    """What one file holds, in its order."""
    path: str
    mode: int
    certificates: list = field(default_factory=list)
    keys: list = field(default_factory=list)      # private keys that could be loaded
    encrypted_keys: int = 0                        # keys behind a pass phrase, not loaded
    others: list = field(default_factory=list)    # labels of other PEM blocks (DH PARAMETERS, ...)


def _read_file(path: str):
    """The bytes of a regular file and its mode; symbolic links are
    followed (/etc/ssl/certs is made of them), FIFOs never block."""
    try:
        data, st = read_regular(path, MAX_PEM_BYTES)
    except OSError as e:
        raise CertError(f"{path}: {e.strerror}" + (": not a PEM file" if e.errno == errno.EFBIG else "")) from None
    return data, stat.S_IMODE(st.st_mode)


def read_pem(path: str) -> PemFile:
    """Every certificate and private key of a PEM file (or the one
    certificate of a DER file).  Raises CertError naming the file."""
    data, mode = _read_file(path)
    pem = PemFile(path, mode)
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        try:
            pem.certificates.append(x509.load_der_x509_certificate(data))
        except ValueError:
            raise CertError(f"{path}: neither PEM nor a DER certificate") from None
        return pem
    for block in blocks:
        label = block.group(1)
        if label in _CERTIFICATE_LABELS:
            try:
                pem.certificates.append(x509.load_pem_x509_certificate(block.group(0)))
            except ValueError as e:
                raise CertError(f"{path}: certificate {len(pem.certificates) + 1} cannot be read: {e}") from None
        elif label.endswith(b"PRIVATE KEY"):
            try:
                pem.keys.append(serialization.load_pem_private_key(block.group(0), password=None))
            except TypeError:
                pem.encrypted_keys += 1      # a pass phrase protects it
            except (ValueError, UnsupportedAlgorithm) as e:
                raise CertError(f"{path}: a private key cannot be read: {e}") from None
        else:
            pem.others.append(label.decode("ascii"))
    return pem


def load_pem_certificates(path: str) -> list:
    """The certificates of a PEM file, in its order (keys and other blocks
    are skipped).  Raises CertError naming the file when it cannot be read
    or holds no certificate."""
    certificates = read_pem(path).certificates
    if not certificates:
        raise CertError(f"{path}: no certificate in the file")
    return certificates


def load_ca(path: str):
    """The (private key, certificate) pair of a CA file made by
    `mkcert --make-ca` (or any PEM with the CA's key and, first, its
    certificate), checked fit to sign.  Raises CertError naming the file."""
    pem = read_pem(path)
    if not pem.certificates:
        raise CertError(f"{path}: no certificate in the file")
    cert = pem.certificates[0]
    if not pem.keys:
        raise CertError(f"{path}: no private key in the file" +
                        (" that is not encrypted (mkcert takes none with a pass phrase)"
                         if pem.encrypted_keys else ""))
    key = next((k for k in pem.keys if key_matches(k, cert)), None)
    if key is None:
        raise CertError(f"{path}: the private key is not the key of the certificate "
                        f"{format_name(cert.subject)}")
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise CertError(f"{path}: {format_name(cert.subject)} is not a CA certificate "
                        f"(basicConstraints {'CA:FALSE' if constraints else 'missing'})")
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise CertError(f"{path}: {format_name(cert.subject)} may not sign certificates (no keyCertSign)")
    now = datetime.now(timezone.utc)
    if cert.not_valid_after_utc <= now:
        raise CertError(f"{path}: the CA certificate expired on {format_time(cert.not_valid_after_utc)}")
    return key, cert


# ------------------------------------------------------------ writing files

def _create(path: str, data: bytes):
    """Write a new file, mode 0600; never an existing one, never through a
    symbolic link.  A file this call created and could not finish is
    removed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)   # whatever the umask (0600 is also the most it lets through)
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(fd)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def write_pem(path: str, key, cert, force: bool = False):
    """Write the private key (PKCS#8, unencrypted: a daemon loads it
    unattended, and the file's mode protects it), then the certificate,
    into a new file of mode 0600.  An existing file is replaced only with
    `force`, and never a symbolic link nor anything but a regular file;
    the replacement is a new file renamed over the old one.  Raises
    CertError naming the file."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    data += cert.public_bytes(serialization.Encoding.PEM)
    check_output_path(path, force)
    try:
        if not os.path.lexists(path):
            _create(path, data)
        else:
            # A new file renamed over the name, whatever took its place
            # since the check: never written through a link.
            write_private(path, data)
            return
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except FileExistsError:
        # Created by someone else between the check and the open.
        check_output_path(path, force=False)
        raise CertError(f"{path}: exists: not overwritten") from None
    except OSError as e:
        raise CertError(f"{path}: {e.strerror}") from None


def check_output_path(path: str, force: bool = False):
    """Refuse (CertError) an output path mkcert may not write: a symbolic
    link, anything but a regular file, or an existing file without force."""
    try:
        kind = existing_kind(path)
    except OSError as e:
        raise CertError(f"{path}: {e.strerror}") from None
    if kind == "missing":
        return
    if kind == "symlink":
        raise CertError(f"{path}: is a symbolic link: neither written through nor replaced, even with --force")
    if kind == "other":
        raise CertError(f"{path}: exists and is not a regular file: not replaced")
    if not force:
        raise CertError(f"{path}: exists: not overwritten (--force replaces it)")


# ------------------------------------------------------------ the commands

def mkcert(path: str, *, cn=None, subject=None, sans=(), days=DEFAULT_DAYS, key_spec=DEFAULT_KEY,
           ca_path=None, make_ca=False, client=False, force=False, out, err) -> int:
    """`smapctl mkcert`: make the key and certificate, write them to
    `path`, say what was written.  Returns the exit status."""
    def fail(message, status=EXIT_RUNTIME):
        print(f"smapctl: {message}", file=err)
        return status

    try:
        # Before the key is made (rsa:4096 takes a while): the output must
        # be writable, the CA usable.
        check_output_path(path, force)
        ca = load_ca(ca_path) if ca_path else None
    except CertError as e:
        return fail(e)
    try:
        name = subject if subject is not None else cn_name(cn or default_cn(make_ca))
        key = make_key(key_spec)
        cert = make_certificate(key, name, days=days, sans=sans, ca=ca, make_ca=make_ca, client=client)
    except ValueError as e:
        return fail(f"{path}: not made: {e}", EXIT_CONFIG)
    try:
        write_pem(path, key, cert, force=force)
    except CertError as e:
        return fail(e)
    # A CA and a certificate made with the same --days one after the other
    # differ by seconds: only a cut of a day or more is worth a word.
    asked = cert.not_valid_before_utc + CLOCK_SKEW + timedelta(days=days)
    if ca is not None and asked - cert.not_valid_after_utc >= timedelta(days=1):
        print(f"smapctl: warning: {path}: valid only as long as its CA {ca_path}, "
              f"until {format_time(cert.not_valid_after_utc)}", file=err)
    print(f"wrote {path}: {format_name(cert.subject)}, valid until {format_time(cert.not_valid_after_utc)}, "
          f"SHA-256 {fingerprint_sha256(cert)}", file=out)
    return EXIT_OK


_KEY_USAGES = (("digitalSignature", "digital_signature"), ("nonRepudiation", "content_commitment"),
               ("keyEncipherment", "key_encipherment"), ("dataEncipherment", "data_encipherment"),
               ("keyAgreement", "key_agreement"), ("keyCertSign", "key_cert_sign"), ("cRLSign", "crl_sign"))
_EXTENDED_KEY_USAGES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning", ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping", ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


def _key_usage_text(usage) -> str:
    names = [label for label, attribute in _KEY_USAGES if getattr(usage, attribute)]
    if usage.key_agreement:   # the two below are defined only with keyAgreement
        names += [label for label, attribute in (("encipherOnly", "encipher_only"),
                                                 ("decipherOnly", "decipher_only")) if getattr(usage, attribute)]
    return ", ".join(names) or "(none)"


def _issued_by(cert, issuer) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _issuer_text(cert, index: int, certificates: list) -> str:
    text = format_name(cert.issuer)
    if cert.issuer == cert.subject and _issued_by(cert, cert):
        return text + " (self-signed)"
    for n, other in enumerate(certificates, 1):
        if n != index and _issued_by(cert, other):
            return text + f" (signed by certificate {n} of this file)"
    return text


def describe_certificate(cert, index: int, certificates: list, now=None) -> list:
    """certinfo's lines for one certificate, as (label, text) pairs."""
    rows = [("subject", format_name(cert.subject)),
            ("issuer", _issuer_text(cert, index, certificates)),
            ("serial", serial_hex(cert)),
            ("not before", format_time(cert.not_valid_before_utc)),
            ("not after", format_time(cert.not_valid_after_utc)),
            ("validity", validity_text(cert, now))]
    sans = _extension(cert, x509.SubjectAlternativeName)
    rows.append(("alt names", ", ".join(format_general_name(n) for n in sans) if sans else "(none)"))
    try:
        rows.append(("public key", describe_key(cert.public_key())))
    except (ValueError, UnsupportedAlgorithm) as e:     # a key type cryptography cannot load
        rows.append(("public key", f"unsupported ({printable(str(e))})"))
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None:
        rows.append(("CA", "no (no basicConstraints)"))
    elif constraints.ca:
        rows.append(("CA", "yes" + ("" if constraints.path_length is None
                                    else f" (path length {constraints.path_length})")))
    else:
        rows.append(("CA", "no"))
    usage = _extension(cert, x509.KeyUsage)
    rows.append(("key usage", _key_usage_text(usage) if usage is not None else "(any)"))
    extended = _extension(cert, x509.ExtendedKeyUsage)
    rows.append(("ext. key usage", ", ".join(_EXTENDED_KEY_USAGES.get(oid, oid.dotted_string) for oid in extended)
                 if extended is not None else "(any)"))
    rows.append(("SHA-256", fingerprint_sha256(cert)))
    return rows


def describe_file(pem: PemFile, now=None) -> list:
    """certinfo's report on one file, as lines."""
    path, certificates = pem.path, pem.certificates
    lines = []
    for index, cert in enumerate(certificates, 1):
        lines.append(f"{path}: certificate {index} of {len(certificates)}")
        try:
            rows = describe_certificate(cert, index, certificates, now)
        except ValueError as e:     # an extension cryptography cannot parse
            raise CertError(f"{path}: certificate {index} cannot be read: {e}") from None
        lines.extend(f"    {label + ':':<16}{text}" for label, text in rows)
    for key in pem.keys:
        verdict = ("key matches the certificate" if key_matches(key, certificates[0])
                   else "KEY DOES NOT MATCH the certificate")
        lines.append(f"{path}: private key, {describe_key(key)}: {verdict}")
    if pem.encrypted_keys:
        lines.append(f"{path}: private key protected by a pass phrase: not checked")
    if not pem.keys and not pem.encrypted_keys:
        lines.append(f"{path}: no private key")
    for label in pem.others:
        lines.append(f"{path}: also holds {label} (not described)")
    if (pem.keys or pem.encrypted_keys) and pem.mode & 0o077:
        lines.append(f"{path}: warning: holds a private key and is readable by others than its owner "
                     f"(mode {pem.mode:04o}): chmod 600 {path}")
    return lines


def certinfo(paths, out, err, now=None) -> int:
    """`smapctl certinfo`: describe each file; exit 1 when one cannot be
    read or holds no certificate (the others are still described)."""
    status = EXIT_OK
    for path in paths:
        try:
            pem = read_pem(path)
            if not pem.certificates:
                raise CertError(f"{path}: no certificate in the file")
            lines = describe_file(pem, now)
        except CertError as e:
            print(f"smapctl: {e}", file=err)
            status = EXIT_RUNTIME
            continue
        for line in lines:
            print(line, file=out)
    return status
