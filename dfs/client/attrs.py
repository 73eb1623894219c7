"""chmod, chown and utimens answered at once, committed in the background (the attribute journal).

tar, cp -a and rsync set times, owner and mode on every directory they make
and rsync on every file after its close, each a synchronous ZooKeeper
transaction before. Here such a change of an inode this mount knows exactly
(the change feed runs and vouches for its cached copy) is answered at once:
the kernel is told the new attributes (mount.kernel lays `fields` over what the
view has), and one background task commits what has queued up, many inodes
per transaction (`Inodes.setattr_many`, each version-checked), while the next
changes queue. Changes of a file being written go with its own commit instead
(FileData.fold_attrs).

Semantics, as a program on this mount sees them:
- The new attributes show at once, here.
- Committed as soon as the batch before it is (no timer): at idle a
  transaction's time (a millisecond or two) after the call returned. Before
  returning, fsync and close of that file, fsyncdir and unmount commit what is
  pending (`drain`); a rename of that inode commits it first (the name
  appears with its attributes: rsync renames its finished temporary file into place).
- A mount killed by SIGKILL loses only what was still pending: new changes
  wait (`admit`) while the oldest one not committed is older than WINDOW
  (50 ms), so about that much plus the batch in flight (`dfs bench --window`
  measures it).
- What other mounts see: the change, once committed, as any other commit.
- If an inode changed under the batch (another mount committed it), that
  inode's change is made on what is there now (the fields set here win);
  if it is gone, the change is dropped; a commit that fails after the caller
  was told it succeeded (ZooKeeper unreachable beyond the operation timeout)
  is logged and the next fsyncdir reports EIO.
"""

import errno
import itertools
import logging
import time
from typing import Callable

import trio

from dfs.client.view import ClientView
from dfs.client.window import WINDOW, admit as admit_within
from dfs.errors import DfsError, ZkUnavailable
from dfs.meta import acl
from dfs.meta.inodes import Inode

log = logging.getLogger(__name__)


