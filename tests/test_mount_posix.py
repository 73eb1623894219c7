"""The mount as users see it: ordinary shell tools on a real FUSE mount of a real cluster."""

import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import client_session

BS = 1 << 20  # the test clusters' block size


def sh(cmd: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def rand_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = os.urandom(size) if seed == 0 else (bytes([seed % 251]) * size)
    path.write_bytes(data)
    return data


@pytest.fixture
def mnt(cluster) -> Path:
    return cluster.mounts[0].mountpoint


def test_cp_sizes_and_cmp(mnt, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for size in (0, 1, 4096, BS - 1, BS, BS + 1, 3 * BS + 12345):
        rand_file(src / f"f{size}", size)
        sh(f"cp {src}/f{size} {mnt}/f{size}")
        sh(f"cmp {src}/f{size} {mnt}/f{size}")
        assert (mnt / f"f{size}").stat().st_size == size
    out = sh(f"ls -la {mnt}").stdout
    assert "f4096" in out and " . " not in out.splitlines()[0]
    names = sorted(os.listdir(mnt))
    assert names == sorted(f"f{s}" for s in (0, 1, 4096, BS - 1, BS, BS + 1, 3 * BS + 12345))


@pytest.mark.slow
def test_big_random_file(mnt, tmp_path):
    src = tmp_path / "big"
    size = 300 * (1 << 20)
    with open(src, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
    sh(f"cp {src} {mnt}/big")
    sh("sync")
    sh("echo 3 > /proc/sys/vm/drop_caches", check=False)
    sh(f"cmp {src} {mnt}/big")


def test_namespace_tools(mnt):
    sh("mkdir -p a/b/c d", cwd=mnt)
    sh("echo hello > a/b/c/f && cat a/b/c/f", cwd=mnt)
    sh("mv a/b/c/f a/b/c/g && mv a/b/c/g d/h", cwd=mnt)
    assert (mnt / "d/h").read_text() == "hello\n"
    assert not (mnt / "a/b/c/g").exists()
    sh("mv d a/b/moved", cwd=mnt)
    assert (mnt / "a/b/moved/h").read_text() == "hello\n"
    sh("ln a/b/moved/h hard && ln -s a/b/moved/h soft", cwd=mnt)
    assert (mnt / "hard").stat().st_nlink == 2
    assert os.readlink(mnt / "soft") == "a/b/moved/h"
    assert (mnt / "soft").read_text() == "hello\n"
    sh("chmod 0640 hard", cwd=mnt)
    assert stat.S_IMODE((mnt / "a/b/moved/h").stat().st_mode) == 0o640
    sh("touch -d '2001-02-03 04:05:06.789' hard", cwd=mnt)
    st = (mnt / "hard").stat()
    assert time.gmtime(st.st_mtime)[:6] == (2001, 2, 3, 4, 5, 6) or st.st_mtime_ns % 10**9 == 789_000_000
    assert st.st_mtime_ns % 10**9 == 789_000_000
    found = sh("find . | sort", cwd=mnt).stdout.split()
    assert found == sorted([".", "./a", "./a/b", "./a/b/c", "./a/b/moved", "./a/b/moved/h", "./hard",
                            "./soft"])
    sh("rm -r a", cwd=mnt)
    assert sorted(os.listdir(mnt)) == ["hard", "soft"]
    assert (mnt / "hard").read_text() == "hello\n"
    assert (mnt / "hard").stat().st_nlink == 1
    sh("stat hard && du -s . && df .", cwd=mnt)
    df = sh(f"df -P {mnt}").stdout.splitlines()[1].split()
    assert int(df[1]) > 0  # capacity from the live nodes


def test_truncate_sparse_append(mnt):
    f = mnt / "t"
    f.write_bytes(b"x" * (BS + 100))
    sh(f"truncate -s 10 {f}")
    assert f.read_bytes() == b"x" * 10
    sh(f"truncate -s {2 * BS} {f}")
    data = f.read_bytes()
    assert data == b"x" * 10 + bytes(2 * BS - 10)  # re-grown part reads as zeros
    sh(f"dd if=/dev/zero of={mnt}/sparse bs=4096 count=1 seek=2560 status=none")
    sp = mnt / "sparse"
    assert sp.stat().st_size == 2561 * 4096
    with open(sp, "rb") as h:
        h.seek(5 * BS // 2)
        assert h.read(4096) == bytes(4096)
    sh(f"printf abc > {mnt}/ap && printf def >> {mnt}/ap && cat {mnt}/ap >> {mnt}/ap2 && cat {mnt}/ap >> {mnt}/ap2")
    assert (mnt / "ap").read_bytes() == b"abcdef"
    assert (mnt / "ap2").read_bytes() == b"abcdefabcdef"
    sh(f"truncate -s 1000000000000000 {mnt}/huge")  # 10^15 bytes: sparse, not an allocation
    assert (mnt / "huge").stat().st_size == 10**15
    with open(mnt / "huge", "rb") as h:
        h.seek(10**15 - 10)
        assert h.read() == bytes(10)
    # O_TRUNC and O_APPEND through the syscalls
    fd = os.open(mnt / "ap", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
    fd = os.open(mnt / "ap", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"+more")
    os.close(fd)
    assert (mnt / "ap").read_bytes() == b"new+more"


def test_partial_overwrite_in_middle(mnt):
    f = mnt / "p"
    base = os.urandom(3 * BS)
    f.write_bytes(base)
    with open(f, "r+b") as h:
        h.seek(BS + 5)
        h.write(b"PATCH")
    want = base[: BS + 5] + b"PATCH" + base[BS + 10:]
    assert f.read_bytes() == want


def test_tar_and_rsync_round_trip(mnt, tmp_path):
    src = tmp_path / "tree"
    for i in range(5):
        d = src / f"dir{i}" / "sub"
        d.mkdir(parents=True)
        (d / "file.txt").write_text(f"file {i}\n" * (i * 1000 + 1))
        (src / f"dir{i}" / "bin").write_bytes(os.urandom(50_000 * i + 1))
    os.symlink("dir0/sub/file.txt", src / "link")
    os.chmod(src / "dir1" / "bin", 0o600)
    sh(f"rsync -a {src}/ {mnt}/rs/")
    sh(f"diff -r {src} {mnt}/rs")
    out = sh(f"rsync -a --dry-run --itemize-changes {src}/ {mnt}/rs/").stdout
    assert out.strip() == ""  # rsync sees nothing to do: sizes and mtimes preserved
    sh(f"tar -C {src} -cf {tmp_path}/t.tar .")
    sh(f"mkdir {mnt}/untar && tar -C {mnt}/untar -xf {tmp_path}/t.tar")
    sh(f"diff -r {src} {mnt}/untar")
    sh(f"tar -C {mnt}/untar -cf {mnt}/again.tar . && mkdir {tmp_path}/back && tar -C {tmp_path}/back -xf {mnt}/again.tar")
    sh(f"diff -r {src} {tmp_path}/back")


def test_special_files_and_xattrs(mnt):
    os.mkfifo(mnt / "fifo")
    assert stat.S_ISFIFO((mnt / "fifo").stat().st_mode)
    os.mknod(mnt / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = (mnt / "null").stat()
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    (mnt / "x").write_text("x")
    os.setxattr(mnt / "x", "user.color", b"blue")
    assert os.getxattr(mnt / "x", "user.color") == b"blue"
    assert "user.color" in os.listxattr(mnt / "x")
    with pytest.raises(OSError) as e:
        os.setxattr(mnt / "x", "user.color", b"red", os.XATTR_CREATE)
    assert e.value.errno == errno.EEXIST
    os.removexattr(mnt / "x", "user.color")
    with pytest.raises(OSError) as e:
        os.getxattr(mnt / "x", "user.color")
    assert e.value.errno == errno.ENODATA


def test_unlinked_open_file_keeps_working(mnt):
    p = mnt / "gone"
    with open(p, "w+b") as h:
        h.write(b"still here" * 1000)
        h.flush()
        os.unlink(p)
        assert not p.exists()
        h.write(b"!")
        h.flush()
        os.fsync(h.fileno())
        h.seek(0)
        assert h.read() == b"still here" * 1000 + b"!"
    assert "gone" not in os.listdir(mnt)


def test_rename_flags_and_errors(mnt):
    (mnt / "a").write_text("a")
    (mnt / "b").write_text("b")
    os.mkdir(mnt / "d")
    (mnt / "d" / "in").write_text("in")
    with pytest.raises(OSError) as e:
        os.rename(mnt / "d", mnt / "d" / "sub")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.rmdir(mnt / "d")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as e:
        (mnt / ("n" * 256)).write_text("x")
    assert e.value.errno == errno.ENAMETOOLONG
    (mnt / ("n" * 255)).write_text("ok")
    os.rename(mnt / "a", mnt / "b")  # over an existing file
    assert (mnt / "b").read_text() == "a" and not (mnt / "a").exists()
    # renameat2 flags through the real syscall (util-linux `mv --exchange` is too new)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    (mnt / "c").write_text("c")
    AT_FDCWD = -100
    assert libc.renameat2(AT_FDCWD, bytes(mnt / "b"), AT_FDCWD, bytes(mnt / "c"), 2) == 0  # EXCHANGE
    assert (mnt / "b").read_text() == "c" and (mnt / "c").read_text() == "a"
    assert libc.renameat2(AT_FDCWD, bytes(mnt / "b"), AT_FDCWD, bytes(mnt / "c"), 1) == -1  # NOREPLACE
    assert ctypes.get_errno() == errno.EEXIST


def test_efbig(mnt):
    p = mnt / "big"
    p.write_bytes(b"")
    fd = os.open(p, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", 1 << 50)
            os.fsync(fd)
        assert e.value.errno in (errno.EFBIG, errno.EIO)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    r = sh(f"truncate -s {(1 << 50) + 1} {p}", check=False)
    assert r.returncode != 0 and "too large" in r.stderr.lower()


def test_two_mounts_close_to_open(cluster):
    a = cluster.mounts[0].mountpoint
    b = cluster.mount("mnt2")
    data = os.urandom(2 * BS + 7)
    (a / "shared").write_bytes(data)  # closed on a ...
    assert (b / "shared").read_bytes() == data  # ... read whole on b
    (b / "shared").write_bytes(b"v2")
    assert (a / "shared").read_bytes() == b"v2"
    os.rename(a / "shared", a / "renamed")
    # metadata changes reach other mounts within the kernel cache timeout (1 s)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ((b / "shared").exists() or not (b / "renamed").exists()):
        time.sleep(0.1)
    assert (b / "renamed").read_bytes() == b"v2"
    assert not (b / "shared").exists()


def test_remount_keeps_everything(cluster):
    m = cluster.mounts[0]
    data = os.urandom(3 * BS + 5)
    (m.mountpoint / "keep").write_bytes(data)
    os.mkdir(m.mountpoint / "dir")
    os.symlink("keep", m.mountpoint / "dir" / "ln")
    m.stop()
    assert not os.path.ismount(m.mountpoint)
    m.start()
    assert (m.mountpoint / "keep").read_bytes() == data
    assert os.readlink(m.mountpoint / "dir" / "ln") == "keep"


def test_mount_unreachable_zookeeper(tmp_path):
    from tools.local.zkserver import free_port

    mp = tmp_path / "m"
    mp.mkdir()
    t = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "tools.cli", "mount", "--zk", f"127.0.0.1:{free_port()}",
                          "--zk-timeout", "2", str(mp)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "ZooKeeper" in err
    assert time.monotonic() - t < 30
    assert not os.path.ismount(mp)
    # a mount that never started leaves no empty log behind in /tmp
    assert not [f for f in os.listdir("/tmp") if f.startswith(f"dfs-mount.{os.getuid()}.{p.pid}.")]


def test_rename_over_open_file_then_close_frees_it(cluster):
    import trio

    from dfs.zk import connect

    mnt = cluster.mounts[0].mountpoint
    (mnt / "victim").write_bytes(b"old contents")
    (mnt / "new").write_bytes(b"new")
    with open(mnt / "victim", "rb") as h:
        os.rename(mnt / "new", mnt / "victim")  # the open inode loses its last name
        assert h.read() == b"old contents"  # still readable through the handle
    assert (mnt / "victim").read_bytes() == b"new"

    async def held() -> list[str]:
        zk = await connect(cluster.hosts)
        zk.authenticate(cluster.key, cluster.paths.root)
        try:
            return await zk.get_children(cluster.paths.open)
        finally:
            await zk.close()

    deadline = time.monotonic() + 5
    while trio.run(held) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trio.run(held) == []  # released on close: inode and blocks are gone


def test_sigterm_flushes_then_unmounts(cluster):
    import signal

    m = cluster.mounts[0]
    data = os.urandom(BS + 4321)
    h = open(m.mountpoint / "pending", "wb")
    h.write(data)
    h.flush()  # reaches the daemon's buffers; not closed, so not committed yet
    os.kill(m.pid, signal.SIGTERM)
    m.proc.wait(timeout=60)
    assert not os.path.ismount(m.mountpoint) or subprocess.run(
        ["fusermount3", "-u", "-z", str(m.mountpoint)]).returncode == 0
    try:
        h.close()
    except OSError:
        pass  # the mount is gone under the open file
    m.start()
    assert (m.mountpoint / "pending").read_bytes() == data


def test_read_only_mount_refuses_every_change(cluster):
    rw = cluster.mounts[0].mountpoint
    (rw / "d").mkdir()
    (rw / "d" / "f").write_bytes(b"kept")
    ro = cluster.mount("ro", options=["ro"])
    f = ro / "d" / "f"
    assert f.read_bytes() == b"kept"  # reads work
    attempts = {
        "write": lambda: open(f, "r+b").close(),
        "create": lambda: (ro / "d" / "new").write_bytes(b"x"),
        "mkdir": lambda: (ro / "d" / "sub").mkdir(),
        "unlink": lambda: f.unlink(),
        "rename": lambda: f.rename(ro / "d" / "g"),
        "setattr": lambda: os.chmod(f, 0o600),
        "truncate": lambda: os.truncate(f, 0),
        "setxattr": lambda: os.setxattr(f, "user.k", b"v"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, what
    # nothing changed, as the writable mount sees it
    assert sorted(p.name for p in (rw / "d").iterdir()) == ["f"]
    assert (rw / "d" / "f").read_bytes() == b"kept"
    assert stat.S_IMODE((rw / "d" / "f").stat().st_mode) != 0o600
    assert os.listxattr(rw / "d" / "f") == []


def test_only_the_acl_names_are_accepted_in_system_xattrs(mnt):
    f = mnt / "f"
    f.write_bytes(b"")
    with pytest.raises(OSError) as e:
        os.setxattr(f, "system.whatever", b"v")
    assert e.value.errno == errno.EOPNOTSUPP
    os.setxattr(f, "user.ok", b"v")  # other namespaces as before
    assert os.listxattr(f) == ["user.ok"]


def test_times_are_exact_on_the_writing_mount_right_after_close(cluster):
    """fstat while open, then close: stat shows the mtime and ctime the close committed
    (as another mount sees them), not the ones the kernel cached while the file was open."""
    a = cluster.mounts[0].mountpoint
    b = cluster.mount("b")
    for i in range(3):
        f = a / f"f{i}"
        f.write_bytes(b"first")
        before = f.stat()
        time.sleep(0.05)
        with open(f, "r+b") as fh:
            os.fstat(fh.fileno())
            time.sleep(0.05)
            fh.write(b"second")
            fh.flush()
            os.fstat(fh.fileno())
        here, there = f.stat(), (b / f"f{i}").stat()
        assert here.st_mtime_ns > before.st_mtime_ns and here.st_ctime_ns > before.st_ctime_ns
        assert (here.st_mtime_ns, here.st_ctime_ns, here.st_size) == \
            (there.st_mtime_ns, there.st_ctime_ns, there.st_size)


def test_bench_tree_runs_every_phase_and_checks_the_copies(mnt, tmp_path):
    """`dfs bench --tree` on a mount: every phase of the tree workload runs with real tar, cp,
    rsync, ls, rm and git, and the bench verifies the copies (a wrong tree fails it)."""
    out = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "--tree", "--json", "--tree-files", "40",
                          "--commits", "10", "--scratch", str(tmp_path / "scratch"), str(mnt)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    phases = json.loads(out.stdout)
    print(phases)
    assert list(phases) == ["tar -x", "cp -a", "rsync -a", "ls -lR", "rm -rf", "git clone"]
    assert all(p["seconds"] > 0 for p in phases.values())
    assert phases["tar -x"]["files"] == 40 and phases["tar -x"]["bytes"] > 0
    assert [p.name for p in mnt.iterdir()] == []  # nothing left behind on the filesystem


def test_relatime(cluster):
    """atime moves on a read as Linux relatime moves it: when not later than the mtime
    (or ctime), or a day old; not on every read."""
    a = cluster.mounts[0].mountpoint
    b = cluster.mount("b")  # reads here; stat on a (no page cache of b in the way)
    (a / "f").write_bytes(b"one\n")

    def atime_after_read() -> int:
        before = os.stat(a / "f").st_atime_ns
        (b / "f").read_bytes()
        deadline = time.monotonic() + 3  # written in the background, seen on a via the feed
        while os.stat(a / "f").st_atime_ns == before and time.monotonic() < deadline:
            time.sleep(0.05)
        return os.stat(a / "f").st_atime_ns

    created = os.stat(a / "f")
    first = atime_after_read()
    assert first > created.st_mtime_ns  # atime was not later than mtime: moves
    assert atime_after_read() == first  # now later than mtime, and fresh: stays
    assert os.stat(a / "f").st_ctime_ns == created.st_ctime_ns  # (an atime update is no change)
    (a / "f").write_bytes(b"two\n")
    assert atime_after_read() > os.stat(a / "f").st_mtime_ns
    # a day-old atime later than mtime and ctime moves too (set in ZooKeeper: utime moves the ctime)
    day = 24 * 3600 * 10**9
    old = time.time_ns() - 2 * day
    ino = os.stat(a / "f").st_ino

    async def age(zk, view, blocks, nursery):
        await view.meta.inodes.setattr(ino, atime_ns=old + day // 2, mtime_ns=old, ctime_ns=old)

    client_session(cluster, age)
    assert atime_after_read() > old + day
