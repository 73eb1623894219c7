"""The one conflict-retry policy (kazoo's recipe/counter.py pattern).

The public call hands an idempotent inner step to `retrying`: the step reads
what it depends on (with versions), writes version-checked, and lets a
conflict escape; `retrying` runs it again. Every caller states its bound.
Connection loss is not a conflict: the client itself retries that until its
op_timeout (dfs/zk/session.py).
"""

import errno
import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import trio

from dfs.errors import DfsError
from dfs.zk.errors import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a version-checked write raises when someone else changed what it read.
CONFLICTS: tuple[type[BaseException], ...] = (BadVersionError, NoNodeError, NodeExistsError,
                                              NotEmptyError)


@dataclass(frozen=True)
class Backoff:
    """Retry at once `eager` times, then wait a random pause of up to
    `base * 2**n` seconds, never more than `cap` (fighting clients spread out)."""

    eager: int = 2
    base: float = 0.0005
    cap: float = 0.05

    def pause(self, n: int) -> float:
        if n <= self.eager:
            return 0.0
        return random.uniform(0, min(self.cap, self.base * 2 ** n))


DEFAULT_BACKOFF = Backoff()


async def retrying(attempt: Callable[[], Awaitable[T]], *, attempts: int, what: str,
                   conflicts: tuple[type[BaseException], ...] = CONFLICTS,
                   backoff: Backoff = DEFAULT_BACKOFF,
                   on_retry: Callable[[BaseException], None] | None = None) -> T:
    """Run `attempt()` until it returns without a conflict, at most `attempts` times.

    Args:
      attempt: the idempotent inner step; it raises one of `conflicts` to ask
        for another try.
      attempts: the bound (each caller states its own).
      what: names the operation in the log and in the final error.
      conflicts: the exceptions that mean "read again and retry".
      backoff: pauses between attempts.
      on_retry: called with the conflict before each retry (statistics).
    Returns:
      what the successful attempt returned.
    Raises:
      DfsError(EIO) when every attempt conflicted; anything else `attempt`
      raises, unchanged.
    """
    last: BaseException | None = None
    for n in range(attempts):
        if n:
            if on_retry is not None:
                on_retry(last)
            log.debug("%s: conflict %r, retrying", what, last)
            pause = backoff.pause(n)
            if pause:
                await trio.sleep(pause)
        try:
            return await attempt()
        except conflicts as e:
            last = e
    raise DfsError(errno.EIO, f"{what}: too many conflicting concurrent changes ({last!r})")
