"""Locks across mounts (dfs.meta.locks): flock, fcntl record locks and OFD locks taken on one
mount hold on another, go with the holder (unlock, close, its mount's death), and let
SQLite work from two mounts. Each lock owner is a process of its own (`Locker`)."""

import errno
import fcntl
import json
import os
import select
import sqlite3
import struct
import subprocess
import sys
import time

import pytest
import trio

from dfs.meta.locks import EOF, replace_range
from dfs.paths import ROOT_INO
from tests.test_fsck import fsck
from tests.test_leases import two_clients
from tests.test_operations import CTX

FLOCK_STRUCT = "hhqqi4x"  # struct flock on Linux x86_64: type, whence, start, len, pid
WAIT = 30.0  # generous bound on anything that must happen (a session expiry takes ~10 s)

LOCKER = r"""
import errno, fcntl, json, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
print(json.dumps(os.getpid()), flush=True)
for line in sys.stdin:
    cmd, *a = json.loads(line)
    try:
        if cmd == "fcntl":
            op, t, start, length = a
            got = fcntl.fcntl(fd, getattr(fcntl, op), struct.pack(sys.argv[2], t, 0, start, length, 0))
            t, _, start, length, pid = struct.unpack(sys.argv[2], got)
            out = [t, start, length, pid] if op.endswith("GETLK") else "ok"
        elif cmd == "flock":
            fcntl.flock(fd, a[0])
            out = "ok"
        elif cmd == "reopen":  # a second descriptor of the file, closed at once
            os.close(os.open(sys.argv[1], os.O_RDONLY))
            out = "ok"
    except OSError as e:
        out = errno.errorcode[e.errno]
    print(json.dumps(out), flush=True)
"""


