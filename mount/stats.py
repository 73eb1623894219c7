"""Per-handler op stats of the mount, logged at unmount: from dfs.metrics' FUSE histogram."""

import logging

from dfs.metrics import FUSE_SECONDS

log = logging.getLogger(__name__)


def log_op_stats() -> None:
    samples = {(s.labels["op"], s.name.rpartition("_")[2]): s.value
               for family in FUSE_SECONDS.collect() for s in family.samples}
    ops = sorted({op for op, _ in samples}, key=lambda op: -samples[op, "sum"])
    for op in ops:
        calls, secs = samples[op, "count"], samples[op, "sum"]
        if calls:
            log.info("op %-12s %8d calls %9.3f s %8.3f ms/call", op, calls, secs, secs / calls * 1e3)
