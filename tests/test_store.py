"""The on-disk block store, called directly (no servers)."""

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.checksum import CHUNK_SIZE, hash64
from dfs.errors import DfsError
from nodes.store import BlockStore, header_size, padded

BID = "0123456789abcdef0123456789abcdef"
BID2 = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def store(tmp_path):
    s = BlockStore(tmp_path / "data")
    s.open()
    return s


def put(store, bid, data):
    return store.put(bid, data, hash64(data))


@pytest.mark.parametrize("direct,group", [(True, True), (False, True), (True, False), (False, False)])
def test_put_get_stat_delete(store, direct, group):
    # every write path: O_DIRECT or buffered (large), group commit or fdatasync (small)
    store.direct = direct
    store.group.available = group and store.group.available
    assert rpc_roundtrip_small(store)
    data = os.urandom(300_000)
    info = put(store, BID, data)
    assert info.length == len(data) and info.checksum == hash64(data)
    got, hdr = store.get(BID)
    assert bytes(got) == data and hdr.checksum == hash64(data)
    st_ = store.stat(BID)
    assert st_.length == len(data) and st_.checksum == hash64(data) and st_.mtime > 0
    assert store.block_count == 1
    path = store.path(BID)
    assert path.exists() and path.stat().st_size == header_size(len(data)) + padded(len(data))
    store.delete(BID)
    assert not path.exists() and store.block_count == 0
    with pytest.raises(DfsError) as e:
        store.get(BID)
    assert e.value.errno == errno.ENOENT
    with pytest.raises(DfsError) as e:
        store.delete(BID)
    assert e.value.errno == errno.ENOENT


def rpc_roundtrip_small(store):
    bid = "ab" * 16
    put(store, bid, b"small block")
    ok = bytes(store.get(bid)[0]) == b"small block"
    store.delete(bid)
    return ok


DATA = os.urandom(5 * CHUNK_SIZE + 1234)


@pytest.fixture(scope="module")
def range_store(tmp_path_factory):
    s = BlockStore(tmp_path_factory.mktemp("r"))
    s.open()
    put(s, BID, DATA)
    return s


@settings(max_examples=80, deadline=None)
@given(offset=st.integers(0, len(DATA)), length=st.integers(0, len(DATA) + 10))
def test_range_reads_match(range_store, offset, length):
    got, _ = range_store.get(BID, offset, length)
    assert bytes(got) == DATA[offset:offset + length]


def test_offset_beyond_end_is_einval(store):
    put(store, BID, b"abc")
    with pytest.raises(DfsError) as e:
        store.get(BID, 4, 1)
    assert e.value.errno == errno.EINVAL


def test_empty_block(store):
    put(store, BID, b"")
    got, hdr = store.get(BID)
    assert bytes(got) == b"" and hdr.length == 0


def test_checksum_mismatch_stores_nothing(store):
    with pytest.raises(DfsError) as e:
        store.put(BID, b"hello", hash64(b"hellp"))
    assert e.value.errno == errno.EIO
    assert not store.path(BID).exists()
    assert list(store.tmp_dir.iterdir()) == []
    assert store.block_count == 0


@pytest.mark.parametrize("bad", ["../../etc/passwd", "../" * 10 + "x" * 2, BID.upper(), ""])
def test_bad_ids_never_touch_the_disk(store, tmp_path, bad):
    before = sorted(p for p in tmp_path.rglob("*"))
    for call in (lambda: store.put(bad, b"x", hash64(b"x")), lambda: store.get(bad),
                 lambda: store.stat(bad), lambda: store.delete(bad)):
        with pytest.raises(DfsError) as e:
            call()
        assert e.value.errno == errno.EINVAL
    assert sorted(p for p in tmp_path.rglob("*")) == before


def flip(path, pos):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))


def test_flipped_data_byte_fails_only_the_chunk_it_is_in(store):
    data = os.urandom(4 * CHUNK_SIZE)
    put(store, BID, data)
    flip(store.path(BID), header_size(len(data)) + 2 * CHUNK_SIZE + 17)
    for off, n in [(0, None), (2 * CHUNK_SIZE, 10), (CHUNK_SIZE, 2 * CHUNK_SIZE)]:
        with pytest.raises(DfsError) as e:
            store.get(BID, off, n)
        assert e.value.errno == errno.EIO
    # chunks that are intact are still served (range reads verify what they read)
    got, _ = store.get(BID, 3 * CHUNK_SIZE, CHUNK_SIZE)
    assert bytes(got) == data[3 * CHUNK_SIZE:]
    with pytest.raises(DfsError) as e:
        store.verify(BID)
    assert e.value.errno == errno.EIO


def test_flipped_header_byte_is_eio(store):
    put(store, BID, b"x" * 1000)
    flip(store.path(BID), 20)  # inside the block checksum field
    with pytest.raises(DfsError) as e:
        store.get(BID)
    assert e.value.errno == errno.EIO


def test_truncated_block_file_is_eio(store):
    data = os.urandom(100_000)
    put(store, BID, data)
    os.truncate(store.path(BID), header_size(len(data)) + 50_000)
    with pytest.raises(DfsError) as e:
        store.get(BID, 0, 10)
    assert e.value.errno == errno.EIO


def test_open_removes_temp_files_and_counts_blocks(tmp_path):
    s = BlockStore(tmp_path)
    s.open()
    put(s, BID, b"a" * 10)
    put(s, BID2, b"b" * 20)
    (s.tmp_dir / f"{BID}.123.0").write_bytes(b"half a block")
    s2 = BlockStore(tmp_path)
    s2.open()
    assert list(s2.tmp_dir.iterdir()) == []
    assert s2.block_count == 2
    assert sorted((b.block_id, b.length) for b in s2.list()) == [(BID, 10), (BID2, 20)]


def test_put_twice_replaces_and_keeps_count(store):
    put(store, BID, b"one")
    put(store, BID, b"two")
    assert bytes(store.get(BID)[0]) == b"two" and store.block_count == 1


def test_largest_block_header_spans_pages(store):
    data = os.urandom(64 * 1024 * 1024)  # 1024 chunk sums: the header needs 3 pages
    assert header_size(len(data)) > 4096
    put(store, BID, data)
    assert bytes(store.get(BID, 60_000_000, 100)[0]) == data[60_000_000:60_000_100]
    assert store.stat(BID).length == len(data)
