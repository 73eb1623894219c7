"""File data on one client: write-back buffers, copy-on-write uploads, verified cached reads.

Layering: `mount` calls this; this calls the client view (dfs.client.view: block
map and size through dfs.meta, the versions last seen, the inodes held) and
`dfs.blocks.client` (bytes on nodes). Nothing here knows about FUSE.

Write path: bytes land in a per-(inode, block) buffer. A buffer that fills a
whole block is uploaded at once in the background (bounded by `upload_slots`
and `dirty_limit`); `flush`/`fsync`/`release` upload the rest and commit every
new block ref, the size and mtime in one ZooKeeper transaction. A block that is
partly overwritten is read, patched and written as a new block (copy-on-write);
the old one is queued for gc by that commit.

Read path: dirty buffers first, then blocks uploaded but not yet committed, then
the committed map loaded at open (close-to-open consistency). Whole blocks are
cached by block id: a block never changes once written, so the cache can never
be stale. Sequential readers fetch whole blocks and prefetch the next ones;
small random reads fetch only the range they need (the node verifies its chunk
checksums, the client the payload's).

Concurrency invariants (trio is cooperative; every `await` is a switch point):
- `OpenFile.lock` guards the buffers, `uploaded`, `refs`, `size` and commits of
  one inode. Uploads run outside the lock; they only hand a finished BlockRef
  back under the lock, and only if the buffer they uploaded is still current
  (`Buffer.serial`), otherwise the upload is garbage (queued for deletion).
- The cache holds immutable bytes only.
"""

import errno
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from dfs.blocks.client import BlockClient
from dfs.client.attrs import AttrJournal
from dfs.client.blockcache import BlockCache
from dfs.client.creates import PendingCreate
from dfs.client.view import ClientView
from dfs.errors import DfsError, ZkUnavailable
from dfs.meta import acl
from dfs.meta.blockmap import Diverged
from dfs.meta.inodes import Inode
from dfs.meta.writers import WriterLost
from dfs.metrics import CACHE_HIT, CACHE_MISS
from dfs.records import BlockRef, InodeRecord

log = logging.getLogger(__name__)
RELATIME_NS = 24 * 3600 * 10**9  # relatime moves an atime this old whatever the mtime

MAX_FILE_SIZE = 1 << 50  # 1 PiB: writes or truncates beyond fail with EFBIG
SMALL_READ = 128 * 1024  # random reads up to this size fetch just their range
COMMIT_BATCH = 1024  # block refs per block-map transaction (~160 KB of JSON)
MAX_REBASES = 20  # commits a flush tries while other clients keep changing the file
MAX_REWRITES = 2  # times a flush uploads blocks again whose writer record went (WriterLost)
INLINE = "inline"  # the base of block 0 when it was built on the file's inline bytes


@dataclass
class Buffer:
    """Dirty bytes of one block. `data` is the block's content from offset 0."""

    data: bytearray
    serial: int
    complete: bool = False  # holds the whole block (read-modify-write or fully written)


@dataclass
class OpenFile:
    """Per-inode state shared by every handle of this client."""

    ino: int
    size: int
    refs: dict[int, BlockRef]  # committed map as loaded at open (+ our commits)
    version_seen: int
    handles: int = 0
    buffers: dict[int, Buffer] = field(default_factory=dict)
    uploaded: dict[int, BlockRef] = field(default_factory=dict)  # not yet committed
    uploading: dict[int, int] = field(default_factory=dict)  # index -> serial in flight
    dirty_meta: bool = False  # size/mtime to commit even without new blocks
    mtime_ns: int = 0
    error: DfsError | None = None  # a background upload failed: next flush reports it
    inline: bytes | None = None  # committed inline bytes (no refs): block 0's content
    node: Inode | None = None  # the inode as we last loaded or committed it
    pending_create: PendingCreate | None = None  # its create_async, until the first commit
    lock: trio.Lock = field(default_factory=trio.Lock)
    upload_done: trio.Condition | None = None
    last_read_end: int = -1
    stale: bool | None = None  # someone else committed it: True until reloaded (None: no reload running)
    # since the last commit: block index -> byte ranges written here (block-relative),
    # and the committed block each was built on (see FileData._rebase)
    written: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    bases: dict[int, str | None] = field(default_factory=dict)
    written_end: int = 0
    merged: bool = False  # the next commit lays our writes over someone else's
    append_start: int | None = None  # where this client's O_APPEND writes began (-1: overwritten)
    atime_ns: int = 0  # the atime this client set (relatime; -1: being written)
    # chmod / chown / utimens made while the file was dirty: they go with its next
    # commit (dfs.meta.inodes.with_attrs fields, the ctime they were made at included)
    attrs: dict[str, int] = field(default_factory=dict)
    created_here: bool = False  # by this client, and open since (see fold_attrs)
    sealed: bool = False  # a flush is uploading its last buffers: writes wait (see _flush_locked)

    @property
    def dirty(self) -> bool:
        return bool(self.buffers or self.uploaded or self.uploading or self.dirty_meta or self.attrs)


