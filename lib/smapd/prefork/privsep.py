"""Entering the jail: chroot, then the unprivileged user, verified.

What it does: resolves `userid`/`groupid` (names or numbers) while the
account database is still reachable, then `chroot(directory)`,
`chdir("/")`, empties the capability bounding set and the ambient set,
`setgroups([gid])`, `setgid(gid)`, `setuid(uid)`, sets no_new_privs
(prctl(2): no exec can give back a privilege, setuid or file
capabilities alike), and verifies the result: real and effective ids,
the group list, the bounding set, no_new_privs, and that `setuid(0)` now
fails.  smapd, which runs the MTA's sendmail (Postfix's postdrop is
setgid), is dropped to its ids without the two prctl(2) steps
(`confine=False`).  Any difference is a `PrivsepError`; the caller
exits with EXIT_BOOT so that a master can tell a child that failed to
boot from one that failed at work.

What it trusts: the operator's table (uid and gid 0 are refused unless
`allow_root` is forced).

What it must never do: leave a process half-dropped (a kept
supplementary group, a saved uid of 0, a cwd outside the jail), or use a
helper that skips setgroups (python-daemon's and gunicorn's do).
"""

from __future__ import annotations

import grp
import importlib
import os
import pwd
import time

#: Exit status of a process that could not enter its jail.
EXIT_BOOT = 3


class PrivsepError(Exception):
    pass


def resolve_id(value, kind: str) -> int:
    """A `user` or `group` id from a name or a number; PrivsepError names
    an unknown one."""
    if isinstance(value, int):
        return value
    try:
        return pwd.getpwnam(value).pw_uid if kind == "user" else grp.getgrnam(value).gr_gid
    except KeyError:
        raise PrivsepError(f"no such {kind} {value!r}") from None


def resolve_ids(userid, groupid):
    """(uid, gid) from names or numbers."""
    return resolve_id(userid, "user"), resolve_id(groupid, "group")


def pre_jail(*modules: str, dns: bool = True) -> None:
    """Load now, as root and before any chroot, what a jailed process
    cannot load later: the DNS record types (dnspython loads them at the
    first answer, from files the jail lacks; `dns=False` for a process
    that makes no look-up, which then does not pay for importing
    dnspython), the time zone (/etc/localtime), the idna codec, and the
    `modules` named (their code is not in the jail).  The one list of it
    for every program."""
    if dns:
        from smapd import dnsclient
        dnsclient.prepare_types()
    time.localtime()
    "x".encode("idna")
    for name in modules:
        importlib.import_module(name)


def jail_for(settings, allow_root: bool = False):
    """(directory, uid, gid) of the jail the settings name, when running as
    root (None otherwise: a test's unprivileged run).  PrivsepError for an
    unknown account or, unless forced, uid or gid 0."""
    if os.geteuid() != 0:
        return None
    uid, gid = resolve_ids(settings["userid"], settings["groupid"])
    if (uid == 0 or gid == 0) and not allow_root:
        raise PrivsepError(f"refusing to run children as uid {uid}, gid {gid}: root is what the jail is for "
                           "(--allow-root forces it)")
    return settings["directory"], uid, gid


# prctl(2) options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4

_libc = None


def prctl(option: int, arg: int = 0, what: str = "prctl") -> int:
    """prctl(2) through the C library already in the process (loaded at
    the first call: call it once before a chroot, the jail has no
    libraries); OSError names `what`."""
    global _libc
    if _libc is None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.restype = ctypes.c_int
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        _libc = (libc.prctl, ctypes.get_errno)
    call, get_errno = _libc
    r = call(option, arg, 0, 0, 0)
    if r < 0:
        e = get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return r


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def enter_jail(directory, uid: int, gid: int, allow_root: bool = False, confine: bool = True) -> None:
    """chroot to `directory` (None: no chroot, chdir only) and become
    uid/gid with no other group; with `confine`, also with an empty
    capability bounding set and no_new_privs.  Must be called as root."""
    if (uid == 0 or gid == 0) and not allow_root:
        raise PrivsepError(f"refusing to run as uid {uid}, gid {gid}: root is what the jail is for")
    try:
        last_cap = None
        if confine:
            last_cap = _last_cap()           # /proc and libc: not in the jail
            prctl(PR_GET_NO_NEW_PRIVS)
        if directory:
            os.chroot(directory)
        os.chdir("/")
        if confine:
            # While still root (dropping needs CAP_SETPCAP): no capability
            # can come back, not even through a setuid-root program.
            for cap in range(last_cap + 1):
                prctl(PR_CAPBSET_DROP, cap, "dropping the capability bounding set")
            try:
                prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
            except OSError:
                pass   # a kernel before 4.3 has no ambient set to clear
        os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)
        if confine:
            prctl(PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")
    except OSError as e:
        raise PrivsepError(f"cannot enter the jail {directory or '/'} as {uid}:{gid}: {e.strerror}") from None
    verify(uid, gid, last_cap)


def verify(uid: int, gid: int, last_cap: int = None) -> None:
    """The process is uid/gid with only gid as its group, and cannot get
    root back; with `last_cap` (the kernel's highest capability), its
    bounding set is empty and no_new_privs is set."""
    got = os.getresuid() + os.getresgid()  # real, effective and saved
    if got != (uid, uid, uid, gid, gid, gid):
        raise PrivsepError(f"ids are {got}, expected {(uid,) * 3 + (gid,) * 3}")
    if set(os.getgroups()) - {gid}:
        raise PrivsepError(f"supplementary groups {os.getgroups()} kept")
    if last_cap is not None:
        kept = [cap for cap in range(last_cap + 1) if prctl(PR_CAPBSET_READ, cap)]
        if kept:
            raise PrivsepError(f"capabilities {kept} kept in the bounding set")
        if prctl(PR_GET_NO_NEW_PRIVS) != 1:
            raise PrivsepError("no_new_privs is not set")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PrivsepError("setuid(0) succeeded after dropping privileges")
