"""Storage nodes: blocks on local disk served over the block protocol (DESIGN.md section 3).

`store` (on-disk blocks), `server` (TCP protocol), `registration` (ZooKeeper
presence), `main` (the process: `python -m nodes`).
"""
