"""The trash on real mounts: rm and rename-over keep the file, `dfs trash` lists,
restores (never over a name) and purges it, the repair leader expires it."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dfs.config import FsConfig
from tests.test_removals import fsck_clean, fsync_dir

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def dfs(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "tools.cli", *args, "--zk", cluster.hosts, "--fs", cluster.fsname],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def trash_ls(cluster, path: str = "/") -> list[dict]:
    return json.loads(dfs(cluster, "trash", "ls", path, "--json").stdout)["entries"]


def block_files(cluster) -> set[str]:
    return {p.name for n in cluster.nodes for p in (n.data_dir / "blocks").rglob("*") if p.is_file()}


def wait_for(what, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * MiB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def trash_cluster(cluster_factory, days: float = 1.0, block_size: int = MiB):
    c = cluster_factory(FsConfig(block_size=block_size, replicas=3, min_replicas=2, dead_after=5,
                                 trash_days=days))
    c.mount()
    return c


def test_rm_of_a_300_mib_file_restores_identical_bytes_and_trash_is_hidden(cluster_factory):
    c = trash_cluster(cluster_factory, block_size=4 * MiB)
    mnt = c.mounts[0].mountpoint
    (mnt / "d").mkdir()
    want = write_random(mnt / "d" / "big", 300 * MiB)
    blocks = block_files(c)
    subprocess.run(["rm", str(mnt / "d" / "big")], check=True)
    fsync_dir(mnt / "d")
    assert os.listdir(mnt / "d") == [] and os.listdir(mnt) == ["d"]  # nothing of the trash shows
    other = c.mount("other")
    assert os.listdir(other / "d") == []
    entries = trash_ls(c)
    assert [(e["path"], e["size"]) for e in entries] == [("/d/big", 300 * MiB)]
    assert trash_ls(c, "/elsewhere") == []
    status = json.loads(dfs(c, "status", "--json", check=False).stdout)
    assert status["trash"]["entries"] == 1 and status["trash"]["bytes"] == 300 * MiB
    report = fsck_clean(c)  # the trashed inode is no orphan, its blocks are referenced
    assert report["total_files"] == 0
    assert block_files(c) == blocks  # kept
    r = dfs(c, "trash", "restore", "/d/big")
    assert "restored /d/big" in r.stdout
    assert digest(other / "d" / "big") == want
    assert digest(mnt / "d" / "big") == want
    assert trash_ls(c) == []
    fsck_clean(c)


def test_restore_never_overwrites_and_restores_elsewhere(cluster_factory):
    c = trash_cluster(cluster_factory)
    mnt = c.mounts[0].mountpoint
    (mnt / "f").write_bytes(b"old bytes")
    os.unlink(mnt / "f")
    (mnt / "f").write_bytes(b"new")
    fsync_dir(mnt)
    [e] = trash_ls(c)
    r = dfs(c, "trash", "restore", "/f", check=False)
    assert r.returncode == 1 and "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (mnt / "f").read_bytes() == b"new"
    assert [x["id"] for x in trash_ls(c)] == [e["id"]]  # still there
    (mnt / "sub").mkdir()
    r = dfs(c, "trash", "restore", str(e["id"]), "--to", "/f", check=False)
    assert r.returncode == 1 and (mnt / "f").read_bytes() == b"new"
    dfs(c, "trash", "restore", str(e["id"]), "--to", "/sub")  # an existing directory: into it
    assert (mnt / "sub" / "f").read_bytes() == b"old bytes"
    assert (mnt / "f").read_bytes() == b"new"
    fsck_clean(c)


def test_rename_over_a_file_puts_it_in_the_trash(cluster_factory):
    c = trash_cluster(cluster_factory)
    mnt = c.mounts[0].mountpoint
    (mnt / "a").write_bytes(b"replaced" * 1000)
    (mnt / "b").write_bytes(b"winner")
    os.rename(mnt / "b", mnt / "a")
    with open(mnt / "a", "r+b") as f:  # O_TRUNC is no delete
        f.truncate(0)
    with open(mnt / "a", "wb") as f:
        f.write(b"winner")
    fsync_dir(mnt)
    assert [(e["path"], e["size"]) for e in trash_ls(c)] == [("/a", 8000)]
    dfs(c, "trash", "restore", "/a", "--to", "/a.old")
    assert (mnt / "a.old").read_bytes() == b"replaced" * 1000
    assert (mnt / "a").read_bytes() == b"winner"
    fsck_clean(c)


def test_a_file_removed_while_open_stays_readable_and_restorable(cluster_factory):
    c = trash_cluster(cluster_factory)
    mnt = c.mounts[0].mountpoint
    data = os.urandom(3 * MiB)
    (mnt / "f").write_bytes(data)
    with open(mnt / "f", "rb") as f:
        os.unlink(mnt / "f")
        fsync_dir(mnt)
        assert f.read() == data
        assert len(trash_ls(c)) == 1
    fsck_clean(c)  # closed: still in the trash, not released
    dfs(c, "trash", "restore", "/f")
    assert (mnt / "f").read_bytes() == data
    fsck_clean(c)


def test_expired_entries_lose_their_blocks_and_purge_frees_at_once(cluster_factory):
    c = trash_cluster(cluster_factory, days=1.0)
    mnt = c.mounts[0].mountpoint
    before = block_files(c)
    write_random(mnt / "f", 5 * MiB)
    write_random(mnt / "g", 3 * MiB)
    mine = block_files(c) - before
    assert mine
    os.unlink(mnt / "f")
    os.unlink(mnt / "g")
    fsync_dir(mnt)
    assert len(trash_ls(c)) == 2
    time.sleep(3)
    assert block_files(c) >= mine  # a day has not passed: kept
    r = dfs(c, "trash", "purge", "--older-than", "1h")
    assert "purged 0 entries" in r.stdout
    # a short setting (fractions of a day: 2 s), changed on the live filesystem
    dfs(c, "config", "set", "trash_days", str(2 / 86400))
    wait_for(lambda: trash_ls(c) == [] and not block_files(c) & mine)
    fsck_clean(c)
    dfs(c, "config", "set", "trash_days", "1")
    write_random(mnt / "h", 2 * MiB)
    mine = block_files(c) - before
    os.unlink(mnt / "h")
    fsync_dir(mnt)
    assert len(trash_ls(c)) == 1
    dfs(c, "trash", "purge")
    assert trash_ls(c) == []
    wait_for(lambda: not block_files(c) & mine)


def test_trash_days_0_is_a_plain_delete(cluster_factory):
    c = trash_cluster(cluster_factory, days=0)
    mnt = c.mounts[0].mountpoint
    before = block_files(c)
    write_random(mnt / "f", 3 * MiB)
    mine = block_files(c) - before
    os.unlink(mnt / "f")
    fsync_dir(mnt)
    assert trash_ls(c) == []
    wait_for(lambda: not block_files(c) & mine)
    fsck_clean(c)


def test_mount_killed_during_rm_rf_leaves_every_file_in_tree_or_trash(cluster_factory):
    c = trash_cluster(cluster_factory)
    mnt = c.mounts[0].mountpoint
    n = 0
    for a in range(6):
        d = mnt / "t" / f"d{a}"
        d.mkdir(parents=True)
        for i in range(40):
            (d / f"f{i}").write_bytes(b"x" * (100 + i))
            n += 1
    fsync_dir(mnt)
    rm = subprocess.Popen(["rm", "-rf", str(mnt / "t")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.7)
        c.mounts[0].kill()  # SIGKILL in the middle of the rm -rf
    finally:
        rm.kill()
        rm.wait()
    c.mounts[0].start()
    left = sum(len(files) for _, _, files in os.walk(mnt / "t")) if (mnt / "t").exists() else 0
    trashed = len(trash_ls(c))
    assert left + trashed == n  # each file exactly once: in the tree or in the trash
    report = fsck_clean(c)
    assert report["total_files"] == left