class AttrJournal:
    """Background setattr for one client.

    Args:
      view: the client's namespace (exactness, the feed, its setattr).
      batch: most inodes in one transaction.
      max_pending: inodes with changes not committed before new ones are synchronous.
    """

    def __init__(self, view: ClientView, *, batch: int = 200, max_pending: int = 4096,
                 window: float = WINDOW):
        self.view = view
        self.batch = batch
        self.max_pending = max_pending
        self.window = window
        self._since: dict[int, float] = {}  # ino -> when its pending change was first queued
        self.pending: dict[int, dict[str, int]] = {}  # ino -> with_attrs fields, ctime_ns included
        self.on_committed: Callable[[Inode], None] | None = None  # FileData.saw_own_change
        self._wake = trio.Event()
        self._changed = trio.Condition()
        self.failures = 0  # changes that failed after their caller was told "done"
        self._failed: set[int] = set()  # their inodes, until a drain of one reports it
        self.stats = {"queued": 0, "batches": 0, "single": 0}

    def queue(self, ino: int, fields: dict[str, int]) -> Inode | None:
        """Take the change if this mount knows the inode exactly; returns the inode
        to show (the kernel side lays `fields_of` over it), or None: commit it now."""
        if ino not in self.pending and len(self.pending) >= self.max_pending:
            return None
        if not self.view.feed.active:
            return None
        known = self.view.known(ino)
        if known is None or not known.exact:
            return None
        if "mode" in fields and known.inode.rec.xattrs:
            return None  # an ACL may have to follow the mode: Inodes.setattr does that
        if ino not in self.pending:
            self._since[ino] = time.monotonic()
        got = self.pending.setdefault(ino, {})
        got.update(fields)
        got["ctime_ns"] = fields.get("ctime_ns", time.time_ns())
        self.stats["queued"] += 1
        self._wake.set()
        return known.inode

    def queue_access_acl(self, ino: int, value: bytes) -> bool:
        """setxattr of an access ACL that says no more than a mode (acl.is_minimal),
        on an inode with no ACL stored: a chmod, queued as `queue` queues one."""
        known = self.view.known(ino)
        if known is None or not known.exact or known.inode.rec.xattrs or not acl.is_minimal(value):
            return False
        mode = (self.pending.get(ino) or {}).get("mode", known.inode.rec.mode)
        return self.queue(ino, {"mode": acl.mode_of(value, mode)}) is not None

    async def admit(self) -> None:
        """Wait while the oldest pending change is older than the window (dfs.client.window)."""
        await admit_within(self.pending, self._since, self.window, self._changed)

    def fields_of(self, ino: int) -> dict[str, int] | None:
        return self.pending.get(ino)

    def take(self, ino: int) -> dict[str, int]:
        """The pending change of ino, to commit now with a synchronous one."""
        got = self.pending.pop(ino, None) or {}
        self._since.pop(ino, None)
        got.pop("ctime_ns", None)
        return got

    async def drain(self, ino: int | None = None, *, report: bool = True) -> None:
        """Wait until ino's change (None: every change) is committed. Raises EIO if
        ino's failed after it was acknowledged: its next close or fsync reports it,
        once (`report`); a kernel RELEASE, whose error goes nowhere, passes
        report=False and leaves it to them."""
        async with self._changed:
            while ino in self.pending if ino is not None else self.pending:
                self._wake.set()
                await self._changed.wait()
        if ino is not None and ino in self._failed:
            if report:
                self._failed.discard(ino)
            raise DfsError(errno.EIO, f"inode {ino}: a chmod, chown or utimens could not be "
                                      "committed (see the mount log)")

    def forget_failure(self, ino: int) -> None:
        """The file's last handle is gone: no close or fsync is left to report to."""
        self._failed.discard(ino)

    def take_failures(self) -> int:
        n, self.failures = self.failures, 0
        self._failed.clear()
        return n

    async def run(self) -> None:
        """The worker (start it in a nursery): commit what is pending, a batch at a time."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self.pending:
                batch = {ino: dict(f) for ino, f in itertools.islice(self.pending.items(), self.batch)}
                await self._commit(batch)
                for ino, f in batch.items():
                    if self.pending.get(ino) == f:  # (changed again meanwhile: goes in the next batch)
                        del self.pending[ino]
                        self._since.pop(ino, None)
                async with self._changed:
                    self._changed.notify_all()

    async def _commit(self, batch: dict[int, dict[str, int]]) -> None:
        self.stats["batches"] += 1
        known, single = [], []
        for ino, fields in batch.items():
            k = self.view.known(ino)
            (known if k is not None and k.exact else single).append((k.inode if k else None, ino, fields))
        if known:
            try:
                for node in await self.view.setattr_many([(node, fields) for node, _, fields in known]):
                    self._committed(node)
            except Exception as e:
                # one changed or vanished inode fails the whole transaction: one by one
                log.debug("batch of %d attribute changes failed (%r): one at a time", len(known), e)
                single.extend(known)
        unreachable = 0
        for _, ino, fields in single:
            self.stats["single"] += 1
            try:
                self._committed(await self.view.setattr(ino, **fields))
            except ZkUnavailable:
                self.failures += 1
                self._failed.add(ino)
                unreachable += 1
            except DfsError as e:
                if e.errno != errno.ENOENT:  # (removed meanwhile: nothing to change)
                    self.failures += 1
                    self._failed.add(ino)
                    log.error("background setattr of inode %d failed after it was reported done: %s",
                              ino, e)
        if unreachable:  # one line for the batch, not one per inode
            log.error("%d background attribute change(s) failed after they were reported done: "
                      "ZooKeeper unreachable", unreachable)

    def _committed(self, node: Inode) -> None:
        if self.on_committed is not None:
            self.on_committed(node)
