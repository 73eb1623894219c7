"""The wire format: headers, limits, block-id validation, frames over a socket pair (no servers)."""

import errno

import pytest
import trio

from dfs.blocks.connection import FrameSocket, NodeConnection
from dfs.errors import DfsError
from dfs.blocks.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    REPLY,
    Frame,
    Op,
    ProtocolError,
    TruncatedFrame,
    encode_block_id,
    parse_header,
)
from dfs.checksum import block_checksum, chunk_checksums, hash64, to_hex, valid_block_id

BID = "0123456789abcdef0123456789abcdef"


def test_header_round_trip():
    f = Frame(Op.GET, request_id=7, block_id=encode_block_id(BID), offset=5, length=9,
              checksum=2**64 - 1, status=errno.EIO, flags=1, payload=b"abc")
    parsed, plen = parse_header(f.header())
    assert plen == 3
    assert (parsed.op, parsed.request_id, parsed.block_id_str, parsed.offset, parsed.length,
            parsed.checksum, parsed.status, parsed.flags) == (Op.GET, 7, BID, 5, 9, 2**64 - 1,
                                                              errno.EIO, 1)
    assert len(f.header()) == HEADER_SIZE


def test_reply_keeps_request_id_and_block():
    f = Frame(Op.STAT, request_id=99, block_id=encode_block_id(BID))
    r = f.reply(errno.ENOENT)
    assert r.op == Op.STAT | REPLY and r.request_id == 99 and r.block_id_str == BID
    assert r.status == errno.ENOENT


def test_wrong_magic_is_a_protocol_error():
    raw = bytearray(Frame(Op.PING, request_id=3).header())
    raw[0:4] = b"HTTP"
    with pytest.raises(ProtocolError) as e:
        parse_header(raw)
    assert e.value.errno == errno.EINVAL and e.value.request_id == 3


@pytest.mark.parametrize("plen", [MAX_PAYLOAD + 1, 2**63, 2**64 - 1])
def test_oversized_payload_is_refused_before_reading_it(plen):
    raw = HEADER.pack(MAGIC, Op.PUT, 0, 0, 1, encode_block_id(BID), 0, 0, 0, 0, plen)
    with pytest.raises(ProtocolError):
        parse_header(raw)


def test_max_payload_itself_is_accepted():
    raw = HEADER.pack(MAGIC, Op.PUT, 0, 0, 1, encode_block_id(BID), 0, 0, 0, 0, MAX_PAYLOAD)
    assert parse_header(raw)[1] == MAX_PAYLOAD


@pytest.mark.parametrize("bad", ["../../etc/passwd", BID.upper(), BID[:-1], BID + "0", "",
                                 "0123456789abcdef0123456789abcdeg", BID[:16] + "/" + BID[17:],
                                 "\0" * 32])
def test_block_id_validation_rejects(bad):
    assert not valid_block_id(bad)


def test_block_id_validation_accepts_uuid_hex():
    import uuid
    assert valid_block_id(uuid.uuid4().hex)


def test_checksums():
    data = bytes(range(256)) * 1000
    assert block_checksum(data) == to_hex(hash64(data))
    assert len(block_checksum(data)) == 16
    sums = chunk_checksums(data)
    assert len(sums) == 4  # 256000 bytes in 64 KiB chunks
    assert sums[0] == hash64(data[:65536]) and sums[3] == hash64(data[196608:])


async def _pair():
    a, b = trio.socket.socketpair()
    return FrameSocket(a), FrameSocket(b)


async def test_frames_over_a_socket_pair_pipelined_and_large():
    a, b = await _pair()
    big = bytes(range(256)) * (3 * 65536 // 256 * 10)  # ~1.9 MiB, bigger than the recv buffer
    frames = [Frame(Op.PING, request_id=i) for i in range(1, 50)]
    frames.append(Frame(Op.PUT, request_id=50, block_id=encode_block_id(BID), length=len(big),
                        payload=big, checksum=hash64(big)))
    frames.append(Frame(Op.PUT, request_id=51, block_id=encode_block_id(BID), length=3,
                        payload=b"xyz"))

    async def send():
        for f in frames:
            await a.send_frame(f)
        a.close()

    got = []
    async with trio.open_nursery() as n:
        n.start_soon(send)
        while (f := await b.recv_frame()) is not None:
            got.append(f)
    assert [f.request_id for f in got] == list(range(1, 52))
    assert bytes(got[49].payload) == big and hash64(got[49].payload) == got[49].checksum
    assert bytes(got[50].payload) == b"xyz"


async def test_truncated_payload_raises():
    a, b = await _pair()
    f = Frame(Op.PUT, request_id=1, block_id=encode_block_id(BID), payload=b"x" * 1000)
    await a.send_buffers([f.header(), b"x" * 10])
    a.close()
    with pytest.raises(TruncatedFrame):
        await b.recv_frame()


async def test_truncated_header_raises_and_clean_eof_is_none():
    a, b = await _pair()
    await a.send_buffers([Frame(Op.PING).header()[:20]])
    a.close()
    with pytest.raises(TruncatedFrame):
        await b.recv_frame()
    c, d = await _pair()
    c.close()
    assert await d.recv_frame() is None


async def test_a_request_queued_behind_a_send_that_broke_the_connection_says_why():
    # a PUT stuck in send (the peer reads nothing: a cut link) is given up; the PING
    # queued behind it learns that the connection broke and why, not EBADF of a closed socket
    a, _peer = await _pair()
    conn = NodeConnection("n1", "127.0.0.1:1", a)
    big = bytes(16 << 20)
    put = Frame(Op.PUT, block_id=encode_block_id(BID), length=len(big), payload=big)
    errors = []

    async def ping():
        try:
            await conn.request(Frame(Op.PING))
        except DfsError as e:
            errors.append(e)

    give_up = trio.CancelScope()

    async def send_put():
        with give_up:
            await conn.request(put)

    async with trio.open_nursery() as n:
        n.start_soon(send_put)
        await trio.sleep(0.2)  # the PUT fills the socket buffers and waits
        n.start_soon(ping)
        await trio.sleep(0.2)
        give_up.cancel()  # the PUT's caller gives up: the connection breaks
    assert conn.broken and len(errors) == 1
    assert errors[0].errno == errno.EHOSTDOWN
    assert "waited to send" in str(errors[0]) and "cancelled while sending" in str(errors[0])
    assert "Bad file descriptor" not in str(errors[0])
