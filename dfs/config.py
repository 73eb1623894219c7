"""The filesystem's settings (`config` znode, written once by `dfs mkfs`).

Pure: no I/O. `dfs.mkfs.load_config` reads it from ZooKeeper. The daemons'
own knobs (`DFS_*` environment variables) are settings objects below, read
once by their mains (nodes/main.py, mount/main.py) and passed down.
"""

from dataclasses import dataclass
from typing import Mapping

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
    key_check: str = ""  # dfs.keys.key_check of the cluster key ("": made before keys existed)
    # heap bytes of each ZooKeeper server: creates stop before the znodes fill it
    # (dfs.maint.capacity); `dfs up` sets it to the heap it gives ZooKeeper
    zk_heap: int = 1 << 30
    tls: bool = False  # the node protocol runs over TLS (dfs.tls; mkfs --tls)
    # days a removed file stays in the trash (dfs.meta.trash) before the repair
    # leader deletes it; fractions allowed (1/86400: one second); 0 turns it off.
    # `dfs mkfs` makes 1; 0 here keeps plain deletes on filesystems made before
    # the trash existed (`dfs config set trash_days N` turns it on)
    trash_days: float = 0.0
    created: float = 0.0
    format_revision: int = FORMAT_REVISION

    def wanted(self, own: int) -> int:
        """Copies of each block of a file whose own count (InodeRecord.replicas) is `own`."""
        return own or self.replicas

    def needed(self, own: int) -> int:
        """Copies a write of such a file needs: min_replicas, capped at the file's count."""
        return min(self.min_replicas, self.wanted(own))


@dataclass
class MountSettings:
    """A mount's knobs (`dfs mount -o ...`), parsed once by mount/main.py."""

    attr_timeout: float = 1.0  # seconds the kernel (and the client view) keep attributes
    entry_timeout: float = 1.0  # seconds the kernel keeps a name
    feed_timeout: float = 10.0  # ... what the change feed vouches for
    cache_mb: int = 1024  # block cache
    # seconds an operation waits for an unreachable ZooKeeper before it fails
    # with EIO (a hard mount's wait; 0: fail at once)
    zk_wait: float = 60.0
    sync_dirops: bool = False  # creates and removals wait for their commit
    allow_other: bool = False
    debug: bool = False  # libfuse's debug output
    ro: bool = False  # read-only: the kernel answers every change with EROFS

    FLAGS = ("sync_dirops", "allow_other", "debug", "ro", "rw")

    @classmethod
    def from_options(cls, groups: list[str]) -> "MountSettings":
        """From `-o a,b=1 -o c` groups; ValueError names what is wrong."""
        out = cls()
        unknown = []
        for group in groups:
            for o in group.split(","):
                if not o:
                    continue
                key, _, value = o.partition("=")
                if key in ("attr_timeout", "entry_timeout", "feed_timeout", "cache_mb", "zk_wait"):
                    try:
                        number = float(value) if key != "cache_mb" else int(value)
                    except ValueError:
                        number = -1
                    if not number >= 0:  # (also NaN)
                        raise ValueError(f"bad value for {key}: {value!r}")
                    setattr(out, key, number)
                elif key == "rw":
                    out.ro = False
                elif key in cls.FLAGS:
                    setattr(out, key, True)
                else:
                    unknown.append(key)
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(set(unknown)))}")
        return out


