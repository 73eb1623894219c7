"""Block-map repairs shared by the repair leader (nodes/) and `dfs fsck --repair` (tools/).

Every change to a block map follows the same pattern: read the group, do the
slow work (copy a replica, delete from a node) without holding anything, then
commit the new replica list with a version check on the group after re-reading
it. If the block at that index is no longer the same block (the file was
rewritten, truncated or removed meanwhile) the copies just made are garbage and
are deleted; nothing else is touched. Every step is idempotent, so two repairers
racing (a leader change, fsck next to the leader) cost work, never data.

Rules about replicas (DESIGN.md section 5; which replicas count: dfs.maint.cluster):
- A block map records exactly the replicas that hold the block: when a block is
  back at full count, replicas on nodes that are gone, draining or known bad
  leave the map in the same commit (those on reachable nodes are then deleted;
  copies left on unreachable nodes become orphans, collected once they return).
- A map never loses its last replica through `drop_replicas`.

Every action is recorded in the audit log (dfs.maint.audit).
"""

import collections
import contextlib
import errno
import logging
from typing import Callable, Collection, Iterable

import trio

from dfs.errors import DfsError
from dfs.maint.cluster import RepairContext
from dfs.maint.scan import decode_group
from dfs.placement import place_replicas
from dfs.records import BlockRef
from dfs.zk import BadVersionError, NoNodeError, Txn
from dfs.zk.retry import retrying

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 20  # a block map changing under a repair: give up for now, the next scan retries


