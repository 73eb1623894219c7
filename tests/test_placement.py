"""place_replicas: pure placement rules."""

import random
from collections import Counter

from dfs.placement import place_replicas
from dfs.records import NodeLive

GB = 1 << 30


def node(i, free=100 * GB, zone="", state="active"):
    return NodeLive(node_id=f"n{i}", address=f"h:{i}", zone=zone, free=free, capacity=200 * GB,
                    state=state)


def test_distinct_nodes_and_count():
    nodes = [node(i) for i in range(5)]
    for seed in range(50):
        got = place_replicas(nodes, 3, rng=random.Random(seed))
        assert len(got) == 3 and len(set(got)) == 3


def test_fewer_nodes_than_wanted():
    assert sorted(place_replicas([node(1), node(2)], 3)) == ["n1", "n2"]
    assert place_replicas([], 3) == []


def test_exclude_state_and_space():
    nodes = [node(0), node(1, state="draining"), node(2, state="retired"), node(3, free=1000),
             node(4), node(5)]
    for seed in range(30):
        got = place_replicas(nodes, 3, exclude={"n5"}, block_size=4096, rng=random.Random(seed))
        assert sorted(got) == ["n0", "n4"]


def test_block_size_zero_ignores_free_space():
    assert place_replicas([node(0, free=0)], 1) == ["n0"]


def test_weighted_toward_free_space():
    nodes = [node(0, free=90 * GB), node(1, free=5 * GB), node(2, free=5 * GB)]
    rng = random.Random(1)
    firsts = Counter(place_replicas(nodes, 1, rng=rng)[0] for _ in range(2000))
    assert firsts["n0"] > 1500 and firsts["n1"] > 0 and firsts["n2"] > 0


def test_spread_over_zones_first():
    nodes = [node(0, zone="a"), node(1, zone="a"), node(2, zone="a"), node(3, zone="b"),
             node(4, zone="c", free=1 * GB)]
    zone_of = {n.node_id: n.zone for n in nodes}
    for seed in range(100):
        got = place_replicas(nodes, 3, rng=random.Random(seed))
        assert {zone_of[n] for n in got} == {"a", "b", "c"}


def test_zones_reused_only_when_all_have_a_copy():
    nodes = [node(0, zone="a"), node(1, zone="a"), node(2, zone="b")]
    zone_of = {n.node_id: n.zone for n in nodes}
    for seed in range(50):
        got = place_replicas(nodes, 3, rng=random.Random(seed))
        assert len(set(got)) == 3
        assert {zone_of[n] for n in got[:2]} == {"a", "b"}


def test_a_repair_fills_the_zones_its_block_lacks_and_retired_nodes_are_no_zone():
    from dfs.placement import spread_short, zones

    nodes = [NodeLive(node_id=f"{z}{i}", address="", zone=z, free=1 << 30) for z in "ab" for i in range(3)]
    for seed in range(20):
        # the block's other copy is in zone b: the new one goes to a
        assert place_replicas(nodes, 1, exclude=["b0"], zones_taken={"b"}, rng=random.Random(seed))[0][0] == "a"
    zone_of = {n.node_id: n.zone for n in nodes}
    assert spread_short(zone_of, ["b0", "b1"], 2) and not spread_short(zone_of, ["a0", "b1"], 2)
    retired = NodeLive(node_id="c0", address="", zone="c", state="retired")
    assert zones(nodes + [retired]) == {"a", "b"}
    assert not spread_short({**zone_of, "c0": "c"}, ["a0", "b1", "b2"], len(zones(nodes + [retired])))
