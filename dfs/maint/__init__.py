"""Maintenance shared by the repair leader (nodes/leader/), gc, `dfs status`, `dfs drain` and fsck.

    scan.py     the one walk over the block maps (batched, streamed)
    repair.py   block-map repairs: re-replicate, drop replicas, commit replica lists
    gc.py       gc/ entries: read, collect, mend
    audit.py    the repair audit log
    cluster.py  RepairContext, the node registry and live set, leader, reports, set_node_state
"""
