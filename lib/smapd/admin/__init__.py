"""smapctl, the administration tool (main.py): check (check.py), the
queue commands (queue.py), certificates (certs.py), and the maildrop
delivery of the demo (maildrop.py).  It may import any layer; no program
imports it.
"""
