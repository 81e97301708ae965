"""The scoreboard: one slot per child of a prefork master, in shared memory.

What it does: a file mapped MAP_SHARED by the master before its first
fork (so every child writes into the same pages, even after chroot and
the privilege drop, without reopening anything), laid out as a header,
a byte array of slot states (counted at C speed: `idle()` is one
`bytes.count`), and fixed-size slot records: pid, generation, state
change time, connections served, the client's address and the SMTP
stage, and the child's last AUTH failures by client address (so that
smap counts a password guesser's failures across sessions and children:
each child writes only its own slot, every child reads them all).
`smapctl stats` maps the same file read-only and prints it.

What it trusts: nothing a child writes.  A child has talked to the
Internet; the master uses the states only to count idle children, keeps
its own table of which pids it forked, and never signals a pid read from
here.

What it must never do: block, allocate per connection, or let a record
grow past its slot (text is cut to the field's size).
"""

from __future__ import annotations

import ctypes
import ipaddress
import mmap
import os
import struct
import time
from dataclasses import dataclass

MAGIC = b"SMAPSB02"
# magic, slots, master pid, generation, started, retired connections,
# stress (the master's verdict: most children busy, short limits apply)
_HEADER = struct.Struct("<8sIiIdQI")
HEADER_SIZE = 64
# pid, generation, since, started, served, address, stage
_SLOT = struct.Struct("<iIddI46s16s")
# After it, FAIL_RECORDS of: client address, AUTH failures, the last one's time.
_FAIL = struct.Struct("<46sId")
FAIL_OFFSET, FAIL_SIZE, FAIL_RECORDS = 96, 64, 4
SLOT_SIZE = FAIL_OFFSET + FAIL_SIZE * FAIL_RECORDS
assert _HEADER.size <= HEADER_SIZE and _SLOT.size <= FAIL_OFFSET and _FAIL.size <= FAIL_SIZE

_STRESS_AT = _HEADER.size - 4      # the stress word's first octet (little-endian: its value, 0 or 1)

FREE, STARTING, IDLE, BUSY, STOPPING = b".", b"S", b"_", b"W", b"G"
STATE_NAMES = {FREE: "free", STARTING: "starting", IDLE: "idle", BUSY: "busy", STOPPING: "stopping"}


@dataclass
class Slot:
    index: int
    state: bytes
    pid: int
    generation: int
    since: float
    started: float
    served: int
    address: str
    stage: str


