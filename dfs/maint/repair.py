"""Repair primitives shared by the repair leader (nodes/) and `dfs fsck --repair` (tools/).

Every change to a block map follows the same pattern: read the group, do the
slow work (copy a replica, delete from a node) without holding anything, then
commit the new replica list with a version check on the group after re-reading
it. If the block at that index is no longer the same block (the file was
rewritten, truncated or removed meanwhile) the copies just made are garbage and
are deleted; nothing else is touched. Every step is idempotent, so two repairers
racing (a leader change, fsck next to the leader) cost work, never data.

Rules about replicas (DESIGN.md section 5):
- A replica *counts* when its node is live, `active` and the replica is not
  known bad. Replicas on draining nodes serve as copy sources but do not count.
- A block map records exactly the replicas that hold the block: when a block is
  back at full count, replicas on nodes that are gone, draining or known bad
  leave the map in the same commit (those on reachable nodes are then deleted;
  copies left on unreachable nodes become orphans, collected once they return).
- A map never loses its last replica through `drop_replicas`.

Audit log: every repair action appends a small JSON record under
`repair/audit` (sequential znodes), trimmed to the last AUDIT_KEEP.
"""

import errno
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Collection, Iterable

import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.paths import FsPaths
from dfs.placement import place_replicas
from dfs.records import BlockGroup, BlockRef, GcEntry, NodeRegistration
from dfs.zk import BadVersionError, NoNodeError, NotEmptyError, Txn, ZkClient
from dfs.zk.retry import retrying

log = logging.getLogger(__name__)

AUDIT_KEEP = 1000
AUDIT_TRIM_EVERY = 100
COMMIT_ATTEMPTS = 20  # a block map changing under a repair: give up for now, the next scan retries
STATE_ATTEMPTS = 100  # a node's registry state: only `dfs drain` and the leader write it
INODE_BATCH = 256  # inodes whose group lists are read in one multi-read
GROUP_BATCH = 64  # block groups read in one multi-read (each up to a few hundred KiB)


@dataclass
class RepairContext:
    """What the repair primitives work with.

    Args:
      zk, paths, config: the filesystem's session, znode paths and settings.
      nodedir: the live nodes (kept fresh by its `run()` or by `refresh()`).
      blocks: a BlockClient on `nodedir`.
      actor: who repairs, for the audit log ("node:<id>", "fsck").
      limiter: bounds concurrent copies/deletes started by one call.
    """

    zk: ZkClient
    paths: FsPaths
    config: FsConfig
    nodedir: NodeDirectory
    blocks: BlockClient
    actor: str = ""
    stats: dict = field(default_factory=lambda: {"copied_blocks": 0, "copied_bytes": 0,
                                                  "dropped_replicas": 0, "gc_blocks": 0,
                                                  "garbage_copies": 0})
    _audit_count: int = 0

    def counts(self, node_id: str, bad: Collection[str] = ()) -> bool:
        """Does a replica on `node_id` count toward the block's redundancy?"""
        live = self.nodedir.get(node_id)
        return live is not None and live.state == "active" and node_id not in bad

    def can_serve(self, node_id: str, bad: Collection[str] = ()) -> bool:
        """May a replica on `node_id` be the source of a copy?"""
        return self.nodedir.get(node_id) is not None and node_id not in bad


# ---------------------------------------------------------------------- reading


async def iter_block_groups(ctx: RepairContext) -> AsyncIterator[tuple[int, int, BlockGroup, int]]:
    """Every block group of every file as (ino, group, BlockGroup, znode version).

    Streams: holds one batch of groups at a time, never the whole map. Groups
    that vanish while we read (file removed) are skipped.
    """
    try:
        inos = await ctx.zk.get_children(ctx.paths.blocks)
    except NoNodeError:
        return
    inos = sorted(int(i) for i in inos if i.isdigit())
    for i in range(0, len(inos), INODE_BATCH):
        batch = inos[i:i + INODE_BATCH]
        lists = await ctx.zk.children_many([ctx.paths.block_map(ino) for ino in batch])
        wanted = [(ino, int(g)) for ino, groups in zip(batch, lists) if groups
                  for g in sorted(groups, key=int) if g.isdigit()]
        for j in range(0, len(wanted), GROUP_BATCH):
            part = wanted[j:j + GROUP_BATCH]
            got = await ctx.zk.get_many([ctx.paths.block_group(ino, g) for ino, g in part])
            for (ino, g), item in zip(part, got):
                if item is None:
                    continue
                yield ino, g, BlockGroup.decode(item[0]), item[1].version


