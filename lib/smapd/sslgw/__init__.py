"""ssl-gw, the TLS wrapper with stunnel 3.x's command line: the gateway
(gateway.py: letters, inetd mode, its side of the skeleton), the two-way
relay (relay.py) and TCP wrappers (tcpwrap.py).
"""
