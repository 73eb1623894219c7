"""Operator's view (issue 15): Prometheus endpoints of nodes and mounts, the background
scrub finding and replacing a damaged replica nobody reads, scrub coverage in
`dfs status`, and `dfs status --watch` until SIGINT.

One cluster for all of it (3 nodes, replicas 3, a scrub period of 3 s at a high
rate): the scenario is short, and a second cluster would double the cost.
"""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from nodes.store import header_size
from tests.harness import client_session
from tools.local.zkserver import free_port
from tools.status import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRUB_ENV = {"DFS_SCRUB_RATE": "500", "DFS_SCRUB_PERIOD": "3", "DFS_NODE_HEARTBEAT": "0.5"}
MOUNT_FAMILIES = {"dfs_fuse_request_seconds", "dfs_fuse_errors", "dfs_block_cache_requests",
                  "dfs_zk_request_seconds", "dfs_zk_round_trips"}
NODE_FAMILIES = {"dfs_node_read_bytes", "dfs_node_written_bytes", "dfs_node_info",
                 "dfs_scrub_verified_bytes", "dfs_scrub_mismatches", "dfs_scrub_coverage_ratio",
                 "dfs_scrub_oldest_unverified_seconds", "dfs_zk_request_seconds",
                 "dfs_zk_round_trips", "dfs_repair_leader"}
LEADER_FAMILIES = {"dfs_repair_queue_blocks", "dfs_blocks", "dfs_nodes", "dfs_exposure_bytes",
                   "dfs_repairs", "dfs_repair_copied_bytes"}


