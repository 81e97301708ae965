"""smapctl stats: what the running programs of the suite are doing.

What it does: for smap -daemon and ssl-gw -d, prints the scoreboard of
their master (prefork/scoreboard.py: its children, their state, the
client each serves); for smapd, its status (handoff/status.py: its
delivery children and the file each is on, counters of the hand-offs
since its start, the last hand-off errors, the drain rate), which smapd
keeps in its spool, and the queue's figures from this command's own
listing of the spool, hold/ and bad/ (names and their times only: no
message is read).  As text, as one JSON document (`--json`), or in the
Prometheus text exposition format (`--prometheus`, for node_exporter's
textfile collector: no port to listen on), where every counter is the
one the scoreboard or the status holds, and a program not running is
`smapd_suite_up 0`.

What it trusts: the table, for where the files are.  Nothing in a
scoreboard or a status file: both are checked as they are read
(scoreboard.py, status.py), text from them is escaped before it reaches
a terminal, and a pid they name is looked at, never signalled.

What it must never do: change a file, talk to a running program, or
read a message.
"""

from __future__ import annotations

import json
import os
import sys
import time

from smapd import spool
from smapd.exits import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from smapd.log import sanitize
from smapd.prefork.scoreboard import BUSY, FREE, IDLE, STARTING, STATE_NAMES, STOPPING, duration
from smapd.table import keywords
from smapd.table.programs import table_path

#: The start of every metric's name: the suite's, labels telling the programs apart.
PREFIX = "smapd_suite_"


def add_parsers(sub) -> None:
    """smapctl's stats command."""
    st = sub.add_parser("stats", help="what a running smap -daemon, ssl-gw -d or smapd is doing",
                        description="Print the scoreboard of a running master (smap -daemon, ssl-gw -d): its "
                                    "children, their state, the client each serves and the SMTP stage it is at; "
                                    "or, for smapd, its status: its deliveries, what it has handed off, "
                                    "deferred and moved to bad/, its last errors, its drain rate, and the "
                                    "queue.")
    st.add_argument("--config", "-c", metavar="FILE", help="the table (default: $NETPERM_TABLE, else "
                                                              "/usr/local/etc/netperm-table)")
    st.add_argument("--scoreboard", "-f", metavar="FILE", help="the scoreboard file of smap or ssl-gw (default: "
                                                                  "the table's scoreboard for NAME)")
    form = st.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON document on stdout")
    form.add_argument("--prometheus", action="store_true",
                      help="the Prometheus text exposition format, for node_exporter's textfile collector "
                           "(default NAMEs: every name of the table a program reads, and each program's own)")
    st.add_argument("names", nargs="*", metavar="NAME[=PROGRAM]",
                    help="the name the program reads the table under (default: smap); smapd, smmapd... "
                         "show smapd's status; PROGRAM (smap, smapd, ssl-gw) when the name does not tell")
    st.set_defaults(func=cmd_stats)


# ------------------------------------------------------------------ which program

class Refused(Exception):
    """The command cannot do what it was asked: (text, exit status)."""


def program_of(spec: str):
    """(name, program) of `NAME[=PROGRAM]`: the program the name is
    installed as (check.role_of: smmapd is smapd), else, as before there
    was smapd's status, ssl-gw for a name that starts with ssl, else smap."""
    from smapd.admin.check import role_of
    name, _, program = spec.partition("=")
    if program and program not in keywords.PROGRAMS:
        raise Refused(f"{spec}: {program!r} is not a program of the suite ({', '.join(keywords.PROGRAMS)})",
                      EXIT_CONFIG)
    if not program:
        program = role_of(name) or (keywords.SSLGW if name.replace("_", "-").startswith("ssl") else keywords.SMAP)
    return name, program


def table_names(path: str):
    """[(name, program)] for --prometheus without NAME: every name of the
    table a program reads, and each program the table names under no name
    of its own (it reads the '*' lines)."""
    from smapd.admin.check import role_of
    from smapd.table.netperm import Table
    found = [(n, role_of(n)) for n in Table.read(path).program_names()]
    found = [(n, p) for n, p in found if p]
    return found + [(p, p) for p in keywords.PROGRAMS if not any(q == p for _, q in found)]


def _load(args, program: str, name: str):
    """The program's settings: only where its files are is wanted, so the
    rules between keywords (for the program's start) are not applied."""
    from smapd.table.netperm import Table
    return keywords.load_or_die(Table.read(table_path(args.config)), program, (name,), rules=False).settings