def _map_shared(fd: int, size: int):
    """A writable MAP_SHARED mapping of `fd` that keeps no descriptor.
    The mmap module of this Python keeps a duplicate of the descriptor
    for the mapping's life: a jailed child would then hold a writable
    file outside its jail, and could truncate it under the master (who
    would die of SIGBUS).  libc's mmap keeps nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long)
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return (ctypes.c_char * size).from_address(addr)


class Scoreboard:
    """`Scoreboard.create(path, slots)` in the master; `open_readonly(path)`
    in smapctl.  Slot numbers are 0 .. slots-1."""

    def __init__(self, mm: mmap.mmap, slots: int, path: str = None):
        self.mm = mm
        self.slots = slots
        self.path = path
        self._view = None
        self._states = HEADER_SIZE
        self._records = HEADER_SIZE + ((slots + 63) // 64) * 64

    @staticmethod
    def size_for(slots: int) -> int:
        return HEADER_SIZE + ((slots + 63) // 64) * 64 + slots * SLOT_SIZE

    @classmethod
    def create(cls, path: str, slots: int, master_pid: int) -> "Scoreboard":
        """A new, zeroed scoreboard file (root's, mode 0640: it names the
        clients being served), never through a symlink."""
        size = cls.size_for(slots)
        # A new file, not the old one truncated: children of a master that
        # was killed may still have the old one mapped and write into it.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.ftruncate(fd, size)
            mm = _map_shared(fd, size)
        finally:
            os.close(fd)  # the mapping stays, and no descriptor goes with it into the children
        board = cls(mm, slots, path)
        mm[board._states:board._states + slots] = FREE * slots
        board.set_header(master_pid, 0, 0)
        return board

    @classmethod
    def open_readonly(cls, path: str) -> "Scoreboard":
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ValueError(f"{path} is not a scoreboard (too short)")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, slots = _HEADER.unpack_from(mm, 0)[:2]
        if magic != MAGIC or size < cls.size_for(slots):
            raise ValueError(f"{path} is not a scoreboard of this version")
        return cls(mm, slots, path)

    def _put(self, offset: int, layout, *values) -> None:
        """Every write into the shared pages: packed aside, then copied in.
        Never struct's pack_into on the mapping: it clears the bytes before
        it fills them, and a reader in another process (smapctl stats, a
        child reading the stress flag) would see the zeros: a header
        without its magic, a slot without its address."""
        data = layout.pack(*values) if isinstance(layout, struct.Struct) else struct.pack(layout, *values)
        if self._view is None:  # made at the first write: smapctl's read-only map never has one
            self._view = memoryview(self.mm).cast("B")
        self._view[offset:offset + len(data)] = data   # one memcpy

    # ------------------------------------------------------------ header

    def set_header(self, master_pid: int, generation: int, retired: int, started: float = None,
                   stress: bool = False) -> None:
        if started is None:
            started = self.header()["started"] if self.mm[:8] == MAGIC else time.time()
        self._put(0, _HEADER, MAGIC, self.slots, master_pid, generation, started, retired, int(stress))

    def header(self) -> dict:
        magic, slots, pid, generation, started, retired, stress = _HEADER.unpack_from(self.mm, 0)
        return {"slots": slots, "master": pid, "generation": generation, "started": started, "retired": retired,
                "stress": bool(stress)}

    def stress(self) -> bool:
        """Is the pool under stress (the master says so)?  One load."""
        return self.mm[_STRESS_AT:_STRESS_AT + 1] != b"\0"

    # ------------------------------------------------------------- slots

    def state(self, i: int) -> bytes:
        return self.mm[self._states + i:self._states + i + 1]

    def states(self) -> bytes:
        return self.mm[self._states:self._states + self.slots]

    def count(self, state: bytes) -> int:
        return self.states().count(state)

    def claim(self, i: int, pid: int, generation: int) -> None:
        """The master, at fork: the slot belongs to `pid` now."""
        now = time.time()
        self._put(self._records + i * SLOT_SIZE, _SLOT, pid, generation, now, now, 0, b"", b"")
        self.mm[self._states + i:self._states + i + 1] = STARTING

    def set_pid(self, i: int, pid: int) -> None:
        self._put(self._records + i * SLOT_SIZE, "<i", pid)

    def release(self, i: int) -> int:
        """The master, after reaping: the slot is free; returns what the
        child served (the master adds it to the retired count)."""
        served = _SLOT.unpack_from(self.mm, self._records + i * SLOT_SIZE)[4]
        self.mm[self._states + i:self._states + i + 1] = FREE
        return served

    def set_state(self, i: int, state: bytes, address: str = None, stage: str = "") -> None:
        """A child: its state; `address` when it starts a session.  The
        state byte is written last, so a reader counting states never sees
        a busy slot without its address."""
        off = self._records + i * SLOT_SIZE
        if address is not None:
            self._put(off + 8, "<d", time.time())
            self._put(off + 28, "46s16s", address.encode("ascii", "replace")[:45],
                             stage.encode("ascii", "replace")[:15])
        elif state != BUSY:
            self._put(off + 8, "<d", time.time())
        self.mm[self._states + i:self._states + i + 1] = state

    def set_stage(self, i: int, stage: str) -> None:
        self._put(self._records + i * SLOT_SIZE + 74, "16s", stage.encode("ascii", "replace")[:15])

    def served_one(self, i: int) -> None:
        off = self._records + i * SLOT_SIZE + 24
        (n,) = struct.unpack_from("<I", self.mm, off)
        self._put(off, "<I", n + 1)

    def address(self, i: int) -> str:
        raw = struct.unpack_from("46s", self.mm, self._records + i * SLOT_SIZE + 28)[0]
        return raw.rstrip(b"\0").decode("ascii", "replace")

    def _in_session(self):
        """The client address (bytes) of every slot in a session: busy, or
        stopping (a child of an older generation, after a reload, that
        finishes its session: still a session its client holds)."""
        states = self.states()
        for state in (BUSY, STOPPING):
            i = states.find(state)
            while i >= 0:
                yield struct.unpack_from("46s", self.mm, self._records + i * SLOT_SIZE + 28)[0].rstrip(b"\0")
                i = states.find(state, i + 1)

    def sessions_from(self, address: str) -> int:
        """Slots in a session with a client at `address`, the caller's own included."""
        want = address.encode("ascii", "replace")[:45]
        return sum(1 for a in self._in_session() if a == want)

    def sessions_from_net(self, address: str) -> int:
        """Slots in a session with a client of `address`'s network (its
        /24 for IPv4, /64 for IPv6), the caller's own included."""
        want = network_of(address)
        return sum(1 for a in self._in_session() if network_of(a.decode("ascii", "replace")) == want)

    def auth_failed(self, i: int, address: str, window: float, now: float = None) -> None:
        """A child: one more AUTH failure from `address`, in its own slot
        (one writer per record: no lock).  The address's record if it has
        one, else the oldest of the slot's records is taken over."""
        now = time.time() if now is None else now
        want = address.encode("ascii", "replace")[:45]
        base = self._records + i * SLOT_SIZE + FAIL_OFFSET
        oldest, oldest_at = 0, None
        for r in range(FAIL_RECORDS):
            addr, n, last = _FAIL.unpack_from(self.mm, base + r * FAIL_SIZE)
            if addr.rstrip(b"\0") == want:
                self._put(base + r * FAIL_SIZE, _FAIL, want, (n if now - last <= window else 0) + 1, now)
                return
            if oldest_at is None or last < oldest_at:
                oldest, oldest_at = r, last
        self._put(base + oldest * FAIL_SIZE, _FAIL, want, 1, now)

    def auth_failures(self, address: str, window: float, now: float = None) -> int:
        """AUTH failures from `address` over every slot, counting a record
        whose last failure is at most `window` seconds old.  A record
        outlives its child: the master's claim of a slot keeps it."""
        now = time.time() if now is None else now
        want = address.encode("ascii", "replace")[:45]
        total = 0
        for i in range(self.slots):
            base = self._records + i * SLOT_SIZE + FAIL_OFFSET
            for r in range(FAIL_RECORDS):
                addr, n, last = _FAIL.unpack_from(self.mm, base + r * FAIL_SIZE)
                if n and now - last <= window and addr.rstrip(b"\0") == want:
                    total += n
        return total

    def slot(self, i: int) -> Slot:
        pid, gen, since, started, served, addr, stage = _SLOT.unpack_from(self.mm, self._records + i * SLOT_SIZE)
        return Slot(i, self.state(i), pid, gen, since, started, served,
                    addr.rstrip(b"\0").decode("ascii", "replace"), stage.rstrip(b"\0").decode("ascii", "replace"))

    def close(self) -> None:
        close = getattr(self.mm, "close", None)  # the master's mapping lives as long as it does
        if close:
            try:
                close()
            except (BufferError, ValueError):
                pass