class FileData:
    """All open files' data of one client.

    Args:
      view: the client's namespace (block map, size, versions seen, held inodes).
      blocks: bytes on the storage nodes.
      nursery: where background uploads and prefetches run.
      cache_bytes: block cache size.
      dirty_limit: bytes of dirty or in-flight data before writers wait.
    """

    def __init__(self, view: ClientView, blocks: BlockClient, nursery: trio.Nursery, *,
                 cache_bytes: int = 1024 << 20, dirty_limit: int = 256 << 20, upload_slots: int = 6,
                 readahead_blocks: int = 2):
        self.view = view
        self.blocks = blocks
        self.nursery = nursery
        # set by mount.kernel: the kernel drops an inode's cached pages
        self.on_merged: Callable[[int], Awaitable[None]] | None = None
        # set by the mount: attribute changes in the background (their close and fsync commit them)
        self.journal: AttrJournal | None = None
        self.config = view.config
        self.bs = view.config.block_size
        self.files: dict[int, OpenFile] = {}
        self.cache = BlockCache(cache_bytes)
        self.dirty_limit = dirty_limit
        self.dirty_bytes = 0
        self.dirty_changed = trio.Condition()
        self.upload_slots = trio.Semaphore(upload_slots)
        self.readahead_blocks = readahead_blocks
        self._fetching: dict[str, trio.Event] = {}
        self._serial = 0
        view.is_open_file = self.is_open

    # ------------------------------------------------------------------ open / close

    def is_open(self, ino: int) -> bool:
        return ino in self.files

    async def open(self, ino: int, node: Inode | None = None, *, created: bool = False,
                   pending: PendingCreate | None = None) -> tuple[OpenFile, bool]:
        """Register a handle; returns (file, keep_kernel_cache).

        Close-to-open: the first handle (re)loads the inode and block map from
        ZooKeeper; the kernel's page cache is kept only if the file did not change
        since this client last saw it. `pending`: the file's asynchronous create
        (dfs.client.creates), reported by its first flush if it failed.
        """
        f = self.files.get(ino)
        if f is not None:
            # Open here already: close-to-open still holds, a commit of another
            # client since we loaded it must show (one read; the feed may lag).
            keep = created or not await self._reload(f)
            if self.files.get(ino) is f:
                f.handles += 1
                if pending is not None:
                    f.pending_create = pending
                return f, keep
        inline = None
        if created:
            node = node or await self.view.getattr(ino)
            refs: dict[int, BlockRef] = {}
        else:
            node, refs, inline = await self.view.open_file(ino)
        f = self.files.get(ino)  # another opener may have won while we awaited
        if f is not None:
            f.handles += 1
            if pending is not None:
                f.pending_create = pending
            return f, True
        f = OpenFile(ino, node.rec.size, refs, node.version, handles=1, mtime_ns=node.rec.mtime_ns,
                     inline=inline, node=node, pending_create=pending, created_here=created)
        f.upload_done = trio.Condition(f.lock)
        self.files[ino] = f
        return f, self.view.saw_version(node)

    async def release(self, ino: int) -> None:
        f = self.files.get(ino)
        if f is None:
            return
        try:
            await self.flush(ino, report=False)
        except DfsError as e:
            if f.handles <= 1:
                # The last handle is gone: nobody can retry this flush (the error
                # went to close()). Drop what could not be committed. (An
                # unreachable ZooKeeper is logged once per outage, by the session.)
                (log.debug if isinstance(e, ZkUnavailable) else log.error)(
                    "inode %d: dropping unwritten data after %s", ino, e)
                await self._drop_dirty(f)
            raise
        finally:
            f.handles -= 1
            if f.handles <= 0 and self.journal is not None:
                self.journal.forget_failure(ino)
            if f.handles <= 0 and not f.dirty:
                del self.files[ino]
                if ino in self.view.held:  # unlinked or renamed over while open here
                    await self.view.release_orphan(ino)

    def follow(self, ino: int, then: Callable[[int], Awaitable[None]]) -> None:
        """Another client committed `ino`, open here: reload its size and block map,
        then `await then(ino)` (the kernel drops its cached pages). Not while this
        client has writes of its own in flight: close-to-open decides those."""
        f = self.files.get(ino)
        if f is None:
            return
        running = f.stale is not None
        f.stale = True
        if not running:
            self.nursery.start_soon(self._follow, f, then)

    async def _follow(self, f: OpenFile, then: Callable[[int], Awaitable[None]]) -> None:
        try:
            while f.stale:
                f.stale = False
                reloaded = await self._reload(f)
                if reloaded is None:
                    return
                if reloaded:
                    await then(f.ino)
        except DfsError as e:  # gone meanwhile, or ZooKeeper away: the next open reloads
            log.info("inode %d: could not follow another client's commit: %s", f.ino, e)
        finally:
            f.stale = None

    async def catch_up(self, ino: int, then: Callable[[int], Awaitable[None]]) -> None:
        """`follow` done before it returns: a lock was just granted here, so what its
        last holder committed before unlocking, on any mount, is what this client reads."""
        f = self.files.get(ino)
        if f is not None and await self._reload(f):
            await then(ino)

    async def _reload(self, f: OpenFile) -> bool | None:
        """Reload f's size and block map if another client committed it since:
        True if it did; None if f is dirty here or closed (close-to-open decides)."""
        async with f.lock:
            if f.dirty or self.files.get(f.ino) is not f:
                return None
            node, refs, inline = await self.view.open_file(f.ino)
            if node.version <= f.version_seen:
                return False
            f.size, f.refs, f.inline, f.mtime_ns = node.rec.size, refs, inline, node.rec.mtime_ns
            self._committed(f, node)
            return True

    def local_attrs(self, ino: int) -> tuple[int, int | None, dict[str, int]] | None:
        """An open file's size; if written here since its last commit, the mtime
        that commit will set (ctime too, unless the inode's is later); and the
        attribute changes folded into that commit (see fold_attrs): so that what
        the kernel caches while the file is open is what the close commits."""
        f = self.files.get(ino)
        if f is None:
            return None
        return f.size, (f.mtime_ns if f.dirty_meta else None), f.attrs

    async def fold_attrs(self, ino: int, fields: dict[str, int]) -> Inode | None:
        """chmod / chown / utimens of a file with writes of this client not yet
        committed, or created by it and open since: they join the file's commit
        (at close or fsync, as the data they describe does) instead of costing
        a transaction each; tar, cp -a and rsync set all three on every file
        they write. Returns the inode to show with the local changes laid over
        it by the kernel side (through local_attrs), or None: commit them now
        (not so here, or a chmod that must rewrite an ACL with the mode)."""
        f = self.files.get(ino)
        if f is None or not (f.dirty or f.created_here) or f.node is None:
            return None
        async with f.lock:  # not between a commit's snapshot of f.attrs and its clearing
            if not (f.dirty or f.created_here) or f.error is not None or self.files.get(ino) is not f:
                return None
            if "mode" in fields and not self.view.has_no_xattrs(ino):
                return None
            if "mtime_ns" in fields:
                f.mtime_ns = fields["mtime_ns"]  # a later write moves it on again
                f.dirty_meta = True
            f.attrs.update((k, v) for k, v in fields.items() if k != "mtime_ns")
            f.attrs["ctime_ns"] = fields.get("ctime_ns", time.time_ns())
            return f.node

    async def fold_access_acl(self, ino: int, value: bytes) -> bool:
        """setxattr of an access ACL that says no more than a mode (acl.is_minimal):
        a chmod, folded as fold_attrs folds one. False: set it now."""
        f = self.files.get(ino)
        if f is None or f.node is None or not acl.is_minimal(value):
            return False
        mode = acl.mode_of(value, f.attrs.get("mode", f.node.rec.mode))
        return await self.fold_attrs(ino, {"mode": mode}) is not None

    def take_attrs(self, ino: int) -> dict[str, int]:
        """The folded attribute changes of `ino`, to commit now with a change that
        cannot wait for the file's commit (they are no longer pending here)."""
        f = self.files.get(ino)
        if f is None or not f.attrs:
            return {}
        attrs, f.attrs = f.attrs, {}
        attrs.pop("ctime_ns", None)
        return attrs

    # ------------------------------------------------------------------ write

    async def write(self, ino: int, offset: int, data: bytes, *, append: bool = False) -> int:
        """append: the handle is O_APPEND; if another client commits first, these
        bytes go to the end of the file as committed (see _rebase), not to `offset`."""
        f = self.files.get(ino)
        if f is None:
            raise DfsError(errno.EBADF, "file not open")
        if offset + len(data) > MAX_FILE_SIZE:
            raise DfsError(errno.EFBIG, "file too large")
        if f.error is not None:
            raise f.error
        await self._wait_dirty_room(len(data))
        async with f.lock:
            while f.sealed:
                assert f.upload_done is not None
                await f.upload_done.wait()
            if append:
                # at the end as this client knows it: after a merge the kernel's
                # idea of the size lags until it drops its attributes
                offset = f.size
                if f.append_start is None:
                    f.append_start = offset
            elif not append and f.append_start is not None and offset + len(data) > f.append_start:
                f.append_start = -1  # overwritten in place: the appended bytes stay where they are
            await self._write_locked(f, offset, data)
        return len(data)

    async def _write_locked(self, f: OpenFile, offset: int, data: bytes) -> None:
        bs = self.bs
        view = memoryview(data)
        end = offset + len(data)
        pos = offset
        full: list[int] = []
        while pos < end:
            index, boff = divmod(pos, bs)
            n = min(bs - boff, end - pos)
            ranges = f.written.get(index)
            if ranges is None:
                ranges = f.written[index] = []
                ref = f.refs.get(index)
                f.bases[index] = ref.id if ref else INLINE if index == 0 and f.inline else None
            if ranges and ranges[-1][1] == boff:
                ranges[-1] = (ranges[-1][0], boff + n)
            else:
                ranges.append((boff, boff + n))
            buf = await self._buffer_for_write(f, index, boff, n)
            chunk = view[pos - offset:pos - offset + n]
            if len(buf.data) < boff:
                buf.data.extend(bytes(boff - len(buf.data)))
            before = len(buf.data)
            buf.data[boff:boff + n] = chunk
            self.dirty_bytes += len(buf.data) - before
            if len(buf.data) >= bs:
                buf.complete = True
            if buf.complete and boff + n == bs:
                full.append(index)
            pos += n
        f.size = max(f.size, end)
        f.written_end = max(f.written_end, end)
        f.mtime_ns = time.time_ns()
        f.dirty_meta = True
        for index in full:
            self._start_upload(f, index)

    async def _buffer_for_write(self, f: OpenFile, index: int, boff: int, n: int) -> Buffer:
        buf = f.buffers.get(index)
        if buf is not None:
            if index in f.uploading and f.uploading[index] == buf.serial:
                # being uploaded: further writes make a new version of the block
                buf = Buffer(bytearray(buf.data), self._next_serial(), buf.complete)
                self.dirty_bytes += len(buf.data)
                f.buffers[index] = buf
            return buf
        # First write to this block since the last upload: start from its current content
        # unless the write covers everything that exists of it.
        ref = f.uploaded.get(index) or f.refs.get(index)
        block_start = index * self.bs
        existing = min(self.bs, max(0, f.size - block_start))
        if ref is not None and not (boff == 0 and n >= min(existing, ref.length)):
            content = bytearray(await self._read_whole(ref))
            if len(content) > existing:  # bytes past a truncation are not file content
                del content[existing:]
            buf = Buffer(content, self._next_serial(), complete=False)
        elif ref is None and index == 0 and f.inline and not (boff == 0 and n >= min(existing, len(f.inline))):
            buf = Buffer(bytearray(f.inline[:existing]), self._next_serial(), complete=False)
        else:
            buf = Buffer(bytearray(), self._next_serial())
        self.dirty_bytes += len(buf.data)
        f.buffers[index] = buf
        return buf

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    async def _wait_dirty_room(self, n: int) -> None:
        async with self.dirty_changed:
            while self.dirty_bytes + n > self.dirty_limit and self.dirty_bytes > 0:
                await self.dirty_changed.wait()

    async def _release_dirty(self, n: int) -> None:
        self.dirty_bytes -= n
        async with self.dirty_changed:
            self.dirty_changed.notify_all()

    async def _write_block(self, data: bytes, rec: InodeRecord | None) -> BlockRef:
        """A new block of a file, on the file's own count of replicas (`dfs setrep`)."""
        own = rec.replicas if rec is not None else 0
        writer = self.view.writer
        block_id = await writer.new_id()
        try:
            return await self.blocks.write_block(data, replicas=self.config.wanted(own),
                                                 min_replicas=self.config.needed(own), block_id=block_id)
        except BaseException:
            writer.settle([block_id])  # never committed (the client deleted what it stored)
            raise

    def _start_upload(self, f: OpenFile, index: int) -> None:
        buf = f.buffers[index]
        if f.uploading.get(index) == buf.serial:
            return
        f.uploading[index] = buf.serial
        self.nursery.start_soon(self._upload, f, index, buf)

    async def _upload(self, f: OpenFile, index: int, buf: Buffer) -> None:
        data = bytes(buf.data)
        ref = None
        try:
            async with self.upload_slots:
                ref = await self._write_block(data, f.node.rec if f.node is not None else None)
            self.cache.put(ref.id, data)
        except DfsError as e:
            log.warning("upload of inode %d block %d failed: %s", f.ino, index, e)
            f.error = e
        except Exception as e:  # never let a background task take the mount down
            log.exception("upload of inode %d block %d crashed", f.ino, index)
            f.error = DfsError(errno.EIO, f"upload failed: {e!r}")
        async with f.lock:
            if f.uploading.get(index) == buf.serial:
                del f.uploading[index]
            current = f.buffers.get(index)
            if ref is not None:
                if current is buf:
                    del f.buffers[index]
                    old = f.uploaded.get(index)
                    f.uploaded[index] = ref
                    if old is not None:
                        self._discard(old)
                else:
                    self._discard(ref)  # superseded while uploading
            assert f.upload_done is not None
            f.upload_done.notify_all()
        # The buffer's bytes stop counting once it is uploaded or superseded; a
        # failed upload keeps its (current) buffer for the next flush to retry.
        await self._release_dirty(len(buf.data) if ref is not None or current is not buf else 0)

    async def _drop_dirty(self, f: OpenFile) -> None:
        async with f.lock:
            assert f.upload_done is not None
            while f.uploading:
                await f.upload_done.wait()
            freed = sum(len(b.data) for b in f.buffers.values())
            f.buffers.clear()
            for ref in f.uploaded.values():
                self._discard(ref)
            f.uploaded.clear()
            self._clean(f)
            f.error = None
        await self._release_dirty(freed)

    def _discard(self, ref: BlockRef) -> None:
        """An uploaded block that will never be committed: delete it from its nodes."""
        self.view.writer.settle([ref.id])  # (gc may take what the deletes miss)
        async def delete() -> None:
            for node_id in ref.replicas:
                try:
                    await self.blocks.delete_block(node_id, ref.id)
                except Exception:  # best effort: fsck/gc collect orphans later
                    pass
        self.nursery.start_soon(delete)

    # ------------------------------------------------------------------ flush / commit

    async def flush(self, ino: int, *, report: bool = True) -> None:
        """Upload everything dirty and commit it (close-to-open point).

        `report`: this is a close or an fsync, which reports an attribute change
        that failed in the background (dfs.client.attrs) once; a kernel RELEASE,
        whose error nobody sees, must not take that report from them.

        Never returns before the file's asynchronous create has landed, even with
        nothing to commit (an empty file): a flush that succeeded means the file
        exists. Its commit follows the create on the same session, so this costs
        a wait only where there was no commit to wait for.
        """
        lost: DfsError | None = None
        if self.journal is not None:
            try:
                await self.journal.drain(ino, report=report)  # (first: the file's commit builds on the version it makes)
            except DfsError as e:
                lost = e  # reported after the data's commit, which goes ahead
        f = self.files.get(ino)
        if f is None:
            if lost is not None:
                raise lost
            return
        if not f.dirty and f.pending_create is None:
            # Nothing to commit: no need to wait for f.lock, which a background atime
            # write (relatime, see accessed) may hold for its round trip: a close after
            # a read returns at once.
            if lost is not None:
                raise lost
            return
        try:
            await self._flush(f)
        except DfsError:
            await self._check_create(f)
            raise
        await self._check_create(f)
        if lost is not None:
            raise lost

    @staticmethod
    async def _check_create(f: OpenFile) -> None:
        """Wait for the file's asynchronous create, if any; report it if it failed."""
        pending = f.pending_create
        if pending is None:
            return
        await pending.done.wait()
        f.pending_create = None
        if pending.error is not None:  # (EEXIST or ENOENT would make no sense from close())
            raise DfsError(errno.ENOSPC if pending.error.errno == errno.ENOSPC else errno.EIO,
                           f"the file's create failed: {pending.error.message}")

    async def _flush(self, f: OpenFile) -> None:
        async with f.lock:
            rewrites = 0
            for _ in range(MAX_REBASES):
                try:
                    await self._flush_locked(f)
                    return
                except Diverged as e:
                    await self._rebase(f, e.node)
                except WriterLost as e:
                    rewrites += 1
                    if rewrites > MAX_REWRITES or not await self._rewrite_lost(f):
                        raise
                    log.warning("inode %d: %s; writing them again", f.ino, e.message)
        raise DfsError(errno.EIO, f"inode {f.ino}: other clients kept changing the file, "
                                  f"{MAX_REBASES} commits failed; the writes were not saved")

    async def _flush_locked(self, f: OpenFile) -> None:
        ino = f.ino
        if (self.config.inline_max and f.size <= self.config.inline_max and not f.uploading
                and set(f.buffers) | set(f.uploaded) | set(f.refs) <= {0}
                and not self.view.capacity.full):  # (then in a block: ZooKeeper is full)
            await self._commit_inline(f)
            return
        if f.inline and not ({0} & (set(f.buffers) | set(f.uploaded) | set(f.uploading))):
            # outgrew inline: block 0 becomes a real block in this commit
            f.buffers[0] = Buffer(bytearray(f.inline[:f.size]), self._next_serial())
            self.dirty_bytes += len(f.buffers[0].data)
        for index in list(f.buffers):
            self._start_upload(f, index)
        assert f.upload_done is not None
        prefetched: list = []
        indices = set(f.uploaded) | set(f.uploading)
        # a file with no block map yet (made here, first written): the commit needs no reads
        fresh = f.node if f.node is not None and f.node.has_map is False and not f.refs else None
        async with trio.open_nursery() as nursery:
            if f.uploading and len(indices) <= COMMIT_BATCH and fresh is None:
                # read what the commit needs while the blocks upload (one round trip less)
                async def prefetch() -> None:
                    try:
                        prefetched.append(await self.view.meta.blockmap.prefetch_commit(ino, indices))
                    except DfsError:
                        pass  # the commit reads for itself
                nursery.start_soon(prefetch)
            while f.uploading:
                await f.upload_done.wait()
        if f.error is not None:
            err, f.error = f.error, None
            # the failed buffers are still in f.buffers; a later flush retries them
            raise err
        if f.buffers:
            # Written again while we waited (the wait lets writers in): upload those
            # too, with further writes held off until the commit is made. A commit
            # of f.size with bytes of it still only in a buffer would publish a hole,
            # and the clean-up after it would forget that the buffer was written here.
            f.sealed = True
            try:
                for index in list(f.buffers):
                    self._start_upload(f, index)
                while f.uploading:
                    await f.upload_done.wait()
                if f.error is not None:
                    err, f.error = f.error, None
                    raise err
                await self._commit_uploaded(f, prefetched, fresh)
            finally:
                f.sealed = False
                f.upload_done.notify_all()
            return
        await self._commit_uploaded(f, prefetched, fresh)

    async def _commit_uploaded(self, f: OpenFile, prefetched: list, fresh: Inode | None) -> None:
        """Commit f's uploaded blocks, size and attributes (under f.lock, nothing in a buffer)."""
        assert not f.buffers and not f.uploading, "a commit with bytes not uploaded"
        ino = f.ino
        if not (f.uploaded or f.dirty_meta or f.attrs):
            return
        # A ZooKeeper multi must stay under ~1 MiB: a very large file's refs go
        # in several transactions (each consistent; the last sets size and mtime).
        indices = sorted(f.uploaded)
        while len(indices) > COMMIT_BATCH:
            batch, indices = indices[:COMMIT_BATCH], indices[COMMIT_BATCH:]
            updates = {i: f.uploaded[i] for i in batch}
            node = await self.view.commit_blocks(ino, updates, expect_version=f.version_seen)
            f.refs.update(updates)
            for i in batch:
                del f.uploaded[i]
                f.written.pop(i, None)
                f.bases.pop(i, None)
            self._committed(f, node)
        updates = dict(f.uploaded)
        node = await self.view.commit_blocks(ino, updates, size=f.size,
                                             mtime_ns=f.mtime_ns if f.dirty_meta or updates else None,
                                             prefetched=prefetched[0] if prefetched else None,
                                             known=fresh if fresh is not None and fresh.version == f.version_seen
                                             else None,
                                             expect_version=f.version_seen, attrs=f.attrs)
        f.refs.update(updates)
        f.uploaded.clear()
        f.inline = None
        self._committed(f, node)
        self._clean(f)

    async def _rewrite_lost(self, f: OpenFile) -> bool:
        """The commit failed because the blocks it names were written under a writer record
        that is gone (the session ended while they were uncommitted; gc may take them). Put
        their bytes back into buffers, from the block cache or while the nodes still have
        them (verified reads), for the next attempt to upload under the new record. False:
        the bytes of one of them are nowhere any more (called under f.lock)."""
        writer = self.view.writer
        lost = {i: ref for i, ref in f.uploaded.items() if writer.is_lost(ref.id)}
        if not lost:
            return False
        got: dict[int, bytes] = {}
        for index, ref in lost.items():
            try:
                # (the leader may have collected it: a node without it is no corruption)
                data = self.cache.get(ref.id)
                got[index] = data if data is not None else await self.blocks.read_block(ref, gone_ok=True)
            except DfsError as e:
                log.error("inode %d block %d: uncommitted and collected after the session ended, "
                          "not cached: %s", f.ino, index, e)
                return False
        for index, data in got.items():
            del f.uploaded[index]
            self._discard(lost[index])  # (settles it: it is no longer lost, just garbage)
            f.buffers[index] = Buffer(bytearray(data), self._next_serial(), complete=True)
            self.dirty_bytes += len(data)
        return True

    def _committed(self, f: OpenFile, node: Inode) -> None:
        f.node = node
        f.version_seen = node.version
        self.view.saw_version(node)

    def _clean(self, f: OpenFile) -> None:
        """What was dirty is committed (or dropped)."""
        f.dirty_meta = False
        f.attrs = {}
        f.written.clear()
        f.bases.clear()
        f.written_end = 0
        f.append_start = None
        if f.merged:
            # The file now holds bytes of others that this mount's page cache lacks:
            # the next open must not keep it, open handles drop it now.
            f.merged = False
            self.view.versions.pop(f.ino, None)
            if self.on_merged is not None:
                self.nursery.start_soon(self.on_merged, f.ino)

    def saw_own_change(self, node: Inode) -> None:
        """This client changed an open file's inode (setattr): unless someone else did
        in between, its next commit still builds on what it has."""
        f = self.files.get(node.ino)
        if f is not None and node.version == f.version_seen + 1:
            if node.has_map is None and f.node is not None:
                node.has_map = f.node.has_map  # (a setattr leaves blocks/<ino> alone)
            f.node = node
            f.version_seen = node.version

    async def _rebase(self, f: OpenFile, node: Inode) -> None:
        """Someone else committed the file since our writes were built on it: take
        their version and lay the byte ranges this client wrote over it, block by
        block, where the block ours was built on is no longer the one committed.
        Disjoint writes of two clients both survive; where they overlap, the later
        commit wins (called under f.lock, no upload in flight)."""
        node, refs, inline = await self.view.open_file(f.ino)
        bs = self.bs
        freed = 0
        tail = b""
        start = f.append_start
        if start is not None and start >= 0 and f.written_end > start:
            # O_APPEND: what we appended goes after what the others committed
            tail = await self._local_bytes(f, start, f.written_end)
            for index in list(f.written):
                ranges = f.written[index]
                kept = [(a, min(b, start - index * bs)) for a, b in ranges if index * bs + a < start]
                if not kept:
                    del f.written[index]
                elif kept != ranges:  # its buffer holds appended bytes: rebuild it
                    f.written[index], f.bases[index] = kept, "appended"
            f.written_end = max((i * bs + r[-1][1] for i, r in f.written.items()), default=0)
        for index in (set(f.buffers) | set(f.uploaded)) - set(f.written):
            # not written here (block 0 made of the inline bytes): what is committed is newer
            buf, ref = f.buffers.pop(index, None), f.uploaded.pop(index, None)
            freed += len(buf.data) if buf is not None else 0
            if ref is not None:
                self._discard(ref)
        for index, ranges in f.written.items():
            now = refs.get(index)
            key = now.id if now else INLINE if index == 0 and inline else None
            if key == f.bases.get(index) != INLINE or ranges == [(0, bs)]:
                continue
            buf = f.buffers.get(index)
            ref = f.uploaded.pop(index, None)
            ours = buf.data if buf is not None else await self._read_whole(ref) if ref is not None else b""
            merged = bytearray(await self._read_whole(now)) if now else bytearray(inline if key == INLINE else b"")
            for a, b in ranges:
                if len(merged) < a:
                    merged.extend(bytes(a - len(merged)))
                merged[a:b] = ours[a:b]
            if ref is not None:
                self._discard(ref)
            if buf is not None:
                freed += len(buf.data)
            f.buffers[index] = Buffer(merged, self._next_serial(), complete=True)
            self.dirty_bytes += len(merged)
            f.bases[index] = key
        f.refs, f.inline = refs, inline
        f.size = max(node.rec.size, f.written_end)
        f.node, f.version_seen, f.merged = node, node.version, True
        f.dirty_meta = True
        await self._release_dirty(freed)
        if tail:
            f.append_start = f.size
            await self._write_locked(f, f.size, tail)

    async def _local_bytes(self, f: OpenFile, start: int, end: int) -> bytes:
        """The file's bytes start..end as this client has them (its writes included)."""
        out = bytearray()
        while start < end:
            index, boff = divmod(start, self.bs)
            n = min(self.bs - boff, end - start)
            buf, ref = f.buffers.get(index), f.uploaded.get(index) or f.refs.get(index)
            block = buf.data if buf is not None else await self._read_whole(ref) if ref is not None \
                else f.inline or b"" if index == 0 else b""
            out += bytes(block[boff:boff + n]).ljust(n, b"\0")
            start += n
        return bytes(out)

    async def _commit_inline(self, f: OpenFile) -> None:
        """Commit a small file's bytes into its block-map znode (called under f.lock).

        No block is written: a file of at most `inline_max` bytes costs one
        ZooKeeper transaction instead of a fsynced write on every replica plus
        the commit. A ref that block 0 had is dropped (to gc) in that commit.
        """
        if not (f.buffers or f.uploaded or f.dirty_meta or f.attrs):
            return
        buf = f.buffers.get(0)
        ref = f.uploaded.get(0) or f.refs.get(0)
        if buf is not None:
            content = bytes(buf.data)
        elif ref is not None:
            content = (await self._read_whole(ref))[:ref.length]
        else:
            content = f.inline or b""
        content = content[:f.size]
        updates: dict[int, BlockRef | None] = {0: None} if 0 in f.refs else {}
        node = await self.view.commit_blocks(
            f.ino, updates, size=f.size, mtime_ns=f.mtime_ns, inline=content,
            known=None if updates else f.node, expect_version=f.version_seen, attrs=f.attrs)
        freed = sum(len(b.data) for b in f.buffers.values())
        f.buffers.clear()
        for r in f.uploaded.values():
            self._discard(r)
        f.uploaded.clear()
        f.refs.pop(0, None)
        f.inline = content or None
        self._committed(f, node)
        self._clean(f)
        await self._release_dirty(freed)

    async def flush_all(self) -> None:
        for ino in list(self.files):
            try:
                await self.flush(ino)
            except DfsError as e:
                log.error("flush of inode %d failed: %s", ino, e)

    # ------------------------------------------------------------------ truncate

    async def truncate(self, ino: int, size: int) -> Inode:
        """Set a file's size; shrinking drops blocks (to gc) and rewrites a partial last block."""
        if size > MAX_FILE_SIZE:
            raise DfsError(errno.EFBIG, "file too large")
        f = self.files.get(ino)
        if f is not None:
            await self.flush(ino)
            lock = f.lock
        else:
            lock = trio.Lock()
        async with lock:
            for _ in range(MAX_REBASES):
                try:
                    return await self._truncate_locked(ino, size, f)
                except Diverged:
                    if f is not None:
                        f.version_seen = -1  # what it has is stale: read the map again
        raise DfsError(errno.EIO, f"inode {ino}: other clients kept changing the file; not truncated")

    async def _truncate_locked(self, ino: int, size: int, f: OpenFile | None) -> Inode:
        node = await self.view.getattr(ino)
        if f is not None and node.version == f.version_seen:
            refs, inline = f.refs, f.inline
        else:  # the map as committed now: another client may have changed the last block
            node, refs, inline = await self.view.open_file(ino)
        if not node.rec.is_reg:
            raise DfsError(errno.EINVAL, "not a regular file")
        old_size = node.rec.size
        if not refs:
            # inline bytes (or nothing): the commit trims them, no block to rewrite
            new_inline = inline[:size] if inline and size < len(inline) else None
            node = await self.view.commit_blocks(ino, {}, size=size, mtime_ns=time.time_ns(),
                                                 inline=new_inline, expect_version=node.version)
            if f is not None:
                f.size, f.refs = size, {}
                f.inline = new_inline or None if new_inline is not None else inline
                self._committed(f, node)
            else:
                self.view.saw_version(node)
            return node
        bs = self.bs
        updates: dict[int, BlockRef | None] = {}
        truncate_from = None
        if size < old_size:
            last, within = divmod(size, bs)
            truncate_from = last + 1 if within else last
            ref = refs.get(last)
            if within and ref is not None and ref.length > within:
                data = (await self._read_whole(ref))[:within]
                updates[last] = await self._write_block(data, node.rec)
                self.cache.put(updates[last].id, data)
        try:
            node = await self.view.commit_blocks(ino, updates, size=size, truncate_from=truncate_from,
                                                 mtime_ns=time.time_ns(), expect_version=node.version)
        except Diverged:
            for r in updates.values():
                if r is not None:
                    self._discard(r)
            raise
        if f is not None:
            f.size, f.inline = size, None
            f.refs = {i: r for i, r in refs.items() if truncate_from is None or i < truncate_from}
            f.refs.update(updates)
            self._committed(f, node)
        else:
            self.view.saw_version(node)
        return node

    # ------------------------------------------------------------------ holes

    def seek_data_hole(self, ino: int, offset: int, hole: bool) -> int:
        """lseek(SEEK_HOLE if `hole` else SEEK_DATA): the next hole or data at or after offset.

        A block with no ref (and no dirty bytes) is a hole; the end of the file
        counts as one. Raises ENXIO at or past the end, or with no data after offset.
        """
        f = self.files.get(ino)
        if f is None:
            raise DfsError(errno.EBADF, "file not open")
        if not 0 <= offset < f.size:
            raise DfsError(errno.ENXIO, "offset at or past the end of the file")
        data = set(f.refs) | set(f.uploaded) | set(f.buffers) | ({0} if f.inline else set())
        index = offset // self.bs
        if hole:
            while index in data:
                index += 1
            return min(max(offset, index * self.bs), f.size)
        after = [i for i in data if i >= index]
        if not after or min(after) * self.bs >= f.size:
            raise DfsError(errno.ENXIO, "no data after offset")
        return max(offset, min(after) * self.bs)

    async def punch_hole(self, ino: int, offset: int, length: int) -> None:
        """Make a range read as zeros and store nothing (the size stays).

        Blocks wholly in it leave the block map (to gc); a block partly in it is
        rewritten with the range zeroed; inline bytes are zeroed and trimmed.
        The kernel holds the inode's lock across fallocate: no write of this
        mount runs meanwhile, so after the flush the block map is all there is.
        """
        f = self.files.get(ino)
        if f is None:
            raise DfsError(errno.EBADF, "file not open")
        await self.flush(ino)
        async with f.lock:
            for _ in range(MAX_REBASES):
                try:
                    return await self._punch_locked(f, offset, length)
                except Diverged:
                    f.version_seen = -1  # what it has is stale: read the map again
        raise DfsError(errno.EIO, f"inode {ino}: other clients kept changing the file; no hole punched")

    async def _punch_locked(self, f: OpenFile, offset: int, length: int) -> None:
        node = await self.view.getattr(f.ino)
        if node.version != f.version_seen:  # another client committed since: punch what is there now
            node, f.refs, f.inline = await self.view.open_file(f.ino)
            f.size = node.rec.size
            self._committed(f, node)
        end = min(offset + length, node.rec.size)
        if offset >= end:
            return
        if not f.refs:
            if f.inline:
                content = bytearray(f.inline)
                content[offset:end] = bytes(max(0, min(end, len(content)) - offset))
                inline = bytes(content).rstrip(b"\0")
                node = await self.view.commit_blocks(f.ino, {}, mtime_ns=time.time_ns(), inline=inline,
                                                     known=node, expect_version=node.version)
                f.inline = inline or None
                self._committed(f, node)
            return
        bs = self.bs
        updates: dict[int, BlockRef | None] = {}
        for index in sorted(i for i in f.refs if offset // bs <= i <= (end - 1) // bs):
            ref = f.refs[index]
            start, stop = max(offset - index * bs, 0), min(end - index * bs, bs)
            if start >= ref.length:
                continue  # past the block's bytes: zeros already
            if start == 0 and stop >= ref.length:
                updates[index] = None
                continue
            content = bytearray(await self._read_whole(ref))
            content[start:stop] = bytes(min(stop, len(content)) - start)
            data = bytes(content).rstrip(b"\0")  # past a ref's length reads as zeros
            if not data:
                updates[index] = None
                continue
            updates[index] = await self._write_block(data, node.rec)
            self.cache.put(updates[index].id, data)
        pending = sorted(updates)
        try:
            while pending:
                batch = pending[:COMMIT_BATCH]
                node = await self.view.commit_blocks(f.ino, {i: updates[i] for i in batch},
                                                     mtime_ns=time.time_ns(), expect_version=node.version)
                del pending[:COMMIT_BATCH]
                for i in batch:
                    if updates[i] is None:
                        del f.refs[i]
                    else:
                        f.refs[i] = updates[i]
                self._committed(f, node)
        except Diverged:
            for i in pending:
                if updates[i] is not None:
                    self._discard(updates[i])
            raise

    # ------------------------------------------------------------------ read

    def accessed(self, ino: int) -> None:
        """A read of open file `ino` (relatime): its atime moves if it is not later
        than the mtime and ctime, or is a day old. Written in the background, one
        write in flight per file: no round trip per read, and a mount that dies just
        after a read may lose that atime."""
        f = self.files.get(ino)
        if f is None or f.node is None or f.atime_ns < 0:
            return
        rec, now = f.node.rec, time.time_ns()
        atime = max(rec.atime_ns, f.atime_ns)
        if atime > max(rec.mtime_ns, rec.ctime_ns, f.mtime_ns) and now - atime < RELATIME_NS:
            return
        f.atime_ns = -1
        self.nursery.start_soon(self._set_atime, f, now)

    async def _set_atime(self, f: OpenFile, t: int) -> None:
        async with f.lock:  # not between a commit's read of the version and its write
            try:
                # one round trip: on the version this client has (read again if it moved)
                node = await self.view.set_atime(f.ino, t, known=f.node)
            except DfsError as e:
                log.debug("inode %d: atime not updated: %s", f.ino, e)
                f.atime_ns = 0
                return
            f.atime_ns = t
            self.saw_own_change(node)

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        f = self.files.get(ino)
        if f is None:
            raise DfsError(errno.EBADF, "file not open")
        self.accessed(ino)
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        sequential = offset == f.last_read_end or offset == 0
        f.last_read_end = end
        bs = self.bs
        out = []
        pos = offset
        while pos < end:
            index, boff = divmod(pos, bs)
            n = min(bs - boff, end - pos)
            out.append(await self._read_block_range(f, index, boff, n, sequential))
            pos += n
        if sequential and self.readahead_blocks:
            self._prefetch(f, end // bs + (1 if end % bs == 0 else 0), end // bs + self.readahead_blocks)
        return b"".join(out)

    async def _read_block_range(self, f: OpenFile, index: int, boff: int, n: int,
                                sequential: bool) -> bytes:
        buf = f.buffers.get(index)
        if buf is not None:
            data = bytes(buf.data[boff:boff + n])
            return data + bytes(n - len(data))
        ref = f.uploaded.get(index) or f.refs.get(index)
        if ref is None:
            if index == 0 and f.inline:
                data = f.inline[boff:boff + n]
                return data + bytes(n - len(data)) if len(data) < n else data
            return bytes(n)  # a hole
        if boff >= ref.length:
            return bytes(n)
        cached = self.cache.get(ref.id)
        (CACHE_MISS if cached is None else CACHE_HIT).inc()
        if cached is None and (sequential or n > SMALL_READ):
            cached = await self._read_whole(ref)
        if cached is not None:
            data = cached[boff:boff + n]
        else:
            want = min(n, ref.length - boff)
            data = await self.blocks.read_block(ref, boff, want)
        return data + bytes(n - len(data)) if len(data) < n else data

    async def _read_whole(self, ref: BlockRef) -> bytes:
        """A whole block, through the cache; concurrent readers of one block share a fetch."""
        while True:
            data = self.cache.get(ref.id)
            if data is not None:
                return data
            ev = self._fetching.get(ref.id)
            if ev is None:
                break
            await ev.wait()
            if ref.id not in self._fetching and self.cache.get(ref.id) is None:
                break  # the other fetch failed (or was evicted at once): do our own
        ev = self._fetching[ref.id] = trio.Event()
        try:
            data = await self.blocks.read_block(ref)
            self.cache.put(ref.id, data)
            return data
        finally:
            del self._fetching[ref.id]
            ev.set()

    def _prefetch(self, f: OpenFile, first: int, last: int) -> None:
        for index in range(first, last + 1):
            if index * self.bs >= f.size:
                break
            ref = f.refs.get(index)
            if ref is None or self.cache.get(ref.id) is not None or ref.id in self._fetching:
                continue

            async def fetch(r: BlockRef = ref) -> None:
                try:
                    await self._read_whole(r)
                except Exception as e:  # the reader will try again and report
                    log.debug("prefetch of %s failed: %r", r.id, e)

            self.nursery.start_soon(fetch)

    # ------------------------------------------------------------------ stats

    def local_stored(self, ino: int) -> int | None:
        """Bytes an open file stores, its dirty blocks included (None: not open here, or not counted)."""
        f = self.files.get(ino)
        if f is None or f.node is None or f.node.rec.stored < 0:
            return None
        stored = f.node.rec.stored
        for index in set(f.buffers) | set(f.uploaded):
            buf = f.buffers.get(index)
            stored += len(buf.data) if buf is not None else f.uploaded[index].length
            old = f.refs.get(index)
            stored -= old.length if old is not None else len(f.inline or b"") if index == 0 else 0
        return stored

    @staticmethod
    def blocks_of(stored: int) -> int:
        """st_blocks (512-byte units) for this many bytes stored."""
        return math.ceil(stored / 512)
