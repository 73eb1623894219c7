"""`dfs setrep PATH N [-r]`: the number of copies of a file's blocks, per file or directory.

On a directory it sets what files and directories created in it from now on
get (they inherit it, and pass it on); `-r` also rewrites everything already
below it. On a file it sets that file's own. The repair leader then adds or
drops copies to match each file's count (dfs.meta.replication). N is 1 up to
the nodes that could hold a copy (registered, not draining or retired) and at
most dfs.meta.replication.MAX_REPLICAS.

Exit codes: 0 set; 1 the filesystem refused (the inodes kept changing: run it
again); 2 bad N, no such path, usage or connection error.
"""

import argparse
import errno

import trio

from dfs.errors import DfsError, QuietError, UsageError
from dfs.maint import cluster
from dfs.meta import Meta
from dfs.meta.replication import MAX_REPLICAS, set_replicas
from dfs.mkfs import load_config
from dfs.paths import FsPaths, default_root
from tools.common import EXIT_OK, EXIT_USAGE, cluster_key, connect_zk
from tools.why import resolve


def check_count(n: int, holders: int) -> None:
    """UsageError unless 1 <= n <= min(holders, MAX_REPLICAS)."""
    top = min(holders, MAX_REPLICAS)
    if not 1 <= n <= top:
        why = (f"the cluster has {holders} node(s) that can hold a copy" if holders < MAX_REPLICAS
               else f"at most {MAX_REPLICAS}")
        raise UsageError(f"replicas must be 1..{top} ({why}), not {n}")


async def _main(args: argparse.Namespace) -> int:
    zk = await connect_zk(args)
    try:
        paths = FsPaths(default_root(args.fs))
        await cluster_key(args, zk)
        try:
            config = await load_config(zk, paths)
        except DfsError as e:
            raise QuietError(e.message, EXIT_USAGE) from None
        regs = await cluster.registry(zk, paths)
        check_count(args.replicas, sum(1 for r in regs.values() if r.state == "active"))
        meta = Meta(zk, paths, config)
        ino = await resolve(meta, args.path)
        try:
            done = await set_replicas(meta, ino, args.replicas, recursive=args.recursive)
        except DfsError as e:
            if e.errno == errno.EINVAL:  # not a file or directory
                raise UsageError(f"{args.path}: {e.message}") from None
            raise
    finally:
        await zk.close()
    print(f"{args.path}: replicas {args.replicas}"
          f"{' (the filesystem default)' if args.replicas == config.replicas else ''}; "
          f"changed {done.files} file(s) and {done.dirs} director(ies), {done.unchanged} already so")
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    return trio.run(_main, args)
