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

from dfs.config import FsConfig
from dfs.paths import election_leader
from dfs.records import BlockGroup, NodeLive, NodeRegistration
from dfs.zk.session import digest_credential
from tests.harness import Cluster
from tools.local.zkserver import ZkEnsemble

MiB = 1 << 20
NODE_ENV = {"DFS_NODE_HEARTBEAT": "0.5"}


def config(**kw) -> FsConfig:
    base = dict(block_size=MiB, replicas=3, min_replicas=2, dead_after=3)
    base.update(kw)
    return FsConfig(**base)


# ---------------------------------------------------------------- helpers


class View:
    """A synchronous look at one filesystem's ZooKeeper state (test side), with its key."""

    def __init__(self, hosts: str, paths, key: bytes):
        self.paths = paths
        self.zk = KazooClient(hosts=hosts, timeout=10.0, auth_data=[("digest", digest_credential(key))])
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
        return election_leader(self.zk.get_children(self.paths.repair_election))


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
    """Bytes of block files on the nodes' disks; a file gc deletes while we count counts 0."""
    total = 0
    for n in c.nodes:
        for d, _, files in os.walk(n.data_dir / "blocks"):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(d, f))
                except FileNotFoundError:
                    pass
    return total


# ---------------------------------------------------------------- tests


@pytest.mark.slow
def test_node_loss_is_repaired(cluster_factory, tmp_path):
    """SIGKILL one of 3 nodes and add a fresh one: 3 replicas again, files intact."""
    size = 200 * MiB
    c = start_cluster(cluster_factory, config(), 3)
    mnt = c.mounts[0].mountpoint
    sums = write_files(mnt, tmp_path / "src", [80 * MiB, 70 * MiB, 50 * MiB])
    view = View(c.hosts, c.paths, c.key)
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


def test_two_nodes_lost_one_copy_blocks_first(cluster_factory, tmp_path):
    """Kill two nodes at once: nothing lost, blocks down to 1 copy are repaired first.

    4 nodes (not 3): with 3 nodes and replicas 3 every block would be left
    with exactly one copy and there would be no order to check.
    """
    c = start_cluster(cluster_factory, config(), 4)
    mnt = c.mounts[0].mountpoint
    sums = write_files(mnt, tmp_path / "src", [16 * MiB, 16 * MiB, 8 * MiB])
    view = View(c.hosts, c.paths, c.key)
    try:
        wait_healthy(view, 3, 30)
        victims = c.nodes[:2]
        ids = {v.node_id for v in victims}
        one_copy = sum(1 for _, _, r in view.blocks() if ids <= set(r.replicas))
        for v in victims:
            v.kill()
        c.add_node(env=NODE_ENV)
        c.add_node(env=NODE_ENV)
        wait_gone(view, list(ids))
        wait_healthy(view, 3, 120)
        copies = [r for r in view.audit() if r["action"] == "copy"]
        order = [r["copies"] for r in copies]
        assert one_copy and 1 in order, f"no block was down to one copy: {order}"
        assert order == sorted(order), f"repairs not most-endangered first: {order}"
        print(f"\ntwo nodes lost: {order.count(1)} one-copy repairs, then {order.count(2)} two-copy")
        check_files(mnt, sums)
    finally:
        view.close()


