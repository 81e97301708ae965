"""The serving skeleton shared by smap and ssl-gw: the root master that
binds the listeners and keeps a pool of jailed children (master.py), the
shared-memory scoreboard, the pid file, and the jail itself (privsep.py,
the only module that calls chroot, setgroups, setgid and setuid).  It
knows no protocol: a program plugs in as a `Service`.
"""
