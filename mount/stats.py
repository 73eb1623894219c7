"""Per-handler op stats of the mount: calls and seconds, logged at unmount."""

import logging

log = logging.getLogger(__name__)

OP_STATS: dict[str, list[float]] = {}  # handler -> [calls, seconds]


def counter(name: str) -> list[float]:
    """The [calls, seconds] of handler `name` (a handler adds to it on every call)."""
    return OP_STATS.setdefault(name, [0, 0.0])


def log_op_stats() -> None:
    for name, (calls, secs) in sorted(OP_STATS.items(), key=lambda kv: -kv[1][1]):
        if calls:
            log.info("op %-12s %8d calls %9.3f s %8.3f ms/call", name, calls, secs, secs / calls * 1e3)
