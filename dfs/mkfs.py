"""Create a filesystem in ZooKeeper: skeleton, config and the root directory, in one transaction."""

import errno
import os
import stat
import time

from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.paths import ROOT_INO, FsPaths
from dfs.records import FORMAT_REVISION, InodeRecord
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, Txn, ZkClient

MIN_ZK_HEAP = 32 << 20


async def mkfs(zk: ZkClient, paths: FsPaths, config: FsConfig, *, uid: int | None = None,
               gid: int | None = None) -> None:
    """Create the filesystem at `paths.root`.

    Raises:
      DfsError(EEXIST): a filesystem already exists there (nothing is changed).
    """
    if config.min_replicas < 1 or config.replicas < config.min_replicas:
        raise DfsError(errno.EINVAL, "need 1 <= min_replicas <= replicas")
    if config.block_size < 4096 or config.block_size > 64 * 1024 * 1024:
        raise DfsError(errno.EINVAL, "block size must be between 4 KiB and 64 MiB")
    if not 0 <= config.inline_max <= min(64 * 1024, config.block_size):
        raise DfsError(errno.EINVAL, "inline_max must be between 0 and 64 KiB (and at most the block size)")
    if config.zk_heap < MIN_ZK_HEAP:
        raise DfsError(errno.EINVAL, f"zk_heap must be at least {MIN_ZK_HEAP >> 20} MiB")
    if await zk.exists(paths.config):
        raise DfsError(errno.EEXIST, f"a filesystem already exists at {paths.root}")
    parent = paths.root.rsplit("/", 1)[0]
    if parent:
        await zk.ensure_path(parent)
    now = time.time_ns()
    config.created = now / 1e9
    root = InodeRecord(
        mode=stat.S_IFDIR | 0o755,
        uid=os.getuid() if uid is None else uid,
        gid=os.getgid() if gid is None else gid,
        atime_ns=now, mtime_ns=now, ctime_ns=now, nlink=2,
    )
    txn = Txn()
    for p in paths.skeleton():
        txn.create(p)
    txn.create(paths.inode_counter, str(ROOT_INO + 1).encode())
    txn.create(paths.inode_shard(ROOT_INO))
    txn.create(paths.inode(ROOT_INO), root.encode())
    txn.create(paths.dir(ROOT_INO))
    txn.create(paths.config, config.encode())  # last: its existence means "complete"
    try:
        await zk.commit(txn)
    except NodeExistsError:
        raise DfsError(errno.EEXIST, f"a filesystem already exists at {paths.root}") from None


async def load_config(zk: ZkClient, paths: FsPaths) -> FsConfig:
    try:
        data, _ = await zk.get(paths.config)
    except NoNodeError:
        raise DfsError(errno.ENOENT, f"no filesystem at {paths.root} (run 'dfs mkfs')") from None
    config = FsConfig.decode(data)
    if config.format_revision > FORMAT_REVISION:
        raise DfsError(errno.EPROTO, f"the filesystem at {paths.root} has format revision "
                       f"{config.format_revision}, newer than this dfs ({FORMAT_REVISION}): upgrade dfs")
    return config


async def _set_config(zk: ZkClient, paths: FsPaths, name: str, value: float) -> FsConfig | None:
    """Set one field of the config znode (version-checked, retried); None if it had that value."""
    while True:
        try:
            data, st = await zk.get(paths.config)
        except NoNodeError:
            raise DfsError(errno.ENOENT, f"no filesystem at {paths.root} (run 'dfs mkfs')") from None
        config = FsConfig.decode(data)
        if getattr(config, name) == value:
            return None
        setattr(config, name, value)
        try:
            await zk.set(paths.config, config.encode(), st.version)
            return config
        except BadVersionError:
            continue


async def set_zk_heap(zk: ZkClient, paths: FsPaths, zk_heap: int) -> bool:
    """Record the heap ZooKeeper now runs with (a setting that changes after
    mkfs; dfs.maint.capacity re-reads it). True if it changed."""
    if zk_heap < MIN_ZK_HEAP:
        raise DfsError(errno.EINVAL, f"zk_heap must be at least {MIN_ZK_HEAP >> 20} MiB")
    return await _set_config(zk, paths, "zk_heap", zk_heap) is not None


SETTABLE = ("trash_days",)  # the settings `dfs config set` may change on a live filesystem


async def set_setting(zk: ZkClient, paths: FsPaths, name: str, value: float) -> FsConfig:
    """Change one of SETTABLE in the config znode (version-checked); the new config."""
    if name not in SETTABLE:
        raise DfsError(errno.EINVAL, f"{name} cannot be changed (settable: {', '.join(SETTABLE)})")
    if not value >= 0:
        raise DfsError(errno.EINVAL, f"{name} must be a number >= 0")
    return await _set_config(zk, paths, name, value) or await load_config(zk, paths)
