"""Network partitions (issue 14): one storage node of four in a network namespace of its
own (tests/netns.py), cut off from the mount and the other nodes but not from ZooKeeper,
or from ZooKeeper but not from the mount, while writers copy files through the mount.

What must hold, as with a frozen node (tests/test_slow_node.py): no close or fsync
takes 2 s or more, no closed file is lost or changed, and no block map lists a node
twice; after the link heals every block is back at 3 replicas and fsck is HEALTHY.

The cut node starts first, so it is the repair leader: a leader that still holds its
ZooKeeper session but reaches no node must step down (nodes/leader/reach.py) so that
another repairs while the cut lasts; one that loses its session while it reaches them
all loses the leadership with it. A cut drops packets silently (the link's namespace end goes down),
so established connections see no error and time out, as on a real network.
"""

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfs.config import FsConfig
from dfs.zk import NoNodeError
from tests.harness import Cluster
from tests.netns import NodeNetns, node_netns
from tests.test_ha import View, wait_for
from tests.test_operations import fsck
from tools.local.nodeproc import NodeProcess
from tools.local.zkserver import ZkEnsemble

KiB, MiB = 1 << 10, 1 << 20
# a fast heartbeat, so a leader may step down sooner than by default: a node's record
# goes stale 3.5 s after its last refresh (nodes/leader/reach.py)
NODE_ENV = {"DFS_NODE_HEARTBEAT": "0.5", "DFS_LEADER_STEP_DOWN": "5"}
CLOSE_BOUND = 2.0  # s: the longest close or fsync allowed (issue 14)
DATA_CUT = 20.0  # s the data link stays down
SESSION_TIMEOUT = 10.0  # s: a node's ZooKeeper session (dfs.zk.connect's default)
DEAD_AFTER = 5  # s a node may be gone from nodes/live before the leader re-replicates


class Writers:
    """Threads writing new random files through a mount, timing every fsync and close."""

    def __init__(self, mnt: Path, count: int = 3):
        self.mnt = mnt
        self.count = count
        self.written: dict[str, bytes] = {}
        self.stalls: list[tuple[float, str, float]] = []  # (seconds, "close"/"fsync", when)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._go = threading.Event()  # cleared: writers pause between files
        self._go.set()
        self._idle = [threading.Event() for _ in range(count)]  # set: paused between files
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(count)]
        self.t0 = time.monotonic()

    def _run(self, w: int) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                if not self._go.is_set():
                    self._idle[w].set()
                    self._go.wait()
                    self._idle[w].clear()
                name = f"w{w}-{i}"
                data = os.urandom(1500 * KiB + w * 100 + i)  # two blocks of 1 MiB
                with open(self.mnt / name, "wb") as f:
                    f.write(data)
                    if i % 3 == 2:
                        t = time.monotonic()
                        os.fsync(f.fileno())
                        self.stalls.append((time.monotonic() - t, "fsync", t - self.t0))
                    t = time.monotonic()
                self.stalls.append((time.monotonic() - t, "close", t - self.t0))
                self.written[name] = data
                i += 1
                time.sleep(0.3)
        except BaseException as e:
            self.errors.append(e)

    def start(self) -> None:
        self.t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def pause(self) -> None:
        """Return once every writer has closed its file and waits."""
        self._go.clear()
        for w, idle in enumerate(self._idle):
            assert idle.wait(30) or not self._threads[w].is_alive(), f"writer {w} did not pause"

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._stop.set()
        self._go.set()
        for t in self._threads:
            t.join(60)

    def longest(self) -> tuple[float, str, float]:
        return max(self.stalls)


