"""Admission control (issue 17): a ZooKeeper with a small heap is filled on purpose.

Creates must fail with ENOSPC before ZooKeeper runs out of heap; ZooKeeper stays
up (its JVM exits on OutOfMemoryError, see tools/local/zkserver.py, so a heap
that ran out shows as a dead PID), existing files stay readable, `dfs status`
warns (exit 1), and removing what filled it lets creates resume.
"""

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dfs.config import FsConfig
from dfs.maint import capacity
from tests.harness import Cluster
from tools.local.zkserver import ZkEnsemble, four_letter

REPO = Path(__file__).resolve().parents[1]
HEAP = 64 << 20
# an empty file: 3 znodes and ~330 bytes of their data (README: Capacity)
FILE_COST = capacity.estimate(3, 330)


def ballast(files: list[Path], nbytes: int) -> None:
    """Fill ZooKeeper fast: 4 KiB extended attributes (they live in ZooKeeper too),
    one thread per file. (Not 64 KiB ones: ZooKeeper
    keeps its last 500 transactions in memory, README: Capacity.)"""
    value = os.urandom(4096)
    n = nbytes // capacity.estimate(1, len(value)) // len(files)

    def fill(f: Path) -> None:
        for i in range(n):
            os.setxattr(f, f"user.b{i}", value)

    threads = [threading.Thread(target=fill, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def create_until_refused(dirs: list[Path], most: int) -> tuple[int, list[OSError]]:
    """One thread per directory creates empty files until ENOSPC (or `most` in all)."""
    made = [0] * len(dirs)
    errors: list[OSError] = []
    stop = threading.Event()

    def writer(k: int) -> None:
        i = 0
        while not stop.is_set() and sum(made) < most:
            try:
                os.close(os.open(dirs[k] / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
            except OSError as e:
                errors.append(e)
                stop.set()
                return
            made[k] += 1
            i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(len(dirs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(made), errors


def zk_data_size(server) -> int:
    mntr = four_letter(server.host, server.client_port, "mntr")
    return int(dict(line.split("\t", 1) for line in mntr.splitlines() if "\t" in line)
               ["zk_approximate_data_size"])


def dfs_status(hosts: str, fs: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", "status", "--zk", hosts, "--fs", fs],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_a_full_zookeeper_refuses_creates_and_stays_up(tmp_path):
    # (forceSync=no: no fsync of its log, the test is about memory, not durability)
    ens = ZkEnsemble(tmp_path / "zk", servers=1, heap_mb=HEAP >> 20, extra=["forceSync=no"]).start()
    zk = ens.servers[0]
    c = Cluster(ens.hosts, tmp_path / "c", FsConfig(block_size=1 << 20, replicas=1, min_replicas=1,
                                                     zk_heap=HEAP))
    (tmp_path / "c").mkdir()
    try:
        c.mkfs()
        c.add_node()
        mnt = c.mount()
        big = os.urandom(3 << 20)  # in blocks on the node
        (mnt / "big").write_bytes(big)
        (mnt / "small").write_bytes(b"inline bytes")
        limit = capacity.limit_for(HEAP)
        ballasts = [mnt / f"ballast{k}" for k in range(4)]
        for f in ballasts:
            f.write_bytes(b"")
        ballast(ballasts, limit * 9 // 10)  # 90% of where creates stop
        dirs = [mnt / f"w{k}" for k in range(4)]
        for d in dirs:
            d.mkdir()

        made, errors = create_until_refused(dirs, most=limit // FILE_COST)
        assert errors, f"{made} more files and no ENOSPC (ZooKeeper alive: {zk.alive()})"
        assert {e.errno for e in errors} == {errno.ENOSPC}, errors
        assert zk.alive() and zk.mode() == "standalone", ens.log_tail()

        # every way to add a name is refused; what exists stays readable and removable
        for make in (lambda: (mnt / "newdir").mkdir(), lambda: os.symlink("big", mnt / "ln"),
                     lambda: os.link(mnt / "big", mnt / "hard"), lambda: os.mkfifo(mnt / "fifo"),
                     lambda: (mnt / "one-more").write_bytes(b"x")):
            try:
                make()
                raise AssertionError("a create succeeded while the metadata is full")
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
        assert (mnt / "big").read_bytes() == big
        assert (mnt / "small").read_bytes() == b"inline bytes"
        # small files written now go to blocks, not into ZooKeeper
        data = zk_data_size(zk)
        some = sorted(os.listdir(dirs[0]))[:20]
        for name in some:
            (dirs[0] / name).write_bytes(name.encode() * 400)
        assert zk_data_size(zk) - data < len(some) * 2048
        assert all((dirs[0] / name).read_bytes() == name.encode() * 400 for name in some)
        assert "metadata full" in c.mounts[0].log_tail()

        st = dfs_status(ens.hosts, c.fsname)
        assert st.returncode == 1, st.stdout + st.stderr
        assert "WARNING: metadata full: creates fail with ENOSPC" in st.stdout, st.stdout

        # removing what fills it brings creates back (below the resume mark)
        for f in ballasts:
            os.unlink(f)
        deadline = time.monotonic() + 30
        while True:
            try:
                (mnt / "after").write_bytes(b"room again")
                break
            except OSError as e:
                assert e.errno == errno.ENOSPC and time.monotonic() < deadline, e
                time.sleep(0.5)
        assert (mnt / "after").read_bytes() == b"room again"
        assert zk.alive(), ens.log_tail()
    finally:
        c.close()
        ens.stop()


def test_creates_stop_at_the_limit_and_resume_below_the_resume_mark():
    heap = 1 << 30
    limit = capacity.limit_for(heap)
    znodes_at = lambda share: int(limit * share / capacity.estimate(1, 100))  # noqa: E731

    def full(was_full: bool, share: float) -> bool:
        n = znodes_at(share)
        return capacity.decide(was_full, n, 100 * n, heap).full

    assert not full(False, 0.99) and full(False, 1.01)
    assert full(True, 0.97) and not full(True, 0.93)  # no flapping around the limit
    near = capacity.decide(False, znodes_at(0.99), 100 * znodes_at(0.99), heap)
    far = capacity.decide(False, 0, 0, heap)
    assert capacity.next_check(near) == capacity.NEAR and capacity.next_check(far) == capacity.FAR
