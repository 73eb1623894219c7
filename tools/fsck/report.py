"""What `dfs fsck` found: counters, one record per problem, text and JSON output, progress line.

The text output follows `hdfs fsck`: one line per problem (category, path,
block, nodes, and what --repair did or would do), then a summary block with
Status HEALTHY or CORRUPT. `--json` prints the same as one JSON object whose
keys are the snake_case names of the summary fields plus `problems`.
"""

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from tools.common import human

# Problem categories, by the counter they feed.
BLOCK_CATEGORIES = {
    "missing_block",        # no good replica anywhere: the file's data is lost
    "corrupt_replica",      # checksum or length differs (listing, VERIFY, or a client's report)
    "missing_replica",      # the map names a live node that does not have the block
    "dead_replica",         # the map names a node that is not live
    "under_replicated",
    "over_replicated",
    "mis_replicated",       # the same node twice, or replicas crowded into fewer zones than available
    "orphan_block",         # on a node, referenced by no block map and no gc entry
    "unproven_block",       # --verify-data: the ref's write proof is not one a node made for it
}
NAMESPACE_CATEGORIES = {
    "dangling_dirent",      # a directory entry naming an inode that does not exist
    "dirent_type",          # the entry's type differs from the inode's
    "orphan_inode",         # an inode no entry reaches (nlink 0 inodes held in open/ are fine)
    "wrong_nlink",          # a file's nlink differs from the entries that name it
    "wrong_dir_nlink",      # a directory's nlink differs from 2 + its subdirectories
    "wrong_parent",         # a directory's `parent` is not the directory that holds it
    "dir_hardlink",         # a directory named by more than one entry (or a cycle)
    "dir_cycle",            # unreachable directories that contain each other
    "missing_dir_listing",  # a directory inode without dirs/<ino>
    "block_past_eof",       # a block starts or ends beyond the file's size
    "bad_block_length",     # a block longer than block_size, or empty, or in the wrong group
    "dangling_block_map",   # blocks/<ino> without an inode and not queued for gc
    "leftover_dir_listing", # dirs/<ino> without an inode
    "leftover_xattrs",      # xattrs/<ino> without an inode
    "stale_open",           # open/<ino> for an inode that no longer exists
    "stale_lease",          # leases/<ino> (dfs.meta.leases) of a directory that no longer exists
}
HOUSEKEEPING_CATEGORIES = {
    "stale_gc_entry",       # a gc/ entry older than --orphan-age (the collector is not keeping up)
    "gc_conflict",          # a gc/ entry names a block (or inode) that is still in use
    "stale_repair_report",  # repair/corrupt report about a replica no map lists any more
    "node_unreachable",     # live in ZooKeeper but does not answer LIST
}
CATEGORIES = BLOCK_CATEGORIES | NAMESPACE_CATEGORIES | HOUSEKEEPING_CATEGORIES

MAX_PROBLEMS = 100_000  # problem records kept for the output; the counters keep counting


@dataclass
class Problem:
    category: str
    path: str = ""
    detail: str = ""
    ino: int = 0
    block: str = ""
    nodes: list[str] = field(default_factory=list)
    repair: str = ""  # what --repair did (or, with --dry-run, would do); "" = nothing

    def line(self) -> str:
        parts = [f"{self.category.upper()}:", self.path or f"inode {self.ino}"]
        if self.block:
            parts.append(f"block {self.block}")
        if self.nodes:
            parts.append(f"nodes {','.join(self.nodes)}")
        if self.detail:
            parts.append(f"- {self.detail}")
        if self.repair:
            parts.append(f"[{self.repair}]")
        return " ".join(parts)


