"""A real, private Postfix instance for tests.

    from postfix import postfix          # the fixture

    def test_x(postfix):
        subprocess.run([*postfix.sendmail_command, "-oi", "-f", "a@example.test", "--",
                        "b@example.test"], input=message, check=True)
        [delivered] = postfix.wait_delivered("b@example.test", 1)

The instance has its own configuration directory (main.cf, master.cf),
queue directory, data directory, log file (maillog_file, written by
postlogd: there is no syslog daemon here) and Maildir root.  Mail is
delivered only by Postfix's own virtual(8) agent, into one Maildir per
recipient, maildir_root/<address, lower-cased>/, owned by uid/gid (nobody
and nogroup by default).  Nothing is relayed, looked up in DNS or
delivered by local(8): every domain is a virtual mailbox domain and
whatever has no mailbox bounces.  The system instance is never started
and nothing under /etc/postfix is written (no main.cf is needed there:
every command gets -c/-C/MAIL_CONFIG; postfix-files is read from there).

Which addresses have a mailbox.  virtual(8) refuses "$1" substitution in
regexp/pcre virtual_mailbox_maps and unauthenticated tables (socketmap,
tcp), so a per-address Maildir for *any* address cannot be computed by a
table.  Instead the mailbox table (hash:config_dir/mailboxes) is extended
on the fly, before the mail is queued:
  * the sendmail_command wrapper registers the -f sender and the
    command-line recipients (not those of -t), then execs Postfix's sendmail;
  * with smtpd_port, a policy service registers each RCPT TO and MAIL FROM;
  * add_mailbox(address, ...) registers addresses explicitly.
The table is rebuilt with postmap and renamed into place, so every daemon
that has the old one open notices (the old inode's link count is 0) and is
replaced before it serves its next delivery.  An address never registered
bounces ("unknown user"), as an unknown mailbox does.

Where the files are.  The daemons drop privileges (to the postfix user,
and virtual(8) to uid) before they open the data directory and the
Maildirs by absolute path, and pytest's tmp_path sits below
/tmp/pytest-of-root, mode 0700.  So while the instance runs its tree is a
directory /tmp/postfix-test-XXXX (mode 0755) to which tmp_path/postfix is a
symlink; stop() moves the tree into tmp_path/postfix (logs and Maildirs
stay there for inspection) and rebases the path attributes.  No mode of
pytest's directories is changed.

Processes.  `postfix start` (master -w: it returns once the master has
initialised) runs under a small Python process that is a child subreaper:
the detached master and all its daemons stay its descendants, and it exits
only when every one of them has exited.  stop() runs `postfix stop` and
waits for that exit (SIGKILLs whatever is left after a timeout), so nothing
is left running, not even a zombie.
"""

import grp
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

from support.programs import free_port, processes, wait_for

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
SENDMAIL = "/usr/sbin/sendmail"