async def read_group(ctx: RepairContext, ino: int, group: int) -> tuple[BlockGroup, int] | None:
    try:
        data, st = await ctx.zk.get(ctx.paths.block_group(ino, group))
    except NoNodeError:
        return None
    return BlockGroup.decode(data), st.version


async def registry(ctx: RepairContext) -> dict[str, NodeRegistration]:
    """Every registered node (persistent registry), by id."""
    try:
        names = await ctx.zk.get_children(ctx.paths.registry)
    except NoNodeError:
        return {}
    got = await ctx.zk.get_many([ctx.paths.registry_node(n) for n in names])
    return {n: NodeRegistration.decode(item[0]) for n, item in zip(names, got) if item}


def group_of(ctx: RepairContext, index: int) -> int:
    return index // ctx.config.group_blocks


# ---------------------------------------------------------------------- audit


async def audit(ctx: RepairContext, action: str, *, block: str = "", ino: int = 0,
                index: int = -1, src: Iterable[str] = (), dst: Iterable[str] = (),
                reason: str = "", **extra) -> None:
    """Append one record to the audit log (best effort: never fails the repair)."""
    rec = {"time": time.time(), "action": action, "block": block, "ino": ino, "index": index,
           "from": list(src), "to": list(dst), "reason": reason, "by": ctx.actor, **extra}
    try:
        await ctx.zk.create(f"{ctx.paths.repair_audit}/a-", json.dumps(rec).encode(),
                            sequence=True)
        ctx._audit_count += 1
        if ctx._audit_count % AUDIT_TRIM_EVERY == 1:
            await trim_audit(ctx)
    except Exception as e:
        log.warning("could not append to the repair audit log: %s", e)


async def trim_audit(ctx: RepairContext, keep: int = AUDIT_KEEP) -> None:
    names = sorted(await ctx.zk.get_children(ctx.paths.repair_audit))
    for name in names[:max(0, len(names) - keep)]:
        try:
            await ctx.zk.delete(f"{ctx.paths.repair_audit}/{name}")
        except NoNodeError:
            pass


async def read_audit(zk: ZkClient, paths: FsPaths) -> list[dict]:
    """The audit log, oldest first."""
    names = sorted(await zk.get_children(paths.repair_audit))
    got = await zk.get_many([f"{paths.repair_audit}/{n}" for n in names])
    return [json.loads(item[0]) for item in got if item]


# ---------------------------------------------------------------------- map changes


async def _commit_replicas(ctx: RepairContext, ino: int, index: int, block_id: str,
                           change) -> BlockRef | None:
    """Re-read the group and apply `change(ref) -> list[str] | None` to the block's replicas.

    Returns the committed ref, the unchanged ref when `change` returns None, or
    None when the block at `index` is no longer `block_id` (or is gone).
    """
    group = group_of(ctx, index)
    path = ctx.paths.block_group(ino, group)

    async def attempt() -> BlockRef | None:
        got = await read_group(ctx, ino, group)
        if got is None:
            return None
        grp, version = got
        ref = grp.blocks.get(index)
        if ref is None or ref.id != block_id:
            return None
        replicas = change(ref)
        if replicas is None or replicas == ref.replicas:
            return ref
        ref.replicas = replicas
        ref.gen += 1
        await ctx.zk.commit(Txn().set(path, grp.encode(), version))  # conflicts: look again
        return ref

    return await retrying(attempt, attempts=COMMIT_ATTEMPTS, what=f"repair of block map {path}",
                          conflicts=(BadVersionError, NoNodeError))


