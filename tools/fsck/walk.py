"""fsck's namespace walk: directory by directory, feeding the namespace and block checks.

WORKERS tasks take chunks of CHUNK entries from a LIFO of pending directories
(which keeps the frontier small) and hold one chunk of entries at a time. Each
entry's inode and its block-map listing (or directory listing) are read in one
multi-read per chunk.
"""

import os
import stat

import trio

from dfs.errors import DfsError, UsageError
from dfs.names import unescape
from dfs.paths import ROOT_INO
from dfs.records import DirEntry, InodeRecord
from dfs.zk import NoNodeError
from dfs.zk.reads import Read, Reads
from tools.fsck.blocks import BlockChecks
from tools.fsck.namespace import NamespaceChecks
from tools.fsck.state import CHUNK, DirWalk, FileInfo, FsckState, decode_dirent, decode_inode, join

WORKERS = 12          # directory chunks in flight


class Walk:
    def __init__(self, s: FsckState, names: NamespaceChecks, blocks: BlockChecks):
        self.s = s
        self.names = names
        self.blocks = blocks
        self._queue: list = []
        self._busy = 0
        self._changed = trio.Event()

    async def resolve(self, path: str) -> tuple[int, str, InodeRecord]:
        """PATH -> (ino, normalized path, inode); UsageError if it does not exist."""
        s = self.s
        ino = ROOT_INO
        norm = "/"
        for part in [p for p in path.split("/") if p and p != "."]:
            try:
                node = await s.meta.lookup(ino, os.fsencode(part))
            except DfsError as e:
                raise UsageError(f"{path}: {os.strerror(e.errno)}") from None
            ino = node.ino
            norm = join(norm, os.fsencode(part))
        try:
            data, _ = await s.zk.get(s.paths.inode(ino))
        except NoNodeError:
            raise UsageError(f"{path}: no such file or directory") from None
        s.report.path = norm
        return ino, norm, decode_inode(data)

    async def walk(self, start: tuple[int, str, InodeRecord], quiet: bool = False) -> None:
        """Walk the tree under `start` with WORKERS tasks."""
        s = self.s
        ino, path, rec = start
        try:
            _, st = await s.zk.get(s.paths.inode(ino))
        except NoNodeError:
            return
        s.reached.add(ino)
        if not rec.is_dir:
            f = FileInfo(path, ino, rec)
            self.count_file(f)
            if rec.is_reg:
                f.groups = await s.children(s.paths.block_map(ino)) or []
                await self.blocks.check_files([f])
            return
        self.names.dirs_seen.add(ino)
        s.report.total_dirs += 1
        if ino == ROOT_INO and not quiet:
            await self.names.check_root(rec, st)
        self._queue.append(("dir", DirWalk(ino, path, rec.nlink, quiet=quiet)))
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                if self._busy == 0:
                    self._poke()
                    return
                await self._changed.wait()
            item = self._queue.pop()
            self._busy += 1
            try:
                if item[0] == "dir":
                    await self.walk_dir(item[1])
                else:
                    await self.walk_chunk(item[1], item[2])
            finally:
                self._busy -= 1
                self._poke()
            self.s.progress.tick()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _push(self, item: tuple) -> None:
        self._queue.append(item)
        self._poke()

    async def walk_dir(self, d: DirWalk) -> None:
        names = await self.s.children(self.s.paths.dir(d.ino))
        if names is None:
            if not d.quiet:
                await self.names.check_dir_listing(d)
            return
        if not names:
            await self.names.check_dir_nlink(d)
            return
        chunks = [names[i:i + CHUNK] for i in range(0, len(names), CHUNK)]
        d.pending = len(chunks)
        for c in reversed(chunks):
            self._push(("chunk", d, c))

    async def walk_chunk(self, d: DirWalk, names: list[str]) -> None:
        s = self.s
        dirents = await s.zk.get_many([s.paths.dirent_named(d.ino, n) for n in names])
        todo: list[tuple[str, DirEntry, Read, Read]] = []
        repeats: list[tuple[str, DirEntry]] = []
        reads = Reads()
        for name, got in zip(names, dirents):
            if got is None:
                continue  # removed while we listed
            ent = decode_dirent(got[0])
            if ent.ino in s.reached:
                repeats.append((name, ent))
                continue
            s.reached.add(ent.ino)
            inode = reads.get(s.paths.inode(ent.ino))
            extra = (reads.children(s.paths.block_map(ent.ino)) if not stat.S_ISDIR(ent.mode)
                     else reads.get(s.paths.dir(ent.ino)))
            todo.append((name, ent, inode, extra))
        got = await reads.run(s.zk)
        files: list[FileInfo] = []
        for name, ent, inode, extra in todo:
            path = join(d.path, unescape(name))
            item = got[inode]
            if item is None:
                s.reached.discard(ent.ino)
                if not d.quiet:
                    await self.names.check_dangling_dirent(d, name, ent, path)
                continue
            rec = decode_inode(item[0])
            if stat.S_IFMT(rec.mode) != stat.S_IFMT(ent.mode) and not d.quiet:
                await self.names.check_dirent_type(d, name, ent, rec, path)
            if rec.is_dir:
                d.subdirs += 1
                s.report.total_dirs += 1
                self.names.saw_dir(d, name, ent.ino, rec, path)
                self._push(("dir", DirWalk(ent.ino, path, rec.nlink, quiet=d.quiet)))
                continue
            f = FileInfo(path, ent.ino, rec, d.ino, unescape(name))
            self.count_file(f)
            self.names.saw_file(ent.ino, rec, path)
            if rec.is_reg:
                groups = got[extra]
                if stat.S_ISDIR(ent.mode):  # the entry lied about the type: read the map now
                    groups = await s.children(s.paths.block_map(ent.ino))
                f.groups = groups or []
                files.append(f)
        for name, ent in repeats:
            self.names.saw_again(d, name, ent)
        if files:
            await self.blocks.check_files(files)
        d.pending -= 1
        if d.pending == 0:
            await self.names.check_dir_nlink(d)

    def count_file(self, f: FileInfo) -> None:
        r = self.s.report
        if f.rec.is_link:
            r.total_symlinks += 1
        else:
            r.total_files += 1
            r.total_size += f.rec.size if f.rec.is_reg else 0
