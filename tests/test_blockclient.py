"""BlockClient against three real node processes: writes, verified reads, maintenance ops, fail-over."""

import errno
import os
import subprocess
import sys

import pytest
import trio

from dfs.errors import DfsError
from dfs.records import BlockRef, NodeLive, NodeRegistration
from tests.nodeutil import cluster, fsname_of
from tools.local.zkserver import free_port

MiB = 1 << 20


async def test_write_read_whole_and_ranges(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path) as c:
        data = os.urandom(4 * MiB)
        ref = await c.client.write_block(data, replicas=3, min_replicas=2)
        assert len(ref.replicas) == 3 and len(set(ref.replicas)) == 3
        assert ref.length == len(data) and len(ref.id) == 32
        assert await c.client.read_block(ref) == data
        for off, n in [(0, 1), (65535, 2), (100_000, 300_000), (4 * MiB - 10, 100), (5, None)]:
            want = data[off:] if n is None else data[off:off + n]
            assert await c.client.read_block(ref, off, n) == want
        assert await c.client.read_block(ref, 4 * MiB, 10) == b""
        # every replica really has it
        for node_id in ref.replicas:
            st = await c.client.stat_block(node_id, ref.id)
            assert st["length"] == len(data) and st["checksum"] == ref.checksum
            assert await c.client.verify_block(node_id, ref.id)
        assert not c.corrupt


async def test_small_and_empty_blocks_and_concurrency(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path) as c:
        blobs = [os.urandom(i * 37) for i in range(60)]
        refs: list[BlockRef | None] = [None] * len(blobs)

        async def write(i):
            refs[i] = await c.client.write_block(blobs[i], replicas=2, min_replicas=2)

        async with trio.open_nursery() as n:
            for i in range(len(blobs)):
                n.start_soon(write, i)
        got = [None] * len(blobs)

        async def read(i):
            got[i] = await c.client.read_block(refs[i])

        async with trio.open_nursery() as n:
            for i in range(len(blobs)):
                n.start_soon(read, i)
        assert got == blobs
        assert all(len(r.replicas) == 2 for r in refs)


async def test_maintenance_ops(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path) as c:
        data = os.urandom(300_000)
        ref = await c.client.write_block(data, replicas=2, min_replicas=2)
        (spare,) = set(c.nodedir.live()) - set(ref.replicas)
        listed = [x async for x in c.client.list_blocks(ref.replicas[0])]
        assert [(b, n, s) for b, n, s, _ in listed] == [(ref.id, len(data), ref.checksum)]
        assert [x async for x in c.client.list_blocks(spare)] == []
        info = await c.client.ping(spare)
        assert info["node_id"] == spare

        await c.client.copy_block(ref.replicas[0], ref.id, spare)
        st = await c.client.stat_block(spare, ref.id)
        assert st["checksum"] == ref.checksum
        only_spare = BlockRef(ref.id, ref.length, ref.checksum, [spare])
        assert await c.client.read_block(only_spare) == data

        await c.client.delete_block(spare, ref.id)
        with pytest.raises(DfsError) as e:
            await c.client.stat_block(spare, ref.id)
        assert e.value.errno == errno.ENOENT
        with pytest.raises(DfsError) as e:
            await c.client.delete_block(spare, ref.id)
        assert e.value.errno == errno.ENOENT
        with pytest.raises(DfsError) as e:
            await c.client.verify_block(spare, ref.id)
        assert e.value.errno == errno.ENOENT


async def test_list_streams_many_blocks(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=1,
                       config=None) as c:
        ids = set()
        async with trio.open_nursery() as n:
            async def w():
                ids.add((await c.client.write_block(b"x", replicas=1, min_replicas=1)).id)
            for _ in range(2100):  # more than two LIST frames
                n.start_soon(w)
        listed = {b async for b, *_ in c.client.list_blocks(c.nodes[0].node_id)}
        assert listed == ids and len(ids) == 2100


