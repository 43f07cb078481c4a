"""The running event loop, looked up once per object instead of once per call.

``asyncio.get_running_loop()`` makes a system call every time: it compares the loop's
process id with ``getpid()`` so that a forked child never uses its parent's loop. A
``getpid`` costs ~0.5 µs on the machines we measure on (a VM, where every system call
pays for its mitigations), and the dispatcher made ~6 of them per delivery through its
own hot paths (a task, a ticket, a request, a row, a slot): counted with
``perf stat -e syscalls:sys_enter_getpid``, 213,065 of its 376,444 system calls while
it delivered 37,000 jobs.

Our services never fork once their loop runs, so an object remembers the loop it first
ran on. It looks again once that loop is closed (tests run one loop per test).
"""

from __future__ import annotations

import asyncio


class LoopRef:
    """``ref()`` is the running loop; call it only from code running on that loop."""

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop
