"""Per-directory replication (issue 16 part 4): `dfs setrep PATH N [-r]` on a real cluster of
3 nodes and a real mount. Replicas are counted both in the block maps (ZooKeeper) and as block
files on the nodes' disks."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from dfs.records import InodeRecord
from tests.test_fsck import fsck
from tests.test_ha import MiB, View, config, start_cluster, wait_for

REPO = Path(__file__).resolve().parent.parent


def setrep(c, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", "setrep", "--zk", c.hosts, "--fs", c.fsname,
                           *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


def on_disk(c, block_id: str) -> int:
    """Nodes holding a block file for `block_id`."""
    return sum((n.data_dir / "blocks" / block_id[:2] / block_id[2:4] / block_id).exists() for n in c.nodes)


def copies(view: View, c, mnt: Path, names: list[str]) -> dict[str, set[tuple[int, int]]]:
    """name -> {(replicas in its map, block files on the nodes)} over its blocks."""
    by_ino = {}
    for ino, _index, ref in view.blocks():
        by_ino.setdefault(ino, set()).add((len(ref.replicas), on_disk(c, ref.id)))
    return {name: by_ino.get(os.stat(mnt / name).st_ino, set()) for name in names}


def own(view: View, mnt: Path, name: str) -> int:
    """The inode's own replica count as stored (0: the filesystem's)."""
    data, _ = view.zk.get(view.paths.inode(os.stat(mnt / name).st_ino))
    return InodeRecord.decode(data).replicas


@contextlib.contextmanager
def three_nodes(cluster_factory):
    """A cluster of 3 nodes (3 replicas), mounted: (cluster, mountpoint, View)."""
    c = start_cluster(cluster_factory, config(), 3)
    view = View(c.hosts, c.paths, c.key)
    try:
        yield c, c.mounts[0].mountpoint, view
    finally:
        view.close()


def settled(view, c, mnt, want: dict[str, int]):
    got = copies(view, c, mnt, list(want))
    return {"ok": all(got[n] == {(k, k)} for n, k in want.items()), "got": got}


def test_setrep_on_a_directory_sets_its_files_and_new_ones(cluster_factory, tmp_path):
    """setrep 2 -r on a directory: its files (also in a subdirectory) end with 2 replicas in the
    maps and on the nodes, the other files keep 3; files made in it later get 2; setrep 3 back
    adds the copies again. Bad counts are one clear error line, exit 2, and change nothing.
    fsck is HEALTHY at every settled point, and the bytes never change."""
    with three_nodes(cluster_factory) as (c, mnt, view):
        (mnt / "two" / "sub").mkdir(parents=True)
        data = {"two/a": write(mnt / "two/a", 3 * MiB), "two/sub/b": write(mnt / "two/sub/b", 2 * MiB),
                "other": write(mnt / "other", 2 * MiB)}
        three = {n: 3 for n in data}
        wait_for("3 copies of every block", lambda: settled(view, c, mnt, three), 60)

        for bad in ("0", "4", "11", "-1"):
            r = setrep(c, "/two", bad, "-r")
            assert r.returncode == 2, (bad, r.stdout, r.stderr)
            assert len(r.stderr.splitlines()) == 1 and "replicas must be 1..3" in r.stderr, r.stderr
        r = setrep(c, "/nothing-here", "2")
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert own(view, mnt, "two") == 0 and own(view, mnt, "two/a") == 0

        r = setrep(c, "/two", "2", "-r")
        assert r.returncode == 0, r.stderr
        assert own(view, mnt, "two") == 2 and own(view, mnt, "two/sub") == 2
        assert own(view, mnt, "other") == 0
        data["two/new"] = write(mnt / "two/new", 2 * MiB)  # inherits 2
        (mnt / "two/newdir").mkdir()
        data["two/newdir/c"] = write(mnt / "two/newdir/c", MiB)  # and passes it on
        assert own(view, mnt, "two/new") == 2 and own(view, mnt, "two/newdir/c") == 2
        # written with 2 copies (not written with 3 and trimmed later)
        assert {k for k, _ in copies(view, c, mnt, ["two/new"])["two/new"]} == {2}
        want = {"two/a": 2, "two/sub/b": 2, "two/new": 2, "two/newdir/c": 2, "other": 3}
        wait_for("2 copies below /two, 3 elsewhere", lambda: settled(view, c, mnt, want), 60)
        rc, rep = fsck(c)
        assert rc == 0, rep["problems"]
        for name, content in data.items():
            assert (mnt / name).read_bytes() == content, name

        r = setrep(c, "/two", "3", "-r")
        assert r.returncode == 0, r.stderr
        assert own(view, mnt, "two/a") == 0  # the filesystem's count: stored as nothing
        wait_for("3 copies again", lambda: settled(view, c, mnt, {n: 3 for n in want}), 60)
        rc, rep = fsck(c)
        assert rc == 0, rep["problems"]
        for name, content in data.items():
            assert (mnt / name).read_bytes() == content, name


def test_setrep_without_r_leaves_existing_files(cluster_factory, tmp_path):
    """Without -r only what is created afterwards gets the new count; setrep on a file sets it."""
    with three_nodes(cluster_factory) as (c, mnt, view):
        (mnt / "d").mkdir()
        write(mnt / "d/old", MiB)
        write(mnt / "f", MiB)
        assert setrep(c, "/d", "1").returncode == 0
        write(mnt / "d/new", MiB)
        assert setrep(c, "/f", "2").returncode == 0
        want = {"d/old": 3, "d/new": 1, "f": 2}
        wait_for("each file at its own count", lambda: settled(view, c, mnt, want), 60)
        rc, rep = fsck(c)
        assert rc == 0, rep["problems"]
        for name, k in want.items():  # dfs why tells each file's own target
            r = subprocess.run([sys.executable, "-m", "tools.cli", "why", "--zk", c.hosts, "--fs", c.fsname,
                                "--json", f"/{name}"], cwd=REPO, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            assert doc["wanted_replicas"] == k and doc["own_replicas"] == (k != 3), doc
            assert all(b["counting_replicas"] == k for b in doc["blocks"]), doc


def test_mount_sigkilled_while_writing_into_a_setrep_directory(cluster_factory, tmp_path):
    """A mount SIGKILLed while it creates and writes files in a directory set to 2 (and setrep
    -r running on it meanwhile): every file that exists has the directory's count, and once the
    leader caught up fsck is HEALTHY and every block has exactly 2 copies."""
    with three_nodes(cluster_factory) as (c, mnt, view):
        (mnt / "d").mkdir()
        for k in range(4):
            write(mnt / f"d/before{k}", MiB)
        assert setrep(c, "/d", "2").returncode == 0
        writer = subprocess.Popen([sys.executable, "-c", (
            "import os, sys\n"
            "k = 0\n"
            "while True:\n"
            "    with open(os.path.join(sys.argv[1], f'w{k}'), 'wb') as f:\n"
            "        f.write(os.urandom(1 << 20 | 12345))\n"
            "    k += 1\n"), str(mnt / "d")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for("the writer's first files", lambda: len(os.listdir(mnt / "d")) > 8, 60)
            r = setrep(c, "/d", "2", "-r")
            assert r.returncode == 0, r.stderr
            c.mounts[0].kill()  # SIGKILL the FUSE daemon mid-write
        finally:
            writer.kill()
            writer.wait()
        c.mounts[0].start()
        names = sorted(os.listdir(mnt / "d"))
        assert {f"before{k}" for k in range(4)} <= set(names)
        assert all(own(view, mnt, f"d/{n}") == 2 for n in names)

        def two():
            blocks = view.blocks()
            odd = [(ino, i, r.replicas) for ino, i, r in blocks
                   if len(r.replicas) != 2 or on_disk(c, r.id) != 2]
            return {"ok": blocks and not odd, "odd": odd[:5]}
        wait_for("every block at 2 copies", two, 90)
        rc, rep = fsck(c)
        assert rc == 0, rep["problems"]


def test_a_file_without_its_own_count_costs_no_byte():
    """The count is a compact field left out at 0: records without it are as before, and
    records of revision 2 (which had no such field) decode with it 0."""
    rec = InodeRecord(mode=0o100644, atime_ns=5, mtime_ns=5, ctime_ns=5, size=10, stored=10)
    before = rec.encode()
    assert b'"k"' not in before
    assert InodeRecord.decode(b'{"m":33188,"s":10,"t":5,"b":10}') == rec
    rec.replicas = 2
    assert len(rec.encode()) == len(before) + len(',"k":2')
    assert InodeRecord.decode(rec.encode()).replicas == 2
