"""The suite installed the ways an administrator installs it, and nothing
read from outside the repository.

* A copy of the tracked files (tools/export-tree: what a clone holds) in
  a directory with nothing beside it runs the tests that read the
  reference deployment.
* Debian's own /usr/bin/python3: a venv with that venv's own pip, and
  pipx; every program then runs as nobody (an unprivileged smapd must be
  able to exec what it needs).
* The systemd units pass `systemd-analyze verify`; a socket-activated
  smap session (systemd-socket-activate --inetd, the protocol of
  Accept=yes) commits its message and runs jailed.
* The .deb builds with Debian's tools (`make deb`, lintian included),
  installs with dpkg, runs, and purges without leaving anything behind.
* A daemon with no syslog socket refuses to detach instead of logging
  nowhere; smapd -f stays in the foreground.
"""

import grp
import os
import pwd
import re
import smtplib
import subprocess
import sys

import pytest

from support.logs import Syslog
from support.programs import REFERENCE, ROOT, children, command, free_port, make_spool, nobody_ids, proc_status, wait_for
from support.process import stop

DEBIAN_PYTHON = "/usr/bin/python3"
UNITS = os.path.join(ROOT, "contrib", "systemd")
PROGRAMS = ("smap", "smapd", "ssl-gw", "smapctl", "smmap", "smmapd")

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="installs system-wide or drops to nobody: needs root")


def export_tree(dest):
    subprocess.run(["sh", os.path.join(ROOT, "tools", "export-tree"), str(dest)], check=True)
    return dest


# ------------------------------------------------------------ the repository alone

def test_nothing_reads_outside_the_repository():
    # The needle is built, so that this file does not name it itself.
    word = "sha" + "red"
    needles = ("../" + word, "'..', '" + word + "'", '"..", "' + word + '"')
    offenders = []
    for top in ("tests", "bench", "tools", "Makefile", ".ci", "pyproject.toml", "debian", "lib"):
        path = os.path.join(ROOT, top)
        files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            if "__pycache__" in f or ".egg-info" in f:
                continue
            with open(f, "rb") as fh:
                text = fh.read().decode("utf-8", "replace")
            offenders += [f"{os.path.relpath(f, ROOT)}: {n}" for n in needles if n in text]
    assert offenders == []
    assert os.path.isfile(os.path.join(REFERENCE, "netperm-table"))
    assert os.path.commonpath([REFERENCE, ROOT]) == ROOT


def test_a_clone_with_nothing_beside_it_runs_the_reference_tests(tmp_path):
    """The tests that read the reference deployment, run from a copy of the
    tracked files alone, in a directory that holds nothing else."""
    lonely = tmp_path / "lonely"
    clone = export_tree(lonely / "smapd-suite")
    assert os.listdir(lonely) == ["smapd-suite"]
    reading = sorted(f for f in os.listdir(clone / "tests")
                     if f.startswith("test_") and f.endswith(".py") and f != "test_install.py"
                     and re.search(r"\bREFERENCE", (clone / "tests" / f).read_text()))
    assert {"test_check.py", "test_netperm.py", "test_programs.py", "test_tcpwrap.py",
            "test_xinetd_smap.py", "test_xinetd_sslgw.py"} <= set(reading)
    # test_fuzz's reference property is one of many: its example here.
    targets = [f"tests/{f}" for f in reading if f != "test_fuzz.py"]
    targets.append("tests/test_fuzz.py::test_tcpwrap_reference_files_decide_by_address")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets],
                       cwd=clone, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(r"^\d+ passed", r.stdout.splitlines()[-1]), r.stdout[-2000:]


# ------------------------------------------------------------ pip, pipx with Debian's Python

def as_nobody(argv, **kw):
    uid, gid = nobody_ids()
    return subprocess.run(argv, user=uid, group=gid, extra_groups=[], capture_output=True, text=True,
                          cwd="/", timeout=60, **kw)


def assert_programs_run_as_nobody(bindir, python):
    for name in PROGRAMS:
        path = os.path.join(bindir, name)
        with open(path, "rb") as f:
            assert f.readline().rstrip() == b"#!" + python.encode(), f"{path} has a wrong interpreter line"
        r = as_nobody([path, "--version" if name != "ssl-gw" else "-V"])
        assert r.returncode == 0, f"{name} as nobody: {r.stdout}{r.stderr}"
        assert r.stdout.strip() == f"{name} (smapd suite) " + _version(), r.stdout


def _version():
    import smapd
    return smapd.__version__


