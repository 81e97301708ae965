"""The design's rules, read from the code's own imports and calls.

The tree (docs/ARCHITECTURE.md): the admin tool on top; the programs
smap, handoff (smapd) and sslgw beside each other; the prefork skeleton
below them; the table and keywords below it; at the bottom the shared
helpers (spool, log, TLS, files, the DNS client, exit statuses).  An
import may go down or sideways within its own folder, never up, and
never from one program into another.
"""

import ast
import os
import sys

import pytest

from support.programs import ROOT

LIB = os.path.join(ROOT, "lib", "smapd")
PROGRAMS = ("smap", "handoff", "sslgw")
BOTTOM = ("spool", "log", "tls", "files", "dnsclient", "addresses", "mailbox", "xtext", "sockets", "verify_wire",
          "exits", "__init__")
#: What each part may import of the suite (besides itself).
ALLOWED = {
    "admin": {"smap", "handoff", "sslgw", "prefork", "table", *BOTTOM},
    "smap": {"prefork", "table", *BOTTOM},
    "handoff": {"prefork", "table", *BOTTOM},
    "sslgw": {"prefork", "table", *BOTTOM},
    "prefork": {"table", *BOTTOM},
    "table": set(BOTTOM),
    **{b: set(BOTTOM) for b in BOTTOM},
}


def modules():
    for d, _, files in os.walk(LIB):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, LIB)[:-3].replace(os.sep, ".")
                yield rel, ast.parse(open(path).read(), path)


def imports(tree):
    """Every module name a file imports, at the top or inside a function."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the suite imports absolutely (smapd.x.y), so that moves are visible"
            if node.module == "smapd":
                for a in node.names:
                    # a module of the package, or a name of its __init__
                    is_module = os.path.exists(os.path.join(LIB, a.name + ".py")) or \
                        os.path.isdir(os.path.join(LIB, a.name))
                    yield f"smapd.{a.name}" if is_module else "smapd.__init__"
            else:
                yield node.module


def part(name: str) -> str:
    """'smap' for smap.session, 'spool' for spool: a folder or a bottom module."""
    return name.split(".")[0]


MODULES = dict(modules())


def test_the_tree_is_as_documented():
    parts = {part(m) for m in MODULES}
    assert parts == {"admin", "smap", "handoff", "sslgw", "prefork", "table", *BOTTOM}
    for folder in ("admin", "smap", "handoff", "sslgw", "prefork", "table"):
        assert f"{folder}.__init__" in MODULES, f"{folder}/ has no __init__.py saying what it is"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_never_up_nor_across(name):
    mine = part(name)
    wrong = []
    for imported in imports(MODULES[name]):
        if not imported.startswith("smapd."):
            continue
        theirs = part(imported[len("smapd."):])
        if theirs != mine and theirs not in ALLOWED[mine]:
            wrong.append(imported)
    assert wrong == [], f"{name} imports {wrong}"


def test_the_protocol_imports_only_the_standard_library_and_its_sasl():
    """And the address grammar and xtext, themselves pure and shared with smapd."""
    stdlib = sys.stdlib_module_names
    for imported in imports(MODULES["smap.protocol"]):
        assert imported.split(".")[0] in stdlib or imported in ("smapd.smap.sasl", "smapd.mailbox", "smapd.xtext",
                                                                "__future__"), imported
    for pure in ("mailbox", "xtext"):
        for imported in imports(MODULES[pure]):
            assert imported.split(".")[0] in stdlib or imported == "__future__", imported


def test_the_spool_knows_nothing_of_smap():
    assert not [i for i in imports(MODULES["spool"])
                if i.startswith("smapd.") and i not in ("smapd.files", "smapd.xtext")]


def test_only_privsep_changes_ids_or_root():
    calls = {"setuid", "setgid", "setgroups", "setresuid", "setresgid", "setreuid", "setregid", "seteuid",
             "setegid", "chroot", "initgroups"}
    found = []
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in calls:
                found.append((name, node.attr))
    assert {n for n, _ in found} == {"prefork.privsep"}, found


def test_no_program_imports_the_admin_tool():
    for name, tree in MODULES.items():
        if part(name) != "admin":
            assert not [i for i in imports(tree) if i.startswith("smapd.admin")], name


def test_the_table_imports_no_program():
    for name, tree in MODULES.items():
        if part(name) == "table":
            assert not [i for i in imports(tree)
                        if i.startswith(("smapd.smap", "smapd.handoff", "smapd.sslgw", "smapd.admin",
                                         "smapd.prefork"))], name


def test_every_module_says_what_it_trusts_and_must_never_do():
    for name, tree in MODULES.items():
        doc = ast.get_docstring(tree)
        assert doc, f"{name} has no docstring"
        if not name.endswith("__init__"):
            assert "What it trusts" in doc and "must never" in doc, f"{name}: the contract is missing"