async def test_read_fails_over_from_a_dead_node(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path) as c:
        data = os.urandom(MiB)
        ref = await c.client.write_block(data, replicas=2, min_replicas=2)
        assert await c.client.read_block(ref) == data  # pools are warm
        c.node(ref.replicas[0]).kill()
        for _ in range(3):
            assert await c.client.read_block(ref) == data
        c.node(ref.replicas[1]).kill()
        with pytest.raises(DfsError) as e:
            await c.client.read_block(ref)
        assert e.value.errno == errno.EIO
        assert not c.corrupt  # a dead node is not a corrupt replica


async def test_write_skips_a_dead_node(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=4) as c:
        for n in c.nodes:  # connections open: the retry's PUT is quick, within the write's grace
            await c.client.ping(n.node_id)
        dead = c.nodes[0]
        dead.kill()  # its live znode lingers until the session times out
        assert dead.node_id in c.nodedir.live()
        for _ in range(4):
            ref = await c.client.write_block(b"abc" * 1000, replicas=3, min_replicas=2)
            assert dead.node_id not in ref.replicas and len(ref.replicas) == 3
            for node_id in ref.replicas:
                assert (await c.client.stat_block(node_id, ref.id))["length"] == 3000


async def test_write_below_min_replicas_fails_and_cleans_up(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path) as c:
        c.nodes[0].kill()
        c.nodes[1].kill()
        survivor = c.nodes[2].node_id
        with pytest.raises(DfsError) as e:
            await c.client.write_block(b"data", replicas=3, min_replicas=2)
        assert e.value.errno == errno.EIO
        assert [x async for x in c.client.list_blocks(survivor)] == []
        ref = await c.client.write_block(b"data", replicas=3, min_replicas=1)
        assert ref.replicas == [survivor]


async def test_exclude_and_draining_nodes_get_no_blocks(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path) as c:
        a, b, d = (n.node_id for n in c.nodes)
        ref = await c.client.write_block(b"q", replicas=3, min_replicas=2, exclude={a})
        assert sorted(ref.replicas) == sorted([b, d])
        # mark b draining in its registry entry: the node publishes it, placement skips it
        path = fs_paths.registry_node(b)
        data, stat = await zk.get(path)
        reg = NodeRegistration.decode(data)
        reg.state = "draining"
        await zk.set(path, reg.encode(), stat.version)
        with trio.fail_after(10):
            while c.nodedir.live()[b].state != "draining":
                await trio.sleep(0.1)
                await c.nodedir.refresh()
        ref = await c.client.write_block(b"q", replicas=3, min_replicas=2)
        assert b not in ref.replicas and len(ref.replicas) == 2


async def test_node_keeps_its_id_and_blocks_across_restart(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=1) as c:
        node = c.nodes[0]
        old_id, old_pid = node.node_id, node.pid
        ref = await c.client.write_block(b"persist" * 1000, replicas=1, min_replicas=1)
        assert await trio.to_thread.run_sync(node.stop) == 0
        assert await zk.exists(fs_paths.live_node(old_id)) is None  # SIGTERM deregisters
        assert await zk.exists(fs_paths.registry_node(old_id)) is not None
        await trio.to_thread.run_sync(node.start)
        assert node.node_id == old_id and node.pid != old_pid
        await c.nodedir.refresh()
        assert await c.client.read_block(ref) == b"persist" * 1000
        live = NodeLive.decode((await zk.get(fs_paths.live_node(old_id)))[0])
        assert live.blocks == 1 and live.capacity > 0 and live.free > 0
        assert live.address == node.address


def run_node(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nodes", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_refuses_to_start_without_zookeeper(tmp_path):
    port = free_port()
    r = run_node(["--zk", f"127.0.0.1:{port}", "--zk-timeout", "2", "--data", str(tmp_path / "d")])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("dfs node:")]
    assert len(lines) == 1 and "ZooKeeper" in lines[0]


def test_refuses_to_start_without_a_filesystem(zk_hosts, tmp_path):
    r = run_node(["--zk", zk_hosts, "--fs", "no-such-fs-here", "--data", str(tmp_path / "d")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no filesystem" in r.stderr


async def test_refuses_a_data_dir_in_use(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=1) as c:
        r = await trio.to_thread.run_sync(lambda: run_node(
            ["--zk", zk_hosts, "--fs", fsname_of(fs_paths), "--data", str(c.nodes[0].data_dir)]))
        assert r.returncode == 2 and "in use" in r.stderr and "Traceback" not in r.stderr