# ------------------------------------------------------------------ processes

def not_running(pid: int, program: str = None):
    """Why `pid` is not a running `program` (None: it is).  Looked at only:
    a pid read from a file that a jailed user may have planted."""
    if not isinstance(pid, int) or pid < 1:
        return f"pid {pid} names no process"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"its pid {pid} is dead"
    except PermissionError:
        pass
    if program:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read(4096).replace(b"\0", b" ").decode("utf-8", "replace").split()[:2]
        except OSError:
            return None   # no /proc (a BSD): the pid's life alone tells
        # Its process title (`smapd: ...`), or the interpreter's command
        # line before the first title (`python3 /usr/sbin/smapd`).
        if not any(os.path.basename(w).rstrip(":") == program for w in words):
            return f"its pid {pid} is another program's now"
    return None


# ------------------------------------------------------------------ smap and ssl-gw

def open_board(args, name: str, program: str):
    """(path, Scoreboard or None, why not)."""
    from smapd.prefork.scoreboard import Scoreboard
    path = args.scoreboard or _load(args, program, name)["scoreboard"]
    try:
        return path, Scoreboard.open_readonly(path), None
    except FileNotFoundError:
        how = "-d" if program == keywords.SSLGW else "-daemon"
        return path, None, f"no scoreboard at {path}: is {name} {how} running?"
    except (OSError, ValueError) as e:
        return path, None, f"{path}: {getattr(e, 'strerror', None) or e}"


def board_document(name: str, program: str, path: str, board) -> dict:
    """The scoreboard as --json has it: the figures of format_stats, in numbers."""
    h = board.header()
    live = [s for s in (board.slot(i) for i in range(board.slots)) if s.state != FREE]
    return {"program": program, "name": name, "scoreboard": path, "running": not_running(h["master"]) is None,
            "master": {"pid": h["master"], "started": h["started"], "generation": h["generation"],
                       "stress": h["stress"]},
            "slots": h["slots"],
            "children": {STATE_NAMES[st]: sum(1 for s in live if s.state == st)
                         for st in (STARTING, IDLE, BUSY, STOPPING)},
            "connections_served": h["retired"] + sum(s.served for s in live),
            "pool": [{"slot": s.index, "pid": s.pid, "state": STATE_NAMES.get(s.state, "?"), "since": s.since,
                      "served": s.served, "generation": s.generation,
                      "client": s.address if s.state in (BUSY, STOPPING) else None,
                      "stage": (s.stage or None) if s.state in (BUSY, STOPPING) else None} for s in live]}


# ------------------------------------------------------------------ smapd

def queue_figures(settings) -> dict:
    """The spool, hold/ and bad/ as listed now: messages, the arrival of
    the oldest (its queue id says when), and, in the spool, the deferred
    ones (their next attempt, the mtime, is ahead)."""
    from smapd.admin.queue import directories
    now = time.time()
    out = {}
    for place, directory in directories(settings).items():
        entry = out[place] = {"directory": directory, "messages": None, "oldest": None, "deferred": None,
                              "error": None}
        if place != "spool" and os.path.islink(directory):
            entry["error"] = "a symbolic link (never followed)"
            continue
        try:
            names = spool.list_spool(directory)
        except OSError as e:
            entry["error"] = e.strerror
            continue
        entry["messages"] = len(names)
        entry["oldest"] = next((t for t in (spool.queue_id_time(n[len(spool.READY_PREFIX):]) for n in names)
                                if t is not None), None)
        if place == "spool":
            entry["deferred"] = sum(1 for n in names if _mtime(os.path.join(directory, n)) > now)
    return out


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


def smapd_document(args, name: str) -> dict:
    """smapd's status and the queue; `running` False and `reason` saying
    why when its status is missing, unreadable, or its pid is not smapd."""
    from smapd.handoff import status
    settings = _load(args, keywords.SMAPD, name)
    path = os.path.join(settings["directory"], spool.STATUS)
    doc, reason = None, None
    try:
        doc = status.read(path)
        dead = not_running(doc["pid"], doc["program"])
        if dead:
            reason = f"{path}: {dead}: smapd is not running (it was stopped without removing its status)"
    except FileNotFoundError:
        reason = f"no status file {path}: smapd is not running"
    except (status.Unreadable, OSError) as e:
        reason = f"{path}: {getattr(e, 'strerror', None) or e}: not a status of a running smapd"
    return {"program": keywords.SMAPD, "name": name, "status_file": path, "running": reason is None,
            "reason": reason, "status": doc, "queue": queue_figures(settings)}


