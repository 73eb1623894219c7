"""Directory leases (dfs.meta.leases, dfs.client.leases): O_EXCL creates answered by the
mount that holds the directory, and exactly one winner when mounts race for a name.

The in-process tests drive two `mount.operations.Operations` (two ZooKeeper
sessions, two views) against the session's ZooKeeper; the last ones race two
real mounts through the kernel.
"""

import errno
import os
import threading
import time

import pyfuse3
import pytest
import trio

from dfs.client.attrs import AttrJournal
from dfs.client.creates import Creates
from dfs.client.files import FileData
from dfs.client.leases import DirLeases
from dfs.client.locks import MountLocks
from dfs.client.removals import Removals
from dfs.client.view import ClientView
from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.meta.leases import Leases
from dfs.meta.locks import LockTable
from dfs.mkfs import load_config
from dfs.zk import connect
from mount.kernel import Kernel
from mount.operations import Operations
from tests.test_operations import CTX, Notify, fsck

ROOT = pyfuse3.ROOT_INODE
EXCL = os.O_CREAT | os.O_EXCL | os.O_WRONLY


class Client:
    """One mount's Operations, wired as mount/main.py wires them (no kernel)."""

    def __init__(self, zk, view, blocks, nursery, name):
        self.zk, self.view = zk, view
        self.dead = False
        self.files = FileData(view, blocks, nursery)
        self.creates = Creates(view, nursery)
        self.removals = Removals(view)
        nursery.start_soon(self.removals.run)
        self.journal = AttrJournal(view)
        self.files.journal = self.journal
        self.journal.on_committed = self.files.saw_own_change
        nursery.start_soon(self.journal.run)
        self.leases = DirLeases(view, [self.creates, self.removals])
        nursery.start_soon(self.leases.run)
        kernel = Kernel(view, self.files, feed_timeout=10.0, notify=Notify(), journal=self.journal)
        locks = MountLocks(LockTable(zk, view.meta.paths, name), self.files)

        async def settle():
            await self.journal.drain()
            await self.removals.drain()

        locks.settle = settle
        self.ops = Operations(view, self.files, kernel, blocks.nodedir, locks, creates=self.creates,
                              removals=self.removals, journal=self.journal, leases=self.leases)

    async def create(self, parent: int, name: bytes) -> int:
        """O_EXCL create, write, close: 0, or the errno open returned (open succeeding
        is what a program takes as having won the name), or -errno of the close."""
        ops = self.ops
        try:
            fi, attrs = await ops.create(parent, name, 0o644, EXCL, CTX)
        except pyfuse3.FUSEError as e:
            return e.errno
        try:
            await ops.write(fi.fh, 0, name)
            await ops.flush(fi.fh)
        except pyfuse3.FUSEError as e:
            return -(e.errno or errno.EIO)
        finally:
            try:
                await ops.release(fi.fh)
            except pyfuse3.FUSEError:
                pass  # (the kernel drops a release's error)
        return 0

    async def settle(self) -> None:
        with trio.CancelScope(shield=True):
            await self.journal.drain()
            await self.files.flush_all()
            await self.creates.drain()
            await self.removals.drain()


def two_clients(cluster, body):
    """trio.run body(a, b): two clients of `cluster`, each with its own session and feed
    (`kill()`: its tasks stop and its session closes, as when its mount goes away)."""

    async def serve(name, *, task_status=trio.TASK_STATUS_IGNORED):
        zk = await connect(cluster.hosts)
        zk.authenticate(cluster.key, cluster.paths.root)
        blocks = None
        try:
            view = ClientView(zk, cluster.paths, await load_config(zk, cluster.paths), mount_id=name)
            await view.writer.register()
            nodedir = NodeDirectory(zk, cluster.paths)
            await nodedir.refresh()
            blocks = BlockClient(nodedir, key=cluster.key)
            async with trio.open_nursery() as nursery:
                await nursery.start(view.feed.run, zk)
                c = Client(zk, view, blocks, nursery, name)

                async def kill():
                    c.dead = True
                    nursery.cancel_scope.cancel()
                    await zk.close()

                c.kill = kill
                task_status.started(c)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if blocks is not None:
                    await blocks.aclose()
                await zk.close()

    async def go():
        async with trio.open_nursery() as nursery:
            a = await nursery.start(serve, "a")
            b = await nursery.start(serve, "b")
            try:
                out = await body(a, b)
            finally:
                for c in (a, b):
                    if not c.dead:
                        await c.settle()
            nursery.cancel_scope.cancel()
        return out

    return trio.run(go)


