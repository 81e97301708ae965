"""SMTP AUTH credentials for smap: the password file (`md5file`).

What it does: reads the password file that the table's `md5file` names
(`PasswordFile.load`, once, as root, before the chroot) and answers
whether a user name and a password match it (`PasswordFile.verify`,
which the protocol state machine calls); writes that file for
`smapctl passwd` (`set_password`, `delete_user`).  The decoding of what
an SMTP client sends in an AUTH exchange is sasl.py's, which the pure
protocol imports; nothing here touches a socket or a clock.

The file has one entry a line, `user:secret`; a line starting with `#`
is a comment, an empty or all-blank line is skipped, a CR before the LF
is allowed.  A secret is either
  * 32 hex digits (either case): the MD5 of the password, the format of
    the FWTK smap anti-spam patches (the reference deployment's
    /etc/smtppass), read for compatibility and never written; or
  * `$pbkdf2-sha256$ITERATIONS$SALT$HASH`, written by `smapctl passwd`:
    PBKDF2-HMAC-SHA256 (hashlib.pbkdf2_hmac) with ITERATIONS in decimal
    (1 to MAX_ITERATIONS, no leading zero), SALT (8 to 1024 bytes; 16
    written) and HASH (32 bytes) in passlib's "ab64": standard base64
    with `.` for `+` and without `=` padding.  Being passlib's
    pbkdf2_sha256 format to the byte, an entry made by passlib verifies
    here and ours there.
A user name is 1 to 255 printable ASCII characters other than `:`, and
does not start with `#` (the line would be a comment); user names are
compared exactly, case included (`Alice` is not `alice`: the file says
who may log in, and folding would let two entries claim one client).
Passwords are bytes, the UTF-8 the client sent, compared without any
normalisation (no SASLprep): the password a user types into `smapctl
passwd` must be the same sequence of bytes the mail client sends.  A
password holding a NUL never matches (HMAC pads its key with NULs, so
PBKDF2 cannot tell "pw" from "pw\\0").

What it trusts: the operator's file to say who may log in, but not to be
well formed: a line that cannot be read is an error naming its file and
line, and the file is refused whole.  Nothing from the client: every
decoder refuses what is not strictly formed (ValueError), and a user
name from the client is only ever looked up, never parsed.

What it must never do: put a password, a hash, or the text of a line
that could hold either into a message, an exception or a log; compare a
secret in time that depends on it (hmac.compare_digest); let the time a
verification takes tell whether a user exists or which form its entry
has (every verification does the same key-derivation work, see
`PasswordFile.verify`); write the file in place, through a symbolic
link, or readable by anyone but its owner.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import hmac
import os
import re
import secrets

from smapd.files import existing_kind, read_regular, write_private

#: PBKDF2 iterations that `smapctl passwd` writes: one verification takes
#: about 48 ms on one core of a 2.1 GHz Xeon (Sapphire Rapids, SHA-NI,
#: OpenSSL 3.0), 130000 iterations at 0.37 us each.  smap verifies in a
#: child that serves one client, so the cost is paid per AUTH attempt,
#: and the tarpit after a failure already slows a guesser far more.
DEFAULT_ITERATIONS = 130_000
#: The fewest iterations `smapctl passwd --iterations` accepts.
MIN_ITERATIONS = 100_000
#: The most any entry may ask: each verification costs as much as the
#: costliest entry of the file (see verify), and ten million iterations
#: already take seconds of CPU per AUTH.
MAX_ITERATIONS = 10_000_000

SCHEME = "pbkdf2-sha256"
SALT_BYTES = 16
MIN_SALT_BYTES, MAX_SALT_BYTES = 8, 1024
HASH_BYTES = 32
MAX_USER_LENGTH = 255
#: The file is read whole; a path naming a device or a runaway file must
#: not fill the memory (16 MiB is some 130000 salted entries).
MAX_FILE_BYTES = 1 << 24

_USER = re.compile(r"[!-9;-~]{1,%d}" % MAX_USER_LENGTH)   # printable ASCII except ':'
_MD5_HEX = re.compile(r"[0-9A-Fa-f]{32}")
_AB64 = re.compile(r"[A-Za-z0-9./]*")
_DECIMAL = re.compile(r"[1-9][0-9]{0,9}")


class AuthFileError(Exception):
    """A password file that cannot be read, used or written.  `problems`
    holds one "FILE:LINE: problem" (or "FILE: problem") per finding; the
    message is all of them, one a line.  Never holds secret text."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# ------------------------------------------------------------------ names

