"""Garbage collection, run by the repair leader: space comes back after rm.

- `gc/` entries (queued by the transaction that dropped the references) are
  collected at once: their blocks are deleted from the nodes listed.
- Orphans: blocks on a node that no block map references *at that node*
  (left by a crashed client or node, or a stale copy on a node that came back
  after its blocks were re-replicated elsewhere). A mount uploads blocks before
  it commits the map (at close), so an unreferenced block may be a write in
  progress. The writer records (dfs.meta.writers) tell: a block of a writer
  that is gone, or below its watermark, can never be committed, so if no map
  references it anywhere it goes at once; if the map lists it on other nodes
  only (a stale copy), once it is `stale_replica_age` old (a copy a repair made
  elsewhere and has not committed yet is younger). Any other block (ids of no
  writer: tools, older mounts) counts only once older than `orphan_age`. Every
  node is checked every `orphan_interval` seconds, a node that comes back at
  once, and every node when a writer record vanishes (a mount ended).
- Unlinked-while-open inodes whose holders are all gone (their mount died):
  `open/<ino>` has no children left, so the inode and its blocks are released.
- Trash entries older than the filesystem's `trash_days` (re-read each time:
  `dfs config set` changes it) are purged: their blocks go to gc/ (dfs.meta.trash).
"""

import logging
import time

import trio

from dfs.config import FsConfig, NodeSettings
from dfs.errors import DfsError
from dfs.maint.cluster import RepairContext
from dfs.maint.gc import collect_gc_entry
from dfs.maint.scan import block_groups
from dfs.meta import Meta
from dfs.meta.writers import read_marks, writer_seqs
from dfs.records import GcEntry
from dfs.zk import NoNodeError

log = logging.getLogger(__name__)

WRITER_SCAN_SPACING = 10.0  # s between the node checks that vanished writer records start


