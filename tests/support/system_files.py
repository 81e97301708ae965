"""The only place where the tests change a file of the machine, and why.

Two files, each for a reason a test cannot avoid:

* /usr/local/etc/netperm-table: xinetd starts smap and ssl-gw with no
  --config, as the reference stanzas do, so their table must be where
  the programs look by default;
* /etc/postfix/main.cf: Postfix's sendmail, run by a user other than root
  (smapd runs it as nobody), honours -C only for a directory that the
  system's main.cf lists in alternate_config_directories.

`replaced(path, text)` puts `text` there for the duration of a `with`,
then puts the file back as it was (or removes it).  Before it writes, it
keeps the original beside the file (PATH.smapd-test-saved, or a marker
that there was none), so that a run killed in between is mended by the
next: `restore_leftovers()` runs at the start of every test session.
"""

import contextlib
import os

SAVED = ".smapd-test-saved"
ABSENT = ".smapd-test-absent"
FILES = ("/usr/local/etc/netperm-table", "/etc/postfix/main.cf")


def _put_back(path):
    if os.path.exists(path + SAVED):
        os.replace(path + SAVED, path)
    elif os.path.exists(path + ABSENT):
        if os.path.exists(path):
            os.unlink(path)
        os.unlink(path + ABSENT)


def restore_leftovers():
    """Put back whatever an interrupted run left replaced."""
    for path in FILES:
        _put_back(path)


@contextlib.contextmanager
def replaced(path, text):
    assert path in FILES, f"{path} is not a file the tests may change (support/system_files.py)"
    _put_back(path)
    if os.path.exists(path):
        with open(path, "rb") as f, open(path + SAVED, "wb") as keep:
            keep.write(f.read())
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path + ABSENT, "w").close()
    with open(path, "w") as f:
        f.write(text)
    try:
        yield path
    finally:
        _put_back(path)


def appended(path, text):
    """`path` as it is, plus `text`, for the duration of a `with`."""
    old = open(path).read() if os.path.exists(path) else ""
    return replaced(path, old + text)
