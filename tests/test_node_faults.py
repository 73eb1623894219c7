"""Issue 3's faults against real node processes: corruption, disk full, crash mid-PUT,
ZooKeeper restart, live-znode loss; and the node directory's watch."""

import errno
import os
import signal
import subprocess
import time
import uuid

import pytest
import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.checksum import CHUNK_SIZE
from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.paths import FsPaths, election_leader
from dfs.records import BlockRef, NodeLive
from dfs.zk import connect
from nodes.store import header_size
from tests.nodeutil import TEST_ENV, cluster, corrupt_reports, fsname_of, mkfs_keyed, stop_all
from tools.local.nodeproc import NodeProcess
from tools.local.zkserver import ZkEnsemble

MiB = 1 << 20


def flip_byte(path, pos):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


async def test_flipped_byte_fails_over_and_is_reported(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path) as c:
        data = os.urandom(MiB)
        ref = await c.client.write_block(data, replicas=3, min_replicas=3)
        bad = ref.replicas[0]
        flip_byte(c.block_file(bad, ref.id), header_size(len(data)) + 3 * CHUNK_SIZE + 5)
        # the node itself refuses to serve the damaged chunk
        only_bad = BlockRef(ref.id, ref.length, ref.checksum, [bad])
        with pytest.raises(DfsError) as e:
            await c.client.read_block(only_bad, 3 * CHUNK_SIZE, 10)
        assert e.value.errno == errno.EIO
        assert not await c.client.verify_block(bad, ref.id)
        assert await c.client.verify_block(ref.replicas[1], ref.id)
        # reads with the bad replica first still return the right bytes
        c.corrupt.clear()
        c.nodedir._live[bad].load = -1.0  # make it the preferred replica
        assert await c.client.read_block(ref) == data
        assert await c.client.read_block(ref, 3 * CHUNK_SIZE, 100) == data[3 * CHUNK_SIZE:][:100]
        assert [(b, n) for b, n, _ in c.corrupt] == [(ref.id, bad), (ref.id, bad)]
        # an untouched chunk of the bad replica is still fine to read
        assert await c.client.read_block(only_bad, 0, 1000) == data[:1000]
        reports = await corrupt_reports(zk, fs_paths)
        assert [(r.block_id, r.node_id) for r in reports] == [(ref.id, bad)]


async def test_all_replicas_corrupt_is_eio_never_wrong_bytes(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=2) as c:
        data = os.urandom(200_000)
        ref = await c.client.write_block(data, replicas=2, min_replicas=2)
        for node_id in ref.replicas:
            flip_byte(c.block_file(node_id, ref.id), header_size(len(data)) + 7)
        with pytest.raises(DfsError) as e:
            await c.client.read_block(ref)
        assert e.value.errno == errno.EIO
        assert {n for _, n, _ in c.corrupt} == set(ref.replicas)


async def test_missing_replica_fails_over_and_is_reported(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=2) as c:
        ref = await c.client.write_block(b"z" * 5000, replicas=2, min_replicas=2)
        os.unlink(c.block_file(ref.replicas[0], ref.id))
        # reads pick the less loaded replica first: make it the one without the file
        c.nodedir._live[ref.replicas[0]].load = -1.0
        for _ in range(4):
            assert await c.client.read_block(ref) == b"z" * 5000
        assert {(n, r) for _, n, r in c.corrupt} == {(ref.replicas[0], "missing")}


async def test_wrong_whole_block_checksum_in_ref_is_eio(zk, zk_hosts, fs_paths, tmp_path):
    # a replica that is internally consistent but is not the block the ref describes
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=1) as c:
        ref = await c.client.write_block(b"a" * 100, replicas=1, min_replicas=1)
        forged = BlockRef(ref.id, ref.length, "0123456789abcdef", ref.replicas)
        with pytest.raises(DfsError) as e:
            await c.client.read_block(forged)
        assert e.value.errno == errno.EIO
        assert c.corrupt and c.corrupt[0][2] == "whole-block checksum mismatch"


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


