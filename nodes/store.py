"""The on-disk block store of one storage node (blocking code: call it from a thread).

Layout under the data directory:

    node_id                 this node's id, kept across restarts
    LOCK                    flock()ed while a node process owns the directory
    tmp/                    blocks being written; emptied at startup
    blocks/ab/cd/<id>       one file per committed block (ab, cd: first hex digits)

A block file is a header followed by the data. The header holds the block
length, the xxh3 of the whole block, one xxh3 per 64 KiB chunk and an xxh3 of
the header itself, padded to a multiple of 4 KiB so the data starts aligned.

A PUT writes a temp file, fdatasyncs it, renames it into place and fsyncs the
directory: a crash leaves either the whole block or nothing under blocks/
(a leftover temp file is removed at the next start). Every read verifies the
chunks it returns, so the store never hands out bytes that differ from what
was written.
"""

import errno
import itertools
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
    """

    def __init__(self, root: str | os.PathLike, *, reserve: int = 0,
                 pause_before_commit: float = 0.0):
        self.root = Path(root).resolve()
        self.blocks_dir = self.root / "blocks"
        self.tmp_dir = self.root / "tmp"
        self.reserve = reserve
        self.pause_before_commit = pause_before_commit
        self._lock = threading.Lock()  # guards the counters below
        self._count = 0
        self._bytes = 0
        self._seq = itertools.count()

    # -- lifecycle

    def open(self) -> None:
        """Create the layout, delete temp files left by a crash, count the blocks."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.blocks_dir.mkdir(exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
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

    def put(self, block_id: str, data: bytes | bytearray | memoryview, checksum: int) -> BlockInfo:
        """Store a block durably after checking it against the client's checksum.

        Raises:
          DfsError(EIO): `data` does not hash to `checksum` (nothing is stored).
          DfsError(ENOSPC): the disk is full (nothing is stored).
          DfsError(EINVAL): a malformed block id.
        """
        final = self.path(block_id)
        if hash64(data) != checksum:
            raise DfsError(errno.EIO, f"block {block_id}: payload does not match its checksum")
        header = build_header(len(data), checksum, chunk_checksums(data))
        if self.reserve or len(data) > (1 << 20):
            st = os.statvfs(self.root)
            if st.f_bavail * st.f_frsize < len(header) + len(data) + self.reserve:
                raise DfsError(errno.ENOSPC, "no space left on the storage node")
        tmp = self.tmp_dir / f"{block_id}.{os.getpid()}.{next(self._seq)}"
        old_size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, [header, data])
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if self.pause_before_commit:
                time.sleep(self.pause_before_commit)
            self._ensure_dir(final.parent)
            try:
                old_size = os.stat(final).st_size
            except FileNotFoundError:
                old_size = -1
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except OSError as e:
            _unlink_quietly(tmp)
            if e.errno in NO_SPACE:
                raise DfsError(errno.ENOSPC, "no space left on the storage node") from None
            raise DfsError(errno.EIO, f"block {block_id}: write failed: {e.strerror}") from None
        with self._lock:
            if old_size < 0:
                self._count += 1
                self._bytes += len(header) + len(data)
            else:
                self._bytes += len(header) + len(data) - old_size
        return BlockInfo(block_id, len(data), checksum, time.time())

    def _ensure_dir(self, d: Path) -> None:
        if d.is_dir():
            return
        d.mkdir(parents=True, exist_ok=True)
        # make the new directory entries durable too
        _fsync_dir(d.parent)
        _fsync_dir(d.parent.parent)

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
            whole = offset == 0 and (length is None or length + ALIGN * 4 >= file_size)
            if whole:  # one read for header and data
                buf = _pread_exact(fd, file_size, 0)
                hdr = parse_header(buf, block_id)
            else:
                hdr = _read_header(fd, block_id, file_size)
            if file_size != hdr.size + hdr.length:
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
