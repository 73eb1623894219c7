"""A file's block map: `blocks/<ino>` (inline bytes) and its groups `blocks/<ino>/<g>`.

A small file's bytes may live inline, as the data of its `blocks/<ino>` znode
(see FsConfig.inline_max): they are the file's content from offset 0, the rest
up to its size reads as zeros. They count only while the file has no block refs.
`blocks/<ino>` exists only once a file has had bytes (ZooKeeper's heap pays
~300 B per znode): the commit that first stores some creates it, under the
inode's version check. (Files made before format revision 2 all have one.)
Replaced and dropped refs are queued in `gc/` in the transaction that drops them.
"""

import dataclasses
import errno
import time
import uuid
from dataclasses import dataclass
from typing import Iterable

from dfs.errors import DfsError
from dfs.meta.inodes import Inode, decode, with_attrs
from dfs.meta.store import Conflict, MetaStore
from dfs.meta.writers import Writer, WriterLost
from dfs.records import BlockGroup, BlockRef, GcEntry
from dfs.zk import NoNodeError, Txn
from dfs.zk.reads import Got, Read, Reads

GC_BATCH = 2000  # block refs per gc/ entry (keeps each znode well under 1 MiB)
INLINE_GC_LIMIT = 4 * GC_BATCH  # larger files are handed to gc as a whole inode


@dataclass
class CommitReads:
    """What `commit_blocks` reads first: the inode, then (guarded by its version)
    whether the block map exists, its groups if truncating, and the groups it changes."""

    key: tuple
    reads: Reads
    inode: Read
    map: Read
    children: Read | None
    groups: dict[int, Read]


Prefetched = tuple[CommitReads, Got]


class Diverged(Exception):
    """Someone else committed the file since the version a commit was built on."""

    def __init__(self, node: Inode):
        super().__init__(f"inode {node.ino} is at version {node.version}")
        self.node = node