def scrape(address: str) -> dict[str, dict[tuple, float]]:
    """family -> {(sample name, sorted labels): value}, via prometheus_client's parser."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}
            for f in text_string_to_metric_families(text)}


def value(families: dict, sample: str, **labels: str) -> float:
    family = next(f for f in families if sample.startswith(f))
    return sum(v for (name, lbls), v in families[family].items()
               if name == sample and labels.items() <= dict(lbls).items())


def wait_for(what: str, check, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def status_json(c) -> dict:
    r = subprocess.run([sys.executable, "-m", "tools.cli", "status", "--zk", c.hosts, "--fs",
                        c.fsname, "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def test_metrics_scrub_and_status(cluster_factory):
    c = cluster_factory(nodes=0)
    for _ in range(3):  # endpoints at any free port, announced in the live znodes
        c.add_node(env=SCRUB_ENV, extra_args=["--metrics", "127.0.0.1:0"])
    writer = c.mount("writer")
    hot, cold = os.urandom(1 << 20), os.urandom(1 << 20)
    (writer / "hot").write_bytes(hot)
    (writer / "cold").write_bytes(cold)
    mount_at = f"127.0.0.1:{free_port()}"
    reader = c.mount("reader", metrics=mount_at)

    # every endpoint parses and carries its families
    nodes = {n.node_id: n.wait_registered().metrics for n in c.nodes}
    scraped = {nid: scrape(at) for nid, at in nodes.items()}
    for fams in scraped.values():
        assert NODE_FAMILIES <= set(fams), NODE_FAMILIES - set(fams)
    assert sum(value(f, "dfs_node_written_bytes_total") for f in scraped.values()) >= 2 * 2 << 20
    leader = wait_for("a repair leader", lambda: next(
        (nid for nid, at in nodes.items() if value(scrape(at), "dfs_repair_leader") == 1), None))
    assert LEADER_FAMILIES <= set(scrape(nodes[leader]))
    assert wait_for("3 live nodes", lambda: value(scrape(nodes[leader]), "dfs_nodes",
                                                  state="live") == 3)
    before = scrape(mount_at)
    assert MOUNT_FAMILIES <= set(before), MOUNT_FAMILIES - set(before)

    # a read through the reader mount moves its FUSE, cache and node counters
    sent = sum(value(f, "dfs_node_read_bytes_total") for f in scraped.values())
    assert (reader / "hot").read_bytes() == hot
    after = scrape(mount_at)
    assert value(after, "dfs_fuse_request_seconds_count", op="read") > \
        value(before, "dfs_fuse_request_seconds_count", op="read")
    assert value(after, "dfs_block_cache_requests_total", result="miss") >= 1
    assert value(after, "dfs_zk_round_trips_total") > value(before, "dfs_zk_round_trips_total")
    assert sum(value(scrape(at), "dfs_node_read_bytes_total") for at in nodes.values()) \
        >= sent + len(hot)
    fd = os.open(reader / "hot", os.O_RDONLY)  # the kernel forgets its pages: the cache answers
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert (reader / "hot").read_bytes() == hot
    assert value(scrape(mount_at), "dfs_block_cache_requests_total", result="hit") >= 1
    (reader / "d").mkdir()
    (reader / "d" / "f").write_bytes(b"x")
    try:
        (reader / "d").rmdir()
    except OSError:
        pass
    assert value(scrape(mount_at), "dfs_fuse_errors_total", op="rmdir", errno="ENOTEMPTY") == 1

    # damage one replica of the cold file on disk as bit rot would (mtime kept)
    ino = os.stat(writer / "cold").st_ino
    ref = client_session(c, lambda zk, view, blocks, n: view.meta.blockmap.read_block_map(ino))[0]
    victim = next(n for n in c.nodes if n.node_id == ref.replicas[0])
    path = victim.data_dir / "blocks" / ref.id[:2] / ref.id[2:4] / ref.id
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[header_size(ref.length) + 12345] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def replaced() -> bool:  # the repair copied a good replica over it
        return path.exists() and path.read_bytes() != bytes(raw)

    wait_for("the scrub to find the damage and the leader to replace the replica", replaced)
    assert value(scrape(nodes[victim.node_id]), "dfs_scrub_mismatches_total") >= 1
    assert wait_for("the repair counted", lambda: value(
        scrape(nodes[leader]), "dfs_repairs_total", kind="corrupt replica") >= 1)
    assert (writer / "cold").read_bytes() == cold

    # a quiet cluster: every node verified everything within the period
    s = wait_for("full scrub coverage", lambda: (lambda s: s if s["scrub"].get("nodes") == 3 and
                                                 s["scrub"]["coverage"] == 1.0 else None)(
        status_json(c)))
    assert s["scrub"]["oldest_unverified"] < 2 * 3 + 2
    assert all(n["metrics"] == nodes[n["node_id"]] for n in s["nodes"])
    # the gauge and the live znode are refreshed at their own moments: the gauge follows
    wait_for("the coverage gauge at 1", lambda: value(scrape(nodes[victim.node_id]), "dfs_scrub_coverage_ratio") == 1.0)

    # the live view draws, redraws, and ends cleanly on SIGINT
    watch = subprocess.Popen([sys.executable, "-m", "tools.cli", "status", "--zk", c.hosts, "--fs",
                              c.fsname, "--watch", "--interval", "0.3"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = ""
        deadline = time.monotonic() + 30
        while out.count("dfs status --watch") < 2 and time.monotonic() < deadline:
            if select.select([watch.stdout], [], [], 1)[0]:
                out += os.read(watch.stdout.fileno(), 65536).decode()  # type: ignore[union-attr]
        assert out.count("dfs status --watch") >= 2, out
        # coverage is exactly 1.0 above; with a 3 s scrub period it may dip while the view runs
        assert re.search(r"scrub: \d+\.\d% of stored bytes verified", out), out
        assert "exposure: 0 B" in out, out
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0
        assert "Traceback" not in watch.stderr.read()  # type: ignore[union-attr]
    finally:
        watch.kill()
        watch.wait()


def test_status_draws_repair_progress():
    s = {"filesystem": "/dfs/x", "replicas": 3, "min_replicas": 2, "dead_after": 30.0,
         "missing_blocks": 0, "under_replicated_blocks": 40, "corrupt_replicas": 0,
         "total_blocks": 100, "live_nodes": 2, "dead_nodes": 1, "repair_leader": "n1",
         "nodes": [], "scrub": {}, "metadata": {"checked": 0, "zk_heap": 1 << 30},
         "repair": {"queue_length": 30, "done_in_pass": 10, "eta_seconds": 150,
                    "repair_bytes_per_second": 1 << 20, "counts": {"exposed_bytes": 40 << 20}}}
    text = render(s)
    assert "exposure: 40.0 MiB acknowledged but not at full redundancy" in text
    assert "[" + "#" * 8 + "." * 22 + "] 10/40 blocks of this pass, ETA 2 min" in text
    assert "space:" not in text  # no node reports what it stores
    s["space"] = {"referenced_bytes": 300 << 20, "stored_bytes": 330 << 20}
    assert ("space: 300.0 MiB referenced by block maps (all replicas), 330.0 MiB stored on the "
            "live nodes") in render(s)
