"""ZooKeeper gone (issue 17): a real single-server ZooKeeper killed under a real mount.

What a user of the mount must see: a close() that returned success means the
file exists with its bytes after ZooKeeper comes back; while ZooKeeper is gone
operations wait `-o zk_wait` seconds and then fail with EIO (never "No route to
host"), logged once per outage; once it is back the mount serves again by
itself, with a new session if the old one expired, without a remount.
"""

import errno
import os
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from dfs.zk import ConnectionLoss, NoNodeError
from dfs.zk.session import WireZk
from tests.harness import Cluster, freeze
from tests.test_operations import CTX, ROOT, errno_of, fsyncdir, run_ops
from tools.local.zkserver import ZkEnsemble

ZK_WAIT = 2.0
WRITERS = 8
OUTAGE_LOG = "unreachable for"  # the mount's once-per-outage line (dfs/zk/session.py)


@pytest.fixture
def outage(tmp_path, request):
    """(ZooKeeper of our own, a cluster on it with 3 nodes); both stopped in the end."""
    ens = ZkEnsemble(tmp_path / "zk", servers=1)
    ens.start()
    c = Cluster(ens.hosts, tmp_path / "c")
    try:
        (tmp_path / "c").mkdir()
        c.mkfs()
        for _ in range(3):
            c.add_node(env={"DFS_NODE_HEARTBEAT": "0.5"})
        yield ens, c
    finally:
        for m in c.mounts:  # a test may leave its mount stopped
            if m.pid is not None:
                try:
                    os.kill(m.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        ens.start_server(0)  # so that the mounts can flush and unmount
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(f"\n==== logs ====\n{c.logs()}\n{ens.log_tail()}")
        c.close()
        ens.stop()


def content(writer: int, n: int) -> bytes:
    """Empty (as `touch`), inline in ZooKeeper (200 B), or in a block on the nodes (9000 B)."""
    size = (0, 200, 9000)[n % 3]
    unit = f"{writer}:{n};".encode()
    return (unit * (size // len(unit) + 1))[:size]


def write_file(path: Path, data: bytes) -> None:
    """open(O_CREAT), write, close: raises OSError if any of them failed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    os.close(fd)


class Writers:
    """WRITERS threads, each creating, writing and closing files in its own directory."""

    def __init__(self, mnt: Path):
        self.mnt = mnt
        self.ok: dict[str, bytes] = {}  # relative path -> bytes: close() returned success
        self.failed: dict[str, int] = {}  # relative path -> errno of what failed
        self.ok_at: list[list[float]] = [[] for _ in range(WRITERS)]  # when each success returned
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(WRITERS)]

    def start(self) -> None:
        for i in range(WRITERS):
            (self.mnt / f"w{i}").mkdir()
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            rel = f"w{i}/f{n}"
            data = content(i, n)
            try:
                write_file(self.mnt / rel, data)
            except OSError as e:
                self.failed[rel] = e.errno
                time.sleep(0.1)  # an outage fails fast: do not spin
            else:
                self.ok[rel] = data
                self.ok_at[i].append(time.monotonic())

    def each_succeeded_since(self, t: float, n: int) -> bool:
        return all(sum(1 for x in at if x > t) >= n for at in self.ok_at)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=ZK_WAIT * 10 + 60)
        assert not any(t.is_alive() for t in self.threads), "a writer hangs in a file operation"


def wait_until(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(0.1)


def test_closed_files_survive_a_zookeeper_kill(outage):
    """SIGKILL the only ZooKeeper server while 8 writers create, write and close small
    files; restart it on the same port and data: every file whose close() returned
    success is there with its bytes, the writers saw errors (EIO) for the rest, and the
    mount serves again without a remount."""
    ens, c = outage
    mnt = c.mount("a", options=[f"zk_wait={ZK_WAIT:g}"])
    writers = Writers(mnt)
    writers.start()
    try:
        wait_until("every writer closed some files", lambda: writers.each_succeeded_since(0, 10), 60)
        ens.kill_server(0)  # SIGKILL by its PID: whatever was in flight is cut off
        time.sleep(ZK_WAIT * 2 + 1)  # longer than the mount waits: operations fail
        ens.start_server(0)
        back = time.monotonic()
        wait_until("every writer closed files again", lambda: writers.each_succeeded_since(back, 5),
                   120)
    finally:
        writers.finish()

    print(f"{len(writers.ok)} files closed with success, {len(writers.failed)} failed")
    assert writers.failed, "the outage produced no error: it did not test anything"
    assert set(writers.failed.values()) == {errno.EIO}, writers.failed
    # What ZooKeeper holds, seen by a mount that never knew the writers' files.
    check = c.mount("b")
    wrong = {}
    for rel, data in writers.ok.items():
        try:
            got = (check / rel).read_bytes()
        except OSError as e:
            got = e
        if got != data:
            wrong[rel] = got if isinstance(got, OSError) else f"{len(got)} bytes, not {len(data)}"
    assert not wrong, f"{len(wrong)} of {len(writers.ok)} files whose close() succeeded: {wrong}"
    for i in range(WRITERS):
        for name in os.listdir(check / f"w{i}"):
            rel = f"w{i}/{name}"
            assert rel in writers.ok or rel in writers.failed, f"{rel} was never written"


def mount_log(c: Cluster) -> str:
    return c.mounts[0].log_path.read_text(errors="replace")


def test_zookeeper_gone_longer_than_zk_wait_gives_eio_then_the_mount_recovers(outage):
    """With ZooKeeper down for longer than zk_wait every operation fails with EIO (not
    EHOSTUNREACH), logged once for the outage; after ZooKeeper is back, even with the
    mount's session expired meanwhile, the same mount serves again by itself."""
    ens, c = outage
    mnt = c.mount("a", options=[f"zk_wait={ZK_WAIT:g}"])
    (mnt / "before").write_bytes(b"written before the outage")
    ens.kill_server(0)
    errors = []
    for op in (lambda: os.mkdir(mnt / "d"),
               lambda: write_file(mnt / "new", b"data"),
               lambda: os.listdir(mnt),
               lambda: os.stat(mnt / "missing")):
        with pytest.raises(OSError) as e:
            op()
        errors.append(e.value.errno)
    assert errors == [errno.EIO] * 4, [errno.errorcode.get(x, x) for x in errors]
    assert mount_log(c).count(OUTAGE_LOG) == 1, mount_log(c)

    # ZooKeeper comes back while the mount cannot reach it (stopped) for longer than
    # its session timeout (10 s): the server expires the session.
    pid = c.mounts[0].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        ens.start_server(0)
        time.sleep(15)
    finally:
        os.kill(pid, signal.SIGCONT)

    def works() -> bool:
        try:
            (mnt / "after").write_bytes(b"written after the outage")
            return True
        except OSError as e:
            assert e.errno == errno.EIO, e  # (until it has reconnected)
            return False

    wait_until("the mount serves again", works, 60)
    assert "expired" in mount_log(c), "the session did not expire: the test missed its point"
    os.mkdir(mnt / "d")
    assert sorted(os.listdir(mnt)) == ["after", "before", "d"]
    assert (mnt / "before").read_bytes() == b"written before the outage"
    other = c.mount("b")
    assert (other / "after").read_bytes() == b"written after the outage"
    assert sorted(os.listdir(other)) == ["after", "before", "d"]


def test_a_failed_asynchronous_create_fails_close_and_fsyncdir_with_eio(cluster):
    """open(O_CREAT) answered before its create committed, and the create failed (the
    name was taken meanwhile; ZooKeeper gone longer than zk_wait fails it the same way):
    close() says EIO (not EEXIST, which close cannot mean), and so does the next fsyncdir."""

    async def body(ops):
        await ops.meta.create(ROOT, b"taken", 0o644, uid=0, gid=0)  # unknown to the kernel
        fi, _ = await ops.create(ROOT, b"taken", 0o644, os.O_WRONLY | os.O_CREAT, CTX)
        await ops.write(fi.fh, 0, b"mine")
        close = await errno_of(ops.flush(fi.fh))
        await errno_of(ops.release(fi.fh))
        return close, await errno_of(fsyncdir(ops, ROOT)), await errno_of(fsyncdir(ops, ROOT))

    close, first, again = run_ops(cluster, body, sync_dirops=False)
    assert close == errno.EIO
    assert (first, again) == (errno.EIO, 0)  # reported once



class Partition:
    """A TCP proxy in front of ZooKeeper that can swallow what clients send, then cut
    their connections: requests the server never saw, as in a network partition."""

    def __init__(self, port: int):
        self.port = port
        self.swallow = False
        self.scopes: list[trio.CancelScope] = []

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.port) as server:
            with trio.CancelScope() as scope:
                self.scopes.append(scope)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server, True)
                    nursery.start_soon(self._pump, server, client, False)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, up: bool) -> None:
        async for data in src:
            if not (up and self.swallow):
                await dst.send_all(data)
        self.cut()

    def cut(self) -> None:
        for scope in self.scopes:
            scope.cancel()
        self.scopes = []