@pytest.mark.slow
def test_repair_leader_killed_during_repair(cluster_factory, tmp_path):
    """SIGKILL the repair leader in the middle of a repair: another node finishes it."""
    c = cluster_factory(config=config(), nodes=0)
    slow = {**NODE_ENV, "DFS_REPAIR_BANDWIDTH": "8"}  # MiB/s: keep the repair running a while
    for _ in range(4):
        c.add_node(env=slow)
    c.mount()
    mnt = c.mounts[0].mountpoint
    sums = write_files(mnt, tmp_path / "src", [30 * MiB, 30 * MiB])
    view = View(c.hosts, c.paths, c.key)
    try:
        wait_healthy(view, 3, 30)
        leader = wait_for("a repair leader", view.leader, 30)
        victim = next(n for n in c.nodes if n.node_id != leader)
        victim.kill()
        c.add_node(env=slow)
        wait_gone(view, [victim.node_id])
        wait_for("the repair to start", lambda: [r for r in view.audit() if r["action"] == "copy"],
                 60, interval=0.1)
        node_by_id(c, leader).kill()
        c.add_node(env=slow)
        new_leader = wait_for("another repair leader",
                              lambda: (lambda l: l if l and l != leader else None)(view.leader()), 60)
        wait_healthy(view, 3, 150)
        by = {r["by"] for r in view.audit() if r["action"] == "copy"}
        assert f"node:{new_leader}" in by, f"the new leader repaired nothing: {by}"
        assert view.status().get("leader") == new_leader
        check_files(mnt, sums)
    finally:
        view.close()


@pytest.mark.slow
def test_rm_gives_space_back(cluster_factory, tmp_path):
    """rm of 1 GiB (3 replicas: 3 GiB on the nodes): the nodes' data shrinks back, df shows it."""
    c = start_cluster(cluster_factory, config(), 3)
    mnt = c.mounts[0].mountpoint
    write_files(mnt, tmp_path / "src", [256 * MiB] * 4)
    for k in range(4):
        (tmp_path / "src" / f"f{k}").unlink(missing_ok=True)  # keep the shared disk's free space honest
    before = data_bytes(c)
    assert before >= 3 * 1024 * MiB

    def df_free() -> int:
        st = os.statvfs(mnt)  # the mount's statfs: the live nodes' free space / replicas
        return st.f_bavail * st.f_frsize

    free_before = df_free()
    t0 = time.monotonic()
    for k in range(4):
        os.unlink(mnt / f"f{k}")
    wait_for("the nodes' block files to go", lambda: data_bytes(c) < 10 * MiB, 120, interval=0.5)
    freed_s = time.monotonic() - t0
    # all nodes share this machine's disk, so df on the mount sees the disk's free space
    wait_for("df on the mount to show the space", lambda: df_free() - free_before > 2 * 1024 * MiB, 30,
             interval=0.5)
    print(f"\nrm: {before / MiB:.0f} MiB of replicas freed {freed_s:.1f} s after rm; "
          f"df free +{(df_free() - free_before) / MiB:.0f} MiB")
    view = View(c.hosts, c.paths, c.key)
    try:
        assert view.zk.get_children(c.paths.gc) == []
    finally:
        view.close()


def test_writes_with_fewer_nodes_than_replicas_are_repaired_later(cluster_factory, tmp_path):
    c = start_cluster(cluster_factory, config(), 3)
    mnt = c.mounts[0].mountpoint
    view = View(c.hosts, c.paths, c.key)
    try:
        away = c.nodes[2]
        away.stop()
        wait_gone(view, [away.node_id])
        sums = write_files(mnt, tmp_path / "src", [6 * MiB, 3 * MiB])  # 2 live >= min_replicas
        short = [r for _, _, r in view.blocks() if len(r.replicas) < 3]
        assert len(short) == 9, [r.replicas for _, _, r in view.blocks()]
        # back only after the leader declared it dead, so its return is what triggers the repair
        wait_for("the leader to declare the node dead",
                 lambda: away.node_id in view.status().get("dead", []), 30)
        # 2 live nodes for 3 replicas: the leader says so once instead of planning copies it cannot make
        wait_for("the leader to count the blocks that cannot get 3 replicas",
                 lambda: (view.status().get("counts") or {}).get("impossible") == 9, 30)
        shown = subprocess.run([sys.executable, "-m", "tools.cli", "status", "--zk", c.hosts, "--fs", c.fsname],
                               capture_output=True, text=True, timeout=60).stdout
        assert "9 blocks cannot get 3 replicas: 2 active live nodes" in shown, shown
        away.start()
        wait_healthy(view, 3, 60)
        check_files(mnt, sums)
    finally:
        view.close()


