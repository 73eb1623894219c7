"""`dfs mkfs`: create a filesystem; refuses to overwrite one (exit 1)."""

import argparse
import dataclasses
import errno

import trio

from dfs.config import FsConfig
from dfs.errors import DfsError, QuietError, UsageError
from dfs.mkfs import mkfs
from dfs.paths import FsPaths, default_root
from tools.common import EXIT_OK, EXIT_PROBLEM, connect_zk


def config_of(args: argparse.Namespace) -> FsConfig:
    """The settings given by tools.cli.add_mkfs_options (`dfs mkfs`, `dfs up`)."""
    return FsConfig(block_size=args.block_size, replicas=args.replicas,
                    min_replicas=args.min_replicas, dead_after=args.dead_after,
                    inline_max=args.inline_max)


async def _main(args: argparse.Namespace) -> int:
    config = dataclasses.replace(config_of(args), zk_heap=args.zk_heap)
    zk = await connect_zk(args)
    try:
        await mkfs(zk, FsPaths(default_root(args.fs)), config)
    except DfsError as e:
        if e.errno == errno.EEXIST:
            raise QuietError(f"{e.message}; refusing to overwrite it", EXIT_PROBLEM) from None
        if e.errno == errno.EINVAL:
            raise UsageError(e.message) from None  # bad option values: exit 2
        raise
    finally:
        await zk.close()
    print(f"created filesystem '{args.fs}': block size {config.block_size}, "
          f"replicas {config.replicas} (min {config.min_replicas})")
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    return trio.run(_main, args)
