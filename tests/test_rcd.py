"""contrib/rc.d: shellcheck, and each script run the way rc.subr runs it.

Debian has no rc.subr; tests/rc/rc.subr is a small one that follows
rc.subr(8) for what the scripts use (the variables, the extra commands,
the pid file, and check_pidfile's rule for a plain daemon: the first
word of the process's command is its name, or "name:").  The programs
themselves are the installed ones, started as root as rc would."""

import grp
import os
import shutil
import subprocess
import sys
import threading
import traceback

import pytest

from support.logs import Syslog
from support.programs import ROOT, children, command, free_port, make_spool, nobody_ids, proc_status, wait_for

SCRIPTS = os.path.join(ROOT, "contrib", "rc.d")
RC_SUBR = os.path.join(ROOT, "tests", "rc", "rc.subr")


def test_scripts_are_shellcheck_clean():
    scripts = sorted(os.path.join(SCRIPTS, f) for f in os.listdir(SCRIPTS))
    assert scripts
    r = subprocess.run(["shellcheck", "-s", "sh", *scripts], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    for path in scripts:
        text = open(path).read()
        name = os.path.basename(path)
        assert f'name="{name}"' in text and f'rcvar="{name}_enable"' in text
        assert 'load_rc_config "$name"' in text and 'run_rc_command "$1"' in text
        assert "extra_commands=" in text and "reload" in text and 'pidfile="' in text
        assert os.access(path, os.X_OK)


class Rc:
    def __init__(self, tmp_path, script, conf):
        self.script = tmp_path / f"rc.{script}"
        text = open(os.path.join(SCRIPTS, script)).read()
        assert ". /etc/rc.subr" in text
        self.script.write_text(text.replace(". /etc/rc.subr", f". {RC_SUBR}"))
        self.conf = tmp_path / "rc.conf"
        self.conf.write_text("".join(f'{k}="{v}"\n' for k, v in conf.items()))

    def __call__(self, action):
        return subprocess.run(["sh", str(self.script), action], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "RC_CONF": str(self.conf)}, cwd="/")


@pytest.mark.skipif(os.geteuid() != 0, reason="rc starts the daemons as root")
def test_smap_rc_script(tmp_path, public_tmp, loopback_dns):
    spool = make_spool(public_tmp / "spool")
    port = free_port()
    syslog = Syslog(tmp_path / "log")
    group = grp.getgrgid(nobody_ids()[1]).gr_name
    table = tmp_path / "netperm-table"
    table.write_text(f"smmap: directory {spool}\nsmmap: userid nobody\nsmmap: groupid {group}\n"
                     f"smmap: listen 127.0.0.1:{port}\nsmmap: minspare 2\nsmmap: hostname test.example\n"
                     f"smmap: resolver 127.0.0.1:{loopback_dns}\nsmmap: scoreboard {tmp_path / 'sb'}\n"
                     f"smmap: log-socket {syslog.path}\nsmmap: relay-domain example.org\n")
    pidfile = tmp_path / "smmap.pid"
    rc = Rc(tmp_path, "smap", {"smap_enable": "YES", "smap_config": table, "smap_tablename": "smmap",
                               "smap_pidfile": pidfile, "smap_program": command("smap")})
    try:
        v = dict(line.split("=", 1) for line in rc("vars").stdout.splitlines())
        assert v["command"] == command("smap") and v["pidfile"] == str(pidfile)
        assert v["command_args"] == f"-daemon --config {table} --pidfile {pidfile} smmap"
        assert v["extra_commands"] == "reload configtest stats" and v["rcvar"] == "smap_enable"
        assert rc("configtest").returncode == 0
        r = rc("start")
        assert r.returncode == 0, r.stdout + r.stderr
        pid = int(wait_for(lambda: pidfile.read_text().strip(), what="the pid file"))
        syslog.wait(rf"smap\[{pid}\]: started: listening on 127\.0\.0\.1:{port}")
        r = rc("status")
        assert r.returncode == 0 and r.stdout == f"smap is running as pid {pid}.\n"
        assert rc("start").returncode == 1  # already running
        r = rc("stats")
        assert r.returncode == 0 and f"master pid {pid}," in r.stdout
        assert rc("reload").returncode == 0
        syslog.wait(r"reloaded: listening on")
        # A table the master would refuse: reload fails and says why, and
        # no HUP is sent (the master logs no refusal).
        good = open(table).read()
        with open(table, "a") as f:
            f.write("smmap: maxspare 1\n")
        r = rc("reload")
        assert r.returncode == 1 and "error: smmap: minspare 2 is above maxspare 1" in r.stdout, r.stdout
        assert not [l for l in syslog.read() if "reload refused" in l]
        open(table, "w").write(good)
        r = rc("stop")
        assert r.returncode == 0
        assert not pidfile.exists()
        assert rc("status").returncode == 1
    finally:
        if pidfile.exists():
            subprocess.run(["sh", "-c", f"kill -INT $(cat {pidfile})"])
        syslog.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="rc starts the daemons as root")
