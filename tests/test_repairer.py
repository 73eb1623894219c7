"""nodes/leader/repairer.py without servers: when the leader looks again at blocks a pass left
short, and how many copies each node takes part in (dfs/maint/pacing.py)."""

import time

import trio

from dfs.config import NodeSettings
from dfs.maint.pacing import CopyBudget
from nodes.leader.repairer import RETRY_FIRST, RETRY_MAX, Repairer

MiB = 1 << 20


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


async def test_each_node_takes_part_in_at_most_its_share_of_copies_at_once(autojump_clock):
    budget = CopyBudget(concurrency=2, rate=0)
    running: dict[str, int] = {}
    most: dict[str, int] = {}

    async def copy(src: str, dst: str) -> None:
        async with budget.copy(src, dst, MiB):
            for n in (src, dst):
                running[n] = running.get(n, 0) + 1
                most[n] = max(most.get(n, 0), running[n])
            await trio.sleep(1)
            for n in (src, dst):
                running[n] -= 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(8):  # crossed pairs too: a->b and b->a wait on no one forever
            nursery.start_soon(copy, *(("a", "b") if i % 2 else ("b", "a")))
        for i in range(6):
            nursery.start_soon(copy, "c", f"t{i}")
    assert most == {"a": 2, "b": 2, "c": 2, **{f"t{i}": 1 for i in range(6)}}
    assert trio.current_time() - start == 4  # 8 copies of a and b, 2 at a time
    assert budget.busy("a") == budget.busy("c") == 0


async def test_each_node_sends_and_receives_at_its_own_rate(autojump_clock):
    budget = CopyBudget(concurrency=100, rate=10 * MiB)
    done: dict[tuple[str, str], list[float]] = {}
    start = trio.current_time()

    async def copy(src: str, dst: str) -> None:
        async with budget.copy(src, dst, 10 * MiB):
            done.setdefault((src, dst), []).append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for src, dst in [("a", "x"), ("b", "y"), ("c", "z")] * 3:
            nursery.start_soon(copy, src, dst)
    # three pairs of their own go in parallel, each at 10 MiB/s: 3 copies of 10 MiB in 2 s,
    # not the 8 s one limit for the whole cluster would take
    assert all(times == [0, 1, 2] for times in done.values()), done


async def test_a_node_sends_and_receives_at_once_each_at_the_rate(autojump_clock):
    budget = CopyBudget(concurrency=100, rate=10 * MiB)
    done: list[tuple[str, float]] = []
    start = trio.current_time()

    async def copy(src: str, dst: str) -> None:
        async with budget.copy(src, dst, 10 * MiB):
            done.append((src, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        for src, dst in [("a", "b"), ("b", "c"), ("c", "a")] * 2:  # each node sends and receives
            nursery.start_soon(copy, src, dst)
    assert sorted(t for _, t in done) == [0, 0, 0, 1, 1, 1]
