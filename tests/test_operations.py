"""The FUSE layer in process: `mount.operations.Operations` driven directly, no kernel.

The model is S3QL's tests/t3_fs_api.py: each test calls the handlers the kernel
would call, with a fake request context, against the session's ZooKeeper and
real storage nodes, checks what a user would notice (content, errno, listing),
and ends with `dfs fsck` finding the filesystem HEALTHY. Both ways a mount
runs are covered: asynchronous creates and removals (the default) and
`-o sync_dirops`.
"""

import errno
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest
import trio

from dfs.client.attrs import AttrJournal
from dfs.client.creates import Creates
from dfs.client.files import FileData
from dfs.client.leases import DirLeases
from dfs.client.locks import MountLocks
from dfs.client.removals import Removals
from dfs.meta.locks import LockTable
from mount.kernel import Kernel
from mount.operations import Operations
from tests.harness import client_session

REPO = Path(__file__).resolve().parent.parent
ROOT = pyfuse3.ROOT_INODE


@dataclass
class Ctx:
    """What pyfuse3's RequestContext tells a handler about the caller."""

    uid: int = os.getuid()
    gid: int = os.getgid()
    pid: int = os.getpid()
    umask: int = 0o022


@dataclass
class Fields:
    """pyfuse3.SetattrFields: which attributes a setattr changes."""

    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


