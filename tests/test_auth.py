"""SMTP AUTH credentials (auth.py) and `smapctl passwd`.

The password file in both forms (the reference MD5 hex, the salted
PBKDF2 entries of smapctl passwd, which are passlib's), its errors
(file:line, never the secret), the equal cost of every verification
(PBKDF2 calls counted, and a loose timing check), the rewriting of the
file (other lines kept byte for byte, mode 0600, no symbolic links, a
new file renamed into place), the SASL decoders, and `smapctl passwd`
run as the operator runs it: the installed command, its password on
standard input or typed on a terminal (a pty), its file from --file or
from the table's md5file.

The salted entries of these tests use 1000 iterations (passed
explicitly), so that they stay fast; the command's own default is used
where the installed smapctl writes the file."""

import base64
import hashlib
import os
import pty
import select
import stat
import subprocess
import time

import pytest
from hypothesis import given, settings, strategies as st

from support.programs import command, run
from smapd.smap import password_file as auth
from smapd.smap import sasl
from smapd.smap.password_file import AuthFileError, PasswordFile

FAST = 1000     # iterations in the tests' own entries


def md5hex(password: bytes) -> str:
    return hashlib.md5(password).hexdigest()


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def listing(directory):
    return sorted(os.listdir(directory))


# ------------------------------------------------------------------ reading

def test_md5_entries_verify_right_and_wrong_passwords(tmp_path):
    f = PasswordFile.load(write(tmp_path / "pw", f"alice:{md5hex(b'wonderland')}\n".encode()))
    assert f.users == frozenset({"alice"})
    assert f.verify("alice", b"wonderland")
    assert not f.verify("alice", b"Wonderland")
    assert not f.verify("alice", b"")
    assert not f.verify("alice", b"wonderland\0")
    assert not f.verify("bob", b"wonderland")
    # The reference value of MD5("password"), in capitals: hex in either case.
    f = PasswordFile.parse(b"bob:5F4DCC3B5AA765D61D8327DEB882CF99\n")
    assert f.verify("bob", b"password")
    assert not f.verify("bob", b"password ")


def test_salted_entries_verify_right_and_wrong_passwords():
    entry = auth.hash_password(b"s3cret", iterations=FAST)
    assert entry.startswith(f"$pbkdf2-sha256${FAST}$")
    _, _, _, salt, digest = entry.split("$")
    assert (len(auth.ab64_decode(salt)), len(auth.ab64_decode(digest))) == (auth.SALT_BYTES, 32)
    assert "=" not in entry and "+" not in entry
    f = PasswordFile.parse(f"carol:{entry}\n".encode())
    assert f.verify("carol", b"s3cret")
    assert not f.verify("carol", b"s3cret\n")
    assert not f.verify("carol", b"S3cret")
    assert not f.verify("carol", b"s3cret\0")      # HMAC would take it for b"s3cret"
    # A fresh salt each time.
    assert auth.hash_password(b"s3cret", iterations=FAST) != entry
    assert auth.hash_password(b"x", FAST, salt=b"0123456789abcdef") == \
        auth.hash_password(b"x", FAST, salt=b"0123456789abcdef")


def test_entries_made_by_passlib_verify():
    """The examples of passlib's pbkdf2_sha256 documentation: the salted
    form is passlib's to the byte (ab64, 16- and 10-byte salts)."""
    f = PasswordFile.parse(
        b"a:$pbkdf2-sha256$6400$0ZrzXitFSGltTQnBWOsdAw$Y11AchqV4b0sUisdZd0Xr97KWoymNE0LNNrnEgY4H9M\n"
        b"b:$pbkdf2-sha256$8000$XAuBMIYQQogxRg$tRRlz8hYn63B9LYiCd6PRo6FMiunY9ozmMMI3srxeRE\n"
        b"c:$pbkdf2-sha256$29000$N2YMIWQsBWBMae09x1jrPQ$1t8iyB2A.WF/Z5JZv.lfCIhXXN33N23OSgQYThBYRfk\n")
    assert f.verify("a", b"password") and f.verify("b", b"password") and f.verify("c", b"toomanysecrets")
    assert not f.verify("a", b"wrong") and not f.verify("c", b"joshua")
    assert auth.hash_password(b"password", 8000, salt=auth.ab64_decode("XAuBMIYQQogxRg")) == \
        "$pbkdf2-sha256$8000$XAuBMIYQQogxRg$tRRlz8hYn63B9LYiCd6PRo6FMiunY9ozmMMI3srxeRE"


