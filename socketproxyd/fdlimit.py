# -*- test-case-name: tests.test_fdlimit -*-
"""
The file-descriptor budget: how many connections fit under RLIMIT_NOFILE,
so the proxy stops accepting before it runs out instead of spinning on
EMFILE as the original does.
"""

from __future__ import annotations

import os
import resource

FDS_PER_CONNECTION = 2
FDS_PER_PIPE_PAIR = 4
RESERVE = 16
"""
Descriptors kept free for what else the process opens: resolver threads,
the notify socket, log files.
"""


def raiseSoftLimit() -> int:
    """
    Raise the soft RLIMIT_NOFILE to the hard limit, as a server that may hold
    thousands of sockets should; return the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def openDescriptors() -> int:
    """
    How many fds this process has open now.
    """
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return RESERVE


def connectionCapacity(softLimit: int, inUse: int) -> int:
    """
    How many proxied connections fit in C{softLimit} fds with C{inUse}
    already open and L{RESERVE} kept spare; at least 1.
    """
    if softLimit == resource.RLIM_INFINITY:
        return 2**31
    return max(1, (softLimit - inUse - RESERVE) // FDS_PER_CONNECTION)


def pipeCapacity(softLimit: int, inUse: int, connections: int) -> int:
    """
    How many connections may hold a splice pipe pair at once once
    C{connections} sockets pairs are open; the rest relay through their
    transports.
    """
    if softLimit == resource.RLIM_INFINITY:
        return 2**31
    spare = softLimit - inUse - RESERVE - connections * FDS_PER_CONNECTION
    return max(0, spare // FDS_PER_PIPE_PAIR)
