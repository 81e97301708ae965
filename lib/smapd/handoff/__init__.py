"""smapd, the hand-off: the spool runner (runner.py) and the delivery of
one claimed spool file to the MTA (deliver.py), started by daemon.py.
It reads and marks spool files through smapd.spool; it never imports
smap's protocol or the admin tool.
"""
