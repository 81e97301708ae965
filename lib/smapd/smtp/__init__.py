"""SMTP for smap: the pure protocol state machine and the socket session."""