def test_a_file_mixing_both_forms_comments_and_blank_lines(tmp_path):
    data = (b"# SMTP AUTH users\n"
            b"\n"
            b"alice:" + md5hex(b"pw-a").encode() + b"\n"
            b"   \n"
            b"#bob:" + md5hex(b"pw-b").encode() + b"\n"
            b"Carol:" + auth.hash_password(b"pw-c", FAST).encode() + b"\r\n"
            b"dave:" + md5hex(b"pw-d").upper().encode())        # no newline at the end
    f = PasswordFile.load(write(tmp_path / "pw", data))
    assert f.users == {"alice", "Carol", "dave"}
    assert len(f) == 3
    assert f.verify("alice", b"pw-a") and f.verify("Carol", b"pw-c") and f.verify("dave", b"pw-d")
    assert not f.verify("bob", b"pw-b")                       # commented out
    # User names are exact, case included.
    assert not f.verify("carol", b"pw-c") and not f.verify("ALICE", b"pw-a")
    assert not f.verify("alice", b"pw-c")


def test_an_empty_file_has_no_users(tmp_path):
    f = PasswordFile.load(write(tmp_path / "pw", b"# nobody yet\n"))
    assert f.users == frozenset()
    assert not f.verify("alice", b"anything")


def test_bad_lines_are_all_reported_with_file_and_line_and_never_the_secret(tmp_path):
    good = auth.hash_password(b"fine", FAST)
    lines = [
        "# comment",                                                   # 1
        "hunter2-pasted-here",                                         # 2: no ':'
        "alice:" + "a" * 31,                                           # 3: 31 hex digits
        "bob:$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0c2FsdA$secrethash",  # 4: unknown scheme
        "carol:$pbkdf2-sha256$0$c2FsdHNhbHRzYWx0$" + "A" * 43,        # 5: 0 iterations
        "dave:$pbkdf2-sha256$01000$c2FsdHNhbHRzYWx0$" + "A" * 43,     # 6: leading zero
        "erin:$pbkdf2-sha256$1000$c2FsdA$" + "A" * 43,                 # 7: 4-byte salt
        "frank:$pbkdf2-sha256$1000$c2FsdHNhbHRzYWx0$SECRETHASHxx",     # 8: short hash
        "grace:$pbkdf2-sha256$1000$c2FsdHNhbHRzYWx0$" + "A" * 42 + "+",  # 9: '+' is not ab64
        "heidi:$pbkdf2-sha256$1000$c2FsdHNhbHRzYWx0",                  # 10: fields missing
        "my secret:" + md5hex(b"x"),                                   # 11: blank in the name
        "ok:" + good,                                                  # 12
        "ok:" + md5hex(b"other"),                                      # 13: duplicate
        "ivan:" + md5hex(b"x") + " ",                                  # 14: trailing blank
        ":" + md5hex(b"x"),                                            # 15: empty name
        "judy:$pbkdf2-sha256$99999999$c2FsdHNhbHRzYWx0$" + "A" * 43,  # 16: too many iterations
    ]
    data = "\n".join(lines).encode() + b"\n" + "mallory:pässwörd\n".encode()   # 17: not ASCII
    path = write(tmp_path / "smtppass", data)
    with pytest.raises(AuthFileError) as e:
        PasswordFile.load(path)
    problems = e.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == \
        [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17)]
    assert str(e.value) == "\n".join(problems)
    assert f"{path}:2: not user:hash (no ':')" in problems
    assert f"{path}:3: user alice: not an MD5 hash (32 hex digits) nor a $pbkdf2-sha256$ entry of " \
           "smapctl passwd" in problems
    assert f"{path}:4: user bob: unknown hash scheme (only $pbkdf2-sha256$ and MD5 hex are read)" in problems
    assert f"{path}:13: user ok already has an entry at line 12" in problems
    assert f"{path}:14: user ivan: blanks around the hash" in problems
    text = str(e.value)
    for secret in ("hunter2", "a" * 31, "argon2id", "c2VjcmV0", "secrethash", "SECRETHASH", "c2FsdA",
                   "c2FsdHNhbHRzYWx0", "A" * 42, md5hex(b"x"), md5hex(b"other"), good.split("$")[-1],
                   "my secret", "pässwörd", "99999999"):
        assert secret not in text


