"""`dfs whatif`, `dfs why` and `dfs up`'s mkfs options, on real clusters.

whatif's answer is proven by doing it: the nodes it was asked about are
stopped, and exactly the files it called lost fail to read through a mount.
"""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from dfs.config import FsConfig
from dfs.keys import load_key
from dfs.maint import cluster as maint
from dfs.mkfs import load_config
from dfs.paths import ROOT_INO, FsPaths, default_root
from dfs.zk import connect
from tests.harness import client_session, stop_what_up_left
from tools.local.mountproc import is_mounted

REPO = Path(__file__).resolve().parents[1]
BS = 64 * 1024
QUIET_LEADER = {"DFS_NODE_HEARTBEAT": "0.3", "DFS_REPAIR_SCAN_INTERVAL": "3600",
                "DFS_ORPHAN_INTERVAL": "3600", "DFS_ORPHAN_AGE": "3600"}


def dfs(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, whatever the cwd
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def whatif(c, down: str) -> tuple[int, dict]:
    r = dfs("whatif", "--zk", c.hosts, "--fs", c.fsname, "--down", down, "--json")
    assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout)


def why(c, path: str, *extra: str) -> tuple[int, str]:
    r = dfs("why", "--zk", c.hosts, "--fs", c.fsname, path, *extra)
    assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
    return r.returncode, r.stdout


def files_of(doc: dict, key: str) -> set[str]:
    return {p for f in doc[key] for p in f["paths"]}


def write_files(c, layout: dict[str, list[set[str]]], inline: dict[str, bytes]) -> dict[str, bytes]:
    """Files whose block i has replicas exactly on layout[name][i]; returns their contents."""
    contents = {name: os.urandom(BS * len(blocks) - 100) for name, blocks in layout.items()}

    async def body(zk, view, blocks, nursery):
        everyone = set(blocks.nodedir.live())
        for name, placement in layout.items():
            data = contents[name]
            node = await view.meta.create(ROOT_INO, name.encode(), 0o644, uid=0, gid=0)
            refs = {}
            for i, nodes in enumerate(placement):
                refs[i] = await blocks.write_block(data[i * BS:(i + 1) * BS], replicas=len(nodes),
                                                   min_replicas=len(nodes), exclude=everyone - nodes)
                assert set(refs[i].replicas) == nodes
            await view.meta.blockmap.commit_blocks(node.ino, refs, size=len(data), mtime_ns=time.time_ns())
        for name, data in inline.items():
            node = await view.meta.create(ROOT_INO, name.encode(), 0o644, uid=0, gid=0)
            await view.meta.blockmap.commit_blocks(node.ino, {}, size=len(data), mtime_ns=time.time_ns(),
                                                   inline=data)

    client_session(c, body)
    return {**contents, **inline}


def test_whatif_names_exactly_the_files_that_are_then_lost(cluster_factory):
    c = cluster_factory(FsConfig(block_size=BS, replicas=2, min_replicas=1, dead_after=3600), nodes=0)
    for _ in range(4):
        c.add_node(env=QUIET_LEADER)
    a, b, cc, d = (n.node_id for n in c.nodes)
    contents = write_files(c, {
        "ab1": [{a, b}, {a, b}], "ab2": [{a, b}], "mixed": [{cc, d}, {a, b}],
        "ac": [{a, cc}], "bd": [{b, d}, {cc, d}], "cd": [{cc, d}, {cc, d}],
    }, inline={"tiny": b"inline bytes live in ZooKeeper"})
    prefix = next(a[:k] for k in range(1, 17) if not any(n.startswith(a[:k]) for n in (b, cc, d)))

    rc, doc = whatif(c, f"{prefix},{b}")
    assert rc == 1 and doc["status"] == "LOSS" and doc["down"] == sorted([a, b])
    assert files_of(doc, "lost_files") == {"/ab1", "/ab2", "/mixed"}
    assert files_of(doc, "single_copy_files") == {"/ac", "/bd"}
    assert doc["lost_blocks"] == 4 and not any(f["unreadable_now"] for f in doc["lost_files"])

    rc, doc = whatif(c, a)
    assert rc == 0 and doc["status"] == "SAFE" and doc["lost_files"] == []
    assert files_of(doc, "single_copy_files") == {"/ab1", "/ab2", "/mixed", "/ac"}

    r = dfs("whatif", "--zk", c.hosts, "--fs", c.fsname, "--down", "nosuchnode")
    assert r.returncode == 2 and "matches no node" in r.stderr, (r.returncode, r.stderr)

    # now do it: stop A and B, read everything through a mount
    c.nodes[0].stop()
    c.nodes[1].stop()
    mnt = c.mount()
    for name, data in contents.items():
        if name in ("ab1", "ab2", "mixed"):
            with pytest.raises(OSError) as e:
                (mnt / name).read_bytes()
            assert e.value.errno == errno.EIO, name
        else:
            assert (mnt / name).read_bytes() == data, name

    # A and B are down already: losing C on top loses "ac" too
    rc, doc = whatif(c, cc)
    assert rc == 1 and doc["already_down"] == sorted([a, b])
    assert files_of(doc, "lost_files") == {"/ab1", "/ab2", "/mixed", "/ac"}
    assert {f["paths"][0] for f in doc["lost_files"] if f["unreadable_now"]} == {"/ab1", "/ab2", "/mixed"}