# service type private unpriv chroot wakeup maxproc command
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Runs in three places: imported here (add_mailbox), by the sendmail
# wrapper, and as the subreaper that starts Postfix (and serves the policy).
HELPER = r'''
import fcntl, json, os, socketserver, subprocess, sys, threading

POSTMAP = "/usr/sbin/postmap"
# Postfix sendmail's options; those followed by ":" take a value.
SENDMAIL_OPTIONS = "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx"


def mailbox_key(address, origin):
    """The table key (and Maildir name) of `address`, or None if it cannot have one."""
    address = address.strip().lower()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address or address.startswith(("-", "#", ".")) or any(c in address for c in "/\\ \t\r\n\0\"'"):
        return None
    if "@" not in address:
        address = f"{address}@{origin}"
    local, _, domain = address.rpartition("@")
    return address if local and domain and "@" not in local else None


def known_mailboxes(conf_dir):
    with open(os.path.join(conf_dir, "mailboxes")) as f:
        return {line.split()[0] for line in f if line.strip()}


def register(conf_dir, origin, addresses):
    """Give each of `addresses` a Maildir: add it to hash:conf_dir/mailboxes."""
    wanted = {k for k in (mailbox_key(a, origin) for a in addresses) if k}
    if not wanted or wanted <= known_mailboxes(conf_dir):
        return
    table = os.path.join(conf_dir, "mailboxes")
    with open(table + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = known_mailboxes(conf_dir)
        if wanted <= known:
            return
        new = table + ".new"
        with open(new, "w") as f:
            f.writelines(f"{a} {a}/\n" for a in sorted(known | wanted))
        p = subprocess.run([POSTMAP, "-c", conf_dir, "hash:" + new], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"postmap hash:{new} exited {p.returncode}: {p.stderr}")
        # Renamed into place: daemons holding the old table see it unlinked.
        os.rename(new + ".db", table + ".db")
        os.rename(new, table)


def sendmail_addresses(args):
    """The -f/-r sender and the recipients of a sendmail command line."""
    found, i = [], 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            i -= 1
            break
        j = 1
        while j < len(arg):
            c = arg[j]
            pos = SENDMAIL_OPTIONS.find(c)
            if pos >= 0 and SENDMAIL_OPTIONS[pos + 1:pos + 2] == ":":
                value = arg[j + 1:]
                if not value and i < len(args):
                    value = args[i]
                    i += 1
                if c in "fr":
                    found.append(value)
                break
            j += 1
    return found + args[i:]


def sendmail_main(conf_dir, origin, sendmail, args):
    try:
        register(conf_dir, origin, sendmail_addresses(args))
    except Exception as e:
        print(f"sendmail wrapper: cannot register the mailboxes: {e}", file=sys.stderr)
        sys.exit(75)   # EX_TEMPFAIL
    os.execv(sendmail, [sendmail, "-C", conf_dir, *args])


class Policy(socketserver.StreamRequestHandler):
    """smtpd policy delegation: register MAIL FROM and RCPT TO, then DUNNO."""

    def handle(self):
        attrs = {}
        for line in self.rfile:
            line = line.rstrip(b"\r\n").decode("utf-8", "replace")
            if line:
                name, _, value = line.partition("=")
                attrs[name] = value
                continue
            action = "DUNNO"
            try:
                register(self.server.conf_dir, self.server.origin,
                         [attrs.get("sender", ""), attrs.get("recipient", "")])
            except Exception as e:
                action = f"451 4.3.0 cannot register the mailbox: {e}".replace("\n", " ")
            self.wfile.write(f"action={action}\n\n".encode())
            self.wfile.flush()
            attrs = {}


class PolicyServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def reaper_main(status_file, conf_dir, origin, policy_socket, argv):
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    if policy_socket:
        server = PolicyServer(policy_socket, Policy)
        server.conf_dir, server.origin = conf_dir, origin
        os.chmod(policy_socket, 0o666)   # smtpd runs as the postfix user
        threading.Thread(target=server.serve_forever, daemon=True).start()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
    with open(status_file + ".tmp", "w") as f:
        json.dump({"rc": p.returncode, "output": (p.stdout + p.stderr).decode(errors="replace")}, f)
    os.rename(status_file + ".tmp", status_file)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return
'''

_helper = types.ModuleType("postfix_helper")
exec(compile(HELPER, "postfix_helper", "exec"), _helper.__dict__)

SENDMAIL_WRAPPER = """\
#!{python} -IB
# sendmail for the test Postfix in {conf_dir}: registers the sender's and
# the recipients' mailboxes, then execs {sendmail} -C {conf_dir}.
import sys
sys.path.insert(0, {root!r})
from helper import sendmail_main
sendmail_main({conf_dir!r}, {origin!r}, {sendmail!r}, sys.argv[1:])
"""


class PostfixError(AssertionError):
    pass


def _session_members(sid):
    """Live pids in session `sid` (the master is a session leader)."""
    return [pid for pid, fields in processes() if fields[0] not in ("Z", "X") and int(fields[3]) == sid]


def _traversable_by_all(path):
    path = os.path.abspath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _default_ids():
    nobody = pwd.getpwnam("nobody")
    try:
        return nobody.pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return nobody.pw_uid, nobody.pw_gid


