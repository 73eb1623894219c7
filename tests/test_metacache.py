"""The change feed and the client view it keeps exact: exact by its rules (pure logic), and coherent across mounts."""

import errno
import os
import shutil
import stat
import subprocess
import threading
import time

import pytest
import trio

from dfs.client.attrs import AttrJournal
from dfs.client.creates import Creates, PendingCreate
from dfs.client.feed import CHANGED, CREATED, DELETED
from dfs.client.files import FileData
from dfs.client.view import ClientView
from dfs.config import FsConfig
from dfs.errors import DfsError, ZkUnavailable
from dfs.meta.inodes import Inode
from dfs.names import escape
from dfs.paths import ROOT_INO, FsPaths
from dfs.records import InodeRecord
from tests.harness import Cluster, client_session
from tools.local.zkserver import ZkEnsemble

ROOT = "/dfs/t"


class Recorder(ClientView):
    """A client view (no ZooKeeper needed for the feed's logic) that records what it drops."""

    def __init__(self, invalidated):
        super().__init__(None, FsPaths(ROOT), FsConfig())  # type: ignore[arg-type]
        self.invalidated = invalidated

    def forget_inode(self, ino, foreign):
        if self.invalidated is not None:
            self.invalidated.append(("inode", ino))
        super().forget_inode(ino, foreign)

    def feed_lost(self):
        if self.invalidated is not None:
            self.invalidated.append(("all", 0))
        super().feed_lost()


def fed(invalidated=None):
    """(the feed, the view it keeps), the feed on."""
    view = Recorder(invalidated)
    c = view.feed
    c.active = True
    c.epoch = 1
    return c, view


def dirent(d: int, name: bytes) -> str:
    return f"{ROOT}/dirs/{d}/{escape(name)}"


# ---------------------------------------------------------------- pure logic

def test_new_directory_names_follow_the_feed():
    c, view = fed()
    c._event(CREATED, f"{ROOT}/dirs/7")
    assert view.names[7] == set()
    c._event(CREATED, dirent(7, b"a"))
    c._event(CREATED, dirent(7, b"b"))
    c._event(DELETED, dirent(7, b"a"))
    assert view.names[7] == {b"b"}
    c._event(DELETED, f"{ROOT}/dirs/7")
    assert 7 not in view.names


def test_listing_is_brought_up_to_date_by_replaying_events_since_its_mark():
    c, view = fed()
    mark = c.mark()
    # while the listing read was in flight: x removed, y created, z created then removed
    c._event(DELETED, dirent(3, b"x"))
    c._event(CREATED, dirent(3, b"y"))
    c._event(CREATED, dirent(3, b"z"))
    c._event(DELETED, dirent(3, b"z"))
    # the read may or may not have seen them
    assert c.replay_names(mark, 3, [b"x", b"w"]) == {b"w", b"y"}


def test_nothing_is_installed_across_a_feed_loss():
    inv = []
    c, view = fed(inv)
    mark = c.mark()
    c._event(None, None)  # the connection dropped
    assert not c.active and ("all", 0) in inv
    assert c.replay_names(mark, 3, [b"a"]) is None
    assert 3 not in view.names
    assert not c.clean(mark, dirent(3, b"a"))
    c.active, c.epoch = True, c.epoch + 1
    assert not c.clean(mark, dirent(3, b"a"))  # an old mark stays unusable


def test_feed_loss_forgets_what_it_made_exact():
    c, view = fed()
    view.remember(Inode(5, InodeRecord(mode=0o100644), 3, exact=True))
    view.trust(1, b"f", 5, 0o100000)
    c._event(CREATED, f"{ROOT}/dirs/1")
    assert view.known(5).exact and view.names[1] == set()
    c._event(None, None)
    assert view.known(5) is None and view.dirents == {} and view.names == {}


def test_clean_tells_whether_a_read_raced_with_a_change():
    c, _ = fed()
    mark = c.mark()
    c._event(CHANGED, f"{ROOT}/inodes/0/5")
    assert c.clean(mark, f"{ROOT}/inodes/0/6")
    assert not c.clean(mark, f"{ROOT}/inodes/0/5")