def valid_user(name) -> bool:
    """Whether `name` is a user name the file can hold."""
    return isinstance(name, str) and bool(_USER.fullmatch(name)) and not name.startswith("#")


def check_user(name) -> str:
    """`name`, or ValueError saying what a user name may be (without
    repeating it: it could be a password typed in the wrong place)."""
    if not valid_user(name):
        raise ValueError(f"a user name is 1 to {MAX_USER_LENGTH} printable ASCII characters, "
                         f"without ':' or blanks, and does not start with '#'")
    return name


def check_password(password) -> bytes:
    """`password`, or ValueError when it is not one `smapctl passwd` sets:
    empty; holding NUL (AUTH PLAIN cannot carry it), CR or LF (no line
    can, and a CR is the mark of a file written with CRLF); or not UTF-8
    (what a client sends, RFC 4616)."""
    if not isinstance(password, (bytes, bytearray)):
        raise TypeError("a password is bytes")
    if not password:
        raise ValueError("the password is empty")
    if any(c in password for c in b"\0\r\n"):
        raise ValueError("the password contains NUL, CR or LF")
    try:
        bytes(password).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the password is not UTF-8") from None
    return bytes(password)


# ------------------------------------------------------------------ ab64

def ab64_encode(data: bytes) -> str:
    """passlib's "adapted base64": standard base64, `.` for `+`, no `=`."""
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("+", ".")


def ab64_decode(text: str) -> bytes:
    """The inverse of ab64_encode; ValueError for anything it would not
    have written (other characters, an impossible length, stray bits)."""
    if not _AB64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not ab64")
    data = base64.b64decode(text.replace(".", "+") + "=" * (-len(text) % 4))
    if ab64_encode(data) != text:
        raise ValueError("not canonical ab64")
    return data


# ------------------------------------------------------------------ entries

class _Md5Entry:
    """`user:<32 hex digits>`: the reference format."""
    cost = 0   # no PBKDF2 iterations

    def __init__(self, digest: bytes):
        self.digest = digest

    def matches(self, password: bytes) -> bool:
        return hmac.compare_digest(hashlib.md5(password).digest(), self.digest)


class _Pbkdf2Entry:
    """`user:$pbkdf2-sha256$ITERATIONS$SALT$HASH`."""

    def __init__(self, iterations: int, salt: bytes, digest: bytes):
        self.cost, self.salt, self.digest = iterations, salt, digest

    def matches(self, password: bytes) -> bool:
        # hashlib.pbkdf2_hmac through the module, so that a test can count the calls.
        derived = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.cost, len(self.digest))
        return hmac.compare_digest(derived, self.digest)


def _parse_secret(secret: str):
    """The entry of a secret, or ValueError with a sentence that quotes
    nothing of it."""
    if _MD5_HEX.fullmatch(secret):
        return _Md5Entry(bytes.fromhex(secret))
    if secret != secret.strip():
        raise ValueError("blanks around the hash")
    if not secret.startswith("$"):
        raise ValueError("not an MD5 hash (32 hex digits) nor a $pbkdf2-sha256$ entry of smapctl passwd")
    fields = secret.split("$")
    if fields[1] != SCHEME:
        raise ValueError("unknown hash scheme (only $pbkdf2-sha256$ and MD5 hex are read)")
    if len(fields) != 5:
        raise ValueError("a $pbkdf2-sha256$ entry is $pbkdf2-sha256$ITERATIONS$SALT$HASH")
    _, _, iterations, salt, digest = fields
    if not _DECIMAL.fullmatch(iterations) or not 1 <= int(iterations) <= MAX_ITERATIONS:
        raise ValueError(f"the iteration count is not a number from 1 to {MAX_ITERATIONS}")
    try:
        salt_bytes = ab64_decode(salt)
    except ValueError:
        salt_bytes = None
    if salt_bytes is None or not MIN_SALT_BYTES <= len(salt_bytes) <= MAX_SALT_BYTES:
        raise ValueError(f"the salt is not {MIN_SALT_BYTES} to {MAX_SALT_BYTES} bytes in unpadded ab64")
    try:
        digest_bytes = ab64_decode(digest)
    except ValueError:
        digest_bytes = None
    if digest_bytes is None or len(digest_bytes) != HASH_BYTES:
        raise ValueError(f"the hash is not {HASH_BYTES} bytes in unpadded ab64")
    return _Pbkdf2Entry(int(iterations), salt_bytes, digest_bytes)


