"""How fast `dfs fsck` checks a filesystem: metadata pass (files/s) and --verify-data (MiB/s).

    python -m tools.benches.fsckbench [--files 20000] [--big-gib 2] [--keep DIR] [--profile]

Starts its own ZooKeeper and 3 storage nodes in a temporary directory, builds a
filesystem of `--files` small files (1-4 KiB, 200 per directory) and `--big-gib`
GiB of 64 MiB files with 4 MiB blocks, all real: inodes and maps made by
`dfs.meta.Meta`, every block PUT to 3 nodes by `dfs.blocks.client.BlockClient`.
Then runs `dfs fsck` (a subprocess, as a user would) without and with
--verify-data and prints files/s and MiB/s. For comparison it reads and
xxh3-hashes every block file on the nodes once in this process (what VERIFY
must do at least), after dropping the page cache when allowed (root).
Everything is stopped (by PID) and removed at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio
import xxhash

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.meta import Meta
from dfs.keys import create_key_file, key_check, load_key
from dfs.mkfs import load_config, mkfs
from dfs.paths import ROOT_INO, FsPaths, default_root
from dfs.zk import connect
from tools.common import drop_caches
from tools.local.nodeproc import start_nodes
from tools.local.zkserver import ZkEnsemble

REPO = Path(__file__).resolve().parents[2]
PER_DIR = 200
BIG_FILE = 64 << 20


async def build(hosts: str, fsname: str, files: int, big_bytes: int, key: bytes) -> None:
    zk = await connect(hosts)
    paths = FsPaths(default_root(fsname))
    zk.authenticate(key, paths.root)
    config = await load_config(zk, paths)
    meta = Meta(zk, paths, config)
    nodedir = NodeDirectory(zk, paths)
    await nodedir.wait_for(3, 30)
    blocks = BlockClient(nodedir, key=key)
    limit = trio.CapacityLimiter(128)
    t0 = time.monotonic()
    done = 0

    async def one_file(parent: int, name: str, size: int) -> None:
        nonlocal done
        async with limit:
            node = await meta.create(parent, name.encode(), 0o644, uid=0, gid=0)
            refs = {}
            for i in range(0, size, config.block_size):
                n = min(config.block_size, size - i)
                refs[i // config.block_size] = await blocks.write_block(
                    os.urandom(n), replicas=config.replicas, min_replicas=config.min_replicas)
            await meta.blockmap.commit_blocks(node.ino, refs, size=size, mtime_ns=time.time_ns())
            done += 1
            if done % 2000 == 0:
                print(f"  {done} files, {time.monotonic() - t0:.0f} s", flush=True)

    try:
        big = await meta.mkdir(ROOT_INO, b"big", 0o755, uid=0, gid=0)
        async with trio.open_nursery() as nursery:
            for i in range((big_bytes + BIG_FILE - 1) // BIG_FILE):
                nursery.start_soon(one_file, big.ino, f"big-{i:04d}", BIG_FILE)
        print(f"  big files: {big_bytes / 2**30:.1f} GiB in {time.monotonic() - t0:.0f} s", flush=True)
        small = await meta.mkdir(ROOT_INO, b"small", 0o755, uid=0, gid=0)
        dirs = []
        for d in range((files + PER_DIR - 1) // PER_DIR):
            dirs.append((await meta.mkdir(small.ino, f"d{d:04d}".encode(), 0o755, uid=0, gid=0)).ino)
        async with trio.open_nursery() as nursery:
            for i in range(files):
                nursery.start_soon(one_file, dirs[i // PER_DIR], f"f{i:06d}", 1024 + (i * 7919) % 3072)
        print(f"  built {files} small files + {big_bytes >> 20} MiB in {time.monotonic() - t0:.0f} s",
              flush=True)
    finally:
        await blocks.aclose()
        await zk.close()


async def make_fs(hosts: str, fsname: str, key: bytes) -> None:
    zk = await connect(hosts)
    zk.authenticate(key, default_root(fsname))
    try:
        await mkfs(zk, FsPaths(default_root(fsname)), FsConfig(key_check=key_check(key)))
    finally:
        await zk.close()


def raw_read_hash(node_dirs: list[Path]) -> tuple[int, float]:
    """Read and hash every block file once (one thread): the floor for --verify-data."""
    total = 0
    t = time.monotonic()
    for d in node_dirs:
        for p in (d / "blocks").rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    h = xxhash.xxh3_64()
                    while chunk := f.read(4 << 20):
                        h.update(chunk)
                        total += len(chunk)
    return total, time.monotonic() - t


def run_fsck(hosts: str, fsname: str, key_file: Path, *extra: str,
             profile: str | None = None) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "tools.cli", "fsck", "--zk", hosts, "--fs", fsname,
           "--key-file", str(key_file), "--json", *extra]
    if profile:
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-o", profile, "-r", "200",
               "--", *cmd]
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t
    if r.returncode not in (0, 1):
        raise RuntimeError(f"fsck failed ({r.returncode}): {r.stderr}")
    out = next(line for line in r.stdout.splitlines() if line.startswith("{"))  # py-spy talks too
    return json.loads(out), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--big-gib", type=float, default=2.0)
    ap.add_argument("--keep", help="build in this directory and leave it (default: a temporary one)")
    ap.add_argument("--profile", action="store_true", help="record py-spy flame graphs of the fsck runs")
    ap.add_argument("--repeat", type=int, default=3, help="metadata runs (best is reported, all are listed)")
    args = ap.parse_args()
    base = Path(args.keep or tempfile.mkdtemp(prefix="fsckbench-"))
    base.mkdir(parents=True, exist_ok=True)
    ens = ZkEnsemble(base / "zk", servers=1)
    nodes = []
    state = base / "fsckbench.json"
    built = state.exists()  # --keep DIR from an earlier run: check what is there again
    fsname = json.loads(state.read_text())["fs"] if built else f"bench-{uuid.uuid4().hex[:6]}"
    try:
        ens.start()
        key_file = base / f"{fsname}.key"
        if not built:
            trio.run(make_fs, ens.hosts, fsname, create_key_file(key_file))
        nodes = start_nodes(ens.hosts, fsname, base, 3, key_file=key_file,
                            env={"DFS_REPAIR_SCAN_INTERVAL": "36000", "DFS_ORPHAN_INTERVAL": "36000"})
        if not built:
            print(f"building in {base} (ZooKeeper {ens.hosts})", flush=True)
            trio.run(build, ens.hosts, fsname, args.files, int(args.big_gib * 2**30),
                     load_key(key_file))
            state.write_text(json.dumps({"fs": fsname}))
        else:
            print(f"reusing the filesystem built in {base}", flush=True)
        results = []
        for i in range(args.repeat):
            rep, wall = run_fsck(ens.hosts, fsname, key_file,
                                 profile=str(base / "fsck-meta.svg") if args.profile and i == 0 else None)
            results.append((rep, wall))
        rep, wall = min(results, key=lambda x: x[0]["elapsed"])
        print("metadata runs: " + ", ".join(f"{r['elapsed']:.2f} s" for r, _ in results))
        files = rep["total_files"] + rep["total_dirs"] + rep["total_symlinks"]
        print(f"\nfsck (metadata): status {rep['status']}, {rep['total_files']} files, {rep['total_dirs']} dirs, "
              f"{rep['total_blocks']} blocks, {rep['total_size'] / 2**30:.2f} GiB")
        print(f"  check {rep['elapsed']:.2f} s ({files / rep['elapsed']:,.0f} files/s); "
              f"whole command {wall:.2f} s ({files / wall:,.0f} files/s)")
        dropped = drop_caches()
        rep, wall = run_fsck(ens.hosts, fsname, key_file, "--verify-data",
                             profile=str(base / "fsck-verify.svg") if args.profile else None)
        mib = rep["verified_bytes"] / 2**20
        print(f"fsck --verify-data ({'cold' if dropped else 'warm'} cache): {rep['verified_replicas']} replicas, "
              f"{mib:,.0f} MiB in {rep['elapsed']:.2f} s = {mib / rep['elapsed']:,.0f} MiB/s "
              f"(status {rep['status']})")
        dropped = drop_caches()
        total, secs = raw_read_hash([n.data_dir for n in nodes])
        print(f"baseline: read+xxh3 of every block file in one thread ({'cold' if dropped else 'warm'} cache): "
              f"{total / 2**20:,.0f} MiB in {secs:.2f} s = {total / 2**20 / secs:,.0f} MiB/s")
    finally:
        for n in nodes:
            n.stop()
        ens.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