def test_smapd_rc_script(tmp_path, public_tmp):
    spool = make_spool(public_tmp / "spool")
    syslog = Syslog(tmp_path / "log")
    rundir = public_tmp / "run"
    rundir.mkdir()
    os.chown(rundir, *nobody_ids())  # smapd, as nobody, removes its pid file
    group = grp.getgrgid(nobody_ids()[1]).gr_name
    table = tmp_path / "netperm-table"
    table.write_text(f"smmapd: directory {spool}\nsmmapd: userid nobody\nsmmapd: groupid {group}\n"
                     f"smmapd: sendmail {shutil.which('true')}\nsmmapd: log-socket {syslog.path}\n")
    pidfile = rundir / "smmapd.pid"
    rc = Rc(tmp_path, "smapd", {"smapd_enable": "YES", "smapd_config": table, "smapd_tablename": "smmapd",
                                "smapd_pidfile": pidfile, "smapd_program": command("smapd")})
    try:
        v = dict(line.split("=", 1) for line in rc("vars").stdout.splitlines())
        assert v["command_args"] == f"--config {table} --pidfile {pidfile} smmapd"
        r = rc("start")
        assert r.returncode == 0, r.stdout + r.stderr
        pid = int(wait_for(lambda: pidfile.read_text().strip(), what="the pid file"))
        syslog.wait(rf"smapd\[{pid}\]: started: spool {spool}")
        wait_for(lambda: rc("status").stdout == f"smapd is running as pid {pid}.\n", what="smapd's title")
        assert rc("configtest").returncode == 0
        assert rc("reload").returncode == 0
        syslog.wait(r"smapd\[\d+\]: .*reload")
        with open(table, "a") as f:
            f.write("smmapd: wakeup never\n")
        r = rc("reload")
        assert r.returncode == 1 and "error: wakeup: 'never' is not a whole number" in r.stdout, r.stdout
        assert rc("stop").returncode == 0
        wait_for(lambda: not pidfile.exists(), what="the pid file to go")
    finally:
        if pidfile.exists():
            subprocess.run(["sh", "-c", f"kill -INT $(cat {pidfile})"])
        syslog.close()


def _where_they_wait(master, port):
    """What a failure report needs when a child seems stuck: where in the
    kernel each child of `master` waits, and every socket of `port`."""
    out = []
    for pid in children(master):
        def get(name):
            try:
                with open(f"/proc/{pid}/{name}") as f:
                    return f.read().strip()
            except OSError as e:
                return f"({e.strerror})"
        try:
            state = proc_status(pid).get("State", "?")
        except OSError as e:
            state = f"({e.strerror})"
        out.append(f"child {pid}: State {state}, wchan {get('wchan')}, syscall {get('syscall')}\n"
                   f"{get('stack')}")
    ss = subprocess.run(["ss", "-tanp", f"( sport = :{port} or dport = :{port} )"], capture_output=True, text=True)
    # The test's own threads and descriptors: once, the backend's connection
    # was found accepted as fd 14 of the test process, not by the test.
    frames = sys._current_frames()
    threads = [f"thread {t.name} ({t.ident}):\n" + "".join(traceback.format_stack(frames[t.ident])[-6:])
               for t in threading.enumerate() if t.ident in frames]
    fds = []
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            fds.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return ("\n".join(out) + "\n" + ss.stdout + ss.stderr + "\n" + "\n".join(threads)
            + "\nthe test's fds: " + ", ".join(fds))


@pytest.mark.skipif(os.geteuid() != 0, reason="rc starts the daemons as root")
def test_ssl_gw_rc_script(tmp_path, pki):
    import socket
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(4)
    port = free_port()
    syslog = Syslog(tmp_path / "log")
    table = tmp_path / "netperm-table"
    table.write_text(f"ssl-gw: tcpwrappers no\nssl-gw: minspare 1\nssl-gw: scoreboard {tmp_path / 'sb'}\n"
                     f"ssl-gw: log-socket {syslog.path}\n")
    pidfile = tmp_path / "ssl-gw.pid"
    flags = (f"--config {table} -d 127.0.0.1:{port} -r 127.0.0.1:{backend.getsockname()[1]} -p {pki.server_pem} "
             f"-s nobody -g {grp.getgrgid(nobody_ids()[1]).gr_name}")
    rc = Rc(tmp_path, "ssl_gw", {"ssl_gw_enable": "YES", "ssl_gw_flags": flags, "ssl_gw_pidfile": pidfile,
                                 "ssl_gw_program": command("ssl-gw")})
    try:
        v = dict(line.split("=", 1) for line in rc("vars").stdout.splitlines())
        assert v["command_args"] == f"-P {pidfile}" and v["rc_flags"] == flags
        r = rc("start")
        assert r.returncode == 0, r.stdout + r.stderr
        pid = int(wait_for(lambda: pidfile.read_text().strip(), what="the pid file"))
        syslog.wait(rf"ssl-gw\[{pid}\]: started: listening on 127\.0\.0\.1:{port}")
        wait_for(lambda: rc("status").stdout == f"ssl_gw is running as pid {pid}.\n", what="ssl-gw's title")
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        tls = pki.client_context().wrap_socket(raw, server_hostname="test.example")
        backend.settimeout(30)
        try:
            conn, _ = backend.accept()  # the handshake done, ssl-gw connected its backend
        except socket.timeout:
            pytest.fail("ssl-gw did not connect its backend; its log:\n" + "\n".join(syslog.read())
                        + "\n" + _where_they_wait(pid, backend.getsockname()[1]))
        conn.sendall(b"hello\r\n")
        assert tls.recv(100) == b"hello\r\n"
        conn.close()
        tls.close()
        assert rc("reload").returncode == 0
        syslog.wait(r"reloaded: listening on")
        assert rc("stop").returncode == 0
        wait_for(lambda: not pidfile.exists(), what="the pid file to go")
    finally:
        if pidfile.exists():
            subprocess.run(["sh", "-c", f"kill -INT $(cat {pidfile})"])
        syslog.close()
        backend.close()
