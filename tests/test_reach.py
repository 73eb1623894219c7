"""nodes/leader/reach.py without servers: when a repair leader that reaches too few of
the other nodes stops being fit to lead, and whom its repairs avoid."""

import time
from types import SimpleNamespace

import trio

from dfs.blocks.connection import NodeUnavailable
from nodes.leader.reach import PROBE_TIMEOUT, Reach, enough


class Nodes:
    """The node directory and the PINGs: `down` never answer, `refuse` fail at once."""

    def __init__(self, ids):
        self.ids = set(ids)
        self.down: set[str] = set()
        self.refuse: set[str] = set()
        self.stale: set[str] = set()  # live records not refreshed for a minute

    def live(self):
        return {n: SimpleNamespace(updated=time.time() - (60 if n in self.stale else 0))
                for n in self.ids}

    async def ping(self, node_id, *, timeout=None):
        if node_id in self.refuse:
            raise NodeUnavailable(f"node {node_id}: connection refused")
        if node_id in self.down:
            await trio.sleep_forever()
        return {"node_id": node_id}


def test_a_leader_needs_half_of_the_other_nodes():
    assert enough(0, 0)  # alone: nobody else to reach
    assert not enough(0, 1) and enough(1, 1)
    assert enough(1, 2) and not enough(0, 2)
    assert enough(2, 3) and not enough(1, 3)
    assert enough(2, 4) and not enough(1, 4)


async def test_a_leader_cut_off_from_the_nodes_is_unfit_after_the_step_down_time(autojump_clock):
    nodes = Nodes(["me", "a", "b", "c"])
    reach = Reach(nodes, nodes, "me", after=5.0, stale_after=8.0)
    await reach.probe()
    assert reach.fit() and reach.unreachable == set()
    nodes.down = {"a", "b"}
    nodes.refuse = {"c"}
    start = trio.current_time()
    await reach.probe()
    assert trio.current_time() - start <= PROBE_TIMEOUT + 0.01  # the probes run at once
    assert reach.unreachable == {"a", "b", "c"}
    assert reach.fit()  # not yet: a moment of trouble does not move the leadership
    await trio.sleep(1)
    await reach.probe()  # short for 3 s (each probe waits PROBE_TIMEOUT for a and b)
    assert reach.fit()
    await trio.sleep(1)
    await reach.probe()
    assert not reach.fit()
    nodes.down, nodes.refuse = {"a"}, set()  # b and c are back: 2 of 3 is enough, at once
    await reach.probe()
    assert reach.fit() and reach.unreachable == {"a"}


async def test_one_good_probe_restarts_the_count(autojump_clock):
    nodes = Nodes(["me", "a", "b"])
    reach = Reach(nodes, nodes, "me", after=5.0, stale_after=8.0)
    nodes.down = {"a", "b"}
    await reach.probe()
    await trio.sleep(4)
    nodes.down = {"a"}  # 1 of 2
    await reach.probe()
    nodes.down = {"a", "b"}
    await trio.sleep(2)
    await reach.probe()
    assert reach.fit()  # short for 2 s since the good probe, not 6


async def test_nodes_that_stopped_refreshing_their_record_do_not_count(autojump_clock):
    nodes = Nodes(["me", "a", "b", "c", "d"])
    reach = Reach(nodes, nodes, "me", after=5.0, stale_after=8.0)
    nodes.down = nodes.stale = {"a", "b", "c"}  # killed: the znodes wait for their sessions
    for _ in range(5):
        await reach.probe()
        await trio.sleep(1)
    assert reach.fit() and (reach.reached, reach.others) == (1, 1)
    assert reach.unreachable == {"a", "b", "c"}  # still no copy goes there
    nodes.stale = set()  # they refresh: the leader is the one cut off
    for _ in range(3):
        await reach.probe()
        await trio.sleep(1)
    assert not reach.fit()


async def test_records_going_stale_while_cut_off_do_not_make_the_leader_fit(autojump_clock):
    # the others' heartbeats are late (ZooKeeper's log fsync behind a busy disk) while the
    # leader reaches none of them: it still steps down; when all of them go stale at once
    # the verdict stands either way (all killed at once: no flapping)
    nodes = Nodes(["me", "a", "b", "c"])
    reach = Reach(nodes, nodes, "me", after=5.0, stale_after=8.0)
    nodes.down = {"a", "b", "c"}
    await reach.probe()
    nodes.stale = {"a", "b", "c"}
    for _ in range(3):
        await trio.sleep(1)
        await reach.probe()
    assert not reach.fit()
    nodes.down = {"a"}  # b and c answer again, their records still stale: 2 of 3
    await reach.probe()
    assert reach.fit()
    nodes.down = {"a", "b", "c"}  # all killed: stale, silent; the leader stays
    for _ in range(10):
        await trio.sleep(1)
        await reach.probe()
    assert reach.fit()


async def test_step_down_off_still_feeds_the_repairs_whom_to_avoid(autojump_clock):
    nodes = Nodes(["me", "a", "b"])
    reach = Reach(nodes, nodes, "me", after=0, stale_after=8.0)
    nodes.down = {"a", "b"}
    for _ in range(10):
        await reach.probe()
        await trio.sleep(1)
    assert reach.fit() and reach.unreachable == {"a", "b"}


async def test_probes_run_while_leading_or_standing_aside_only(autojump_clock):
    nodes = Nodes(["me", "a", "b"])
    reach = Reach(nodes, nodes, "me", after=3.0, stale_after=8.0, interval=1.0)
    probes = 0
    probe = reach.probe

    async def counted():
        nonlocal probes
        probes += 1
        await probe()

    reach.probe = counted
    leading = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reach.run, lambda: leading)
        await trio.sleep(10)
        assert probes == 0  # waiting in line: no traffic
        leading = True
        nodes.down = {"a", "b"}
        await trio.sleep(8)
        assert not reach.fit()
        leading = False  # stepped down: still probing, to know when to stand again
        seen = probes
        nodes.down = set()
        await trio.sleep(4)
        assert probes > seen and reach.fit()
        seen = probes
        await trio.sleep(10)
        assert probes == seen
        nursery.cancel_scope.cancel()