def corrupt_block_file(path: Path) -> None:
    from nodes.store import header_size

    raw = bytearray(path.read_bytes())
    at = header_size(MiB) + 12345
    raw[at] ^= 0x5A
    path.write_bytes(raw)


def test_corrupt_replica_is_reported_and_replaced(cluster_factory, tmp_path):
    from dfs.checksum import hash64, to_hex
    from nodes.store import header_size

    c = start_cluster(cluster_factory, config(), 3)
    mnt = c.mounts[0].mountpoint
    # 32 blocks: a read tries the bad replica first with p = 1/3 per block, so
    # all 32 missing it has p = (2/3)^32 ~ 2e-6
    sums = write_files(mnt, tmp_path / "src", [32 * MiB])
    view = View(c.hosts, c.paths, c.key)
    try:
        bad = c.nodes[0]
        refs = [r for _, _, r in view.blocks()]
        files = {r.id: bad.data_dir / "blocks" / r.id[:2] / r.id[2:4] / r.id for r in refs}
        for p in files.values():
            corrupt_block_file(p)
        # A fresh mount (empty cache) reads: the reads that try the bad replica first
        # fail over and report it (which replica a read tries first is random).
        c.mount("mnt2")
        check_files(c.mounts[-1].mountpoint, sums)
        audit = wait_for("corrupt-replica repairs in the audit log",
                         lambda: [r for r in view.audit() if r["reason"] == "corrupt replica"], 30)
        wait_for("the corrupt reports to be handled",
                 lambda: not view.zk.get_children(c.paths.repair_reports), 30)
        audit = [r for r in view.audit() if r["reason"] == "corrupt replica"]
        fixed = {r["block"] for r in audit}
        assert all(r["to"] == [bad.node_id] for r in audit if r["action"] == "copy"), audit
        for r in refs:
            if r.id in fixed:  # the bad replica was overwritten by a good copy
                raw = files[r.id].read_bytes()
                assert to_hex(hash64(raw[header_size(r.length):])) == r.checksum
        print(f"\ncorrupt: {len(fixed)} reported replicas replaced from good copies")
        wait_healthy(view, 3, 30)
        check_files(mnt, sums)
    finally:
        view.close()