async def commit_replicas(ctx: RepairContext, ino: int, index: int, block_id: str,
                          change: Callable[[BlockRef], list[str] | None]) -> BlockRef | None:
    """Re-read the group and apply `change(ref) -> list[str] | None` to the block's replicas.

    Returns the committed ref, the unchanged ref when `change` returns None, or
    None when the block at `index` is no longer `block_id` (or is gone).
    """
    path = ctx.paths.block_group(ino, index // ctx.config.group_blocks)

    async def attempt() -> BlockRef | None:
        try:
            data, st = await ctx.zk.get(path)
        except NoNodeError:
            return None
        grp = decode_group(data)
        ref = grp.blocks.get(index)
        if ref is None or ref.id != block_id:
            return None
        replicas = change(ref)
        if replicas is None or replicas == ref.replicas:
            return ref
        ref.replicas = replicas
        ref.gen += 1
        await ctx.zk.commit(Txn().set(path, grp.encode(), st.version))  # conflicts: look again
        return ref

    return await retrying(attempt, attempts=COMMIT_ATTEMPTS, what=f"repair of block map {path}",
                          conflicts=(BadVersionError, NoNodeError))


async def delete_quietly(ctx: RepairContext, block_id: str, node_ids: Iterable[str]) -> list[str]:
    """Delete a block from nodes, best effort. Returns the nodes where it is surely gone, in order."""
    nodes = list(dict.fromkeys(node_ids))
    gone: set[str] = set()

    async def one(node_id: str) -> None:
        if ctx.nodedir.get(node_id) is None:
            return  # unreachable: an orphan there, collected when the node is back
        try:
            await ctx.blocks.delete_block(node_id, block_id)
            gone.add(node_id)
        except DfsError as e:
            if e.errno == errno.ENOENT:
                gone.add(node_id)
            else:
                log.info("could not delete block %s from node %s: %s", block_id, node_id, e)

    async with trio.open_nursery() as nursery:
        for n in nodes:
            nursery.start_soon(one, n)
    return [n for n in nodes if n in gone]


def _settled(ctx: RepairContext, replicas: list[str], bad: Collection[str], target: int) -> list[str]:
    """The replica list to commit after a repair.

    Known-bad replicas leave (unless none would remain). Replicas on gone or
    draining nodes leave only once enough replicas count: until then they may
    still be the only way back to a copy.
    """
    counting = [n for n in replicas if ctx.counts(n, bad)]
    if len(counting) >= target:
        return counting
    keep = [n for n in replicas if n not in bad]
    return keep or replicas


def paced(budget, src: str, dst: str, nbytes: int):
    """The budget's turn for one copy (dfs.maint.pacing.CopyBudget), or none."""
    return budget.copy(src, dst, nbytes) if budget is not None else contextlib.nullcontext()


async def rereplicate(ctx: RepairContext, ino: int, index: int, ref: BlockRef, *,
                      bad: Collection[str] = frozenset(), reason: str = "under-replicated",
                      budget=None, target: int | None = None) -> BlockRef | None:
    """Bring one block back to `target` counting replicas (default `config.replicas`;
    a file's own count is `config.wanted(InodeRecord.replicas)`).

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
      budget: an optional dfs.maint.pacing.CopyBudget (per-node copy limits).

    Returns:
      The committed ref (unchanged if nothing was needed or possible), or None
      if the block is no longer at that index (copies made are then deleted).

    Raises:
      DfsError(EIO): no good replica is reachable (the block is missing), or
        the map kept changing.
    """
    bad = frozenset(bad)
    target = target or ctx.config.replicas
    sources = [n for n in ref.replicas if ctx.can_serve(n, bad)]
    # prefer reachable, active sources: a draining node is busy enough
    sources.sort(key=lambda n: (n in ctx.unreachable, not ctx.counts(n, bad),
                                budget.busy(n) if budget is not None else 0,
                                ctx.nodedir.get(n).load))
    counting = [n for n in ref.replicas if ctx.counts(n, bad)]
    need = target - len(counting)
    made: list[str] = []
    if need > 0:
        if not sources:
            raise DfsError(errno.EIO, f"block {ref.id} (inode {ino} index {index}): "
                                      f"no reachable good replica")
        live = ctx.nodedir.live()
        targets = place_replicas(list(live.values()), need, exclude=set(sources) | ctx.unreachable,
                                 block_size=ref.length,
                                 zones_taken={live[n].zone for n in counting})

        async def copy(dst: str) -> None:
            for src in sources:
                try:
                    async with paced(budget, src, dst, ref.length):
                        await ctx.blocks.copy_block(src, ref.id, dst)
                    made.append(dst)
                    await ctx.audit.append("copy", block=ref.id, ino=ino, index=index, src=[src],
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
        return _settled(ctx, merged, bad - set(made), target)

    committed = await commit_replicas(ctx, ino, index, ref.id, change)
    if committed is None:
        if made:
            ctx.stats["garbage_copies"] += len(made)
            await delete_quietly(ctx, ref.id, made)
            await ctx.audit.append("discard", block=ref.id, ino=ino, index=index, dst=made,
                                   reason="block replaced while it was being repaired")
        return None
    dropped = [n for n in ref.replicas if n not in committed.replicas]
    if dropped:
        ctx.stats["dropped_replicas"] += len(dropped)
        await delete_quietly(ctx, ref.id, [n for n in dropped if n not in made])
        await ctx.audit.append("drop", block=ref.id, ino=ino, index=index, src=dropped,
                               reason=f"{reason}: replaced")
    return committed


def crowded(ctx: RepairContext, replicas: list[str], count: int) -> list[str]:
    """`count` of these replicas to give up, each from the zone holding most of the
    rest (the fullest node there), so what stays is spread as widely as it can be."""
    live = ctx.nodedir.live()
    left, out = list(replicas), []
    for _ in range(count):
        zone = collections.Counter(live[n].zone for n in left).most_common(1)[0][0]
        victim = min((n for n in left if live[n].zone == zone), key=lambda n: live[n].free)
        left.remove(victim)
        out.append(victim)
    return out


async def respread(ctx: RepairContext, ino: int, index: int, ref: BlockRef, *,
                   budget=None) -> BlockRef | None:
    """Move one replica of a block crowded into fewer zones than it could use: copy it
    to a node of a zone it lacks, then in the same map commit drop one replica from
    its most crowded zone, so it never has fewer copies than before. Returns the
    committed ref, `ref` when no zone it lacks has room, or None if the block changed."""
    live = ctx.nodedir.live()
    counting = [n for n in ref.replicas if ctx.counts(n)]
    taken = {live[n].zone for n in counting}
    targets = [t for t in place_replicas(list(live.values()), 1,
                                         exclude=set(ref.replicas) | ctx.unreachable,
                                         block_size=ref.length, zones_taken=taken)
               if live[t].zone not in taken]
    if not targets or not counting:
        return ref
    dst = targets[0]
    for src in sorted(counting, key=lambda n: n in ctx.unreachable):
        try:
            async with paced(budget, src, dst, ref.length):
                await ctx.blocks.copy_block(src, ref.id, dst)
            break
        except DfsError as e:
            log.info("copy of block %s from %s to %s failed: %s", ref.id, src, dst, e)
    else:
        return ref
    ctx.stats["copied_blocks"] += 1
    ctx.stats["copied_bytes"] += ref.length
    await ctx.audit.append("copy", block=ref.id, ino=ino, index=index, src=[src], dst=[dst],
                           reason="zone spread", copies=len(counting))
    victim = crowded(ctx, counting, 1)[0]
    committed = await commit_replicas(ctx, ino, index, ref.id,
                                      lambda cur: [n for n in cur.replicas if n not in (victim, dst)] + [dst])
    if committed is None:
        await delete_quietly(ctx, ref.id, [dst])
        return None
    ctx.stats["dropped_replicas"] += 1
    await delete_quietly(ctx, ref.id, [victim])
    await ctx.audit.append("drop", block=ref.id, ino=ino, index=index, src=[victim], reason="zone spread")
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

    committed = await commit_replicas(ctx, ino, index, ref.id, change)
    if committed is None or not removed:
        return committed
    ctx.stats["dropped_replicas"] += len(removed)
    await delete_quietly(ctx, ref.id, removed)
    await ctx.audit.append("drop", block=ref.id, ino=ino, index=index, src=removed, reason=reason)
    return committed


async def trim(ctx: RepairContext, ino: int, index: int, ref: BlockRef, target: int,
               reason: str = "surplus replica") -> BlockRef | None:
    """Give up the counting replicas beyond `target` (`repair.crowded` picks them), safely:
    only once every replica that stays has passed VERIFY on its node (present, right
    checksum), and the map commit comes before any byte is deleted (drop_replicas).
    Returns the committed ref, `ref` when nothing was dropped (too few verified), or
    None if the block changed."""
    counting = [n for n in ref.replicas if ctx.counts(n)]
    extra = len(counting) - target
    if extra <= 0 or target < 1:
        return ref
    victims = crowded(ctx, counting, extra)
    keep = [n for n in counting if n not in victims]

    async def verified(n: str) -> bool:
        try:
            return await ctx.blocks.verify_block(n, ref.id)
        except DfsError as e:
            log.info("verify of block %s on %s before a trim failed: %s", ref.id, n, e)
            return False

    for n in keep:
        if not await verified(n):
            log.info("block %s: replica on %s not verified; keeping the surplus", ref.id, n)
            return ref
    return await drop_replicas(ctx, ino, index, ref, victims, reason)


async def dedupe_replicas(ctx: RepairContext, ino: int, index: int, ref: BlockRef) -> BlockRef | None:
    """Remove repeated node ids from a block's replica list (version-checked)."""
    return await commit_replicas(ctx, ino, index, ref.id, lambda cur: list(dict.fromkeys(cur.replicas)))
