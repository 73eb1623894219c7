"""Space comes back promptly, without risk (issue 14): the blocks of a mount that died
before committing them, and the copies a node still holds of blocks deleted, overwritten
or re-replicated while it was down, go within seconds of the event, not after
`orphan_age` (an hour here, as by default). Real nodes, real mounts.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfs.config import FsConfig
from tests.test_ha import MiB, View, data_bytes, node_by_id, wait_for, wait_healthy
from tests.test_metrics import status_json

REPO = Path(__file__).resolve().parents[1]
# heartbeat as test_ha; stale copies (listed on other nodes only) wait 5 s, not 60
NODE_ENV = {"DFS_NODE_HEARTBEAT": "0.5", "DFS_STALE_REPLICA_AGE": "5"}


def fsck(c, *args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "fsck", "--zk", c.hosts, "--fs", c.fsname,
                        "--json", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout)


def cluster(cluster_factory, nodes: int):
    # orphan_age is an hour (the default): only the writer records can explain a prompt collection
    c = cluster_factory(config=FsConfig(block_size=MiB, replicas=3, min_replicas=2, dead_after=3),
                        nodes=0)
    for _ in range(nodes):
        c.add_node(env=NODE_ENV)
    return c


def write(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(size))


def test_a_killed_mounts_uncommitted_blocks_go_within_seconds(cluster_factory):
    c = cluster(cluster_factory, 3)
    mnt = Path(c.mount())
    write(mnt / "kept", 3 * MiB)
    kept = (mnt / "kept").read_bytes()
    committed = data_bytes(c)
    assert committed >= 9 * MiB

    # 24 MiB uploaded as the buffers fill, never committed: the writer dies holding them
    f = open(mnt / "lost", "wb")
    try:
        for _ in range(24):
            f.write(os.urandom(MiB))
        f.flush()
        wait_for("the uploads to land on the nodes", lambda: data_bytes(c) >= committed + 3 * 20 * MiB, 60)
        t0 = time.monotonic()
        c.mounts[0].kill()
    finally:
        try:
            f.close()
        except OSError:
            pass  # the mount is gone
    wait_for("the dead mount's blocks to be collected", lambda: data_bytes(c) <= committed, 60, interval=0.5)
    took = time.monotonic() - t0
    print(f"\n{(committed + 72 * MiB) / MiB:.0f} -> {committed / MiB:.0f} MiB of replicas {took:.1f} s "
          "after the mount's SIGKILL (its session timeout is 10 s)")
    # the committed file is untouched
    mnt2 = Path(c.mount("mnt2"))
    assert (mnt2 / "kept").read_bytes() == kept
    assert not (mnt2 / "lost").exists() or (mnt2 / "lost").stat().st_size < 24 * MiB
    rc, rep = fsck(c)
    assert rc == 0 and rep["status"] == "HEALTHY", rep["problems"]


def test_a_node_that_comes_back_drops_what_changed_while_it_was_down(cluster_factory, tmp_path):
    c = cluster(cluster_factory, 4)
    mnt = Path(c.mount())
    for k in range(8):
        write(mnt / f"f{k}", 2 * MiB)
    view = View(c.hosts, c.paths, c.key)
    try:
        wait_healthy(view, 3, 30)
        victim = node_by_id(c, view.blocks()[0][2].replicas[0])
        victim.kill()
        # while it is down: deletes, overwrites, new files; the leader re-replicates
        for k in range(3):
            os.unlink(mnt / f"f{k}")
        for k in range(3, 5):
            write(mnt / f"f{k}", 2 * MiB)
        for k in range(8, 10):
            write(mnt / f"f{k}", 2 * MiB)
        wait_for("the victim to leave nodes/live", lambda: victim.node_id not in view.live(), 30)
        wait_healthy(view, 3, 90)
        victim.start()
        t0 = time.monotonic()
        referenced = sum((mnt / f"f{k}").stat().st_size for k in range(3, 10)) * 3

        def clean():
            rc, rep = fsck(c, "--orphan-age", "0")  # any unreferenced copy counts
            stored = data_bytes(c)
            return {"ok": rc == 0 and rep["orphan_blocks"] == 0 and stored <= referenced * 1.1,
                    "rc": rc, "orphans": rep["orphan_blocks"], "stored": stored, "referenced": referenced,
                    "problems": rep["problems"][:5]}
        got = wait_for("the returned node's stale copies to go", clean, 120, interval=1)
        print(f"\nno orphan, stored {got['stored'] / MiB:.0f} MiB for {referenced / MiB:.0f} MiB "
              f"referenced x 3, {time.monotonic() - t0:.1f} s after the node came back")
        for k in range(3, 10):
            assert (mnt / f"f{k}").stat().st_size == 2 * MiB
        # dfs status says the same: what the maps name, and what the nodes hold
        space = wait_for("dfs status to show the stored bytes down to the referenced", lambda: (
            lambda sp: {**sp, "ok": sp["stored_bytes"] is not None
                        and sp["stored_bytes"] <= sp["referenced_bytes"] * 1.1})(status_json(c)["space"]),
            30, interval=1)
        assert space["referenced_bytes"] == referenced
    finally:
        view.close()


@pytest.mark.parametrize("cache_mb", [1024, 0])
def test_a_mount_whose_session_expired_writes_its_uncommitted_blocks_again(cluster_factory, cache_mb):
    """The mount freezes (SIGSTOP) for longer than its session timeout while 6 MiB of an open
    file are uploaded but not committed: its writer record goes, and the leader collects those
    blocks. close() after it thaws still succeeds, with the file's bytes exact: the mount
    writes the blocks again from its cache under its new record, instead of failing with EIO.
    With no block cache the bytes are nowhere any more: close() fails with EIO and the file
    keeps what it had (nothing, here), never a block of zeros or of someone else."""
    c = cluster(cluster_factory, 3)
    mnt = Path(c.mount(options=[f"cache_mb={cache_mb}"]))
    expected = os.urandom(6 * MiB + 12345)
    f = open(mnt / "f", "wb", buffering=0)
    closed = None
    try:
        f.write(expected)  # six full blocks upload in the background
        wait_for("the uploads to land on the nodes", lambda: data_bytes(c) >= 3 * 6 * MiB, 60)
        pid = c.mounts[0].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            # the session times out (10 s) and the leader takes the dead writer's blocks
            wait_for("the frozen mount's blocks to be collected", lambda: data_bytes(c) == 0, 60,
                     interval=0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        try:
            f.close()
        except OSError as e:
            closed = e.errno
    log = c.mounts[0].log_path.read_text()
    other = Path(c.mount("other"))
    if cache_mb:
        assert closed is None, f"close failed: {errno.errorcode.get(closed, closed)}"
        assert "writing them again" in log, "the session did not expire: the test missed its point"
        assert (other / "f").read_bytes() == expected
    else:
        assert closed == errno.EIO, closed
        assert "not cached" in log, log[-2000:]
        assert (other / "f").read_bytes() == b""
    rc, rep = fsck(c, "--orphan-age", "0")
    assert rc == 0 and rep["status"] == "HEALTHY", rep["problems"]
