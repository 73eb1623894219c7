"""`dfs bench [DIR]`: throughput and metadata benchmark, in the manner of `juicefs bench`.

Runs on any directory (a dfs mount, MooseFS, local disk) so the numbers can be
set side by side. Phases: big file write (1 MiB writes, fsync at the end) and
read back (caches dropped when root), small files create / stat / read /
delete. Prints a table (or JSON with --json). `--scale N` runs the metadata
scale benchmark instead (tools/benches/scale.py), `--tree` the tree workload
(tar, cp -a, rsync -a, ls -lR, rm -rf, git clone: tools/benches/tree.py), `--window`
what a SIGKILLed mount loses of its background changes (tools/benches/window.py),
`--repair` how fast the cluster heals after a node's SIGKILL (tools/benches/repair.py).
"""

import argparse
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from dfs.errors import UsageError
from tools.benches import repair, scale, tree, window
from tools.common import drop_caches


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(directory: Path, big_size: int, nfiles: int) -> list[tuple[str, float, str, float]]:
    work = directory / f".dfs-bench-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    rows: list[tuple[str, float, str, float]] = []
    chunk = os.urandom(1 << 20)
    try:
        big = work / "bigfile"

        def write_big() -> None:
            with open(big, "wb") as f:
                left = big_size
                while left > 0:
                    n = min(left, len(chunk))
                    f.write(chunk[:n])
                    left -= n
                f.flush()
                os.fsync(f.fileno())

        el = timed(write_big)
        rows.append(("write big file", big_size / el / 2**20, "MiB/s", el))
        drop_caches()

        def read_big() -> None:
            with open(big, "rb") as f:
                while f.read(1 << 20):
                    pass

        el = timed(read_big)
        rows.append(("read big file", big_size / el / 2**20, "MiB/s", el))
        big.unlink()

        small = work / "small"
        small.mkdir()
        payload = os.urandom(4096)
        names = [small / f"f{i:06d}" for i in range(nfiles)]

        def create() -> None:
            for p in names:
                with open(p, "wb") as f:
                    f.write(payload)

        el = timed(create)
        rows.append(("write small files", nfiles / el, "files/s", el / nfiles * 1e3))
        drop_caches()
        el = timed(lambda: [os.stat(p) for p in os.scandir(small)])
        rows.append(("stat small files", nfiles / el, "files/s", el / nfiles * 1e3))
        drop_caches()

        def read_small() -> None:
            for p in names:
                with open(p, "rb") as f:
                    f.read()

        el = timed(read_small)
        rows.append(("read small files", nfiles / el, "files/s", el / nfiles * 1e3))
        el = timed(lambda: [p.unlink() for p in names])
        rows.append(("delete small files", nfiles / el, "files/s", el / nfiles * 1e3))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    if args.scale:
        return scale.main(args)
    if args.tree:
        return tree.main(args)
    if args.window:
        return window.main(args)
    if args.repair:
        return repair.main(args)
    rows = run(directory, args.size, args.files)
    if args.json:
        print(json.dumps({name: {"value": round(v, 2), "unit": unit} for name, v, unit, _ in rows}))
        return 0
    print(f"dfs bench on {directory}: big file {args.size / 2**20:.0f} MiB, {args.files} small files of 4 KiB")
    print(f"{'ITEM':<20} {'VALUE':>12} {'UNIT':<8} {'COST':>12}")
    for name, v, unit, cost in rows:
        cost_s = f"{cost:.2f} s" if unit == "MiB/s" else f"{cost:.3f} ms/file"
        print(f"{name:<20} {v:>12.1f} {unit:<8} {cost_s:>12}")
    return 0
