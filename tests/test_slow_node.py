"""A frozen storage node (SIGSTOP) under a real mount: writes finish at min_replicas,
reads ask another replica, and the repair leader brings the short blocks to 3 copies."""

import os
import signal
import threading
import time

import trio

from dfs.maint.scan import block_groups
from dfs.zk import connect

KiB = 1 << 10
STOPPED = 20.0  # s the node stays frozen (issue 14)


async def short_blocks(cluster) -> int:
    """Blocks whose map lists fewer than `replicas` nodes."""
    zk = await connect(cluster.hosts)
    zk.authenticate(cluster.key, cluster.paths.root)
    try:
        return sum([len(ref.replicas) < cluster.config.replicas
                    async for _ino, _g, grp, _st in block_groups(zk, cluster.paths)
                    for ref in grp.blocks.values()])
    finally:
        await zk.close()


def test_frozen_node_stalls_no_close_and_no_first_read(cluster):
    mnt = cluster.mounts[0].mountpoint
    before = {f"old{i}": os.urandom(1500 * KiB + i) for i in range(4)}
    for name, data in before.items():
        (mnt / name).write_bytes(data)  # 3 copies each, one on the node that freezes
    written: dict[str, bytes] = {}
    closes: list[float] = []
    errors: list[BaseException] = []

    def writer(w: int, until: float) -> None:
        i = 0
        try:
            while time.monotonic() < until:
                data = os.urandom(1500 * KiB + w * 100 + i)
                with open(mnt / f"w{w}-{i}", "wb") as f:
                    f.write(data)
                    t = time.monotonic()
                closes.append(time.monotonic() - t)
                written[f"w{w}-{i}"] = data
                i += 1
                time.sleep(0.3)
        except BaseException as e:
            errors.append(e)

    frozen = cluster.nodes[0]
    frozen.signal(signal.SIGSTOP)
    try:
        until = time.monotonic() + STOPPED
        writers = [threading.Thread(target=writer, args=(w, until)) for w in range(3)]
        for t in writers:
            t.start()
        # a fresh mount reads what has a replica on the frozen node (still "live" in ZooKeeper)
        fresh = cluster.mount("fresh")
        reads = []
        for name, data in before.items():
            t = time.monotonic()
            assert (fresh / name).read_bytes() == data
            reads.append(time.monotonic() - t)
        for t in writers:
            t.join()
    finally:
        frozen.signal(signal.SIGCONT)
    assert not errors, errors
    print(f"closes: {len(closes)}, longest {max(closes):.2f} s; first reads: "
          + ", ".join(f"{r:.2f}" for r in reads) + " s")
    assert max(closes) < 2.0
    assert max(reads) < 2.0
    assert len(written) >= 30
    thawed = time.monotonic()
    while trio.run(short_blocks, cluster):
        assert time.monotonic() - thawed < 40, "short blocks not repaired in 40 s"
        time.sleep(0.5)
    print(f"every block at 3 copies {time.monotonic() - thawed:.1f} s after SIGCONT")
    for name, data in {**before, **written}.items():
        assert (fresh / name).read_bytes() == data


def test_blocks_written_short_are_repaired_without_waiting_for_a_scan(cluster):
    """A freeze shorter than the node's session: nothing tells the leader but the
    writers' hints, and the periodic scan is a minute away."""
    mnt = cluster.mounts[0].mountpoint
    (mnt / "warm").write_bytes(b"x" * 5000)  # connections to every node are open
    files = {f"f{i}": os.urandom(1500 * KiB + i) for i in range(3)}
    frozen = cluster.nodes[1]
    frozen.signal(signal.SIGSTOP)
    try:
        for name, data in files.items():
            (mnt / name).write_bytes(data)
        assert trio.run(short_blocks, cluster) > 0
    finally:
        frozen.signal(signal.SIGCONT)
    thawed = time.monotonic()
    while trio.run(short_blocks, cluster):
        assert time.monotonic() - thawed < 20, "short blocks not repaired in 20 s"
        time.sleep(0.5)
    print(f"every block at 3 copies {time.monotonic() - thawed:.1f} s after SIGCONT")
    for name, data in files.items():
        assert (mnt / name).read_bytes() == data
