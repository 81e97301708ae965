"""The netperm-table and the keywords: what every program reads first.

netperm.py parses the table (FWTK tokenising, rules, host patterns),
keywords.py declares every keyword of every program once, programs.py
finds a program's table and the names it reads it under, manpage.py
renders the keyword lists of the man pages.  Nothing here imports a
program, the skeleton or the admin tool; nothing here opens a socket.
"""
