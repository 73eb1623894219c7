"""The filesystem's settings (`config` znode, written once by `dfs mkfs`).

Pure: no I/O. `dfs.mkfs.load_config` reads it from ZooKeeper; the daemons'
own knobs are their mains' business (nodes/settings.py, mount/main.py).
"""

from dataclasses import dataclass

from dfs.records import FORMAT_REVISION, Record


@dataclass
class FsConfig(Record):
    block_size: int = 4 * 1024 * 1024
    replicas: int = 3
    min_replicas: int = 2
    dead_after: float = 30.0
    group_blocks: int = 256  # blocks per block-map znode
    orphan_age: float = 3600.0  # unreferenced blocks older than this are garbage (gc, fsck)
    # files of at most this many bytes keep their data inline in ZooKeeper (in
    # blocks/<ino>'s data) instead of in a block; 0 turns it off
    inline_max: int = 4096
    created: float = 0.0
    format_revision: int = FORMAT_REVISION
