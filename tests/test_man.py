"""The man pages: clean under mandoc -Tlint, and their keyword lists are
exactly config.py's (the pages keep no list of their own)."""

import glob
import os
import re
import subprocess

from support.programs import ROOT
from smapd.table import keywords as config
from smapd.table import manpage

PAGES = sorted(glob.glob(os.path.join(ROOT, "man", "man*", "*.[0-9]")))


def test_pages_exist():
    names = {os.path.basename(p) for p in PAGES}
    assert {"netperm-table.5", "smap.8", "smapd.8", "smapctl.8", "ssl-gw.8"} <= names


def test_mandoc_lint_clean():
    r = subprocess.run(["mandoc", "-Tlint", "-W", "warning", *PAGES], capture_output=True, text=True)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_keyword_lists_are_generated_from_config():
    for page in PAGES:
        text = open(page, encoding="ascii").read()
        assert manpage.update(text) == text, f"{page} is out of date: run 'make man'"


def test_every_keyword_is_documented():
    text = open(os.path.join(ROOT, "man", "man5", "netperm-table.5"), encoding="ascii").read()
    for program in config.PROGRAMS:
        section = re.search(rf'BEGIN KEYWORDS {re.escape(program)}\n(.*?)\n\.\\" END', text, re.S).group(1)
        for kw in config.keywords_for(program):
            assert f"Ic {kw.name} " in section or f"Ic permit-{kw.name} " in section, (program, kw.name)


def test_rendered_page_reads_well():
    out = subprocess.run(["mandoc", "-Tutf8", os.path.join(ROOT, "man", "man5", "netperm-table.5")],
                         capture_output=True, check=True).stdout.decode()
    plain = re.sub(".\b", "", out)
    assert "maxbytes N" in plain
    assert "Default: \u2018100\u2019" in plain or "Default: '100'" in plain


def test_each_program_page_has_its_keyword_list():
    for program in config.PROGRAMS:
        text = open(os.path.join(ROOT, "man", "man8", f"{program}.8"), encoding="ascii").read()
        assert f'.\\" BEGIN KEYWORDS {program}\n' in text, program