def network_of(address: str) -> str:
    """The network maxpernet counts by: an IPv4 address's /24, an IPv6
    address's /64, as text (addresses in slots are written normalised)."""
    if ":" not in address:
        return address.rpartition(".")[0]
    try:
        return ipaddress.IPv6Address(address).exploded[:19]
    except ValueError:
        return address


def format_stats(board: Scoreboard, now: float = None, alive=None) -> str:
    """The text of `smapctl stats`: a summary line and one line per child.
    `alive(pid)` tells whether the master still runs (a stale file says so)."""
    now = time.time() if now is None else now
    h = board.header()
    slots = [board.slot(i) for i in range(board.slots)]
    live = [s for s in slots if s.state != FREE]
    by = {st: sum(1 for s in live if s.state == st) for st in (STARTING, IDLE, BUSY, STOPPING)}
    served = h["retired"] + sum(s.served for s in live)
    lines = []
    running = alive(h["master"]) if alive else True
    lines.append(f"master pid {h['master']}{'' if running else ' (NOT RUNNING: stale scoreboard)'}, "
                 f"up {duration(now - h['started'])}, generation {h['generation']}, "
                 f"{len(live)} children of {h['slots']}: {by[BUSY]} busy, {by[IDLE]} idle, "
                 f"{by[STARTING]} starting, {by[STOPPING]} stopping; {served} connections served"
                 + ("; UNDER STRESS (short time limits)" if h["stress"] else ""))
    lines.append(f"{'SLOT':>4} {'PID':>7} {'STATE':<8} {'FOR':>8} {'SERVED':>6}  CLIENT")
    for s in live:
        client = f"{s.address} {s.stage}".strip() if s.state in (BUSY, STOPPING) else ""
        gen = "" if s.generation == h["generation"] else f" (generation {s.generation})"
        lines.append(f"{s.index:>4} {s.pid:>7} {STATE_NAMES.get(s.state, '?'):<8} "
                     f"{duration(now - s.since):>8} {s.served:>6}  {client}{gen}".rstrip())
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m`, `4d01h`: an age or an uptime, as smapctl
    stats and smapd's status print them (one format for all)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
