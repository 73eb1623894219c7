import errno

import pytest

from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.mkfs import load_config, mkfs
from dfs.paths import ROOT_INO
from dfs.records import InodeRecord


async def test_mkfs_creates_root_and_config(zk, fs_paths):
    await mkfs(zk, fs_paths, FsConfig(block_size=1 << 20, replicas=3, min_replicas=2))
    cfg = await load_config(zk, fs_paths)
    assert (cfg.block_size, cfg.replicas, cfg.min_replicas) == (1 << 20, 3, 2)
    data, _ = await zk.get(fs_paths.inode(ROOT_INO))
    root = InodeRecord.decode(data)
    assert root.is_dir and root.nlink == 2


async def test_mkfs_refuses_to_overwrite(zk, fs_paths):
    await mkfs(zk, fs_paths, FsConfig())
    with pytest.raises(DfsError) as e:
        await mkfs(zk, fs_paths, FsConfig(block_size=1 << 20))
    assert e.value.errno == errno.EEXIST
    assert (await load_config(zk, fs_paths)).block_size == 4 << 20


async def test_mkfs_rejects_bad_replication(zk, fs_paths):
    with pytest.raises(DfsError) as e:
        await mkfs(zk, fs_paths, FsConfig(replicas=1, min_replicas=2))
    assert e.value.errno == errno.EINVAL
    assert await zk.exists(fs_paths.config) is None
