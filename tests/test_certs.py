"""smapctl mkcert and certinfo: a throw-away CA and the certificates it
signs, checked by the real `openssl` and by a real TLS handshake; the
PEM file's mode, and no overwriting or writing through links; certinfo's
report (fingerprints as openssl prints them, key matching, expiry).

The CA and its certificates are made with the installed smapctl, as an
operator makes them; the tests about one rule call smapctl's main() in
the test's process, which is much faster."""

import os
import re
import socket
import ssl
import stat
import subprocess
import threading
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.programs import run
from smapd.admin import certs
from smapd.admin import main as smapctl


def openssl(*args):
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)


def mkcert(*args):
    """smapctl mkcert in this process: its exit status."""
    return smapctl.main(["mkcert", *args])


def certinfo(capsys, *paths):
    """smapctl certinfo in this process: (status, stdout, stderr)."""
    status = smapctl.main(["certinfo", *map(str, paths)])
    out, err = capsys.readouterr()
    return status, out, err


def certificate(path):
    return certs.load_pem_certificates(str(path))[0]


def extension(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


def pem_blocks(path):
    """The PEM blocks of a file: [(label, text)]."""
    text = open(path).read()
    return re.findall(r"(-----BEGIN ([A-Z ]+)-----\n.*?-----END \2-----\n)", text, re.S)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA (EC key), a server certificate for localhost and two client
    certificates with the same subject, signed by the CA: paths by name."""
    d = tmp_path_factory.mktemp("pki")
    paths = {name: str(d / f"{name}.pem") for name in ("ca", "server", "alice1", "alice2")}
    requests = {
        "ca": ["--make-ca", "--cn", "smapd test CA", "--days", "3650", "--key", "ec:p256"],
        "server": ["--ca", paths["ca"], "--cn", "localhost", "--san", "DNS:localhost,IP:127.0.0.1"],
        "alice1": ["--ca", paths["ca"], "--client", "--subject", "/O=Example/CN=alice"],
        "alice2": ["--ca", paths["ca"], "--client", "--subject", "/O=Example/CN=alice"],
    }
    for name, args in requests.items():
        r = run("smapctl", "mkcert", *args, paths[name])
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        cert = certificate(paths[name])
        assert r.stdout == (f"wrote {paths[name]}: {certs.format_name(cert.subject)}, valid until "
                            f"{certs.format_time(cert.not_valid_after_utc)}, SHA-256 "
                            f"{certs.fingerprint_sha256(cert)}\n")
    return paths


# ------------------------------------------------------------ mkcert

def test_chain_verifies_with_openssl(pki):
    for name in ("server", "alice1", "alice2"):
        r = openssl("verify", "-CAfile", pki["ca"], pki[name])
        assert (r.returncode, r.stdout) == (0, f"{pki[name]}: OK\n"), r.stderr
    # serverAuth for the server, clientAuth for the clients, and not the other way round
    for name, purpose, ok in (("server", "sslserver", True), ("server", "sslclient", False),
                              ("alice1", "sslclient", True), ("alice1", "sslserver", False)):
        r = openssl("verify", "-purpose", purpose, "-CAfile", pki["ca"], pki[name])
        assert (r.returncode == 0) == ok, (name, purpose, r.stdout, r.stderr)


def test_two_clients_with_one_subject_are_two_certificates(pki):
    one, two = certificate(pki["alice1"]), certificate(pki["alice2"])
    assert one.subject == two.subject
    assert certs.format_name(one.subject) == "/O=Example/CN=alice"
    assert one.serial_number != two.serial_number
    assert certs.der(one) != certs.der(two)
    assert certs.fingerprint_sha256(one) != certs.fingerprint_sha256(two)
    assert one.public_key() != two.public_key()


def test_extensions_of_ca_and_leaves(pki):
    ca = certificate(pki["ca"])
    assert ca.issuer == ca.subject and certs.common_name(ca.subject) == "smapd test CA"
    bc = extension(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = extension(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ca_ski = extension(ca, x509.SubjectKeyIdentifier).value
    for name in ("server", "alice1"):
        leaf = certificate(pki[name])
        assert leaf.issuer == ca.subject
        assert leaf.version == x509.Version.v3
        assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
        assert 0 < leaf.serial_number < 1 << 128
        assert extension(leaf, x509.BasicConstraints).value.ca is False
        usage = extension(leaf, x509.KeyUsage).value
        assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign  # RSA key
        assert extension(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest
        assert extension(leaf, x509.SubjectKeyIdentifier).value == \
            x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
        leaf.verify_directly_issued_by(ca)
    server, client = certificate(pki["server"]), certificate(pki["alice1"])
    assert list(extension(server, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(extension(client, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = extension(server, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # a client certificate gets no alternative name of its CN
    with pytest.raises(x509.ExtensionNotFound):
        extension(client, x509.SubjectAlternativeName)


def test_pem_file_is_key_then_certificate_only(pki):
    for name in ("ca", "server", "alice1"):
        labels = [label for _, label in pem_blocks(pki[name])]
        assert labels == ["PRIVATE KEY", "CERTIFICATE"], (name, labels)
        assert stat.S_IMODE(os.stat(pki[name]).st_mode) == 0o600


def test_output_is_0600_whatever_the_umask_and_never_overwritten(tmp_path, capsys):
    out = tmp_path / "ssl-gw.pem"
    old = os.umask(0)
    try:
        assert mkcert("--key", "ec:p256", str(out)) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    first = out.read_bytes()
    capsys.readouterr()

    assert mkcert("--key", "ec:p256", str(out)) == 1
    _, err = capsys.readouterr()
    assert err == f"smapctl: {out}: exists: not overwritten (--force replaces it)\n"
    assert out.read_bytes() == first

    # --force puts a new file in place (a rename: a reader sees the old
    # file or the new one), mode 0600 even where the old one was wider
    out.chmod(0o644)
    inode = out.stat().st_ino
    assert mkcert("--force", "--key", "ec:p256", str(out)) == 0
    assert out.read_bytes() != first
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_ino != inode
    assert sorted(os.listdir(tmp_path)) == ["ssl-gw.pem"]          # no temporary file left


@pytest.mark.parametrize("dangling", [False, True])
def test_never_through_a_symlink(tmp_path, capsys, dangling):
    target = tmp_path / "precious"
    if not dangling:
        target.write_text("not a certificate\n")
    link = tmp_path / "link.pem"
    link.symlink_to(target)
    for force in ([], ["--force"]):
        assert mkcert(*force, "--key", "ec:p256", str(link)) == 1
        _, err = capsys.readouterr()
        assert err == (f"smapctl: {link}: is a symbolic link: neither written through nor replaced, "
                       f"even with --force\n")
        assert link.is_symlink()
        assert target.exists() != dangling
        if not dangling:
            assert target.read_text() == "not a certificate\n"
    # the API refuses it too
    key = certs.make_key("ec:p256")
    with pytest.raises(certs.CertError, match="symbolic link"):
        certs.write_pem(str(link), key, certs.make_certificate(key, "localhost"), force=True)


def test_not_over_a_directory(tmp_path, capsys):
    (tmp_path / "dir.pem").mkdir()
    assert mkcert("--force", "--key", "ec:p256", str(tmp_path / "dir.pem")) == 1
    assert "dir.pem: exists and is not a regular file: not replaced" in capsys.readouterr().err


def test_self_signed_pem_serves_tls(tmp_path, capsys):
    pem = str(tmp_path / "stunnel.pem")
    assert mkcert("--cn", "localhost", pem) == 0          # the default key, rsa:2048
    assert certs.describe_key(certificate(pem).public_key()) == "RSA 2048 bits"
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pem)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)

        def serve(conversations):
            for _ in range(conversations):
                conn, _ = listener.accept()
                try:
                    with server_context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(tls.recv(100).upper())
                except (ssl.SSLError, OSError):
                    pass                 # the client refused our certificate

        thread = threading.Thread(target=serve, args=(2,), daemon=True)
        thread.start()
        client_context = ssl.create_default_context(cafile=pem)
        client_context.verify_flags |= ssl.VERIFY_X509_STRICT
        with client_context.wrap_socket(socket.create_connection(listener.getsockname(), timeout=30),
                                        server_hostname="localhost") as tls:
            tls.sendall(b"hello")
            assert tls.recv(100) == b"HELLO"
            assert dict(x[0] for x in tls.getpeercert()["subject"]) == {"commonName": "localhost"}
            assert ("DNS", "localhost") in tls.getpeercert()["subjectAltName"]
        # the same file does not vouch for another name
        with pytest.raises(ssl.SSLCertVerificationError):
            client_context.wrap_socket(socket.create_connection(listener.getsockname(), timeout=30),
                                       server_hostname="mail.example.org")
        thread.join(30)


def test_ca_must_be_a_usable_ca(pki, tmp_path, capsys):
    out = str(tmp_path / "x.pem")
    assert mkcert("--ca", pki["server"], out) == 1
    assert capsys.readouterr().err == (f"smapctl: {pki['server']}: /CN=localhost is not a CA certificate "
                                       f"(basicConstraints CA:FALSE)\n")
    assert mkcert("--ca", str(tmp_path / "missing.pem"), out) == 1
    assert capsys.readouterr().err == f"smapctl: {tmp_path / 'missing.pem'}: No such file or directory\n"
    # a CA file whose key is not the CA's
    wrong = tmp_path / "wrong-ca.pem"
    wrong.write_text(pem_blocks(pki["alice1"])[0][0] + pem_blocks(pki["ca"])[1][0])
    assert mkcert("--ca", str(wrong), out) == 1
    assert "the private key is not the key of the certificate /CN=smapd test CA" in capsys.readouterr().err
    # a leaf named as its CA would look self-issued
    assert mkcert("--ca", pki["ca"], "--cn", "smapd test CA", out) == 2
    assert "is the CA's own" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_certificate_never_outlives_its_ca(tmp_path, capsys):
    ca, leaf = str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")
    assert mkcert("--make-ca", "--days", "10", "--key", "ec:p256", ca) == 0
    assert mkcert("--ca", ca, "--key", "ec:p256", "--cn", "mail.example.org", leaf) == 0
    assert certificate(leaf).not_valid_after_utc == certificate(ca).not_valid_after_utc
    err = capsys.readouterr().err
    assert err.startswith(f"smapctl: warning: {leaf}: valid only as long as its CA {ca}, until ")


def test_default_names(tmp_path, capsys):
    fqdn = socket.getfqdn()
    server, ca = str(tmp_path / "server.pem"), str(tmp_path / "ca.pem")
    assert mkcert("--key", "ec:p256", server) == 0
    assert mkcert("--key", "ec:p256", "--make-ca", ca) == 0
    assert certs.common_name(certificate(server).subject) == fqdn
    assert certs.common_name(certificate(ca).subject) == f"{fqdn} CA"
    # a subject given whole wins over --cn
    other = str(tmp_path / "other.pem")
    assert mkcert("--key", "ec:p256", "--cn", "ignored", "--subject", "/C=DE/CN=192.0.2.7", other) == 0
    cert = certificate(other)
    assert certs.format_name(cert.subject) == "/C=DE/CN=192.0.2.7"
    sans = extension(cert, x509.SubjectAlternativeName).value
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    assert sans.get_values_for_type(x509.DNSName) == []


def test_bad_arguments_are_usage_errors(tmp_path):
    out = str(tmp_path / "x.pem")
    r = run("smapctl", "mkcert", "--days", "0", out)
    assert r.returncode == 2
    assert "smapctl mkcert: error: argument --days: 0 days is out of range (1 to 36500)" in r.stderr
    assert not os.path.exists(out)


@pytest.mark.parametrize("args, message", [
    (["--days", "soon"], "argument --days: 'soon' is not a whole number of days"),
    (["--key", "rsa:1024"], "argument --key: unknown key 'rsa:1024' (one of rsa:2048, rsa:3072, rsa:4096, "
                            "ec:p256, ec:p384)"),
    (["--san", "DNS:ok.example,FTP:x"], "argument --san: 'FTP:x': unknown type 'ftp'"),
    (["--san", "IP:300.1.1.1"], "argument --san: 'IP:300.1.1.1': '300.1.1.1' is not an IP address"),
    (["--san", "DNS:under_score.example"], "'under_score.example' is not a host name"),
    (["--subject", "CN=x"], "argument --subject: the subject 'CN=x' must have the form /TYPE=VALUE"),
    (["--subject", "/XY=z"], "argument --subject: unknown attribute type 'XY'"),
    (["--subject", "/C=Germany"], "argument --subject: C='Germany': a country is its two-letter ISO 3166 code"),
    (["--cn", "x" * 65], "argument --cn: CN='xxx"),
    (["--make-ca", "--client"], "argument --client: not allowed with argument --make-ca"),
    ([], "the following arguments are required: OUT.pem"),
])
def test_bad_mkcert_arguments(tmp_path, capsys, args, message):
    out = [str(tmp_path / "x.pem")] if args else []
    with pytest.raises(SystemExit) as e:
        mkcert(*args, *out)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: smapctl mkcert") and message in err, err
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ certinfo

def field(report, label):
    """The values of one field of certinfo's report, in order."""
    return re.findall(rf"^    {re.escape(label)}:\s+(.*)$", report, re.M)


def test_certinfo_fingerprints_and_serials_are_openssls(pki):
    r = run("smapctl", "certinfo", *pki.values())
    assert (r.returncode, r.stderr) == (0, "")
    fingerprints, serials = field(r.stdout, "SHA-256"), field(r.stdout, "serial")
    assert len(fingerprints) == len(serials) == 4
    for path, fingerprint, serial in zip(pki.values(), fingerprints, serials):
        o = openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha256")
        assert o.returncode == 0 and o.stdout.strip().split("=", 1)[1] == fingerprint
        assert fingerprint == certs.fingerprint_sha256(certificate(path))
        o = openssl("x509", "-in", path, "-noout", "-serial")
        assert o.stdout.strip() == f"serial={serial}"


def test_certinfo_report(pki, capsys):
    status, out, err = certinfo(capsys, pki["server"])
    assert (status, err) == (0, "")
    server = certificate(pki["server"])
    path = pki["server"]
    assert out.splitlines() == [
        f"{path}: certificate 1 of 1",
        "    subject:        /CN=localhost",
        "    issuer:         /CN=smapd test CA",
        f"    serial:         {certs.serial_hex(server)}",
        f"    not before:     {certs.format_time(server.not_valid_before_utc)}",
        f"    not after:      {certs.format_time(server.not_valid_after_utc)}",
        "    validity:       expires in 364 days",
        "    alt names:      DNS:localhost, IP:127.0.0.1",
        "    public key:     RSA 2048 bits",
        "    CA:             no",
        "    key usage:      digitalSignature, keyEncipherment",
        "    ext. key usage: serverAuth",
        f"    SHA-256:        {certs.fingerprint_sha256(server)}",
        f"{path}: private key, RSA 2048 bits: key matches the certificate",
    ]
    # the key itself never shows
    key_text = pem_blocks(path)[0][0]
    assert "PRIVATE KEY" not in out and not any(line in out for line in key_text.splitlines()[1:-1])

    status, out, _ = certinfo(capsys, pki["ca"])
    assert field(out, "issuer") == ["/CN=smapd test CA (self-signed)"]
    assert field(out, "CA") == ["yes"] and field(out, "key usage") == ["keyCertSign, cRLSign"]
    assert field(out, "public key") == ["EC P-256 (256 bits)"]
    assert field(out, "ext. key usage") == ["(any)"]
    status, out, _ = certinfo(capsys, pki["alice1"])
    assert field(out, "ext. key usage") == ["clientAuth"] and field(out, "alt names") == ["(none)"]


def test_certinfo_key_that_does_not_match(pki, tmp_path, capsys):
    # alice2's key with alice1's certificate (both RSA), then the CA's EC
    # key with the server's RSA certificate
    for name, key_from, cert_from in (("same-type.pem", "alice2", "alice1"), ("other-type.pem", "ca", "server")):
        mixed = tmp_path / name
        mixed.write_text(pem_blocks(pki[key_from])[0][0] + pem_blocks(pki[cert_from])[1][0])
        mixed.chmod(0o600)
        status, out, err = certinfo(capsys, mixed)
        assert (status, err) == (0, "")
        key_kind = "EC P-256 (256 bits)" if key_from == "ca" else "RSA 2048 bits"
        assert out.splitlines()[-1] == f"{mixed}: private key, {key_kind}: KEY DOES NOT MATCH the certificate"
        key = load_pem_private_key(pem_blocks(pki[key_from])[0][0].encode(), None)
        assert not certs.key_matches(key, certificate(mixed))
        assert certs.key_matches(key, certificate(pki[key_from]))


def test_certinfo_warns_of_a_readable_key(pki, tmp_path, capsys):
    copy = tmp_path / "server.pem"
    copy.write_bytes(open(pki["server"], "rb").read())
    copy.chmod(0o640)
    status, out, _ = certinfo(capsys, copy)
    assert status == 0
    assert out.splitlines()[-1] == (f"{copy}: warning: holds a private key and is readable by others than its "
                                    f"owner (mode 0640): chmod 600 {copy}")
    copy.chmod(0o600)
    assert "warning" not in certinfo(capsys, copy)[1]
    # a certificate alone may be read by anyone
    cert_only = tmp_path / "cert.pem"
    cert_only.write_text(pem_blocks(pki["server"])[1][0])
    cert_only.chmod(0o644)
    status, out, _ = certinfo(capsys, cert_only)
    assert status == 0 and "warning" not in out and out.splitlines()[-1] == f"{cert_only}: no private key"


def test_certinfo_chain_file_and_der(pki, tmp_path, capsys):
    chain = tmp_path / "chain.pem"
    chain.write_text(pem_blocks(pki["server"])[1][0] + pem_blocks(pki["ca"])[1][0] +
                     "-----BEGIN DH PARAMETERS-----\nMAA=\n-----END DH PARAMETERS-----\n")
    status, out, _ = certinfo(capsys, chain)
    assert status == 0
    assert f"{chain}: certificate 2 of 2" in out.splitlines()
    assert field(out, "issuer") == ["/CN=smapd test CA (signed by certificate 2 of this file)",
                                    "/CN=smapd test CA (self-signed)"]
    assert out.splitlines()[-2:] == [f"{chain}: no private key", f"{chain}: also holds DH PARAMETERS (not described)"]
    assert len(certs.load_pem_certificates(str(chain))) == 2
    der = tmp_path / "server.der"
    der.write_bytes(certs.der(certificate(pki["server"])))
    status, out, _ = certinfo(capsys, der)
    assert status == 0 and field(out, "SHA-256") == [certs.fingerprint_sha256(certificate(pki["server"]))]


def test_certinfo_expiry(tmp_path, capsys):
    day = str(tmp_path / "day.pem")
    assert mkcert("--days", "1", "--key", "ec:p256", "--cn", "localhost", day) == 0
    capsys.readouterr()
    status, out, _ = certinfo(capsys, day)
    assert status == 0 and field(out, "validity") == ["expires in 23 hours"]
    cert = certificate(day)
    later = cert.not_valid_after_utc + timedelta(days=2, minutes=1)
    assert certs.validity_text(cert, later) == "EXPIRED 2 days ago"
    assert certs.validity_text(cert, cert.not_valid_after_utc) == "EXPIRED less than a minute ago"
    assert certs.validity_text(cert, cert.not_valid_after_utc - timedelta(minutes=5)) == "expires in 5 minutes"
    earlier = cert.not_valid_before_utc - timedelta(hours=1)
    assert certs.validity_text(cert, earlier) == (f"not yet valid (valid from "
                                                  f"{certs.format_time(cert.not_valid_before_utc)})")


def test_certinfo_unreadable_files(pki, tmp_path, capsys):
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    key_only = tmp_path / "key.pem"
    key_only.write_text(pem_blocks(pki["server"])[0][0])
    missing = tmp_path / "missing.pem"
    status, out, err = certinfo(capsys, missing, junk, key_only, "/dev/null", pki["ca"])
    assert status == 1
    assert err.splitlines() == [f"smapctl: {missing}: No such file or directory",
                                f"smapctl: {junk}: neither PEM nor a DER certificate",
                                f"smapctl: {key_only}: no certificate in the file",
                                "smapctl: /dev/null: not a regular file"]
    assert out.startswith(f"{pki['ca']}: certificate 1 of 1\n")   # the good file is still described
    with pytest.raises(SystemExit) as e:
        smapctl.main(["certinfo"])
    assert e.value.code == 2


# ------------------------------------------------------------ the module's API

def test_subject_one_line_form():
    name = certs.parse_subject(r"/C=DE/O=Smith\/Jones \+ Co/OU=/OU=mail+UID=42/CN=mail.example.org")
    assert [[(a.oid, a.value) for a in rdn] for rdn in name.rdns] == [
        [(NameOID.COUNTRY_NAME, "DE")],
        [(NameOID.ORGANIZATION_NAME, "Smith/Jones + Co")],     # the empty OU is left out, as openssl does
        [(NameOID.ORGANIZATIONAL_UNIT_NAME, "mail"), (NameOID.USER_ID, "42")],
        [(NameOID.COMMON_NAME, "mail.example.org")],
    ]
    text = certs.format_name(name)
    assert text == r"/C=DE/O=Smith\/Jones \+ Co/OU=mail+UID=42/CN=mail.example.org"
    assert certs.parse_subject(text) == name
    assert certs.parse_subject("/emailaddress=a@b.example/2.5.4.3=x") == x509.Name([
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b.example"), x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    # what a certificate says is escaped before it reaches a terminal
    evil = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a\x1b[2Jb\u202ec\\")])
    assert certs.format_name(evil) == r"/CN=a\x1b[2Jb\u202ec\\"
    for bad in ("", "/", "/CN", "/CN=x\\", "/C=DEU"):
        with pytest.raises(ValueError):
            certs.parse_subject(bad)


def test_alternative_names():
    names = certs.parse_san("DNS:mail.example.org, dns:*.example.org,IP:2001:db8::1,email:pm@example.org,"
                            "URI:https://example.org/")
    assert ", ".join(map(certs.format_general_name, names)) == (
        "DNS:mail.example.org, DNS:*.example.org, IP:2001:db8::1, email:pm@example.org, URI:https://example.org/")
    for bad in ("mail.example.org", "DNS:", "DNS:bücher.example", "DNS:1.2.3.4", "email:nobody", ""):
        with pytest.raises(ValueError):
            certs.parse_san(bad)
    assert certs.looks_like_hostname("localhost") and not certs.looks_like_hostname("John Smith")


def test_api_keys_and_certificates(tmp_path):
    for spec, described in (("rsa:3072", "RSA 3072 bits"), ("ec:p256", "EC P-256 (256 bits)"),
                            ("ec:p384", "EC P-384 (384 bits)")):
        key = certs.make_key(spec)
        assert certs.describe_key(key) == described
        cert = certs.make_certificate(key, "mail.example.org", days=7)
        assert certs.key_matches(key, cert)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=7) + certs.CLOCK_SKEW
        assert extension(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
            "mail.example.org"]
        usage = extension(cert, x509.KeyUsage).value
        assert usage.key_encipherment == spec.startswith("rsa")
        assert x509.load_der_x509_certificate(certs.der(cert)) == cert
        assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", certs.fingerprint_sha256(cert))
    with pytest.raises(ValueError):
        certs.make_key("dsa:1024")
    ca_key = certs.make_key("ec:p256")
    ca = certs.make_certificate(ca_key, "/O=Example/CN=Example CA", make_ca=True)
    assert certs.describe_certificate(ca, 1, [ca])[1] == ("issuer", "/O=Example/CN=Example CA (self-signed)")
    key = certs.make_key("ec:p256")
    client = certs.make_certificate(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")]),
                                    ca=(ca_key, ca), client=True, sans=["email:bob@example.org"])
    client.verify_directly_issued_by(ca)
    assert extension(client, x509.SubjectAlternativeName).value.get_values_for_type(x509.RFC822Name) == [
        "bob@example.org"]
    path = str(tmp_path / "bob.pem")
    certs.write_pem(path, key, client)
    assert certs.load_pem_certificates(path) == [client]
    with pytest.raises(certs.CertError, match="exists: not overwritten"):
        certs.write_pem(path, key, client)
    with pytest.raises(ValueError):
        certs.make_certificate(key, "x", make_ca=True, client=True)
    with pytest.raises(certs.CertError, match="no certificate"):
        key_only = tmp_path / "key.pem"
        key_only.write_text(pem_blocks(path)[0][0])
        certs.load_pem_certificates(str(key_only))
    assert datetime.now(timezone.utc) < client.not_valid_after_utc