def test_own_transaction_is_exact_unless_someone_else_wrote_the_same_path():
    inv = []
    c, _ = fed(inv)
    paths = [f"{ROOT}/inodes/0/5", dirent(1, b"f"), f"{ROOT}/dirs/1"]
    mark = c.begin(paths)
    for p, kind in zip(paths, (CREATED, CREATED, CHANGED)):
        c._event(kind, p)  # our own events: nothing dropped while in flight
    assert inv == []
    assert c.settle(mark, paths, applied=True)
    # written by us: the caller installs them again (the dir's times are kept in place)
    assert ("inode", 5) in inv and ("inode", 1) not in inv

    inv.clear()
    mark = c.begin(paths)
    c._event(CHANGED, f"{ROOT}/dirs/1")  # someone else's change of the directory's times...
    c._event(CHANGED, f"{ROOT}/dirs/1")  # ...and ours
    assert not c.settle(mark, paths, applied=True)
    assert ("inode", 1) in inv


def test_failed_transaction_invalidates_what_it_meant_to_write():
    inv = []
    c, _ = fed(inv)
    paths = [f"{ROOT}/dirs/1"]
    mark = c.begin(paths)
    assert not c.settle(mark, paths, applied=False)
    assert ("inode", 1) in inv and not c.own


def test_event_log_overflow_is_treated_as_a_change():
    c, _ = fed()
    mark = c.mark()
    for i in range(20000):
        c._event(CHANGED, f"{ROOT}/inodes/0/{i}")
    assert not c.clean(mark, f"{ROOT}/inodes/0/999999")


def test_a_full_view_drops_what_it_learnt_longest_ago_not_a_listing_just_read(monkeypatch):
    # ls -l of a big directory right after many creates: the listing's inodes must stay
    # known (each unknown one costs ls two ZooKeeper reads: attributes and xattrs)
    import dfs.client.view as view_module
    monkeypatch.setattr(view_module, "HINTS_MAX", 1000)
    _, view = fed()

    def node(ino):
        return Inode(ino, InodeRecord(mode=stat.S_IFREG | 0o644, nlink=1), 1, exact=True)

    for ino in range(10, 910):  # the creates before
        view.remember(node(ino))
    view.remember(node(10))  # used again: now among the newest
    listing = range(10_000, 10_600)
    for ino in listing:
        view.remember(node(ino))
    assert all(view.known(ino) is not None for ino in listing)
    assert view.known(10) is not None and view.known(11) is None
    assert len(view._fresh) <= 1000 and set(view._vmax) == set(view._fresh)

    # a listing open now, bigger than the bound: ls -l walks it from the start while
    # the inodes it reads meanwhile are remembered; none of the listing is dropped
    big = range(20_000, 22_500)
    view.pin(list(big))
    for ino in big:
        view.remember(node(ino))
    for ino in range(30_000, 31_000):  # what else it learns meanwhile
        view.remember(node(ino))
    assert all(view.known(ino) is not None for ino in big)
    assert len(view._fresh) <= 1000 + len(big)
    view.unpin(list(big))  # closed: the bound applies to it again
    assert not view._pinned
    for ino in range(40_000, 41_000):
        view.remember(node(ino))
    assert len(view._fresh) <= 1000 and view.known(20_000) is None


def test_a_full_kernel_map_is_not_purged_at_every_entry_of_a_big_listing(monkeypatch):
    # readdirplus of a big directory hands the kernel 2 long-lived grants per entry; once
    # the map of them was full (and none expired yet) every further entry rebuilt it whole:
    # ls -l of 100,000 entries took minutes and the ZooKeeper session expired meanwhile
    from types import SimpleNamespace

    import mount.kernel as kernel_module
    monkeypatch.setattr(kernel_module, "LONG_MAX", 1000)
    _, view = fed()
    files = SimpleNamespace(on_merged=None, local_attrs=lambda ino: None,
                            local_stored=lambda ino: None, blocks_of=lambda n: 0)
    kernel = kernel_module.Kernel(view, files, feed_timeout=10.0)
    rebuilt, last = 0, kernel._long
    for ino in range(100, 5100):
        node = view.remember(Inode(ino, InodeRecord(mode=stat.S_IFREG | 0o644, nlink=1), 1,
                                   exact=True))
        view.trust(ROOT_INO, b"f%d" % ino, ino, stat.S_IFREG)
        a = kernel.attrs(node, parent=ROOT_INO, name=b"f%d" % ino)
        if kernel._long is not last:
            rebuilt, last = rebuilt + 1, kernel._long
    assert rebuilt <= 2, f"the full map was rebuilt {rebuilt} times in one listing"
    assert len(kernel._long) <= 1000 + 2
    assert a.attr_timeout == 1.0  # full: the rest get the short timeout, nothing is lost


