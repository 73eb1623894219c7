"""Every znode path of one filesystem, and nothing else (pure functions).

One filesystem lives under a root, default `/dfs/<fsname>`; tests each get their
own root in a shared ZooKeeper. See DESIGN.md section 2 for the table.
"""

from dataclasses import dataclass

from dfs import names

INODE_SHARD_BITS = 12  # 4096 inodes per shard znode
ROOT_INO = 1


def default_root(fsname: str) -> str:
    return f"/dfs/{fsname}"


@dataclass(frozen=True)
class FsPaths:
    root: str

    # -- filesystem-wide
    @property
    def config(self) -> str:
        return f"{self.root}/config"

    @property
    def inode_counter(self) -> str:
        return f"{self.root}/ids/inode"

    @property
    def capacity(self) -> str:
        """The repair leader's verdict on ZooKeeper's heap (dfs.maint.capacity)."""
        return f"{self.root}/capacity"

    @property
    def secret(self) -> str:
        return f"{self.root}/secret"

    # -- namespace
    @property
    def inodes(self) -> str:
        return f"{self.root}/inodes"

    def inode_shard(self, ino: int) -> str:
        return f"{self.root}/inodes/{ino >> INODE_SHARD_BITS:x}"

    def inode(self, ino: int) -> str:
        return f"{self.inode_shard(ino)}/{ino}"

    @property
    def dirs(self) -> str:
        return f"{self.root}/dirs"

    def dir(self, ino: int) -> str:
        return f"{self.root}/dirs/{ino}"

    def dirent(self, parent: int, name: bytes) -> str:
        return f"{self.root}/dirs/{parent}/{names.escape(name)}"

    @property
    def blocks(self) -> str:
        return f"{self.root}/blocks"

    def block_map(self, ino: int) -> str:
        return f"{self.root}/blocks/{ino}"

    def block_group(self, ino: int, group: int) -> str:
        return f"{self.root}/blocks/{ino}/{group}"

    @property
    def xattrs(self) -> str:
        return f"{self.root}/xattrs"

    def xattr_dir(self, ino: int) -> str:
        return f"{self.root}/xattrs/{ino}"

    def xattr(self, ino: int, name: bytes) -> str:
        return f"{self.root}/xattrs/{ino}/{names.escape(name)}"

    # -- storage nodes
    @property
    def registry(self) -> str:
        return f"{self.root}/nodes/registry"

    def registry_node(self, node_id: str) -> str:
        return f"{self.root}/nodes/registry/{node_id}"

    @property
    def live(self) -> str:
        return f"{self.root}/nodes/live"

    def live_node(self, node_id: str) -> str:
        return f"{self.root}/nodes/live/{node_id}"

    # -- housekeeping
    @property
    def gc(self) -> str:
        return f"{self.root}/gc"

    def gc_entry(self, block_id: str) -> str:
        return f"{self.root}/gc/{block_id}"

    @property
    def open(self) -> str:
        return f"{self.root}/open"

    def open_dir(self, ino: int) -> str:
        return f"{self.root}/open/{ino}"

    def open_holder(self, ino: int, mount_id: str) -> str:
        return f"{self.root}/open/{ino}/{mount_id}"

    @property
    def trash(self) -> str:
        return f"{self.root}/trash"

    def trash_entry(self, ino: int) -> str:
        return f"{self.root}/trash/{ino}"

    @property
    def writers(self) -> str:
        return f"{self.root}/writers"

    @property
    def writer_prefix(self) -> str:
        """What a writer record is created as (ephemeral, sequential: w-0000000042)."""
        return f"{self.root}/writers/w-"

    def writer(self, seq: int) -> str:
        return f"{self.root}/writers/w-{seq:010d}"

    @property
    def leases(self) -> str:
        return f"{self.root}/leases"

    def lease(self, ino: int) -> str:
        """Directory ino's lease (dfs.meta.leases): its holder's writer record, or empty."""
        return f"{self.root}/leases/{ino}"

    @property
    def recalls(self) -> str:
        return f"{self.root}/recalls"

    def recall(self, ino: int, who: str) -> str:
        """Ephemeral: `who` waits for the holder of directory ino's lease to let go."""
        return f"{self.root}/recalls/{ino}-{who}"

    @property
    def locks(self) -> str:
        return f"{self.root}/locks"

    def lock_dir(self, ino: int) -> str:
        """An inode's lock table: one ephemeral child per holder (dfs.meta.locks)."""
        return f"{self.root}/locks/{ino}"

    def lock_holder(self, ino: int, name: str) -> str:
        return f"{self.root}/locks/{ino}/{name}"

    @property
    def repair(self) -> str:
        return f"{self.root}/repair"

    @property
    def repair_election(self) -> str:
        return f"{self.root}/repair/election"

    def election_prefix(self, node_id: str, session_id: int) -> str:
        """A candidate's znode before ZooKeeper appends the sequence number (see election_leader)."""
        return f"{self.root}/repair/election/{node_id}.{session_id:x}-"

    def election_member(self, name: str) -> str:
        return f"{self.root}/repair/election/{name}"

    @property
    def repair_reports(self) -> str:
        return f"{self.root}/repair/corrupt"

    def repair_report(self, block_id: str, node_id: str) -> str:
        return f"{self.root}/repair/corrupt/{block_id}-{node_id}"

    def repair_report_named(self, name: str) -> str:
        """A report by its znode name (as listed under repair_reports)."""
        return f"{self.root}/repair/corrupt/{name}"

    @property
    def repair_audit(self) -> str:
        return f"{self.root}/repair/audit"

    @property
    def repair_status(self) -> str:
        return f"{self.root}/repair/status"

    @property
    def repair_rescan(self) -> str:
        """Set by `dfs setrep`: the repair leader starts a pass when it changes."""
        return f"{self.root}/repair/rescan"

    def skeleton(self) -> list[str]:
        """Persistent znodes `dfs mkfs` creates (config and root inode aside)."""
        return [
            self.root, f"{self.root}/ids", self.inodes, self.dirs, self.blocks,
            self.xattrs, f"{self.root}/nodes", self.registry, self.live, self.gc,
            self.open, self.trash, self.writers, self.leases, self.recalls, self.locks,
            self.repair, self.repair_reports, self.repair_audit, self.capacity,
        ]

    # -- children named by their znode name (as get_children lists them)
    def inode_shard_named(self, shard: str) -> str:
        return f"{self.root}/inodes/{shard}"

    def dirent_named(self, parent: int, escaped: str) -> str:
        return f"{self.root}/dirs/{parent}/{escaped}"

    def xattr_named(self, ino: int, escaped: str) -> str:
        return f"{self.root}/xattrs/{ino}/{escaped}"

    @property
    def repair_audit_prefix(self) -> str:
        """Sequential audit records are created as a-0000000001, ..."""
        return f"{self.root}/repair/audit/a-"

    def repair_audit_record(self, name: str) -> str:
        return f"{self.root}/repair/audit/{name}"


def child(parent: str, name: str) -> str:
    """The znode `name` (already a znode name, e.g. from get_children) under `parent`."""
    return f"{parent}/{name}"


def election_sequence(name: str) -> int:
    """The sequence number ZooKeeper appended to an election znode's name."""
    return int(name.rsplit("-", 1)[1])


def election_leader(names: list[str]) -> str | None:
    """The node id of the repair leader (lowest sequence number) among election znode names."""
    if not names:
        return None
    return min(names, key=election_sequence).split(".", 1)[0]