async def _delete_quietly(ctx: RepairContext, block_id: str, node_ids: Iterable[str]) -> list[str]:
    """Delete a block from nodes, best effort. Returns the nodes where it is surely gone."""
    gone: list[str] = []

    async def one(node_id: str) -> None:
        if ctx.nodedir.get(node_id) is None:
            return  # unreachable: an orphan there, collected when the node is back
        try:
            await ctx.blocks.delete_block(node_id, block_id)
            gone.append(node_id)
        except DfsError as e:
            if e.errno == errno.ENOENT:
                gone.append(node_id)
            else:
                log.info("could not delete block %s from node %s: %s", block_id, node_id, e)

    async with trio.open_nursery() as nursery:
        for n in set(node_ids):
            nursery.start_soon(one, n)
    return gone


def _settled(ctx: RepairContext, replicas: list[str], bad: Collection[str]) -> list[str]:
    """The replica list to commit after a repair.

    Known-bad replicas leave (unless none would remain). Replicas on gone or
    draining nodes leave only once enough replicas count: until then they may
    still be the only way back to a copy.
    """
    counting = [n for n in replicas if ctx.counts(n, bad)]
    if len(counting) >= ctx.config.replicas:
        return counting
    keep = [n for n in replicas if n not in bad]
    return keep or replicas


async def rereplicate(ctx: RepairContext, ino: int, index: int, ref: BlockRef, *,
                      bad: Collection[str] = frozenset(), reason: str = "under-replicated",
                      bandwidth=None) -> BlockRef | None:
    """Bring one block back to `config.replicas` counting replicas.

    Copies from a surviving good holder (COPY op) to targets chosen by
    `place_replicas` (never a node that already holds a good replica; a node
    in `bad` may be chosen again: the copy overwrites its damaged replica),
    then commits the new replica list, version-checked. Replicas in `bad`,
    and, once the block is at full count, replicas on gone or draining nodes,
    leave the map in that commit; the bad ones are then deleted from their
    nodes (best effort).

    Args:
      ino, index, ref: the block as read from the map.
      bad: nodes whose replica is known damaged or missing.
      reason: for the audit log.
      bandwidth: an optional object with `async acquire(nbytes)` (rate limit).

    Returns:
      The committed ref (unchanged if nothing was needed or possible), or None
      if the block is no longer at that index (copies made are then deleted).

    Raises:
      DfsError(EIO): no good replica is reachable (the block is missing), or
        the map kept changing.
    """
    bad = frozenset(bad)
    sources = [n for n in ref.replicas if ctx.can_serve(n, bad)]
    # prefer active sources: a draining node is busy enough
    sources.sort(key=lambda n: (not ctx.counts(n, bad), ctx.nodedir.get(n).load))
    counting = [n for n in ref.replicas if ctx.counts(n, bad)]
    need = ctx.config.replicas - len(counting)
    made: list[str] = []
    if need > 0:
        if not sources:
            raise DfsError(errno.EIO, f"block {ref.id} (inode {ino} index {index}): "
                                      f"no reachable good replica")
        live = list(ctx.nodedir.live().values())
        targets = place_replicas(live, need, exclude=set(sources), block_size=ref.length)
        if bandwidth is not None and targets:
            await bandwidth.acquire(ref.length * len(targets))

        async def copy(dst: str) -> None:
            for src in sources:
                try:
                    await ctx.blocks.copy_block(src, ref.id, dst)
                    made.append(dst)
                    await audit(ctx, "copy", block=ref.id, ino=ino, index=index, src=[src],
                                dst=[dst], reason=reason, copies=len(counting))
                    return
                except DfsError as e:
                    log.info("copy of block %s from %s to %s failed: %s", ref.id, src, dst, e)

        async with trio.open_nursery() as nursery:
            for dst in targets:
                nursery.start_soon(copy, dst)
        ctx.stats["copied_blocks"] += len(made)
        ctx.stats["copied_bytes"] += len(made) * ref.length

    def change(cur: BlockRef) -> list[str]:
        merged = [n for n in cur.replicas if n not in made] + made
        return _settled(ctx, merged, bad - set(made))

    committed = await _commit_replicas(ctx, ino, index, ref.id, change)
    if committed is None:
        if made:
            ctx.stats["garbage_copies"] += len(made)
            await _delete_quietly(ctx, ref.id, made)
            await audit(ctx, "discard", block=ref.id, ino=ino, index=index, dst=made,
                        reason="block replaced while it was being repaired")
        return None
    dropped = [n for n in ref.replicas if n not in committed.replicas]
    if dropped:
        ctx.stats["dropped_replicas"] += len(dropped)
        await _delete_quietly(ctx, ref.id, [n for n in dropped if n not in made])
        await audit(ctx, "drop", block=ref.id, ino=ino, index=index, src=dropped,
                    reason=f"{reason}: replaced")
    return committed


