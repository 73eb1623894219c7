"""The namespace's layout in ZooKeeper: what a file costs, and filesystems of the older layout."""

import json
import stat

import pytest

from dfs.config import FsConfig
from dfs.meta import Meta
from dfs.mkfs import load_config, mkfs
from dfs.paths import ROOT_INO
from dfs.records import DirEntry, InodeRecord
from dfs.zk import Txn

T = 1_764_000_000_123_456_789


def test_records_are_compact_and_read_revision_1():
    rec = InodeRecord(mode=stat.S_IFREG | 0o644, uid=1000, gid=1000, atime_ns=T, mtime_ns=T, ctime_ns=T,
                      stored=0)
    assert len(rec.encode()) <= 56 and InodeRecord.decode(rec.encode()) == rec
    odd = InodeRecord(mode=stat.S_IFDIR | 0o700, size=3, atime_ns=1, mtime_ns=T, ctime_ns=T + 1, nlink=3,
                      target="x", parent=7, xattrs=2)  # stored -1: made before it was counted
    assert InodeRecord.decode(odd.encode()) == odd
    assert DirEntry.decode(DirEntry(123_456, stat.S_IFREG).encode()) == DirEntry(123_456, stat.S_IFREG)
    assert len(DirEntry(123_456, stat.S_IFREG).encode()) <= 12
    assert DirEntry.decode(DirEntry(9, stat.S_IFDIR).encode()) == DirEntry(9, stat.S_IFDIR)
    old = {"mode": 33188, "uid": 1, "gid": 2, "size": 5, "atime_ns": 1, "mtime_ns": 2, "ctime_ns": 3,
           "nlink": 1, "rdev": 0, "target": "", "parent": 0, "xattrs": 0, "revision": 1}
    assert InodeRecord.decode(json.dumps(old).encode()) == InodeRecord(33188, 1, 2, 5, 1, 2, 3)
    assert DirEntry.decode(b'{"ino":7,"mode":16384,"revision":1}') == DirEntry(7, stat.S_IFDIR)


@pytest.fixture
async def meta(zk, fs_paths):
    config = FsConfig(block_size=1 << 20)
    await mkfs(zk, fs_paths, config)
    return Meta(zk, fs_paths, config)


async def test_a_file_costs_an_inode_and_an_entry_until_it_has_bytes(meta):
    zk, paths = meta.zk, meta.paths
    before = len(await zk.get_children(paths.blocks))
    f = await meta.create(ROOT_INO, b"f", 0o644, uid=0, gid=0)
    assert await zk.exists(paths.block_map(f.ino)) is None
    assert len(await zk.get_children(paths.blocks)) == before
    node, refs, inline = await meta.blockmap.open_file(f.ino)
    assert (refs, inline, node.has_map) == ({}, None, False)
    node = await meta.blockmap.commit_blocks(f.ino, {}, size=5, inline=b"hello", known=node)
    assert (await zk.get(paths.block_map(f.ino)))[0] == b"hello" and node.has_map
    assert (await meta.blockmap.open_file(f.ino))[2] == b"hello"
    await meta.unlink(ROOT_INO, b"f")
    assert await zk.exists(paths.block_map(f.ino)) is None and await zk.exists(paths.inode(f.ino)) is None


async def test_a_filesystem_of_revision_1_keeps_working(zk, fs_paths):
    """Written as dfs wrote it before format revision 2: long keys, blocks/<ino> for every file."""
    await mkfs(zk, fs_paths, FsConfig(block_size=1 << 20))
    meta = Meta(zk, fs_paths, await load_config(zk, fs_paths))
    ino = await meta.inodes.alloc()
    rec = {"mode": stat.S_IFREG | 0o600, "uid": 5, "gid": 5, "size": 3, "atime_ns": T, "mtime_ns": T,
           "ctime_ns": T, "nlink": 1, "rdev": 0, "target": "", "parent": 0, "xattrs": 0, "stored": 3,
           "revision": 1}
    await zk.commit(Txn().create(fs_paths.inode(ino), json.dumps(rec).encode())
                    .create(fs_paths.dirent(ROOT_INO, b"old"),
                            json.dumps({"ino": ino, "mode": stat.S_IFREG, "revision": 1}).encode())
                    .create(fs_paths.block_map(ino), b"abc"))
    assert (await meta.lookup(ROOT_INO, b"old")).rec.uid == 5
    node, refs, inline = await meta.blockmap.open_file(ino)
    assert inline == b"abc" and node.has_map
    await meta.blockmap.commit_blocks(ino, {}, size=4, inline=b"abcd", known=node)
    assert (await meta.blockmap.open_file(ino))[2] == b"abcd"
    await meta.inodes.setattr(ino, mode=0o644)
    assert [n for n, _, _ in await meta.readdir(ROOT_INO)] == [b"old"]
    await meta.namespace.rename(ROOT_INO, b"old", ROOT_INO, b"new")
    await meta.unlink(ROOT_INO, b"new")
    assert await zk.exists(fs_paths.block_map(ino)) is None and await zk.exists(fs_paths.inode(ino)) is None
    assert await zk.get_children(fs_paths.dir(ROOT_INO)) == []
