"""A real node process spoken to over raw sockets: the protocol, pipelining and hostile input.

One node serves the whole module. Every hostile frame must get an error reply
or a closed connection, the node must keep serving other connections, and
nothing may appear outside its data directory. The connections authenticate
first (tests.nodeutil.RawNodeSocket): what an outsider without the key can do
is tests/test_security.py's subject.
"""

import errno
import os
import socket
import uuid

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.blocks.protocol import HEADER, MAGIC, REPLY, Frame, Op, encode_block_id
from dfs.checksum import hash64
from dfs.config import FsConfig
from dfs.keys import load_key
from dfs.paths import FsPaths
from dfs.zk import connect as zk_connect
from tests.nodeutil import TEST_ENV, RawNodeSocket, files_under, key_file_of, mkfs_keyed, stop_all
from tools.local.nodeproc import NodeProcess


async def _mkfs(hosts: str, paths: FsPaths) -> None:
    zk = await zk_connect(hosts)
    try:
        await mkfs_keyed(zk, paths, FsConfig())
    finally:
        await zk.close()


@pytest.fixture(scope="module")
def node(zk_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    fsname = f"test-{uuid.uuid4().hex[:12]}"
    trio.run(_mkfs, zk_server.hosts, FsPaths(f"/dfs/{fsname}"))
    (base / "outside").mkdir()
    n = NodeProcess(zk_server.hosts, fsname, base / "data", env=TEST_ENV)
    n.start()
    try:
        yield n
    finally:
        stop_all([n])
        # nothing was written next to the data directory, only inside it
        assert sorted(os.listdir(base)) == ["data", "data.log", "outside"]
        assert os.listdir(base / "outside") == []


def connect(node) -> RawNodeSocket:
    return RawNodeSocket(node.address, load_key(key_file_of(node.fsname)))


def recv_exact(s: RawNodeSocket, n: int) -> bytes | None:
    return s.recv_exact(n)


def recv_frame(s: RawNodeSocket) -> Frame | None:
    return s.recv_frame()


def rpc(s: RawNodeSocket, frame: Frame) -> Frame:
    return s.rpc(frame)


def put_frame(bid: str, data: bytes, rid: int = 1, checksum: int | None = None) -> Frame:
    return Frame(Op.PUT, rid, encode_block_id(bid), length=len(data),
                 checksum=hash64(data) if checksum is None else checksum, payload=data)


def assert_closed_after_error(s: RawNodeSocket, status: int = errno.EINVAL) -> None:
    r = recv_frame(s)
    assert r is not None and r.status == status
    assert s.closed()  # and then the node hung up


def assert_serving(node) -> None:
    with connect(node) as s:
        r = rpc(s, Frame(Op.PING, 5))
        assert r.status == 0 and node.node_id.encode() in bytes(r.payload)


def test_put_get_stat_delete_raw(node):
    bid = uuid.uuid4().hex
    data = os.urandom(200_000)
    with connect(node) as s:
        assert rpc(s, put_frame(bid, data)).status == 0
        r = rpc(s, Frame(Op.GET, 2, encode_block_id(bid), offset=1000, length=70_000))
        assert r.status == 0 and bytes(r.payload) == data[1000:71_000]
        assert r.checksum == hash64(r.payload)
        r = rpc(s, Frame(Op.STAT, 3, encode_block_id(bid)))
        assert (r.status, r.length, r.checksum) == (0, len(data), hash64(data))
        assert rpc(s, Frame(Op.VERIFY, 4, encode_block_id(bid))).status == 0
        assert rpc(s, Frame(Op.DELETE, 5, encode_block_id(bid))).status == 0
        assert rpc(s, Frame(Op.STAT, 6, encode_block_id(bid))).status == errno.ENOENT
        assert rpc(s, Frame(Op.GET, 7, encode_block_id(bid))).status == errno.ENOENT


def test_pipelined_requests_on_one_connection(node):
    ids = [uuid.uuid4().hex for _ in range(20)]
    blobs = {b: os.urandom(1000 + i) for i, b in enumerate(ids)}
    with connect(node) as s:
        s.sendall(b"".join(s.frame_bytes(put_frame(b, blobs[b], rid=i + 1))
                           for i, b in enumerate(ids)))
        replies = [recv_frame(s) for _ in ids]
        assert sorted(r.request_id for r in replies) == list(range(1, 21))
        assert all(r.status == 0 for r in replies)
        s.sendall(b"".join(s.frame_bytes(Frame(Op.GET, 100 + i, encode_block_id(b)))
                           for i, b in enumerate(ids)))
        for _ in ids:
            r = recv_frame(s)
            assert bytes(r.payload) == blobs[ids[r.request_id - 100]]


def test_checksum_mismatch_refused_and_nothing_stored(node):
    bid = uuid.uuid4().hex
    with connect(node) as s:
        r = rpc(s, put_frame(bid, b"payload", checksum=hash64(b"payloae")))
        assert r.status == errno.EIO
        assert rpc(s, Frame(Op.STAT, 2, encode_block_id(bid))).status == errno.ENOENT
    assert not any(bid in f for f in files_under(node.data_dir))


def test_wrong_magic(node):
    with connect(node) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(100))
        assert_closed_after_error(s)
    assert_serving(node)