# ---------------------------------------------------------------- on real mounts

def wait_for(fn, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fn()
            if got:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            return fn()
        time.sleep(0.05)


async def test_a_failed_chmod_is_reported_by_the_files_next_close_not_taken_by_a_release():
    """A chmod acknowledged at once whose background commit failed (ZooKeeper away):
    the kernel's RELEASE of another handle (whose error nobody sees) must not take the
    report from the close or fsync that follows; that one gets EIO, once; with the
    file's last handle gone there is no one left to tell."""
    _, view = fed()
    mode = stat.S_IFREG | 0o644
    view.remember(Inode(7, InodeRecord(mode=mode, nlink=1), 1), exact=True)

    async def unreachable(*args, **kwargs):
        raise ZkUnavailable("ZooKeeper operation failed: ConnectionLoss('not connected')")

    view.setattr_many = unreachable
    view.setattr = unreachable
    journal = AttrJournal(view)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        assert journal.queue(7, {"mode": 0o600}) is not None  # acknowledged at once
        with pytest.raises(DfsError):
            await journal.drain(7, report=False)  # a late RELEASE
        with pytest.raises(DfsError) as e:
            await journal.drain(7)  # the close or fsync: told
        assert e.value.errno == errno.EIO
        await journal.drain(7)  # once
        assert journal.queue(7, {"mode": 0o600}) is not None
        with pytest.raises(DfsError):
            await journal.drain(7, report=False)
        journal.forget_failure(7)  # the last handle went
        await journal.drain(7)
        assert journal.take_failures() == 2  # (and the next fsyncdir says so)
        nursery.cancel_scope.cancel()


def test_changes_on_one_mount_reach_the_others_cache(cluster):
    a = cluster.mount("a")
    b = cluster.mount("b")
    (a / "d").mkdir()
    (a / "d" / "f").write_bytes(b"one")
    # a knows d and f exactly now (it made them) and answers from its cache
    assert sorted(os.listdir(a / "d")) == ["f"]
    assert stat.S_IMODE(os.stat(a / "d" / "f").st_mode) == 0o644

    os.chmod(b / "d" / "f", 0o600)
    assert wait_for(lambda: stat.S_IMODE(os.stat(a / "d" / "f").st_mode) == 0o600)
    (b / "d" / "new").write_bytes(b"two")
    os.rename(b / "d" / "f", b / "d" / "g")
    (b / "d" / "sub").mkdir()
    # a: after its kernel's 1 s caches expire, the cache must not answer old facts
    assert wait_for(lambda: sorted(os.listdir(a / "d")) == ["g", "new", "sub"]), os.listdir(a / "d")
    assert wait_for(lambda: stat.S_IMODE(os.stat(a / "d" / "g").st_mode) == 0o600)
    assert wait_for(lambda: not os.path.exists(a / "d" / "f"))
    assert (a / "d" / "new").read_bytes() == b"two"
    assert os.stat(a / "d").st_nlink == 3

    # and the other way round, for a file a has cached attributes of
    (a / "d" / "g").write_bytes(b"three!")
    assert wait_for(lambda: os.stat(b / "d" / "g").st_size == 6)
    shutil.rmtree(b / "d" / "sub")
    assert wait_for(lambda: os.stat(a / "d").st_nlink == 2)


def test_cache_survives_a_zookeeper_restart(tmp_path):
    ens = ZkEnsemble(tmp_path / "zk", servers=1)
    ens.start()
    c = None
    try:
        c = Cluster(ens.hosts, tmp_path / "c")
        (tmp_path / "c").mkdir()
        c.mkfs()
        for _ in range(3):
            c.add_node()
        a = c.mount("a")
        b = c.mount("b")
        (a / "d").mkdir()
        (a / "d" / "f").write_bytes(b"x")
        assert os.listdir(a / "d") == ["f"]
        ens.stop_server(0)
        time.sleep(1.0)
        ens.start_server(0)
        # a's feed was lost with its connection: what b changes now must show on a
        (b / "d" / "late").write_bytes(b"late")
        os.unlink(b / "d" / "f")
        assert wait_for(lambda: sorted(os.listdir(a / "d")) == ["late"], timeout=20), os.listdir(a / "d")
        assert (a / "d" / "late").read_bytes() == b"late"
    finally:
        if c is not None:
            c.close()
        ens.stop()




def test_failed_asynchronous_create_is_reported_by_the_files_close(cluster):
    """An asynchronous create of a name someone else took meanwhile: the first flush says so."""

    async def go(zk, view, blocks, nursery):
        taken = await view.meta.create(ROOT_INO, b"taken", 0o644, uid=0, gid=0)
        fd = FileData(view, blocks, nursery)
        failed = []
        node, pending = await Creates(view, nursery).create(ROOT_INO, b"taken", 0o644, uid=0, gid=0,
                                                            on_failed=failed.append)
        await fd.open(node.ino, node, created=True, pending=pending)
        await fd.write(node.ino, 0, b"lost?")
        try:
            await fd.release(node.ino)
            error = None
        except DfsError as e:
            error = e
        # the name still names the other file, untouched
        still = await view.lookup(ROOT_INO, b"taken")
        return error, failed, still.ino == taken.ino and still.rec.size == 0

    error, failed, untouched = client_session(cluster, go, cache=True)
    assert error is not None and "create failed" in error.message
    assert failed and failed[0].errno == errno.EEXIST
    assert untouched


def test_close_of_an_empty_file_waits_for_its_create(cluster):
    """close() of a file with nothing to write (touch) never returns before the file's
    asynchronous create has landed, and reports a create that failed: a close that
    returned means the file exists (issue 17: empty files were lost with ZooKeeper)."""

    async def go(zk, view, blocks, nursery):
        fd = FileData(view, blocks, nursery)
        node = await view.meta.create(ROOT_INO, b"slow", 0o644, uid=0, gid=0)
        pending = PendingCreate()  # a create still on the wire: neither landed nor failed
        await fd.open(node.ino, node, created=True, pending=pending)
        outcome = []

        async def close() -> None:
            try:
                await fd.release(node.ino)
                outcome.append("returned")
            except DfsError as e:
                outcome.append(e)

        nursery.start_soon(close)
        await trio.sleep(0.3)
        before = list(outcome)  # nothing yet: the create has not answered
        pending.error = DfsError(errno.EHOSTUNREACH, "ZooKeeper went away")
        pending.done.set()
        await trio.sleep(0.3)
        return before, outcome

    before, outcome = client_session(cluster, go, cache=True)
    assert before == []
    assert len(outcome) == 1 and isinstance(outcome[0], DfsError)
    assert "create failed" in outcome[0].message


def test_exclusive_create_is_synchronous(cluster):
    a = cluster.mount("a")
    b = cluster.mount("b")
    for i in range(5):
        lock = f"lock{i}"
        assert not os.path.exists(a / lock)  # a's kernel now holds a negative entry for it
        os.close(os.open(b / lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        # a's kernel sends the create (its negative entry is < 1 s old): only ZooKeeper can say
        try:
            fd = os.open(a / lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        try:
            os.close(fd)
        except OSError:
            pass
        pytest.fail("an exclusive create of an existing name succeeded")


def test_close_during_the_unlink_that_holds_the_file_leaves_no_holder(cluster):
    """rm of a file whose last close arrives while the unlink is committing (FUSE sends
    release after close() returned, so `rm` right after close does this): the inode
    and its blocks go once both are done, not when the mount's session ends."""

    async def go(zk, view, blocks, nursery):
        fd = FileData(view, blocks, nursery)
        node = await view.meta.create(ROOT_INO, b"racy", 0o644, uid=0, gid=0)
        await fd.open(node.ino, node)
        await fd.write(node.ino, 0, b"x" * 1000)
        await fd.flush(node.ino)
        real_commit = zk.commit

        async def commit_after_the_close(txn):
            zk.commit = real_commit
            await fd.release(node.ino)  # the last handle goes while the unlink is on its way
            return await real_commit(txn)

        zk.commit = commit_after_the_close
        await view.unlink(ROOT_INO, b"racy")
        return (await zk.get_children(cluster.paths.open),
                await zk.exists(cluster.paths.inode(node.ino)) is not None)

    holders, inode_left = client_session(cluster, go)
    assert holders == [] and not inode_left


def readline_within(stream, seconds: float) -> str | None:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    return got[0] if got else None


def test_a_file_open_on_one_mount_follows_the_other_mounts_commits(cluster):
    """tail -f on mount b of a file that mount a appends to and closes: every line shows up
    (within the feed's latency plus tail's own 1 s poll); stat by path and fstat on b's
    open descriptor follow the size too."""
    a = cluster.mount("a")
    b = cluster.mount("b")
    (a / "log").write_text("line 0\n")
    held = open(b / "log", "rb")  # b holds it open throughout
    tail = subprocess.Popen(["tail", "-n", "+1", "-f", str(b / "log")], stdout=subprocess.PIPE, text=True)
    try:
        lines = [tail.stdout.readline()]
        for i in range(1, 6):
            with open(a / "log", "a") as f:
                f.write(f"line {i}\n")
            # the feed takes milliseconds; tail polls each second
            lines.append(readline_within(tail.stdout, 10))
            assert lines[-1] is not None, f"line {i} never reached tail -f on the other mount"
            size = len("".join(lines))
            assert os.stat(b / "log").st_size == size
            assert os.fstat(held.fileno()).st_size == size
        assert lines == [f"line {i}\n" for i in range(6)]
        assert held.read() == "".join(lines).encode()
    finally:
        tail.kill()
        tail.wait()
        held.close()


def test_open_sees_another_clients_commit_while_the_file_is_held_open_here(cluster):
    """Close-to-open with a descriptor already open on the reading mount: a new open
    after another client's commit sees it, without waiting for the change feed (not
    running here)."""

    async def go(zk, view, blocks, nursery):
        reader = FileData(view, blocks, nursery)
        writer = FileData(ClientView(zk, cluster.paths, view.config), blocks, nursery)
        node = await view.meta.create(ROOT_INO, b"f", 0o644, uid=0, gid=0)
        held, _ = await reader.open(node.ino)  # and kept open throughout
        seen = []
        for i in range(1, 4):
            await writer.open(node.ino)
            await writer.write(node.ino, 0, f"v{i}".encode() * (1000 + i))
            await writer.release(node.ino)
            f, keep = await reader.open(node.ino)
            seen.append((keep, await reader.read(node.ino, 0, 1 << 20)))
            await reader.release(node.ino)
        return seen

    seen = client_session(cluster, go)
    assert seen == [(False, f"v{i}".encode() * (1000 + i)) for i in range(1, 4)]


def test_unlinked_open_file_is_held_again_on_a_new_session(cluster):
    """An unlinked file still open here is held by an ephemeral znode; when the session
    that made it expires, the client holds it again once its feed is back (else the
    repair leader would release the inode and its blocks under the open file)."""

    async def go(zk, view, blocks, nursery):
        fd = FileData(view, blocks, nursery)
        node = await view.meta.create(ROOT_INO, b"tmp", 0o644, uid=0, gid=0)
        await fd.open(node.ino)
        await fd.write(node.ino, 0, b"still needed")
        await fd.flush(node.ino)
        await view.unlink(ROOT_INO, b"tmp")
        holder = cluster.paths.open_holder(node.ino, view.meta.namespace.mount_id)
        held_first = await zk.exists(holder) is not None
        await zk.delete(holder)  # what the expiry of the session does
        await view.feed_on()  # what the feed does on the new session
        held_again = await zk.exists(holder) is not None
        data = await fd.read(node.ino, 0, 100)
        await fd.release(node.ino)  # the last close lets it go
        return held_first, held_again, data, await zk.exists(cluster.paths.inode(node.ino))

    held_first, held_again, data, left = client_session(cluster, go)
    assert held_first and held_again and data == b"still needed" and left is None
