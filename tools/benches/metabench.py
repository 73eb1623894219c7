"""Per-operation latency of the metadata core against a real local ZooKeeper.

    python -m tools.benches.metabench [--ops 2000] [--zk HOST:PORT]

Starts its own standalone ZooKeeper unless --zk is given, makes a fresh
filesystem, and times create, lookup, getattr, rename and unlink from one client,
one operation at a time (median, p99, ops/s); then a parallel create/unlink of
many entries in one directory (throughput).
"""

import argparse
import statistics
import tempfile
import time
import uuid

import trio

from dfs.config import FsConfig
from dfs.meta import Meta
from dfs.mkfs import mkfs
from dfs.paths import ROOT_INO, FsPaths, default_root
from dfs.zk import connect
from tools.local.zkserver import ZkEnsemble


def summarize(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    med = statistics.median(s) * 1e3
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3
    return f"{name:<10} {len(s):>7} {med:>9.3f} {p99:>9.3f} {len(s) / sum(s):>10.0f}"


async def run(hosts: str, n: int, parallel_n: int) -> None:
    zk = await connect(hosts)
    paths = FsPaths(default_root(f"bench-{uuid.uuid4().hex[:8]}"))
    config = FsConfig()
    await mkfs(zk, paths, config)
    meta = Meta(zk, paths, config)
    d = await meta.mkdir(ROOT_INO, b"d", 0o755, uid=0, gid=0)
    names = [f"file-{i:06d}".encode() for i in range(n)]
    timings: dict[str, list[float]] = {k: [] for k in ("create", "lookup", "getattr", "rename", "unlink")}
    inos = []
    for nm in names:
        t = time.perf_counter()
        node = await meta.create(d.ino, nm, 0o644, uid=0, gid=0)
        timings["create"].append(time.perf_counter() - t)
        inos.append(node.ino)
    for nm in names:
        t = time.perf_counter()
        await meta.lookup(d.ino, nm)
        timings["lookup"].append(time.perf_counter() - t)
    for ino in inos:
        t = time.perf_counter()
        await meta.inodes.getattr(ino)
        timings["getattr"].append(time.perf_counter() - t)
    for nm in names:
        t = time.perf_counter()
        await meta.namespace.rename(d.ino, nm, d.ino, nm + b".r")
        timings["rename"].append(time.perf_counter() - t)
    for nm in names:
        t = time.perf_counter()
        await meta.unlink(d.ino, nm + b".r")
        timings["unlink"].append(time.perf_counter() - t)
    print(f"single client, one operation at a time, {n} entries, ZooKeeper {hosts}")
    print(f"{'op':<10} {'count':>7} {'median ms':>9} {'p99 ms':>9} {'ops/s':>10}")
    for k, v in timings.items():
        print(summarize(k, v))

    async def create(parent: int, name: bytes) -> None:
        await meta.create(parent, name, 0o644, uid=0, gid=0)

    big = await meta.mkdir(ROOT_INO, b"big", 0o755, uid=0, gid=0)
    sem = trio.Semaphore(64)

    async def one(fn, *a):
        async with sem:
            await fn(*a)

    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(parallel_n):
            nursery.start_soon(one, create, big.ino, f"e{i:07d}".encode())
    el_c = time.perf_counter() - t
    t = time.perf_counter()
    entries = await meta.readdir(big.ino)
    el_l = time.perf_counter() - t
    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(parallel_n):
            nursery.start_soon(one, meta.unlink, big.ino, f"e{i:07d}".encode())
    el_u = time.perf_counter() - t
    print(f"\none directory, {parallel_n} entries, 64 in flight:")
    print(f"create {parallel_n / el_c:,.0f}/s ({el_c:.1f} s), list {len(entries):,} entries in "
          f"{el_l:.2f} s, unlink {parallel_n / el_u:,.0f}/s ({el_u:.1f} s)")
    await zk.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=20000)
    ap.add_argument("--zk")
    args = ap.parse_args()
    if args.zk:
        trio.run(run, args.zk, args.ops, args.parallel)
        return
    with tempfile.TemporaryDirectory() as tmp, ZkEnsemble(tmp, 1) as ens:
        trio.run(run, ens.hosts, args.ops, args.parallel)


if __name__ == "__main__":
    main()
