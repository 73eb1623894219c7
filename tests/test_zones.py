"""Failure zones end to end (issue 14): the repair leader keeps every block spread over
the zones it can use, on a real cluster of 2 zones x 2 nodes."""

from tests.test_fsck import fsck
from tests.test_ha import MiB, NODE_ENV, View, check_files, config, wait_for, wait_gone, write_files


def test_the_leader_restores_the_zone_spread(cluster_factory, tmp_path):
    """2 replicas over zones a and b. Blocks written while zone a is down sit only in b; once a
    is back the leader moves one copy of each there. Then a node of zone a dies: its copies are
    made again in zone a, not beside the other copy in b. fsck is HEALTHY after, bytes intact."""
    c = cluster_factory(config=config(replicas=2, min_replicas=1), nodes=0)
    a = [c.add_node(zone="a", env=NODE_ENV) for _ in range(2)]
    b = [c.add_node(zone="b", env=NODE_ENV) for _ in range(2)]
    zone = {n.node_id: n.zone for n in a + b}
    c.mount()
    mnt = c.mounts[0].mountpoint
    view = View(c.hosts, c.paths, c.key)

    def spread():
        live = view.live()
        blocks = view.blocks()
        bad = [r.replicas for _, _, r in blocks
               if len(r.replicas) != 2 or not set(r.replicas) <= live or {zone[n] for n in r.replicas} != {"a", "b"}]
        return {"ok": blocks and not bad, "blocks": len(blocks), "not spread": bad[:5]}

    try:
        for n in a:
            n.stop()
        wait_gone(view, [n.node_id for n in a])
        sums = write_files(mnt, tmp_path / "src", [3 * MiB, 2 * MiB])
        assert {zone[n] for _, _, r in view.blocks() for n in r.replicas} == {"b"}
        for n in a:
            n.start()
        wait_for("every block in both zones after zone a came back", spread, 60)
        a[0].kill()
        wait_gone(view, [a[0].node_id])
        wait_for("every block in both zones again after a node of zone a died", spread, 60)
        assert a[0].node_id not in {n for _, _, r in view.blocks() for n in r.replicas}
        rc, rep = fsck(c)
        assert rc == 0, rep["problems"]
        check_files(mnt, sums)
    finally:
        view.close()
