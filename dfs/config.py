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


@dataclass
class MountSettings:
    """A mount's knobs (`dfs mount -o ...`), parsed once by mount/main.py."""

    attr_timeout: float = 1.0  # seconds the kernel (and the client view) keep attributes
    entry_timeout: float = 1.0  # seconds the kernel keeps a name
    feed_timeout: float = 10.0  # ... what the change feed vouches for
    cache_mb: int = 1024  # block cache
    sync_dirops: bool = False  # creates and removals wait for their commit
    allow_other: bool = False
    debug: bool = False  # libfuse's debug output

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
                if key in ("attr_timeout", "entry_timeout", "feed_timeout", "cache_mb"):
                    try:
                        setattr(out, key, float(value) if key != "cache_mb" else int(value))
                    except ValueError:
                        raise ValueError(f"bad value for {key}: {value!r}") from None
                elif key in cls.FLAGS:
                    if key not in ("ro", "rw"):
                        setattr(out, key, True)
                else:
                    unknown.append(key)
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(set(unknown)))}")
        return out
