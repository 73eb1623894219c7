"""Writer records (dfs.meta.writers): the ids of a mount's blocks name a record in
ZooKeeper, every commit of them fences on it, and once it is gone nobody can commit
them, which is what lets gc take a dead mount's blocks at once (tests/test_reclaim.py)."""

import errno
import uuid

import pytest

from dfs.blockid import block_writer, random_block_id, writer_block_id
from dfs.checksum import valid_block_id
from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.meta import Meta
from dfs.meta.writers import Writer, WriterMarks, decode_mark, read_marks
from dfs.mkfs import mkfs
from dfs.paths import ROOT_INO
from dfs.records import BlockRef
from dfs.zk import connect
from tests.test_node_sessions import expire


def test_block_ids_name_their_writer_and_random_ids_name_none():
    bid = writer_block_id(42, 7)
    assert valid_block_id(bid) and block_writer(bid) == (42, 7)
    assert block_writer(writer_block_id(16 ** 10 - 1, 16 ** 9 - 1)) == (16 ** 10 - 1, 16 ** 9 - 1)
    assert writer_block_id(42, 7) != bid  # the random part spreads a writer over block dirs
    for _ in range(1000):
        assert block_writer(random_block_id()) is None
    assert block_writer("0" * 31) is None and block_writer("0" * 12 + "0" + "z" * 19) is None
    with pytest.raises(ValueError):
        writer_block_id(-1, 0)


def test_marks_settle_gone_writers_and_counters_below_the_watermark():
    marks = WriterMarks(below=10, marks={3: 5})
    assert not marks.settled(writer_block_id(3, 5))  # in flight at writer 3
    assert marks.settled(writer_block_id(3, 4))      # below its watermark
    assert marks.settled(writer_block_id(2, 10**6))  # writer 2 is gone
    assert not marks.settled(writer_block_id(10, 0))  # maybe newer than the read
    assert not marks.settled(random_block_id())       # no writer: only orphan_age tells
    assert decode_mark(b"12 40") == 12 and decode_mark(b"junk") == 0


def ref(bid: str) -> BlockRef:
    return BlockRef(id=bid, length=1, checksum="0" * 16, replicas=["n1"])


async def test_commits_fence_on_the_record_and_a_gone_record_commits_nothing(zk, zk_hosts, fs_paths):
    await mkfs(zk, fs_paths, FsConfig())
    session = await connect(zk_hosts)
    try:
        writer = Writer(session, fs_paths)
        meta = Meta(session, fs_paths, FsConfig(), writer=writer)
        node = await meta.create(ROOT_INO, b"f", 0o644, uid=0, gid=0)
        await writer.register()
        first_seq = writer.seq
        a, b, c = [await writer.new_id() for _ in range(3)]
        marks = await read_marks(zk, fs_paths)
        assert not any(marks.settled(x) for x in (a, b, c))
        await meta.blockmap.commit_blocks(node.ino, {0: ref(a), 2: ref(c)})
        # the record says so in the same transaction (b is still in flight: the watermark stays)
        assert (await zk.get(fs_paths.writer(first_seq)))[0] == b"1 3"
        writer.settle([b])  # abandoned
        await meta.blockmap.commit_blocks(node.ino, {1: ref(await writer.new_id())})
        marks = await read_marks(zk, fs_paths)
        assert marks.settled(a) and marks.settled(b) and marks.settled(c)

        # the record goes (an admin, or the session's end): the commit fails at once, nothing lands
        d = await writer.new_id()
        await zk.delete(fs_paths.writer(first_seq))
        with pytest.raises(DfsError) as e:
            await meta.blockmap.commit_blocks(node.ino, {3: ref(d)})
        assert e.value.errno == errno.EIO
        assert 3 not in await meta.blockmap.read_block_map(node.ino)
        assert (await read_marks(zk, fs_paths)).settled(d)
        # a new record for new blocks; the lost one never commits
        e2 = await writer.new_id()
        assert writer.seq is not None and writer.seq > first_seq
        await meta.blockmap.commit_blocks(node.ino, {3: ref(e2)})
        with pytest.raises(DfsError) as e:
            await meta.blockmap.commit_blocks(node.ino, {4: ref(d)})
        assert e.value.errno == errno.EIO
        assert sorted(await meta.blockmap.read_block_map(node.ino)) == [0, 1, 2, 3]

        # the session expires: the same
        f = await writer.new_id()
        seq = writer.seq
        await expire(zk_hosts, session)
        assert (await read_marks(zk, fs_paths)).settled(f)
        with pytest.raises(DfsError) as e:
            await meta.blockmap.commit_blocks(node.ino, {5: ref(f)})
        assert e.value.errno == errno.EIO
        g = await writer.new_id()
        assert writer.seq > seq
        await meta.blockmap.commit_blocks(node.ino, {5: ref(g)})
        # blocks of no writer commit as before
        await meta.blockmap.commit_blocks(node.ino, {6: ref(uuid.uuid4().hex)})
        assert sorted(await meta.blockmap.read_block_map(node.ino)) == [0, 1, 2, 3, 5, 6]
    finally:
        await session.close()