def test_unknown_op(node):
    with connect(node) as s:
        s.send(Frame(99, 4))
        r = recv_frame(s)
        assert r.status == errno.EINVAL and r.request_id == 4
        assert s.closed()
    assert_serving(node)


def test_reply_op_from_a_client_is_refused(node):
    with connect(node) as s:
        s.send(Frame(Op.PING | REPLY, 4))
        assert_closed_after_error(s)


@pytest.mark.parametrize("plen", [2**63, 2**64 - 1, 65 * 1024 * 1024 + 1])
def test_huge_payload_length(node, plen):
    with connect(node) as s:
        s.sendall(HEADER.pack(MAGIC, Op.PUT, 0, 0, 9, encode_block_id(uuid.uuid4().hex),
                              0, 10, 0, 0, plen))
        assert_closed_after_error(s)
    assert_serving(node)


def test_get_length_2_63(node):
    with connect(node) as s:
        s.send(Frame(Op.GET, 3, encode_block_id(uuid.uuid4().hex), offset=0, length=2**63))
        assert_closed_after_error(s)


def test_truncated_payload_stores_nothing(node):
    bid = uuid.uuid4().hex
    data = os.urandom(100_000)
    with connect(node) as s:
        f = put_frame(bid, data)
        s.sendall(f.header() + data[:40_000])
        s.sock.shutdown(socket.SHUT_WR)
        assert s.closed()  # closed, no reply for half a frame
    with connect(node) as s:
        assert rpc(s, Frame(Op.STAT, 1, encode_block_id(bid))).status == errno.ENOENT
    assert os.listdir(node.data_dir / "tmp") == []


@pytest.mark.parametrize("bad", [b"../../etc/passwd", b"../../outside/x" + b"0" * 17,
                                 b"/" * 32, b"ABCDEF0123456789ABCDEF0123456789",
                                 b"..%2f..%2f" + b"a" * 22, b"\xff" * 32])
@pytest.mark.parametrize("op", [Op.PUT, Op.GET, Op.DELETE, Op.STAT, Op.COPY, Op.VERIFY])
def test_hostile_block_ids(node, bad, op):
    payload = b"evil" if op in (Op.PUT, Op.COPY) else b""
    f = Frame(op, 8, bad.ljust(32, b"\0"), length=len(payload) if op == Op.PUT else 0,
              checksum=hash64(payload), payload=payload)
    with connect(node) as s:
        s.send(f)
        assert_closed_after_error(s)
    assert not os.path.exists("/etc/passwd.tmp")


def test_other_connections_survive_a_hostile_one(node):
    with connect(node) as good:
        assert rpc(good, Frame(Op.PING, 1)).status == 0
        with connect(node) as bad:
            bad.sendall(b"\0" * 500)
            assert_closed_after_error(bad)
        # a half-sent frame on a third connection does not block anyone either
        with connect(node) as slow:
            slow.sendall(Frame(Op.PING, 1).header()[:30])
            assert rpc(good, Frame(Op.PING, 2)).status == 0


frames = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda rest: MAGIC + rest, st.binary(max_size=400)),
    st.builds(lambda op, flags, rid, bid, off, ln, cs, stt, plen, tail:
              HEADER.pack(MAGIC, op, flags, 0, rid, bid, off, ln, cs, stt, plen) + tail,
              st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**64 - 1),
              st.one_of(st.binary(min_size=32, max_size=32),
                        st.sampled_from([encode_block_id(uuid.uuid4().hex)])),
              st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
              st.integers(0, 2**32 - 1), st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)),
              st.binary(max_size=300)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(raw=frames)
def test_random_bytes(node, raw):
    with connect(node) as s:
        s.sock.settimeout(5)
        try:
            s.sendall(raw)
            s.sock.shutdown(socket.SHUT_WR)
            # whatever the node answers must be well-formed, sealed frames, then it closes
            while s.recv_frame() is not None:
                pass
        except ConnectionResetError:
            pass  # closed with unread input: also a valid "closed"
    assert_serving(node)
    for path in files_under(node.data_dir):
        parts = path.split(os.sep)
        assert parts[0] in ("blocks", "tmp", "node_id", "LOCK"), path
        if parts[0] == "blocks":
            assert len(parts) == 4 and parts[3].startswith(parts[1] + parts[2]), path