async def mkdir(c: Client, parent: int, name: bytes) -> int:
    return (await c.ops.mkdir(parent, name, 0o755, CTX)).st_ino


async def names(c: Client, d: int) -> list[bytes]:
    fh = await c.ops.opendir(d, CTX)
    try:
        return sorted(n for n, _ in c.ops._dirs[fh].entries if n not in (b".", b".."))
    finally:
        await c.ops.releasedir(fh)


def test_a_directory_made_here_is_answered_here_and_a_second_mount_recalls_it(cluster):
    """a makes a directory (it holds its lease from birth) and O_EXCL-creates files in
    it without a synchronous round trip each; b's O_EXCL create of one of those names
    fails with EEXIST (the recall made a commit them first), of a new name succeeds,
    and both mounts list the same names."""

    async def body(a: Client, b: Client):
        d = await mkdir(a, ROOT, b"tree")
        assert a.view.leases.held(d)
        for i in range(20):
            assert await a.create(d, b"f%02d" % i) == 0
        local = a.leases.stats["local_excl"]
        assert await b.create(d, b"f07") == errno.EEXIST
        assert await b.create(d, b"new") == 0
        assert not a.view.leases.held(d)  # let go for b
        # a no longer holds it: its O_EXCL creates ask ZooKeeper, which knows b's name too
        assert await a.create(d, b"f07") == errno.EEXIST
        assert await a.create(d, b"new") == errno.EEXIST
        return local, await names(a, d), await names(b, d), b.view.leases.stats["recalls"]

    local, seen_a, seen_b, recalls = two_clients(cluster, body)
    assert local == 20
    want = sorted([b"f%02d" % i for i in range(20)] + [b"new"])
    assert seen_a == want and seen_b == want
    assert recalls == 1
    fsck(cluster)


def test_a_tree_made_under_leases_is_there_at_once_and_everywhere_after_fsyncdir(cluster):
    """mkdir and O_EXCL creates in directories a holds are answered at once (nested:
    a directory still on its way holds files on their way); a sees the tree at once,
    b after a's fsyncdir, and fsck finds it whole."""

    async def body(a: Client, b: Client):
        top = await mkdir(a, ROOT, b"top")
        made = {}
        for i in range(4):
            d = await mkdir(a, top, b"d%d" % i)
            made[d] = [b"sub"]
            sub = await mkdir(a, d, b"sub")
            made[sub] = []
            for j in range(5):
                assert await a.create(sub, b"f%d" % j) == 0
                made[sub].append(b"f%d" % j)
        here = {d: await names(a, d) for d in made}
        fh = await a.ops.opendir(top, CTX)
        await a.ops.fsyncdir(fh, False)
        await a.ops.releasedir(fh)
        there = {d: await names(b, d) for d in made}
        return a.leases.stats["local_excl"], made, here, there, await names(b, top)

    local, made, here, there, top_names = two_clients(cluster, body)
    assert local == 4 * 2 + 20  # every mkdir below top and every create
    want = {d: sorted(n) for d, n in made.items()}
    assert here == want and there == want
    assert top_names == [b"d0", b"d1", b"d2", b"d3"]
    fsck(cluster)


def test_one_recall_lets_go_of_every_idle_lease(cluster):
    """a made a tree (holding every directory's lease) and stopped using it: b working in
    the whole tree recalls once, not once per directory."""

    async def body(a: Client, b: Client):
        dirs = [await mkdir(a, ROOT, b"s%d" % i) for i in range(6)]
        for d in dirs:
            assert await a.create(d, b"made-by-a") == 0
        assert all(a.view.leases.held(d) for d in dirs)
        await trio.sleep(1.2)  # (dfs.client.leases.IDLE)
        for d in dirs:
            assert await b.create(d, b"made-by-b") == 0
        return b.view.leases.stats["recalls"], [await names(a, d) for d in dirs]

    recalls, seen = two_clients(cluster, body)
    assert recalls == 1
    assert seen == [[b"made-by-a", b"made-by-b"]] * 6


