"""dfs core library: everything the mount, the storage nodes and the tools stand on.

Layers (an arrow is "imports"; nothing imports upward):

    mount/ (pyfuse3 Operations)        tools/ (dfs CLI, fsck, status, drain)     nodes/ (block servers,
        |                                   |                                     repair leader)
    dfs.client   what one mount knows       |                                         |
        |        and does: ClientView,      |                                         |
        |        feed, creates, files,      |                                         |
        |        block cache, removals      |                                         |
        |                    dfs.maint  scan (the one block-map walk), repair, gc,    |
        |                        |      audit, cluster state  <-----------------------'
        v                        v
    dfs.meta     the namespace in ZooKeeper (MetaStore + inodes, namespace, blockmap,
                 xattrs; repairs for fsck); knows no cache, calls an optional CommitHook
        |                                          dfs.blocks  protocol (pure frames),
    dfs.zk       the one ZooKeeper client          connection (shared with nodes/),
                 (ZkClient, WireZk, Txn, Reads,    client (BlockClient, BlockStore), nodedir
                 retrying, error names)
        |
    pure (no I/O): errors config records paths names checksum placement, zk/wire zk/txn zk/reads,
    blocks/protocol.   dfs.mkfs writes a new filesystem's skeleton and reads its config.

Rules (tests/test_layering.py): `dfs` never imports pyfuse3, `mount`, `nodes` or
`tools`; only `dfs/zk/` imports kazoo; `dfs.meta` and `dfs.maint` never import
`dfs.client`, which only `mount/` imports.
"""
