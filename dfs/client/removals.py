"""unlink and rmdir answered at once, committed in the background (asynchronous removals).

A removal costs two ZooKeeper round trips, one of them a fsynced transaction;
`rm -r` waits for each in turn. Here a removal the kernel has already validated
(the name exists and has the right type: the VFS checks both from its dentry)
is answered at once (the idea of CephFS's async dirops) and one background task
commits what has queued up meanwhile, in order, as one read trip and one
transaction (`ClientView.remove_many`): the more removals queue, the bigger the batch.

Semantics, as a program on this mount sees them:
- A removed name is gone at once: lookups and listings here hide it
  (`pending`) until its commit lands, then ZooKeeper agrees.
- Order where it matters: removals commit in the order they were made (one
  worker; a transaction applies its operations in order), and a namespace
  change in a directory (create, mkdir, link, rename, a synchronous removal)
  first waits for that directory's pending removals (`wait_dir`).
- An rmdir is asynchronous only if this mount listed the directory less than
  `ClientView.listing_ttl` ago and removed everything the listing showed
  (`ClientView.known_empty`); otherwise it is synchronous and reports
  ENOTEMPTY as usual.
- `drain()` waits for everything (fsyncdir, unmount, SIGTERM).
- A mount killed by SIGKILL loses the removals still pending (the names come
  back): new removals wait while the oldest one not committed is older than
  WINDOW (50 ms), so about that much plus the batch in flight (`dfs bench
  --window` measures it).
- What other mounts see: the removal, once committed (milliseconds later).
- If a commit fails after the caller was told it succeeded (another mount
  created an entry in a directory being removed, ZooKeeper unreachable for
  longer than the operation timeout), the entry stays, the failure is logged,
  and the next fsyncdir reports EIO. No data is lost: a failed removal leaves
  the entry in place.
"""

import collections
import errno
import logging
import time

import trio

from dfs.client.view import ClientView
from dfs.client.window import WINDOW, admit as admit_within
from dfs.errors import DfsError, ZkUnavailable

log = logging.getLogger(__name__)


