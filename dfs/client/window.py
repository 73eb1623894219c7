"""The bound on what a mount has acknowledged and not committed (README: Consistency)."""

import time

import trio

WINDOW = 0.05  # seconds: the oldest acknowledged change before new ones wait


async def admit(pending: dict, since: dict, window: float, changed: trio.Condition) -> None:
    """Wait while the oldest of `pending` (insertion order; `since`: key -> when it was
    made, monotonic) is older than `window`; `changed` is notified after each commit.
    So a SIGKILL loses about one window of acknowledged changes, and when ZooKeeper
    commits slower than they come, callers go at its pace."""
    while pending:
        oldest = since.get(next(iter(pending)))
        if oldest is None or time.monotonic() - oldest <= window:
            return
        async with changed:
            await changed.wait()