@dataclass(frozen=True)
class NodeSettings:
    """A storage node's knobs; `from_environ` reads them (nodes/main.py, once). README lists them."""

    heartbeat: float = 2.0             # DFS_NODE_HEARTBEAT: s between live-znode refreshes
    syncfs: bool = False               # DFS_NODE_SMALL_SYNC=syncfs (default fdatasync per small block)
    fault_put_pause: float = 0.0       # DFS_NODE_FAULT_PUT_PAUSE: s before a PUT commits (tests)
    repair_leader: bool = True         # DFS_REPAIR_LEADER=0: never stand for repair leader (tests)
    repair_concurrency: int = 4        # DFS_REPAIR_CONCURRENCY: copies each node takes part in at once
    # DFS_REPAIR_BANDWIDTH (MiB/s): repair bytes/s each node sends, and each receives; 0 unlimited
    repair_bandwidth: float = 200 * 2**20
    repair_scan_interval: float = 60.0  # DFS_REPAIR_SCAN_INTERVAL: s between full scans
    # DFS_LEADER_STEP_DOWN: s a repair leader reaching fewer than half of the other live
    # nodes keeps leading (nodes/leader/reach.py); 0: never steps down. Longer than a
    # killed node's live record takes to go stale (3 heartbeats + 2 s + 1 s)
    leader_step_down: float = 10.0
    orphan_age: float | None = None    # DFS_ORPHAN_AGE: s; None: the filesystem's orphan_age
    orphan_interval: float | None = None  # DFS_ORPHAN_INTERVAL: s; None: from orphan_age
    # DFS_STALE_REPLICA_AGE: s a copy of a block that the map lists on other nodes only,
    # and that no writer can commit any more, is kept (a copy a repair has not committed yet)
    stale_replica_age: float = 60.0
    scrub_rate: float = 20 * 2**20     # DFS_SCRUB_RATE (MiB/s): replica bytes re-read, 0 no scrub
    scrub_period: float = 7 * 86400.0  # DFS_SCRUB_PERIOD: s within which each replica is verified
    max_connections: int = 4096        # DFS_NODE_MAX_CONNECTIONS: open connections, all peers
    max_peer_connections: int = 1024   # DFS_NODE_MAX_PEER_CONNECTIONS: ... from one address
    idle_timeout: float = 600.0        # DFS_NODE_IDLE_TIMEOUT: s a connection may sit without a request
    frame_timeout: float = 60.0        # DFS_NODE_FRAME_TIMEOUT: s one frame (a PUT: 64 MiB) may take to arrive

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "NodeSettings":
        """The knobs set in `env`; an unset, empty or unreadable number keeps its default."""
        d = cls()

        def number(name: str) -> float | None:
            try:
                return float(env.get(name, "")) if env.get(name) else None
            except ValueError:
                return None

        def knob(name: str, default: float) -> float:
            got = number(name)
            return default if got is None else got

        return cls(
            heartbeat=knob("DFS_NODE_HEARTBEAT", d.heartbeat),
            syncfs=env.get("DFS_NODE_SMALL_SYNC", "fdatasync") == "syncfs",
            fault_put_pause=knob("DFS_NODE_FAULT_PUT_PAUSE", d.fault_put_pause),
            repair_leader=env.get("DFS_REPAIR_LEADER", "1") != "0",
            repair_concurrency=int(knob("DFS_REPAIR_CONCURRENCY", d.repair_concurrency)),
            repair_bandwidth=knob("DFS_REPAIR_BANDWIDTH", d.repair_bandwidth / 2**20) * 2**20,
            repair_scan_interval=knob("DFS_REPAIR_SCAN_INTERVAL", d.repair_scan_interval),
            leader_step_down=knob("DFS_LEADER_STEP_DOWN", d.leader_step_down),
            orphan_age=number("DFS_ORPHAN_AGE"),
            orphan_interval=number("DFS_ORPHAN_INTERVAL"),
            stale_replica_age=knob("DFS_STALE_REPLICA_AGE", d.stale_replica_age),
            scrub_rate=knob("DFS_SCRUB_RATE", d.scrub_rate / 2**20) * 2**20,
            scrub_period=knob("DFS_SCRUB_PERIOD", d.scrub_period),
            max_connections=int(knob("DFS_NODE_MAX_CONNECTIONS", d.max_connections)),
            max_peer_connections=int(knob("DFS_NODE_MAX_PEER_CONNECTIONS", d.max_peer_connections)),
            idle_timeout=knob("DFS_NODE_IDLE_TIMEOUT", d.idle_timeout),
            frame_timeout=knob("DFS_NODE_FRAME_TIMEOUT", d.frame_timeout),
        )
