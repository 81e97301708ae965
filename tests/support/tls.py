"""Certificates for the TLS tests, and testssl.sh."""

import re
import subprocess

from support.programs import run


class Pki:
    """Throw-away certificates made with `smapctl mkcert`: a CA, a server
    certificate for test.example/localhost/127.0.0.1, a client certificate,
    its twin (same subject, another key), and a stranger signed by another
    CA.  `X.pem` holds key and certificate, `X.crt` the certificate only."""

    def __init__(self, base):
        self.base = base

        def mk(name, *args):
            r = run("smapctl", "mkcert", "--key", "ec:p256", *args, str(base / f"{name}.pem"))
            assert r.returncode == 0, r.stderr
            text = (base / f"{name}.pem").read_text()
            (base / f"{name}.crt").write_text(text[text.index("-----BEGIN CERTIFICATE-----"):])
        mk("ca", "--make-ca", "--cn", "smapd test CA")
        mk("other-ca", "--make-ca", "--cn", "another CA")
        mk("server", "--ca", str(base / "ca.pem"), "--cn", "test.example",
           "--san", "DNS:test.example,DNS:localhost,IP:127.0.0.1")
        mk("client", "--ca", str(base / "ca.pem"), "--client", "--subject", "/O=smapd tests/CN=client.example.test")
        mk("client-twin", "--ca", str(base / "ca.pem"), "--client",
           "--subject", "/O=smapd tests/CN=client.example.test")
        mk("stranger", "--ca", str(base / "other-ca.pem"), "--client", "--cn", "stranger.example.test")

    def __getattr__(self, name):
        """pki.server_pem, pki.ca_crt ... -> the path as text."""
        stem, _, ext = name.rpartition("_")
        path = self.base / f"{stem.replace('_', '-')}.{ext}"
        if ext not in ("pem", "crt") or not path.exists():
            raise AttributeError(name)
        return str(path)

    def client_context(self, cert=None, verify=True):
        """An ssl client context trusting the test CA, with a client certificate."""
        import ssl
        ctx = ssl.create_default_context(cafile=self.ca_crt)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(getattr(self, f"{cert.replace('-', '_')}_pem"))
        return ctx


def run_testssl(args):
    """testssl.sh's protocol, cipher-category, renegotiation and compression checks."""
    r = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "--ip", "one", "-p", "-s", "-R",
                        "-C", *args], capture_output=True, text=True, timeout=300)
    assert "Done" in r.stdout, r.stdout + r.stderr
    return r.stdout


def assert_strong_tls(out):
    """What testssl.sh must say of a server of this suite."""
    lines = {}
    for line in out.splitlines():
        m = re.match(r"^ (\S.*?) {2,}(\S.*)$", line)
        if m:
            lines[m.group(1).strip()] = m.group(2).strip()

    def said(key):
        return lines[key] if key in lines else next(v for k, v in lines.items() if k.startswith(key))
    for proto in ("SSLv2", "SSLv3", "TLS 1 ", "TLS 1.1"):
        key = proto.strip()
        assert said(key).startswith("not offered"), (key, out)
    assert said("TLS 1.2").startswith("offered") and said("TLS 1.3").startswith("offered")
    for weak in ("NULL ciphers", "Anonymous NULL", "Export ciphers", "LOW: 64 Bit", "Triple DES",
                 "Obsolete CBC"):
        assert said(weak).startswith("not offered"), (weak, out)
    assert said("Strong encryption (AEAD ciphers)").startswith("offered")
    assert said("Secure Client-Initiated Renegotiation").startswith("not vulnerable")
    assert said("CRIME, TLS").startswith("not vulnerable")
