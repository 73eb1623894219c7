"""Background scrub: re-read and re-hash this node's replicas at a bounded rate.

Corruption of a file nobody reads would otherwise wait for `fsck --verify-data`.
Every replica is verified once per `period`, the longest unverified first, at
most `rate` bytes/s, and only while the node serves no request, or after a short
wait when it stays busy (idle-first). A replica counts as verified when it was
written (the node hashed it as it took it), so the scrub adds no reads right
after writes (nor in short-lived test clusters) and coverage does not dip on a
busy cluster; its first re-read comes one period later. A mismatch is
reported exactly as a failed read reports it (a CorruptReport under
repair/corrupt): the repair leader confirms it and replaces the replica.

What was verified when is kept in `scrub.json` in the data directory, so a
restart resumes rather than starting over (losing it costs a re-read, not
safety: it is rewritten every minute, without fsync). Coverage (`figures`): the share of
stored bytes verified within the last `period` and the age of the replica
longest without verification; the node publishes both in its live znode
(`dfs status`) and as metrics.
"""

import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Awaitable, Callable

import trio

from dfs import metrics
from dfs.errors import DfsError
from dfs.maint.pacing import Bandwidth
from dfs.records import BlockRef
from nodes.store import BlockInfo, BlockStore

log = logging.getLogger(__name__)

# s between saves of the verification record, and between coverage recomputations:
# each walks every replica (~1 s, ~2.5 s for a million in a worker thread)
SAVE_EVERY = 60.0
MEASURE_EVERY = 30.0
BUSY_WAIT = 1.0  # s the scrub yields to requests before it reads anyway
RELIST_EVERY = 600.0  # s at most between listings (coverage follows deletes and new blocks)


class Scrubber:
    """Verifies one store's replicas; `run()` forever (cancel to stop).

    Args:
      store: the opened block store.
      node_id: this node (named in corrupt reports).
      report: `async def(ref, node_id, reason)`, BlockClient.report_corrupt.
      rate: bytes/s to re-read at most (0: no scrub).
      period: seconds within which every replica is verified once.
      busy: True while the node serves requests (the scrub waits for a pause).
    """

    def __init__(self, store: BlockStore, node_id: str,
                 report: Callable[[BlockRef, str, str], Awaitable[None]], *, rate: float,
                 period: float, busy: Callable[[], bool]):
        self.store = store
        self.node_id = node_id
        self.report = report
        self.rate = rate
        self.period = period
        self.busy = busy
        self.state_path = Path(store.root) / "scrub.json"
        self.verified: dict[str, float] = {}  # block id -> wall-clock time of its last good check
        self.listing: dict[str, BlockInfo] = {}
        self.damaged: dict[str, float] = {}  # reported block id -> mtime: not again until rewritten
        self._figures: dict = {}

    def figures(self) -> dict:
        """Coverage for the live znode: {} until the first measurement (or with no scrub)."""
        return self._figures

    def _last(self, info: BlockInfo) -> float:
        """When the replica was last verified: by the scrub, or when it was (re)written."""
        return max(self.verified.get(info.block_id, 0.0), info.mtime)

    def _measure(self) -> None:
        now = time.time()
        stored = sum(i.length for i in self.listing.values())
        fresh = sum(i.length for i in self.listing.values() if now - self._last(i) < self.period)
        oldest = max((now - self._last(i) for i in self.listing.values()), default=0.0)
        coverage = fresh / stored if stored else 1.0
        self._figures = {"coverage": coverage, "oldest_unverified": max(oldest, 0.0),
                         "period": self.period, "stored_bytes": stored, "rate": self.rate}
        metrics.SCRUB_COVERAGE.set(coverage)
        metrics.SCRUB_OLDEST.set(max(oldest, 0.0))

    def _load(self) -> None:
        try:
            self.verified = {str(k): float(v) for k, v in
                             json.loads(self.state_path.read_text())["verified"].items()}
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("scrub: ignoring unreadable %s (%s): verifying everything again",
                        self.state_path, e)

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"revision": 1, "verified": self.verified}))
        tmp.replace(self.state_path)

    def _list(self) -> None:
        # stat only (sizes weigh the coverage and pace the reads): cheap enough to repeat
        self.listing = {b: BlockInfo(b, size, 0, mtime) for b, size, mtime in self.store.files()}
        self.verified = {b: t for b, t in self.verified.items() if b in self.listing}
        self.damaged = {b: t for b, t in self.damaged.items()
                        if b in self.listing and self.listing[b].mtime == t}

    def _verify(self, block_id: str) -> None:
        """Re-read from the disk, not the page cache, and re-hash (a worker thread)."""
        try:
            fd = os.open(self.store.path(block_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DfsError(errno.ENOENT, f"no block {block_id}") from None
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        self.store.verify(block_id)

    async def run(self) -> None:
        if self.rate <= 0:
            log.info("scrub disabled (DFS_SCRUB_RATE=0)")
            return
        pace = Bandwidth(self.rate)
        await trio.to_thread.run_sync(self._load)
        while True:
            due = await trio.to_thread.run_sync(self._plan)
            saved = measured = trio.current_time()
            for block_id in due:
                waited = 0.0
                while self.busy() and waited < BUSY_WAIT:
                    await trio.sleep(0.05)
                    waited += 0.05
                await pace.acquire(max(self.listing[block_id].length, 1))
                await self._check(block_id)
                if trio.current_time() - measured > MEASURE_EVERY:
                    await trio.to_thread.run_sync(self._measure)
                    measured = trio.current_time()
                if trio.current_time() - saved > SAVE_EVERY:
                    await trio.to_thread.run_sync(self._save)
                    saved = trio.current_time()
            if due:
                await trio.to_thread.run_sync(self._save)
            # look again when the oldest falls due (new replicas count as verified);
            # meanwhile the figures age
            next_due = await trio.to_thread.run_sync(self._next_due)
            wake = time.time() + min(max(next_due - time.time(), 0.5), RELIST_EVERY)
            while time.time() < wake:
                await trio.to_thread.run_sync(self._measure)
                await trio.sleep(max(0.0, min(wake - time.time(), MEASURE_EVERY)))

    def _plan(self) -> list[str]:
        """List the store, measure, and return the block ids due, longest unverified first.
        (A worker thread: only the scrub's own task touches the listing and the record.)"""
        self._list()
        self._measure()
        now = time.time()
        return [b for _, b in sorted((self._last(i), b) for b, i in self.listing.items()
                                     if now - self._last(i) >= self.period and b not in self.damaged)]

    def _next_due(self) -> float:
        return min((self._last(i) for b, i in self.listing.items() if b not in self.damaged),
                   default=time.time()) + self.period

    async def _check(self, block_id: str) -> None:
        info = self.listing[block_id]
        try:
            await trio.to_thread.run_sync(self._verify, block_id)
        except DfsError as e:
            if e.errno == errno.ENOENT:  # deleted since the listing
                self.listing.pop(block_id, None)
                return
            metrics.SCRUB_MISMATCHES.inc()
            log.warning("scrub: replica of block %s is damaged (%s): reporting it", block_id, e)
            ref = BlockRef(id=block_id, length=info.length, checksum="", replicas=[self.node_id])
            await self.report(ref, self.node_id, f"scrub: {e.message}")
            self.damaged[block_id] = info.mtime
            return
        metrics.SCRUB_BYTES.inc(info.length)
        self.verified[block_id] = time.time()
