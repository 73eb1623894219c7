"""A node under a connection flood and stalled PUTs (issue 14): bounded memory, clear
refusals, a real client served throughout, memory back near idle afterwards."""

import errno
import os
import resource
import socket
import uuid

import pytest
import trio

from dfs.blocks.connection import NodeConnection
from dfs.blocks.protocol import Frame, Op, encode_block_id, split_address
from dfs.errors import DfsError
from tests.nodeutil import RawNodeSocket, cluster

MiB = 1 << 20
FLOOD = 10_000
STALLED = 16


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.fixture
def many_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, FLOOD + 4096), hard))
    try:
        yield  # (the node started by the test inherits the raised limit)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def served(c) -> None:
    data = os.urandom(MiB)
    ref = await c.client.write_block(data, replicas=1, min_replicas=1)
    with trio.fail_after(5):
        assert await c.client.read_block(ref) == data


async def test_flood_and_stalled_puts_stay_bounded(zk, zk_hosts, fs_paths, tmp_path, many_files):
    env = {"DFS_NODE_FRAME_TIMEOUT": "3"}
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=1, env=env) as c:
        node = c.nodes[0]
        await served(c)  # the client's pooled connection is open before the flood
        idle = rss(node.pid)

        def flood() -> list[socket.socket]:
            host, port = split_address(node.address)
            return [socket.create_connection((host, port)) for _ in range(FLOOD)]

        socks = await trio.to_thread.run_sync(flood)
        try:
            await trio.sleep(1)
            await served(c)
            with pytest.raises(DfsError) as refused:  # a new connection: refused, saying why
                await NodeConnection.open(node.node_id, node.address, key=c.key)
            assert refused.value.errno == errno.EMFILE
            assert "too many connections from 127.0.0.1 (limit 1024)" in str(refused.value)
            flooded = rss(node.pid)
        finally:
            for s in socks:
                s.close()

        body = bytes(16 * MiB)

        def stall() -> list[RawNodeSocket]:
            out = []
            for i in range(STALLED):
                raw = RawNodeSocket(node.address, c.key)
                head = Frame(Op.PUT, 7, block_id=encode_block_id(uuid.uuid4().hex), length=64 * MiB,
                             payload=memoryview(bytes(64 * MiB))).header()
                raw.sendall(head + body)  # 16 of 64 MiB, then nothing
                out.append(raw)
            return out

        stalled = await trio.to_thread.run_sync(stall)
        try:
            await served(c)
            holding = rss(node.pid)
            with trio.fail_after(10):  # dropped after DFS_NODE_FRAME_TIMEOUT
                for raw in stalled:
                    raw.sock.settimeout(10)
                    assert await trio.to_thread.run_sync(raw.closed)
        finally:
            for raw in stalled:
                raw.close()
        await trio.sleep(1)
        await served(c)
        after = rss(node.pid)
        print(f"node RSS: idle {idle / MiB:.0f} MiB, {FLOOD} connections {flooded / MiB:.0f} MiB, "
              f"{STALLED} stalled PUTs {holding / MiB:.0f} MiB, after {after / MiB:.0f} MiB")
        assert flooded < idle + 64 * MiB
        assert holding < idle + STALLED * 64 * MiB + 64 * MiB
        assert after < idle + 48 * MiB  # (malloc keeps some of the flood's small objects)