class BlockMap:
    """Args: store: the session and its commit; writer: the mount's writer record
    (dfs.meta.writers), which every commit of its new blocks fences on (None: gc,
    fsck, tools and tests that write blocks of no writer)."""

    def __init__(self, store: MetaStore, writer: Writer | None = None):
        self.store = store
        self.writer = writer
        self.zk = store.zk
        self.paths = store.paths
        self.config = store.config

    def group_of(self, index: int) -> int:
        return index // self.config.group_blocks

    async def open_file(self, ino: int) -> tuple[Inode, dict[int, BlockRef], bytes | None]:
        """A file's inode, whole block map and inline bytes (or None), usually in one round trip."""
        store = self.store
        mark = store.mark()
        reads = Reads()
        inode, times = reads.get(self.paths.inode(ino)), reads.get(self.paths.dir(ino))
        data = reads.get(self.paths.block_map(ino))
        groups_of = reads.children(self.paths.block_map(ino))
        group0 = reads.get(self.paths.block_group(ino, 0))
        got = await reads.run(self.zk)
        if got[inode] is None:
            raise DfsError(errno.ENOENT, f"no inode {ino}")
        node = decode(ino, got[inode], got[times], store.clean(mark, inode.path, times.path))
        groups = sorted(int(g) for g in got[groups_of] or [])
        refs: dict[int, BlockRef] = {}
        if groups == [0] and got[group0] is not None:
            refs.update(BlockGroup.decode(got[group0][0]).blocks)
        elif groups:
            refs = await self.read_block_map(ino)
        inline = got[data][0] if got[data] is not None and got[data][0] and not refs else None
        node.has_map = got[data] is not None
        return node, refs, inline

    async def read_block_map(self, ino: int) -> dict[int, BlockRef]:
        """All blocks of a file (holes absent)."""
        groups = sorted(await self.store.children(self.paths.block_map(ino)) or [], key=int)
        out: dict[int, BlockRef] = {}
        for got in await self.zk.get_many([self.paths.block_group(ino, int(g)) for g in groups]):
            if got is not None:
                out.update(BlockGroup.decode(got[0]).blocks)
        return out

    def _commit_reads(self, ino: int, indices: Iterable[int], truncate: bool) -> CommitReads:
        touched = sorted({self.group_of(i) for i in indices})
        reads = Reads()
        inode = reads.get(self.paths.inode(ino))
        data = reads.get(self.paths.block_map(ino))
        children = reads.children(self.paths.block_map(ino)) if truncate else None
        groups = {g: reads.get(self.paths.block_group(ino, g)) for g in touched}
        return CommitReads((ino, tuple(touched), truncate), reads, inode, data, children, groups)

    async def prefetch_commit(self, ino: int, indices: Iterable[int]) -> Prefetched:
        """The reads `commit_blocks(ino, updates with these indices)` starts with.

        A writer can run them while its blocks upload and pass the result as
        `prefetched`; the commit's version checks make an early read safe.
        """
        plan = self._commit_reads(ino, indices, False)
        return plan, await plan.reads.run(self.zk)

    async def commit_blocks(self, ino: int, updates: dict[int, BlockRef | None], *,
                            size: int | None = None, truncate_from: int | None = None,
                            mtime_ns: int | None = None, expect_size: int | None = None,
                            prefetched: Prefetched | None = None,
                            inline: bytes | None = None, known: Inode | None = None,
                            expect_version: int | None = None,
                            attrs: dict[str, int] | None = None) -> Inode:
        """Commit new block refs (and size/mtime) of a file in one transaction.

        Args:
          updates: block index -> new ref, or None to punch a hole.
          size: the new file size (None: keep the current one, or grow to cover updates).
          truncate_from: drop every block with index >= this (a shrinking truncate).
          mtime_ns: new mtime (and ctime); None leaves the times alone.
          inline: the file's new inline bytes (b"" clears them; None keeps them
            unless the commit adds block refs, which clears them).
          known: the inode as this client last committed or read it, a file
            with no block refs (and `has_map` known). A commit that touches
            no block groups, or any on a file with no `blocks/<ino>` at all
            (`has_map` False: a file this client made, written for the first
            time), then needs no reads: the inode's version check catches
            anyone who changed the file since (and the commit retries with
            fresh reads).
          expect_version: the inode version the caller built `updates` on; if
            someone else committed since, nothing is written and Diverged is
            raised (the caller lays its writes over what is there now).
          attrs: chmod / chown / utimens made since (`with_attrs` fields, with
            the `ctime_ns` they were made at), committed in the same transaction.
        Replaced and dropped refs are queued in gc/ in the same transaction.
        The inode's `stored` follows the bytes the refs and inline bytes hold.
        Returns the inode as committed (`exact` per the CommitHook).
        Raises ENOENT if the inode is gone, Diverged (see expect_version).
        """

        async def attempt() -> Inode:
            nonlocal prefetched, known
            plan = self._commit_reads(ino, updates, truncate_from is not None)
            got: Got | None = None
            had_map = known.has_map if known is not None else None
            if had_map is not None and (not plan.groups or had_map is False) and truncate_from is None:
                node = Inode(ino, known.rec, known.version)
            else:
                if prefetched is not None and prefetched[0].key == plan.key:
                    plan, got = prefetched  # read while the blocks uploaded (first attempt only)
                else:
                    got = await plan.reads.run(self.zk)
                if got[plan.inode] is None:
                    raise DfsError(errno.ENOENT, f"no inode {ino}")
                node = decode(ino, got[plan.inode], None)
            prefetched = known = None
            if expect_version is not None and node.version != expect_version:
                if got is None:
                    raise Conflict()  # our copy is what is stale: read, then decide
                raise Diverged(node)
            if not node.rec.is_reg:
                raise DfsError(errno.EISDIR if node.rec.is_dir else errno.EINVAL,
                               f"inode {ino} is not a regular file")
            groups: dict[int, tuple | None] = ({g: got[h] for g, h in plan.groups.items()} if got
                                               else dict.fromkeys(plan.groups))  # (blind: none exist)
            if truncate_from is not None:
                assert got is not None and plan.children is not None
                more = sorted(int(g) for g in got[plan.children] or []
                              if (int(g) + 1) * self.config.group_blocks > truncate_from
                              and int(g) not in groups)
                groups.update(zip(more, await self.zk.get_many([self.paths.block_group(ino, g) for g in more])))
            rec = dataclasses.replace(node.rec)
            txn = Txn()
            garbage: list[BlockRef] = []
            stored = 0  # change of the bytes the file's refs hold
            new_inline = inline
            if new_inline is None and any(ref is not None for ref in updates.values()):
                new_inline = b""  # block refs replace inline bytes
            if got is None:
                # blind: the inode's version check guards it
                if had_map:
                    if new_inline is not None:
                        txn.set(self.paths.block_map(ino), new_inline)
                elif new_inline or groups:
                    txn.create(self.paths.block_map(ino), new_inline or b"")
                has_map = had_map or bool(new_inline or groups)
            elif got[plan.map] is None:
                has_map = bool(groups or new_inline)
                if has_map:
                    # in the transaction: a concurrent unlink must not leave a block map behind
                    txn.create(self.paths.block_map(ino), new_inline or b"")
            else:
                has_map = True
                if new_inline is not None and got[plan.map][0] != new_inline:
                    txn.set(self.paths.block_map(ino), new_inline)
            for g in sorted(groups):
                grp, ver = (BlockGroup.decode(groups[g][0]), groups[g][1].version) if groups[g] else (BlockGroup(), -1)
                before = dict(grp.blocks)
                for i, ref in updates.items():
                    if self.group_of(i) != g:
                        continue
                    if ref is None:
                        grp.blocks.pop(i, None)
                    else:
                        grp.blocks[i] = ref
                if truncate_from is not None:
                    for i in [i for i in grp.blocks if i >= truncate_from and i not in updates]:
                        del grp.blocks[i]
                new_ids = {r.id for r in grp.blocks.values()}
                stored += sum(r.length for r in grp.blocks.values()) - sum(r.length for r in before.values())
                garbage.extend(r for r in before.values() if r.id not in new_ids)
                path = self.paths.block_group(ino, g)
                if ver == -1:
                    if grp.blocks:
                        txn.create(path, grp.encode())
                elif grp.blocks:
                    txn.set(path, grp.encode(), ver)
                else:
                    txn.delete(path, ver)
            if size is not None:
                rec.size = size
            else:
                bs = self.config.block_size
                for i, ref in updates.items():
                    if ref is not None:
                        rec.size = max(rec.size, i * bs + ref.length)
            if rec.stored >= 0:  # else written before stored bytes were counted: st_blocks from the size
                if got is None:  # blind: no block refs before (see `known`), its bytes were inline
                    if new_inline is not None or groups:
                        rec.stored = len(new_inline or b"") + stored
                else:
                    if new_inline is not None:
                        old_inline = got[plan.map][0] if got[plan.map] is not None else None
                        stored += len(new_inline) - len(old_inline or b"")
                    rec.stored += stored
            if mtime_ns is not None:
                rec.mtime_ns = mtime_ns
                rec.ctime_ns = max(rec.ctime_ns, mtime_ns)  # the write's time, as the mount showed it
            if attrs:
                rec = with_attrs(rec, **{**attrs, "ctime_ns": max(rec.ctime_ns, attrs.get("ctime_ns", 0))})
            txn.set(self.paths.inode(ino), rec.encode(), node.version)
            self.queue_gc(txn, garbage)
            new = [r.id for r in updates.values() if r is not None]
            fenced = self.writer is not None and self.writer.fence(txn, (r for r in updates.values()
                                                                       if r is not None))
            try:
                exact = await self.store.commit(txn)
            except NoNodeError:
                if fenced and await self.writer.check_gone():
                    raise WriterLost("this mount's writer record is gone (its ZooKeeper session "
                                     "ended): its uncommitted blocks may be collected") from None
                raise
            if self.writer is not None:
                self.writer.settle(new)
            return Inode(ino, rec, node.version + 1, exact, has_map)

        return await self.store.retrying(attempt, "commit blocks")

    def queue_gc(self, txn: Txn, refs: Iterable[BlockRef]) -> None:
        refs = list(refs)
        for i in range(0, len(refs), GC_BATCH):
            batch = {r.id: list(r.replicas) for r in refs[i:i + GC_BATCH]}
            txn.create(self.paths.gc_entry(uuid.uuid4().hex),
                       GcEntry(blocks=batch, queued=time.time()).encode())

    async def drop(self, txn: Txn, ino: int, groups: list[str] | None, group0: tuple | None = None) -> None:
        """Add to txn: delete a file's block map, its blocks to gc/.

        `groups` (the children of `blocks/<ino>`) and `group0` (the first
        group, read speculatively: most files have only that one) must have
        been read after the inode, whose version check (in txn) makes the
        unversioned delete of what we saw complete.
        """
        if groups is None:
            return
        refs: list[BlockRef] = []
        group_deletes = []
        if group0 is not None and groups == ["0"]:
            fetched = [group0]  # read in the same multi-read, after the inode
        else:
            fetched = await self.zk.get_many([self.paths.block_group(ino, int(g)) for g in groups])
        for g, got in zip(groups, fetched):
            path = self.paths.block_group(ino, int(g))
            if got is None:
                raise Conflict(f"block group {path} vanished")
            refs.extend(BlockGroup.decode(got[0]).blocks.values())
            group_deletes.append((path, got[1].version))
            if len(refs) > INLINE_GC_LIMIT:
                # Too many refs for one transaction: gc takes the whole map later
                # (blocks/<ino> stays, for gc only).
                txn.create(self.paths.gc_entry(f"inode-{ino}"),
                           GcEntry(inode=ino, queued=time.time()).encode())
                return
        for path, version in group_deletes:
            txn.delete(path, version)
        txn.delete(self.paths.block_map(ino))
        self.queue_gc(txn, refs)
