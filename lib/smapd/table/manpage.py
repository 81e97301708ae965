"""The keyword lists of the man pages, rendered from keywords.py, and the
list of the rules between keywords, rendered from rules.py.

What it does: renders each program's keywords (or, for the name `rules`,
every rule) as an mdoc tag list and puts it between the markers

    .\\" BEGIN KEYWORDS program
    .\\" END KEYWORDS

of a man page, so that the pages never keep a list of their own
(`tools/mkman` writes them; a test fails when a page is out of date).

What it trusts: keywords.py's and rules.py's declarations.

What it must never do: touch anything outside the markers.
"""

from __future__ import annotations

import re
import textwrap

from smapd.table import keywords

_BEGIN = re.compile(r'^\.\\" BEGIN KEYWORDS (\S+)$')
_END = '.\\" END KEYWORDS'


def _text(s: str) -> str:
    """Plain text made safe for an mdoc text line."""
    s = s.replace("\\", "\\e").replace("\u2026", "...").replace("--", "\\-\\-")
    s = s.encode("ascii", "replace").decode("ascii")
    return "\\&" + s if s[:1] in (".", "'") else s


def _para(s: str) -> list:
    """Text lines of at most 78 columns (mandoc's style check)."""
    return [_text(line) for line in textwrap.wrap(s, 76, break_long_words=False, break_on_hyphens=False)]


def render(program: str) -> list:
    lines = [".Bl -tag -width Ds"]
    for kw in keywords.keywords_for(program):
        name = f"permit-{kw.name} | deny-{kw.name}" if kw.flagged else kw.name
        parts = name.split(" | ")
        head = " | ".join(f"Ic {p}" for p in parts)
        lines.append(f".It {head} Ar {_text(kw.type.metavar)}")
        doc = kw.doc[0].upper() + kw.doc[1:]
        lines.extend(_para(doc + "."))
        if kw.multi:
            lines.append("The keyword may be repeated; its lines are used in file order.")
        if kw.compat:
            lines.extend(_para(f"Accepted for compatibility only: {kw.compat}."))
        default = kw.default_text()
        if kw.default_doc:
            lines.extend(_para(f"Default: {default}."))
        elif default:
            lines.append("Default:")
            lines.append(f".Ql {_text(default)} .")
    lines.append(".El")
    return lines


def render_rules() -> list:
    from smapd.table.rules import RULES
    lines = [".Bl -tag -width Ds"]
    for rule in RULES:
        lines.append(f".It {_text(', '.join(rule.programs))}: Sy {rule.severity}")
        lines.extend(_para(rule.doc))
    lines.append(".El")
    return lines


def update(text: str) -> str:
    """The page with every marked keyword list rendered anew."""
    out, skipping = [], False
    for line in text.split("\n"):
        if skipping:
            if line == _END:
                out.append(line)
                skipping = False
            continue
        out.append(line)
        m = _BEGIN.match(line)
        if m:
            if m.group(1) == "rules":
                out.extend(render_rules())
            elif m.group(1) not in keywords.PROGRAMS:
                raise ValueError(f"no program {m.group(1)!r} in a KEYWORDS marker")
            else:
                out.extend(render(m.group(1)))
            skipping = True
    if skipping:
        raise ValueError("a BEGIN KEYWORDS marker without its END")
    return "\n".join(out)
