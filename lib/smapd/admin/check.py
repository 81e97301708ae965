"""`smapctl check`: the whole table, for every program, explained.

What it does: reads a netperm-table, works out which program of the suite
reads each program name of the table (`smap`, `smapd`, `ssl-gw`, a name
they are installed under such as `smmap`, or none), loads each name's
settings with `keywords.load` exactly as the program would, adds what only
a look at the whole table shows (lines for names no program reads, with
the program each keyword belongs to; settings that contradict each
other) and, unless asked not to, checks the accounts, directories and
files the table names on this machine.

What it trusts: the account database and the file system as they are
when it runs; it changes neither.

What it must never do: invent its own idea of a keyword (keywords.py has
them all), or exit 0 when a program would refuse to start.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import ssl
import stat
from dataclasses import dataclass, field

from smapd.table import keywords
from smapd.table.keywords import PROGRAMS, SMAP, SMAPD, SSLGW
from smapd.table.netperm import ConfigError, Diagnostic, Table
from smapd.prefork.privsep import PrivsepError, resolve_id

#: Other programs of the FWTK that share the table; their lines are theirs.
FWTK_PROGRAMS = {
    "authsrv", "ftp-gw", "tn-gw", "rlogin-gw", "http-gw", "plug-gw", "x-gw",
    "netacl", "smtp-gw", "pop3-gw", "authmgr", "mqueue", "portscan",
}


_SEPARATORS = "-_."


def role_of(name: str):
    """The program that reads `name:` lines when installed under that
    name, or None.  A program reads its own name, the name with one letter
    doubled (`smmap`, `smmapd`, the FWTK patches' names), and the name
    with a suffix or prefix after a separator (`smap-in`, `smapd.2`).
    Any other name (`smtpd`, `sitemap`, a service name of ssl-gw) is no
    program of the suite unless the operator says so with NAME=PROGRAM."""
    if name in PROGRAMS:
        return name
    low = name.lower()
    for p in sorted(PROGRAMS, key=len, reverse=True):
        bare = p.replace("-", "")
        if low.replace("-", "").replace("_", "") == bare:
            return p
        if any(low == p[:i] + p[i] + p[i:] for i in range(len(p))):
            return p
        if any(low.startswith(p + sep) or low.endswith(sep + p) for sep in _SEPARATORS):
            return p
    return None


@dataclass
class Report:
    path: str
    diagnostics: list = field(default_factory=list)

    def add(self, line, severity, message, keyword="", program=""):
        self.diagnostics.append(Diagnostic(self.path, line, severity, message, keyword=keyword, program=program))

    def extend(self, diags):
        self.diagnostics.extend(diags)

    def unique(self):
        """The diagnostics in file and line order, each finding once (one
        line read by several names is found by each)."""
        seen, out = set(), []
        order = {"error": 0, "warning": 1, "note": 2}
        for d in sorted(self.diagnostics, key=lambda d: (d.file != self.path, d.file, d.line, order[d.severity])):
            key = (d.file, d.line, d.severity, d.message)
            if key not in seen:
                seen.add(key)
                out.append(d)
        return out

    def lines(self):
        return [str(d) for d in self.unique()]

    def count(self, severity):
        return len({(d.file, d.line, d.message) for d in self.diagnostics if d.severity == severity})


def check_table(path: str, names=(), files: bool = True) -> Report:
    """Check the table at `path`.  `names` are `NAME` or `NAME=PROGRAM`
    entries naming how the programs are invoked; without them, every
    name in the table that a program reads is checked."""
    report = Report(path)
    try:
        table = Table.read(path)
    except ConfigError as e:
        report.extend(e.diagnostics)
        return report
    report.extend(table.diagnostics)

    roles = {}
    for n in table.program_names():
        roles[n] = role_of(n)
    wanted, declared = [], set()
    for spec in names:
        name, _, role = spec.partition("=")
        if role and role not in PROGRAMS:
            report.add(0, "error", f"{spec}: {role!r} is not a program of the suite ({', '.join(PROGRAMS)})")
            continue
        role = role or role_of(name)
        if role is None:
            report.add(0, "error", f"cannot tell which program {name!r} is; write {name}=smap, {name}=smapd or {name}=ssl-gw")
            continue
        roles[name] = role
        wanted.append(name)
        declared.add(name)
    if not wanted:
        wanted = [n for n, r in roles.items() if r]
        # A program the table does not name still reads its '*' lines.
        for p in PROGRAMS:
            if not any(roles[n] == p for n in wanted):
                wanted.append(p)
                roles[p] = p
        configured = {n for n in wanted if n in first_line_names(table)}
    else:
        configured = set(wanted)

    first_line = {}
    for r in table.rules:
        for p in r.programs:
            first_line.setdefault(p, r.line)

    loaded = {}
    for name in wanted:
        role = roles[name]
        if name != role and name in first_line and name not in declared:
            report.add(first_line[name], "note",
                       f"{name!r} is {role} installed under another name: run as {name}, it reads the '{name}:' lines")
        readers = (name, SSLGW) if role == SSLGW else (name,)
        # The rules between keywords judge a program the table configures;
        # one it does not mention (no lines, defaults only) is not run
        # from this table, and "smap needs relay control" would be noise.
        result = keywords.load(table, role, readers, rules=name in configured)
        report.extend(d if d.program else dataclasses.replace(d, program=role) for d in result.diagnostics)
        loaded[name] = result.settings

    _foreign_names(table, roles, loaded, report)
    _pairs(loaded, first_line, report, files)
    if files:
        # Accounts, directories and files of the programs the table
        # configures; not the defaults of a program it does not mention.
        for name, s in loaded.items():
            if name in configured:
                _machine(s, name, report)
        _table_file(path, [s for n, s in loaded.items() if n in configured], report)
    return report


def _table_file(path, settings, report):
    """Who may write the table: whoever can is the programs' master."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if st.st_mode & stat.S_IWOTH:
        report.add(0, "error", f"the table is writable by everyone (mode {st.st_mode & 0o7777:04o}): anyone "
                               "could rewrite the rules the programs run by; make it 0644 and root's")
    jailed = {_uid_gid(s)[0] for s in settings if s.program in (SMAP, SMAPD, SSLGW)} - {None, 0}
    if st.st_uid in jailed and st.st_uid != os.geteuid():
        report.add(0, "error", f"the table is owned by uid {st.st_uid}, the user the programs drop to: a "
                               "compromised child could rewrite its own rules; make it root's")


def first_line_names(table):
    return {p for r in table.rules for p in r.programs if p != "*"}


def _here(role, loaded, table):
    """How a role's program is called in this table (for messages)."""
    named = first_line_names(table)
    return [n for n, s in loaded.items() if s.program == role and n in named]


def _foreign_names(table, roles, loaded, report):
    """Lines for names that no program of the suite reads."""
    told = set()
    for rule in table.rules:
        for prog in rule.programs:
            if prog == "*" or roles.get(prog) or prog in FWTK_PROGRAMS or prog.startswith("netacl-"):
                continue
            owners = keywords.programs_with(rule.keyword)
            # The nearest name; among equally near ones, a program that
            # has the keyword.
            near = keywords.nearest(prog, owners + [p for p in PROGRAMS if p not in owners])
            shared = any(roles.get(p) for p in rule.programs if p != prog)
            ignored = f"the {prog!r} entry of this line is ignored" if shared else "this line is ignored"
            if owners == [SSLGW]:
                report.add(rule.line, "note",
                           f"{prog!r} names no program of the suite; {rule.spelled()!r} is a keyword of ssl-gw: "
                           f"if {prog} is ssl-gw's service name (-r or -N), check it with "
                           f"'smapctl check {prog}=ssl-gw'; otherwise {ignored}")
            elif owners:
                readers = [n for o in owners for n in _here(o, loaded, table)]
                msg = (f"{prog!r} names no program of the suite"
                       + (f" (nearest: {near})" if near else "")
                       + f"; {rule.spelled()!r} is a keyword of {' or '.join(owners)}")
                aliases = [n for n in readers if n not in PROGRAMS]
                if aliases:
                    msg += f" (here: {', '.join(aliases)})"
                msg += f"; {ignored}"
                if len(readers) == 1 and near and not shared:
                    args = " ".join(rule.args)
                    msg += f": did you mean '{readers[0]}: {rule.spelled()} {args}'?".replace(" '?", "'?")
                    s = loaded[readers[0]]
                    kw = keywords.KEYWORDS.get((s.program, rule.keyword))
                    if kw and not kw.multi and not s.is_set(rule.keyword):
                        default = kw.default_text()
                        if default == args:
                            msg += f" (the default, {default}, is the same)"
                        else:
                            msg += f" ({readers[0]} uses the default, {kw.name} {default})"
                report.add(rule.line, "warning", msg)
            elif prog not in told:
                told.add(prog)
                if near:
                    report.add(rule.line, "warning",
                               f"{prog!r} names no program of the suite (nearest: {near}); its lines are ignored")
                else:
                    report.add(rule.line, "note", f"{prog!r} is not a program of the suite; its lines are left to it")


def _at(s, key):
    o = s.origins.get(key)
    if isinstance(o, list):
        o = o[0]
    return o.line if o is not None else 0


def _pairs(loaded, first_line, report, files: bool):
    """smap must spool where smapd looks, as the user smapd runs as."""
    smaps = [(n, s) for n, s in loaded.items() if s.program == SMAP]
    smapds = [(n, s) for n, s in loaded.items() if s.program == SMAPD]
    if len(smaps) == 1 and len(smapds) == 1:
        (a, sa), (b, sb) = smaps[0], smapds[0]
        if os.path.normpath(sa["directory"]) != os.path.normpath(sb["directory"]):
            report.add(_at(sb, "directory") or first_line.get(b, 0), "warning",
                       f"{a} spools into {sa['directory']} but {b} reads {sb['directory']}", "directory", SMAPD)
        elif files and (sa.origins or sb.origins):
            ids_a, ids_b = _uid_gid(sa), _uid_gid(sb)
            # Different users in one group are the recommended set-up
            # (spool files are 0660); different groups cannot share.
            if None not in ids_a + ids_b and ids_a[0] != ids_b[0] and ids_a[1] != ids_b[1] \
                    and 0 not in (ids_a[0], ids_b[0]):
                report.add(_at(sb, "groupid") or _at(sb, "userid") or first_line.get(b, 0), "error",
                           f"{a} runs as uid {ids_a[0]}, gid {ids_a[1]} but {b} as uid {ids_b[0]}, gid {ids_b[1]}: "
                           f"smap's spool files are mode 0660, so {b} could open none of them; give both the "
                           "same groupid (a userid of its own for smapd is fine, and recommended)", "groupid", SMAPD)


# --------------------------------------------------------------------------
# What the table names on this machine.

def _machine(s, name, report):
    for kw in keywords.keywords_for(s.program):
        check = kw.type.check
        if not check or check == "none":
            continue
        if not s.is_set(kw.name) and check not in ("dir", "exec", "user", "group"):
            continue
        if kw.name == "sendmail" and s.program == SMAPD and s["mta"]:
            continue  # not run: smapd hands off by SMTP/LMTP
        value = s[kw.name]
        if value is None or value == ():
            continue
        line = _at(s, kw.name)
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
        label = f"{name}: {kw.name} {shown}" + ("" if s.is_set(kw.name) else " (default)")
        problem = _CHECKS[check](value, s, kw, report)
        if problem:
            severity, text = problem
            report.add(line, severity, f"{label}: {text}", kw.name, s.program)
    if s.program == SMAP:
        # What smap would log at start about the files it reads line by line.
        from smapd.smap.recipients import RecipientMap
        from smapd.smap.spamdb import SpamDatabase
        for keyword, loader in (("spam-database", SpamDatabase.load), ("recipients", RecipientMap.load)):
            if not (s[keyword] and os.path.isfile(s[keyword])):
                continue
            try:
                for warning in loader(s[keyword]).warnings:
                    report.add(_at(s, keyword), "warning", f"{name}: {warning}", keyword, SMAP)
            except OSError:
                pass  # the file check has said why
    if s.program == SSLGW and s["tcpwrappers"] and os.path.isdir(s["tcpwrappers-dir"]):
        # What ssl-gw would log at start about hosts.allow and hosts.deny.
        from smapd.sslgw.tcpwrap import Tables
        for warning in Tables(s["tcpwrappers-dir"]).warnings:
            report.add(_at(s, "tcpwrappers-dir"), "warning", f"{name}: {warning}", "tcpwrappers-dir", SSLGW)


def _user(value, s, kw, report):
    if s.program == SSLGW and not s.is_set(kw.name):
        return None
    root = "root: the programs refuse this unless started with --allow-root"
    if isinstance(value, int):
        if value == 0:
            return ("warning", root)
        try:
            pwd.getpwuid(value)
        except KeyError:
            if s.program == SMAPD:
                return ("warning", f"uid {value} has no passwd entry: the MTA's sendmail, which smapd runs as "
                        "this user, may refuse it (Postfix's postdrop says 'unknown uid')")
        return None
    try:
        if pwd.getpwnam(value).pw_uid == 0:
            return ("warning", root)
    except KeyError:
        return ("error", "no such user")
    return None


def _group(value, s, kw, report):
    if s.program == SSLGW and not s.is_set(kw.name):
        return None
    if isinstance(value, int):
        return ("warning", "group 0: the programs refuse this unless started with --allow-root") \
            if value == 0 else None
    try:
        grp.getgrnam(value)
    except KeyError:
        return ("error", "no such group")
    return None


def _uid_gid(s):
    """The ids the program would run as; None for an unknown account
    (reported on its own line)."""
    def resolve(value, kind):
        try:
            return resolve_id(value, kind)
        except PrivsepError:
            return None
    return resolve(s["userid"], "user"), resolve(s["groupid"], "group")


def _writable_by(st, uid, gid):
    if uid is None or uid == 0:
        return True  # root writes anywhere; an unknown account is reported on its own line
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if gid is not None and st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def _stat(value, is_kind, kind):
    """(stat, None) for a path of the right kind, else (None, problem)."""
    try:
        st = os.stat(value)
    except OSError as e:
        return None, ("error", f"cannot use it: {e.strerror}")
    if not is_kind(st.st_mode):
        return None, ("error", f"is not {kind}")
    return st, None


def _dir(value, s, kw, report):
    if kw.name == "holddir" and not os.path.lexists(value):
        return None  # smapctl hold makes it when it first needs it
    st, bad = _stat(value, stat.S_ISDIR, "a directory")
    if bad:
        return bad
    if kw.name in ("directory", "baddir") and s.program in (SMAP, SMAPD):
        uid, gid = _uid_gid(s)
        if not _writable_by(st, uid, gid):
            return ("error", f"is not writable by {s['userid']}/{s['groupid']}, who must create spool files in it")
        if st.st_mode & stat.S_IWOTH:
            return ("error", f"is writable by everyone (mode {st.st_mode & 0o7777:04o}): anyone could plant "
                    "mail for smapd to hand off; make it 0770, of the group smap and smapd share")
    # Who moves files there by link and unlink, never through a symbolic
    # link (whoever runs as smap's user could have planted one).
    movers = {"baddir": ("smapd never follows one there", "smapd moves refused files there", ", and refuses to start"),
              "holddir": ("smapctl hold and release never follow one there", "smapctl hold and release move "
                          "files there", "")}
    if kw.name in movers and s.program == SMAPD:
        link, moves, refuses = movers[kw.name]
        if os.path.islink(value):
            return ("error", f"is a symbolic link: {link} (whoever runs as smap's user could have planted it)"
                    + refuses)
        try:
            spool = os.stat(s["directory"])
        except OSError:
            return None  # the directory line says why
        if spool.st_dev != st.st_dev:
            return ("error", f"is not on the file system of the spool {s['directory']}: {moves} by link and "
                    f"unlink{refuses}")
    return None


def _file(value, s, kw, report):
    _, bad = _stat(value, stat.S_ISREG, "a regular file")
    if bad:
        return bad
    try:
        with open(value, "rb"):
            pass
    except OSError as e:
        return ("error", f"cannot read it: {e.strerror}")
    return None


def _pem(value, s, kw, report):
    bad = _file(value, s, kw, report)
    if bad:
        return bad
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(value, password=_no_pass_phrase)
    except _Encrypted:
        return ("error", "holds an encrypted private key: a daemon has nobody to type its pass phrase")
    except ssl.SSLError as e:
        return ("error", f"is not a usable key and certificate ({e.reason or e})")
    except OSError as e:
        return ("error", f"cannot load it: {e.strerror}")
    mode = os.stat(value).st_mode
    if mode & stat.S_IROTH:
        return ("warning", f"holds a private key and is readable by everyone (mode {mode & 0o7777:04o}); make it 0600")
    return None


class _Encrypted(Exception):
    pass


def _no_pass_phrase():
    raise _Encrypted()




def _secret(value, s, kw, report):
    bad = _file(value, s, kw, report)
    if bad:
        return bad
    mode = os.stat(value).st_mode
    if mode & stat.S_IWOTH:
        return ("error", f"is writable by everyone (mode {mode & 0o7777:04o})")
    from smapd.smap.password_file import AuthFileError, PasswordFile
    try:
        PasswordFile.load(value)  # what smap will read, read the same way
    except AuthFileError as e:
        for problem in e.problems:
            where, _, text = problem.partition(": ")
            path, _, line = where.rpartition(":")
            if line.isdigit():
                report.diagnostics.append(Diagnostic(path, int(line), "error", text))
            else:
                report.diagnostics.append(Diagnostic(value, 0, "error", problem))
    if mode & stat.S_IROTH:
        return ("warning", f"holds password hashes and is readable by everyone (mode {mode & 0o7777:04o}); make it 0600")
    return None


def _exec(value, s, kw, report):
    if isinstance(value, tuple):
        value = value[0]
    bad = _file(value, s, kw, report)
    if bad:
        return bad
    if not os.access(value, os.X_OK):
        return ("error", "is not executable")
    return None


def _pidfile(value, s, kw, report):
    parent = os.path.dirname(value) or "/"
    if not os.path.isdir(parent):
        return ("error", f"its directory {parent} does not exist")
    return None


_CHECKS = {
    "user": _user, "group": _group, "dir": _dir, "file": _file, "pem": _pem,
    "secret": _secret, "exec": _exec, "pidfile": _pidfile,
}