@root_only
def test_debian_python_venv_with_its_own_pip(public_tmp):
    src = export_tree(public_tmp / "src")
    venv = public_tmp / "venv"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin/pip"), "--version"], capture_output=True, text=True, check=True)
    assert f"{venv}/lib/python3" in pip.stdout  # the venv's own (Debian's bundled) pip, not a newer one
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", str(src)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_programs_run_as_nobody(venv / "bin", str(venv / "bin/python3"))
    # The man pages and the samples land under share/.
    for rel in ("share/man/man8/smap.8", "share/man/man5/netperm-table.5", "share/smapd-suite/netperm-table.sample",
                "share/smapd-suite/xinetd.d/smtp", "share/smapd-suite/rc.d/smapd",
                "share/smapd-suite/systemd/smap.socket", "share/smapd-suite/postfix/master.cf"):
        assert (venv / rel).is_file(), rel
    r = as_nobody([str(venv / "bin/smapctl"), "check", "-n", "--config",
                   str(venv / "share/smapd-suite/netperm-table.standalone")])
    assert r.returncode == 0 and r.stdout.endswith(": 0 errors, 0 warnings\n"), r.stdout + r.stderr


@root_only
def test_pipx_with_debian_python(public_tmp):
    src = export_tree(public_tmp / "src")
    env = dict(os.environ, PIPX_HOME=str(public_tmp / "pipx"), PIPX_BIN_DIR=str(public_tmp / "bin"),
               PIPX_MAN_DIR=str(public_tmp / "man"), PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    r = subprocess.run(["pipx", "install", "--python", DEBIAN_PYTHON, str(src)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in PROGRAMS:
        assert os.path.exists(public_tmp / "bin" / name), r.stdout
    python = str(public_tmp / "pipx/venvs/smapd-suite/bin/python")
    for name in PROGRAMS:
        # pipx links its bin directory to the programs of its venv.
        assert os.path.realpath(public_tmp / "bin" / name) == str(public_tmp / "pipx/venvs/smapd-suite/bin" / name)
    assert_programs_run_as_nobody(public_tmp / "pipx/venvs/smapd-suite/bin", python)


# ------------------------------------------------------------ systemd

def units_for(bindir, dest):
    """The units of contrib/systemd with /usr/sbin/ pointed at `bindir`:
    systemd-analyze verify checks that every program exists."""
    dest.mkdir()
    for name in sorted(os.listdir(UNITS)):
        text = open(os.path.join(UNITS, name)).read()
        (dest / name).write_text(text.replace("/usr/sbin/", f"{bindir}/"))
    return sorted(str(p) for p in dest.iterdir())


def verify_units(paths, manpath):
    env = dict(os.environ, MANPATH=manpath, SYSTEMD_LOG_COLOR="0")
    return subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, env=env,
                          timeout=120)


def test_units_verify(tmp_path):
    assert sorted(os.listdir(UNITS)) == ["smap-pool.service", "smap-pool.socket", "smap.service", "smap.socket",
                                         "smap@.service", "smapd.service", "ssl-gw-imaps-pool.service",
                                         "ssl-gw-imaps-pool.socket", "ssl-gw-imaps.socket", "ssl-gw-imaps@.service",
                                         "ssl-gw@.service"]
    bindir = os.path.dirname(command("smap"))
    r = verify_units(units_for(bindir, tmp_path / "units"), os.path.join(os.path.dirname(bindir), "share", "man"))
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
    # A unit naming a program that is not there fails: the check can fail.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "smap.service").write_text(open(os.path.join(UNITS, "smap.service")).read()
                                      .replace("/usr/sbin/smap", "/nonexistent/smap"))
    r = verify_units([str(bad / "smap.service")], os.path.join(os.path.dirname(bindir), "share", "man"))
    assert r.returncode != 0 and "/nonexistent/smap" in r.stdout + r.stderr


def test_units_start_the_programs_as_documented():
    def unit(name):
        return open(os.path.join(UNITS, name)).read()
    assert "ExecStart=/usr/sbin/smap -daemon -f $SMAP_OPTS" in unit("smap.service")
    assert "ExecStart=/usr/sbin/smapd -f $SMAPD_OPTS" in unit("smapd.service")
    assert "ExecStart=/usr/sbin/ssl-gw -f $SSLGW_ARGS" in unit("ssl-gw@.service")
    sock = unit("smap.socket")
    assert "Accept=yes" in sock and "ListenStream=25" in sock
    for name in ("smap@.service", "ssl-gw-imaps@.service"):
        assert "StandardInput=socket" in unit(name)
    # smapd execs the MTA's sendmail, which may be set-group-id (postdrop).
    assert "NoNewPrivileges=yes" not in unit("smapd.service")
    # The listening-socket mode: systemd keeps the socket (Accept=no) and
    # starts the pool, which is given no listener of its own.
    for name in ("smap-pool", "ssl-gw-imaps-pool"):
        assert "Accept=no" in unit(name + ".socket") and "StandardInput" not in unit(name + ".service")
        assert " -d " not in unit(name + ".service") and "-daemon" not in unit(name + ".service")
    # The daemons' units and the sockets can be enabled; the per-connection
    # services and the pools are started by their socket only.
    for name in os.listdir(UNITS):
        by_socket = ("@." in name and name != "ssl-gw@.service") or name.endswith("-pool.service")
        assert ("WantedBy=" in unit(name)) == (not by_socket), name


@root_only
def test_socket_activated_smap_session(tmp_path, loopback_dns):
    """smap@.service's command under systemd-socket-activate --inetd: a
    connection accepted for it, the socket on stdin and stdout."""
    spool = make_spool(tmp_path / "spool")
    syslog = Syslog(tmp_path / "log")
    group = grp.getgrgid(nobody_ids()[1]).gr_name
    path = tmp_path / "netperm-table"
    path.write_text(f"smap: directory {spool}\nsmap: hostname mx.example.test\nsmap: userid nobody\n"
                    f"smap: groupid {group}\nsmap: resolver 127.0.0.1:{loopback_dns}\n"
                    f"smap: relay-domain example.org\nsmap: log-socket {syslog.path}\n")
    port = free_port()
    exec_start = re.search(r"^ExecStart=(.*)$", open(os.path.join(UNITS, "smap@.service")).read(), re.M).group(1)
    argv = exec_start.replace("/usr/sbin/smap", command("smap")).replace("$SMAP_OPTS", f"--config {path}").split()
    activate = subprocess.Popen(["systemd-socket-activate", "--accept", "--inetd", "-l", f"127.0.0.1:{port}", *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def connect():
            try:
                return smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.test", timeout=30)
            except OSError:
                return None
        s = wait_for(connect, what="systemd-socket-activate listening")
        try:
            assert s.ehlo()[0] == 250
            [pid] = wait_for(lambda: children(activate.pid), what="smap under systemd-socket-activate")
            assert os.readlink(f"/proc/{pid}/root") == str(spool)
            st = proc_status(pid)
            uid, gid = nobody_ids()
            assert st["Uid"].split() == [str(uid)] * 4 and st["Gid"].split() == [str(gid)] * 4
            assert st["Groups"].split() == [str(gid)] and st["CapEff"] == "0000000000000000"
            s.sendmail("alice@example.org", ["bob@example.org"], b"Subject: socket activation\r\n\r\nhello\r\n")
        finally:
            s.quit()
        [name] = wait_for(lambda: [f for f in os.listdir(spool) if f.startswith("sma")], what="a spool file")
        data = (spool / name).read_bytes()
        assert data.startswith(b"FROM <alice@example.org>\nATTR client-addr=127.0.0.1\nATTR client-name=client.example.test\n"
                               b"ATTR helo=client.example.test\nATTR proto=ESMTP\nRCPT <bob@example.org>\nBODY\nReceived: ")
        assert data.endswith(b"\nSubject: socket activation\n\nhello\n")
        syslog.wait(r"smap\[\d+\]: host=client\.example\.test/127\.0\.0\.1 bytes=\d+ from=<alice@example\.org> "
                    r"to=<bob@example\.org> nrcpt=1 id=" + name[3:])
    finally:
        stop(activate, timeout=10)
        syslog.close()


# ------------------------------------------------------------ daemons and syslog

@pytest.mark.parametrize("argv", [["smapd"], ["smap", "-daemon"], ["ssl-gw", "-d", "127.0.0.1:PORT", "-r", "143"]])
def test_no_syslog_no_detaching(table, tmp_path, argv):
    spool = make_spool(tmp_path / "spool")
    nowhere = tmp_path / "no-such-syslog"
    path = table(f"smap, smapd: directory {spool}\nsmap: listen 127.0.0.1:{free_port()}\n"
                 f"smap: relay-domain example.org\n*: log-socket {nowhere}\n"
                 f"*: pidfile {tmp_path / 'pid'}\nsmap: scoreboard {tmp_path / 'board'}\n"
                 "smap, smapd: userid nobody\n"
                 f"smap, smapd: groupid {grp.getgrgid(nobody_ids()[1]).gr_name}\n")
    args = [a.replace("PORT", str(free_port())) for a in argv[1:]]
    r = subprocess.run([command(argv[0]), *args, "--config", path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no syslog socket to log to: refusing to detach and log nowhere" in r.stderr
    assert not os.path.exists(tmp_path / "pid")


@root_only
def test_smapd_foreground_logs_to_syslog(table, tmp_path, public_tmp):
    spool = make_spool(public_tmp / "spool")  # smapd, as nobody, must reach it
    syslog = Syslog(tmp_path / "log")
    path = table(f"smapd: directory {spool}\nsmapd: log-socket {syslog.path}\nsmapd: userid nobody\n"
                 f"smapd: groupid {grp.getgrgid(nobody_ids()[1]).gr_name}\nsmapd: sendmail /bin/true\n")
    proc = subprocess.Popen([command("smapd"), "-f", "--config", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        syslog.wait(r"^<\d+>smapd\[%d\]: " % proc.pid)  # the same pid: it did not fork away
        assert proc.poll() is None, syslog.read()
        st = proc_status(proc.pid)
        assert st["Uid"].split()[0] == str(nobody_ids()[0])
    finally:
        stop(proc, timeout=30)
        out, err = proc.communicate(timeout=30)
        syslog.close()
    assert (out, err) == (b"", b"")


# ------------------------------------------------------------ the Debian package

def test_maintainer_scripts_and_tools_are_shellcheck_clean():
    scripts = [os.path.join(ROOT, p) for p in ("debian/smapd-suite.postinst", "debian/smapd-suite.postrm",
                                               "tools/export-tree", "tools/install-deps")]
    r = subprocess.run(["shellcheck", "-s", "sh", *scripts], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, "")


def _installed():
    return subprocess.run(["dpkg-query", "-W", "-f=${Status}", "smapd-suite"], capture_output=True,
                          text=True).stdout.endswith("ok installed")


@root_only
def test_debian_package(tmp_path):
    if _installed() or os.path.exists("/var/spool/smap"):
        pytest.fail("smapd-suite is already installed on this machine (or /var/spool/smap exists): "
                    "this test installs and purges it, and will not touch an installation of yours")
    debdir = tmp_path / "deb"
    r = subprocess.run(["make", "-C", ROOT, "deb", f"DEBDIR={debdir}"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert not re.search(r"^E: ", r.stdout, re.M), r.stdout  # lintian: no error
    deb = debdir / f"smapd-suite_{_version()}_all.deb"
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    files = [line.split(None, 5)[5].split(" -> ")[0].lstrip(".") for line in listing.splitlines()]
    paths = [f.rstrip("/") or "/" for f in files]
    before = {f for f in paths if os.path.lexists(f)}  # /usr, /lib/systemd/system, ...
    for want in ("/usr/sbin/smap", "/usr/sbin/smapd", "/usr/sbin/ssl-gw", "/usr/sbin/smapctl",
                 "/usr/sbin/smmap", "/usr/sbin/smmapd", "/usr/share/man/man8/smap.8.gz",
                 "/usr/share/man/man5/netperm-table.5.gz", "/lib/systemd/system/smap.socket",
                 "/lib/systemd/system/smapd.service", "/usr/share/smapd-suite/netperm-table.standalone"):
        assert want in files, want
    try:
        r = subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run(["/usr/sbin/smapctl", "--version"], capture_output=True, text=True)
        assert r.stdout == f"smapctl (smapd suite) {_version()}\n"
        with open("/usr/sbin/smapd", "rb") as f:
            assert f.readline().rstrip() == b"#!/usr/bin/python3"
        # The jail's account and the spool it owns, and smapd's account in
        # its group, as the samples name them.
        smap, smapd = pwd.getpwnam("smap"), pwd.getpwnam("smapd")
        assert grp.getgrgid(smap.pw_gid).gr_name == "smap" and smap.pw_dir == "/var/spool/smap"
        assert smapd.pw_gid == smap.pw_gid and smapd.pw_uid != smap.pw_uid
        for d in ("/var/spool/smap", "/var/spool/smap/bad"):
            st = os.stat(d)
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (smap.pw_uid, smap.pw_gid, 0o770)
        r = subprocess.run(["/usr/sbin/smapctl", "check", "--config",
                            "/usr/share/smapd-suite/netperm-table.standalone"], capture_output=True, text=True)
        assert (r.returncode, r.stdout) == (0, "/usr/share/smapd-suite/netperm-table.standalone: "
                                               "0 errors, 0 warnings\n"), r.stdout + r.stderr
        units = sorted(f"/lib/systemd/system/{n}" for n in os.listdir(UNITS))
        r = verify_units(units, "/usr/share/man")
        assert (r.returncode, r.stdout + r.stderr) == (0, "")
        # Installed, not enabled: no symlink in any .wants directory.
        wants = subprocess.run(["find", "/etc/systemd/system", "-lname", "*smap*"], capture_output=True,
                               text=True).stdout
        assert wants == ""
    finally:
        r = subprocess.run(["dpkg", "--purge", "smapd-suite"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not _installed()
    left = [f for f in paths if os.path.lexists(f) and f not in before]
    assert left == []
    assert not os.path.exists("/var/spool/smap")
    with pytest.raises(KeyError):
        pwd.getpwnam("smap")
    with pytest.raises(KeyError):
        pwd.getpwnam("smapd")
    assert not os.path.exists("/usr/lib/python3/dist-packages/smapd")