class Notify:
    """The kernel's invalidation calls, recorded (there is no kernel session)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def invalidate_entry_async(self, parent: int, name: bytes, ignore_enoent: bool = False) -> None:
        self.calls.append(("entry", parent, name))

    def invalidate_inode(self, ino: int, attr_only: bool = False) -> None:
        self.calls.append(("inode", ino))


CTX = Ctx()


def fsck(cluster) -> dict:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "fsck", "--zk", cluster.hosts,
                        "--fs", cluster.fsname, "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["status"] == "HEALTHY", report["problems"]
    return report


def run_ops(cluster, body, *, sync_dirops: bool):
    """trio.run body(ops) with an Operations wired as mount/main.py wires it."""

    async def go(zk, view, blocks, nursery):
        files = FileData(view, blocks, nursery)
        creates = None if sync_dirops else Creates(view, nursery)
        removals = None if sync_dirops else Removals(view)
        if removals is not None:
            nursery.start_soon(removals.run)
        journal = None if sync_dirops else AttrJournal(view)
        if journal is not None:
            files.journal = journal
            journal.on_committed = files.saw_own_change
            nursery.start_soon(journal.run)
        leases = None if sync_dirops else DirLeases(view, [creates, removals])
        if leases is not None:
            nursery.start_soon(leases.run)
        kernel = Kernel(view, files, feed_timeout=10.0, notify=Notify(), journal=journal)
        locks = MountLocks(LockTable(zk, view.meta.paths, "ops-test"), files)
        ops = Operations(view, files, kernel, blocks.nodedir, locks, creates=creates, removals=removals,
                         journal=journal, leases=leases)
        try:
            return await body(ops)
        finally:
            with trio.CancelScope(shield=True):
                if journal is not None:
                    await journal.drain()
                await files.flush_all()
                if creates is not None:
                    await creates.drain()
                if removals is not None:
                    await removals.drain()

    return client_session(cluster, go, cache=True)


async def errno_of(call) -> int:
    try:
        await call
    except pyfuse3.FUSEError as e:
        return e.errno
    return 0


async def listing(ops: Operations, ino: int) -> list[bytes]:
    """The names readdir hands the kernel, . and .. included."""
    got: list[bytes] = []

    def reply(token, name, attrs, next_id):
        token.append(name)
        return True

    fh = await ops.opendir(ino, CTX)
    try:
        real, pyfuse3.readdir_reply = pyfuse3.readdir_reply, reply
        try:
            await ops.readdir(fh, 0, got)
        finally:
            pyfuse3.readdir_reply = real
    finally:
        await ops.releasedir(fh)
    return got


async def write_file(ops: Operations, parent: int, name: bytes, data: bytes, flags: int = os.O_WRONLY) -> int:
    fi, attrs = await ops.create(parent, name, 0o644, flags | os.O_CREAT, CTX)
    assert await ops.write(fi.fh, 0, data) == len(data)
    await ops.flush(fi.fh)
    await ops.release(fi.fh)
    return attrs.st_ino


async def read_file(ops: Operations, ino: int) -> bytes:
    fi = await ops.open(ino, os.O_RDONLY, CTX)
    try:
        return await ops.read(fi.fh, 0, 1 << 24)
    finally:
        await ops.release(fi.fh)


async def fsyncdir(ops: Operations, ino: int) -> None:
    fh = await ops.opendir(ino, CTX)
    try:
        await ops.fsyncdir(fh, False)
    finally:
        await ops.releasedir(fh)


@pytest.mark.parametrize("sync_dirops", [False, True], ids=["async-dirops", "sync-dirops"])
def test_a_tree_made_and_changed_through_the_handlers(cluster_factory, sync_dirops):
    c = cluster_factory()
    big = os.urandom(3 * (1 << 20) + 123)  # several 1 MiB blocks and a partial one

    async def body(ops: Operations) -> None:
        d = await ops.mkdir(ROOT, b"d", 0o755, CTX)
        assert stat.S_ISDIR(d.st_mode) and d.st_nlink == 2
        small = await write_file(ops, d.st_ino, b"small", b"hello")
        large = await write_file(ops, d.st_ino, b"large", big)
        assert await read_file(ops, small) == b"hello"
        assert await read_file(ops, large) == big
        assert (await ops.lookup(d.st_ino, b"large", CTX)).st_size == len(big)
        assert (await ops.getattr(ROOT, CTX)).st_nlink == 3

        # rename across directories, over nothing and over an existing file
        e = await ops.mkdir(ROOT, b"e", 0o700, CTX)
        await ops.rename(d.st_ino, b"small", e.st_ino, b"moved", 0, CTX)
        assert (await ops.lookup(d.st_ino, b"small", CTX)).st_ino == 0  # gone (negative entry)
        assert (await ops.lookup(e.st_ino, b"moved", CTX)).st_ino == small
        await write_file(ops, e.st_ino, b"victim", b"to be replaced")
        await ops.rename(e.st_ino, b"moved", e.st_ino, b"victim", 0, CTX)
        assert await read_file(ops, (await ops.lookup(e.st_ino, b"victim", CTX)).st_ino) == b"hello"

        # hard links and symlinks
        linked = await ops.link(large, ROOT, b"large-link", CTX)
        assert linked.st_ino == large and linked.st_nlink == 2
        sym = await ops.symlink(ROOT, b"sym", b"d/large", CTX)
        assert await ops.readlink(sym.st_ino, CTX) == b"d/large"
        await ops.unlink(d.st_ino, b"large", CTX)
        assert (await ops.lookup(ROOT, b"large-link", CTX)).st_nlink == 1
        assert await read_file(ops, large) == big

        # attributes: chmod, truncate, times
        attr = pyfuse3.EntryAttributes()
        attr.st_mode = stat.S_IFREG | 0o600
        attr.st_size = 10
        attr.st_mtime_ns = 1_000_000_000
        got = await ops.setattr(large, attr, Fields(update_mode=True, update_size=True, update_mtime=True),
                                None, CTX)
        assert stat.S_IMODE(got.st_mode) == 0o600 and got.st_size == 10
        assert got.st_mtime_ns == 1_000_000_000
        assert await read_file(ops, large) == big[:10]

        # extended attributes
        assert await ops.listxattr(large, CTX) == []
        assert await errno_of(ops.getxattr(large, b"user.x", CTX)) == pyfuse3.ENOATTR
        await ops.setxattr(large, b"user.x", b"1", CTX)
        await ops.setxattr(large, b"user.y", b"22", CTX)
        assert await ops.getxattr(large, b"user.y", CTX) == b"22"
        assert sorted(await ops.listxattr(large, CTX)) == [b"user.x", b"user.y"]
        await ops.removexattr(large, b"user.x", CTX)
        assert await ops.listxattr(large, CTX) == [b"user.y"]
        assert await errno_of(ops.removexattr(large, b"user.x", CTX)) == pyfuse3.ENOATTR
        assert await errno_of(ops.setxattr(large, b"security.capability", b"x", CTX)) == errno.EOPNOTSUPP

        # listings
        assert await listing(ops, ROOT) == [b".", b"..", b"d", b"e", b"large-link", b"sym"]
        assert await listing(ops, e.st_ino) == [b".", b"..", b"victim"]
        assert await listing(ops, d.st_ino) == [b".", b".."]

        # removals: files and an emptied directory, then an empty one
        await ops.unlink(e.st_ino, b"victim", CTX)
        assert await listing(ops, e.st_ino) == [b".", b".."]
        await ops.rmdir(ROOT, b"e", CTX)
        await ops.rmdir(ROOT, b"d", CTX)
        assert (await ops.lookup(ROOT, b"d", CTX)).st_ino == 0
        await fsyncdir(ops, ROOT)
        assert await listing(ops, ROOT) == [b".", b"..", b"large-link", b"sym"]
        assert (await ops.getattr(ROOT, CTX)).st_nlink == 2
        st = await ops.statfs(CTX)
        assert st.f_blocks > 0 and st.f_namemax == 255

    run_ops(c, body, sync_dirops=sync_dirops)
    report = fsck(c)
    assert report["total_files"] == 1


def test_attributes_set_while_writing_are_committed_with_the_data(cluster_factory):
    """tar, cp -a and rsync set mode, owner and times on every file they write, while
    it is open: the handle shows them at once, they are committed with the file's
    data in its one commit at close, and a write after a utimens moves the mtime on."""
    c = cluster_factory()

    async def body(ops: Operations) -> None:
        t0 = time.time_ns()
        for name, data in ((b"inline", b"x" * 100), (b"blocks", os.urandom((1 << 20) + 5))):
            fi, attrs = await ops.create(ROOT, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CTX)
            ino = attrs.st_ino
            await ops.write(fi.fh, 0, data)
            before = await ops.meta.inodes.getattr(ino)  # as committed in ZooKeeper
            attr = pyfuse3.EntryAttributes()
            attr.st_mode = stat.S_IFREG | 0o640
            attr.st_uid, attr.st_gid = 1234, 4321
            attr.st_atime_ns, attr.st_mtime_ns = 2_000_000_000_000_000_000, 1_000_000_000_000_000_000
            await ops.setattr(ino, attr, Fields(update_uid=True, update_gid=True), fi.fh, CTX)
            await ops.setattr(ino, attr, Fields(update_mode=True), fi.fh, CTX)
            got = await ops.setattr(ino, attr, Fields(update_atime=True, update_mtime=True), fi.fh, CTX)
            for shown in (got, await ops.getattr(ino, CTX)):  # what fstat shows before the close
                assert (shown.st_mode, shown.st_uid, shown.st_gid, shown.st_size) == \
                       (stat.S_IFREG | 0o640, 1234, 4321, len(data))
                assert (shown.st_atime_ns, shown.st_mtime_ns) == (attr.st_atime_ns, attr.st_mtime_ns)
                assert shown.st_ctime_ns >= t0
            assert (await ops.meta.inodes.getattr(ino)).version == before.version
            await ops.flush(fi.fh)
            await ops.release(fi.fh)
            now = await ops.meta.inodes.getattr(ino)
            assert now.version == before.version + 1  # data and attributes: one commit
            r = now.rec
            assert (r.mode, r.uid, r.gid, r.size) == (stat.S_IFREG | 0o640, 1234, 4321, len(data))
            assert (r.atime_ns, r.mtime_ns) == (attr.st_atime_ns, attr.st_mtime_ns) and r.ctime_ns >= t0
            assert await read_file(ops, ino) == data

            # utimens, then a write: the write's time wins (as on any filesystem)
            fi = await ops.open(ino, os.O_WRONLY, CTX)
            await ops.write(fi.fh, 0, b"y")
            await ops.setattr(ino, attr, Fields(update_mtime=True), fi.fh, CTX)
            await ops.write(fi.fh, 1, b"z")
            await ops.release(fi.fh)
            assert (await ops.meta.inodes.getattr(ino)).rec.mtime_ns >= t0

    run_ops(c, body, sync_dirops=False)
    fsck(c)


def test_attribute_changes_of_closed_files_and_directories_commit_in_the_background(cluster_factory):
    """chmod / chown / utimens of what this mount knows exactly show at once and reach
    ZooKeeper by themselves; fsyncdir waits for them, a rename carries the renamed
    file's, and a file opened and written afterwards keeps them and its data."""
    c = cluster_factory()

    async def body(ops: Operations) -> None:
        d = await ops.mkdir(ROOT, b"d", 0o755, CTX)
        files = [await write_file(ops, d.st_ino, b"f%d" % i, b"data %d" % i) for i in range(300)]
        await fsyncdir(ops, ROOT)
        attr = pyfuse3.EntryAttributes()
        attr.st_uid, attr.st_gid = 1234, 4321
        attr.st_atime_ns, attr.st_mtime_ns = 2_000_000_000_000_000_000, 1_000_000_000_000_000_000
        for i, ino in enumerate([d.st_ino] + files):
            attr.st_mode = (stat.S_IFDIR if i == 0 else stat.S_IFREG) | (0o700 if i == 0 else 0o600 + i % 8)
            got = await ops.setattr(ino, attr, Fields(update_mode=True, update_uid=True, update_gid=True,
                                                      update_atime=True, update_mtime=True), None, CTX)
            for shown in (got, await ops.getattr(ino, CTX)):
                assert (stat.S_IMODE(shown.st_mode), shown.st_uid, shown.st_gid, shown.st_mtime_ns) == \
                       (stat.S_IMODE(attr.st_mode), 1234, 4321, attr.st_mtime_ns)
        await fsyncdir(ops, ROOT)
        for i, ino in enumerate([d.st_ino] + files):
            r = (await ops.meta.inodes.getattr(ino)).rec  # as committed
            assert (stat.S_IMODE(r.mode), r.uid, r.gid, r.atime_ns, r.mtime_ns) == \
                   (0o700 if i == 0 else 0o600 + i % 8, 1234, 4321, attr.st_atime_ns, attr.st_mtime_ns)

        # rsync: chmod of its closed temporary file, then the rename into place
        attr.st_mode = stat.S_IFREG | 0o640
        await ops.setattr(files[0], attr, Fields(update_mode=True), None, CTX)
        await ops.rename(d.st_ino, b"f0", ROOT, b"final", 0, CTX)
        assert stat.S_IMODE((await ops.meta.inodes.getattr(files[0])).rec.mode) == 0o640

        # a chmod, then a write: both committed by the close
        attr.st_mode = stat.S_IFREG | 0o604
        await ops.setattr(files[1], attr, Fields(update_mode=True), None, CTX)
        fi = await ops.open(files[1], os.O_WRONLY, CTX)
        await ops.write(fi.fh, 0, b"DATA")
        await ops.release(fi.fh)
        r = (await ops.meta.inodes.getattr(files[1])).rec
        assert stat.S_IMODE(r.mode) == 0o604 and r.mtime_ns > attr.st_mtime_ns
        assert await read_file(ops, files[1]) == b"DATA 1"

    run_ops(c, body, sync_dirops=False)
    fsck(c)