class Locker:
    """A process holding `path` open; it runs one lock call per command and answers."""

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), FLOCK_STRUCT],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.answer()

    def send(self, *cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def answered(self, timeout: float) -> bool:
        return bool(select.select([self.proc.stdout], [], [], timeout)[0])

    def answer(self, timeout: float = WAIT):
        assert self.answered(timeout), "no answer from the locker"
        return json.loads(self.proc.stdout.readline())

    def __call__(self, *cmd):
        self.send(*cmd)
        return self.answer()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def lockers():
    made = []

    def make(path):
        made.append(Locker(path))
        return made[-1]

    try:
        yield make
    finally:
        for locker in made:
            locker.stop()


@pytest.fixture
def two(cluster):
    """(mount A, mount B) of one filesystem and a file on it."""
    a = cluster.mounts[0].mountpoint
    b = cluster.mount("b")
    (a / "f").write_bytes(b"x" * 1000)
    return a, b


def test_an_owners_new_lock_replaces_splits_and_merges_its_ranges():
    R, W, U = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
    assert replace_range([(0, EOF, W)], 10, 20, U) == [(0, 10, W), (20, EOF, W)]
    assert replace_range([(0, 100, W)], 50, 60, R) == [(0, 50, W), (50, 60, R), (60, 100, W)]
    assert replace_range([(0, 10, R), (20, 30, R)], 10, 20, R) == [(0, 30, R)]
    assert replace_range([(0, 10, R), (20, 30, W)], 5, 25, W) == [(0, 5, R), (5, 30, W)]
    assert replace_range([(0, 100, W)], 0, EOF, U) == []


def test_fcntl_lock_refuses_blocks_and_reports_across_mounts(two, lockers):
    a, b = two
    la, lb = lockers(a / "f"), lockers(b / "f")
    assert la("fcntl", "F_SETLK", fcntl.F_WRLCK, 100, 50) == "ok"
    assert lb("fcntl", "F_SETLK", fcntl.F_WRLCK, 120, 10) == "EAGAIN"
    assert lb("fcntl", "F_SETLK", fcntl.F_RDLCK, 0, 0) == "EAGAIN"  # to EOF overlaps
    assert lb("fcntl", "F_GETLK", fcntl.F_RDLCK, 0, 0) == [fcntl.F_WRLCK, 100, 50, la.pid]
    assert lb("fcntl", "F_GETLK", fcntl.F_WRLCK, 150, 10) == [fcntl.F_UNLCK, 150, 10, 0]
    # disjoint ranges do not conflict
    assert lb("fcntl", "F_SETLK", fcntl.F_WRLCK, 0, 100) == "ok"
    assert lb("fcntl", "F_SETLK", fcntl.F_WRLCK, 150, 0) == "ok"
    assert la("fcntl", "F_GETLK", fcntl.F_WRLCK, 0, 0) == [fcntl.F_WRLCK, 0, 100, lb.pid]
    assert lb("fcntl", "F_SETLK", fcntl.F_UNLCK, 0, 0) == "ok"
    # F_SETLKW waits while A holds the range, and gets it once A unlocks a sub-range
    lb.send("fcntl", "F_SETLKW", fcntl.F_WRLCK, 110, 10)
    assert not lb.answered(1.0)
    assert la("fcntl", "F_SETLK", fcntl.F_UNLCK, 105, 20) == "ok"  # splits A's lock in two
    assert lb.answer() == "ok"
    assert lb("fcntl", "F_GETLK", fcntl.F_WRLCK, 0, 0) == [fcntl.F_WRLCK, 100, 5, la.pid]
    assert lb("fcntl", "F_SETLK", fcntl.F_WRLCK, 125, 25) == "EAGAIN"


def test_read_locks_share_write_locks_exclude(two, lockers):
    a, b = two
    la, lb, la2 = lockers(a / "f"), lockers(b / "f"), lockers(a / "f")
    assert la("fcntl", "F_SETLK", fcntl.F_RDLCK, 0, 0) == "ok"
    assert lb("fcntl", "F_SETLK", fcntl.F_RDLCK, 10, 10) == "ok"
    assert la2("fcntl", "F_SETLK", fcntl.F_RDLCK, 0, 0) == "ok"
    assert lb("fcntl", "F_SETLK", fcntl.F_WRLCK, 10, 10) == "EAGAIN"  # upgrade: the others read
    assert la2("fcntl", "F_SETLK", fcntl.F_UNLCK, 0, 0) == "ok"
    assert la("fcntl", "F_SETLK", fcntl.F_UNLCK, 0, 0) == "ok"
    assert lb("fcntl", "F_SETLK", fcntl.F_WRLCK, 10, 10) == "ok"
    assert la("fcntl", "F_SETLK", fcntl.F_RDLCK, 15, 1) == "EAGAIN"


def test_ofd_locks_across_mounts(two, lockers):
    a, b = two
    la, lb = lockers(a / "f"), lockers(b / "f")
    assert la("fcntl", "F_OFD_SETLK", fcntl.F_WRLCK, 0, 10) == "ok"
    assert lb("fcntl", "F_OFD_SETLK", fcntl.F_WRLCK, 5, 10) == "EAGAIN"
    assert lb("fcntl", "F_OFD_GETLK", fcntl.F_WRLCK, 5, 10)[:3] == [fcntl.F_WRLCK, 0, 10]
    lb.send("fcntl", "F_OFD_SETLKW", fcntl.F_WRLCK, 5, 10)
    assert not lb.answered(1.0)
    assert la("fcntl", "F_OFD_SETLK", fcntl.F_UNLCK, 0, 10) == "ok"
    assert lb.answer() == "ok"


def test_flock_across_mounts_and_independent_of_fcntl(two, lockers):
    a, b = two
    la, lb, lb2 = lockers(a / "f"), lockers(b / "f"), lockers(b / "f")
    assert la("flock", fcntl.LOCK_EX) == "ok"
    assert lb("flock", fcntl.LOCK_EX | fcntl.LOCK_NB) == errno.errorcode[errno.EWOULDBLOCK]
    assert lb("flock", fcntl.LOCK_SH | fcntl.LOCK_NB) == errno.errorcode[errno.EWOULDBLOCK]
    assert lb("fcntl", "F_SETLK", fcntl.F_WRLCK, 0, 0) == "ok"  # flock and POSIX locks are apart
    lb.send("flock", fcntl.LOCK_SH)
    assert not lb.answered(1.0)
    assert la("flock", fcntl.LOCK_SH) == "ok"  # A converts to shared: B's shared lock fits
    assert lb.answer() == "ok"
    assert lb2("flock", fcntl.LOCK_SH | fcntl.LOCK_NB) == "ok"
    assert lb2("flock", fcntl.LOCK_EX | fcntl.LOCK_NB) == errno.errorcode[errno.EWOULDBLOCK]
    assert la("flock", fcntl.LOCK_UN) == "ok"
    assert lb("flock", fcntl.LOCK_UN) == "ok"
    assert lb2("flock", fcntl.LOCK_EX | fcntl.LOCK_NB) == "ok"


def test_locks_go_with_their_process(two, lockers):
    a, b = two
    la, lb = lockers(a / "f"), lockers(b / "f")
    assert la("fcntl", "F_SETLK", fcntl.F_WRLCK, 0, 0) == "ok"
    assert la("flock", fcntl.LOCK_EX) == "ok"
    lb.send("fcntl", "F_SETLKW", fcntl.F_WRLCK, 0, 0)
    assert not lb.answered(1.0)
    la.stop()  # its descriptor is closed: its locks go
    assert lb.answer() == "ok"
    # the POSIX lock went at the close (flush); the flock goes with the open file, at the
    # release the kernel sends just after it, asynchronously: allow it a moment
    deadline = time.monotonic() + 5
    while (got := lb("flock", fcntl.LOCK_EX | fcntl.LOCK_NB)) != "ok" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got == "ok"


def test_closing_any_descriptor_drops_the_processs_posix_locks_only(two, lockers):
    a, b = two
    la, lb = lockers(a / "f"), lockers(b / "f")
    assert la("fcntl", "F_SETLK", fcntl.F_WRLCK, 0, 10) == "ok"
    assert la("fcntl", "F_OFD_SETLK", fcntl.F_WRLCK, 20, 10) == "ok"
    assert la("flock", fcntl.LOCK_EX) == "ok"
    assert la("reopen") == "ok"
    # POSIX: the process's record locks went with that close; its open file's OFD and flock locks stay
    assert lb("fcntl", "F_SETLK", fcntl.F_WRLCK, 0, 10) == "ok"
    assert lb("fcntl", "F_OFD_SETLK", fcntl.F_WRLCK, 20, 10) == "EAGAIN"
    assert lb("flock", fcntl.LOCK_EX | fcntl.LOCK_NB) == errno.errorcode[errno.EWOULDBLOCK]


def test_locks_go_with_their_mount(cluster, two, lockers):
    a, b = two
    la, lb = lockers(a / "f"), lockers(b / "f")
    assert la("fcntl", "F_SETLK", fcntl.F_WRLCK, 0, 0) == "ok"
    assert la("flock", fcntl.LOCK_EX) == "ok"
    lb.send("fcntl", "F_SETLKW", fcntl.F_WRLCK, 0, 0)
    assert not lb.answered(1.0)
    cluster.mounts[0].kill()  # SIGKILL A's mount: its ZooKeeper session expires
    assert lb.answer() == "ok"
    assert lb("flock", fcntl.LOCK_EX | fcntl.LOCK_NB) == "ok"
    rc, report = fsck(cluster)  # locks/ is none of fsck's business
    assert rc == 0 and report["problems"] == [], report


SQLITE_WRITER = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=120, isolation_level="IMMEDIATE")
for i in range(int(sys.argv[3])):
    with db:
        db.execute("insert into t values (?, ?)", (sys.argv[2], i))
