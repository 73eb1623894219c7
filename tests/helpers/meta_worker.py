"""A client that changes the namespace at random until it is killed (tests/test_meta_crash.py).

    python tests/helpers/meta_worker.py ZK_HOSTS FS_ROOT SEED COMMITTED_LOG

Runs a few concurrent tasks doing mkdir/create/link/unlink/rename (across
directories, over existing targets, with flags)/rmdir/setxattr/commit_blocks/
release_orphan through `Meta` on a small tree, so that operations collide and
replace each other. The id of every block whose commit returned is appended to
COMMITTED_LOG (one per line, flushed), so the checker can tell that no dropped
block went missing from gc/. Expected POSIX errors are ignored; anything else
ends the worker with a traceback and a non-zero exit, which the test reports.
"""

import random
import sys
import uuid
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dfs.errors import DfsError  # noqa: E402
from dfs.meta import RENAME_EXCHANGE, RENAME_NOREPLACE, Meta  # noqa: E402
from dfs.mkfs import load_config  # noqa: E402
from dfs.paths import ROOT_INO, FsPaths  # noqa: E402
from dfs.records import BlockRef  # noqa: E402
from dfs.zk import connect  # noqa: E402

NAMES = [f"n{i}".encode() for i in range(8)]
TASKS = 4


class Worker:
    def __init__(self, meta: Meta, rng: random.Random, log):
        self.meta = meta
        self.rng = rng
        self.log = log
        self.dirs: set[int] = {ROOT_INO}
        self.orphans: set[int] = set()

    async def discover(self) -> None:
        """Find the directories left by earlier (killed) workers."""
        todo = [ROOT_INO]
        while todo:
            d = todo.pop()
            try:
                entries = await self.meta.readdir(d)
            except DfsError:
                continue
            for _, ent, _ in entries:
                if ent.mode == 0o040000:
                    self.dirs.add(ent.ino)
                    todo.append(ent.ino)

    def some_dir(self) -> int:
        return self.rng.choice(sorted(self.dirs))

    async def some_file(self) -> int | None:
        d = self.some_dir()
        entries = await self.meta.readdir(d)
        files = [e.ino for _, e, _ in entries if e.mode != 0o040000]
        return self.rng.choice(files) if files else None

    def new_ref(self, index: int) -> BlockRef:
        return BlockRef(uuid.uuid4().hex, self.rng.randint(1, 4096), "0" * 16,
                        [f"node{self.rng.randint(1, 5)}"])

    async def one(self) -> None:
        m, rng = self.meta, self.rng
        op = rng.choices(
            ["mkdir", "create", "link", "unlink", "rename", "rmdir", "setxattr", "blocks", "release"],
            weights=[2, 6, 2, 4, 6, 2, 2, 5, 1])[0]
        name = rng.choice(NAMES)
        if op == "mkdir":
            node = await m.mkdir(self.some_dir(), name, 0o755, uid=0, gid=0)
            self.dirs.add(node.ino)
        elif op == "create":
            await m.create(self.some_dir(), name, 0o644, uid=0, gid=0)
        elif op == "link":
            ino = await self.some_file()
            if ino is not None:
                await m.namespace.link(ino, self.some_dir(), name)
        elif op == "unlink":
            ino = await m.unlink(self.some_dir(), name)
            if m.namespace.is_open(ino):
                self.orphans.add(ino)
        elif op == "rename":
            flags = rng.choice([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
            await m.namespace.rename(self.some_dir(), name, self.some_dir(), rng.choice(NAMES), flags)
        elif op == "rmdir":
            ino = await m.rmdir(self.some_dir(), name)
            self.dirs.discard(ino)
        elif op == "setxattr":
            ino = await self.some_file() if rng.random() < 0.7 else self.some_dir()
            if ino is not None:
                await m.xattrs.set(ino, rng.choice([b"user.a", b"user.b"]), rng.randbytes(8))
        elif op == "blocks":
            ino = await self.some_file()
            if ino is None:
                return
            if not (await m.inodes.getattr(ino)).rec.is_reg:
                return
            updates = {i: self.new_ref(i) for i in rng.sample(range(12), rng.randint(1, 4))}
            if rng.random() < 0.2:
                updates[rng.randrange(12)] = None  # punch a hole
            truncate = rng.randrange(12) if rng.random() < 0.3 else None
            await m.blockmap.commit_blocks(ino, updates, truncate_from=truncate, mtime_ns=rng.randint(1, 10**18))
            for ref in updates.values():
                if ref is not None:
                    self.log.write(ref.id + "\n")
            self.log.flush()
        elif op == "release" and self.orphans:
            ino = rng.choice(sorted(self.orphans))
            self.orphans.discard(ino)
            await m.namespace.release_orphan(ino)

    async def task(self) -> None:
        while True:
            try:
                await self.one()
            except DfsError as e:
                if e.errno in (2, 17, 39, 22, 21, 20, 1, 61):  # ENOENT EEXIST ENOTEMPTY EINVAL EISDIR ENOTDIR EPERM ENODATA
                    continue
                raise


async def main(hosts: str, root: str, seed: int, log_path: str) -> None:
    zk = await connect(hosts)
    paths = FsPaths(root)
    config = await load_config(zk, paths)
    rng = random.Random(seed)
    meta = Meta(zk, paths, config, is_open=lambda ino: ino % 5 == 0)
    with open(log_path, "a") as log:
        w = Worker(meta, rng, log)
        await w.discover()
        print("ready", flush=True)
        async with trio.open_nursery() as nursery:
            for _ in range(TASKS):
                nursery.start_soon(w.task)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
