"""`dfs fsck`: each test injects exactly one kind of damage into a real cluster, sees fsck
report it (right category, exit 1), repairs it, and sees a clean run afterwards.

Data is written through `dfs.meta.Meta` and `dfs.blocks.client.BlockClient` (the same
calls the mount makes) so that each test knows exactly which block sits where. The
nodes' repair leader is slowed down (hour-long scan intervals, dead_after 3600 s) so
that it does not repair the damage before fsck sees it.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.blockid import writer_block_id
from dfs.blocks.protocol import Frame, Op, encode_block_id
from dfs.config import FsConfig
from dfs.meta import Meta
from dfs.paths import ROOT_INO
from dfs.records import BlockGroup, DirEntry, InodeRecord
from dfs.zk import Txn, ZkClient, connect
from tests.harness import Cluster

REPO = Path(__file__).resolve().parents[1]
QUIET_LEADER = {"DFS_NODE_HEARTBEAT": "0.3", "DFS_REPAIR_SCAN_INTERVAL": "3600",
                "DFS_ORPHAN_INTERVAL": "3600", "DFS_ORPHAN_AGE": "3600"}
BS = 64 * 1024


@pytest.fixture
def make_cluster(zk_server, tmp_path):
    made: list[Cluster] = []

    def make(nodes: int = 3, replicas: int = 3, min_replicas: int = 2) -> Cluster:
        config = FsConfig(block_size=BS, replicas=replicas, min_replicas=min_replicas, dead_after=3600)
        base = tmp_path / f"c{len(made)}"
        base.mkdir()
        c = Cluster(zk_server.hosts, base, config)
        made.append(c)
        c.mkfs()
        for _ in range(nodes):
            c.add_node(env=QUIET_LEADER)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


def fsck(c: Cluster, *args: str, timeout: float = 120) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "fsck", "--zk", c.hosts, "--fs", c.fsname,
                        "--json", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout)


def categories(report: dict) -> set[str]:
    return {p["category"] for p in report["problems"]}


class Client:
    """Meta + BlockClient on the cluster, for writing files and reading maps."""

    def __init__(self, c: Cluster, zk: ZkClient):
        self.c = c
        self.zk = zk
        self.paths = c.paths
        self.meta = Meta(zk, c.paths, c.config)
        self.nodedir = NodeDirectory(zk, c.paths)
        self.blocks = BlockClient(self.nodedir, key=c.key)

    async def write(self, parent: int, name: str, data: bytes) -> int:
        node = await self.meta.create(parent, name.encode(), 0o644, uid=0, gid=0)
        refs = {}
        for i in range(0, len(data), BS):
            refs[i // BS] = await self.blocks.write_block(data[i:i + BS], replicas=self.c.config.replicas,
                                                          min_replicas=self.c.config.min_replicas)
        await self.meta.blockmap.commit_blocks(node.ino, refs, size=len(data), mtime_ns=time.time_ns())
        return node.ino

    async def block_map(self, ino: int):
        return await self.meta.blockmap.read_block_map(ino)


async def with_client(c: Cluster, fn):
    zk = await connect(c.hosts)
    zk.authenticate(c.key, c.paths.root)
    try:
        cl = Client(c, zk)
        await cl.nodedir.refresh()
        try:
            return await fn(cl)
        finally:
            await cl.blocks.aclose()
    finally:
        await zk.close()


def run(c: Cluster, fn):
    return trio.run(with_client, c, fn)


async def populate(cl: Client) -> dict:
    """/a/f1 (3 blocks), /a/b/f2 (1 block), /f3 (empty), /link -> a/f1, /a/hard (hard link to f1)."""
    a = await cl.meta.mkdir(ROOT_INO, b"a", 0o755, uid=0, gid=0)
    b = await cl.meta.mkdir(a.ino, b"b", 0o755, uid=0, gid=0)
    f1 = await cl.write(a.ino, "f1", os.urandom(2 * BS + 1000))
    f2 = await cl.write(b.ino, "f2", os.urandom(5000))
    f3 = await cl.write(ROOT_INO, "f3", b"")
    await cl.meta.mknod(ROOT_INO, b"link", stat.S_IFLNK | 0o777, uid=0, gid=0, target=b"a/f1")
    await cl.meta.namespace.link(f1, a.ino, b"hard")
    return {"a": a.ino, "b": b.ino, "f1": f1, "f2": f2, "f3": f3}


def block_file(c: Cluster, node_id: str, block_id: str) -> Path:
    node = next(n for n in c.nodes if n.node_id == node_id)
    return node.data_dir / "blocks" / block_id[:2] / block_id[2:4] / block_id


def assert_healthy(c: Cluster, *args: str) -> dict:
    rc, rep = fsck(c, *args)
    assert rc == 0 and rep["status"] == "HEALTHY", rep["problems"]
    return rep


def wait_healthy(c: Cluster, timeout: float = 60) -> dict:
    """fsck until HEALTHY (a repair the leader started may still be running)."""
    deadline = time.monotonic() + timeout
    while True:
        rc, rep = fsck(c)
        if rc == 0 and rep["status"] == "HEALTHY":
            return rep
        assert time.monotonic() < deadline, rep["problems"]
        time.sleep(0.5)


def repair(c: Cluster, *args: str) -> dict:
    rc, rep = fsck(c, "--repair", *args)
    assert rc == 0, rep["problems"]
    assert all(p["repair"].startswith("repaired") for p in rep["problems"]), rep["problems"]
    return rep


# ---------------------------------------------------------------------- healthy


def test_healthy_cluster_counts(make_cluster):
    c = make_cluster()
    run(c, populate)
    rep = assert_healthy(c)
    assert rep["total_dirs"] == 3  # /, /a, /a/b
    assert rep["total_files"] == 3
    assert rep["total_symlinks"] == 1
    assert rep["total_blocks"] == 4
    assert rep["total_size"] == 2 * BS + 1000 + 5000
    assert rep["default_replication"] == 3
    assert rep["average_block_replication"] == 3.0
    assert rep["minimally_replicated_blocks"] == 4
    assert rep["live_nodes"] == 3 and rep["dead_nodes"] == 0
    for key in ("under_replicated_blocks", "over_replicated_blocks", "mis_replicated_blocks",
                "missing_blocks", "missing_size", "corrupt_replicas", "orphan_blocks", "orphan_size",
                "namespace_errors"):
        assert rep[key] == 0, key
    # a subtree, and the text output
    rc, sub = fsck(c, "/a/b")
    assert rc == 0 and sub["total_files"] == 1 and sub["total_blocks"] == 1 and sub["path"] == "/a/b"
    text = subprocess.run([sys.executable, "-m", "tools.cli", "fsck", "--zk", c.hosts, "--fs", c.fsname,
                           "--verify-data"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "Status:" in text.stdout and "HEALTHY" in text.stdout and text.stderr == ""


def snapshot(c: Cluster) -> dict:
    """Every znode the namespace and housekeeping own (data + version), and every block file."""

    async def go(cl: Client):
        out = {}
        todo = [f"{cl.paths.root}/{k}" for k in ("inodes", "dirs", "blocks", "xattrs", "gc", "open",
                                                   "repair/corrupt", "repair/audit", "ids", "config")]
        while todo:
            path = todo.pop()
            try:
                data, st = await cl.zk.get(path)
                kids = await cl.zk.get_children(path)
            except Exception:
                continue
            out[path] = (data, st.version, st.cversion)
            todo.extend(f"{path}/{k}" for k in kids)
        return out

    files = {str(p) for n in c.nodes for p in (n.data_dir / "blocks").rglob("*") if p.is_file()}
    return {"zk": run(c, go), "files": files}


def test_fsck_changes_nothing_without_repair_and_dry_run_changes_nothing(make_cluster):
    c = make_cluster()
    ids = run(c, populate)
    # damage of several kinds, so that there is something to (not) repair
    refs = run(c, lambda cl: cl.block_map(ids["f1"]))
    block_file(c, refs[0].replicas[0], refs[0].id).unlink()

    async def dangle(cl: Client):
        await cl.zk.commit(Txn().create(cl.paths.dirent(ROOT_INO, b"ghost"),
                                        DirEntry(999_999, stat.S_IFREG).encode()))
    run(c, dangle)
    before = snapshot(c)
    rc, rep = fsck(c, "--verify-data", "--orphan-age", "0")
    assert rc == 1
    rc, plan = fsck(c, "--repair", "--dry-run", "--orphan-age", "0")
    assert rc == 1
    assert plan["problems"] and all(p["repair"].startswith("would") for p in plan["problems"]), plan["problems"]
    assert snapshot(c) == before


# ---------------------------------------------------------------------- replicas


def test_deleted_replica(make_cluster):
    c = make_cluster()
    ids = run(c, populate)
    refs = run(c, lambda cl: cl.block_map(ids["f2"]))
    victim = refs[0].replicas[1]
    block_file(c, victim, refs[0].id).unlink()
    rc, rep = fsck(c)
    assert rc == 1 and rep["status"] == "CORRUPT"
    assert categories(rep) == {"missing_replica", "under_replicated"}
    p = next(p for p in rep["problems"] if p["category"] == "missing_replica")
    assert p["path"] == "/a/b/f2" and p["block"] == refs[0].id and p["nodes"] == [victim]
    assert rep["under_replicated_blocks"] == 1
    repair(c)
    assert_healthy(c, "--verify-data")


def test_flipped_byte_found_by_verify_data(make_cluster):
    c = make_cluster()
    ids = run(c, populate)
    refs = run(c, lambda cl: cl.block_map(ids["f1"]))
    victim = refs[1].replicas[0]
    path = block_file(c, victim, refs[1].id)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # in the data, not the header: LIST still reports the right checksum
    path.write_bytes(bytes(raw))
    assert_healthy(c)  # metadata alone cannot see it
    rc, rep = fsck(c, "--verify-data")
    assert rc == 1
    assert categories(rep) == {"corrupt_replica", "under_replicated"}
    p = next(p for p in rep["problems"] if p["category"] == "corrupt_replica")
    assert p["block"] == refs[1].id and p["nodes"] == [victim] and p["path"] in ("/a/f1", "/a/hard")
    assert rep["corrupt_replicas"] == 1
    repair(c, "--verify-data")
    assert_healthy(c, "--verify-data")


def test_node_loss_under_replicated_then_missing(make_cluster):
    c = make_cluster(nodes=4, replicas=2, min_replicas=1)

    async def setup(cl: Client):
        a = await cl.write(ROOT_INO, "a", os.urandom(3 * BS))
        b = await cl.write(ROOT_INO, "b", os.urandom(1000))
        return a, b, await cl.block_map(a), await cl.block_map(b)

    a, b, amap, bmap = run(c, setup)
    # A loaded machine can finish a write at min_replicas (a slow second target): the
    # leader then re-replicates it (SHORT_WRITE). Start from a settled, healthy map.
    wait_healthy(c)
    amap = run(c, lambda cl: cl.block_map(a))
    # 1) a node with a replica of a's first block goes away: under-replicated
    gone = amap[0].replicas[0]
    next(n for n in c.nodes if n.node_id == gone).stop()
    rc, rep = fsck(c)
    assert rc == 1 and rep["dead_nodes"] == 1 and rep["live_nodes"] == 3, (gone, amap[0], rep)
    assert {"under_replicated", "dead_replica"} <= categories(rep) <= {"under_replicated", "dead_replica"}
    assert rep["missing_blocks"] == 0
    repair(c)
    assert_healthy(c)
    # 2) every node holding b's block goes away: missing, with the path of its file
    bmap = run(c, lambda cl: cl.block_map(b))
    for n in c.nodes:
        if n.node_id in bmap[0].replicas:
            n.stop()
    rc, rep = fsck(c)
    # (blocks of /a that lived on the same two nodes are missing too)
    assert rc == 1 and rep["missing_blocks"] >= 1 and rep["missing_size"] >= 1000
    assert any(p["path"] == "/b" and p["block"] == bmap[0].id for p in rep["problems"]
               if p["category"] == "missing_block"), rep["problems"]
    rc, rep = fsck(c, "--repair")
    assert rc == 1  # the data itself cannot come back
    assert any("moved to /lost+found/" in p["repair"] for p in rep["problems"])
    rc, rep = fsck(c)
    left = {(p["category"], p["path"].rsplit("/", 1)[0]) for p in rep["problems"]
            if p["category"] not in ("under_replicated", "dead_replica")}
    assert left == {("missing_block", "/lost+found")}, rep["problems"]


# ---------------------------------------------------------------------- block map


def test_dropped_block_map_entry_leaves_an_orphan(make_cluster):
    c = make_cluster()
    ids = run(c, populate)

    async def drop(cl: Client):
        path = cl.paths.block_group(ids["f1"], 0)
        data, st = await cl.zk.get(path)
        grp = BlockGroup.decode(data)
        ref = grp.blocks.pop(1)
        await cl.zk.commit(Txn().set(path, grp.encode(), st.version))
        return ref
    ref = run(c, drop)
    assert_healthy(c)  # young: it may be a write in flight
    rc, rep = fsck(c, "--orphan-age", "0")
    assert rc == 1 and categories(rep) == {"orphan_block"}
    p = rep["problems"][0]
    assert p["block"] == ref.id and sorted(p["nodes"]) == sorted(ref.replicas)
    assert rep["orphan_blocks"] == 1 and rep["orphan_size"] == 3 * BS
    repair(c, "--orphan-age", "0")
    assert_healthy(c, "--orphan-age", "0")


def test_block_past_eof(make_cluster):
    c = make_cluster()
    ids = run(c, populate)

    async def shrink(cl: Client):
        path = cl.paths.inode(ids["f2"])
        data, st = await cl.zk.get(path)
        rec = InodeRecord.decode(data)
        rec.size = 100
        await cl.zk.commit(Txn().set(path, rec.encode(), st.version))
    run(c, shrink)
    rc, rep = fsck(c)
    assert rc == 1 and categories(rep) == {"block_past_eof"} and rep["namespace_errors"] == 1
    repair(c)
    assert_healthy(c)


def test_orphan_block_put_directly(make_cluster):
    c = make_cluster()
    run(c, populate)
    bid = uuid.uuid4().hex

    async def put(cl: Client):
        node = c.nodes[0].node_id
        from dfs.checksum import hash64
        data = os.urandom(777)
        await cl.blocks._call(node, Frame(Op.PUT, block_id=encode_block_id(bid), length=len(data),
                                          checksum=hash64(data), payload=data))
        return node
    node = run(c, put)
    assert_healthy(c)  # younger than the default --orphan-age
    time.sleep(1.1)
    rc, rep = fsck(c, "--orphan-age", "1")
    assert rc == 1 and categories(rep) == {"orphan_block"}
    assert rep["problems"][0]["block"] == bid and rep["problems"][0]["nodes"] == [node]
    assert rep["orphan_size"] == 777
    repair(c, "--orphan-age", "1")
    assert not block_file(c, node, bid).exists()
    assert_healthy(c, "--orphan-age", "0")


def test_orphan_block_of_a_gone_writer_counts_at_any_age(make_cluster):
    """A block whose writer record is gone can never be committed: fsck counts it as an
    orphan at once (the leader's gc does the same), not after --orphan-age. A block of the
    same age that names no writer still waits --orphan-age (it may be about to commit)."""
    c = make_cluster()
    run(c, populate)

    async def put(cl: Client):
        path = await cl.zk.create(cl.paths.writer_prefix, b"0 0", ephemeral=True, sequence=True)
        await cl.zk.delete(path)  # the mount that wrote it is gone
        await trio.sleep(2)  # (the leader has had its look at the writers by now)
        node = c.nodes[0].node_id
        from dfs.checksum import hash64
        ids = [writer_block_id(int(path.rsplit("-", 1)[1]), 0), uuid.uuid4().hex]
        for bid in ids:
            data = os.urandom(777)
            await cl.blocks._call(node, Frame(Op.PUT, block_id=encode_block_id(bid), length=len(data),
                                              checksum=hash64(data), payload=data))
        return node, ids
    node, (gone, legacy) = run(c, put)
    rc, rep = fsck(c)  # (--orphan-age: an hour)
    assert rc == 1 and categories(rep) == {"orphan_block"}, rep["problems"]
    assert [p["block"] for p in rep["problems"]] == [gone] and rep["problems"][0]["nodes"] == [node]
    repair(c)
    assert not block_file(c, node, gone).exists() and block_file(c, node, legacy).exists()


# ---------------------------------------------------------------------- namespace


def test_dirent_to_missing_inode(make_cluster):
    c = make_cluster()
    ids = run(c, populate)

    async def dangle(cl: Client):
        await cl.zk.commit(Txn().create(cl.paths.dirent(ids["a"], b"ghost"),
                                        DirEntry(987_654, stat.S_IFREG).encode()))
    run(c, dangle)
    rc, rep = fsck(c)
    assert rc == 1 and categories(rep) == {"dangling_dirent"}
    assert rep["problems"][0]["path"] == "/a/ghost" and rep["namespace_errors"] == 1
    repair(c)
    assert_healthy(c)


@pytest.mark.parametrize("mode", ["move", "delete"])
def test_unreachable_inode(make_cluster, mode):
    c = make_cluster()
    ids = run(c, populate)

    async def cut(cl: Client):
        # drop /a/b's entry for f2 and nothing else: f2 (and its blocks) become unreachable
        path = cl.paths.dirent(ids["b"], b"f2")
        _, st = await cl.zk.get(path)
        await cl.zk.commit(Txn().delete(path, st.version))
    run(c, cut)
    rc, rep = fsck(c, "--orphan-age", "0")
    assert rc == 1 and categories(rep) == {"orphan_inode"}, rep["problems"]
    assert rep["problems"][0]["ino"] == ids["f2"]
    rep = repair(c, "--lost-found", mode, "--orphan-age", "0")

    async def lost_found(cl: Client):
        lf = await cl.meta.lookup(ROOT_INO, b"lost+found")
        return [name for name, _, _ in await cl.meta.readdir(lf.ino)]
    names = run(c, lost_found)
    assert names == ([str(ids["f2"]).encode()] if mode == "move" else [])
    assert_healthy(c, "--orphan-age", "0")


def test_wrong_nlink(make_cluster):
    c = make_cluster()
    ids = run(c, populate)

    async def bump(cl: Client):
        path = cl.paths.inode(ids["f2"])
        data, st = await cl.zk.get(path)
        rec = InodeRecord.decode(data)
        rec.nlink = 3
        await cl.zk.commit(Txn().set(path, rec.encode(), st.version))
    run(c, bump)
    rc, rep = fsck(c)
    assert rc == 1 and categories(rep) == {"wrong_nlink"}
    assert rep["problems"][0]["path"] == "/a/b/f2"
    repair(c)
    assert_healthy(c)
    node = run(c, lambda cl: cl.meta.inodes.getattr(ids["f2"]))
    assert node.rec.nlink == 1


def test_wrong_directory_nlink_and_parent(make_cluster):
    c = make_cluster()
    ids = run(c, populate)

    async def damage(cl: Client):
        for ino, change in ((ids["a"], {"nlink": 7}), (ids["b"], {"parent": ROOT_INO})):
            path = cl.paths.inode(ino)
            data, st = await cl.zk.get(path)
            rec = InodeRecord.decode(data)
            for k, v in change.items():
                setattr(rec, k, v)
            await cl.zk.commit(Txn().set(path, rec.encode(), st.version))
    run(c, damage)
    rc, rep = fsck(c)
    assert rc == 1 and categories(rep) == {"wrong_dir_nlink", "wrong_parent"}
    repair(c)
    assert_healthy(c)


def test_directory_without_listing(make_cluster):
    c = make_cluster()
    run(c, populate)

    async def unlist(cl: Client):
        e = await cl.meta.mkdir(ROOT_INO, b"e", 0o755, uid=0, gid=0)
        await cl.zk.delete(cl.paths.dir(e.ino))
    run(c, unlist)
    rc, rep = fsck(c)
    assert rc == 1 and categories(rep) == {"missing_dir_listing"}
    assert rep["problems"][0]["path"] == "/e"
    repair(c)
    assert_healthy(c)


def test_entry_type_disagrees_with_inode(make_cluster):
    c = make_cluster()
    ids = run(c, populate)

    async def retype(cl: Client):
        path = cl.paths.dirent(ROOT_INO, b"f3")
        _, st = await cl.zk.get(path)
        await cl.zk.set(path, DirEntry(ids["f3"], stat.S_IFDIR).encode(), st.version)
    run(c, retype)
    rc, rep = fsck(c)
    assert rc == 1 and categories(rep) == {"dirent_type"}
    repair(c)
    assert_healthy(c)


def test_directory_linked_twice(make_cluster):
    c = make_cluster()
    ids = run(c, populate)

    async def link(cl: Client):
        await cl.zk.create(cl.paths.dirent(ROOT_INO, b"b2"), DirEntry(ids["b"], stat.S_IFDIR).encode())
    run(c, link)
    rc, rep = fsck(c)
    assert rc == 1 and "dir_hardlink" in categories(rep), rep["problems"]
    assert categories(rep) <= {"dir_hardlink", "wrong_dir_nlink"}
    repair(c)
    assert_healthy(c)
    names = run(c, lambda cl: cl.meta.readdir(ROOT_INO))
    assert b"b2" not in [n for n, _, _ in names]


def test_replica_listed_twice(make_cluster):
    c = make_cluster()
    ids = run(c, populate)

    async def twice(cl: Client):
        path = cl.paths.block_group(ids["f2"], 0)
        data, st = await cl.zk.get(path)
        grp = BlockGroup.decode(data)
        grp.blocks[0].replicas = grp.blocks[0].replicas[:2] + grp.blocks[0].replicas[:1]
        await cl.zk.set(path, grp.encode(), st.version)
    run(c, twice)
    rc, rep = fsck(c, "--orphan-age", "3600")
    assert rc == 1 and "mis_replicated" in categories(rep), rep["problems"]
    repair(c)
    assert_healthy(c)
    refs = run(c, lambda cl: cl.block_map(ids["f2"]))
    assert len(set(refs[0].replicas)) == len(refs[0].replicas) == 3


def test_leftovers_of_deleted_inodes(make_cluster):
    c = make_cluster()
    run(c, populate)
    gone = [4090, 4091, 4092, 4093, 4094]  # in inode shard 0, which exists: as if the inodes had been removed

    async def leave(cl: Client):
        await cl.zk.create(cl.paths.dirent(gone[0], b"x"), DirEntry(5, stat.S_IFREG).encode(), makepath=True)
        await cl.zk.create(cl.paths.xattr(gone[1], b"user.a"), b"v", makepath=True)
        await cl.zk.create(cl.paths.open_dir(gone[2]))
        await cl.zk.create(cl.paths.block_map(gone[3]))
        await cl.zk.create(cl.paths.lease(gone[4]), makepath=True)
    run(c, leave)
    rc, rep = fsck(c)
    assert rc == 1 and categories(rep) == {"leftover_dir_listing", "leftover_xattrs", "stale_open",
                                           "dangling_block_map", "stale_lease"}, rep["problems"]
    repair(c)
    assert_healthy(c)

    async def left(cl: Client):
        return [await cl.zk.exists(p) for p in (cl.paths.dir(gone[0]), cl.paths.xattr_dir(gone[1]),
                                                 cl.paths.open_dir(gone[2]), cl.paths.lease(gone[4]))]
    assert run(c, left) == [None, None, None, None]


def test_unreachable_directories_in_a_cycle(make_cluster):
    c = make_cluster()
    run(c, populate)

    async def cycle(cl: Client):
        x = await cl.meta.mkdir(ROOT_INO, b"x", 0o755, uid=0, gid=0)
        y = await cl.meta.mkdir(x.ino, b"y", 0o755, uid=0, gid=0)
        # cut x from the root (and mend the root's link count), then let y name x
        path = cl.paths.dirent(ROOT_INO, b"x")
        _, st = await cl.zk.get(path)
        await cl.zk.delete(path, st.version)
        data, st = await cl.zk.get(cl.paths.inode(ROOT_INO))
        rec = InodeRecord.decode(data)
        rec.nlink -= 1
        await cl.zk.set(cl.paths.inode(ROOT_INO), rec.encode(), st.version)
        await cl.zk.create(cl.paths.dirent(y.ino, b"back"), DirEntry(x.ino, stat.S_IFDIR).encode())
        return x.ino, y.ino
    x, y = run(c, cycle)
    rc, rep = fsck(c)
    assert rc == 1 and categories(rep) == {"orphan_inode", "dir_cycle"}, rep["problems"]
    repair(c)
    assert_healthy(c)

    async def where(cl: Client):
        lf = await cl.meta.lookup(ROOT_INO, b"lost+found")
        return [(n, e.ino) for n, e, _ in await cl.meta.readdir(lf.ino)]
    assert run(c, where) == [(str(x).encode(), x)]


def test_unreachable_zookeeper_exits_2(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tools.cli", "fsck", "--zk", f"127.0.0.1:{port}",
                        "--zk-timeout", "2"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "ZooKeeper" in lines[0] and "Traceback" not in r.stderr
    assert time.monotonic() - t < 30


def test_no_such_filesystem_or_path_exits_2(make_cluster):
    c = make_cluster(nodes=1, replicas=1, min_replicas=1)
    r = subprocess.run([sys.executable, "-m", "tools.cli", "fsck", "--zk", c.hosts, "--fs", c.fsname,
                        "/no/such"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "tools.cli", "fsck", "--zk", c.hosts, "--fs", "nope-" + c.fsname],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr


def test_busy_mounted_cluster_is_healthy(cluster):
    """fsck next to a mount that keeps creating, writing, renaming and deleting files: no false alarms."""
    import threading

    mnt = cluster.mounts[0].mountpoint
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            i = 0
            dirs = [mnt / "busy" / f"d{k}" for k in range(5)]
            for d in dirs:
                d.mkdir(parents=True)
            while not stop.is_set():
                p = dirs[i % 5] / f"f{i}"
                p.write_bytes(os.urandom(1000 + (i % 3) * BS))
                if i % 3 == 0:
                    p.rename(dirs[(i + 1) % 5] / f"r{i}")  # across directories
                elif i % 3 == 1:
                    p.unlink()
                if i % 7 == 0:
                    (dirs[i % 5] / f"sub{i}").mkdir()
                    (dirs[i % 5] / f"sub{i}").rename(dirs[(i + 2) % 5] / f"sub{i}")
                i += 1
        except BaseException as e:  # reported by the test
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    try:
        time.sleep(1.0)
        for _ in range(3):
            rc, rep = fsck(cluster)
            assert rc == 0 and rep["status"] == "HEALTHY", rep["problems"]
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert rep["total_files"] > 0


def test_slow_node_listing_gets_a_second_chance(make_cluster):
    """A node that answers its block listing late (here: frozen for longer than the
    request timeout) is waited for once more with more patience, not declared dead."""
    c = make_cluster()
    run(c, populate)
    slow = c.nodes[0]
    slow.signal(signal.SIGSTOP)
    try:
        p = subprocess.Popen([sys.executable, "-m", "tools.cli", "fsck", "--zk", c.hosts, "--fs", c.fsname,
                              "--json", "--node-timeout", "1"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # past the first deadline
    finally:
        slow.signal(signal.SIGCONT)
    out, err = p.communicate(timeout=60)
    rep = json.loads(out)
    assert p.returncode == 0 and rep["status"] == "HEALTHY", (rep["problems"], err)
    assert rep["live_nodes"] == 3 and rep["total_blocks"] == 4
    assert "listing it again" in err, err