db.close()
"""


def test_an_unlock_waits_for_the_removals_made_under_the_lock(cluster):
    """A file removed under a lock is gone for the next holder, on any mount: SQLite's
    rollback journal commits a transaction by deleting the journal, and a journal the
    next holder still sees is rolled back (the transaction lost). The mount answers an
    unlink at once and commits it in the background (here: slowly), so the unlock
    must wait for that commit."""
    paths = cluster.paths

    async def body(a, b):
        ops = b.ops
        fi, _ = await ops.create(ROOT_INO, b"db", 0o644, os.O_CREAT | os.O_RDWR, CTX)
        await ops.setlk(fi.fh, 7, fcntl.F_WRLCK, 0, 0, False, CTX)
        j, _ = await ops.create(ROOT_INO, b"db-journal", 0o644, os.O_CREAT | os.O_RDWR, CTX)
        await ops.write(j.fh, 0, b"undo")
        await ops.fsync(j.fh, False)
        await ops.flush(j.fh)
        await ops.release(j.fh)
        real = b.zk.commit
        seen = []

        async def commit(txn):
            if any(op == "delete" and args[0] == paths.dirent(ROOT_INO, b"db-journal") for op, args in txn.ops):
                await trio.sleep(0.3)  # a removal batch that takes its time
            if any(args[0].startswith(paths.locks) for _, args in txn.ops):
                seen.append(await a.zk.exists(paths.dirent(ROOT_INO, b"db-journal")) is not None)
            return await real(txn)

        b.zk.commit = commit
        try:
            await ops.unlink(ROOT_INO, b"db-journal", CTX)
            await ops.setlk(fi.fh, 7, fcntl.F_UNLCK, 0, 0, False, CTX)
        finally:
            b.zk.commit = real
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        return seen

    seen = two_clients(cluster, body)
    assert seen and not seen[-1], "the unlock went out while the journal's removal was still pending"


@pytest.mark.slow
def test_sqlite_from_two_mounts(two):
    a, b = two
    db = sqlite3.connect(a / "db")
    db.execute("create table t (who text, i integer)")
    db.commit()
    assert db.execute("pragma journal_mode").fetchone()[0] == "delete"
    db.close()
    n = 150
    writers = [subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, str(m / "db"), m.name, str(n)],
                                stderr=subprocess.PIPE, text=True) for m in (a, b)]
    try:
        for w in writers:
            _, err = w.communicate(timeout=600)
            assert w.returncode == 0, err
    finally:
        for w in writers:
            w.kill()
            w.wait()
    for m in (a, b):
        db = sqlite3.connect(m / "db")
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
        rows = db.execute("select who, count(*), count(distinct i) from t group by who order by who").fetchall()
        assert rows == sorted([(a.name, n, n), (b.name, n, n)])
        db.close()
