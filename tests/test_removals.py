"""unlink/rmdir answered at once and committed in the background: what users can tell."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def fsck_clean(cluster) -> dict:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "fsck", "--zk", cluster.hosts,
                        "--fs", cluster.fsname, "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout)
    assert r.returncode == 0, report["problems"]
    return report


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_tree(root: Path, files: int = 5) -> None:
    for a in range(4):
        for b in range(3):
            d = root / f"a{a}" / f"b{b}"
            d.mkdir(parents=True)
            for i in range(files):
                (d / f"f{i}").write_bytes(os.urandom(100 + i * 3000))


def test_rm_r_is_gone_here_at_once_and_everywhere_after_fsyncdir(cluster):
    a = cluster.mount("a")
    b = cluster.mount("b")
    make_tree(a / "t")
    (a / "keep").write_bytes(b"kept")
    subprocess.run(["rm", "-r", str(a / "t")], check=True)
    assert os.listdir(a) == ["keep"]  # this mount: gone as soon as rm returned
    fsync_dir(a)  # waits for the background commits
    assert os.listdir(b) == ["keep"]
    assert (b / "keep").read_bytes() == b"kept"
    report = fsck_clean(cluster)
    assert report["total_files"] == 1


def test_name_reused_right_after_unlink(cluster):
    a = cluster.mount("a")
    b = cluster.mount("b")
    for i in range(50):
        p = a / "same"
        p.write_bytes(b"v%d" % i)
        os.unlink(p)
        p.write_bytes(b"w%d" % i)
    (a / "d").mkdir()
    os.rmdir(a / "d")
    (a / "d").mkdir()
    (a / "d" / "x").write_bytes(b"x")
    fsync_dir(a)
    assert (b / "same").read_bytes() == b"w49"
    assert (b / "d" / "x").read_bytes() == b"x"
    fsck_clean(cluster)


def test_rmdir_of_unlisted_nonempty_dir_fails_at_once(cluster):
    a = cluster.mount("a")
    b = cluster.mount("b")
    (b / "d").mkdir()
    (b / "d" / "x").write_bytes(b"data")
    with pytest.raises(OSError) as e:
        os.rmdir(a / "d")
    assert e.value.errno == errno.ENOTEMPTY
    # listed here, but another mount adds an entry before the rmdir
    (b / "e").mkdir()
    assert os.listdir(a / "e") == []
    (b / "e" / "late").write_bytes(b"late data")
    try:
        os.rmdir(a / "e")  # may be answered from our (now stale) listing
    except OSError as err:
        assert err.errno == errno.ENOTEMPTY
    else:
        # the background rmdir failed: nothing lost, and fsyncdir tells
        with pytest.raises(OSError) as e:
            fsync_dir(a)
        assert e.value.errno == errno.EIO
    assert (b / "e" / "late").read_bytes() == b"late data"
    assert (a / "e" / "late").read_bytes() == b"late data"
    fsck_clean(cluster)


def test_unmount_commits_pending_removals(cluster):
    a = cluster.mount("a")
    for i in range(300):
        (a / f"f{i}").write_bytes(b"x" * (i % 7000))
    for i in range(300):
        os.unlink(a / f"f{i}")
    m = cluster.mounts[-1]
    m.stop()  # fusermount3 -u right after the last unlink
    assert m.proc.returncode == 0, m.log_tail()  # the daemon drained, unmounted and exited cleanly
    assert "Traceback" not in m.log_tail()
    c = cluster.mount("c")
    assert os.listdir(c) == []
    fsck_clean(cluster)


def test_sync_dirops_option(cluster):
    a = cluster.mount("a", options=["sync_dirops"])
    (a / "d").mkdir()
    (a / "d" / "f").write_bytes(b"1")
    subprocess.run(["rm", "-r", str(a / "d")], check=True)
    b = cluster.mount("b")
    assert os.listdir(b) == []  # committed before rm returned: no fsyncdir needed