def wait_for(what: str, fn, timeout: float, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def test_why_shows_a_dead_replica_queued_then_live_again(cluster_factory):
    # repairs crawl (1 KiB/s, one at a time) so that queued blocks stay queued while we look
    slow = {"DFS_NODE_HEARTBEAT": "0.3", "DFS_REPAIR_BANDWIDTH": "0.001", "DFS_REPAIR_CONCURRENCY": "1"}
    c = cluster_factory(FsConfig(block_size=BS, replicas=2, min_replicas=1, dead_after=2), nodes=0)
    for _ in range(3):
        c.add_node(env=slow)

    async def leader(zk, view, blocks, nursery):
        with trio.fail_after(30):
            while not (got := await maint.repair_leader(zk, c.paths)):
                await trio.sleep(0.2)
        return got

    lead = client_session(c, leader)
    victim = next(n for n in c.nodes if n.node_id != lead)
    write_files(c, {"f": [{victim.node_id, lead}] * 4}, inline={})

    def doc() -> dict:
        return json.loads(why(c, "/f", "--json")[1])

    rc, text = why(c, "/f")
    assert rc == 0 and text.count(": live") == 8, text
    first = doc()
    assert first["size"] == 4 * BS - 100 and first["version"] >= 1 and first["open_by"] == []
    assert all(b["repair"]["state"] == "none" for b in first["blocks"])

    victim.stop()
    d = doc()
    for blk in d["blocks"]:  # (the leader may have replaced the first block's copy already)
        for r in blk["replicas"]:
            assert r["status"] == ("dead" if r["node"] == victim.node_id else "live"), blk
    assert sum(victim.node_id in {r["node"] for r in b["replicas"]} for b in d["blocks"]) >= 3, d
    queued = wait_for("a block queued for repair",
                      lambda: [b for b in doc()["blocks"] if b["repair"]["state"] == "queued"], 60)
    assert queued[0]["repair"]["reason"] == "dead node"
    rc, text = why(c, "/f")
    assert rc == 1 and "queued #" in text and "dead" in text, text

    victim.start()
    wait_for("every replica live", lambda: all(r["status"] == "live" for b in doc()["blocks"]
                                               for r in b["replicas"]), 60)
    d = doc()
    assert all(b["counting_replicas"] == 2 for b in d["blocks"]), d


def test_up_creates_the_filesystem_with_the_mkfs_options(tmp_path):
    state, mnt = tmp_path / "state", tmp_path / "mnt"
    base = ["up", "--state", str(state), "--mountpoint", str(mnt), "--nodes", "1"]
    try:
        r = dfs(*base, "--replicas", "1", "--min-replicas", "2", cwd=tmp_path)
        assert r.returncode == 2 and "min_replicas" in r.stderr, (r.returncode, r.stderr)
        assert not is_mounted(mnt)

        r = dfs(*base, "--replicas", "2", "--min-replicas", "1", "--dead-after", "7",
                "--block-size", "1M", "--inline-max", "1K", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        hosts = json.loads((state / "cluster.json").read_text())["zk"]

        async def config() -> FsConfig:
            zk = await connect(hosts)
            zk.authenticate(load_key(state / "default.key"), default_root("default"))
            try:
                return await load_config(zk, FsPaths(default_root("default")))
            finally:
                await zk.close()

        got = trio.run(config)
        assert (got.replicas, got.min_replicas, got.dead_after, got.block_size, got.inline_max) == \
            (2, 1, 7.0, 1 << 20, 1024)

        r = dfs(*base, cwd=tmp_path)  # the defaults again: the filesystem keeps its settings
        assert r.returncode == 0 and "exists already and keeps its settings" in r.stderr, r.stderr
        assert trio.run(config) == got
    finally:
        dfs("down", "--state", str(state), cwd=tmp_path)
        stop_what_up_left(state, mnt)
