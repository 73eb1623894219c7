"""Faults under a real mount: a storage node dies mid-read, the mount dies mid-write."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import trio

from dfs.meta import Meta
from dfs.mkfs import load_config
from dfs.paths import ROOT_INO
from dfs.zk import connect

BS = 1 << 20


def test_node_killed_during_read(cluster, tmp_path):
    mnt = cluster.mounts[0].mountpoint
    data = os.urandom(64 * BS)
    src = tmp_path / "src"
    src.write_bytes(data)
    subprocess.run(["cp", str(src), str(mnt / "f")], check=True)
    # a fresh mount so nothing is cached in the client
    cluster.mounts[0].stop()
    cluster.mounts[0].start()
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    victim = cluster.nodes[0]
    got = bytearray()
    with open(mnt / "f", "rb") as h:
        got += h.read(4 * BS)
        victim.kill()  # SIGKILL while the read is under way
        while True:
            chunk = h.read(BS)
            if not chunk:
                break
            got += chunk
    assert bytes(got) == data


def test_mount_killed_while_writing(cluster):
    mnt = cluster.mounts[0].mountpoint
    safe = {f"safe{i}": os.urandom(BS // 2 + i) for i in range(5)}
    for name, d in safe.items():
        (mnt / name).write_bytes(d)  # closed before the crash
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import os,sys\n"
         "i=0\n"
         "while True:\n"
         "    with open(os.path.join(sys.argv[1], f'w{i}'), 'wb') as f:\n"
         "        for _ in range(8): f.write(os.urandom(1 << 19))\n"
         "    i+=1\n", str(mnt)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        cluster.mounts[0].kill()  # SIGKILL the FUSE daemon mid-write
    finally:
        writer.kill()
        writer.wait()
    cluster.mounts[0].start()
    for name, d in safe.items():
        assert (mnt / name).read_bytes() == d
    # every entry is readable: no dirent points to missing data
    for name in os.listdir(mnt):
        (mnt / name).read_bytes()
    problems = trio.run(check_block_refs, cluster)
    assert problems == []


def test_attributes_tar_sets_survive_a_mount_killed_after_it(cluster, tmp_path):
    """tar -x sets mode, owner and times on each file it writes, on the open descriptor
    (they are committed with the file's data at close): once tar has returned, a
    SIGKILL of the mount loses none of them, and another mount sees them all."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    want = {}
    for i, (mode, size) in enumerate([(0o600, 0), (0o755, 10), (0o640, 3000), (0o444, BS + 77),
                                      (0o700, 5), (0o4755, 40)]):
        path = src / ("sub" if i % 2 else "") / f"f{i}"
        path.write_bytes(os.urandom(size))
        os.chmod(path, mode)
        if os.geteuid() == 0:  # tar run by root restores owners too
            os.chown(path, 1000 + i, 2000 + i)
        os.utime(path, (1_500_000_000 + i, 1_400_000_000 + i * 1000))  # (tar keeps whole seconds)
        st = path.stat()
        want[str(path.relative_to(src))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                                            path.read_bytes())
    subprocess.run(["tar", "-C", str(src), "-cf", str(tmp_path / "t.tar"), "."], check=True)
    mnt = cluster.mounts[0].mountpoint
    (mnt / "x").mkdir()
    subprocess.run(["tar", "-C", str(mnt / "x"), "-xf", str(tmp_path / "t.tar")], check=True)
    cluster.mounts[0].kill()  # right after tar returned
    other = cluster.mount("other")
    cluster.mounts[0].start()
    for m in (other, mnt):
        for rel, (mode, uid, gid, mtime, data) in want.items():
            st = (m / "x" / rel).stat()
            assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (mode, uid, gid, mtime), (m, rel)
            assert (m / "x" / rel).read_bytes() == data


def test_attribute_changes_fsyncdir_covered_survive_a_mount_kill(cluster):
    """chmod and touch -d are answered at once and committed in the background; what a
    fsyncdir covered survives a SIGKILL of the mount just after it, and another
    mount sees every change by itself."""
    mnt = cluster.mounts[0].mountpoint
    (mnt / "d").mkdir()
    names = [f"f{i}" for i in range(200)]
    for n in names:
        (mnt / "d" / n).write_bytes(n.encode())
    other = cluster.mount("other")
    for i, n in enumerate(names):
        os.chmod(mnt / "d" / n, 0o600 + i % 8)
        os.utime(mnt / "d" / n, ns=(1_000_000_000_000_000_000 + i, 1_100_000_000_000_000_000 + i))
    os.chmod(mnt / "d", 0o711)
    fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # fsyncdir
    finally:
        os.close(fd)
    cluster.mounts[0].kill()
    deadline = time.monotonic() + 30
    for m in (other, cluster.mount("after")):
        assert stat.S_IMODE((m / "d").stat().st_mode) == 0o711
        for i, n in enumerate(names):
            while True:  # (the other mount: until the change feed has told it)
                st = (m / "d" / n).stat()
                got = (stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns)
                if got == (0o600 + i % 8, 1_000_000_000_000_000_000 + i, 1_100_000_000_000_000_000 + i) \
                        or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert got == (0o600 + i % 8, 1_000_000_000_000_000_000 + i, 1_100_000_000_000_000_000 + i), n


async def check_block_refs(cluster) -> list[str]:
    """Every block a file references exists, with its checksum, on each replica named."""
    from dfs.blocks.client import BlockClient
    from dfs.blocks.nodedir import NodeDirectory

    zk = await connect(cluster.hosts)
    zk.authenticate(cluster.key, cluster.paths.root)
    problems = []
    try:
        config = await load_config(zk, cluster.paths)
        meta = Meta(zk, cluster.paths, config)
        nodedir = NodeDirectory(zk, cluster.paths)
        await nodedir.refresh()
        blocks = BlockClient(nodedir, key=cluster.key)
        try:
            for name, ent, node in await meta.readdir(ROOT_INO, with_attrs=True):
                if not node.rec.is_reg:
                    continue
                for index, ref in (await meta.blockmap.read_block_map(ent.ino)).items():
                    assert index * config.block_size < node.rec.size or ref.length == 0
                    for node_id in ref.replicas:
                        info = await blocks.stat_block(node_id, ref.id)
                        if info.get("checksum") not in (None, ref.checksum):
                            problems.append(f"{name!r} block {index}: checksum differs on {node_id}")
        except Exception as e:
            problems.append(f"{type(e).__name__}: {e}")
        finally:
            await blocks.aclose()
    finally:
        await zk.close()
    return problems


def test_bench_window_kills_its_own_mount_and_counts_what_came_back(cluster):
    """`dfs bench --window`: on a mount of its own, unlinks and chmods under load, SIGKILL,
    then a fresh mount counts what did not land; it leaves no mount or file behind, and
    the filesystem's own mount never notices."""
    mnt = cluster.mounts[0].mountpoint
    (mnt / "keep").write_bytes(b"k")
    out = subprocess.run([sys.executable, "-m", "tools.cli", "bench", "--window", "--json", "--files", "200",
                          "-w", "2", "--zk", cluster.hosts, "--fs", cluster.fsname, str(mnt)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    print(rows)
    assert [r["kind"] for r in rows] == ["unlink", "chmod+utime"]
    assert all(0 <= r["lost"] <= r["files"] == 200 and r["ms_per_call"] > 0 for r in rows)
    assert [p.name for p in mnt.iterdir()] == ["keep"]
    with open("/proc/self/mounts") as f:
        assert "dfs-window" not in f.read()


def test_sigusr1_logs_the_task_tree_and_the_mount_keeps_serving(cluster):
    """A mount that hangs shows nothing in its log: SIGUSR1 makes it log what each of its
    trio tasks waits on (mount/tasks.py), and it goes on serving."""
    m = cluster.mounts[0]
    (m.mountpoint / "before").write_bytes(b"1")
    os.kill(m.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "task tree (SIGUSR1)" not in m.log_path.read_text():
        assert time.monotonic() < deadline, m.log_tail()
        time.sleep(0.05)
    tree = m.log_path.read_text().split("task tree (SIGUSR1):", 1)[1]
    assert "dfs.client.feed.Feed.run: " in tree and "dfs/client/feed.py:" in tree, tree[:3000]
    (m.mountpoint / "after").write_bytes(b"2")
    assert sorted(os.listdir(m.mountpoint)) == ["after", "before"]
