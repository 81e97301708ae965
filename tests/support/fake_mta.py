"""The one fake MTA of the tests: a sendmail that only forces outcomes.

DESIGN.md section 9 keeps Postfix for the real hand-off
(tests/postfix.py); this stands where a test needs an MTA to fail on
demand.  `mode` is read at each call: ok, 'exit N', hang, slow (1 s,
then 0), second-fails (the second call exits 75), crash (SIGSEGV), kill
(SIGKILL) or detach (exits 0 at once, leaving a process of another
session that holds its stderr for 8 s).  Every call records, under
DIR/calls/, its input (`N.body`, whole, and its `N.sum`), the mode it met
(`N.mode`, and a line in modes.log), its arguments (`N.argv`, written
last) and, when it exits 0, `N.ok`.
"""

import os
import signal

from support.programs import nobody_ids

SCRIPT = r"""#!/bin/sh
ulimit -c 0
dir=%(dir)s
n=$(date +%%s%%N).$$
cat > "$dir/calls/$n.body"
sha256sum < "$dir/calls/$n.body" > "$dir/calls/$n.sum"
mode=$(cat "$dir/mode" 2>/dev/null || echo ok)
printf '%%s\n' "$mode" > "$dir/calls/$n.mode"
printf '%%s\n' "$@" > "$dir/calls/$n.tmp"
mv "$dir/calls/$n.tmp" "$dir/calls/$n.argv"
printf '%%s\n' "$mode" >> "$dir/calls/modes.log"
count=$(ls "$dir/calls" | grep -c 'argv$')
case "$mode" in
    ok) : > "$dir/calls/$n.ok"; exit 0 ;;
    exit\ *) exit ${mode#exit } ;;
    hang) exec sleep 600 ;;
    slow) sleep 1; : > "$dir/calls/$n.ok"; exit 0 ;;
    second-fails) [ "$count" = 2 ] && exit 75; : > "$dir/calls/$n.ok"; exit 0 ;;
    detach) setsid sleep 8 & echo $! >> "$dir/calls/detached.pids"; : > "$dir/calls/$n.ok"; exit 0 ;;
    crash) kill -SEGV $$ ;;
    kill) kill -KILL $$ ;;
esac
exit 0
"""


class FakeMta:
    def __init__(self, base):
        self.dir = base / "mta"
        (self.dir / "calls").mkdir(parents=True)
        if os.geteuid() == 0:
            os.chown(self.dir / "calls", *nobody_ids())  # smapd runs it as nobody
        self.path = base / "sendmail"
        self.path.write_text(SCRIPT % {"dir": self.dir})
        self.path.chmod(0o755)
        self.set("ok")

    def set(self, mode):
        tmp = self.dir / "mode.tmp"
        tmp.write_text(mode + "\n")
        tmp.chmod(0o644)
        os.rename(tmp, self.dir / "mode")  # atomic: a call reads one mode or the other

    def met(self, mode) -> int:
        """How many calls have met `mode` so far (cheap: one file read)."""
        try:
            with open(self.dir / "calls" / "modes.log") as f:
                return sum(1 for line in f if line.rstrip("\n") == mode)
        except FileNotFoundError:
            return 0

    def records(self):
        """[(stem, mode, argv, path of the body)] of every call that got as
        far as recording its arguments, in the order they were made."""
        d = self.dir / "calls"
        out = []
        for name in sorted(os.listdir(d)):
            if name.endswith(".argv"):
                stem = name[:-5]
                with open(d / f"{stem}.mode") as f:
                    mode = f.read().strip()
                with open(d / name) as f:
                    argv = f.read().splitlines()
                out.append((stem, mode, argv, d / f"{stem}.body"))
        return out

    def calls(self):
        """[(argv lines, body)] in order."""
        return [(argv, open(body, "rb").read()) for _, _, argv, body in self.records()]

    def succeeded(self, stem) -> bool:
        return os.path.exists(self.dir / "calls" / f"{stem}.ok")

    def kill_detached(self):
        try:
            with open(self.dir / "calls" / "detached.pids") as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        except FileNotFoundError:
            pass
