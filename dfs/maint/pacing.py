"""How fast maintenance may go: a byte-rate pacer, and the repair leader's per-node
budget of copies.

Repair scales with the cluster: every node sends and receives at most
`concurrency` repair copies at once and `rate` bytes/s of them, rather than the
whole cluster sharing one limit. So when a node dies, its blocks come back from
all the nodes that hold copies, to all the nodes with room, in parallel: one
lost node's 1 TiB on a 10-node cluster at the default 200 MiB/s per node is
about 9 sources x 200 MiB/s, some 10 minutes (the disks permitting), not the
90 minutes a single cluster-wide 200 MiB/s would take. HDFS bounds its
re-replication the same way, per DataNode (dfs.namenode.replication.max-streams).
"""

from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio


class Bandwidth:
    """A pacing limit: `acquire(n)` returns when n more bytes fit in `rate` bytes/s
    (0: no limit)."""

    def __init__(self, rate: float):
        self.rate = rate
        self._next = 0.0

    def reserve(self, nbytes: int) -> float:
        """Book n bytes; returns the trio time they may start at."""
        if self.rate <= 0:
            return 0.0
        start = max(trio.current_time(), self._next)
        self._next = start + nbytes / self.rate
        return start

    async def acquire(self, nbytes: int) -> None:
        await trio.sleep_until(self.reserve(nbytes))


class CopyBudget:
    """Per-node limits on repair copies (the `budget` of dfs.maint.repair's copies).

    Args:
      concurrency: copies one node takes part in at once, as source or target.
      rate: bytes/s one node sends, and one node receives, in repair copies (0: no limit).
    """

    def __init__(self, concurrency: int, rate: float):
        self.concurrency = max(1, concurrency)
        self.rate = rate
        self._slots: dict[str, trio.Semaphore] = {}
        self._sending: dict[str, Bandwidth] = {}
        self._receiving: dict[str, Bandwidth] = {}
        self._busy: dict[str, int] = {}

    def busy(self, node_id: str) -> int:
        """Copies the node takes part in now (or waits to)."""
        return self._busy.get(node_id, 0)

    @asynccontextmanager
    async def copy(self, src: str, dst: str, nbytes: int) -> AsyncIterator[None]:
        """Hold a slot on both nodes, and the bytes' turn in what `src` sends and in what
        `dst` receives."""
        nodes = sorted({src, dst})  # one order for everyone: no two copies wait on each other
        for n in nodes:
            self._busy[n] = self._busy.get(n, 0) + 1
        held: list[trio.Semaphore] = []
        try:
            for n in nodes:
                slot = self._slots.setdefault(n, trio.Semaphore(self.concurrency))
                await slot.acquire()
                held.append(slot)
            out = self._sending.setdefault(src, Bandwidth(self.rate)).reserve(nbytes)
            into = self._receiving.setdefault(dst, Bandwidth(self.rate)).reserve(nbytes)
            await trio.sleep_until(max(out, into))
            yield
        finally:
            for slot in held:
                slot.release()
            for n in nodes:
                self._busy[n] -= 1
