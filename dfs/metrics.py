"""Prometheus metrics of the daemons (README: Monitoring), served by `--metrics HOST:PORT`.

The instruments live in prometheus_client's process-wide registry, the one
exception to "no global state" (like logging): a process is one daemon, and
the code that counts (a FUSE handler, a ZooKeeper call, the block cache) would
otherwise need a registry passed through every layer. Updating one is a few
dict operations under a lock, safe from trio and from worker threads alike.
The endpoint runs in prometheus_client's own HTTP thread, so a scrape never
waits for (or blocks) the trio loop.
"""

from typing import Callable

from prometheus_client import (Counter, Gauge, Histogram, disable_created_metrics,
                               start_http_server)

# mount: one latency histogram and error count per FUSE handler (mount/errors.py)
FUSE_SECONDS = Histogram("dfs_fuse_request_seconds", "FUSE requests by handler", ["op"],
                         buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
FUSE_ERRORS = Counter("dfs_fuse_errors_total", "FUSE requests answered with an error",
                      ["op", "errno"])
CACHE_REQUESTS = Counter("dfs_block_cache_requests_total",
                         "reads of file data by whether the block cache had the block", ["result"])
CACHE_HIT, CACHE_MISS = CACHE_REQUESTS.labels("hit"), CACHE_REQUESTS.labels("miss")  # labels(): 5 us

# every daemon: its ZooKeeper session (dfs/zk/session.py)
ZK_SECONDS = Histogram("dfs_zk_request_seconds", "ZooKeeper operations, retries included", ["op"],
                       buckets=(1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 10, 60))
ZK_ROUND_TRIPS = Counter("dfs_zk_round_trips_total", "requests sent to ZooKeeper", ["op"])

# storage nodes (nodes/server.py, nodes/scrub.py)
NODE_READ = Counter("dfs_node_read_bytes_total", "block bytes this node sent to readers (GET)")
NODE_WRITTEN = Counter("dfs_node_written_bytes_total", "block bytes this node stored (PUT)")
NODE_INFO = Gauge("dfs_node_info", "this storage node (always 1)", ["node_id", "zone"])
SCRUB_BYTES = Counter("dfs_scrub_verified_bytes_total", "replica bytes the scrub re-read and hashed")
SCRUB_MISMATCHES = Counter("dfs_scrub_mismatches_total", "replicas the scrub found damaged")
SCRUB_COVERAGE = Gauge("dfs_scrub_coverage_ratio",
                       "share of stored bytes verified within the scrub period")
SCRUB_OLDEST = Gauge("dfs_scrub_oldest_unverified_seconds",
                     "age of the replica longest without verification (or since its write)")

# the repair leader (nodes/leader/repairer.py); 0 on the other nodes
LEADER = Gauge("dfs_repair_leader", "1 while this node is the repair leader")
REPAIR_QUEUE = Gauge("dfs_repair_queue_blocks", "blocks waiting for repair, by counting copies "
                     "left (surplus: too many)", ["urgency"])
BLOCKS = Gauge("dfs_blocks", "blocks by health at the leader's last scan", ["state"])
NODES = Gauge("dfs_nodes", "registered nodes: live, gone (within --dead-after), dead", ["state"])
EXPOSURE = Gauge("dfs_exposure_bytes", "bytes acknowledged to writers but not at full redundancy")
REPAIRS = Counter("dfs_repairs_total", "repairs the leader finished", ["kind"])
REPAIRED_BYTES = Counter("dfs_repair_copied_bytes_total", "bytes the leader's repairs copied")


def serve(listen: str) -> tuple[str, Callable[[], None]]:
    """Serve /metrics on HOST:PORT (port 0: any free one).

    Returns:
      The "host:port" it serves on, and a function that stops it.

    Raises:
      ValueError: `listen` is not HOST:PORT.
      OSError: the address cannot be bound.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics must be HOST:PORT, not {listen!r}")
    host = host.strip("[]") or "0.0.0.0"
    disable_created_metrics()  # a *_created series per counter only doubles the scrape
    server, thread = start_http_server(int(port), host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return f"{host}:{server.server_port}", stop
