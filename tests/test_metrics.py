"""Operator's view (issue 15): Prometheus endpoints of nodes and mounts.

One cluster for all of it: the scenario is short, and a second cluster would
double the cost.
"""

import os
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tools.local.zkserver import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOUNT_FAMILIES = {"dfs_fuse_request_seconds", "dfs_fuse_errors", "dfs_block_cache_requests",
                  "dfs_zk_request_seconds", "dfs_zk_round_trips"}
NODE_FAMILIES = {"dfs_node_read_bytes", "dfs_node_written_bytes", "dfs_node_info",
                 "dfs_zk_request_seconds",
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


def test_metrics(cluster_factory):
    c = cluster_factory(nodes=0)
    for _ in range(3):  # endpoints at any free port, announced in the live znodes
        c.add_node(extra_args=["--metrics", "127.0.0.1:0"])
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
