"""Helpers for tests that run real storage node processes.

`cluster(...)` makes a filesystem, starts N nodes (subprocesses), and yields a
`Cluster` with a NodeDirectory and a BlockClient; in `finally` it stops every
node by PID and prints their log tails (pytest shows them when a test fails).
"""

import os
import socket
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from kazoo.protocol.serialization import Connect

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.mkfs import mkfs
from dfs.paths import FsPaths
from dfs.records import CorruptReport
from dfs.zk import ZkClient
from tools.local.nodeproc import NodeProcess

TEST_ENV = {"DFS_NODE_HEARTBEAT": "0.3"}


def fsname_of(paths: FsPaths) -> str:
    return paths.root.rsplit("/", 1)[1]


@dataclass
class Cluster:
    zk: ZkClient
    paths: FsPaths
    nodes: list[NodeProcess]
    nodedir: NodeDirectory
    client: BlockClient
    base: Path
    corrupt: list[tuple[str, str, str]]
    zk_hosts: str

    def node(self, node_id: str) -> NodeProcess:
        return next(n for n in self.nodes if n.node_id == node_id)

    def block_file(self, node_id: str, block_id: str) -> Path:
        return self.node(node_id).data_dir / "blocks" / block_id[:2] / block_id[2:4] / block_id

    async def add_node(self, **kw) -> NodeProcess:
        i = len(self.nodes)
        env = {**TEST_ENV, **kw.pop("env", {})}
        n = NodeProcess(self.zk_hosts, fsname_of(self.paths), self.base / f"node{i}", env=env, **kw)
        self.nodes.append(n)
        await trio.to_thread.run_sync(n.start)
        return n


async def start_all(nodes: list[NodeProcess]) -> None:
    for n in nodes:
        n.spawn()
    for n in nodes:
        await trio.to_thread.run_sync(n.wait_registered, 30.0)


def stop_all(nodes: list[NodeProcess]) -> None:
    for n in nodes:
        try:
            n.stop(timeout=10)
        finally:
            if n.proc is not None:
                print(f"--- node {n.node_id} (pid {n.pid}, rc {n.returncode}) log tail:")
                print(n.log_tail(30))


@asynccontextmanager
async def cluster(zk: ZkClient, zk_hosts: str, paths: FsPaths, base: Path, n: int = 3, *,
                  config: FsConfig | None = None, env: dict[str, str] | None = None,
                  collect_corrupt: bool = True, **client_kw):
    """A filesystem with `n` running nodes and a client; everything stopped afterwards."""
    await mkfs(zk, paths, config or FsConfig())
    nodes = [NodeProcess(zk_hosts, fsname_of(paths), base / f"node{i}",
                         env={**TEST_ENV, **(env or {})}) for i in range(n)]
    corrupt: list[tuple[str, str, str]] = []
    nodedir = NodeDirectory(zk, paths, interval=0.3)
    client = None
    try:
        await start_all(nodes)
        await nodedir.wait_for(n, timeout=20)
        if collect_corrupt:
            async def on_corrupt(ref, node_id, reason):
                corrupt.append((ref.id, node_id, reason))
                await client.report_corrupt(ref, node_id, reason)
            client_kw.setdefault("on_corrupt", on_corrupt)
        client = BlockClient(nodedir, **client_kw)
        yield Cluster(zk, paths, nodes, nodedir, client, base, corrupt, zk_hosts)
    finally:
        if client is not None:
            await client.aclose()
        await trio.to_thread.run_sync(stop_all, nodes)


async def corrupt_reports(zk: ZkClient, paths: FsPaths) -> list[CorruptReport]:
    out = []
    for name in await zk.get_children(paths.repair_reports):
        data, _ = await zk.get(paths.repair_report_named(name))
        out.append(CorruptReport.decode(data))
    return out


def files_under(path: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs}


def close_session(zk_hosts: str, client_id: tuple[int, bytes]) -> None:
    """End a ZooKeeper session from outside (what an expiry does to it): another
    connection takes the session over with its id and password and closes it.
    Blocking; the session's own client sees it expired when it next reconnects."""
    host, port = zk_hosts.split(",")[0].split(":")
    connect = Connect(0, 0, 4000, *client_id, False).serialize()
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(struct.pack("!i", len(connect)) + connect + struct.pack("!iii", 8, 1, -11))
            while s.recv(4096):
                pass
    except OSError:
        pass