def test_errors_a_program_sees(cluster_factory):
    c = cluster_factory()

    async def body(ops: Operations) -> dict[str, int]:
        d = await ops.mkdir(ROOT, b"d", 0o755, CTX)
        f = await write_file(ops, ROOT, b"f", b"x")
        await write_file(ops, d.st_ino, b"inside", b"y")
        return {
            "exclusive create of an existing name": await errno_of(
                ops.create(ROOT, b"f", 0o644, os.O_CREAT | os.O_EXCL | os.O_WRONLY, CTX)),
            "mkdir over a file": await errno_of(ops.mkdir(ROOT, b"f", 0o755, CTX)),
            "mkdir inside a file": await errno_of(ops.mkdir(f, b"x", 0o755, CTX)),
            "rmdir of a non-empty directory": await errno_of(ops.rmdir(ROOT, b"d", CTX)),
            "rename a directory into itself": await errno_of(
                ops.rename(ROOT, b"d", d.st_ino, b"self", 0, CTX)),
            "rename a file over a directory": await errno_of(ops.rename(ROOT, b"f", ROOT, b"d", 0, CTX)),
            "hard link to a directory": await errno_of(ops.link(d.st_ino, ROOT, b"dl", CTX)),
            "readlink of a file": await errno_of(ops.readlink(f, CTX)),
            "name too long": await errno_of(ops.lookup(ROOT, b"n" * 256, CTX)),
            "getattr of no inode": await errno_of(ops.getattr(999_999, CTX)),
        }

    got = run_ops(c, body, sync_dirops=False)
    assert got == {
        "exclusive create of an existing name": errno.EEXIST,
        "mkdir over a file": errno.EEXIST,
        "mkdir inside a file": errno.ENOTDIR,
        "rmdir of a non-empty directory": errno.ENOTEMPTY,
        "rename a directory into itself": errno.EINVAL,
        "rename a file over a directory": errno.EISDIR,
        "hard link to a directory": errno.EPERM,
        "readlink of a file": errno.EINVAL,
        "name too long": errno.ENAMETOOLONG,
        "getattr of no inode": errno.ENOENT,
    }
    fsck(c)


def test_unlinked_while_open_stays_readable_until_released(cluster_factory):
    c = cluster_factory()

    async def body(ops: Operations) -> tuple[bytes, bytes, list[bytes]]:
        ino = await write_file(ops, ROOT, b"f", b"still here")
        fi = await ops.open(ino, os.O_RDWR, CTX)
        await ops.unlink(ROOT, b"f", CTX)
        await fsyncdir(ops, ROOT)
        before = await ops.read(fi.fh, 0, 100)
        await ops.write(fi.fh, 0, b"STILL")
        await ops.flush(fi.fh)
        after = await ops.read(fi.fh, 0, 100)
        await ops.release(fi.fh)
        return before, after, await listing(ops, ROOT)

    before, after, names = run_ops(c, body, sync_dirops=False)
    assert before == b"still here" and after == b"STILL here" and names == [b".", b".."]
    report = fsck(c)  # released: nothing held, nothing orphaned
    assert report["total_files"] == 0