def _lines(data: bytes):
    """(line number, the line with its end, the line without it) for each
    line of the file; the end is LF or CR LF, or nothing on a last line
    without one."""
    parts = data.split(b"\n")
    for number, part in enumerate(parts, 1):
        last = number == len(parts)
        if last and not part:
            return
        yield number, part if last else part + b"\n", part[:-1] if part.endswith(b"\r") else part


def _entry_user(body: bytes):
    """The user an entry line is for, None for a comment, a blank line, or
    a line whose user part is not a user name."""
    if not body.strip() or body.startswith(b"#"):
        return None
    user, sep, _ = body.partition(b":")
    try:
        name = user.decode("ascii")
    except UnicodeDecodeError:
        return None
    return name if sep and valid_user(name) else None


def hash_password(password: bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes = None) -> str:
    """The salted entry of `password` (without the `user:`):
    `$pbkdf2-sha256$ITERATIONS$SALT$HASH`, with a fresh 16-byte salt
    unless one is given."""
    if not isinstance(password, (bytes, bytearray)):
        raise TypeError("a password is bytes")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be a whole number from 1 to {MAX_ITERATIONS}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else bytes(salt)
    if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
        raise ValueError(f"a salt has {MIN_SALT_BYTES} to {MAX_SALT_BYTES} bytes")
    digest = hashlib.pbkdf2_hmac("sha256", bytes(password), salt, iterations, HASH_BYTES)
    return f"${SCHEME}${iterations}${ab64_encode(salt)}${ab64_encode(digest)}"


# ------------------------------------------------------------------ reading

class PasswordFile:
    """The users of a password file and their secrets."""

    def __init__(self, entries: dict, path: str = None):
        self.path = path
        self._entries = dict(entries)
        # Every verification costs as much as the costliest entry: the
        # entry's own work, then PBKDF2 padding up to that cost.  An
        # unknown user is checked against a dummy entry of that cost, with
        # a random salt and hash no password matches.
        self._cost = max((e.cost for e in self._entries.values()), default=0)
        self._dummy = (_Pbkdf2Entry(self._cost, secrets.token_bytes(SALT_BYTES), secrets.token_bytes(HASH_BYTES))
                       if self._cost else _Md5Entry(secrets.token_bytes(16)))
        self._padding_salt = secrets.token_bytes(SALT_BYTES)

    @classmethod
    def parse(cls, data: bytes, path: str = "<password file>") -> "PasswordFile":
        """The file from its bytes; AuthFileError listing every bad line."""
        entries, first_line, problems = {}, {}, []
        for number, _, body in _lines(data):
            if not body.strip() or body.startswith(b"#"):
                continue
            where = f"{path}:{number}"
            try:
                text = body.decode("ascii")
            except UnicodeDecodeError:
                problems.append(f"{where}: not ASCII (user names and hashes are printable ASCII)")
                continue
            user, sep, secret = text.partition(":")
            if not sep:
                problems.append(f"{where}: not user:hash (no ':')")
                continue
            if not valid_user(user):
                problems.append(f"{where}: bad user name (1 to {MAX_USER_LENGTH} printable ASCII characters, "
                                f"without ':' or blanks)")
                continue
            try:
                entry = _parse_secret(secret)
            except ValueError as e:
                problems.append(f"{where}: user {user}: {e}")
                continue
            if user in entries:
                problems.append(f"{where}: user {user} already has an entry at line {first_line[user]}")
                continue
            entries[user], first_line[user] = entry, number
        if problems:
            raise AuthFileError(problems)
        return cls(entries, path)

    @classmethod
    def load(cls, path: str) -> "PasswordFile":
        """Read the file (symbolic links followed, as for /etc files; it
        must be a regular file).  AuthFileError names the file, and every
        bad line by its number."""
        return cls.parse(_read_file(path), path)

    @property
    def users(self) -> frozenset:
        return frozenset(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, user: str, password: bytes) -> bool:
        """Whether `password` is `user`'s.  The comparison is constant-time,
        and every call does the work of the file's costliest entry, so
        that its time tells neither whether the user exists nor whether
        the entry is MD5 or salted (in a file that mixes them the MD5
        users pay the PBKDF2 cost too)."""
        if not isinstance(password, (bytes, bytearray)):
            raise TypeError("a password is bytes")
        password = bytes(password)
        entry = self._entries.get(user) if isinstance(user, str) else None
        known = entry is not None
        if not known:
            entry = self._dummy
        matches = entry.matches(password)
        if entry.cost < self._cost:
            hashlib.pbkdf2_hmac("sha256", password, self._padding_salt, self._cost - entry.cost, HASH_BYTES)
        # No password holds a NUL (check_password refuses one, PLAIN cannot
        # carry one, the FWTK's were C strings), and HMAC pads its key
        # with NULs: "pw" and "pw\0" derive the same PBKDF2 hash, so a
        # password with a NUL (sent with LOGIN) never matches; the work
        # above is done all the same.  For the same reason an empty password
        # (never set: check_password refuses it) would match a hash made
        # from NULs: it never matches either.
        return known and matches and bool(password) and b"\0" not in password


