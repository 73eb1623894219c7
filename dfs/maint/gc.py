"""Collecting gc/ entries: the blocks a transaction stopped referencing, deleted from their nodes.

An entry is queued in the same transaction that dropped the references
(dfs.meta), so whatever it names is garbage; collecting it is idempotent and
may be repeated by anyone (the repair leader, fsck --repair).
"""

from typing import Iterable

import trio

from dfs.maint.cluster import RepairContext
from dfs.maint.repair import delete_quietly
from dfs.maint.scan import map_groups
from dfs.paths import FsPaths
from dfs.records import GcEntry
from dfs.zk import NoNodeError, NotEmptyError, Txn, ZkClient, ZnodeStat

ENTRY_BATCH = 64  # gc entries read in one multi-read
DELETES = 16  # blocks of one entry being deleted at once


async def gc_entries(zk: ZkClient, paths: FsPaths) -> dict[str, tuple[GcEntry, ZnodeStat]]:
    """Every entry in gc/, by name."""
    try:
        names = await zk.get_children(paths.gc)
    except NoNodeError:
        return {}
    out: dict[str, tuple[GcEntry, ZnodeStat]] = {}
    for i in range(0, len(names), ENTRY_BATCH):
        part = names[i:i + ENTRY_BATCH]
        for name, item in zip(part, await zk.get_many([paths.gc_entry(n) for n in part])):
            if item is not None:
                out[name] = (GcEntry.decode(item[0]), item[1])
    return out


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
    limiter = trio.CapacityLimiter(DELETES)

    async def delete_all(blocks: dict[str, list[str]]) -> None:
        async def one(block_id: str, nodes: list[str]) -> None:
            nonlocal deleted
            async with limiter:
                gone = await delete_quietly(ctx, block_id, nodes)
            deleted += len(gone)  # not `deleted += len(await ...)`: that reads before awaiting

        async with trio.open_nursery() as nursery:
            for block_id, nodes in blocks.items():
                nursery.start_soon(one, block_id, nodes)

    if entry.blocks:
        await delete_all(entry.blocks)
    if entry.inode:
        async for mg in map_groups(ctx.zk, ctx.paths, entry.inode):
            await delete_all({r.id: list(r.replicas) for r in mg.blocks.blocks.values()})
            try:
                await ctx.zk.delete(ctx.paths.block_group(mg.ino, mg.group))
            except NoNodeError:
                pass
        try:
            await ctx.zk.delete(ctx.paths.block_map(entry.inode))
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


async def keep_blocks(zk: ZkClient, paths: FsPaths, name: str, blocks: Iterable[str]) -> str:
    """Take blocks still in use out of gc entry `name` (version-checked; fsck --repair)."""
    data, st = await zk.get(paths.gc_entry(name))
    entry = GcEntry.decode(data)
    for b in blocks:
        entry.blocks.pop(b, None)
    if entry.blocks or entry.inode:
        await zk.commit(Txn().set(paths.gc_entry(name), entry.encode(), st.version))
    else:
        await zk.commit(Txn().delete(paths.gc_entry(name), st.version))
    return "took the blocks in use out of the entry"


async def remove_gc_entry(zk: ZkClient, paths: FsPaths, name: str, version: int) -> str:
    """Drop gc entry `name` unchanged since `version` (a whole-map entry of a live inode)."""
    await zk.delete(paths.gc_entry(name), version)
    return "removed the entry"
