"""Latency of ZooKeeper calls through dfs's client (`dfs.zk.session.WireZk`).

    python -m tools.benches.zkwirebench [--zk HOSTS] [-n 3000] [--size 200] [--concurrency 200]

Times N sequential calls of each kind (get, set, a 3-operation commit: set +
create + set) and prints median and p90 per call, then the wall time of `--concurrency` pipelined gets. Without --zk it
starts a private standalone ZooKeeper in a temporary directory and stops it (by
PID) at the end. Znodes go under a fresh /zkwirebench-<id> root, removed at the end.
"""

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Awaitable, Callable

import trio

from dfs.zk import Txn, connect
from tools.local.zkserver import ZkEnsemble


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    """Seconds per call of `n` sequential calls (after a short warm-up)."""
    for i in range(min(n, 200)):
        await call(-1 - i)
    out = []
    for i in range(n):
        t = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t)
    return out


async def pipelined(zk: Any, path: str, concurrency: int, rounds: int = 20) -> float:
    """Median wall time (s) of `concurrency` concurrent gets."""
    walls = []
    for _ in range(rounds):
        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(zk.get, path)
        walls.append(time.perf_counter() - t)
    return statistics.median(walls)


async def measure(hosts: str, n: int, size: int, concurrency: int) -> dict[str, Any]:
    zk = await connect(hosts)
    root = f"/zkwirebench-{uuid.uuid4().hex[:8]}"
    value = b"x" * size
    try:
        await zk.create(root, value)
        ops: dict[str, Callable[[int], Awaitable[Any]]] = {
            "get": lambda i: zk.get(root),
            "set": lambda i: zk.set(root, value),
            "commit3": lambda i: zk.commit(Txn().set(root, value).create(f"{root}/c{i}", value)
                                           .set(root, value)),
        }
        out: dict[str, Any] = {name: await timed(n, op) for name, op in ops.items()}
        out["pipelined"] = await pipelined(zk, root, concurrency)
        return out
    finally:
        await zk.delete_recursive(root)
        await zk.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


async def run(hosts: str, n: int, size: int, concurrency: int) -> None:
    results = await measure(hosts, n, size, concurrency)
    print(f"{n} sequential calls per kind, {size}-byte values, ZooKeeper {hosts}")
    print(f"{'call':<10} {'median ms':>10} {'p90 ms':>8}")
    for name in ("get", "set", "commit3"):
        ts = sorted(results[name])
        print(f"{name:<10} {ms(statistics.median(ts)):>10} {ms(ts[int(len(ts) * 0.9)]):>8}")
    print(f"{concurrency} concurrent gets (wall, median of 20): {ms(results['pipelined'])} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zk", help="ZooKeeper hosts (default: start a private server)")
    parser.add_argument("-n", type=int, default=3000, help="sequential calls per kind")
    parser.add_argument("--size", type=int, default=200, help="bytes per value")
    parser.add_argument("--concurrency", type=int, default=200, help="pipelined gets")
    args = parser.parse_args(argv)
    if args.zk:
        trio.run(run, args.zk, args.n, args.size, args.concurrency)
        return 0
    with tempfile.TemporaryDirectory(prefix="zkwire-bench-") as tmp, ZkEnsemble(tmp) as ens:
        trio.run(run, ens.hosts, args.n, args.size, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