def _queue_line(q: dict, now: float) -> str:
    def place(entry, what):
        if entry["messages"] is None:
            return f"{what}: {entry['error']}"
        oldest = f"oldest {duration(now - entry['oldest'])}" if entry["oldest"] is not None else ""
        deferred = f"{entry['deferred']} deferred" if entry["deferred"] else ""
        more = ", ".join(x for x in (oldest, deferred) if x)
        return f"{entry['messages']} {what}" + (f" ({more})" if more else "")
    return (f"queue: {place(q['spool'], 'in the spool')}, {place(q['hold'], 'held')}, "
            f"{place(q['bad'], 'in bad/')}")


def format_smapd(doc: dict, now: float = None) -> str:
    """The text of `smapctl stats smapd`."""
    now = time.time() if now is None else now
    s, lines = doc["status"], []
    if doc["running"]:
        n = len(s["deliveries"])
        c = s["counters"]
        lines.append(f"{sanitize(s['program'])} pid {s['pid']}{' (stopping)' if s['stopping'] else ''}, "
                     f"up {duration(now - s['started'])}, {sanitize(s['handoff'])}: "
                     f"{n} of {s['maxchildren']} deliveries running")
        lines.append(f"since the start: {c['handed_off']} handed off, {c['deferred']} deferred, {c['bad']} moved "
                     f"to bad/; {s['drain']['per_minute']:g} a minute over the last "
                     f"{duration(s['drain']['window'])}")
    lines.append(_queue_line(doc["queue"], now))
    if doc["running"] and s["deliveries"]:
        lines.append(f"{'PID':>7} {'ID':<22} {'FOR':>8}  FILE")
        for d in s["deliveries"]:
            lines.append(f"{d['pid']:>7} {sanitize(d['id'] or '-'):<22} {duration(now - d['since']):>8}  "
                         f"{max(d['file'], 1)} of {d['files']}")
    if doc["running"] and s["errors"]:
        lines.append("last errors, the newest last:")
        for e in s["errors"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            lines.append(f"{when} {sanitize(e['id'] or '-')} {sanitize(e['outcome'])}: {sanitize(e['error'])}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ Prometheus

#: Every metric family: (type, help).  Labels: program and name, and the
#: one named in the help.
METRICS = {
    "up": ("gauge", "1 when the program runs (the scoreboard's master, smapd's status's pid), else 0."),
    "start_time_seconds": ("gauge", "When the master or smapd started, in seconds since the epoch."),
    "generation": ("gauge", "The master's generation: one more at each reload (HUP, USR1)."),
    "slots": ("gauge", "The scoreboard's slots: the most children the master may have."),
    "children": ("gauge", "The master's children by state (label state)."),
    "stress": ("gauge", "1 while the master's pool is under stress (short time limits)."),
    "connections_served_total": ("counter", "Connections served since the master started."),
    "deliveries": ("gauge", "smapd's delivery children running."),
    "maxchildren": ("gauge", "The delivery children smapd may run at once."),
    "messages_total": ("counter", "Spool files smapd has done with since it started, by outcome (label "
                                  "outcome: handed_off, deferred, bad)."),
    "drain_per_minute": ("gauge", "Messages smapd handed off a minute, over the last five minutes."),
    "status_time_seconds": ("gauge", "When smapd last wrote its status, in seconds since the epoch."),
    "queue_messages": ("gauge", "Messages in smapd's spool, hold/ and bad/ (label queue)."),
    "queue_deferred_messages": ("gauge", "Messages of the spool whose next attempt is ahead."),
    "queue_oldest_timestamp_seconds": ("gauge", "The arrival of the oldest message of each queue (label queue), "
                                                "in seconds since the epoch."),
}


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """Samples gathered by family, written with HELP and TYPE once each."""

    def __init__(self):
        self.samples = {name: [] for name in METRICS}

    def add(self, metric: str, value, **labels) -> None:
        if value is None:
            return
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.samples[metric].append(f"{PREFIX}{metric}{{{text}}} {float(value)!r}"
                                    if isinstance(value, float) else f"{PREFIX}{metric}{{{text}}} {int(value)}")

    def text(self) -> str:
        out = []
        for metric, samples in self.samples.items():
            if samples:
                kind, helptext = METRICS[metric]
                out += [f"# HELP {PREFIX}{metric} {helptext}", f"# TYPE {PREFIX}{metric} {kind}", *samples]
        return "".join(line + "\n" for line in out)


def board_metrics(m: Exposition, doc: dict) -> None:
    labels = {"program": doc["program"], "name": doc["name"]}
    m.add("up", doc["running"], **labels)
    if not doc["running"]:
        return
    m.add("start_time_seconds", float(doc["master"]["started"]), **labels)
    m.add("generation", doc["master"]["generation"], **labels)
    m.add("slots", doc["slots"], **labels)
    for state, n in doc["children"].items():
        m.add("children", n, **labels, state=state)
    m.add("stress", doc["master"]["stress"], **labels)
    m.add("connections_served_total", doc["connections_served"], **labels)


def smapd_metrics(m: Exposition, doc: dict) -> None:
    labels = {"program": doc["program"], "name": doc["name"]}
    m.add("up", doc["running"], **labels)
    s = doc["status"]
    if doc["running"]:
        m.add("start_time_seconds", float(s["started"]), **labels)
        m.add("deliveries", len(s["deliveries"]), **labels)
        m.add("maxchildren", s["maxchildren"], **labels)
        for outcome, n in s["counters"].items():
            m.add("messages_total", n, **labels, outcome=outcome)
        m.add("drain_per_minute", float(s["drain"]["per_minute"]), **labels)
        m.add("status_time_seconds", float(s["written"]), **labels)
    # The queue, smapd running or not: a stopped smapd's growing spool is
    # what an alert wants to see.
    for place, entry in doc["queue"].items():
        m.add("queue_messages", entry["messages"], **labels, queue=place)
        m.add("queue_deferred_messages", entry["deferred"], **labels)
        if entry["oldest"] is not None:
            m.add("queue_oldest_timestamp_seconds", float(entry["oldest"]), **labels, queue=place)


# ------------------------------------------------------------------ the command

def cmd_stats(args) -> int:
    from smapd.table.netperm import ConfigError
    try:
        if args.prometheus:
            specs = args.names or [f"{n}={p}" for n, p in table_names(table_path(args.config))]
            targets = [program_of(spec) for spec in specs]
        else:
            if len(args.names) > 1:
                raise Refused("stats: one NAME at a time (several with --prometheus)", EXIT_CONFIG)
            targets = [program_of(args.names[0] if args.names else keywords.SMAP)]
        if args.scoreboard and any(p == keywords.SMAPD for _, p in targets):
            raise Refused("stats: --scoreboard is for smap and ssl-gw: smapd keeps its status in its spool "
                          f"({spool.STATUS})", EXIT_CONFIG)
        if args.scoreboard and len(targets) > 1:
            raise Refused("stats: --scoreboard is one program's: give one NAME", EXIT_CONFIG)
        if args.prometheus:
            return _prometheus(args, targets)
        [(name, program)] = targets
        if program == keywords.SMAPD:
            return _smapd(args, name)
        return _board(args, name, program)
    except Refused as e:
        text, status = e.args
        print(f"smapctl: {text}", file=sys.stderr)
        return status
    except ConfigError as e:
        for d in e.diagnostics:
            print(f"smapctl: {d}", file=sys.stderr)
        return EXIT_CONFIG


def _board(args, name: str, program: str) -> int:
    from smapd.prefork.scoreboard import format_stats
    path, board, why = open_board(args, name, program)
    if board is None:
        print(f"smapctl: {why}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.json:
        json.dump(board_document(name, program, path, board), sys.stdout, indent=1)
        print()
    else:
        sys.stdout.write(format_stats(board, alive=lambda pid: not_running(pid) is None))
    return EXIT_OK


def _smapd(args, name: str) -> int:
    doc = smapd_document(args, name)
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        sys.stdout.write(format_smapd(doc))
    if not doc["running"]:
        print(f"smapctl: {doc['reason']}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def _prometheus(args, targets) -> int:
    """Every target's metrics; a program that is not running is `up 0`,
    not an error (the collector's file must still be written)."""
    m = Exposition()
    for name, program in targets:
        if program == keywords.SMAPD:
            smapd_metrics(m, smapd_document(args, name))
            continue
        path, board, why = open_board(args, name, program)
        if board is None:
            m.add("up", 0, program=program, name=name)
            continue
        board_metrics(m, board_document(name, program, path, board))
    sys.stdout.write(m.text())
    return EXIT_OK
