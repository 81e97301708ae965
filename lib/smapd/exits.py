"""What every program of the suite exits with, and the error that leads
to a configuration's refusal after it has read without error.

What it does: the exit statuses each man page lists; `Unusable`; `run()`,
the wrapper of every program's main (^C exits 130, not a traceback).

What it trusts: nothing; it is data.

What it must never do: import anything of the suite.
"""

from __future__ import annotations

import sys

#: Exit statuses shared by the suite (each man page lists them).
EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


class Unusable(Exception):
    """A configuration that reads without error but cannot be used on
    this machine (a key that will not load, a password file with bad
    lines): the text names the file and the reason."""


def run(main):
    """A console script's body: sys.exit(main()), ^C as exit 130."""
    def wrapper():
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            sys.exit(130)
    return wrapper
