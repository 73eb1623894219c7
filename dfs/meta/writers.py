"""Writer records: which blocks a mount may still commit, as ZooKeeper knows it.

A mount uploads a file's blocks as its buffers fill and commits them to the
block map later (at flush, fsync, close): until then the blocks are on the
nodes but no map names them. To tell such blocks from garbage without
waiting `orphan_age`, every block a mount writes has an id that names its
writer record (dfs.blockid):

    writers/w-<seq>   ephemeral and sequential, one per mount session;
                      data "<watermark> <next>"

Every commit that adds blocks of this writer sets the record in the same
transaction, with the watermark then: every block of the writer with a
counter below it is committed or abandoned. So

- once the record is gone (the mount's session ended: unmount, crash,
  expiry), nobody can commit its blocks any more (a commit of them would
  set a znode that does not exist), and
- a counter below the watermark will never be committed either,

and a block of either kind that no map references is garbage at once
(nodes/leader/gc.py). Sequence numbers only grow (the parent's cversion), so
a record created after the leader looked is never mistaken for a gone one.

A mount whose session expired gets a new record; blocks of the old one that
were not committed then are lost to it (the leader may collect them at any
moment), and a commit that would reference one fails with EIO.
"""

import errno
from dataclasses import dataclass, field
from typing import Iterable

import trio

from dfs.blockid import block_writer, writer_block_id
from dfs.errors import DfsError
from dfs.paths import FsPaths
from dfs.records import BlockRef
from dfs.zk import NodeExistsError, NoNodeError, Txn, ZkClient, ZkState


def encode_mark(watermark: int, next_counter: int) -> bytes:
    return f"{watermark} {next_counter}".encode()


def decode_mark(data: bytes) -> int:
    """The watermark of a record's data (0 if unreadable: nothing settled)."""
    try:
        return int(data.split()[0])
    except (ValueError, IndexError):
        return 0


@dataclass
class WriterMarks:
    """What the writer records said at one moment (`read_marks`).

    below: every writer with a smaller sequence number existed before that
      moment (one at or above it may be newer than the read: nothing is known).
    marks: sequence -> watermark of each record that existed.
    """

    below: int = 0
    marks: dict[int, int] = field(default_factory=dict)

    def settled(self, block_id: str) -> bool:
        """True if no one can ever commit `block_id` (a writer's id) any more."""
        owner = block_writer(block_id)
        if owner is None:
            return False
        seq, counter = owner
        if seq >= self.below:
            return False
        mark = self.marks.get(seq)
        return mark is None or counter < mark


def writer_seqs(names: list[str]) -> list[int]:
    """The sequence numbers of writer records among writers/ child names ("w-<seq>")."""
    return [int(n[2:]) for n in names if n.startswith("w-") and n[2:].isdigit()]


async def read_marks(zk: ZkClient, paths: FsPaths) -> WriterMarks:
    """The writer records now (read before the block maps it is compared with)."""
    st = await zk.exists(paths.writers)
    if st is None:
        return WriterMarks()
    names = await zk.get_children(paths.writers)
    seqs = writer_seqs(names)
    got = await zk.get_many([paths.writer(s) for s in seqs])
    return WriterMarks(st.cversion, {s: decode_mark(g[0]) for s, g in zip(seqs, got) if g is not None})


class WriterLost(DfsError):
    """A commit names blocks this mount wrote under a writer record that is gone (its
    session ended): they may have been collected, and the commit applied nothing. The
    writer has a new record for new blocks; the caller may write the bytes again."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


class Writer:
    """One mount's writer record: hands out block ids and fences commits of them.

    Args:
      zk: the mount's session (a LOST session retires the record).
      paths: the filesystem's znodes.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths):
        self.zk = zk
        self.paths = paths
        self.seq: int | None = None
        self.next = 0
        self.inflight: set[int] = set()  # counters handed out, not committed or abandoned
        self.lost: set[tuple[int, int]] = set()  # (seq, counter) uncommitted when a record went
        self._lock = trio.Lock()
        self._listening = False

    def _state(self, state: str) -> None:
        if state == ZkState.LOST:
            self._retire()

    def _retire(self) -> None:
        """The record is gone: what it had in flight is lost; the next block gets a new one."""
        if self.seq is not None:
            self.lost.update((self.seq, c) for c in self.inflight)
            self.seq = None
            self.inflight = set()

    async def check_gone(self) -> bool:
        """After a fenced commit failed with NoNode: True (and retired) if the record is gone."""
        if self.seq is None:
            return True
        if await self.zk.exists(self.paths.writer(self.seq)) is not None:
            return False
        self._retire()
        return True

    async def register(self) -> None:
        """Create the record (at mount, and again after the session expired)."""
        async with self._lock:
            if self.seq is not None:
                return
            if not self._listening:  # (at the first block: views that write none need no session)
                self.zk.add_listener(self._state)
                self._listening = True
            try:
                path = await self.zk.create(self.paths.writer_prefix, encode_mark(0, 0),
                                            ephemeral=True, sequence=True)
            except NoNodeError:  # a filesystem made before writers/ existed
                try:
                    await self.zk.create(self.paths.writers)
                except NodeExistsError:
                    pass
                path = await self.zk.create(self.paths.writer_prefix, encode_mark(0, 0),
                                            ephemeral=True, sequence=True)
            self.seq = int(path.rsplit("-", 1)[1])
            self.next = 0

    async def new_id(self) -> str:
        """The id of a new block; `settle` it once it is committed or abandoned."""
        while self.seq is None:
            await self.register()
        seq = self.seq
        counter = self.next
        self.next += 1
        self.inflight.add(counter)
        return writer_block_id(seq, counter)

    def fence(self, txn: Txn, refs: Iterable[BlockRef]) -> list[int]:
        """Add to `txn` what committing `refs` needs; returns the counters it settles.

        Raises EIO for a block this mount wrote under a record that is gone.
        """
        mine = []
        for ref in refs:
            owner = block_writer(ref.id)
            if owner is None:
                continue
            if owner in self.lost:
                raise WriterLost(f"block {ref.id} was written before this mount's ZooKeeper "
                                 "session expired and may have been collected")
            if owner[0] == self.seq and owner[1] in self.inflight:
                mine.append(owner[1])
        if mine:
            assert self.seq is not None
            # if the transaction applies, its own blocks are committed: they count as settled
            rest = self.inflight.difference(mine)
            txn.set(self.paths.writer(self.seq), encode_mark(min(rest, default=self.next), self.next))
        return mine

    def is_lost(self, block_id: str) -> bool:
        """Written under a record that is gone, and not committed (see WriterLost)."""
        return block_writer(block_id) in self.lost

    def settle(self, block_ids: Iterable[str]) -> None:
        """These blocks are committed, or will never be (deleted, superseded, failed)."""
        for bid in block_ids:
            owner = block_writer(bid)
            if owner is None:
                continue
            if owner[0] == self.seq:
                self.inflight.discard(owner[1])
            self.lost.discard(owner)

