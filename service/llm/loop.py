"""Process set-up for many connections: uvloop when available (benchmarks/RESULTS.md
measures what it saves) and an open-files limit raised as far as allowed."""

from __future__ import annotations

import asyncio
import importlib
import resource


def install_uvloop() -> bool:
    """Make new event loops uvloop loops; return False (and change nothing) without uvloop."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (thousands of connections need it);
    returns the soft limit now in force, or -1 if it could not be read. Best effort."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return int(target)
        return int(soft)
    except (ValueError, OSError):
        return -1
