"""Block-layer benchmark: one client against N local storage nodes (no FUSE, no metadata).

    python -m tools.benches.blockbench [--nodes 3] [--blocks 64] [--concurrency 8] [--small 4000] [--tls]

Starts its own ZooKeeper and nodes in a temporary directory, then measures
durable replicated 4 MiB block writes, verified 4 MiB reads, and 4 KiB PUT/GET
rates, and prints a table. Everything it started is stopped by PID at the end.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.keys import create_key_file, key_check
from dfs.mkfs import mkfs
from dfs.paths import FsPaths, default_root
from dfs.records import BlockRef
from dfs.tls import client_context
from dfs.zk import connect
from tools.local.nodeproc import NodeProcess, start_nodes
from tools.local.zkserver import ZkEnsemble

MiB = 1 << 20


async def run_parallel(n_items: int, concurrency: int, fn) -> float:
    """Call `await fn(i)` for i in range(n_items) with `concurrency` workers; seconds taken."""
    it = iter(range(n_items))

    async def worker() -> None:
        for i in it:
            await fn(i)

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for _ in range(concurrency):
            n.start_soon(worker)
    return time.perf_counter() - t0


async def bench(client: BlockClient, args: argparse.Namespace) -> dict[str, float]:
    results: dict[str, float] = {}
    big = [os.urandom(args.block_size) for _ in range(min(args.blocks, 8))]
    refs: list[BlockRef | None] = [None] * args.blocks

    async def put_big(i: int) -> None:
        refs[i] = await client.write_block(big[i % len(big)], replicas=args.replicas,
                                           min_replicas=args.replicas)

    secs = await run_parallel(args.blocks, args.concurrency, put_big)
    results["write_mib_s"] = args.blocks * args.block_size / MiB / secs

    async def get_big(i: int) -> None:
        data = await client.read_block(refs[i])
        assert len(data) == args.block_size

    secs = await run_parallel(args.blocks, args.concurrency, get_big)
    results["read_mib_s"] = args.blocks * args.block_size / MiB / secs

    small = os.urandom(4096)
    srefs: list[BlockRef | None] = [None] * args.small

    async def put_small(i: int) -> None:
        srefs[i] = await client.write_block(small, replicas=args.replicas,
                                            min_replicas=args.replicas)

    secs = await run_parallel(args.small, args.small_concurrency, put_small)
    results["put4k_s"] = args.small / secs

    async def get_small(i: int) -> None:
        assert await client.read_block(srefs[i]) == small

    secs = await run_parallel(args.small, args.small_concurrency, get_small)
    results["get4k_s"] = args.small / secs
    return results


async def main_async(args: argparse.Namespace, zk_hosts: str, fsname: str,
                     key: bytes) -> dict[str, float]:
    zk = await connect(zk_hosts)
    zk.authenticate(key, default_root(fsname))
    try:
        nodedir = NodeDirectory(zk, FsPaths(default_root(fsname)))
        await nodedir.wait_for(args.nodes, timeout=30)
        client = BlockClient(nodedir, key=key, tls=client_context(key) if args.tls else None)
        try:
            return await bench(client, args)
        finally:
            await client.aclose()
    finally:
        await zk.close()


async def make_fs(zk_hosts: str, fsname: str, key: bytes, tls: bool) -> None:
    zk = await connect(zk_hosts)
    zk.authenticate(key, default_root(fsname))
    try:
        await mkfs(zk, FsPaths(default_root(fsname)), FsConfig(key_check=key_check(key), tls=tls))
    finally:
        await zk.close()


def print_table(results: dict[str, float], args: argparse.Namespace) -> None:
    rows = [
        (f"write {args.block_size // MiB} MiB blocks x{args.replicas} (durable)",
         results["write_mib_s"], "MiB/s"),
        (f"read {args.block_size // MiB} MiB blocks (verified)", results["read_mib_s"], "MiB/s"),
        (f"PUT 4 KiB x{args.replicas}", results["put4k_s"], "ops/s"),
        ("GET 4 KiB", results["get4k_s"], "ops/s"),
    ]
    print(f"{'block layer, ' + str(args.nodes) + ' nodes, 1 client':<42} {'value':>10}  unit")
    print("-" * 60)
    for name, value, unit in rows:
        print(f"{name:<42} {value:>10.1f}  {unit}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.benches.blockbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--blocks", type=int, default=64, help="4 MiB blocks to write and read")
    p.add_argument("--block-size", type=int, default=4 * MiB)
    p.add_argument("--concurrency", type=int, default=8, help="blocks in flight")
    p.add_argument("--small", type=int, default=4000, help="4 KiB blocks to PUT and GET")
    p.add_argument("--small-concurrency", type=int, default=64)
    p.add_argument("--dir", help="where node data goes (default: a temp dir, removed after)")
    p.add_argument("--zk", help="use this ZooKeeper instead of starting one")
    p.add_argument("--tls", action="store_true", help="a filesystem made with --tls")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="blockbench-", dir=args.dir) as tmp:
        base = Path(tmp)
        ens = None
        nodes: list[NodeProcess] = []
        try:
            if args.zk:
                zk_hosts = args.zk
            else:
                ens = ZkEnsemble(base / "zk", servers=1).start()
                zk_hosts = ens.hosts
            fsname = f"bench-{uuid.uuid4().hex[:8]}"
            key_file = base / f"{fsname}.key"
            key = create_key_file(key_file)
            trio.run(make_fs, zk_hosts, fsname, key, args.tls)
            nodes = start_nodes(zk_hosts, fsname, base, args.nodes, key_file=key_file)
            results = trio.run(main_async, args, zk_hosts, fsname, key)
        finally:
            for n in nodes:
                n.stop()
            if ens is not None:
                ens.stop()
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