class Postfix:
    """A private Postfix whose files end up in `base`/postfix (base is
    normally the test's tmp_path).

    Path attributes (valid while running, and after stop() in
    base/postfix): root, config_dir, queue_dir, data_dir, maildir_root,
    log_file.  sendmail_command: the argv prefix that submits to this
    instance (append "-oi -f SENDER -- RCPT..." and feed the message on
    stdin).  smtpd_port: None, or the 127.0.0.1 port of an smtpd (pass a
    port, or True for a free one).  uid/gid: owner of the Maildirs.
    mailboxes: addresses registered before start.  main_cf: extra main.cf
    parameters.  master_cf: extra master.cf lines.  master_pid once started.
    """

    def __init__(self, base, smtpd_port=None, uid=None, gid=None, myhostname="postfix.example.test",
                 mailboxes=(), main_cf=None, master_cf=""):
        self.home = os.path.join(str(base), "postfix")
        if uid is None:
            uid, default_gid = _default_ids()
            gid = default_gid if gid is None else gid
        self.uid = uid
        self.gid = pwd.getpwuid(uid).pw_gid if gid is None else gid
        self.myhostname = myhostname
        self.smtpd_port = free_port() if smtpd_port is True else smtpd_port
        self.initial_mailboxes = list(mailboxes)
        self.extra_main_cf = dict(main_cf or {})
        self.extra_master_cf = master_cf
        self.master_pid = None
        self._reaper = None
        self._running = False
        self._set_root(self.home)

    def _set_root(self, root):
        self.root = root
        self.config_dir = os.path.join(root, "etc")
        self.queue_dir = os.path.join(root, "spool")
        self.data_dir = os.path.join(root, "data")
        self.maildir_root = os.path.join(root, "maildirs")
        self.log_file = os.path.join(root, "postfix.log")
        self.policy_socket = os.path.join(root, "policy.sock") if self.smtpd_port else None
        self.sendmail_path = os.path.join(root, "sendmail")
        self.sendmail_command = [self.sendmail_path]

    # ------------------------------------------------------------ config

    def main_cf(self):
        params = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.myhostname,
            "mydomain": "example.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "relay_domains": "",
            # Nothing leaves: whatever is not a virtual mailbox bounces.
            "default_transport": "error:no delivery outside the test instance",
            "relay_transport": "error:no relaying from the test instance",
            "local_transport": "error:no local delivery in the test instance",
            "alias_maps": "",
            "alias_database": "",
            # Every domain is a virtual mailbox domain; the mailboxes are registered.
            "virtual_mailbox_domains": "static:ALL",
            "virtual_mailbox_maps": "hash:" + os.path.join(self.config_dir, "mailboxes"),
            "virtual_mailbox_base": self.maildir_root,
            "virtual_uid_maps": f"static:{self.uid}",
            "virtual_gid_maps": f"static:{self.gid}",
            "virtual_minimum_uid": str(max(1, min(100, self.uid))),
            "virtual_transport": "virtual",
            "virtual_mailbox_limit": "0",
            "message_size_limit": "0",
            "address_verify_map": "",
            "smtp_dns_support_level": "disabled",
            "biff": "no",
            "notify_classes": "",
            "maillog_file": self.log_file,
            "maillog_file_prefixes": self.root,
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "in_flow_delay": "0",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_reject_unlisted_recipient": "no",
            "smtpd_recipient_restrictions":
                f"check_policy_service unix:{self.policy_socket}" if self.policy_socket else "",
        }
        params.update(self.extra_main_cf)
        return "".join(f"{k} = {v}\n" for k, v in params.items())

    def master_cf(self):
        smtpd = f"127.0.0.1:{self.smtpd_port} inet n - n - - smtpd\n" if self.smtpd_port else ""
        return smtpd + MASTER_CF + self.extra_master_cf

    def _make_tree(self):
        if os.path.lexists(self.home):
            raise PostfixError(f"{self.home} exists already")
        tmp = tempfile.gettempdir()
        runtime = tempfile.mkdtemp(prefix="postfix-test-", dir=tmp if _traversable_by_all(tmp) else "/tmp")
        os.chmod(runtime, 0o755)
        os.symlink(runtime, self.home)
        self._set_root(runtime)
        os.makedirs(self.config_dir)
        os.makedirs(self.queue_dir)
        owner = pwd.getpwnam("postfix")
        os.makedirs(self.data_dir, mode=0o700)
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        os.makedirs(self.maildir_root, mode=0o755)
        os.chown(self.maildir_root, self.uid, self.gid)
        for name, text in (("main.cf", self.main_cf()), ("master.cf", self.master_cf()), ("mailboxes", "")):
            with open(os.path.join(self.config_dir, name), "w") as f:
                f.write(text)
        self._run("/usr/sbin/postmap", "-c", self.config_dir, "hash:" + os.path.join(self.config_dir, "mailboxes"))
        with open(os.path.join(self.root, "helper.py"), "w") as f:
            f.write(HELPER)
        with open(self.sendmail_path, "w") as f:
            f.write(SENDMAIL_WRAPPER.format(python=sys.executable, root=self.root, conf_dir=self.config_dir,
                                            origin=self.myhostname, sendmail=SENDMAIL))
        os.chmod(self.sendmail_path, 0o755)
        self.add_mailbox(*self.initial_mailboxes)

    def _keep_tree(self):
        """Move the tree from /tmp to tmp_path/postfix (the symlink's place)."""
        runtime = self.root
        if runtime == self.home:
            return
        os.unlink(self.home)
        try:
            os.rename(runtime, self.home)
        except OSError:
            # Another file system: copy the regular files (not the sockets and fifos).
            shutil.copytree(runtime, self.home, symlinks=True,
                            copy_function=lambda s, d: os.path.isfile(s) and shutil.copy2(s, d))
            shutil.rmtree(runtime)
        self._set_root(self.home)

    def add_mailbox(self, *addresses):
        """Give each address (user@domain, or user: @myhostname) its Maildir."""
        _helper.register(self.config_dir, self.myhostname, addresses)

    # ------------------------------------------------------------ running

    def _run(self, *args, check=True, timeout=60, **kw):
        env = dict(os.environ, MAIL_CONFIG=self.config_dir)
        p = subprocess.run(list(args), stdin=subprocess.DEVNULL, capture_output=True, env=env,
                           timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise PostfixError(f"{' '.join(args)} exited {p.returncode}:\n"
                               f"{(p.stdout + p.stderr).decode(errors='replace')}\n{self._log_excerpt()}")
        return p

    def log(self):
        """The instance's log so far."""
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _log_excerpt(self):
        return f"--- {self.log_file}:\n{self.log() or '(empty)'}"

    def postfix(self, *args, **kw):
        """Run the postfix(1) command on this instance."""
        return self._run(POSTFIX, "-c", self.config_dir, *args, **kw)

    def _read_master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _start_status(self):
        try:
            with open(self._status_file) as f:
                return json.load(f)
        except FileNotFoundError:
            pass
        if self._reaper.poll() is not None:
            with open(os.path.join(self.root, "starter.log"), errors="replace") as f:
                raise PostfixError(f"the Postfix starter exited {self._reaper.returncode}: {f.read()}\n"
                                   f"{self._log_excerpt()}")
        return None

    def start(self, timeout=30):
        """Start the instance; on failure raise with Postfix's log."""
        self._running = True
        try:
            self._make_tree()
            self._status_file = os.path.join(self.root, "start.status")
            env = dict(os.environ, MAIL_CONFIG=self.config_dir)
            with open(os.path.join(self.root, "starter.log"), "wb") as out:
                self._reaper = subprocess.Popen(
                    [sys.executable, "-IB", "-c",
                     "import sys; sys.path.insert(0, sys.argv[1]); import helper; helper.reaper_main(*sys.argv[2:6], sys.argv[6:])",
                     self.root, self._status_file, self.config_dir, self.myhostname, self.policy_socket or "",
                     POSTFIX, "-c", self.config_dir, "start"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)
            status = wait_for(self._start_status, timeout, "postfix start")
            if status["rc"] != 0:
                raise PostfixError(f"postfix start exited {status['rc']}:\n{status['output']}\n{self._log_excerpt()}")
            # master -w waited for the master's initialisation; check what we rely on.
            self.master_pid = wait_for(self._read_master_pid, 10, "the Postfix master.pid file")
            pickup = os.path.join(self.queue_dir, "public", "pickup")
            wait_for(lambda: os.path.exists(pickup), 10, "the Postfix pickup fifo")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout=20):
        """Stop the instance; return only when none of its processes is left."""
        if not self._running:
            return
        self._running = False
        try:
            reaper = self._reaper
            if reaper is not None and reaper.poll() is None:
                pid = self.master_pid or self._read_master_pid()
                if pid:
                    self.postfix("stop", check=False, timeout=timeout)
                try:
                    wait_for(lambda: reaper.poll() is not None, timeout, "the Postfix processes to exit")
                except AssertionError:
                    for p in _session_members(pid) if pid else ():
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    try:
                        wait_for(lambda: reaper.poll() is not None, 10, "the killed Postfix processes to exit")
                    except AssertionError:
                        os.killpg(reaper.pid, signal.SIGKILL)
                        reaper.wait(10)
        finally:
            if os.path.islink(self.home):
                self._keep_tree()

    def processes(self):
        """The live processes of this instance (the master's session): [] once stopped."""
        return _session_members(self.master_pid) if self.master_pid else []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------ mail

    def maildir(self, address):
        """The Maildir of `address` (keys are lower-cased, as Postfix folds them)."""
        return os.path.join(self.maildir_root, _helper.mailbox_key(address, self.myhostname) or address.lower())

    def mailbox(self, address):
        """The messages delivered to `address` (bytes each, from new/ and cur/), oldest first."""
        files = []
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir(address), sub)
            try:
                files.extend(os.path.join(d, n) for n in os.listdir(d))
            except FileNotFoundError:
                pass
        out = []
        for path in sorted(files, key=lambda p: (os.stat(p).st_mtime_ns, os.path.basename(p))):
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    def wait_delivered(self, address, count, timeout=30):
        """Wait until `address` has at least `count` messages; return mailbox(address)."""
        def delivered():
            messages = self.mailbox(address)
            return messages if len(messages) >= count else None
        try:
            return wait_for(delivered, timeout, f"{count} message(s) delivered to {address}")
        except AssertionError as e:
            raise PostfixError(f"{e}\n--- queue:\n{self.queue()}\n{self._log_excerpt()}") from None

    def flush(self):
        """postqueue -f: attempt to deliver everything queued now."""
        self._run(POSTQUEUE, "-c", self.config_dir, "-f")

    def queue(self):
        """postqueue -p output, for debugging."""
        p = self._run(POSTQUEUE, "-c", self.config_dir, "-p", check=False)
        return (p.stdout + p.stderr).decode(errors="replace")