@dataclass
class Report:
    """The summary fields, in output order (their names are the JSON keys)."""

    status: str = "HEALTHY"
    path: str = "/"
    total_size: int = 0
    total_dirs: int = 0
    total_files: int = 0
    total_symlinks: int = 0
    total_blocks: int = 0
    total_block_bytes: int = 0
    minimally_replicated_blocks: int = 0
    under_replicated_blocks: int = 0
    over_replicated_blocks: int = 0
    mis_replicated_blocks: int = 0
    default_replication: int = 0
    min_replication: int = 0
    average_block_replication: float = 0.0
    missing_blocks: int = 0
    missing_size: int = 0
    corrupt_replicas: int = 0
    missing_replicas: int = 0
    dead_replicas: int = 0
    orphan_blocks: int = 0
    orphan_size: int = 0
    namespace_errors: int = 0
    stale_gc_entries: int = 0
    stale_repair_reports: int = 0
    live_nodes: int = 0
    dead_nodes: int = 0
    verified_replicas: int = 0
    verified_bytes: int = 0
    proven_blocks: int = 0  # --verify-data: refs whose write proof verified
    unproven_blocks: int = 0  # ... whose proof did not (each also an unproven_block problem)
    blocks_before_proofs: int = 0  # ... written before write proofs existed (no proof to check)
    skipped_in_flux: int = 0  # suspects that changed while fsck ran: not damage, not counted
    repaired: int = 0
    unrepaired: int = 0
    elapsed: float = 0.0
    problems_omitted: int = 0
    problems: list[Problem] = field(default_factory=list)
    _good_replicas: int = 0

    def add(self, p: Problem) -> Problem:
        if p.category not in CATEGORIES:
            raise ValueError(f"unknown problem category {p.category!r}")
        if p.category in NAMESPACE_CATEGORIES:
            self.namespace_errors += 1
        elif p.category == "stale_gc_entry" or p.category == "gc_conflict":
            self.stale_gc_entries += 1
        elif p.category == "stale_repair_report":
            self.stale_repair_reports += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(p)
        else:
            self.problems_omitted += 1
        return p

    @property
    def healthy(self) -> bool:
        return not self.problems and not self.problems_omitted

    def finish(self, elapsed: float) -> None:
        self.elapsed = round(elapsed, 3)
        self.status = "HEALTHY" if self.healthy else "CORRUPT"
        self.average_block_replication = (round(self._good_replicas / self.total_blocks, 3)
                                          if self.total_blocks else 0.0)
        self.repaired = sum(1 for p in self.problems if p.repair.startswith(("repaired", "done")))

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["problems"] = [asdict(p) for p in self.problems]
        return d

    def write_json(self, out: TextIO) -> None:
        json.dump(self.to_dict(), out, separators=(",", ":"))
        out.write("\n")

    def write_text(self, out: TextIO) -> None:
        for p in self.problems:
            out.write(p.line() + "\n")
        if self.problems_omitted:
            out.write(f"... and {self.problems_omitted} more problems\n")
        pct = (lambda n: f" ({100.0 * n / self.total_blocks:.2f} %)") if self.total_blocks else (lambda n: "")
        rows = [
            ("Status", self.status),
            ("Path", self.path),
            ("Total size", f"{self.total_size} B ({human(self.total_size)})"),
            ("Total dirs", self.total_dirs),
            ("Total files", self.total_files),
            ("Total symlinks", self.total_symlinks),
            ("Total blocks (validated)", f"{self.total_blocks} (avg. block size "
                                         f"{self.total_block_bytes // max(self.total_blocks, 1)} B)"),
            ("Minimally replicated blocks", f"{self.minimally_replicated_blocks}"
                                            f"{pct(self.minimally_replicated_blocks)}"),
            ("Under-replicated blocks", f"{self.under_replicated_blocks}{pct(self.under_replicated_blocks)}"),
            ("Over-replicated blocks", f"{self.over_replicated_blocks}{pct(self.over_replicated_blocks)}"),
            ("Mis-replicated blocks", f"{self.mis_replicated_blocks}{pct(self.mis_replicated_blocks)}"),
            ("Default replication factor", f"{self.default_replication} (min {self.min_replication})"),
            ("Average block replication", self.average_block_replication),
            ("Missing blocks", self.missing_blocks),
            ("Missing size", f"{self.missing_size} B"),
            ("Corrupt replicas", self.corrupt_replicas),
            ("Missing replicas", self.missing_replicas),
            ("Replicas on dead nodes", self.dead_replicas),
            ("Orphan blocks", self.orphan_blocks),
            ("Orphan size", f"{self.orphan_size} B"),
            ("Namespace errors", self.namespace_errors),
            ("Stale gc entries", self.stale_gc_entries),
            ("Stale repair reports", self.stale_repair_reports),
            ("Live nodes", self.live_nodes),
            ("Dead nodes", self.dead_nodes),
        ]
        if self.verified_replicas:
            rows.append(("Verified replicas", f"{self.verified_replicas} ({human(self.verified_bytes)})"))
        if self.proven_blocks or self.unproven_blocks or self.blocks_before_proofs:
            rows.append(("Write proofs", f"{self.proven_blocks} good, {self.unproven_blocks} bad, "
                                         f"{self.blocks_before_proofs} blocks written before proofs"))
        if self.skipped_in_flux:
            rows.append(("Changed while checking (skipped)", self.skipped_in_flux))
        if self.repaired or self.unrepaired:
            rows.append(("Repaired", self.repaired))
            rows.append(("Not repaired", self.unrepaired))
        rows.append(("Elapsed", f"{self.elapsed:.2f} s"))
        out.write("\n")
        for k, v in rows:
            out.write(f" {k + ':':<34}{v}\n")
        out.write(f"\nThe filesystem under path '{self.path}' is {self.status}\n")


class Progress:
    """A one-line `\\r` progress display on a TTY (stderr); silent otherwise."""

    def __init__(self, report: Report, out: TextIO = sys.stderr, interval: float = 0.2):
        self.report = report
        self.out = out
        self.enabled = out.isatty()
        self.interval = interval
        self.phase = ""
        self._last = 0.0
        self._start = time.monotonic()
        self._width = 0

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.tick(force=True)

    def tick(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        r = self.report
        files = r.total_files + r.total_symlinks
        rate = files / max(now - self._start, 1e-6)
        text = (f"fsck {self.phase}: {r.total_dirs} dirs, {files} files ({rate:,.0f}/s), "
                f"{r.total_blocks} blocks, {human(r.total_size)}, {len(r.problems)} problems")
        if r.verified_replicas:
            text += f", verified {human(r.verified_bytes)}"
        self._width = max(self._width, len(text))
        self.out.write("\r" + text.ljust(self._width))
        self.out.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self.out.write("\r" + " " * self._width + "\r")
            self.out.flush()