class GcCollector:
    """The leader's garbage collection.

    Args:
      ctx: repair context of this node.
      settings: the node's knobs: orphan age and interval (default: the
        filesystem's orphan_age, and half of it within 10 s .. 10 min).
      maintenance_lock: held for each orphan scan; the repairer holds it for
        its passes (an orphan scan's picture of the maps must not be outrun by
        a repair that adds a replica).
      interval: seconds between looks at `gc/`.
      concurrency: gc entries collected at once.
    """

    def __init__(self, ctx: RepairContext, settings: NodeSettings, *,
                 maintenance_lock: trio.Lock, interval: float = 1.0, concurrency: int = 4):
        self.ctx = ctx
        self.interval = interval
        self.orphan_age = (ctx.config.orphan_age if settings.orphan_age is None
                           else settings.orphan_age)
        self.orphan_interval = (max(10.0, min(600.0, self.orphan_age / 2))
                                if settings.orphan_interval is None else settings.orphan_interval)
        self.concurrency = concurrency
        self.pending = 0
        self.orphans_deleted = 0
        self.last_orphan_scan = 0.0
        self.stale_age = settings.stale_replica_age
        self._check_nodes: set[str] = set()
        self._recheck: dict[str, float] = {}  # node -> when to look again (stale copies young then)
        self._writers: tuple[int, set[int]] | None = None  # cversion, sequences, at the last look
        self._writer_scan_due = 0.0
        self._wake = trio.Event()
        self.maintenance_lock = maintenance_lock
        self._unheld: set[int] = set()  # open/<ino> with no holder at the last check

    def node_returned(self, node_id: str) -> None:
        """Called by the observer: look for orphans on this node soon."""
        self._check_nodes.add(node_id)
        self._wake.set()

    def status(self) -> dict:
        return {"gc_pending": self.pending, "orphans_deleted": self.orphans_deleted,
                "orphan_age": self.orphan_age}

    async def run(self) -> None:
        last_open_check = 0.0
        while True:
            try:
                await self.collect_queue()
                if time.monotonic() - last_open_check > 10 * self.interval:
                    last_open_check = time.monotonic()
                    await self.release_dead_holders()
                    await self.expire_trash()
                await self.watch_writers()
                now = time.monotonic()
                for node_id, when in list(self._recheck.items()):
                    if when <= now:
                        del self._recheck[node_id]
                        self._check_nodes.add(node_id)
                due = time.monotonic() - self.last_orphan_scan > self.orphan_interval
                if due or self._check_nodes:
                    nodes = None if due else set(self._check_nodes)
                    self._check_nodes.clear()
                    async with self.maintenance_lock:
                        await self.collect_orphans(nodes)
            except DfsError as e:
                log.warning("gc: %s", e)
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()

    async def collect_queue(self) -> int:
        """Collect every entry in gc/ (bounded concurrency). Returns replicas deleted."""
        try:
            names = await self.ctx.zk.get_children(self.ctx.paths.gc)
        except NoNodeError:
            return 0
        self.pending = len(names)
        deleted = 0
        limiter = trio.CapacityLimiter(self.concurrency)

        async def one(name: str) -> None:
            nonlocal deleted
            async with limiter:
                try:
                    n = await collect_gc_entry(self.ctx, name)
                except DfsError as e:
                    log.warning("gc entry %s: %s", name, e)
                    return
            deleted += n
            self.pending -= 1

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        if deleted:
            log.info("gc: deleted %d replicas from %d entries", deleted, len(names))
        return deleted

    async def release_dead_holders(self) -> None:
        """Unlinked inodes left open by mounts that died: release them."""
        zk, paths = self.ctx.zk, self.ctx.paths
        try:
            inos = [int(i) for i in await zk.get_children(paths.open) if i.isdigit()]
        except NoNodeError:
            return
        if not inos:
            self._unheld = set()
            return
        holders = await zk.children_many([paths.open_dir(i) for i in inos])
        meta = Meta(zk, paths, self.ctx.config, mount_id="repair-leader")
        # Only those nobody held at the last check either: a mount whose session
        # expired holds its open files again as soon as it has a new one.
        unheld, before = {i for i, h in zip(inos, holders) if h == []}, self._unheld
        self._unheld = unheld
        for ino in sorted(unheld & before):
            try:
                await meta.namespace.release_orphan(ino)
                log.info("released inode %s: every mount holding it open is gone", ino)
            except DfsError as e:
                log.warning("could not release inode %s: %s", ino, e)

    async def expire_trash(self) -> int:
        """Purge the trash entries older than trash_days. Returns how many."""
        zk, paths = self.ctx.zk, self.ctx.paths
        try:
            days = FsConfig.decode((await zk.get(paths.config))[0]).trash_days
        except NoNodeError:
            return 0
        meta = Meta(zk, paths, self.ctx.config, mount_id="repair-leader")
        count, size = await meta.trash.purge_older(days * 86400.0 if days > 0 else 0.0)
        if count:
            log.info("trash: purged %d entries (%d bytes) older than %g days", count, size, days)
        return count

    async def watch_writers(self) -> None:
        """A writer record vanished (a mount ended): check every node soon (at
        most every WRITER_SCAN_SPACING s); its uncommitted blocks are garbage now."""
        st = await self.ctx.zk.exists(self.ctx.paths.writers)
        if st is None or (self._writers is not None and self._writers[0] == st.cversion):
            return
        try:
            names = await self.ctx.zk.get_children(self.ctx.paths.writers)
        except NoNodeError:
            return
        seqs = set(writer_seqs(names))
        before = self._writers
        self._writers = (st.cversion, seqs)
        if before is None or before[1] - seqs:  # (a new leader: ends it missed)
            now = time.monotonic()
            when = max(now, self._writer_scan_due)
            self._writer_scan_due = when + WRITER_SCAN_SPACING
            for node_id in self.ctx.nodedir.live():
                self._recheck[node_id] = min(self._recheck.get(node_id, when), when)

    async def _referenced(self) -> tuple[dict[str, tuple[str, ...]], set[str]]:
        """block id -> replicas of every block map, and every block id queued in gc/."""
        refs: dict[str, tuple[str, ...]] = {}
        async for _ino, _g, grp, _st in block_groups(self.ctx.zk, self.ctx.paths):
            for ref in grp.blocks.values():
                refs[ref.id] = tuple(ref.replicas)
        queued: set[str] = set()
        try:
            names = await self.ctx.zk.get_children(self.ctx.paths.gc)
        except NoNodeError:
            names = []
        for item in await self.ctx.zk.get_many([self.ctx.paths.gc_entry(n) for n in names]):
            if item is not None:
                queued.update(GcEntry.decode(item[0]).blocks)
        return refs, queued

    async def collect_orphans(self, node_ids: set[str] | None = None) -> int:
        """Delete the blocks that no map references at their node and that no
        one can commit any more (see the module's doc). Returns how many."""
        started = time.time()
        if node_ids is None:
            self.last_orphan_scan = time.monotonic()
        live = self.ctx.nodedir.live()
        targets = [n for n in (node_ids if node_ids is not None else live) if n in live]
        if not targets:
            return 0
        # The writer records first, then the maps, both after noting the time: a
        # block older than `started - orphan_age` that is referenced was committed
        # before we read its map, and so was a block its writer had settled.
        marks = await read_marks(self.ctx.zk, self.ctx.paths)
        refs, queued = await self._referenced()
        cutoff = started - self.orphan_age
        stale_cutoff = started - self.stale_age
        deleted = 0
        for node_id in targets:
            doomed = []
            young = False
            try:
                async for block_id, _length, _csum, mtime in self.ctx.blocks.list_blocks(node_id):
                    if block_id in queued:
                        continue
                    holders = refs.get(block_id)
                    if holders is not None and node_id in holders:
                        continue
                    if marks.settled(block_id):
                        if holders is None or mtime < stale_cutoff:
                            doomed.append(block_id)
                        else:
                            young = True  # a stale copy, or a repair's not committed yet
                    elif mtime < cutoff:
                        doomed.append(block_id)
            except DfsError as e:
                log.info("cannot list blocks of node %s: %s", node_id, e)
                continue
            if young:
                self._recheck[node_id] = time.monotonic() + self.stale_age + 1
            for block_id in doomed:
                try:
                    await self.ctx.blocks.delete_block(node_id, block_id)
                    deleted += 1
                except DfsError:
                    pass
            if doomed:
                await self.ctx.audit.append("orphan", src=[node_id], reason="unreferenced",
                                            blocks=len(doomed))
                log.info("gc: deleted %d orphan blocks from node %s", len(doomed), node_id)
        self.orphans_deleted += deleted
        return deleted
