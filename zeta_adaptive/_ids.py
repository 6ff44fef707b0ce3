"""Call ids: 32 hex digits, ordered by time and unique across threads and processes, without a syscall.

An id is a 48-bit Unix time in milliseconds, a 48-bit random prefix drawn once per process (again
in a forked child) and a 32-bit per-process counter, in that order (the layout of a UUIDv7 without
its version bits). Ids of one process sort in the order they were made as long as the clock does
not step back; ids of different processes sort by millisecond. Two processes share a prefix with
probability about ``processes**2 / 2**49``. ``uuid.uuid4()`` reads ``os.urandom`` for every id,
which costs a few microseconds on the call path; this costs a clock read and a counter step.
"""

from __future__ import annotations

import itertools
import os
import time

__all__ = ["new_call_id"]

_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    """A fresh prefix and counter, so a forked child never repeats its parent's ids."""
    global _prefix, _counter
    _prefix = os.urandom(6).hex()
    _counter = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_call_id() -> str:
    """A new id: 12 hex digits of milliseconds, 12 of the process prefix, 8 of the counter."""
    return f"{time.time_ns() // 1_000_000:012x}{_prefix}{next(_counter) & 0xFFFFFFFF:08x}"
