"""Helpers for tests that run real storage node processes.

`cluster(...)` makes a filesystem, starts N nodes (subprocesses), and yields a
`Cluster` with a NodeDirectory and a BlockClient; in `finally` it stops every
node by PID and prints their log tails (pytest shows them when a test fails).

Keys: `mkfs_keyed` makes a filesystem with a key in its default key file
(dfs/keys.py), under the session's $XDG_CONFIG_HOME (tests/conftest.py), so
nodes, mounts and `dfs` commands started by tests find it without a flag.
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
from dfs.blocks.protocol import (
    HEADER_SIZE,
    NONCE_SIZE,
    REPLY,
    TAG_SIZE,
    Frame,
    FrameMac,
    Op,
    node_proof,
    parse_header,
    split_address,
)
from dfs.config import FsConfig
from dfs.keys import create_key_file, default_key_file, key_check
from dfs.mkfs import mkfs
from dfs.paths import FsPaths
from dfs.records import CorruptReport
from dfs.zk import ZkClient
from tools.local.nodeproc import NodeProcess

TEST_ENV = {"DFS_NODE_HEARTBEAT": "0.3"}


def fsname_of(paths: FsPaths) -> str:
    return paths.root.rsplit("/", 1)[1]


def key_file_of(fsname: str) -> Path:
    """The default key file of a test filesystem (the session's XDG_CONFIG_HOME)."""
    return default_key_file(fsname, os.environ.get("XDG_CONFIG_HOME"))


async def mkfs_keyed(zk: ZkClient, paths: FsPaths, config: FsConfig | None = None) -> bytes:
    """mkfs with a new key in the filesystem's default key file; returns the key.
    `zk` is authenticated with it (its znodes are the key's only, dfs.zk.session)."""
    config = config or FsConfig()
    key = create_key_file(key_file_of(fsname_of(paths)))
    config.key_check = key_check(key)
    zk.authenticate(key, paths.root)
    await mkfs(zk, paths, config)
    return key


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
    key: bytes

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
    key = await mkfs_keyed(zk, paths, config)
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
        client = BlockClient(nodedir, key=key, **client_kw)
        yield Cluster(zk, paths, nodes, nodedir, client, base, corrupt, zk_hosts, key)
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


class RawNodeSocket:
    """A blocking socket to a node that speaks the protocol by hand (hostile-input tests).

    With a `key` it authenticates (HELLO, then a PING, as the block client does),
    after which `frame_bytes` seals frames and `recv_frame` checks replies; raw
    bytes go out with `sendall`.
    """

    def __init__(self, address: str, key: bytes | None = None, timeout: float = 10.0):
        self.sock = socket.create_connection(split_address(address), timeout=timeout)
        self.sock.settimeout(timeout)
        self.mac: FrameMac | None = None
        if key is not None:
            nonce = os.urandom(NONCE_SIZE)
            self.sendall(Frame(Op.HELLO, payload=nonce).header() + nonce)
            hello = self.recv_frame()
            assert hello is not None and hello.status == 0, hello
            node_nonce, proof = hello.payload[:NONCE_SIZE], hello.payload[NONCE_SIZE:]
            assert proof == node_proof(key, nonce, node_nonce)
            self.mac = FrameMac(key, nonce, node_nonce, client=True)
            self.send(Frame(Op.PING, 1 << 62))
            assert self.recv_frame().status == 0

    def frame_bytes(self, frame: Frame) -> bytes:
        header = frame.header()
        tag = self.mac.seal(header, frame.payload) if self.mac else b""
        return header + bytes(frame.payload) + tag

    def send(self, frame: Frame) -> None:
        self.sendall(self.frame_bytes(frame))

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def recv_frame(self) -> Frame | None:
        """The next frame (its MAC checked once authenticated), None at the end of stream."""
        raw = self.recv_exact(HEADER_SIZE)
        if raw is None:
            return None
        f, plen = parse_header(raw)
        assert f.op & REPLY, f
        f.payload = self.recv_exact(plen) if plen else b""
        if self.mac is not None:
            self.mac.check(raw, f.payload, self.recv_exact(TAG_SIZE))
        return f

    def rpc(self, frame: Frame) -> Frame:
        self.send(frame)
        r = self.recv_frame()
        assert r is not None, "connection closed instead of a reply"
        assert r.op == frame.op | REPLY and r.request_id == frame.request_id
        return r

    def closed(self) -> bool:
        """Has the node hung up (nothing more to read)?"""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawNodeSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
