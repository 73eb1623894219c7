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
from typing import Awaitable, Callable, TypeVar

import trio

from dfs.errors import DfsError
from dfs.zk.errors import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a version-checked write raises when someone else changed what it read.
CONFLICTS: tuple[type[BaseException], ...] = (BadVersionError, NoNodeError, NodeExistsError,
                                              NotEmptyError)

# Retry at once EAGER times, then pause a random time of up to BASE * 2**n
# seconds, never more than CAP (fighting clients spread out).
EAGER, BASE, CAP = 2, 0.0005, 0.05


async def retrying(attempt: Callable[[], Awaitable[T]], *, attempts: int, what: str,
                   conflicts: tuple[type[BaseException], ...] = CONFLICTS,
                   on_retry: Callable[[BaseException], None] | None = None) -> T:
    """Run `attempt()` until it returns without a conflict, at most `attempts` times.

    Args:
      attempt: the idempotent inner step; it raises one of `conflicts` to ask
        for another try.
      attempts: the bound (each caller states its own).
      what: names the operation in the log and in the final error.
      conflicts: the exceptions that mean "read again and retry".
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
            if n > EAGER:
                await trio.sleep(random.uniform(0, min(CAP, BASE * 2 ** n)))
        try:
            return await attempt()
        except conflicts as e:
            last = e
    raise DfsError(errno.EIO, f"{what}: too many conflicting concurrent changes ({last!r})")
