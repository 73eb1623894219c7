"""The namespace fixes `dfs fsck --repair` applies, as version-checked transactions.

Each fix re-reads what it changes and commits with a version check on what it
read (a conflict raises BadVersionError / NoNodeError / NodeExistsError /
NotEmptyError: the caller reports "not repaired" and a later run looks again).
A fix that guards on an inode's absence creates and deletes that inode's znode
in the same transaction, which fails if the inode exists. Fixes return what
they did, for fsck's report.

These work on the znodes directly (dfs.paths, dfs.records), not through `Meta`:
they mend states `Meta` never produces.
"""

import stat
import time
import uuid
from dataclasses import dataclass

from dfs.config import FsConfig
from dfs.paths import FsPaths
from dfs.records import BlockGroup, DirEntry, GcEntry, InodeRecord
from dfs.zk import BadVersionError, NoNodeError, Txn, ZkClient, ZnodeStat
from dfs.zk.reads import Reads

CHUNK = 512  # directory entries per multi-read


def _stamp() -> bytes:
    """A directory listing's data: its last change, so its mzxid moves (DESIGN.md section 2)."""
    return str(time.time_ns()).encode()


# ---------------------------------------------------------------------- entries


async def create_dir_listing(zk: ZkClient, paths: FsPaths, ino: int, inode_version: int) -> str:
    """A directory inode without its dirs/<ino>: give it an empty one."""
    await zk.commit(Txn().check(paths.inode(ino), inode_version).create(paths.dir(ino)))
    return "created an empty listing"


async def remove_entry(zk: ZkClient, paths: FsPaths, parent: int, name: str,
                       version: int | None = None) -> None:
    """Delete entry `name` (escaped, as listed) of `parent`, at `version` (default: as read now)."""
    if version is None:
        _, st = await zk.get(paths.dirent_named(parent, name))
        version = st.version
    await zk.commit(Txn().delete(paths.dirent_named(parent, name), version)
                    .set(paths.dir(parent), _stamp()))


async def set_entry_type(zk: ZkClient, paths: FsPaths, parent: int, name: str, ino: int, mode: int,
                         version: int) -> str:
    """Rewrite an entry whose file type disagrees with its inode's `mode`."""
    await zk.commit(Txn().set(paths.dirent_named(parent, name),
                              DirEntry(ino, stat.S_IFMT(mode)).encode(), version))
    return "rewrote the entry's type"


# ---------------------------------------------------------------------- inodes


async def set_inode_field(zk: ZkClient, paths: FsPaths, ino: int, name: str, value: int,
                          version: int | None = None) -> str:
    """One field of an inode (a file's nlink, a directory's parent), if it is still at `version`."""
    data, st = await zk.get(paths.inode(ino))
    if version is not None and st.version != version:
        raise BadVersionError()
    rec = InodeRecord.decode(data)
    setattr(rec, name, value)
    await zk.commit(Txn().set(paths.inode(ino), rec.encode(), st.version))
    return f"set {name} to {value}"


@dataclass
class SubdirCount:
    """A fresh count of a directory's subdirectories, with the stats it was read under."""

    count: int
    rec: InodeRecord
    inode_stat: ZnodeStat
    listing_stat: ZnodeStat


async def count_subdirs(zk: ZkClient, paths: FsPaths, ino: int) -> SubdirCount | None:
    """Count a directory's subdirectories now (None if it or its listing is gone)."""
    try:
        names = await zk.get_children(paths.dir(ino))
    except NoNodeError:
        return None
    count = 0
    for i in range(0, len(names), CHUNK):
        got = await zk.get_many([paths.dirent_named(ino, n) for n in names[i:i + CHUNK]])
        ents = [DirEntry.decode(g[0]) for g in got if g]
        inodes = await zk.get_many([paths.inode(e.ino) for e in ents])
        count += sum(1 for g in inodes if g is not None and InodeRecord.decode(g[0]).is_dir)
    reads = Reads()
    inode, listing = reads.get(paths.inode(ino)), reads.get(paths.dir(ino))
    got = await reads.run(zk)
    if got[inode] is None or got[listing] is None:
        return None
    return SubdirCount(count, InodeRecord.decode(got[inode][0]), got[inode][1], got[listing][1])


async def fix_dir_nlink(zk: ZkClient, paths: FsPaths, ino: int) -> str:
    """Set a directory's nlink to 2 + its subdirectories, counted afresh."""
    fresh = await count_subdirs(zk, paths, ino)
    if fresh is None:
        return "directory is gone"
    rec = fresh.rec
    if rec.nlink == 2 + fresh.count:
        return "already right"
    rec.nlink = 2 + fresh.count
    await zk.commit(Txn().set(paths.inode(ino), rec.encode(), fresh.inode_stat.version))
    return f"set nlink to {rec.nlink}"


