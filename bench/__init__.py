"""Sealroom's benchmark suite: `python -m bench` (or `make bench`).

The figure that counts is the server's own CPU time per unit of work, read from
/proc/PID/stat, because the load generator shares the machine's cores with the server.
"""
