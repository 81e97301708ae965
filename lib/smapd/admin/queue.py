"""`smapctl queue` and `show`: the operator's view of the spool.

What it does: finds the committed messages of smapd's spool, of its
holddir (`smapctl hold`) and of its baddir, and says what each one is:
id, where, age, size, sender, recipients (pending or sent), next
attempt, last error (`queue`, as text or `--json`); the age of the
pending mail by recipient domain (`queue --shape`, as Postfix's qshape);
one message's envelope and the message exactly as queued (`show`, as
`postcat -q`).  surgery.py changes what this module finds.

What it trusts: smapd's table for where the directories are; nothing in
the spool files (spool.read_envelope checks them).

What it must never do: change a file; follow a symbolic link (root runs
it, and whoever runs as smap's user can plant one in the spool); block
on a FIFO; read a message's body into memory.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass

from smapd import spool
from smapd.spool import READY_PREFIX, queue_id_time
from smapd.table import keywords
from smapd.table.netperm import Table

#: Where a message may be, in the order they are searched and listed,
#: with the keyword that names each directory.
PLACES = (("spool", "directory"), ("hold", "holddir"), ("bad", "baddir"))


def settings(path: str, name: str):
    return keywords.load_or_die(Table.read(path), keywords.SMAPD, (name,)).settings


def directories(s) -> dict:
    return {place: s[kw] for place, kw in PLACES}


@dataclass
class Message:
    """One committed file as found: `env` is None when it cannot be read,
    and `problem` says why."""
    id: str
    place: str          # spool, hold or bad
    path: str
    st: os.stat_result
    env: object
    problem: str

    def arrival(self) -> float:
        return queue_id_time(self.id) or self.st.st_ctime

    def next_attempt(self):
        """When smapd tries it next (the file's mtime), None when it never
        will as it is (held, or in bad/)."""
        return self.st.st_mtime if self.place == "spool" else None


def bare_id(text: str) -> str:
    """A queue id as the operator may type it: with or without `sma`."""
    return text[len(READY_PREFIX):] if text.startswith(READY_PREFIX) else text


def read(place: str, path: str):
    """The Message at `path`, None when there is none (gone meanwhile)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise spool.Corrupt(f"not a regular file (mode {st.st_mode:o})")
        # Never through a symlink, never blocking on a FIFO: root runs this.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            env, problem = spool.read_envelope(f), None
    except FileNotFoundError:
        return None
    except (OSError, spool.Corrupt) as e:
        env, problem = None, str(e)
    return Message(bare_id(os.path.basename(path)), place, path, st, env, problem)


def in_place(place: str, directory: str):
    """The messages of one directory, oldest first.  A symbolic link in
    the place of bad/ or hold/ is not followed (smapd refuses it too)."""
    if place != "spool" and os.path.islink(directory):
        return
    for name in spool.list_spool(directory):
        m = read(place, os.path.join(directory, name))
        if m is not None:
            yield m


def find(s, qid: str):
    """The message with this id, wherever it is, or None."""
    name = READY_PREFIX + bare_id(qid)
    if "/" in name or name in (".", ".."):
        return None
    for place, directory in directories(s).items():
        if place != "spool" and os.path.islink(directory):
            continue
        m = read(place, os.path.join(directory, name))
        if m is not None:
            return m
    return None


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def as_json(m: Message, now: float) -> dict:
    """One message for --json: the same facts as the text, in numbers
    (seconds since the epoch, sizes in octets)."""
    out = {"id": m.id, "queue": m.place, "path": m.path, "size": m.st.st_size, "arrival": round(m.arrival(), 3),
           "age": int(now - m.arrival()), "next_attempt": m.next_attempt(), "last_error": spool.get_error(m.path)
           or None, "problem": m.problem}
    if m.env is not None:
        sent = set(m.env.sent)
        out.update(sender=m.env.sender, recipients=[{"address": r, "state": "sent" if r in sent else "pending"}
                                                    for r in m.env.recipients],
                   pending=len(m.env.pending), attributes=m.env.attributes)
    return out


def _when(m: Message, now: float) -> str:
    if m.place == "bad":
        return "never (bad)"
    if m.place == "hold":
        return "never (held)"
    return "now" if m.st.st_mtime <= now else f"in {age(m.st.st_mtime - now)}"


def list_queue(s, out, as_json_document: bool = False) -> int:
    now = time.time()
    if as_json_document:
        import json
        doc = {"queues": [], "messages": []}
        for place, directory in directories(s).items():
            rows = list(in_place(place, directory))
            doc["queues"].append({"queue": place, "directory": directory, "messages": len(rows),
                                  "followed": place == "spool" or not os.path.islink(directory)})
            doc["messages"] += [as_json(m, now) for m in rows]
        json.dump(doc, out, indent=1)
        out.write("\n")
        return 0
    for place, directory in directories(s).items():
        if place != "spool" and os.path.islink(directory):
            print(f"{place} {directory}: a symbolic link, not followed (smapd refuses it too)", file=out)
            continue
        if place == "hold" and not os.path.lexists(directory):
            continue  # never used: no line for it
        rows = list(in_place(place, directory))
        print(f"{place} {directory}: {len(rows)} message{'' if len(rows) == 1 else 's'}", file=out)
        for m in rows:
            if m.env is None:
                print(f"  {m.id}  {m.st.st_size}  {age(now - m.arrival())}  unreadable: {m.problem}", file=out)
                continue
            pending = m.env.pending
            print(f"  {m.id}  size={m.st.st_size}  age={age(now - m.arrival())}  next={_when(m, now)}  "
                  f"from=<{m.env.sender}>  rcpt={len(pending)}/{len(m.env.recipients)} pending", file=out)
            for r in pending[:10]:
                print(f"      to=<{r}>", file=out)
            if len(pending) > 10:
                print(f"      ... and {len(pending) - 10} more", file=out)
            error = spool.get_error(m.path)
            if error:
                print(f"      last error: {error}", file=out)
    return 0


# ------------------------------------------------------------ the shape

#: qshape's default buckets: the upper bound of each, in minutes.
SHAPE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


def shape(s, out, as_json_document: bool = False, place: str = "spool") -> int:
    """The messages of one queue by recipient domain and age, as qshape:
    a message counts once in each domain it still has a recipient for,
    and once in TOTAL."""
    now = time.time()
    rows, total = {}, [0] * (len(SHAPE_BUCKETS) + 1)
    for m in in_place(place, directories(s)[place]):
        minutes = (now - m.arrival()) / 60
        b = next((i for i, top in enumerate(SHAPE_BUCKETS) if minutes < top), len(SHAPE_BUCKETS))
        total[b] += 1
        domains = {"(unreadable)"} if m.env is None else \
            {r.rpartition("@")[2].lower() or "(no domain)" for r in m.env.pending}
        for d in domains:
            rows.setdefault(d, [0] * len(total))[b] += 1
    order = sorted(rows, key=lambda d: (-sum(rows[d]), d))
    if as_json_document:
        import json
        json.dump({"queue": place, "buckets": [f"<{b}m" for b in SHAPE_BUCKETS] + [f">={SHAPE_BUCKETS[-1]}m"],
                   "total": {"count": sum(total), "by_age": total},
                   "domains": [{"domain": d, "count": sum(rows[d]), "by_age": rows[d]} for d in order]}, out, indent=1)
        out.write("\n")
        return 0
    width = max([len("TOTAL")] + [len(d) for d in order])
    heads = ["T"] + [str(b) for b in SHAPE_BUCKETS] + [f"{SHAPE_BUCKETS[-1]}+"]
    cols = [max(5, len(h) + 1) for h in heads]
    print(" " * width + "".join(h.rjust(c) for h, c in zip(heads, cols)), file=out)
    for label, counts in [("TOTAL", total)] + [(d, rows[d]) for d in order]:
        print(label.rjust(width) + "".join(str(n).rjust(c) for n, c in zip([sum(counts)] + counts, cols)), file=out)
    return 0


# ------------------------------------------------------------ one message

def show(s, ids, out, err, message_only: bool = False, as_json_document: bool = False) -> int:
    """Each message's envelope, its state and the message exactly as
    queued (`--message-only`: the message alone, byte for byte)."""
    status, now, docs = 0, time.time(), []
    for qid in ids:
        m = find(s, qid)
        if m is None:
            print(f"smapctl: no message {bare_id(qid)} in the spool, hold or bad directories", file=err)
            status = 1
            continue
        if as_json_document:
            docs.append(as_json(m, now))
            continue
        if m.env is None:
            print(f"smapctl: {m.id} ({m.path}) cannot be read: {m.problem}", file=err)
            status = 1
            continue
        if not message_only:
            _describe(m, now, out)
        out.flush()
        _copy_message(m, getattr(out, "buffer", out))
    if as_json_document:
        import json
        json.dump(docs, out, indent=1)
        out.write("\n")
    return status


def _describe(m: Message, now: float, out) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(m.arrival()))
    lines = [f"*** ENVELOPE RECORDS {m.id} ***", f"queue: {m.place} {m.path}", f"size: {m.st.st_size}",
             f"arrival: {stamp} (age {age(now - m.arrival())})", f"next attempt: {_when(m, now)}",
             f"sender: <{m.env.sender}>"]
    lines += [f"attribute: {k}={v}" for k, v in m.env.attributes.items()]
    sent = set(m.env.sent)
    lines += [f"recipient: <{r}> ({'sent' if r in sent else 'pending'})" for r in m.env.recipients]
    error = spool.get_error(m.path)
    if error:
        lines.append(f"last error: {error}")
    lines.append(f"*** MESSAGE CONTENTS {m.id} ***")
    out.write("\n".join(lines) + "\n")


def _copy_message(m: Message, out) -> None:
    """The message as queued (after the envelope's BODY line), in chunks."""
    fd = os.open(m.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        f.seek(m.env.body_offset)
        while True:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            out.write(chunk)
    out.flush()

