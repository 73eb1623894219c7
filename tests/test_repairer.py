"""nodes/leader/repairer.py without servers: when the leader looks again at blocks a pass left short."""

import time

from dfs.config import NodeSettings
from nodes.leader.repairer import RETRY_FIRST, RETRY_MAX, Repairer


def test_a_pass_that_leaves_blocks_short_is_retried_soon_then_less_often():
    r = Repairer(None, "n1", NodeSettings(), maintenance_lock=None)
    delays = []
    for _ in range(6):
        r.unfinished = 2  # every copy of two blocks failed (tests/test_partitions.py)
        t = time.monotonic()
        r._schedule_retry()
        delays.append(round(r.retry_at - t))
    assert delays == [RETRY_FIRST, 2, 4, 8, RETRY_MAX, RETRY_MAX]
    r.unfinished = 0  # a pass with nothing left short
    r._schedule_retry()
    assert r.retry_at is None and r.retry_delay == RETRY_FIRST