async def test_requests_sent_again_after_a_connection_loss_keep_their_order(tmp_path):
    """A session's requests apply in the order they were made, also when a lost
    connection makes the client send them again: an asynchronous create and the
    commit at close that depends on it come from two tasks (dfs.client.creates)."""
    with ZkEnsemble(tmp_path / "zk", servers=1) as ens:
        async with trio.open_nursery() as proxies:
            partition = Partition(ens.servers[0].client_port)
            port = await proxies.start(partition.serve)
            client = await WireZk.connect(f"127.0.0.1:{port}", session_timeout=10.0,
                                          op_timeout=30.0)
            failed = []

            async def then_set(i: int) -> None:
                try:
                    await client.set(f"/n{i}", b"set")
                except NoNodeError:
                    failed.append(i)

            try:
                with trio.fail_after(60):
                    async with trio.open_nursery() as nursery:
                        partition.swallow = True
                        for i in range(20):
                            nursery.start_soon(client.create, f"/n{i}", b"")
                            await trio.testing.wait_all_tasks_blocked()  # (sent)
                            nursery.start_soon(then_set, i)
                            await trio.testing.wait_all_tasks_blocked()
                        partition.cut()
                        partition.swallow = False
                assert failed == []
                assert [(await client.get(f"/n{i}"))[0] for i in range(20)] == [b"set"] * 20
            finally:
                await client.close()
                proxies.cancel_scope.cancel()


