"""smap, the SMTP receiver: the pure protocol state machine (protocol.py,
with its SASL decoding, sasl.py), the socket side (session.py), the
checks (policy.py; dns_checks.py, DNSBLs and NS-required; spamdb.py;
password_file.py), the trace header (received.py), and smap's side of
the skeleton (service.py, inetd.py), started by main.py.  It writes the spool through
smapd.spool and never reads the spool back.
"""