def _file_error(path: str, e: OSError) -> AuthFileError:
    if e.errno == errno.ELOOP:
        return AuthFileError(f"{path}: is a symbolic link: neither written through nor replaced")
    if e.errno == errno.EFBIG:
        return AuthFileError(f"{path}: {e.strerror}: not a password file")
    return AuthFileError(f"{path}: {e.strerror}")


def _read_file(path: str) -> bytes:
    try:
        return read_regular(path, MAX_FILE_BYTES)[0]
    except OSError as e:
        raise _file_error(path, e) from None


# ------------------------------------------------------------------ writing

def check_path(path: str) -> None:
    """Refuse (AuthFileError) a path set_password may not write: a
    symbolic link, or anything but a regular file.  A missing file is
    fine (it is created)."""
    try:
        kind = existing_kind(path)
    except OSError as e:
        raise AuthFileError(f"{path}: {e.strerror}") from None
    if kind == "symlink":
        raise AuthFileError(f"{path}: is a symbolic link: neither written through nor replaced")
    if kind == "other":
        raise AuthFileError(f"{path}: not a regular file")


def _read_for_edit(path: str):
    """(bytes, stat) of the file to edit, never through a symbolic link;
    (None, None) when it does not exist."""
    try:
        return read_regular(path, MAX_FILE_BYTES, follow=False)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        raise _file_error(path, e) from None


def _edit(path: str, change, create: bool) -> bool:
    """Read the file, compute its new content with `change(data)` (None:
    leave the file alone) and write it anew.  Two smapctl runs at once
    are serialised by an flock on the directory (the file itself is
    replaced, so it cannot hold the lock), so neither loses the other's
    change.  Returns whether the file was written."""
    directory = os.path.dirname(path) or "."
    try:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise AuthFileError(f"{path}: {directory}: {e.strerror}") from None
    try:
        fcntl.flock(directory_fd, fcntl.LOCK_EX)
        data, old = _read_for_edit(path)
        if data is None and not create:
            raise AuthFileError(f"{path}: {os.strerror(errno.ENOENT)}")
        new = change(data or b"")
        if new is None:
            return False
        write_private(path, new, owner=None if old is None else (old.st_uid, old.st_gid))
        return True
    except OSError as e:
        raise AuthFileError(f"{path}: {e.strerror}") from None
    finally:
        os.close(directory_fd)    # releases the lock


def set_password(path: str, user: str, password: bytes, iterations: int = DEFAULT_ITERATIONS) -> None:
    """Give `user` a salted entry for `password`: its line is replaced
    where it stands (a later duplicate line of the user is removed), or
    a line is added at the end; every other line, comment and line end
    is kept byte for byte.  A missing file is created.  ValueError for a
    bad user name, password or iteration count; AuthFileError when the
    file cannot be written."""
    check_user(user)
    check_password(password)
    line = f"{user}:{hash_password(password, iterations)}".encode("ascii")
    check_path(path)

    def change(data):
        out, done = [], False
        for _, raw, body in _lines(data):
            if _entry_user(body) != user:
                out.append(raw)
            elif not done:
                # The line keeps its end (CR LF stays CR LF); a last line without one gets LF.
                out.append(line + (raw[len(body):] if raw.endswith(b"\n") else b"\n"))
                done = True
        if not done:
            if out and not out[-1].endswith(b"\n"):
                out.append(b"\n")
            out.append(line + b"\n")
        return b"".join(out)
    _edit(path, change, create=True)


def delete_user(path: str, user: str) -> bool:
    """Remove `user`'s line(s), keeping every other line byte for byte.
    False (and the file untouched) when the user has none.  ValueError
    for a bad user name; AuthFileError when the file cannot be read or
    written (a missing file among them)."""
    check_user(user)

    def change(data):
        kept = [raw for _, raw, body in _lines(data) if _entry_user(body) != user]
        joined = b"".join(kept)
        return None if len(joined) == len(data) else joined
    return _edit(path, change, create=False)
