"""The installed programs, the paths of the repository, and waiting for a condition."""

import os
import shutil
import socket
import subprocess
import time

#: The repository (tests/support/ is two levels below it).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The reference deployment, the project's own copy (tests/reference/README.md):
#: nothing outside the repository is read, as a user's clone has nothing beside it.
REFERENCE = os.path.join(ROOT, "tests", "reference")
REFERENCE_TABLE = os.path.join(REFERENCE, "netperm-table")


def command(name):
    """The installed command `name` (from .venv, as make test puts it on PATH)."""
    path = shutil.which(name) or os.path.join(ROOT, ".venv", "bin", name)
    assert os.access(path, os.X_OK), f"{name} is not installed: run the tests with 'make test'"
    return path


def run(name, *args, input=None, env=None, timeout=60):
    full_env = dict(os.environ)
    full_env.pop("NETPERM_TABLE", None)
    full_env.update(env or {})
    return subprocess.run([command(name), *args], input=input, capture_output=True,
                          text=isinstance(input, str) or input is None, env=full_env, timeout=timeout)


def wait_for(predicate, timeout=10.0, what="condition"):
    """Poll `predicate` until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nobody_ids():
    """(uid, gid) of nobody and of nogroup (or nobody's own group)."""
    import grp
    import pwd
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = pwd.getpwnam("nobody").pw_gid
    return pwd.getpwnam("nobody").pw_uid, gid


def make_spool(path, uid=None, gid=None):
    """A spool directory the jailed smap (nobody, or uid/gid) can write."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "bad").mkdir(exist_ok=True)
    if os.geteuid() == 0:
        if uid is None:
            uid, gid = nobody_ids()
        for d in (path, path / "bad"):
            os.chown(d, uid, gid)
            os.chmod(d, 0o770)   # the group: smapd may run as a user of its own in it
    return path


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def processes():
    """(pid, fields of /proc/PID/stat after the command name) of every
    process: fields[0] is the state, [1] the parent, [3] the session."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    yield int(d), f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue


def children(ppid):
    return [pid for pid, fields in processes() if int(fields[1]) == ppid]
