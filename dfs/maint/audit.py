"""The repair audit log: every repair action, by whom and why, for `dfs status` and people.

One small JSON record per action under `repair/audit` (sequential znodes,
oldest first), trimmed to the last AUDIT_KEEP. Appending is best effort: a
repair never fails because its record could not be written.
"""

import json
import logging
import time
from typing import Iterable

from dfs.paths import FsPaths
from dfs.zk import NoNodeError, ZkClient

log = logging.getLogger(__name__)

AUDIT_KEEP = 1000
AUDIT_TRIM_EVERY = 100


class AuditLog:
    """The audit log as one actor ("node:<id>", "fsck") writes it."""

    def __init__(self, zk: ZkClient, paths: FsPaths, actor: str = ""):
        self.zk = zk
        self.paths = paths
        self.actor = actor
        self._appended = 0

    async def append(self, action: str, *, block: str = "", ino: int = 0, index: int = -1,
                     src: Iterable[str] = (), dst: Iterable[str] = (), reason: str = "",
                     **extra) -> None:
        """Append one record (best effort); every AUDIT_TRIM_EVERY appends, trim the log."""
        rec = {"time": time.time(), "action": action, "block": block, "ino": ino, "index": index,
               "from": list(src), "to": list(dst), "reason": reason, "by": self.actor, **extra}
        try:
            await self.zk.create(self.paths.repair_audit_prefix, json.dumps(rec).encode(),
                                 sequence=True)
            self._appended += 1
            if self._appended % AUDIT_TRIM_EVERY == 1:
                await self.trim()
        except Exception as e:
            log.warning("could not append to the repair audit log: %s", e)

    async def trim(self, keep: int = AUDIT_KEEP) -> None:
        """Delete all but the newest `keep` records."""
        names = sorted(await self.zk.get_children(self.paths.repair_audit))
        for name in names[:max(0, len(names) - keep)]:
            try:
                await self.zk.delete(self.paths.repair_audit_record(name))
            except NoNodeError:
                pass


async def read_audit(zk: ZkClient, paths: FsPaths) -> list[dict]:
    """The audit log, oldest first."""
    names = sorted(await zk.get_children(paths.repair_audit))
    got = await zk.get_many([paths.repair_audit_record(n) for n in names])
    return [json.loads(item[0]) for item in got if item]