class MapWatch:
    """A thread reading every block map once a second for the whole test: no map may list
    a node twice for a block at any moment, not only at the end."""

    def __init__(self, hosts: str, paths, key: bytes, interval: float = 1.0):
        self.view = View(hosts, paths, key)
        self.interval = interval
        self.sweeps = 0
        self.twice: list[tuple[int, int, list[str]]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                blocks = self.view.blocks()
            except NoNodeError:  # a map group read as it was listed: next sweep
                continue
            except Exception as e:  # ZooKeeper unreachable: nothing to check this time
                self.errors.append(e)
                continue
            self.sweeps += 1
            self.twice += [(ino, i, r.replicas) for ino, i, r in blocks
                           if len(set(r.replicas)) != len(r.replicas)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.view.close()


def leader(view: View) -> str | None:
    try:
        return view.leader()
    except Exception:  # no election znode yet
        return None


def fully_replicated(view: View, replicas: int) -> dict:
    """ok when every block lists exactly `replicas` nodes, all live (a surplus replica,
    a repair's copy next to a node that came back, is trimmed by the leader)."""
    live = view.live()
    blocks = view.blocks()
    short = [(ino, i, r.replicas) for ino, i, r in blocks
             if len(set(r.replicas)) != replicas or not set(r.replicas) <= live]
    return {"ok": bool(blocks) and not short, "blocks": len(blocks), "short": short[:5]}


def check_maps(view: View, cluster: Cluster) -> int:
    """No map lists a node twice for a block, or lists a node without the block file."""
    data_dirs = {n.node_id: n.data_dir for n in cluster.nodes}
    blocks = view.blocks()
    for ino, i, ref in blocks:
        assert len(set(ref.replicas)) == len(ref.replicas), f"inode {ino} block {i}: {ref.replicas}"
        assert len(ref.replicas) <= cluster.config.replicas, f"inode {ino} block {i}: {ref.replicas}"
        for node_id in ref.replicas:
            path = data_dirs[node_id] / "blocks" / ref.id[:2] / ref.id[2:4] / ref.id
            assert path.exists(), f"inode {ino} block {i} listed on {node_id}, which lacks it"
    return len(blocks)


def blocks_on(view: View, node_id: str) -> int:
    return sum(1 for _ino, _i, ref in view.blocks() if node_id in ref.replicas)


def read_back(mnt: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        got = (mnt / name).read_bytes()
        assert got == data, f"{mnt / name}: {len(got)} bytes differ from the {len(data)} written"


def timed_reads(mnt: Path, files: dict[str, bytes]) -> list[float]:
    out = []
    for name, data in files.items():
        t = time.monotonic()
        assert (mnt / name).read_bytes() == data
        out.append(time.monotonic() - t)
    return out


def report_stalls(what: str, writers: Writers) -> float:
    secs, kind, when = writers.longest()
    print(f"{what}: {len(writers.written)} files, {len(writers.stalls)} closes+fsyncs, "
          f"longest {kind} {secs:.3f} s at t={when:.1f} s")
    return secs


@dataclass
class Partitioned:
    cluster: Cluster
    net: NodeNetns
    cut: NodeProcess  # the node in the namespace
    view: View
    watch: MapWatch

    def after_healing(self, writers: Writers, reads: list[float], before: dict[str, bytes],
                      healed: float) -> None:
        """What both directions must show once the link is back: no stall past the bound,
        every block at 3 replicas, the maps right, every byte back, fsck HEALTHY."""
        longest = report_stalls("writers", writers)
        assert longest < CLOSE_BOUND
        assert max(reads) < CLOSE_BOUND
        assert len(writers.written) >= 30
        view, c = self.view, self.cluster
        h = wait_for("every block at 3 live replicas", lambda: fully_replicated(view, 3), 45, 0.5)
        print(f"{h['blocks']} blocks at 3 replicas {time.monotonic() - healed:.1f} s after healing")
        files = {**before, **writers.written}
        print(f"maps checked: {check_maps(view, c)} blocks, no node twice, every replica on disk")
        read_back(c.mounts[0].mountpoint, files)
        read_back(c.mount("after"), files)
        fsck(c)
        self.check_watch()

    def check_watch(self) -> None:
        self.watch.stop()
        print(f"map sweeps during the test: {self.watch.sweeps}, a node twice in one: "
              f"{len(self.watch.twice)}")
        assert not self.watch.twice, self.watch.twice[:5]
        assert self.watch.sweeps >= 10, self.watch.errors[:3]


@pytest.fixture
def partitioned(tmp_path, request):
    """ZooKeeper on the host end of the meta link, the cut node in the namespace (started
    first: the repair leader), three nodes on the host end of the data link, one mount."""
    with node_netns() as net:
        zk = ZkEnsemble(tmp_path / "zk", servers=1, host=net.meta.host_ip)
        c = Cluster(zk.hosts, tmp_path / "c", FsConfig(block_size=MiB, replicas=3, min_replicas=2,
                                                       dead_after=DEAD_AFTER))
        view = watch = None
        try:
            zk.start()
            c.base.mkdir()
            c.mkfs()
            cut = c.add_node(env=NODE_ENV, listen=f"{net.data.ns_ip}:0", netns=net.name)
            view = View(zk.hosts, c.paths, c.key)
            wait_for("the namespaced node to lead", lambda: leader(view) == cut.node_id, 15)
            for _ in range(3):
                c.add_node(env=NODE_ENV, listen=f"{net.data.host_ip}:0")
            wait_for("4 live nodes", lambda: len(view.live()) == 4, 15)
            c.mount()
            watch = MapWatch(zk.hosts, c.paths, c.key)
            yield Partitioned(c, net, cut, view, watch)
        finally:
            rep = getattr(request.node, "rep_call", None)  # conftest.pytest_runtest_makereport
            if rep is None or rep.failed:
                print(f"\n==== logs of cluster {c.fsname} ====\n{c.logs()}\n{zk.log_tail(lines=20)}")
            if watch is not None:
                watch.stop()
            if view is not None:
                view.close()
            c.close()
            zk.stop()


def write_before(mnt: Path, view: View, node_id: str) -> dict[str, bytes]:
    """Files written before the cut, some blocks of them on the node about to be cut off."""
    before = {f"old{i}": os.urandom(1500 * KiB + i) for i in range(4)}
    for name, data in before.items():
        (mnt / name).write_bytes(data)
    assert blocks_on(view, node_id) > 0
    return before


@pytest.mark.slow
def test_node_cut_off_from_mount_and_nodes_but_not_from_zookeeper(partitioned):
    p = partitioned
    c, net, cut, view = p.cluster, p.net, p.cut, p.view
    mnt = c.mounts[0].mountpoint
    before = write_before(mnt, view, cut.node_id)
    writers = Writers(mnt)
    writers.start()
    try:
        time.sleep(2)
        net.cut(net.data)
        cut_at = time.monotonic()
        try:
            # a fresh mount reads blocks with a replica on the cut node (still live)
            fresh = c.mount("fresh")
            reads = timed_reads(fresh, before)
            # the leader reaches no node: it steps down, and the node that takes over
            # brings what was written short (2 copies, the cut node missed) to 3
            # on the nodes it reaches, before the link is back
            wait_for("another repair leader", lambda: leader(view) not in (None, cut.node_id),
                     DATA_CUT, 0.2)
            new = leader(view)
            moved = time.monotonic()
            writers.pause()
            wait_for("every block at 3 live replicas during the cut",
                     lambda: fully_replicated(view, 3), max(5.0, cut_at + DATA_CUT - time.monotonic()),
                     0.5)
            repaired = time.monotonic()
            writers.resume()
            time.sleep(max(0.0, cut_at + DATA_CUT - time.monotonic()))
            assert cut.node_id in view.live(), "the cut node lost ZooKeeper too"
            assert leader(view) == new, "the leadership went back to the cut node"
        finally:
            writers.resume()
            net.heal(net.data)
        healed = time.monotonic()
        time.sleep(3)  # writes across the healing
    finally:
        writers.stop()
    assert not writers.errors, writers.errors
    print(f"leader {new} took over {moved - cut_at:.1f} s after the cut; every block was at 3 "
          f"copies {repaired - cut_at:.1f} s after the cut")
    print(f"data link down {healed - cut_at:.1f} s; first reads through a fresh mount: "
          + ", ".join(f"{r:.2f}" for r in reads) + " s")
    p.after_healing(writers, reads, before, healed)


@pytest.mark.slow
def test_node_cut_off_from_zookeeper_but_not_from_mount(partitioned):
    p = partitioned
    c, net, cut, view = p.cluster, p.net, p.cut, p.view
    mnt = c.mounts[0].mountpoint
    before = write_before(mnt, view, cut.node_id)
    writers = Writers(mnt)
    writers.start()
    try:
        time.sleep(2)
        net.cut(net.meta)
        cut_at = time.monotonic()
        try:
            wait_for("the cut node's live znode to go", lambda: cut.node_id not in view.live(),
                     SESSION_TIMEOUT + 10, 0.1)
            gone = time.monotonic()
            # past dead_after: the new leader re-replicates what the cut node holds,
            # while the node itself still serves (its blocks stay in the maps meanwhile)
            fresh = c.mount("fresh")
            reads = timed_reads(fresh, before)
            time.sleep(max(0.0, gone + DEAD_AFTER + 3 - time.monotonic()))
            assert leader(view) != cut.node_id
        finally:
            net.heal(net.meta)
        healed = time.monotonic()
        wait_for("the cut node's live znode to come back", lambda: cut.node_id in view.live(), 30, 0.1)
        back = time.monotonic()
        time.sleep(2)  # writes across the return
    finally:
        writers.stop()
    assert not writers.errors, writers.errors
    print(f"meta link down {healed - cut_at:.1f} s; live znode gone {gone - cut_at:.1f} s after the cut,"
          f" back {back - healed:.1f} s after healing; first reads through a fresh mount: "
          + ", ".join(f"{r:.2f}" for r in reads) + " s")
    p.after_healing(writers, reads, before, healed)