def test_unreadable_and_odd_files(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(AuthFileError, match=f"^{missing}: No such file or directory$"):
        PasswordFile.load(missing)
    with pytest.raises(AuthFileError, match="not a regular file"):
        PasswordFile.load(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(AuthFileError, match="not a regular file"):   # and it does not hang
        PasswordFile.load(str(fifo))


# ------------------------------------------------------------------ equal cost

@pytest.fixture
def kdf_calls(monkeypatch):
    """Every hashlib.pbkdf2_hmac call's iteration count, and how many MD5s."""
    calls = {"pbkdf2": [], "md5": 0}
    real_pbkdf2, real_md5 = hashlib.pbkdf2_hmac, hashlib.md5

    def pbkdf2(name, password, salt, iterations, dklen=None):
        calls["pbkdf2"].append(iterations)
        return real_pbkdf2(name, password, salt, iterations, dklen)

    def md5(*args, **kwargs):
        calls["md5"] += 1
        return real_md5(*args, **kwargs)
    monkeypatch.setattr(hashlib, "pbkdf2_hmac", pbkdf2)
    monkeypatch.setattr(hashlib, "md5", md5)
    return calls


def test_every_verification_does_the_work_of_the_costliest_entry(kdf_calls):
    f = PasswordFile.parse(("old:" + md5hex(b"pw") + "\n"
                            "cheap:" + auth.hash_password(b"pw", 500) + "\n"
                            "dear:" + auth.hash_password(b"pw", 2000) + "\n").encode())
    cases = [("dear", b"pw", True), ("dear", b"no", False), ("cheap", b"pw", True), ("cheap", b"no", False),
             ("old", b"pw", True), ("old", b"no", False), ("nobody", b"pw", False), ("", b"pw", False),
             ("x" * 10000, b"pw", False)]
    for user, password, expected in cases:
        kdf_calls["pbkdf2"].clear()
        assert f.verify(user, password) is expected
        # Whoever the user, and whatever the form of the entry: 2000
        # iterations of PBKDF2 in all.
        assert sum(kdf_calls["pbkdf2"]) == 2000, (user, kdf_calls["pbkdf2"])


def test_unknown_users_of_an_md5_file_cost_an_md5(kdf_calls):
    f = PasswordFile.parse(("alice:" + md5hex(b"pw") + "\n").encode())
    for user in ("alice", "nobody"):
        kdf_calls["md5"] = 0
        assert not f.verify(user, b"wrong")
        assert (kdf_calls["md5"], kdf_calls["pbkdf2"]) == (1, [])


def test_unknown_users_take_as_long_as_known_ones():
    """A loose check of what the counting test proves: with 20000
    iterations (some 8 ms), the best of several runs of an unknown user
    is within a factor 2 of a known one's (an unknown user that skipped
    the KDF would take microseconds)."""
    f = PasswordFile.parse(("alice:" + auth.hash_password(b"pw", 20000) + "\n").encode())

    def best(user):
        times = []
        for _ in range(7):
            start = time.perf_counter()
            f.verify(user, b"guess")
            times.append(time.perf_counter() - start)
        return min(times)
    known, unknown = best("alice"), best("mallory")
    assert 0.5 < unknown / known < 2, (known, unknown)


# ------------------------------------------------------------------ writing

def test_set_password_creates_the_file_mode_0600(tmp_path):
    path = str(tmp_path / "smtppass")
    old_umask = os.umask(0)        # a careless umask changes nothing
    try:
        auth.set_password(path, "alice", b"wonderland", iterations=FAST)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    text = open(path).read()
    assert text.startswith(f"alice:$pbkdf2-sha256${FAST}$") and text.endswith("\n") and text.count("\n") == 1
    assert PasswordFile.load(path).verify("alice", b"wonderland")
    assert listing(tmp_path) == ["smtppass"]     # no temporary file left behind


def test_set_password_adds_and_replaces_keeping_every_other_byte(tmp_path):
    head = (b"# SMTP AUTH users, kept by hand\r\n"
            b"\n"
            b"alice:" + md5hex(b"old").encode() + b"\r\n"
            b"#  bob was here\n"
            b"Alice:" + md5hex(b"other-alice").encode() + b"\n")
    tail = b"zed:" + md5hex(b"z").upper().encode()            # no final newline
    path = write(tmp_path / "pw", head + tail)
    os.chmod(path, 0o644)
    inode = os.stat(path).st_ino

    auth.set_password(path, "bob", b"builder", iterations=FAST)
    data = open(path, "rb").read()
    assert data.startswith(head + tail + b"\nbob:$pbkdf2-sha256$")
    assert data.count(b"\n") == head.count(b"\n") + 2 and data.endswith(b"\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.stat(path).st_ino != inode                      # a new file, renamed into place

    auth.set_password(path, "alice", b"new", iterations=FAST)
    data2 = open(path, "rb").read()
    before, _, after = data.partition(b"alice:" + md5hex(b"old").encode() + b"\r\n")
    assert data2.startswith(before + b"alice:$pbkdf2-sha256$")
    line_end = data2.index(b"\r\n", len(before))
    assert data2[line_end:] == b"\r\n" + after                # the line's CR LF kept, the rest untouched
    f = PasswordFile.load(path)
    assert f.users == {"alice", "Alice", "bob", "zed"}
    assert f.verify("alice", b"new") and not f.verify("alice", b"old")
    assert f.verify("Alice", b"other-alice") and f.verify("bob", b"builder") and f.verify("zed", b"z")
    assert listing(tmp_path) == ["pw"]


def test_set_password_removes_a_duplicate_of_the_user(tmp_path):
    path = write(tmp_path / "pw", ("a:" + md5hex(b"1") + "\n# c\na:" + md5hex(b"2") + "\nb:" + md5hex(b"3")
                                   + "\n").encode())
    with pytest.raises(AuthFileError, match=":3: user a already has an entry at line 1"):
        PasswordFile.load(path)
    auth.set_password(path, "a", b"new", iterations=FAST)
    lines = open(path).read().splitlines()
    assert lines[0].startswith("a:$pbkdf2-sha256$") and lines[1:] == ["# c", "b:" + md5hex(b"3")]
    assert PasswordFile.load(path).verify("a", b"new")


def test_set_password_never_writes_through_a_symbolic_link(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"# precious\n")
    link = tmp_path / "smtppass"
    link.symlink_to(target)
    for path in (link, tmp_path / "dangling"):
        if path.name == "dangling":
            path.symlink_to(tmp_path / "nowhere")
        with pytest.raises(AuthFileError, match="is a symbolic link: neither written through nor replaced"):
            auth.set_password(str(path), "alice", b"pw", iterations=FAST)
        assert os.path.islink(path)
    assert target.read_bytes() == b"# precious\n"
    assert not (tmp_path / "nowhere").exists()
    assert listing(tmp_path) == ["dangling", "smtppass", "target"]
    with pytest.raises(AuthFileError, match="is a symbolic link"):
        auth.delete_user(str(link), "alice")
    with pytest.raises(AuthFileError, match="not a regular file"):
        auth.set_password(str(tmp_path), "alice", b"pw", iterations=FAST)


def test_set_password_refuses_bad_names_and_passwords_and_leaves_the_file(tmp_path):
    original = ("alice:" + md5hex(b"pw") + "\n").encode()
    path = write(tmp_path / "pw", original)
    for user in ("", "with space", "col:on", "#comment", "tab\t", "ünï", "x" * 256, "nl\n"):
        with pytest.raises(ValueError, match="a user name is 1 to 255 printable ASCII"):
            auth.set_password(path, user, b"pw", iterations=FAST)
    for password, why in ((b"", "empty"), (b"a\0b", "NUL, CR or LF"), (b"pw\r", "NUL, CR or LF"),
                          (b"a\nb", "NUL, CR or LF"), (b"\xff\xfe", "not UTF-8")):
        with pytest.raises(ValueError, match=why):
            auth.set_password(path, "alice", password, iterations=FAST)
    with pytest.raises(ValueError, match="iterations"):
        auth.set_password(path, "alice", b"pw", iterations=0)
    assert open(path, "rb").read() == original
    assert listing(tmp_path) == ["pw"]
    # Any printable ASCII but ':' makes a name; UTF-8 passwords are bytes as sent.
    auth.set_password(path, "bob@example.org!#$%", "pässwörd".encode(), iterations=FAST)
    assert PasswordFile.load(path).verify("bob@example.org!#$%", "pässwörd".encode())
    assert not PasswordFile.load(path).verify("bob@example.org!#$%", "pässwörd".encode("latin-1"))


def test_set_password_reports_a_directory_it_cannot_write(tmp_path):
    with pytest.raises(AuthFileError, match=f"^{tmp_path}/no/such/dir/pw: {tmp_path}/no/such/dir: "
                                            "No such file or directory$"):
        auth.set_password(str(tmp_path / "no/such/dir/pw"), "alice", b"pw", iterations=FAST)


def test_delete_user(tmp_path):
    original = ("# users\nalice:" + md5hex(b"a") + "\r\nbob:" + md5hex(b"b") + "\n#alice:x\ncarol:"
                + md5hex(b"c")).encode()
    path = write(tmp_path / "pw", original)
    inode = os.stat(path).st_ino
    assert auth.delete_user(path, "nobody") is False
    assert auth.delete_user(path, "Alice") is False            # exact names
    assert os.stat(path).st_ino == inode and open(path, "rb").read() == original   # untouched
    assert auth.delete_user(path, "alice") is True
    assert open(path, "rb").read() == original.replace(b"alice:" + md5hex(b"a").encode() + b"\r\n", b"")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert auth.delete_user(path, "carol") is True             # the last line, without its newline
    assert open(path, "rb").read() == ("# users\nbob:" + md5hex(b"b") + "\n#alice:x\n").encode()
    assert PasswordFile.load(path).users == {"bob"}
    with pytest.raises(AuthFileError, match=f"^{tmp_path}/missing: No such file or directory$"):
        auth.delete_user(str(tmp_path / "missing"), "bob")
    assert listing(tmp_path) == ["pw"]


@settings(max_examples=50, deadline=None)
@given(password=st.binary(max_size=300), other=st.binary(max_size=300),
       salt=st.one_of(st.none(), st.binary(min_size=8, max_size=64)))
def test_hash_and_verify_round_trip(password, other, salt):
    entry = auth.hash_password(password, iterations=FAST, salt=salt)
    f = PasswordFile.parse(b"u:" + entry.encode() + b"\n")
    # HMAC pads its key with NULs (b"" and b"\0" derive the same hash):
    # a password with a NUL never matches, nor an empty one.
    usable = bool(password) and b"\0" not in password
    assert f.verify("u", password) == usable
    assert f.verify("u", other) == (other == password and usable)
    assert f.verify("u", password + b"\0") is False
    assert not f.verify("v", password)


@given(data=st.binary(max_size=200))
def test_ab64_round_trip(data):
    text = auth.ab64_encode(data)
    assert auth.ab64_decode(text) == data
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789./")


# ------------------------------------------------------------------ SASL

def test_b64decode_strict():
    assert sasl.b64decode_strict("=") == b""
    assert sasl.b64decode_strict("") == b""
    assert sasl.b64decode_strict("AGFsaWNlAHB3") == b"\0alice\0pw"
    assert sasl.b64decode_strict("YQ==") == b"a" and sasl.b64decode_strict("YWI=") == b"ab"
    assert sasl.b64decode_strict("dXNlcisvPz4=") == b"user+/?>"
    for bad in ("YQ", "YQ=", "YQ===", "YR==", "YWJ=", "Y Q==", " YQ==", "YQ==\r\n", "YQ==\n", "=YQ=",
                "YQ==YQ==", "a-_b", "YWJj\0", "==", "*", "ＹＱ==", "YQ=\u2028"):
        with pytest.raises(ValueError):
            sasl.b64decode_strict(bad)
    with pytest.raises(TypeError):
        sasl.b64decode_strict(b"YQ==")


@given(data=st.binary(max_size=300))
def test_b64decode_strict_reads_what_base64_writes(data):
    assert sasl.b64decode_strict(base64.b64encode(data).decode()) == data


def test_decode_plain():
    assert sasl.decode_plain(b"\0alice\0pw") == ("", "alice", b"pw")
    assert sasl.decode_plain(b"alice\0alice\0pw") == ("alice", "alice", b"pw")
    assert sasl.decode_plain("\0jörg\0pässwörd".encode()) == ("", "jörg", "pässwörd".encode())
    assert sasl.decode_plain(b"\0alice\0p w\tx") == ("", "alice", b"p w\tx")
    for bad in (b"", b"alice", b"alice\0pw", b"\0alice\0pw\0", b"\0\0pw", b"\0alice\0", b"a\0b\0c\0d",
                b"\0alice\0\xff\xfe", b"\0\xc3alice\0pw", b"\xff\0alice\0pw"):
        with pytest.raises(ValueError):
            sasl.decode_plain(bad)
    for proxy in (b"admin\0alice\0pw", b"Alice\0alice\0pw"):
        with pytest.raises(sasl.ProxyAuthorizationError, match="not supported"):
            sasl.decode_plain(proxy)
        assert issubclass(sasl.ProxyAuthorizationError, ValueError)


@given(authcid=st.text(min_size=1).filter(lambda s: "\0" not in s),
       password=st.text(min_size=1).filter(lambda s: "\0" not in s), same=st.booleans())
def test_decode_plain_reads_what_a_client_writes(authcid, password, same):
    authzid = authcid if same else ""
    response = f"{authzid}\0{authcid}\0{password}".encode("utf-8", "surrogatepass")
    try:
        response.decode("utf-8")
    except UnicodeDecodeError:      # lone surrogates are not UTF-8: refused
        with pytest.raises(ValueError):
            sasl.decode_plain(response)
        return
    assert sasl.decode_plain(response) == (authzid, authcid, password.encode())


# ------------------------------------------------------------------ smapctl passwd

def passwd(*args, input=None):
    return run("smapctl", "passwd", *args, input=input)


def test_smapctl_passwd_with_stdin_and_file(tmp_path):
    path = str(tmp_path / "smtppass")
    r = passwd("--stdin", "--file", path, "alice", input="wonder land\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"smapctl: {path}: set the password of alice\n", "")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    entry = open(path).read()
    assert entry.startswith(f"alice:$pbkdf2-sha256${auth.DEFAULT_ITERATIONS}$")
    f = PasswordFile.load(path)
    assert f.verify("alice", b"wonder land") and not f.verify("alice", b"wonder land\n")

    # Not a terminal: standard input is read without --stdin too; only
    # the first line, without its newline (a CR stays and is refused).
    r = passwd("-f", path, "--iterations", "100000", "bob", input="builder\nignored\n")
    assert (r.returncode, r.stderr) == (0, "")
    r = passwd("-f", path, "alice", input="changed")
    assert (r.returncode, r.stderr) == (0, "")
    f = PasswordFile.load(path)
    assert f.users == {"alice", "bob"}
    assert f.verify("alice", b"changed") and not f.verify("alice", b"wonder land")
    assert f.verify("bob", b"builder")
    assert open(path).read().split("\n")[1].startswith("bob:$pbkdf2-sha256$100000$")

    r = passwd("--delete", "--file", path, "bob")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"smapctl: {path}: deleted bob\n", "")
    assert PasswordFile.load(path).users == {"alice"}


def test_smapctl_passwd_finds_the_file_in_the_table(tmp_path, table):
    path = tmp_path / "smtppass"
    path.write_text("# SMTP AUTH\nold:" + md5hex(b"md5") + "\n")
    config = table(f"smmap: auth login plain\nsmmap: md5file {path}\nsmap: md5file {tmp_path}/other\n")
    r = passwd("--config", config, "--name", "smmap", "alice", input="from-the-table\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"smapctl: {path}: set the password of alice\n", "")
    f = PasswordFile.load(str(path))
    assert f.verify("alice", b"from-the-table") and f.verify("old", b"md5")
    assert open(path).read().startswith("# SMTP AUTH\nold:" + md5hex(b"md5") + "\n")
    # NETPERM_TABLE and the default name, smap.
    r = run("smapctl", "passwd", "carol", input="c\n", env={"NETPERM_TABLE": config})
    assert (r.returncode, r.stdout) == (0, f"smapctl: {tmp_path}/other: set the password of carol\n"), r.stderr
    # What passwd writes, smapctl check reads without a word.
    r = run("smapctl", "check", "--config", config, "smmap")
    assert str(path) not in r.stdout + r.stderr, r.stdout


def test_smapctl_passwd_errors(tmp_path, table):
    path = tmp_path / "smtppass"
    config = table("smap: auth login\n")
    r = passwd("--config", config, "alice", input="pw\n")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"smapctl: {config}: no 'smap: md5file PATH' line: the table names no password file "
                        f"for smap (add the line, or give --file)\n")
    r = passwd("--config", config, "--name", "smmap", "alice", input="pw\n")
    assert r.returncode == 1 and "no 'smmap: md5file PATH' line" in r.stderr

    r = passwd("--config", table("smap: md5file relative/path\n", name="broken"), "alice", input="pw\n")
    assert r.returncode == 2 and "broken:1: error: md5file: 'relative/path' is not an absolute path" in r.stderr

    for typed_in in ("", "\n", "\r\n"):
        r = passwd("--file", str(path), "alice", input=typed_in)
        assert r.returncode == 2, r.stderr
        assert r.stderr == (f"smapctl: passwd: the password is empty: {path} not changed\n" if typed_in != "\r\n"
                            else f"smapctl: passwd: the password contains NUL, CR or LF: {path} not changed\n")
        assert not path.exists()

    r = passwd("--file", str(path), "al ice", input="pw\n")
    assert r.returncode == 2 and "a user name is 1 to 255 printable ASCII characters" in r.stderr
    r = passwd("--file", str(path), "--iterations", "1000", "alice", input="pw\n")
    assert r.returncode == 2 and "1000 is out of range (100000 to 10000000)" in r.stderr
    r = passwd("--file", str(path), "--delete", "--stdin", "alice")
    assert r.returncode == 2 and "--delete takes no password" in r.stderr
    assert not path.exists()

    r = passwd("--file", str(path), "--delete", "alice")
    assert (r.returncode, r.stderr) == (1, f"smapctl: {path}: No such file or directory\n")
    path.write_text("bob:" + md5hex(b"b") + "\n")
    r = passwd("--file", str(path), "--delete", "alice")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"smapctl: {path}: no user alice: nothing deleted\n")

    link = tmp_path / "link"
    link.symlink_to(path)
    r = passwd("--file", str(link), "alice", input="secret-pw\n")
    assert r.returncode == 1
    assert r.stderr == f"smapctl: {link}: is a symbolic link: neither written through nor replaced\n"
    r = passwd("--file", str(tmp_path / "no/dir/pw"), "alice", input="secret-pw\n")
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    assert path.read_text() == "bob:" + md5hex(b"b") + "\n"


def test_smapctl_passwd_warns_of_bad_lines_it_kept(tmp_path):
    path = tmp_path / "pw"
    path.write_text("carol:not-a-hash\n")
    r = passwd("--file", str(path), "alice", input="secret-pw\n")
    assert r.returncode == 0
    assert r.stderr == (f"smapctl: warning: {path}:1: user carol: not an MD5 hash (32 hex digits) nor a "
                        f"$pbkdf2-sha256$ entry of smapctl passwd (smap refuses the file until it is mended)\n")
    assert "not-a-hash" not in r.stderr and "secret-pw" not in r.stdout + r.stderr


def typed(args, answers, timeout=30):
    """smapctl passwd on a terminal (a pty) with no controlling terminal,
    so getpass turns the echo of standard input off: each answer is
    typed once its prompt has appeared.  (exit status, all it wrote)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([command("smapctl"), "passwd", *args], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, env={k: v for k, v in os.environ.items()
                                                         if k != "NETPERM_TABLE"})
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout

    def read_until(marker):
        nonlocal seen
        while marker not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:        # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    return False
                seen += chunk
        return True
    try:
        for prompt, answer in answers:
            assert read_until(prompt), seen
            os.write(master, answer)
        read_until(b"\0never")
        return proc.wait(timeout), seen.decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_smapctl_passwd_asks_twice_on_a_terminal_without_echo(tmp_path):
    path = str(tmp_path / "smtppass")
    status, output = typed(["--file", path, "alice"], [(b"New password for alice: ", b"typed-secret\n"),
                                                        (b"Retype the password for alice: ", b"typed-secret\n")])
    assert status == 0, output
    assert "typed-secret" not in output
    assert f"smapctl: {path}: set the password of alice" in output
    assert PasswordFile.load(path).verify("alice", b"typed-secret")

    status, output = typed(["--file", path, "alice"], [(b"New password for alice: ", b"one-secret\n"),
                                                        (b"Retype the password for alice: ", b"another\n")])
    assert status == 2 and "the two passwords differ" in output
    assert "one-secret" not in output and "another" not in output
    assert PasswordFile.load(path).verify("alice", b"typed-secret")