@pytest.fixture
def postfix(tmp_path):
    """A started private Postfix; stopped at teardown, with nothing left running."""
    instance = Postfix(tmp_path)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def unprivileged_sendmail(postfix):
    """Postfix's sendmail run by a user other than root honours -C only for
    a directory that the default main.cf lists in
    alternate_config_directories (a Postfix safety rule): smapd runs as
    nobody, so the system's main.cf names the instance for the duration
    of a `with`, and is put back afterwards (support/system_files.py)."""
    from support import system_files
    return system_files.appended("/etc/postfix/main.cf",
                                 f"\nalternate_config_directories = {postfix.config_dir}\n")


# ------------------------------------------------------------ the recipe

#: The recipe of smapd(8) "POSTFIX BEHIND SMAP", as shipped.
RECIPE = Path(__file__).resolve().parent.parent / "etc" / "postfix"


def recipe_main_cf(**extra):
    """etc/postfix/main.cf as parameters (for Postfix(main_cf=...)), with `extra` on top."""
    params = {}
    for line in (RECIPE / "main.cf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            params[name.strip()] = value.strip()
    params.update(extra)
    return params


def recipe_master_cf(port, xclient=True):
    """etc/postfix/master.cf with the re-injection smtpd on `port`; without
    xclient, smapd is authorised for XFORWARD only."""
    text = (RECIPE / "master.cf").read_text()
    assert "\n127.0.0.1:10025 inet " in text
    text = text.replace("127.0.0.1:10025", f"127.0.0.1:{port}")
    if not xclient:
        text, n = re.subn(r"\n  -o smtpd_authorized_xclient_hosts=\S+", "", text)
        assert n == 1
    return text
