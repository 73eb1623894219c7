"""Disks full under a mount: the writer gets ENOSPC, nothing else is lost, the mount keeps serving."""

import errno
import os
import subprocess

import pytest

from dfs.config import FsConfig

BS = 1 << 20


@pytest.fixture
def small_disks(cluster_factory, tmp_path):
    """A cluster whose 3 nodes each have a 24 MiB tmpfs data dir."""
    c = cluster_factory(FsConfig(block_size=BS, replicas=3, min_replicas=2), nodes=0)
    mounted = []
    try:
        for i in range(3):
            d = c.base / f"node{i + 1}"
            d.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(d)], check=True)
            mounted.append(d)
            c.add_node()
        c.mount()
        yield c
    finally:
        c.close()  # stop the nodes before their disks go away
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)], check=False)


def test_enospc_reaches_the_writer_and_nothing_else_breaks(small_disks):
    mnt = small_disks.mounts[0].mountpoint
    keep = os.urandom(3 * BS)
    (mnt / "keep").write_bytes(keep)
    with pytest.raises(OSError) as e:
        with open(mnt / "huge", "wb") as f:
            for _ in range(64):  # 64 MiB into 24 MiB disks
                f.write(os.urandom(BS))
    assert e.value.errno == errno.ENOSPC
    assert (mnt / "keep").read_bytes() == keep  # what was there is intact
    (mnt / "huge").unlink()
    # the mount still serves: new small files work once space is back (gc frees it)
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            (mnt / "after").write_bytes(b"ok")
            break
        except OSError as err:
            if err.errno != errno.ENOSPC or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert (mnt / "after").read_bytes() == b"ok"
    # the failed file left nothing behind: no inode held open, no block map
    import trio

    from dfs.zk import connect

    async def leftovers() -> tuple[list, list]:
        zk = await connect(small_disks.hosts)
        zk.authenticate(small_disks.key, small_disks.paths.root)
        try:
            return (await zk.get_children(small_disks.paths.open),
                    await zk.get_children(small_disks.paths.blocks))
        finally:
            await zk.close()

    held, maps = trio.run(leftovers)
    assert held == [] and len(maps) == 2  # keep and after