async def test_disk_full_is_enospc_and_node_keeps_serving(zk, zk_hosts, fs_paths, tmp_path, tmpfs):
    key = await mkfs_keyed(zk, fs_paths, FsConfig(replicas=1, min_replicas=1))
    node = NodeProcess(zk_hosts, fsname_of(fs_paths), tmpfs / "data", env=TEST_ENV,
                       log_path=tmp_path / "node.log")
    nodedir = NodeDirectory(zk, fs_paths)
    client = BlockClient(nodedir, key=key)
    try:
        await trio.to_thread.run_sync(node.start)
        await nodedir.refresh()
        written = []
        with pytest.raises(DfsError) as e:
            for i in range(20):
                data = os.urandom(MiB)
                written.append((await client.write_block(data, replicas=1, min_replicas=1), data))
        assert e.value.errno == errno.ENOSPC
        assert 3 <= len(written) < 8
        assert node.alive()
        for ref, data in written:
            assert await client.read_block(ref) == data
        assert os.listdir(tmpfs / "data" / "tmp") == []
        # the live znode tells placement the node is nearly full
        with trio.fail_after(10):
            while nodedir.get(node.node_id).free >= MiB:
                await trio.sleep(0.1)
                await nodedir.refresh()
        # small blocks may still fit; deleting makes room for big ones again
        for ref, _ in written[:3]:
            await client.delete_block(node.node_id, ref.id)
        with trio.fail_after(10):  # the node publishes its new free space
            while nodedir.get(node.node_id).free < 2 * MiB:
                await trio.sleep(0.1)
                await nodedir.refresh()
        ref = await client.write_block(b"y" * MiB, replicas=1, min_replicas=1)
        assert await client.read_block(ref) == b"y" * MiB
    finally:
        await client.aclose()
        await trio.to_thread.run_sync(stop_all, [node])


async def test_sigkill_mid_put_leaves_no_partial_block(zk, zk_hosts, fs_paths, tmp_path):
    key = await mkfs_keyed(zk, fs_paths, FsConfig(replicas=1, min_replicas=1))
    node = NodeProcess(zk_hosts, fsname_of(fs_paths), tmp_path / "data",
                       env={**TEST_ENV, "DFS_NODE_FAULT_PUT_PAUSE": "30"})
    nodedir = NodeDirectory(zk, fs_paths)
    client = BlockClient(nodedir, key=key, request_timeout=60)
    tmp_dir = tmp_path / "data" / "tmp"
    try:
        await trio.to_thread.run_sync(node.start)
        await nodedir.refresh()
        outcome = []

        async def put():
            try:
                await client.write_block(os.urandom(2 * MiB), replicas=1, min_replicas=1)
                outcome.append("ok")
            except DfsError as e:
                outcome.append(e.errno)

        async with trio.open_nursery() as n:
            n.start_soon(put)
            with trio.fail_after(20):
                while not os.listdir(tmp_dir):  # the temp file is written and fsynced ...
                    await trio.sleep(0.02)
            node.kill()  # ... and the node dies before the rename
        assert outcome == [errno.EIO]
        (partial,) = os.listdir(tmp_dir)
        block_id = partial.split(".")[0]
        node.env.pop("DFS_NODE_FAULT_PUT_PAUSE")
        await trio.to_thread.run_sync(node.start)
        await nodedir.refresh()
        assert os.listdir(tmp_dir) == []
        assert [x async for x in client.list_blocks(node.node_id)] == []
        with pytest.raises(DfsError) as e:
            await client.stat_block(node.node_id, block_id)
        assert e.value.errno == errno.ENOENT
    finally:
        await client.aclose()
        await trio.to_thread.run_sync(stop_all, [node])


async def test_live_znode_is_recreated_when_it_vanishes(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=1) as c:
        path = fs_paths.live_node(c.nodes[0].node_id)
        await zk.delete(path)  # what a session expiry does to an ephemeral
        with trio.fail_after(15):
            while await zk.exists(path) is None:
                await trio.sleep(0.1)
        assert NodeLive.decode((await zk.get(path))[0]).address == c.nodes[0].address


async def test_session_expiry_of_a_running_node_recreates_its_znodes(zk, zk_hosts, fs_paths, tmp_path):
    """A node frozen past its session timeout (10 s) loses its live and election znodes;
    once it runs again it registers on a new session, joins the election behind the
    leader that took over, and serves its blocks."""
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=2) as c:
        ref = await c.client.write_block(b"kept" * 1000, replicas=2, min_replicas=2)

        async def election() -> list[str]:
            return await zk.get_children(fs_paths.repair_election)

        with trio.fail_after(20):
            while len(await election()) < 2:
                await trio.sleep(0.1)
        leader = c.node(election_leader(await election()))
        other = next(n for n in c.nodes if n is not leader)
        live = fs_paths.live_node(leader.node_id)
        old_owner = (await zk.exists(live)).ephemeralOwner
        old_znode = next(n for n in await election() if n.startswith(f"{leader.node_id}."))
        os.kill(leader.pid, signal.SIGSTOP)
        try:
            with trio.fail_after(40):
                while await zk.exists(live) is not None or \
                        election_leader(await election()) != other.node_id:
                    await trio.sleep(0.2)
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        with trio.fail_after(30):
            while (st := await zk.exists(live)) is None or st.ephemeralOwner == old_owner:
                await trio.sleep(0.1)
            while not [n for n in await election()
                       if n.startswith(f"{leader.node_id}.") and n != old_znode]:
                await trio.sleep(0.1)
        assert election_leader(await election()) == other.node_id
        assert len(await election()) == 2
        assert (await c.client.stat_block(leader.node_id, ref.id))["length"] == 4000
        assert leader.alive()


