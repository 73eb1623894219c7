"""dfs core library: metadata (ZooKeeper), placement, block client, wire protocol.

Layer stack (top to bottom):

    mount/ (pyfuse3 Operations)      tools/ (CLI, fsck, cluster)     nodes/ (block servers)
        |                                 |                               |
    dfs.client.files (write buffers, read cache)  dfs.fsck ...                   |
        |                                                                 |
    dfs.meta.store (namespace + block map)   dfs.blocks.client -> dfs.blocks.protocol <--'
        |                                   |
    dfs.zk.bridge (kazoo <-> trio bridge)      dfs.placement (pure)
        |
    dfs.paths / dfs.names / dfs.records (pure: znode layout and payloads)

`dfs` never imports pyfuse3, `mount`, `nodes` or `tools` (tests/test_layering.py).
"""