def change_then_fsync_fails_while_stopped(zk, change, fd: int) -> None:
    """With ZooKeeper stopped (the mount has not noticed yet: its feed still vouches),
    make an attribute `change()` (answered at once) and fsync `fd`: EIO, once zk_wait
    has passed."""
    freeze(zk.pid)
    try:
        change()
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.EIO
    finally:
        zk.send_signal(signal.SIGCONT)


def test_a_chmod_that_could_not_be_committed_fails_the_files_fsync(outage):
    """A chmod answered at once (dfs.client.attrs) whose commit then fails because
    ZooKeeper stays away longer than zk_wait: the file's fsync reports EIO (not
    success), and so does the next fsync of a directory; the file keeps its data.

    The file is made by mknod and written through a plain open, so that no handle
    of this mount created it: the chmod goes to the attribute journal whatever the
    kernel's asynchronous RELEASE of the writing handle does (a file created and
    still open here folds it into its own commit instead: the next test)."""
    ens, c = outage
    mnt = c.mount("a", options=[f"zk_wait={ZK_WAIT:g}"])
    os.mknod(mnt / "f", 0o644 | stat.S_IFREG)
    (mnt / "f").write_bytes(b"data")
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        change_then_fsync_fails_while_stopped(ens.servers[0].proc, lambda: os.chmod(mnt / "f", 0o600), fd)
    finally:
        os.close(fd)
    def reads() -> bool:
        try:
            return (mnt / "f").read_bytes() == b"data"
        except OSError as e:
            assert e.errno == errno.EIO, e  # (until it has reconnected)
            return False

    wait_until("the mount serves again", reads, 60)
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.EIO
        os.fsync(fd)  # reported once
    finally:
        os.close(fd)


def test_a_utime_of_a_file_created_and_open_here_waits_for_its_commit(outage):
    """utime of a file this mount created and still holds open joins the file's own
    commit (FileData.fold_attrs; a utime folds whatever the mount's cache knows, a
    chmod only when it knows the file has no ACL). If that commit fails because
    ZooKeeper stays away longer than zk_wait, fsync reports EIO and the change stays
    pending with the file: the next fsync once ZooKeeper is back commits it, data
    and times, and nothing was lost for a directory fsync to report."""
    ens, c = outage
    mnt = c.mount("a", options=[f"zk_wait={ZK_WAIT:g}"])
    fw = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fw, b"data")
    fd = os.open(mnt / "f", os.O_RDONLY)
    os.close(fw)
    try:
        stamp = 1_500_000_000_123_456_789
        change_then_fsync_fails_while_stopped(ens.servers[0].proc,
                                              lambda: os.utime(mnt / "f", ns=(stamp, stamp)), fd)

        def synced() -> bool:
            try:
                os.fsync(fd)
                return True
            except OSError as e:
                assert e.errno == errno.EIO, e  # (until it has reconnected)
                return False

        wait_until("the file's fsync succeeds again", synced, 60)
    finally:
        os.close(fd)
    c2 = c.mount("b")  # what ZooKeeper holds, through another mount
    assert (c2 / "f").read_bytes() == b"data"
    assert (c2 / "f").stat().st_mtime_ns == stamp
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # nothing was dropped
    finally:
        os.close(fd)