class Removals:
    """Background unlink/rmdir for one client.

    Args:
      view: the client's namespace.
      max_pending: removals accepted but not committed before callers wait.
      batch: most removals in one transaction.
    """

    def __init__(self, view: ClientView, *, max_pending: int = 1024, batch: int = 256,
                 window: float = WINDOW):
        self.view = view
        self.batch = batch
        self.window = window
        self._since: dict[tuple[int, bytes], float] = {}  # when each pending removal was made
        self.pending: dict[tuple[int, bytes], str] = {}  # (parent, name) -> "unlink" | "rmdir"
        self._per_dir: collections.Counter[int] = collections.Counter()
        # inodes a pending removal changes (nlink): their attributes wait for it
        self._per_inode: collections.Counter[int] = collections.Counter()
        self._ino_of: dict[tuple[int, bytes], int] = {}
        self._changed = trio.Condition()
        self._slots = trio.Semaphore(max_pending)
        self._send, self._recv = trio.open_memory_channel[tuple[str, int, bytes]](max_pending)
        self.failures = 0  # commits that failed after their caller was told "done"
        self.stats = {"async": 0, "sync": 0, "batches": 0}

    async def run(self) -> None:
        """The worker: commit what is queued, a batch at a time (start it in a nursery)."""
        async for first in self._recv:
            batch = [first]
            while len(batch) < self.batch:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self._commit_batch(batch)
            finally:
                for op, parent, name in batch:
                    self.pending.pop((parent, name), None)
                    self._since.pop((parent, name), None)
                    self._per_dir[parent] -= 1
                    if not self._per_dir[parent]:
                        del self._per_dir[parent]
                    ino = self._ino_of.pop((parent, name), None)
                    if ino is not None:
                        self._per_inode[ino] -= 1
                        if not self._per_inode[ino]:
                            del self._per_inode[ino]
                        self.view.forget(ino)
                    self._slots.release()
                async with self._changed:
                    self._changed.notify_all()

    # -- what the mount asks

    def hidden(self, parent: int, name: bytes) -> bool:
        return (parent, name) in self.pending

    def changing(self, ino: int) -> bool:
        return self._per_inode[ino] > 0

    async def wait_inode(self, ino: int) -> None:
        """Wait until no pending removal changes inode ino (its nlink is then ZooKeeper's)."""
        async with self._changed:
            while self._per_inode[ino]:
                await self._changed.wait()

    def busy(self, d: int) -> bool:
        """Whether something of this client's is pending in directory d."""
        return self._per_dir[d] > 0

    async def wait_dir(self, *dirs: int) -> None:
        """Wait until no removal is pending in any of these directories."""
        async with self._changed:
            while any(self._per_dir[d] for d in dirs):
                await self._changed.wait()

    async def drain(self) -> None:
        async with self._changed:
            while self.pending:
                await self._changed.wait()

    async def unlink(self, parent: int, name: bytes) -> None:
        await self._enqueue("unlink", parent, name)

    async def rmdir(self, parent: int, name: bytes) -> None:
        ino = self.view.hints.get((parent, name))
        if ino is None or not self.view.known_empty(ino):
            # we cannot vouch for its emptiness: ask ZooKeeper, report ENOTEMPTY now
            self.stats["sync"] += 1
            await self.wait_dir(parent)
            if ino is not None:
                await self.wait_dir(ino)
            await self.view.rmdir(parent, name)
            self.view.removed_from(parent)
            return
        await self._enqueue("rmdir", parent, name)

    async def _admit(self) -> None:
        """Wait while the oldest pending change is older than the window (dfs.client.window)."""
        await admit_within(self.pending, self._since, self.window, self._changed)

    async def _enqueue(self, op: str, parent: int, name: bytes) -> None:
        await self._admit()
        await self._slots.acquire()
        key = (parent, name)
        if key in self.pending:  # the kernel raced us: that removal is already on its way
            self._slots.release()
            raise DfsError(errno.ENOENT, f"no entry {name!r}")
        self.stats["async"] += 1
        self.pending[key] = op
        self._since[key] = time.monotonic()
        self._per_dir[parent] += 1
        ino = self.view.hints.get(key)
        if ino is not None:
            self._ino_of[key] = ino
            self._per_inode[ino] += 1
        self.view.removed_from(parent)
        self.view.changed_dir(parent, time.time_ns(), -1 if op == "rmdir" else 0)
        self._send.send_nowait((op, parent, name))

    # -- the background

    async def _commit_batch(self, batch: list[tuple[str, int, bytes]]) -> None:
        self.stats["batches"] += 1
        try:
            left = await self.view.remove_many(batch)
        except Exception as e:
            # a conflict or error anywhere fails the whole transaction: one by one
            log.debug("batch of %d removals failed (%r): one at a time", len(batch), e)
            left = batch
        unreachable = 0
        for op, parent, name in left:
            unreachable += await self._commit(op, parent, name)
        if unreachable:  # one line for the batch, not one per name
            log.error("%d background removal(s) failed after they were reported done: ZooKeeper "
                      "unreachable (the entries stay)", unreachable)

    async def _commit(self, op: str, parent: int, name: bytes) -> bool:
        """Commit one removal; True if it failed because ZooKeeper is unreachable."""
        try:
            if op == "unlink":
                await self.view.unlink(parent, name)
            else:
                await self.view.rmdir(parent, name)
        except ZkUnavailable:
            self.failures += 1
            return True
        except DfsError as e:
            if e.errno == errno.ENOENT:
                return False  # gone already (another client removed or renamed it)
            self.failures += 1
            log.error("background %s of %r in directory %d failed after it was reported done: %s",
                      op, name, parent, e)
        except Exception:
            self.failures += 1
            log.exception("background %s of %r in directory %d crashed", op, name, parent)
        return False

    def take_failures(self) -> int:
        n, self.failures = self.failures, 0
        return n