def test_drain_moves_everything_and_retires(cluster_factory, tmp_path):
    c = start_cluster(cluster_factory, config(), 4)
    mnt = c.mounts[0].mountpoint
    sums = write_files(mnt, tmp_path / "src", [12 * MiB, 8 * MiB])
    view = View(c.hosts, c.paths, c.key)
    try:
        wait_healthy(view, 3, 30)
        target = max(c.nodes, key=lambda n: sum(n.node_id in r.replicas for _, _, r in view.blocks()))
        drain = subprocess.Popen([sys.executable, "-m", "tools.cli", "drain", "--zk", c.hosts,
                                  "--fs", c.fsname, target.node_id, "--wait", "90"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            while drain.poll() is None:  # files stay readable while the node drains
                check_files(mnt, sums)
                time.sleep(0.2)
            out = drain.communicate()[0]
        finally:
            if drain.poll() is None:
                drain.kill()
                drain.wait()
        assert drain.returncode == 0, out
        assert view.registration(target.node_id).state == "retired"
        assert not [r for _, _, r in view.blocks() if target.node_id in r.replicas]
        wait_healthy(view, 3, 30)
        target.stop()
        check_files(mnt, sums)
        assert all(len(r.replicas) == 3 for _, _, r in view.blocks())
        status = subprocess.run([sys.executable, "-m", "tools.cli", "status", "--zk", c.hosts,
                                 "--fs", c.fsname, "--json"], capture_output=True, text=True)
        doc = json.loads(status.stdout)
        assert status.returncode == 0, status.stdout + status.stderr
        assert doc["missing_blocks"] == 0 and doc["under_replicated_blocks"] == 0
        assert {n["node_id"]: n["state"] for n in doc["nodes"]}[target.node_id] == "retired"
    finally:
        view.close()


def test_zookeeper_leader_killed_during_cp(tmp_path):
    """A 3-server ensemble loses its leader while `cp` writes a large file through a mount."""
    ens = ZkEnsemble(tmp_path / "zk", servers=3)
    ens.start()
    c = None
    try:
        c = Cluster(ens.hosts, tmp_path / "c", config())
        (tmp_path / "c").mkdir()
        c.mkfs()
        for _ in range(3):
            c.add_node(env=NODE_ENV)
        mnt = c.mount()
        src = tmp_path / "big"
        with open(src, "wb") as f:
            for _ in range(200):
                f.write(os.urandom(MiB))
        dst = mnt / "big"
        progress: list[tuple[float, int]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    progress.append((time.monotonic(), os.stat(dst).st_size))
                except OSError:
                    pass
                time.sleep(0.05)

        op_times: list[tuple[float, float]] = []  # (start, seconds) of small creates

        def creates() -> None:
            (mnt / "small").mkdir(exist_ok=True)
            k = 0
            while not stop.is_set():
                t0 = time.monotonic()
                (mnt / "small" / f"s{k}").write_bytes(b"x")
                op_times.append((t0, time.monotonic() - t0))
                k += 1
                time.sleep(0.05)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        t2 = threading.Thread(target=creates, daemon=True)
        t2.start()
        cp = subprocess.Popen(["cp", str(src), str(dst)], stderr=subprocess.PIPE, text=True)
        try:
            wait_for("cp to get going", lambda: os.path.exists(dst) and os.stat(dst).st_size > 20 * MiB,
                     60, interval=0.05)
            leader = ens.leader_index()
            assert leader is not None
            killed, killed_at = time.monotonic(), time.time()
            ens.kill_server(leader)
            _, err = cp.communicate(timeout=180)
        finally:
            if cp.poll() is None:
                cp.kill()
                cp.wait()
            time.sleep(3)  # let the small creates run past the leader change
            stop.set()
            t.join()
            t2.join(timeout=120)
        assert cp.returncode == 0, err
        new_leader = ens.leader_index()
        assert new_leader is not None and new_leader != leader
        with open(src, "rb") as a, open(dst, "rb") as b:
            while True:
                x, y = a.read(4 * MiB), b.read(4 * MiB)
                assert x == y, "the copy differs"
                if not x:
                    break
        # the nodes rode through too: each still registered and refreshing, one repair leader
        view = View(ens.hosts, c.paths, c.key)
        try:
            def refreshed():
                lives = [NodeLive.decode(view.zk.get(view.paths.live_node(n.node_id))[0])
                         for n in c.nodes if n.node_id in view.live()]
                return len(lives) == len(c.nodes) and all(lv.updated > killed_at for lv in lives)
            wait_for("every node's live znode refreshed after the ZooKeeper leader kill", refreshed, 30)
            assert len(view.zk.get_children(c.paths.repair_election)) == len(c.nodes)
            assert view.leader() in {n.node_id for n in c.nodes}
        finally:
            view.close()
        after = [(t, s) for t, s in progress if t >= killed]
        stall = max((b[0] - a[0] for a, b in zip(after, after[1:]) if b[1] == a[1]), default=0.0)
        # longest time the file did not grow after the kill
        run, longest = 0.0, 0.0
        for a, b in zip(after, after[1:]):
            run = run + (b[0] - a[0]) if b[1] == a[1] else 0.0
            longest = max(longest, run)
        worst = max((d for t0, d in op_times if t0 + d >= killed), default=0.0)
        print(f"\nZooKeeper leader killed during cp of 200 MiB: cp ok "
              f"({after[-1][0] - killed if after else 0:.1f} s after the kill), longest pause "
              f"in the file's growth {longest:.2f} s; slowest create+write of a small file "
              f"around the kill {worst:.2f} s ({len(op_times)} creates)")
        del stall
    finally:
        if c is not None:
            c.close()
        ens.stop()