async def drop_replicas(ctx: RepairContext, ino: int, index: int, ref: BlockRef,
                        node_ids: Collection[str], reason: str) -> BlockRef | None:
    """Remove replicas from the map (version-checked), then delete them from their nodes.

    Never removes the last replica of a block: the nodes that would leave it
    with none stay listed. Returns the committed ref, or None if the block is no
    longer at that index (nothing is deleted then).
    """
    drop = set(node_ids)
    removed: list[str] = []

    def change(cur: BlockRef) -> list[str] | None:
        keep = [n for n in cur.replicas if n not in drop]
        if not keep:
            return None
        removed[:] = [n for n in cur.replicas if n in drop]
        return keep

    committed = await _commit_replicas(ctx, ino, index, ref.id, change)
    if committed is None or not removed:
        return committed
    ctx.stats["dropped_replicas"] += len(removed)
    await _delete_quietly(ctx, ref.id, removed)
    await audit(ctx, "drop", block=ref.id, ino=ino, index=index, src=removed, reason=reason)
    return committed


# ---------------------------------------------------------------------- gc


async def collect_gc_entry(ctx: RepairContext, name: str) -> int:
    """Delete the blocks of gc entry `name` from their nodes, then the entry. Idempotent.

    An entry with `inode=N` means the whole map under blocks/N is garbage:
    every block in it is deleted, then its groups, then blocks/N itself.
    Replicas on unreachable nodes are left as orphans (collected when the
    node is back). Returns the number of replicas deleted.
    """
    path = ctx.paths.gc_entry(name)
    try:
        data, _ = await ctx.zk.get(path)
    except NoNodeError:
        return 0
    entry = GcEntry.decode(data)
    deleted = 0
    limiter = trio.CapacityLimiter(16)

    async def delete_all(blocks: dict[str, list[str]]) -> None:
        async def one(block_id: str, nodes: list[str]) -> None:
            nonlocal deleted
            async with limiter:
                gone = await _delete_quietly(ctx, block_id, nodes)
            deleted += len(gone)  # not `deleted += len(await ...)`: that reads before awaiting

        async with trio.open_nursery() as nursery:
            for block_id, nodes in blocks.items():
                nursery.start_soon(one, block_id, nodes)

    if entry.blocks:
        await delete_all(entry.blocks)
    if entry.inode:
        base = ctx.paths.block_map(entry.inode)
        try:
            groups = await ctx.zk.get_children(base)
        except NoNodeError:
            groups = []
        for g in groups:
            gpath = f"{base}/{g}"
            try:
                gdata, _ = await ctx.zk.get(gpath)
            except NoNodeError:
                continue
            grp = BlockGroup.decode(gdata)
            await delete_all({r.id: list(r.replicas) for r in grp.blocks.values()})
            try:
                await ctx.zk.delete(gpath)
            except NoNodeError:
                pass
        try:
            await ctx.zk.delete(base)
        except NoNodeError:
            pass
        except NotEmptyError:
            return deleted  # something appeared under it: look again next round
    try:
        await ctx.zk.delete(path)
    except NoNodeError:
        pass
    ctx.stats["gc_blocks"] += deleted
    return deleted


async def set_node_state(zk: ZkClient, paths: FsPaths, node_id: str, frm: Collection[str],
                         to: str) -> str | None:
    """Move a node's registry state from one of `frm` to `to`, version-checked.

    Returns the state found (the old one when it changed, else the current
    one), or None when there is no such node.
    """
    path = paths.registry_node(node_id)

    async def attempt() -> str | None:
        try:
            data, st = await zk.get(path)
        except NoNodeError:
            return None
        reg = NodeRegistration.decode(data)
        if reg.state not in frm:
            return reg.state
        found = reg.state
        reg.state = to
        await zk.set(path, reg.encode(), st.version)  # BadVersion: someone else changed it
        return found

    return await retrying(attempt, attempts=STATE_ATTEMPTS, what=f"state change of node {node_id}",
                          conflicts=(BadVersionError,))
