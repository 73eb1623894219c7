"""Issue 12: without the cluster's key nobody reads, writes or deletes a byte.

Real nodes and real ZooKeeper. The probe matrix speaks the node protocol by hand
(tests.nodeutil.RawNodeSocket): no key, a wrong key, a replayed handshake, a bad
MAC after a good handshake, COPY to an unregistered address, every op before
authenticating. Each is refused, and the node serves real clients afterwards.
Then: a ZooKeeper client without the key reads and changes nothing below /dfs;
key files others can read stop every daemon; `dfs up` leaves nothing readable by
others; `dfs keygen` brings a filesystem made without a key (or without ACLs)
under one; with --tls a capture of the loopback traffic shows no file contents.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import trio
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import OPEN_ACL_UNSAFE

from dfs.blocks.client import BlockClient
from dfs.blocks.connection import NodeConnection
from dfs.blocks.protocol import (HEADER, MAGIC, NONCE_SIZE, REPLY, TAG_SIZE, Frame, FrameMac, Op,
                                 encode_block_id, write_proof)
from dfs.checksum import from_hex, hash64
from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.keys import load_key
from dfs.records import BlockGroup, BlockRef
from dfs.zk.session import digest_credential
from tests.harness import stop_what_up_left
from tests.test_fsck import fsck
from tests.test_ha import MiB, View, config, start_cluster, wait_for
from tests.nodeutil import RawNodeSocket, cluster
from tools.local.mountproc import is_mounted

REPO = Path(__file__).resolve().parents[1]
OPS = [Op.PUT, Op.GET, Op.DELETE, Op.STAT, Op.LIST, Op.COPY, Op.PING, Op.VERIFY]


def dfs(*argv: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `dfs` command of this checkout (PYTHONPATH: also when run in another directory)."""
    return subprocess.run([sys.executable, "-m", "tools.cli", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def probe_frame(op: Op, bid: str, copy_to: str) -> Frame:
    """A request of `op` that would do harm if the node obeyed it."""
    payload = {Op.PUT: b"planted", Op.COPY: json.dumps({"node_id": "x", "address": copy_to}).encode()
               }.get(op, b"")
    return Frame(op, 7, encode_block_id(bid), length=len(payload) if op == Op.PUT else 0,
                 checksum=hash64(payload), payload=payload)


class Trap:
    """A TCP listener that counts who connects to it (where a COPY must never go)."""

    def __init__(self):
        self.connections = 0

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"

        async def handler(stream):
            self.connections += 1
            await stream.aclose()

        await trio.serve_listeners(handler, listeners, task_status=task_status)


class Recorder:
    """A TCP proxy to `target` that records what the client sends (to replay it)."""

    def __init__(self, target: str):
        self.target = target
        self.sent = bytearray()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"

        async def handler(client):
            host, port = self.target.rsplit(":", 1)
            node = await trio.open_tcp_stream(host, int(port))

            async def pump(src, dst, record):
                try:
                    while data := await src.receive_some(65536):
                        if record:
                            self.sent += data
                        await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    await dst.aclose()

            async with trio.open_nursery() as n:
                n.start_soon(pump, client, node, True)
                n.start_soon(pump, node, client, False)

        await trio.serve_listeners(handler, listeners, task_status=task_status)


def refused_without_effect(address: str, send: bytes) -> Frame | None:
    """Send raw bytes on a new connection; the node must hang up, with at most an
    EACCES reply. Returns that reply."""
    with RawNodeSocket(address) as s:
        s.sendall(send)
        try:
            reply = s.recv_frame()
        except ConnectionResetError:
            reply = None
        if reply is not None:
            assert reply.status == errno.EACCES, reply
            assert s.closed()
    return reply


async def test_probe_matrix(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=2,
                       config=FsConfig(replicas=2, min_replicas=2)) as c, trio.open_nursery() as bg:
        data = os.urandom(300_000)
        ref = await c.client.write_block(data, replicas=2, min_replicas=2)
        target = c.nodedir.get(ref.replicas[0])
        other = c.nodedir.get(ref.replicas[1])
        trap = Trap()
        await bg.start(trap.serve)
        planted = uuid.uuid4().hex

        def untouched() -> None:
            for node_id in ref.replicas:
                assert c.block_file(node_id, ref.id).exists()
            assert not any(c.block_file(n, planted).exists() for n in ref.replicas)
            assert trap.connections == 0

        # every op before authenticating: EACCES, closed
        for op in OPS:
            bid = planted if op == Op.PUT else ref.id
            f = probe_frame(op, bid, trap.address)
            reply = await trio.to_thread.run_sync(
                refused_without_effect, target.address, f.header() + bytes(f.payload))
            assert reply is not None and reply.op == op | REPLY  # told, not just dropped
        untouched()

        # no key at all: a HELLO answered, then a request without a MAC
        for op in OPS:
            f = probe_frame(op, ref.id, trap.address)

            def hello_then(op_frame: Frame = f) -> None:
                with RawNodeSocket(target.address) as s:
                    nonce = os.urandom(NONCE_SIZE)
                    s.sendall(Frame(Op.HELLO, payload=nonce).header() + nonce)
                    assert s.recv_frame().status == 0
                    s.sendall(op_frame.header() + bytes(op_frame.payload) + bytes(TAG_SIZE))
                    assert s.closed()

            await trio.to_thread.run_sync(hello_then)
        untouched()

        # a wrong key: our client sees the node cannot prove our key, ...
        wrong = os.urandom(32)
        with pytest.raises(DfsError) as e:
            await NodeConnection.open(target.node_id, target.address, key=wrong)
        assert e.value.errno == errno.EACCES
        bad_client = BlockClient(c.nodedir, key=wrong)
        with pytest.raises(DfsError):
            await bad_client.read_block(ref)
        await bad_client.aclose()

        # ... and the node refuses frames sealed with it
        def wrong_key_delete() -> None:
            with RawNodeSocket(target.address) as s:
                nonce = os.urandom(NONCE_SIZE)
                s.sendall(Frame(Op.HELLO, payload=nonce).header() + nonce)
                node_nonce = s.recv_frame().payload[:NONCE_SIZE]
                s.mac = FrameMac(wrong, nonce, node_nonce, client=True)
                s.send(Frame(Op.DELETE, 3, encode_block_id(ref.id)))
                assert s.closed()

        await trio.to_thread.run_sync(wrong_key_delete)
        untouched()

        # a replayed handshake: a real client's session recorded, then sent again verbatim
        recorder = Recorder(target.address)
        await bg.start(recorder.serve)
        replayed = uuid.uuid4().hex
        conn = await NodeConnection.open(None, recorder.address, key=c.key)
        put = Frame(Op.PUT, block_id=encode_block_id(replayed), length=5, checksum=hash64(b"hello"),
                    payload=b"hello")
        assert (await conn.request(put)).status == 0
        conn.close()
        await c.client.delete_block(ref.replicas[0], replayed)
        assert not c.block_file(ref.replicas[0], replayed).exists()
        with RawNodeSocket(target.address) as s:
            s.sendall(bytes(recorder.sent))
            hello = s.recv_frame()
            assert hello is not None and hello.status == 0  # a fresh nonce...
            assert await trio.to_thread.run_sync(s.closed)  # ...that the old MACs do not match
        assert not c.block_file(ref.replicas[0], replayed).exists()

        # a good handshake, then a frame with a bad MAC, or a valid frame sent twice
        def bad_mac() -> None:
            with RawNodeSocket(target.address, c.key) as s:
                raw = bytearray(s.frame_bytes(Frame(Op.DELETE, 4, encode_block_id(ref.id))))
                raw[-1] ^= 1
                s.sendall(bytes(raw))
                assert s.closed()
            with RawNodeSocket(target.address, c.key) as s:
                raw = s.frame_bytes(Frame(Op.STAT, 5, encode_block_id(ref.id)))
                s.sendall(raw)
                assert s.recv_frame().status == 0
                s.sendall(raw)  # the same bytes again: the sequence number has moved on
                assert s.closed()

        await trio.to_thread.run_sync(bad_mac)
        untouched()

        # COPY to an address that is not a live node's: refused, nobody dialled
        def copy_to(node_id: str, address: str) -> Frame:
            with RawNodeSocket(target.address, c.key) as s:
                payload = json.dumps({"node_id": node_id, "address": address}).encode()
                return s.rpc(Frame(Op.COPY, 6, encode_block_id(ref.id), payload=payload))

        for node_id in ("stranger", other.node_id):
            r = await trio.to_thread.run_sync(copy_to, node_id, trap.address)
            assert r.status == errno.EACCES, r
        untouched()

        # the node still serves real clients, and logged the refusals, not one line each
        assert await c.client.read_block(ref) == data
        ref2 = await c.client.write_block(b"after the probes" * 100, replicas=2, min_replicas=2)
        assert await c.client.read_block(ref2) == b"after the probes" * 100
        log = c.node(ref.replicas[0]).log_tail(1000)
        assert 1 <= log.count("refused 127.0.0.1") < 10, log
        bg.cancel_scope.cancel()


def kazoo(hosts: str, key: bytes | None = None) -> KazooClient:
    """A plain kazoo client, with the cluster's ZooKeeper credential if given a key."""
    zk = KazooClient(hosts, auth_data=[("digest", digest_credential(key))] if key else None)
    zk.start(timeout=15)
    return zk


def refused_to_strangers(c) -> None:
    """A client without the key reads, changes and deletes nothing of the filesystem."""
    bare = kazoo(c.hosts)
    try:
        assert c.fsname in bare.get_children("/dfs")  # listing /dfs is all it can do
        for path in (c.paths.root, c.paths.config, c.paths.live):
            with pytest.raises(NoAuthError):
                bare.get(path)
            with pytest.raises(NoAuthError):
                bare.get_children(path)
        with pytest.raises(NoAuthError):
            bare.set(c.paths.config, b"{}")
        with pytest.raises(NoAuthError):
            bare.delete(c.paths.root, recursive=True)
    finally:
        bare.stop()
        bare.close()


def test_zookeeper_without_the_key_reads_and_changes_nothing(cluster):
    mnt = cluster.mounts[0].mountpoint
    (mnt / "small").write_bytes(b"MARKER-inline-secret")
    ino = os.stat(mnt / "small").st_ino
    paths = cluster.paths
    bare = kazoo(cluster.hosts)
    try:
        with pytest.raises(NoAuthError):
            bare.get(paths.block_map(ino))  # the inline bytes (created in a multi)
        with pytest.raises(NoAuthError):
            bare.set(paths.inode(ino), b'{"mode": 33279, "uid": 0}')
        with pytest.raises(NoAuthError):
            bare.delete(paths.block_map(ino))
    finally:
        bare.stop()
        bare.close()
    refused_to_strangers(cluster)
    # what the nodes and the mount create on the fly has the ACL too: in a multi
    # (the file's znodes), ephemeral (live/<node>), ephemeral and sequential (the election)
    keyed = kazoo(cluster.hosts, cluster.key)
    try:
        mine = keyed.get_acls(paths.root)[0]
        assert [a.id.scheme for a in mine] == ["digest"] and mine[0].perms == 31
        deadline = time.monotonic() + 20
        while not (members := keyed.get_children(paths.repair_election)) and time.monotonic() < deadline:
            time.sleep(0.1)
        members = [paths.election_member(m) for m in members]
        lives = [paths.live_node(n) for n in keyed.get_children(paths.live)]
        assert members and len(lives) == 3
        for path in [paths.inode(ino), paths.block_map(ino)] + members + lives:
            assert keyed.get_acls(path)[0] == mine, path
    finally:
        keyed.stop()
        keyed.close()
    assert (mnt / "small").read_bytes() == b"MARKER-inline-secret"
    r = dfs("fsck", "--zk", cluster.hosts, "--fs", cluster.fsname)
    assert r.returncode == 0 and "HEALTHY" in r.stdout, r.stdout + r.stderr


def open_up(c, key: bytes, *, forget_key: bool) -> None:
    """Make the filesystem look as one made before ZooKeeper ACLs (every znode open to
    anyone) and, with forget_key, before keys (no key_check in its config either)."""
    zk = kazoo(c.hosts, key)
    try:
        todo = [c.paths.root]
        while todo:
            path = todo.pop()
            zk.set_acls(path, OPEN_ACL_UNSAFE)
            todo += [f"{path}/{child}" for child in zk.get_children(path)]
        if forget_key:
            config = FsConfig.decode(zk.get(c.paths.config)[0])
            config.key_check = ""
            zk.set(c.paths.config, config.encode())
    finally:
        zk.stop()
        zk.close()


def test_key_file_readable_by_others_stops_every_daemon(cluster_factory, tmp_path):
    c = cluster_factory(nodes=0)
    loose = tmp_path / "loose.key"
    shutil.copy(c.key_file, loose)
    loose.chmod(0o644)
    other = tmp_path / "other.key"
    other.write_text(os.urandom(32).hex() + "\n")
    other.chmod(0o600)
    (tmp_path / "mnt").mkdir()
    common = ["--zk", c.hosts, "--fs", c.fsname, "--zk-timeout", "5"]
    for argv in (["node", "--data", str(tmp_path / "data")], ["mount", str(tmp_path / "mnt")],
                 ["fsck"], ["status"], ["drain", "somenode"]):
        for key_file, says in ((loose, "accessible by others"), (other, "does not hold the key")):
            r = dfs(*argv, *common, "--key-file", str(key_file))
            assert r.returncode == 2, (argv, r.returncode, r.stderr)
            lines = r.stderr.splitlines()
            assert len(lines) == 1 and says in lines[0] and str(key_file) in lines[0], (argv, r.stderr)
    # $DFS_KEY_FILE is read the same way
    r = dfs("fsck", *common, env={"DFS_KEY_FILE": str(loose)})
    assert r.returncode == 2 and "accessible by others" in r.stderr
    assert not is_mounted(tmp_path / "mnt")
    # the right key, from the default location, works
    assert dfs("fsck", *common).returncode == 0


def test_dfs_up_leaves_nothing_readable_by_others(tmp_path):
    state = tmp_path / ".dfs"  # the default, where `dfs status` finds the cluster and its key
    mnt = tmp_path / "mnt"
    up = ["up", "--mountpoint", str(mnt), "--nodes", "3"]
    try:
        r = dfs(*up, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        (mnt / "big").write_bytes(os.urandom(3 << 20))
        (mnt / "small").write_bytes(b"inline bytes")  # in ZooKeeper's log
        os.sync()
        r = dfs("status", cwd=tmp_path)  # finds the local cluster's key without a flag
        assert r.returncode == 0, r.stderr
        blocks = [p for p in (state / "nodes").rglob("*") if p.is_file() and "blocks" in p.parts]
        assert blocks and list((state / "zk").rglob("log.*"))
        found = subprocess.run(["find", str(state), "-perm", "/g=r,o=r", "-type", "f"],
                               capture_output=True, text=True, check=True).stdout
        assert found == "", found
        assert oct(state.stat().st_mode & 0o777) == oct(0o700)
    finally:
        dfs("down", "--state", str(state), cwd=tmp_path)
        stop_what_up_left(state, mnt)


def test_keygen_brings_a_keyless_filesystem_under_a_key(cluster_factory):
    c = cluster_factory()
    mnt = c.mount()
    big = os.urandom(2 << 20)
    (mnt / "big").write_bytes(big)
    (mnt / "small").write_bytes(b"inline")
    for m in c.mounts:
        m.stop()
    for n in c.nodes:
        n.stop()

    # back to what a filesystem made before keys looks like: no key file, no key_check, no ACLs
    old_key = c.key
    open_up(c, old_key, forget_key=True)
    c.key_file.unlink()
    c.key_file.write_text(old_key.hex() + "\n")  # even the right key is refused: no key_check
    c.key_file.chmod(0o600)
    with pytest.raises(Exception) as e:
        c.nodes[0].start(timeout=20)
    assert "dfs keygen" in str(e.value)
    c.key_file.unlink()

    r = dfs("keygen", "--zk", c.hosts, "--fs", c.fsname)
    assert r.returncode == 0, r.stderr
    assert str(c.key_file) in r.stdout
    assert c.key_file.stat().st_mode & 0o777 == 0o600
    new_key = c.key
    assert new_key != old_key
    again = dfs("keygen", "--zk", c.hosts, "--fs", c.fsname)
    assert again.returncode == 1 and "has a key already" in again.stderr
    refused_to_strangers(c)
    # a filesystem that got its key before ZooKeeper ACLs existed: keygen adds them
    open_up(c, new_key, forget_key=False)
    r = dfs("keygen", "--zk", c.hosts, "--fs", c.fsname)
    assert r.returncode == 0 and "readable with its key only" in r.stdout, r.stdout + r.stderr
    refused_to_strangers(c)

    for n in c.nodes:
        n.start()
    c.mounts[0].start()
    assert (mnt / "big").read_bytes() == big
    assert (mnt / "small").read_bytes() == b"inline"
    assert dfs("fsck", "--zk", c.hosts, "--fs", c.fsname).returncode == 0

    # and now the probes fail: no key, and the key it had before
    node = c.nodes[0]
    reply = refused_without_effect(node.address, Frame(Op.PING, 1).header())
    assert reply is not None and reply.status == errno.EACCES

    async def with_key(key: bytes) -> None:
        await NodeConnection.open(node.node_id, node.address, key=key)

    with pytest.raises(DfsError) as e:
        trio.run(with_key, old_key)
    assert e.value.errno == errno.EACCES

    # rotation (everything stopped first, as the README says): a new key; the
    # daemons restarted with it serve the same data; the old one opens nothing
    c.mounts[0].stop()
    for n in c.nodes:
        n.stop()
    r = dfs("keygen", "--rotate", "--zk", c.hosts, "--fs", c.fsname)
    assert r.returncode == 0, r.stderr
    assert c.key != new_key and load_key(c.key_file) == c.key
    stale = kazoo(c.hosts, new_key)
    try:
        with pytest.raises(NoAuthError):
            stale.get(c.paths.config)
    finally:
        stale.stop()
        stale.close()
    for n in c.nodes:
        n.start()
    c.mounts[0].start()
    assert (mnt / "big").read_bytes() == big


class LoopbackCapture:
    """Every packet on the loopback interface while it runs (a raw AF_PACKET socket,
    as `tcpdump -i lo` would see them; needs CAP_NET_RAW, which the tests run with)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.seen = bytearray()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.seen += self.sock.recv(1 << 17)
            except socket.timeout:
                pass

    def __enter__(self) -> "LoopbackCapture":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("tls", [False, True])
def test_tls_hides_file_contents_on_the_wire(cluster_factory, tls):
    c = cluster_factory(FsConfig(block_size=1 << 20, replicas=2, min_replicas=2, dead_after=5,
                                 tls=tls), nodes=2)
    mnt = c.mount()
    marker = f"MARKER-{uuid.uuid4().hex}".encode()
    data = marker * (300_000 // len(marker))  # blocks, not inline
    with LoopbackCapture() as cap:
        (mnt / "f").write_bytes(data)
        os.sync()
        c.mounts[0].stop()  # and read it back through a new mount (not from the page cache)
        c.mounts[0].start()
        assert (mnt / "f").read_bytes() == data
    assert len(cap.seen) > len(data)  # the capture saw the traffic
    seen = marker in cap.seen
    assert seen is not tls, f"marker {'not ' if not seen else ''}on the wire with tls={tls}"


def test_tls_connections_survive_idle_closes_strangers_and_a_node_killed_mid_read(cluster_factory):
    """The node protocol over TLS (mkfs --tls) as users meet it: connections the nodes
    close when idle are dialled again, a peer that speaks plain TCP to a node gets
    nothing and the node serves on, and a node SIGKILLed while a big file is being
    read leaves the read to the other replicas, bytes intact."""
    c = cluster_factory(FsConfig(block_size=1 << 20, replicas=3, min_replicas=2, dead_after=30,
                                 tls=True), nodes=0)
    for _ in range(3):
        c.add_node(env={"DFS_NODE_IDLE_TIMEOUT": "1"})
    mnt = c.mount()
    data, more = os.urandom(24 << 20), os.urandom(3 << 20)
    (mnt / "f").write_bytes(data)
    time.sleep(2.5)  # every connection to the nodes closed as idle
    (mnt / "g").write_bytes(more)  # through connections dialled again
    c.mounts[0].stop()  # (a new mount: nothing in its caches)
    c.mounts[0].start()
    assert (mnt / "f").read_bytes() == data
    assert (mnt / "g").read_bytes() == more
    host, port = c.nodes[0].address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:  # not TLS: nothing
        s.settimeout(5)
        s.sendall(HEADER.pack(MAGIC, Op.GET, 0, 0, 1, encode_block_id(uuid.uuid4().hex), 0, 0, 0, 0, 0))
        try:
            answer = s.recv(4096)
        except (socket.timeout, ConnectionResetError):
            answer = b""
        assert MAGIC not in answer
    c.mounts[0].stop()
    c.mounts[0].start()
    got = bytearray()
    with open(mnt / "f", "rb") as f:
        got += f.read(4 << 20)
        c.nodes[0].kill()  # in the middle of the read
        while chunk := f.read(4 << 20):
            got += chunk
    assert bytes(got) == data


def test_every_block_carries_a_write_proof_and_a_forged_one_is_neither_repaired_nor_passed(cluster_factory):
    """Write proofs (issue 12 item 6): each block a mount writes is in its file's map
    with the MAC a node made under the cluster key over (id, length, checksum) when it
    stored it; fsck --verify-data checks them all; a ref whose proof is not that MAC
    (as a bug would make) is reported as unproven_block, and the repair leader does
    not copy it while it re-replicates a good block short of copies in the same way."""
    c = start_cluster(cluster_factory, config(), 3)
    mnt = c.mounts[0].mountpoint
    (mnt / "a").write_bytes(os.urandom(2 * MiB + 5))  # 3 blocks of 1 MiB
    (mnt / "b").write_bytes(os.urandom(MiB))
    view = View(c.hosts, c.paths, c.key)
    try:
        refs = view.blocks()
        assert len(refs) == 4
        for _ino, _index, ref in refs:
            assert bytes.fromhex(ref.proof) == write_proof(c.key, ref.id, ref.length, from_hex(ref.checksum))
        rc, report = fsck(c, "--verify-data")
        assert rc == 0 and report["proven_blocks"] == 4, report

        def edit(name: str, change) -> BlockRef:
            ino = os.stat(mnt / name).st_ino
            path = c.paths.block_group(ino, 0)
            data, st = view.zk.get(path)
            grp = BlockGroup.decode(data)
            change(grp.blocks[0])
            view.zk.set(path, grp.encode(), st.version)
            return grp.blocks[0]

        def forge(ref: BlockRef) -> None:  # the proof of other bytes, and one copy short
            ref.proof = write_proof(c.key, ref.id, ref.length, from_hex(ref.checksum) ^ 1).hex()
            ref.replicas.pop()

        forged = edit("a", forge)
        short = edit("b", lambda ref: ref.replicas.pop())
        try:
            view.zk.set(c.paths.repair_rescan, b"test")
        except NoNodeError:
            view.zk.create(c.paths.repair_rescan, b"test")

        def now(block_id: str) -> BlockRef:
            return next(r for _, _, r in view.blocks() if r.id == block_id)

        wait_for("the good block is back at 3 copies", lambda: len(now(short.id).replicas) == 3, 60)
        wait_for("the leader's status counts the forged one",
                 lambda: view.status().get("counts", {}).get("unproven") == 1, 30)
        assert now(forged.id).replicas == forged.replicas  # not repaired
        rc, report = fsck(c, "--verify-data")
        assert rc == 1 and report["unproven_blocks"] == 1 and report["proven_blocks"] == 3, report
        assert [p["block"] for p in report["problems"] if p["category"] == "unproven_block"] == [forged.id]
    finally:
        view.close()


def test_dfs_up_tls_puts_zookeeper_behind_tls_too(tmp_path):
    """`dfs up --tls`: ZooKeeper serves TLS only (secureClientPort, a certificate of the
    key's CA), and every daemon and command reaches it so. On the loopback wire nothing
    of an inline file (whose bytes live in ZooKeeper) nor of a block, nor the ZooKeeper
    credential shows; a plain client gets no answer; `dfs status` and `dfs fsck` work."""
    state = tmp_path / ".dfs"
    mnt = tmp_path / "mnt"
    key_file = state / "default.key"
    try:
        r = dfs("up", "--mountpoint", str(mnt), "--nodes", "2", "--replicas", "2", "--tls", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        hosts = json.loads((state / "cluster.json").read_text())["zk"]
        assert hosts.startswith("tls:"), hosts
        host, port = hosts[len("tls:"):].split(",")[0].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:  # plain TCP: nothing
            s.settimeout(5)
            s.sendall(b"ruok")
            try:
                answer = s.recv(64)
            except (socket.timeout, ConnectionResetError):
                answer = b""
            assert b"imok" not in answer
        marker = f"MARKER-{uuid.uuid4().hex}".encode()
        credential = digest_credential(load_key(key_file)).encode()
        with LoopbackCapture() as cap:
            (mnt / "small").write_bytes(marker)  # inline: in ZooKeeper only
            (mnt / "big").write_bytes(marker * (300_000 // len(marker)))  # blocks
            os.sync()
            for cmd in ("status", "fsck"):  # tools over TLS, authenticating inside it
                r = dfs(cmd, cwd=tmp_path)
                assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        assert len(cap.seen) > 300_000  # the capture saw the traffic
        assert marker not in cap.seen
        assert credential.split(b":")[1] not in cap.seen
        assert (mnt / "small").read_bytes() == marker
    finally:
        dfs("down", "--state", str(state), cwd=tmp_path)
        stop_what_up_left(state, mnt)
