"""High availability with real processes (issue 5): node loss, repair leader, corrupt
replicas, gc, drain, and a ZooKeeper leader change under a running `cp`.

Every wait is bounded and fails with what it saw; numbers (repair time and rate,
stall time) are printed, never asserted.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from dfs.records import BlockGroup, FsConfig, NodeRegistration
from tests.harness import Cluster
from tools.zkserver import ZkEnsemble

MiB = 1 << 20
NODE_ENV = {"DFS_NODE_HEARTBEAT": "0.5"}


def config(**kw) -> FsConfig:
    base = dict(block_size=MiB, replicas=3, min_replicas=2, dead_after=3)
    base.update(kw)
    return FsConfig(**base)


# ---------------------------------------------------------------- helpers


class View:
    """A synchronous look at one filesystem's ZooKeeper state (test side)."""

    def __init__(self, hosts: str, paths):
        self.paths = paths
        self.zk = KazooClient(hosts=hosts, timeout=10.0)
        self.zk.start(timeout=15)

    def close(self) -> None:
        self.zk.stop()
        self.zk.close()

    def live(self) -> set[str]:
        return set(self.zk.get_children(self.paths.live))

    def registration(self, node_id: str) -> NodeRegistration:
        return NodeRegistration.decode(self.zk.get(self.paths.registry_node(node_id))[0])

    def blocks(self):
        """[(ino, index, BlockRef)] of every block map."""
        out = []
        for ino in self.zk.get_children(self.paths.blocks):
            for g in self.zk.get_children(self.paths.block_map(int(ino))):
                data, _ = self.zk.get(self.paths.block_group(int(ino), int(g)))
                out.extend((int(ino), i, r) for i, r in BlockGroup.decode(data).blocks.items())
        return out

    def health(self, replicas: int) -> dict:
        live = self.live()
        blocks = self.blocks()
        short = [(ino, i, r.replicas) for ino, i, r in blocks
                 if len([n for n in r.replicas if n in live]) < replicas
                 or any(n not in live for n in r.replicas)]
        return {"blocks": len(blocks), "short": short}

    def audit(self) -> list[dict]:
        names = sorted(self.zk.get_children(self.paths.repair_audit))
        return [json.loads(self.zk.get(f"{self.paths.repair_audit}/{n}")[0]) for n in names]

    def status(self) -> dict:
        try:
            return json.loads(self.zk.get(self.paths.repair_status)[0])
        except Exception:
            return {}

    def leader(self) -> str | None:
        names = self.zk.get_children(self.paths.repair_election)
        if not names:
            return None
        return min(names, key=lambda n: int(n.rsplit("-", 1)[1])).split(".", 1)[0]


def wait_for(what: str, check, timeout: float, interval: float = 0.25):
    """Poll `check()` until it returns a truthy value; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last and not isinstance(last, dict) or (isinstance(last, dict) and last.get("ok")):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last seen: {str(last)[:2000]}")


def wait_gone(view: View, node_ids: list[str], timeout: float = 30) -> None:
    wait_for(f"nodes {node_ids} to leave nodes/live (session expiry)",
             lambda: not set(node_ids) & view.live(), timeout)


def wait_healthy(view: View, replicas: int, timeout: float) -> dict:
    def check():
        h = view.health(replicas)
        h["ok"] = h["blocks"] > 0 and not h["short"]
        h["short"] = h["short"][:5]
        return h
    return wait_for(f"every block to have {replicas} replicas on live nodes", check, timeout)


def write_files(mnt: Path, src_dir: Path, sizes: list[int]) -> dict[str, str]:
    """Write random files through the mount; returns name -> sha256."""
    sums = {}
    src_dir.mkdir(exist_ok=True)
    for k, size in enumerate(sizes):
        src = src_dir / f"f{k}"
        h = hashlib.sha256()
        with open(src, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 4 * MiB))
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
        shutil.copyfile(src, mnt / f"f{k}")
        src.unlink()
        sums[f"f{k}"] = h.hexdigest()
    return sums


def check_files(mnt: Path, sums: dict[str, str]) -> None:
    for name, digest in sums.items():
        h = hashlib.sha256()
        with open(mnt / name, "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        assert h.hexdigest() == digest, f"{name} reads back different bytes"


def start_cluster(cluster_factory, cfg: FsConfig, nodes: int) -> Cluster:
    c = cluster_factory(config=cfg, nodes=0)
    for _ in range(nodes):
        c.add_node(env=NODE_ENV)
    c.mount()
    return c


def node_by_id(c: Cluster, node_id: str):
    return next(n for n in c.nodes if n.node_id == node_id)


def data_bytes(c: Cluster) -> int:
    total = 0
    for n in c.nodes:
        for d, _, files in os.walk(n.data_dir / "blocks"):
            total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


# ---------------------------------------------------------------- tests


def test_node_loss_is_repaired(cluster_factory, tmp_path):
    """SIGKILL one of 3 nodes and add a fresh one: 3 replicas again, files intact."""
    size = 200 * MiB
    c = start_cluster(cluster_factory, config(), 3)
    mnt = c.mounts[0].mountpoint
    sums = write_files(mnt, tmp_path / "src", [80 * MiB, 70 * MiB, 50 * MiB])
    view = View(c.hosts, c.paths)
    try:
        wait_healthy(view, 3, 30)
        victim = c.nodes[1]
        killed = time.monotonic()
        victim.kill()
        c.add_node(env=NODE_ENV)
        wait_gone(view, [victim.node_id])
        # session timeout (10 s) + dead_after (3 s) + the copy itself
        wait_healthy(view, 3, 120)
        took = time.monotonic() - killed
        copies = [r for r in view.audit() if r["action"] == "copy"]
        assert copies and all(victim.node_id not in r["to"] for r in copies)
        first = min(r["time"] for r in copies)
        last = max(r["time"] for r in copies)
        rate = size / MiB / max(last - first, 1e-3)
        print(f"\nnode loss: {size // MiB} MiB back to 3 replicas {took:.1f} s after SIGKILL "
              f"(session timeout 10 s + dead_after 3 s); repair copied {len(copies)} blocks "
              f"in {last - first:.1f} s = {rate:.0f} MiB/s")
        check_files(mnt, sums)
    finally:
        view.close()