async def test_zookeeper_restart_node_reregisters_and_serves_meanwhile(tmp_path):
    ens = ZkEnsemble(tmp_path / "zk", servers=1)
    await trio.to_thread.run_sync(ens.start)
    node = None
    try:
        paths = FsPaths(f"/dfs/test-{uuid.uuid4().hex[:12]}")
        zk = await connect(ens.hosts, op_timeout=30)
        key = await mkfs_keyed(zk, paths, FsConfig(replicas=1, min_replicas=1))
        node = NodeProcess(ens.hosts, fsname_of(paths), tmp_path / "data", env=TEST_ENV)
        await trio.to_thread.run_sync(node.start)
        nodedir = NodeDirectory(zk, paths)
        await nodedir.refresh()
        client = BlockClient(nodedir, key=key)
        ref = await client.write_block(b"before" * 100, replicas=1, min_replicas=1)

        await trio.to_thread.run_sync(ens.stop_server, 0)
        # ZooKeeper is down: the node keeps serving blocks
        await trio.sleep(1.0)
        assert await client.read_block(ref) == b"before" * 100
        ref2 = await client.write_block(b"during" * 100, replicas=1, min_replicas=1)
        assert node.alive()
        await trio.to_thread.run_sync(ens.start_server, 0)

        path = paths.live_node(node.node_id)
        t0 = time.time()
        with trio.fail_after(40):
            while True:
                st = await zk.exists(path)
                if st is not None:
                    live = NodeLive.decode((await zk.get(path))[0])
                    if live.updated > t0:
                        break
                await trio.sleep(0.2)
        assert live.blocks == 2 and node.alive()
        assert await client.read_block(ref2) == b"during" * 100
        await client.aclose()
        await zk.close()
    finally:
        if node is not None:
            await trio.to_thread.run_sync(stop_all, [node])
        await trio.to_thread.run_sync(ens.stop)


async def test_node_directory_watch_sees_joins_and_leaves(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=1) as c:
        nd = NodeDirectory(zk, fs_paths, interval=3600)  # only the watch can update it
        async with trio.open_nursery() as n:
            await n.start(nd.run)
            assert set(nd.live()) == {c.nodes[0].node_id}
            new = await c.add_node()
            with trio.fail_after(15):
                while new.node_id not in nd.live():
                    await trio.sleep(0.05)
            assert nd.address(new.node_id) == ("127.0.0.1", int(new.address.rsplit(":", 1)[1]))
            await trio.to_thread.run_sync(new.stop)
            with trio.fail_after(15):
                while new.node_id in nd.live():
                    await trio.sleep(0.05)
            assert nd.address(new.node_id) is None
            n.cancel_scope.cancel()


def test_a_write_after_every_node_restarted_on_its_port_succeeds(cluster_factory):
    """Nodes restarted on their own ports (an upgrade, a reboot) while a mount sat idle:
    the mount's pooled connections to them are dead, and its next write must go through
    new ones, not fail with EIO; what was written before reads back whole."""
    from tools.local.zkserver import free_port

    c = cluster_factory(FsConfig(block_size=1 << 20, replicas=3, min_replicas=3, dead_after=30), nodes=0)
    for _ in range(3):
        c.add_node(listen=f"127.0.0.1:{free_port()}")
    mnt = c.mount()
    before = os.urandom(3 << 20)
    (mnt / "a").write_bytes(before)
    for n in c.nodes:
        n.stop()
        n.start()
    after = os.urandom(3 << 20)
    (mnt / "b").write_bytes(after)  # (min_replicas 3: every node must take it)
    assert (mnt / "a").read_bytes() == before
    assert (mnt / "b").read_bytes() == after
