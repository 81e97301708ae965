"""`smapctl show-config`: the settings in force, and the line each one comes from.

What it does: loads a program's settings from the table exactly as the
program does (keywords.load, the names it reads under) and prints every
keyword of the program (`-n`: only those the table sets) with its value
and its origin: the file and line that won, or `default`; for a keyword
set on more than one line, the lines that lost (the first line wins,
keywords.py) and, for a repeatable one, every line in the order used.
As `postconf` and `postconf -n` do for Postfix.

What it trusts: the table (it is only read); keywords.py for every
keyword, its default and which line wins.

What it must never do: have its own idea of a keyword or of which line
wins; print a secret's contents (values are the table's words, and a
keyword names a password file, never its contents).
"""

from __future__ import annotations

import json

from smapd.table import keywords
from smapd.table.keywords import PROGRAMS, SSLGW
from smapd.table.netperm import Table


def names_read(program: str, name: str = None, service: str = None) -> tuple:
    """The names a program reads its lines under: the name it runs as,
    and for ssl-gw also its service (`-N`, or the name of -r's service)."""
    name = name or program
    if program == SSLGW:
        return tuple(dict.fromkeys(n for n in (service, name, SSLGW) if n))
    return (name,)


def _words(args) -> str:
    """A line's arguments as they could be written again."""
    return " ".join(f'"{a}"' if not a or any(c in a for c in " \t,'\"\\") else a for a in args)


def _text(value) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) or "(none)"
    return str(value)


def effective(table: Table, program: str, names: tuple, only_set: bool = False) -> list:
    """([{keyword, value, source, file, line, lines, ignored}] in the
    order of keywords.py, the errors of the table for these names);
    `lines`: every line used (a repeatable keyword's, permit-/deny-
    rules), `ignored`: the lines that lost to `source`."""
    loaded = keywords.load(table, program, names)
    s = loaded.settings
    broken = {(d.file, d.line) for d in loaded.diagnostics if d.severity == "error"}
    rules = [r for r in table.rules_for(names) if (r.file, r.line) not in broken]
    out = []
    for kw in keywords.keywords_for(program):
        if only_set and not s.is_set(kw.name):
            continue
        origin = s.origins.get(kw.name)
        mine = [r for r in rules if r.keyword == kw.name]
        if origin is None:
            # A default that asks the machine (the host's FQDN: a DNS query
            # to the system's resolver) is named, not looked up.
            asks = kw.default in keywords.SYSTEM_DEFAULTS and kw.default_doc
            value = kw.default_doc if asks else _text(s[kw.name])
            entry = {"keyword": kw.name, "value": value, "source": "default", "file": None,
                     "line": None, "lines": [], "ignored": []}
            if kw.default_doc:
                entry["default"] = kw.default_doc
        elif isinstance(origin, list):  # repeatable: every line counts
            entry = {"keyword": kw.name, "value": " ".join(_words(r.args) for r in origin),
                     "source": ", ".join(r.where for r in origin), "file": origin[0].file, "line": origin[0].line,
                     "lines": [{"file": r.file, "line": r.line, "text": f"{r.spelled()} {_words(r.args)}".strip()}
                               for r in origin],
                     "ignored": [{"file": r.file, "line": r.line} for r in mine if r not in origin]}
        else:
            entry = {"keyword": kw.name, "value": _words(origin.args) if not kw.flagged else
                     f"{origin.spelled()} {_words(origin.args)}".strip(), "source": origin.where,
                     "file": origin.file, "line": origin.line,
                     "lines": [{"file": origin.file, "line": origin.line,
                                "text": f"{origin.spelled()} {_words(origin.args)}".strip()}],
                     "ignored": [{"file": r.file, "line": r.line} for r in mine if r is not origin]}
        out.append(entry)
    return out, [d for d in loaded.diagnostics if d.severity == "error"]


def show_config(path: str, program: str, name: str, service: str, only_set: bool, as_json: bool, out,
                err) -> int:
    table = Table.read(path)
    programs = [program] if program else list(PROGRAMS)
    doc, status = [], 0
    for p in programs:
        names = names_read(p, name if program else None, service)
        entries, errors = effective(table, p, names, only_set)
        for d in errors:
            print(f"smapctl: {d}", file=err)
            status = 1
        doc.append({"program": p, "names": list(names), "table": path, "settings": entries})
    if as_json:
        json.dump(doc if not program else doc[0], out, indent=1)
        out.write("\n")
        return status
    for block in doc:
        print(f"# {block['program']}, reading the lines of {', '.join(block['names'])} (and *) in {path}",
              file=out)
        rows = []
        for e in block["settings"]:
            if len(e["lines"]) > 1 or (e["lines"] and e["lines"][0]["text"].split()[0] != e["keyword"]):
                # As the table says it: each line, with its permit-/deny-.
                rows += [(line["text"], f"{line['file']}:{line['line']}") for line in e["lines"]]
            else:
                rows.append((f"{e['keyword']} {e['value']}", e["source"]))
            if e["ignored"]:
                lost = ", ".join(f"{i['file']}:{i['line']}" for i in e["ignored"])
                rows[-1] = (rows[-1][0], f"{rows[-1][1]}; {lost} ignored (the first line wins)")
        width = max((len(text) for text, _ in rows), default=0)
        for text, where in rows:
            print(f"{text.ljust(width)}  # {where}", file=out)
    return status
