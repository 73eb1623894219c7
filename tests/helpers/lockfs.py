"""A one-file pyfuse3 filesystem whose lock handlers answer by rule (tests/test_fuseops.py).

    python tests/helpers/lockfs.py MOUNTPOINT CALL_LOG

It proves that the getlk/setlk/flock handlers of tools/pyfuse3/handlers.patch
are reached when a filesystem overrides them, and that flush then gets the lock owner. Every call is
appended to CALL_LOG as a JSON line. `/f` is the file; the rules:
- getlk: a write lock of this process over [10, 30) always conflicts;
- setlk: a write lock without waiting (F_SETLK) gets EAGAIN, anything else succeeds;
- flock: LOCK_EX|LOCK_NB gets EWOULDBLOCK, anything else succeeds.
Runs until unmounted.
"""

import errno
import fcntl
import json
import os
import stat
import sys

import pyfuse3
import trio

FILE_INO = pyfuse3.ROOT_INODE + 1


class LockFs(pyfuse3.Operations):
    def __init__(self, log_path: str):
        super().__init__()
        self.log_path = log_path

    def record(self, **call) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(call) + "\n")

    async def getattr(self, inode, ctx=None):
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = (stat.S_IFDIR | 0o755) if inode == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o644)
        a.st_nlink = 1
        return a

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILE_INO)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    async def flush(self, fh, lock_owner=None):
        self.record(op="flush", owner=lock_owner)

    async def release(self, fh):
        pass

    async def getlk(self, fh, owner, lock_type, start, length, ctx):
        self.record(op="getlk", owner=owner, type=lock_type, start=start, length=length, pid=ctx.pid)
        return fcntl.F_WRLCK, 10, 20, os.getpid()

    async def setlk(self, fh, owner, lock_type, start, length, sleep, ctx):
        self.record(op="setlk", owner=owner, type=lock_type, start=start, length=length, sleep=sleep)
        if lock_type == fcntl.F_WRLCK and not sleep:
            raise pyfuse3.FUSEError(errno.EAGAIN)

    async def flock(self, fh, owner, op, ctx):
        self.record(op="flock", owner=owner, flock=op)
        if op == fcntl.LOCK_EX | fcntl.LOCK_NB:
            raise pyfuse3.FUSEError(errno.EWOULDBLOCK)


def main(mountpoint: str, log_path: str) -> None:
    pyfuse3.init(LockFs(log_path), mountpoint, set(pyfuse3.default_options) | {"fsname=lockfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
