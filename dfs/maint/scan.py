"""The one walk over the block maps (`blocks/<ino>/<group>`): repair leader, gc, status, drain, fsck.

Streams: the walk lists `blocks/`, reads the group lists of INODE_BATCH inodes
in one multi-read, then the groups themselves GROUP_BATCH at a time (a full
group of 256 refs is about 40 KiB), and holds one batch, never the whole map.
Groups (or whole maps) that vanish while we read (a file removed) are skipped.
What a caller gets is as of its read: a repair must re-read and version-check
the group before it changes it (dfs.maint.repair).
"""

import json
from typing import AsyncIterator, Iterable, NamedTuple

from dfs.paths import FsPaths
from dfs.records import BlockGroup, BlockRef, InodeRecord
from dfs.zk import NoNodeError, ZkClient, ZnodeStat
from dfs.zk.reads import Reads

INODE_BATCH = 256  # inodes whose group lists are read in one multi-read
GROUP_BATCH = 128  # block groups read in one multi-read


class MapGroup(NamedTuple):
    """One group of one file's block map, as read."""

    ino: int
    group: int
    blocks: BlockGroup
    stat: ZnodeStat


def decode_group(data: bytes) -> BlockGroup:
    """BlockGroup.decode without dataclasses.fields() per ref (most of a walk's CPU);
    refs of another revision fall back to the record's own decoder."""
    out = {}
    for i, b in json.loads(data).get("blocks", {}).items():
        try:
            out[int(i)] = BlockRef(**b)
        except TypeError:
            out[int(i)] = BlockRef.from_dict(b)
    return BlockGroup(blocks=out)


async def groups_of(zk: ZkClient, paths: FsPaths, inos: Iterable[int]) -> list[tuple[int, list[int]]]:
    """(ino, its group numbers in order) of each inode that has a block map."""
    return [(ino, groups) for ino, groups, _ in await _groups_of(zk, paths, inos, False)]


async def _groups_of(zk: ZkClient, paths: FsPaths, inos: Iterable[int],
                     own_replicas: bool) -> list[tuple[int, list[int], int]]:
    """groups_of, and with `own_replicas` each file's InodeRecord.replicas (read in the
    same multi-read; 0 also when the inode is gone: its map is garbage, repair skips it)."""
    inos = list(inos)
    out: list[tuple[int, list[int], int]] = []
    for i in range(0, len(inos), INODE_BATCH):
        reads = Reads()
        lists = [(ino, reads.children(paths.block_map(ino)),
                  reads.get(paths.inode(ino)) if own_replicas else None) for ino in inos[i:i + INODE_BATCH]]
        got = await reads.run(zk)
        out += [(ino, sorted(int(g) for g in got[h] if g.isdigit()),
                 InodeRecord.decode(got[r][0]).replicas if r is not None and got[r] else 0)
                for ino, h, r in lists if got[h]]
    return out


async def read_groups(zk: ZkClient, paths: FsPaths,
                      wanted: Iterable[tuple[int, int]]) -> AsyncIterator[MapGroup]:
    """The groups named by (ino, group), in that order, GROUP_BATCH per multi-read."""
    wanted = list(wanted)
    for i in range(0, len(wanted), GROUP_BATCH):
        reads = Reads()
        part = [(ino, g, reads.get(paths.block_group(ino, g))) for ino, g in wanted[i:i + GROUP_BATCH]]
        got = await reads.run(zk)
        for ino, g, h in part:
            item = got[h]
            if item is not None:
                yield MapGroup(ino, g, decode_group(item[0]), item[1])


async def map_groups(zk: ZkClient, paths: FsPaths, ino: int) -> AsyncIterator[MapGroup]:
    """Every group of one file's block map."""
    for _, groups in await groups_of(zk, paths, [ino]):
        async for mg in read_groups(zk, paths, [(ino, g) for g in groups]):
            yield mg


async def block_groups(zk: ZkClient, paths: FsPaths) -> AsyncIterator[MapGroup]:
    """Every group of every file's block map, by inode number."""
    async for mg, _ in _walk(zk, paths, False):
        yield mg


async def block_groups_wanted(zk: ZkClient, paths: FsPaths) -> AsyncIterator[tuple[MapGroup, int]]:
    """block_groups, each with its file's own replica count (`dfs setrep`; 0: the filesystem's)."""
    async for item in _walk(zk, paths, True):
        yield item


async def _walk(zk: ZkClient, paths: FsPaths, own_replicas: bool) -> AsyncIterator[tuple[MapGroup, int]]:
    try:
        names = await zk.get_children(paths.blocks)
    except NoNodeError:
        return
    inos = sorted(int(n) for n in names if n.isdigit())
    for i in range(0, len(inos), INODE_BATCH):
        maps = await _groups_of(zk, paths, inos[i:i + INODE_BATCH], own_replicas)
        own = {ino: k for ino, _, k in maps}
        async for mg in read_groups(zk, paths, [(ino, g) for ino, groups, _ in maps for g in groups]):
            yield mg, own[mg.ino]
