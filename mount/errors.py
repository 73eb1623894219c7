"""The one place where errors become FUSEError.

Only FUSEError may leave a handler: a DfsError becomes its errno (ENODATA is
the kernel's ENOATTR), anything else is a bug, logged, and reported as EIO so
that the daemon keeps serving. Every handler is timed and its errors counted here
(dfs.metrics: dfs_fuse_request_seconds, dfs_fuse_errors_total).
"""

import errno
import functools
import logging
import time
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3
import trio

from dfs.errors import DfsError
from dfs.metrics import FUSE_ERRORS, FUSE_SECONDS

log = logging.getLogger(__name__)
T = TypeVar("T")


def fuse_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a handler: errors become FUSEError, its calls, time and errors are counted."""
    seconds = FUSE_SECONDS.labels(fn.__name__)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        t = time.perf_counter()
        try:
            try:
                return await fn(*args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except DfsError as e:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR if e.errno == errno.ENODATA
                                        else e.errno) from None
            except trio.Cancelled:
                raise
            except Exception:
                log.exception("%s failed", fn.__name__)
                raise pyfuse3.FUSEError(errno.EIO) from None
        except pyfuse3.FUSEError as e:
            FUSE_ERRORS.labels(fn.__name__, errno.errorcode.get(e.errno, str(e.errno))).inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - t)

    return wrapper
