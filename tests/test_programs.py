"""The installed commands: smap, smapd and ssl-gw read their table under the
name they were invoked by, and refuse a bad one with file:line; smapctl
maildrop delivers into Maildirs as a sendmail would."""

import os
import subprocess

import pytest

from support.programs import REFERENCE_TABLE, command, run


def test_smap_reads_its_own_name(table, tmp_path):
    path = table("smmap: maxbytes lots\nsmap: maxbytes 5\n*: relay-domain example.org\n")
    r = run("smap", "--config", path)
    assert r.returncode == 1 and "standard input is not a connected socket" in r.stderr
    # the same program installed as smmap reads the smmap: lines
    link = tmp_path / "smmap"
    link.symlink_to(command("smap"))
    r = subprocess.run([str(link), "--config", path], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == f"smmap: {path}:1: error: maxbytes: 'lots' is not a whole number\n"
    # a trailing name argument wins over argv[0]
    r = run("smap", "--config", path, "smmap")
    assert r.returncode == 2 and f"{path}:1: error" in r.stderr


def test_reference_table_loads_for_smmap_and_smmapd(tmp_path):
    # The table is read without error; then smmap wants its socket on
    # stdin, and smmapd its spool, which this machine does not have.
    for prog, name, said in (("smap", "smmap", "]: standard input is not a connected socket"),
                             ("smapd", "smmapd", "]: the spool /var/spool/smmap is not a directory")):
        link = tmp_path / name
        link.symlink_to(command(prog))
        r = subprocess.run([str(link), "--config", REFERENCE_TABLE], capture_output=True, text=True)
        assert r.returncode == 1, r.stderr
        assert f"{name}[" in r.stderr and said in r.stderr, r.stderr


def test_other_programs_latin1_lines_do_not_stop_smap(tmp_path):
    path = tmp_path / "netperm-table"
    path.write_bytes(b"# Konfiguration f\xfcr alle Proxies\nftp-gw: banner \"Gr\xfc\xdfe\"\nsmap: maxbytes 5\n"
                     b"smap: relay-domain example.org\n"
                     b"smapd: banner \"\xff\"\n")
    r = run("smap", "--config", str(path))
    assert r.returncode == 1 and "standard input is not a connected socket" in r.stderr
    r = run("smapd", "--config", str(path))
    assert r.returncode == 2 and r.stderr == f"smapd: {path}:5: error: the line is not valid UTF-8\n"


def test_table_from_environment_and_missing_table(table):
    path = table("smapd: wakeup 0\n")
    r = run("smapd", env={"NETPERM_TABLE": path})
    assert r.returncode == 2
    assert r.stderr == f"smapd: {path}:1: error: wakeup: 0 is out of range (1 or more)\n"
    r = run("smapd", "--config", "/nonexistent/table")
    assert r.returncode == 2
    assert "/nonexistent/table: error: cannot read the table: No such file or directory" in r.stderr


def test_sslgw_stunnel_command_line(table):
    r = run("ssl-gw", "-x")
    assert r.returncode == 1 and "option -x not recognized" in r.stderr and "usage: ssl-gw" in r.stderr
    r = run("ssl-gw", "-p", "/x.pem")
    assert r.returncode == 1 and "give -r [host:]port, or -l program" in r.stderr
    r = run("ssl-gw", "-p", "/x.pem", "-r", "imap", "-l", "/bin/cat")
    assert r.returncode == 1 and "-r and -l: give one of them" in r.stderr
    r = run("ssl-gw", "-r", "imap", "-n", "smtp")
    assert r.returncode == 1 and "-n smtp: ssl-gw negotiates TLS as the client (-c)" in r.stderr
    r = run("ssl-gw", "-c", "-r", "imap", "-n", "imap")
    assert r.returncode == 1 and "-n imap: the protocols are smtp, pop3, nntp" in r.stderr
    r = run("ssl-gw", "-r", "imap", "-D", "nosuch.7")
    assert r.returncode == 1 and "-D nosuch.7: 'nosuch' is not a syslog facility" in r.stderr
    r = run("ssl-gw", "-r", "imap", "-D", "8")
    assert r.returncode == 1 and "-D 8: the level is 0 to 7" in r.stderr
    path = table("imap: verify 9\n")
    r = run("ssl-gw", "-r", "imap", "-s", "nobody", "-g", "nobody", "-p", "/x.pem", env={"NETPERM_TABLE": path})
    assert r.returncode == 2
    assert r.stderr == f"ssl-gw: {path}:1: error: verify: 9 is out of range (0..3)\n"
    r = run("ssl-gw", "--config", path, "-r", "imap")
    assert r.returncode == 2 and f"{path}:1: error" in r.stderr
    r = run("ssl-gw", "-V")
    assert r.returncode == 0 and r.stdout.startswith("ssl-gw (smapd suite)")


def test_version_and_usage():
    for prog in ("smap", "smapd", "smapctl"):
        r = run(prog, "--version")
        assert r.returncode == 0 and "(smapd suite)" in r.stdout
    r = run("smap", "-bogus")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


# -------------------------------------------------------------- maildrop

MESSAGE = b"Subject: test\r\n\r\n8-bit: caf\xc3\xa9\r\n.\r\n..stuffed stays\r\nlast\r\n"


def maildrop(directory, *args, input=MESSAGE):
    return subprocess.run([command("smapctl"), "maildrop", str(directory), *args], input=input,
                          capture_output=True)


def messages(box):
    new = box / "new"
    return [(new / f).read_bytes() for f in sorted(os.listdir(new))]


def test_maildrop_one_copy_per_recipient(tmp_path):
    r = maildrop(tmp_path, "-oi", "-f", "sender@example.org", "--", "a@example.org", "B@Example.org")
    assert (r.returncode, r.stderr) == (0, b"")
    for rcpt, box in (("a@example.org", "a@example.org"), ("B@Example.org", "b@example.org")):
        assert messages(tmp_path / box) == [
            f"Return-Path: <sender@example.org>\nDelivered-To: {rcpt}\n".encode() + MESSAGE]
        assert os.listdir(tmp_path / box / "tmp") == []


def test_maildrop_without_oi_stops_at_a_dot_line(tmp_path):
    r = maildrop(tmp_path, "-f", "<>", "x@example.org")
    assert r.returncode == 0
    assert messages(tmp_path / "x@example.org") == [
        b"Return-Path: <>\nDelivered-To: x@example.org\nSubject: test\r\n\r\n8-bit: caf\xc3\xa9\r\n"]


@pytest.mark.parametrize("rcpt", ["../escape", ".hidden", "-option", "a/b@example.org", "sp ace@x"])
def test_maildrop_refuses_unsafe_recipients_and_delivers_nothing(tmp_path, rcpt):
    r = maildrop(tmp_path / "md", "-oi", "-f", "s@x", "--", "ok@example.org", rcpt)
    assert r.returncode == 67 and b"not a deliverable address" in r.stderr
    assert not (tmp_path / "md").exists()


def test_maildrop_usage_and_temporary_failure(tmp_path):
    r = maildrop(tmp_path, "-oi", "-f", "s@x")
    assert r.returncode == 64 and b"no recipients" in r.stderr
    r = maildrop(tmp_path, "-X", "a@b")
    assert r.returncode == 64 and b"unsupported option '-X'" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = maildrop(blocker / "md", "-oi", "-f", "s@x", "--", "a@example.org", "b@example.org")
    assert r.returncode == 75 and b"Not a directory" in r.stderr
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("args, code", [
    (("-f", "evil>\nX-Injected: yes", "--", "bob@example.org"), 64),
    (("-f", "s@x", "--", "bob@example.org\r\n"), 67),
    (("-f", "s@x", "--", "b" * 250 + "@example.org"), 67),
])
def test_maildrop_refuses_header_injection(tmp_path, args, code):
    r = maildrop(tmp_path / "md", "-oi", *args)
    assert r.returncode == code
    assert not (tmp_path / "md").exists()