@pytest.mark.parametrize("fenced", [True, False], ids=["leases", "no-fence"])
def test_racing_exclusive_creates_have_exactly_one_winner(cluster, monkeypatch, fenced):
    """b's O_EXCL create of a name goes out first, then a (which holds the directory: a
    new one each round) creates the same name: exactly one of them may succeed. Without the
    fence (the check every change of a leased directory carries) a would answer from
    names that do not have b's yet: two winners, which this test must catch."""
    if not fenced:
        async def no_fence(self, txn):
            return None
        monkeypatch.setattr(Leases, "fence", no_fence)

    async def body(a: Client, b: Client):
        results = []
        for i in range(10):
            d = await mkdir(a, ROOT, b"race%02d" % i)
            await a.create(d, b"seed")  # (a takes the lease if it does not hold it from birth)
            assert a.leases.answers(d)
            name = b"n%02d" % i
            sent = trio.Event()
            real = b.zk.commit

            async def commit_then_tell(txn, real=real, sent=sent):
                b.zk.commit = real
                sent.set()  # b's transaction is about to go out
                return await real(txn)

            b.zk.commit = commit_then_tell
            got = {}

            async def run_b(name=name, got=got):
                got["b"] = await b.create(d, name)

            async def run_a(name=name, got=got, sent=sent):
                await sent.wait()
                got["a"] = await a.create(d, name)

            async with trio.open_nursery() as n:
                n.start_soon(run_b)
                n.start_soon(run_a)
            b.zk.commit = real
            results.append((got["a"], got["b"]))
            await trio.sleep(0.05 if i % 2 else 0)
        return results

    results = two_clients(cluster, body)
    winners = [sum(r <= 0 for r in pair) for pair in results]  # open succeeded
    if fenced:
        assert winners == [1] * len(results), results
        assert all(r in (0, errno.EEXIST) for pair in results for r in pair), results
        fsck(cluster)
    else:
        assert 2 in winners, f"two winners never seen without the fence: {results}"


def test_a_dead_holder_s_lease_is_broken_when_its_session_ends(cluster):
    """a holds a directory and goes away (its session closes, as at unmount or after
    its session expires): b changes the directory without waiting for a recall."""

    async def body(a: Client, b: Client):
        d = await mkdir(a, ROOT, b"orphaned")
        assert await a.create(d, b"x") == 0
        await a.settle()
        await a.kill()  # the writer record goes with the session
        with trio.fail_after(20):  # (a recall of a live holder would wait RECALL_MAX, 30 s)
            rc = await b.create(d, b"y")
        return rc, b.view.leases.stats["breaks"], await names(b, d)

    rc, breaks, seen = two_clients(cluster, body)
    assert rc == 0 and breaks == 1 and seen == [b"x", b"y"]


# ------------------------------------------------------------------ two real mounts


def _race(paths, op):
    """Run op(path) on each path at once (threads, one barrier); the exceptions, in order."""
    barrier = threading.Barrier(len(paths))
    out = [None] * len(paths)

    def one(i, p):
        barrier.wait()
        try:
            op(p)
        except OSError as e:
            out[i] = e

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _await_seen(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_two_real_mounts_racing_for_names_have_exactly_one_winner(cluster):
    """O_EXCL create, mkdir and link of the same name from two mounts at once, many
    times, each time in a new directory one of them made (and holds): one wins, the
    other gets EEXIST, and both see the winner's bytes."""
    a = cluster.mounts[0].mountpoint
    b = cluster.mount("b")
    (a / "arena").mkdir()
    (a / "src").write_bytes(b"linked")
    os.sync()

    def excl(p):
        fd = os.open(p, EXCL)
        try:
            os.write(fd, str(p).encode())
        finally:
            os.close(fd)

    for i in range(40):
        kind = ("create", "mkdir", "link")[i % 3]
        name = f"r{i}/{kind}"
        (a / "arena" / f"r{i}").mkdir()  # (answered by a at once: a holds arena)
        fd = os.open(a / "arena", os.O_RDONLY)
        try:
            os.fsync(fd)  # a's mkdir landed
        finally:
            os.close(fd)
        _await_seen(b / "arena" / f"r{i}")  # (another mount sees it within the feed's latency)
        op = {"create": excl, "mkdir": os.mkdir,
              "link": lambda p: os.link(p.parent.parent.parent / "src", p)}[kind]
        errs = _race([a / "arena" / name, b / "arena" / name], op)
        wins = [e is None for e in errs]
        assert sum(wins) == 1, (name, errs)
        loser = errs[wins.index(False)]
        assert loser.errno == errno.EEXIST, (name, errs)
        if kind == "create":
            winner = (a, b)[wins.index(True)] / "arena" / name
            for m in (a, b):
                assert (m / "arena" / name).read_bytes() == str(winner).encode()
        assert os.listdir(a / "arena" / f"r{i}") == os.listdir(b / "arena" / f"r{i}") == [kind]
    fsck(cluster)
