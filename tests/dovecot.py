"""A real, private Dovecot (IMAP and POP3, plain) for the tests of ssl-gw.

    from dovecot import Dovecot

    with Dovecot(imap_port=free_port(), pop3_port=free_port()) as dc:
        dc.deliver("Subject: hello\\n\\nbody\\n")      # into the test user's INBOX
        ... IMAP on 127.0.0.1:dc.imap_port, POP3 on 127.0.0.1:dc.pop3_port,
            user dc.user, password dc.password

Its own configuration file, base (runtime) directory, state directory,
log file and Maildirs, under a directory of /tmp that every user can
traverse (Dovecot's login and mail processes run as dovenull and nobody).
One user, authenticated from a passwd-file with a plain password; mail
belongs to nobody/nogroup.  No TLS: ssl-gw is the TLS.  Nothing under
/etc/dovecot is read or written, and the system's Dovecot is never
started.  stop() ends the master and waits for it.
"""

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from support.programs import wait_for
from support.process import stop

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap pop3{lmtp_protocol}
listen = 127.0.0.1
auth_username_format = %n
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
first_valid_uid = 1
first_valid_gid = 1
default_internal_user = dovecot
default_login_user = dovenull
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{lmtp_service}"""

# LMTP on a UNIX socket that smapd, as nobody, may connect to.
LMTP_SERVICE = """\
service lmtp {{
  unix_listener {socket} {{
    mode = 0666
  }}
}}
"""


class Dovecot:
    user = "tester"
    password = "s3cret-pass"

    def __init__(self, imap_port, pop3_port, lmtp=False):
        self.imap_port = imap_port
        self.pop3_port = pop3_port
        self.root = tempfile.mkdtemp(prefix="dovecot-test-", dir="/tmp")
        os.chmod(self.root, 0o755)
        #: The LMTP socket (any address whose local part is `user`
        #: reaches the user), or None.
        self.lmtp_socket = os.path.join(self.root, "lmtp") if lmtp else None
        self.uid = pwd.getpwnam("nobody").pw_uid
        try:
            self.gid = grp.getgrnam("nogroup").gr_gid
        except KeyError:
            self.gid = pwd.getpwnam("nobody").pw_gid
        self.conf = os.path.join(self.root, "dovecot.conf")
        self.log = os.path.join(self.root, "dovecot.log")
        self.proc = None

    def maildir(self):
        return os.path.join(self.root, "mail", self.user)

    def deliver(self, text: str) -> None:
        """A message straight into the user's Maildir (as an LDA would)."""
        md = self.maildir()
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        name = f"{time.time_ns()}.P{os.getpid()}.test"
        tmp = os.path.join(md, "tmp", name)
        with open(tmp, "w", newline="\n") as f:
            f.write(text)
        os.rename(tmp, os.path.join(md, "new", name))
        for d, _, files in os.walk(os.path.join(self.root, "mail")):
            os.chown(d, self.uid, self.gid)
            for f in files:
                os.chown(os.path.join(d, f), self.uid, self.gid)

    def start(self):
        for d in ("run", "state", "mail"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        os.chown(os.path.join(self.root, "mail"), self.uid, self.gid)
        with open(os.path.join(self.root, "users"), "w") as f:
            f.write(f"{self.user}:{self.password}\n")
        with open(self.conf, "w") as f:
            f.write(CONF.format(root=self.root, uid=self.uid, gid=self.gid, imap_port=self.imap_port,
                                pop3_port=self.pop3_port, lmtp_protocol=" lmtp" if self.lmtp_socket else "",
                                lmtp_service=LMTP_SERVICE.format(socket=self.lmtp_socket)
                                if self.lmtp_socket else ""))
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_for(lambda: self._answers(self.imap_port, b"* OK") and self._answers(self.pop3_port, b"+OK")
                 and (not self.lmtp_socket or os.path.exists(self.lmtp_socket)),
                 timeout=20, what=f"Dovecot on 127.0.0.1:{self.imap_port} and :{self.pop3_port}"
                                  f" ({self._log_tail()})")
        return self

    def _answers(self, port, greeting):
        if self.proc.poll() is not None:
            raise AssertionError(f"dovecot exited: {self.proc.stderr.read().decode()} {self._log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.recv(200).startswith(greeting)
        except OSError:
            return False

    def _log_tail(self):
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        stop(self.proc)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