async def link_orphan(zk: ZkClient, paths: FsPaths, ino: int, into: int,
                      cycle_parent: int | None = None) -> bytes | None:
    """Give an unreachable inode an entry in directory `into` (lost+found), in one transaction.

    The entry is named after the inode number (with a random suffix if that
    name is taken). A file's nlink becomes 1 (no entry named it); a
    directory's parent becomes `into`, whose nlink grows. `cycle_parent`: an
    unreachable directory holding an entry for `ino` (a cycle), dropped in the
    same transaction. Returns the new entry's name, or None if `ino` is gone.
    """
    name = str(ino).encode()
    reads = Reads()
    inode, lf, taken = reads.get(paths.inode(ino)), reads.get(paths.inode(into)), \
        reads.get(paths.dirent(into, name))
    got = await reads.run(zk)
    if got[inode] is None:
        return None
    if got[taken] is not None:
        name = f"{ino}-{uuid.uuid4().hex[:6]}".encode()
    rec, st = InodeRecord.decode(got[inode][0]), got[inode][1]
    lrec, lst = InodeRecord.decode(got[lf][0]), got[lf][1]
    txn = Txn()
    txn.create(paths.dirent(into, name), DirEntry(ino, stat.S_IFMT(rec.mode)).encode())
    if rec.is_dir:
        rec.parent = into
        lrec.nlink += 1
        txn.set(paths.inode(into), lrec.encode(), lst.version)
    else:
        rec.nlink = 1  # no entry named it: this one is the only one
        txn.check(paths.inode(into), lst.version)
    txn.set(paths.inode(ino), rec.encode(), st.version)
    txn.set(paths.dir(into), _stamp())
    if cycle_parent is not None:  # break the cycle: drop the entry inside it
        try:
            names = await zk.get_children(paths.dir(cycle_parent))
        except NoNodeError:
            names = []
        for n, g in zip(names, await zk.get_many([paths.dirent_named(cycle_parent, n) for n in names])):
            if g is not None and DirEntry.decode(g[0]).ino == ino:
                txn.delete(paths.dirent_named(cycle_parent, n), g[1].version)
    await zk.commit(txn)
    return name


# ---------------------------------------------------------------------- block maps


async def drop_block_past_eof(zk: ZkClient, paths: FsPaths, config: FsConfig, ino: int, index: int,
                              block_id: str) -> str:
    """Take a block that reaches past its file's end out of the map; it goes to gc/.

    Version-checked on the inode (its size) and the group.
    """
    group = index // config.group_blocks
    data, st = await zk.get(paths.inode(ino))
    gdata, gst = await zk.get(paths.block_group(ino, group))
    grp = BlockGroup.decode(gdata)
    cur = grp.blocks.get(index)
    if cur is None or cur.id != block_id or index * config.block_size + cur.length <= InodeRecord.decode(data).size:
        return "nothing to do any more"
    del grp.blocks[index]
    txn = Txn().check(paths.inode(ino), st.version)
    if grp.blocks:
        txn.set(paths.block_group(ino, group), grp.encode(), gst.version)
    else:
        txn.delete(paths.block_group(ino, group), gst.version)
    txn.create(paths.gc_entry(uuid.uuid4().hex),
               GcEntry(blocks={cur.id: list(cur.replicas)}, queued=time.time()).encode())
    await zk.commit(txn)
    return "dropped the block from the map (queued for gc)"


# ---------------------------------------------------------------------- leftovers of deleted inodes


def _absent(paths: FsPaths, ino: int) -> Txn:
    """A transaction that fails (NodeExists) if inode `ino` exists."""
    return Txn().create(paths.inode(ino)).delete(paths.inode(ino))


async def queue_map_for_gc(zk: ZkClient, paths: FsPaths, ino: int) -> str:
    """The block map of an inode that does not exist: queue the whole map for gc."""
    await zk.commit(_absent(paths, ino).create(paths.gc_entry(f"inode-{ino}"),
                                               GcEntry(inode=ino, queued=time.time()).encode()))
    return "queued the map for gc"


async def remove_leftover(zk: ZkClient, paths: FsPaths, kind: str, ino: int) -> str:
    """dirs/<ino> or xattrs/<ino> (kind "dirs" / "xattrs") of an inode that does not exist."""
    base = paths.dir(ino) if kind == "dirs" else paths.xattr_dir(ino)
    child = paths.dirent_named if kind == "dirs" else paths.xattr_named
    try:
        names = await zk.get_children(base)
    except NoNodeError:
        names = []
    txn = _absent(paths, ino)
    for n in names:
        txn.delete(child(ino, n))
    txn.delete(base)
    await zk.commit(txn)
    return f"removed {kind}/{ino} and its {len(names)} children"


async def remove_stale_lease(zk: ZkClient, paths: FsPaths, ino: int) -> str:
    """leases/<ino> of a directory that does not exist (dfs.meta.leases)."""
    await zk.commit(_absent(paths, ino).delete(paths.lease(ino)))
    return "removed it"


async def remove_stale_open(zk: ZkClient, paths: FsPaths, ino: int) -> str:
    """open/<ino> of an inode that does not exist, with no holders left."""
    await zk.delete(paths.open_dir(ino))
    return "removed it"


async def remove_stale_trash(zk: ZkClient, paths: FsPaths, ino: int) -> str:
    """trash/<ino> of an inode that does not exist (the inode's absence checked)."""
    await zk.commit(_absent(paths, ino).delete(paths.trash_entry(ino)))
    return "removed the trash entry"
