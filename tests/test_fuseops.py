"""lseek(SEEK_DATA/SEEK_HOLE), fallocate, st_blocks and locks on a real mount.

lseek and fallocate reach dfs only through the handlers tools/pyfuse3/handlers.patch
adds to pyfuse3: with a stock pyfuse3 the kernel answers SEEK_HOLE with the end
of the file and fallocate with EOPNOTSUPP, and these tests fail. The patch's
lock handlers are proven on a small pyfuse3 filesystem that overrides them
(tests/helpers/lockfs.py); dfs's own locks are in tests/test_locks.py.
"""

import ctypes
import errno
import fcntl
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.local.mountproc import fusermount_unmount, is_mounted
from tools.local.procs import log_tail, stop_pid

BS = 1 << 20  # the test clusters' block size


def data(n: int) -> bytes:
    """Random bytes with no zero byte (so a stored block's length is what was written)."""
    return os.urandom(n).replace(b"\0", b"\1")


def stored(path: Path) -> int:
    """Bytes the file takes, as du counts them."""
    return os.stat(path).st_blocks * 512


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-B1", str(path)], check=True, capture_output=True, text=True)
               .stdout.split()[0])


def fallocate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fallocate", *args], capture_output=True, text=True)


def punch(fd: int, offset: int, length: int) -> None:
    """fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) on an open descriptor."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, 0x03, offset, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


@pytest.fixture
def mnt(cluster) -> Path:
    return cluster.mounts[0].mountpoint


def test_seek_data_and_hole(mnt):
    f = mnt / "sparse"
    with open(f, "wb") as w:
        w.write(data(BS + 10))  # blocks 0 and 1 (10 bytes)
        w.seek(4 * BS)
        w.write(data(100))  # block 4; 2 and 3 are holes
    size = 4 * BS + 100
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 2 * BS
        assert os.lseek(fd, BS + 5, os.SEEK_HOLE) == 2 * BS
        assert os.lseek(fd, 2 * BS + 7, os.SEEK_HOLE) == 2 * BS + 7
        assert os.lseek(fd, 2 * BS + 7, os.SEEK_DATA) == 4 * BS
        assert os.lseek(fd, 4 * BS + 1, os.SEEK_DATA) == 4 * BS + 1
        assert os.lseek(fd, 4 * BS, os.SEEK_HOLE) == size  # the end is a hole
        for whence in (os.SEEK_DATA, os.SEEK_HOLE):
            with pytest.raises(OSError) as e:
                os.lseek(fd, size, whence)
            assert e.value.errno == errno.ENXIO
    finally:
        os.close(fd)

    # data written but not yet closed counts too; a hole at the end has no data after it
    with open(f, "r+b") as w:
        w.seek(3 * BS + 1)
        w.write(b"x")
        w.flush()
        assert os.lseek(w.fileno(), 2 * BS, os.SEEK_DATA) == 3 * BS
        os.ftruncate(w.fileno(), 8 * BS)
        with pytest.raises(OSError) as e:
            os.lseek(w.fileno(), 5 * BS, os.SEEK_DATA)
        assert e.value.errno == errno.ENXIO
        assert os.lseek(w.fileno(), 5 * BS, os.SEEK_HOLE) == 5 * BS


def test_punch_hole_reads_zeros_and_stores_nothing(mnt):
    f = mnt / "punched"
    content = bytearray(data(4 * BS))
    f.write_bytes(content)
    assert stored(f) == 4 * BS
    # half of block 0, all of block 1, half of block 2
    p = fallocate("-p", "-o", str(BS // 2), "-l", str(2 * BS), str(f))
    assert p.returncode == 0, p.stderr
    content[BS // 2:BS // 2 + 2 * BS] = bytes(2 * BS)
    assert f.stat().st_size == 4 * BS
    subprocess.run("echo 3 > /proc/sys/vm/drop_caches", shell=True)
    assert f.read_bytes() == content
    # block 0 keeps its first half, block 1 is gone, block 2 is rewritten whole
    assert stored(f) == du(f) == BS // 2 + BS + BS
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == BS
    finally:
        os.close(fd)

    # punching all that is left, past the end included, leaves only the size
    p = fallocate("-p", "-o", "0", "-l", str(8 * BS), str(f))
    assert p.returncode == 0, p.stderr
    assert f.stat().st_size == 4 * BS and stored(f) == 0
    assert f.read_bytes() == bytes(4 * BS)

    # on a descriptor with writes not yet committed: they are flushed first, then punched
    with open(f, "r+b") as w:
        w.write(data(2 * BS))
        w.flush()
        punch(w.fileno(), BS, BS)
        w.seek(0)
        head = w.read(2 * BS)
        assert head[BS:] == bytes(BS) and head[:BS].count(0) == 0
    assert stored(f) == BS

    # a small (inline) file
    small = mnt / "small"
    small.write_bytes(b"a" * 1000)
    assert fallocate("-p", "-o", "500", "-l", "1000", str(small)).returncode == 0
    assert small.read_bytes() == b"a" * 500 + bytes(500)
    assert stored(small) == 512


def test_fallocate_allocate_and_keep_size(mnt):
    f = mnt / "alloc"
    p = fallocate("-l", str(3 * BS + 5), str(f))  # mode 0: the size grows, nothing is stored
    assert p.returncode == 0, p.stderr
    assert f.stat().st_size == 3 * BS + 5
    assert stored(f) == 0
    assert f.read_bytes() == bytes(3 * BS + 5)

    p = fallocate("-n", "-o", "0", "-l", str(10 * BS), str(f))  # KEEP_SIZE
    assert p.returncode == 0, p.stderr
    assert f.stat().st_size == 3 * BS + 5
    p = fallocate("-o", str(BS), "-l", "10", str(f))  # inside the file: nothing changes
    assert p.returncode == 0, p.stderr
    assert f.stat().st_size == 3 * BS + 5

    with open(f, "r+b") as w:  # written after fallocate: stored as usual
        w.seek(BS)
        w.write(b"y" * 100)
    assert f.stat().st_size == 3 * BS + 5 and stored(f) == 512

    p = fallocate("-z", "-o", "0", "-l", "10", str(f))  # zero range: not supported
    assert p.returncode != 0 and "not supported" in p.stderr


def test_st_blocks_counts_what_is_stored(mnt):
    f = mnt / "far"
    with open(f, "wb") as w:
        w.seek(100 * BS)
        w.write(b"z" * 10)
        w.flush()
        assert os.fstat(w.fileno()).st_blocks == 1  # before the commit, too
    assert f.stat().st_size == 100 * BS + 10
    assert stored(f) == du(f) == 512

    with open(f, "r+b") as w:
        w.write(data(2 * BS + 1))  # blocks 0, 1 and one byte of 2
    assert stored(f) == 2 * BS + 512  # 2 BS + 11 bytes
    os.truncate(f, BS + 1000)
    assert stored(f) == BS + 1024

    small = mnt / "small"
    small.write_bytes(b"s" * 600)  # inline bytes count too
    assert stored(small) == 1024
    (mnt / "empty").write_bytes(b"")
    assert stored(mnt / "empty") == 0


def test_locks_between_processes_of_one_mount(mnt):
    """flock and lockf between processes of one mount (dfs's handlers, not the kernel's)."""
    f = mnt / "locked"
    f.write_bytes(b"x")
    try_lock = [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'r+');"
                "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(f)]
    with open(f, "r+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert subprocess.run(["flock", "-n", str(f), "true"]).returncode == 1
        fcntl.flock(held, fcntl.LOCK_UN)
        assert subprocess.run(["flock", "-n", str(f), "true"]).returncode == 0
        fcntl.lockf(held, fcntl.LOCK_EX)
        assert subprocess.run(try_lock, capture_output=True).returncode != 0
        fcntl.lockf(held, fcntl.LOCK_UN)
        assert subprocess.run(try_lock, capture_output=True).returncode == 0


@pytest.fixture
def lockfs(tmp_path):
    """tests/helpers/lockfs.py mounted; yields (mountpoint, the calls it logged)."""
    mp, log, out = tmp_path / "lockfs", tmp_path / "calls.jsonl", tmp_path / "lockfs.log"
    mp.mkdir()
    helper = Path(__file__).parent / "helpers" / "lockfs.py"
    with open(out, "wb") as o:
        proc = subprocess.Popen([sys.executable, str(helper), str(mp), str(log)], stdin=subprocess.DEVNULL,
                                stdout=o, stderr=o, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mp):
            assert proc.poll() is None and time.monotonic() < deadline, log_tail(out)
            time.sleep(0.05)
        yield mp, lambda: [json.loads(line) for line in log.read_text().splitlines()]
    finally:
        if is_mounted(mp) and not fusermount_unmount(mp):
            fusermount_unmount(mp, lazy=True)
        stop_pid(proc.pid, proc=proc)


def test_lock_handlers_reached(lockfs):
    mp, calls = lockfs
    with open(mp / "f", "r+b") as f:
        # F_GETLK for a write lock over [0, 100): the filesystem's answer comes back
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 100, 0)
        l_type, _, start, length, pid = struct.unpack("hhqqi", fcntl.fcntl(f, fcntl.F_GETLK, query))
        assert (l_type, start, length) == (fcntl.F_WRLCK, 10, 20) and pid > 0
        # F_SETLK: refused by the handler; F_SETLKW (sleep) and a read lock granted
        with pytest.raises(OSError) as e:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 7)
        assert e.value.errno in (errno.EAGAIN, errno.EACCES)
        fcntl.lockf(f, fcntl.LOCK_EX, 5, 7)
        fcntl.lockf(f, fcntl.LOCK_SH)
        # flock: LOCK_EX|LOCK_NB refused, LOCK_SH granted
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_SH)
    got = calls()
    assert got[0] == {"op": "getlk", "owner": got[0]["owner"], "type": fcntl.F_WRLCK, "start": 0, "length": 100,
                      "pid": os.getpid()}
    setlk = [(c["type"], c["start"], c["length"], c["sleep"]) for c in got if c["op"] == "setlk"]
    assert setlk[:3] == [(fcntl.F_WRLCK, 7, 5, False), (fcntl.F_WRLCK, 7, 5, True), (fcntl.F_RDLCK, 0, 0, True)]
    flocks = [c["flock"] for c in got if c["op"] == "flock"]
    assert flocks[:2] == [fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_SH]
    assert all(c["owner"] for c in got)
    # close: flush gets the owner whose POSIX locks go (this process's, as setlk got it)
    assert {"op": "flush", "owner": got[1]["owner"]} in got


def test_punch_keeps_another_mounts_newer_writes(cluster):
    """A punch on a file another mount changed since this one opened it punches what is there now."""
    a, b = cluster.mounts[0].mountpoint, cluster.mount("mnt2")
    content = bytearray(data(4 * BS))
    (a / "shared").write_bytes(content)
    with open(a / "shared", "r+b") as held:  # opened on A before B's write
        newer = data(BS // 2)
        with open(b / "shared", "r+b") as w:  # B rewrites the second half of block 2
            w.seek(2 * BS + BS // 2)
            w.write(newer)
        content[2 * BS + BS // 2:3 * BS] = newer
        punch(held.fileno(), BS // 2, 2 * BS)  # up to the middle of block 2
        content[BS // 2:2 * BS + BS // 2] = bytes(2 * BS)
    subprocess.run("echo 3 > /proc/sys/vm/drop_caches", shell=True)
    assert (a / "shared").read_bytes() == content
    assert (b / "shared").read_bytes() == content
