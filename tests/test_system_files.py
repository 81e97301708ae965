"""support/system_files.py: a system file a test replaced is put back,
even when the run that replaced it was killed."""

import os
import subprocess
import sys

import pytest

from support.programs import ROOT
from support import system_files

TABLE = "/usr/local/etc/netperm-table"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writes /usr/local/etc: needs root")


def test_a_killed_run_is_mended_by_the_next(tmp_path):
    before = open(TABLE).read() if os.path.exists(TABLE) else None
    # A run that replaces the table and is killed inside the `with`.
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); from support import system_files\n"
            "with system_files.replaced(sys.argv[2], 'smap: maxbytes 1\\n'):\n"
            "    os.kill(os.getpid(), 9)\n")
    p = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "tests"), TABLE])
    assert p.returncode == -9
    assert open(TABLE).read() == "smap: maxbytes 1\n"
    system_files.restore_leftovers()
    after = open(TABLE).read() if os.path.exists(TABLE) else None
    assert after == before
    assert not os.path.exists(TABLE + system_files.SAVED) and not os.path.exists(TABLE + system_files.ABSENT)


def test_only_the_files_it_names():
    with pytest.raises(AssertionError):
        with system_files.replaced("/etc/hosts", ""):
            pass
