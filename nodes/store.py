"""The on-disk block store of one storage node (blocking code: call it from a thread).

Layout under the data directory:

    node_id                 this node's id, kept across restarts
    LOCK                    flock()ed while a node process owns the directory
    tmp/                    blocks being written; emptied at startup
    blocks/ab/cd/<id>       one file per committed block (ab, cd: first hex digits)

A block file is a header followed by the data. The header holds the block
length, the xxh3 of the whole block, one xxh3 per 64 KiB chunk and an xxh3 of
the header itself, padded to a multiple of 4 KiB so the data starts aligned;
the data is padded to whole pages too (large blocks are written with O_DIRECT).

A PUT writes a temp file, renames it into place, fdatasyncs it and fsyncs the
directory before it is acknowledged: a crash leaves either a whole block or
nothing under blocks/ (a leftover temp file is removed at the next start). Every read verifies the
chunks it returns, so the store never hands out bytes that differ from what
was written.
"""

import ctypes
import errno
import itertools
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dfs.checksum import CHUNK_SIZE, chunk_checksums, hash64, valid_block_id
from dfs.errors import DfsError

BLOCK_MAGIC = b"DFSB"
FILE_VERSION = 1
# magic, version, reserved, block length, block xxh3, chunk size, chunk count
FILE_HEADER = struct.Struct("<4sHHQQII")
ALIGN = 4096
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Blocks at least this big are written with O_DIRECT (measured: faster for
# 4 MiB blocks, slower for 4 KiB ones, DESIGN.md section 8).
DIRECT_MIN = 256 * 1024
POOLED_BUFFERS = 16


def padded(length: int) -> int:
    """Data bytes on disk: the length rounded up to whole pages (O_DIRECT writes pages)."""
    return (length + ALIGN - 1) // ALIGN * ALIGN


class _NoDirectIO(Exception):
    pass


class BlockBuffer:
    """Page-aligned memory laid out like a block file: room for the header, the data, padding.

    The server receives a large PUT payload straight into `data`, and `put`
    writes the whole buffer with one O_DIRECT write, without copying.
    """

    def __init__(self, length: int):
        self.length = length
        self.header_size = header_size(length)
        self.total = self.header_size + padded(length)
        self.mem = mmap.mmap(-1, self.total)
        self.data = memoryview(self.mem)[self.header_size:self.header_size + length]

    def __len__(self) -> int:
        return self.length


class BufferPool:
    """Re-use BlockBuffers (fresh anonymous memory costs a page fault per 4 KiB)."""

    def __init__(self, keep: int = POOLED_BUFFERS):
        self.keep = keep
        self._free: dict[int, list[BlockBuffer]] = {}
        self._lock = threading.Lock()

    def get(self, length: int) -> BlockBuffer:
        with self._lock:
            free = self._free.get(length)
            if free:
                return free.pop()
        return BlockBuffer(length)

    def put(self, buf: BlockBuffer) -> None:
        with self._lock:
            if sum(len(v) for v in self._free.values()) < self.keep:
                self._free.setdefault(buf.length, []).append(buf)


@dataclass
class BlockInfo:
    block_id: str
    length: int
    checksum: int  # xxh3_64 of the whole block
    mtime: float


def header_size(length: int) -> int:
    """Bytes before the data of a block of `length` bytes."""
    n = (length + CHUNK_SIZE - 1) // CHUNK_SIZE
    raw = FILE_HEADER.size + 8 * n + 8
    return (raw + ALIGN - 1) // ALIGN * ALIGN


def build_header(length: int, checksum: int, sums: list[int]) -> bytes:
    body = FILE_HEADER.pack(BLOCK_MAGIC, FILE_VERSION, 0, length, checksum, CHUNK_SIZE,
                            len(sums)) + struct.pack(f"<{len(sums)}Q", *sums)
    body += struct.pack("<Q", hash64(body))
    return body.ljust(header_size(length), b"\0")


@dataclass
class Header:
    length: int
    checksum: int
    sums: tuple[int, ...]
    size: int  # bytes before the data


def parse_header(raw: bytes | bytearray | memoryview, block_id: str) -> Header:
    """Decode and check a block file header; DfsError(EIO) if it is damaged."""
    if len(raw) < FILE_HEADER.size:
        raise DfsError(errno.EIO, f"block {block_id}: truncated header")
    magic, version, _, length, checksum, chunk, n = FILE_HEADER.unpack_from(raw)
    if magic != BLOCK_MAGIC or version != FILE_VERSION or chunk != CHUNK_SIZE:
        raise DfsError(errno.EIO, f"block {block_id}: bad header")
    if n != (length + CHUNK_SIZE - 1) // CHUNK_SIZE:
        raise DfsError(errno.EIO, f"block {block_id}: bad chunk count")
    end = FILE_HEADER.size + 8 * n
    if len(raw) < end + 8:
        raise DfsError(errno.EIO, f"block {block_id}: truncated header")
    (stored,) = struct.unpack_from("<Q", raw, end)
    if stored != hash64(memoryview(raw)[:end]):
        raise DfsError(errno.EIO, f"block {block_id}: header checksum mismatch")
    sums = struct.unpack_from(f"<{n}Q", raw, FILE_HEADER.size)
    return Header(length, checksum, sums, header_size(length))


class BlockStore:
    """Blocks in one data directory. Thread-safe: many PUT/GETs run in worker threads.

    Args:
      root: the data directory (created if missing).
      reserve: bytes of free space a PUT must leave on the filesystem.
      pause_before_commit: test hook; seconds to sleep between writing a temp
        file and renaming it (lets a test SIGKILL the node mid-PUT).
      syncfs: make small blocks durable with shared syncfs() calls (GroupCommit)
        instead of an fdatasync each.
    """

    def __init__(self, root: str | os.PathLike, *, reserve: int = 0,
                 pause_before_commit: float = 0.0, syncfs: bool = False):
        self.root = Path(root).resolve()
        self.blocks_dir = self.root / "blocks"
        self.tmp_dir = self.root / "tmp"
        self.reserve = reserve
        self.pause_before_commit = pause_before_commit
        self._lock = threading.Lock()  # guards the counters below
        self._count = 0
        self._bytes = 0
        self._seq = itertools.count()
        self.direct = True  # O_DIRECT for large blocks until the filesystem refuses it
        self.buffers = BufferPool()
        self.group = GroupCommit(self.root, syncfs)

    # -- lifecycle

    def open(self) -> None:
        """Create the layout, delete temp files left by a crash, count the blocks.

        Block files are the owner's only (0600, in a 0700 directory): they hold
        file contents."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.blocks_dir.mkdir(exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        made = False
        for i in range(256):
            d = self.blocks_dir / f"{i:02x}"
            if not d.is_dir():
                d.mkdir()
                made = True
        if made:
            _fsync_dir(self.blocks_dir)
            _fsync_dir(self.root)
        for entry in os.scandir(self.tmp_dir):
            try:
                os.unlink(entry.path)
            except OSError:
                pass
        count = size = 0
        for path in self._block_paths():
            try:
                size += os.stat(path).st_size
                count += 1
            except FileNotFoundError:
                pass
        with self._lock:
            self._count, self._bytes = count, size

    def _block_paths(self) -> Iterator[str]:
        for d1 in _scandir_sorted(self.blocks_dir):
            for d2 in _scandir_sorted(d1):
                for f in _scandir_sorted(d2):
                    if valid_block_id(f.name):
                        yield f.path

    @property
    def block_count(self) -> int:
        return self._count

    @property
    def bytes_stored(self) -> int:
        return self._bytes

    def usage(self) -> tuple[int, int, int]:
        """(capacity, used, free) bytes of the filesystem holding the data directory."""
        st = os.statvfs(self.root)
        capacity = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        return capacity, capacity - st.f_bfree * st.f_frsize, free

    # -- paths

    def path(self, block_id: str) -> Path:
        """Where a block lives; refuses anything but a well-formed id (never a path escape)."""
        if not valid_block_id(block_id):
            raise DfsError(errno.EINVAL, f"invalid block id {block_id[:40]!r}")
        return self.blocks_dir / block_id[0:2] / block_id[2:4] / block_id

    # -- operations

    def put(self, block_id: str, data: "bytes | bytearray | memoryview | BlockBuffer",
            checksum: int) -> BlockInfo:
        """Store a block durably after checking it against the client's checksum.

        `data` may be a BlockBuffer (received straight into block-file layout,
        so large blocks go to disk with O_DIRECT and no copy).

        Raises:
          DfsError(EIO): `data` does not hash to `checksum` (nothing is stored).
          DfsError(ENOSPC): the disk is full (nothing is stored).
          DfsError(EINVAL): a malformed block id.
        """
        final = self.path(block_id)
        buf = data if isinstance(data, BlockBuffer) else None
        view = buf.data if buf is not None else memoryview(data).cast("B")
        length = len(view)
        if hash64(view) != checksum:
            raise DfsError(errno.EIO, f"block {block_id}: payload does not match its checksum")
        header = build_header(length, checksum, chunk_checksums(view))
        size = len(header) + padded(length)
        if self.reserve or length > (1 << 20):
            st = os.statvfs(self.root)
            if st.f_bavail * st.f_frsize < size + self.reserve:
                raise DfsError(errno.ENOSPC, "no space left on the storage node")
        tmp = self.tmp_dir / f"{block_id}.{os.getpid()}.{next(self._seq)}"
        own = None
        old_size = None
        try:
            if self.direct and length >= DIRECT_MIN:
                if buf is None:
                    buf = own = self.buffers.get(length)
                    buf.data[:] = view
                try:
                    old_size = self._write_direct(tmp, final, buf, header)
                except _NoDirectIO:
                    self.direct = False  # e.g. a filesystem without O_DIRECT: buffered from now on
            if old_size is None:
                old_size = self._write_buffered(tmp, final, header, view)
        except OSError as e:
            _unlink_quietly(tmp)
            if e.errno in NO_SPACE:
                raise DfsError(errno.ENOSPC, "no space left on the storage node") from None
            raise DfsError(errno.EIO, f"block {block_id}: write failed: {e.strerror}") from None
        finally:
            if own is not None:
                self.buffers.put(own)
        with self._lock:
            self._count += old_size < 0
            self._bytes += size - max(old_size, 0)
        return BlockInfo(block_id, length, checksum, time.time())

    def _write_direct(self, tmp: Path, final: Path, buf: "BlockBuffer", header: bytes) -> int:
        # O_DIRECT: the data reaches the device without a page-cache copy. The
        # rename may come before fdatasync: a crash before the sync leaves a
        # file nobody was told about (an orphan whose checksums still hold),
        # and one journal commit then covers data, size and the new name.
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT,
                         0o600)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise _NoDirectIO() from None
            raise
        try:
            buf.mem[:len(header)] = header
            end = len(header) + buf.length
            buf.mem[end:buf.total] = bytes(buf.total - end)
            try:
                _write_all(fd, [buf.mem])
            except OSError as e:
                if e.errno == errno.EINVAL:
                    _unlink_quietly(tmp)
                    raise _NoDirectIO() from None
                raise
            if self.pause_before_commit:
                time.sleep(self.pause_before_commit)
            old_size = self._install(tmp, final)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        _fsync_dir(final.parent)
        return old_size

    def _write_buffered(self, tmp: Path, final: Path, header: bytes, view: memoryview) -> int:
        # Small blocks: write and rename, then one syncfs() for a whole group of
        # concurrent PUTs (group commit) instead of two journal commits each.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, [header, view, bytes(padded(len(view)) - len(view))])
            if self.pause_before_commit:
                time.sleep(self.pause_before_commit)
            old_size = self._install(tmp, final, sync_dirs=not self.group.available)
            if not self.group.available:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if self.group.available:
            self.group.sync()
        else:
            _fsync_dir(final.parent)
        return old_size

    def _install(self, tmp: Path, final: Path, *, sync_dirs: bool = True) -> int:
        """Rename a written temp file into place; the size of the file it replaced, or -1."""
        self._ensure_dir(final.parent, sync_dirs)
        try:
            old_size = os.stat(final).st_size
        except FileNotFoundError:
            old_size = -1
        os.rename(tmp, final)
        return old_size

    def _ensure_dir(self, d: Path, sync: bool) -> None:
        """Create a second-level fan-out directory (the first level exists since open())."""
        if d.is_dir():
            return
        d.mkdir(exist_ok=True)
        if sync:  # a group commit's syncfs covers the new entry otherwise
            _fsync_dir(d.parent)

    def get(self, block_id: str, offset: int = 0, length: int | None = None
            ) -> tuple[memoryview, Header]:
        """Read `length` bytes (default: to the end) at `offset`, verifying every chunk read.

        Returns the bytes (a view; may be shorter than asked at the end of the
        block) and the block header.

        Raises:
          DfsError(ENOENT): no such block.
          DfsError(EIO): the data on disk no longer matches its checksums.
          DfsError(EINVAL): offset beyond the block, or a malformed id.
        """
        path = self.path(block_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DfsError(errno.ENOENT, f"no block {block_id}") from None
        try:
            file_size = os.fstat(fd).st_size
            whole = offset == 0 and (length is None or length + ALIGN * 8 >= file_size)
            if whole:  # one read for header and data
                buf = _pread_exact(fd, file_size, 0)
                hdr = parse_header(buf, block_id)
            else:
                hdr = _read_header(fd, block_id, file_size)
            if file_size != hdr.size + padded(hdr.length):
                raise DfsError(errno.EIO, f"block {block_id}: file size does not match its header")
            if offset > hdr.length:
                raise DfsError(errno.EINVAL, f"offset {offset} beyond block of {hdr.length} bytes")
            end = hdr.length if length is None else min(hdr.length, offset + length)
            first = offset // CHUNK_SIZE
            last = (end + CHUNK_SIZE - 1) // CHUNK_SIZE  # exclusive
            lo = first * CHUNK_SIZE
            hi = min(last * CHUNK_SIZE, hdr.length)
            if whole:
                data = memoryview(buf)[hdr.size + lo:hdr.size + hi]
            else:
                data = memoryview(_pread_exact(fd, hi - lo, hdr.size + lo))
        finally:
            os.close(fd)
        for i in range(first, last):
            a = (i - first) * CHUNK_SIZE
            if hash64(data[a:a + CHUNK_SIZE]) != hdr.sums[i]:
                raise DfsError(errno.EIO, f"block {block_id}: chunk {i} checksum mismatch")
        return data[offset - lo:end - lo], hdr

    def stat(self, block_id: str) -> BlockInfo:
        path = self.path(block_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DfsError(errno.ENOENT, f"no block {block_id}") from None
        try:
            st = os.fstat(fd)
            hdr = _read_header(fd, block_id, st.st_size)
        finally:
            os.close(fd)
        return BlockInfo(block_id, hdr.length, hdr.checksum, st.st_mtime)

    def verify(self, block_id: str) -> BlockInfo:
        """Re-read the whole block and re-hash it. Raises DfsError(EIO) on any mismatch."""
        info = self.stat(block_id)
        data, hdr = self.get(block_id)
        if hash64(data) != hdr.checksum:
            raise DfsError(errno.EIO, f"block {block_id}: whole-block checksum mismatch")
        return info

    def delete(self, block_id: str) -> None:
        path = self.path(block_id)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            raise DfsError(errno.ENOENT, f"no block {block_id}") from None
        with self._lock:
            self._count -= 1
            self._bytes -= size

    def list(self) -> Iterator[BlockInfo]:
        """Every committed block (a damaged header is listed with length 0, checksum 0)."""
        for path in self._block_paths():
            block_id = os.path.basename(path)
            try:
                yield self.stat(block_id)
            except DfsError as e:
                if e.errno == errno.EIO:
                    yield BlockInfo(block_id, 0, 0, 0.0)

    def files(self) -> Iterator[tuple[str, int, float]]:
        """(block id, file size, mtime) of every block, from a stat each: no file is opened."""
        for path in self._block_paths():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            yield os.path.basename(path), st.st_size, st.st_mtime


class GroupCommit:
    """Make everything written so far durable with few syncfs() calls.

    A caller registers (gets a ticket) after its writes and waits until a
    syncfs that *started* after its registration has finished; one syncfs
    serves every caller that registered before it began. Thread-safe.
    """

    def __init__(self, root: Path, use_syncfs: bool):
        self.root = root
        self._fd: int | None = None
        self._cond = threading.Condition()
        self._issued = 0      # tickets handed out
        self._durable = 0     # every ticket <= this is durable
        self._syncing = False
        # Default: per-file fdatasync + directory fsync. syncfs() (DFS_NODE_SMALL_SYNC=syncfs)
        # also writes back every dirty page of the whole filesystem the data dir
        # lives on; on a shared disk (or with a big file being written next to
        # it) one small PUT then waited for all of that.
        self.available = _syncfs is not None and use_syncfs

    def _dirfd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def sync(self) -> None:
        with self._cond:
            self._issued += 1
            ticket = self._issued
            while self._durable < ticket:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                covers = self._issued
                self._cond.release()
                try:
                    err = _syncfs(self._dirfd())
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                if err:
                    raise OSError(err, os.strerror(err))
                self._durable = max(self._durable, covers)


def _load_syncfs():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None

    def syncfs(fd: int) -> int:
        return 0 if fn(fd) == 0 else ctypes.get_errno()

    return syncfs


_syncfs = _load_syncfs()


def _scandir_sorted(path: str | os.PathLike | os.DirEntry) -> list[os.DirEntry]:
    try:
        return sorted((e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)
                       or e.is_file(follow_symlinks=False)), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _write_all(fd: int, buffers: list[bytes | bytearray | memoryview]) -> None:
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        n = os.writev(fd, views)
        while n and views:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


def _read_header(fd: int, block_id: str, file_size: int) -> Header:
    """Read and check the header: one page, more if the chunk sums need it."""
    raw = _pread_exact(fd, min(ALIGN, file_size), 0)
    if len(raw) >= FILE_HEADER.size:
        length = FILE_HEADER.unpack_from(raw)[3]
        size = header_size(length)
        if ALIGN < size <= file_size:
            raw = _pread_exact(fd, size, 0)
    return parse_header(raw, block_id)


def _pread_exact(fd: int, size: int, offset: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise DfsError(errno.EIO, "block file shorter than expected")
        got += n
    return buf


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
