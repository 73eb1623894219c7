"""Errors that carry an errno from the bottom of the stack to the top.

Every layer raises `DfsError(errno.X, "what happened")`. The mount turns it into
`pyfuse3.FUSEError` in one helper; the command-line tools print one line and exit
with a documented code.
"""

import errno
import os


class DfsError(Exception):
    """An error with a POSIX errno attached."""

    def __init__(self, err: int, message: str = ""):
        self.errno = err
        self.message = message or os.strerror(err)
        super().__init__(err, self.message)

    def __str__(self) -> str:
        return f"{self.message} [{errno.errorcode.get(self.errno, self.errno)}]"


class ZkUnavailable(DfsError):
    """ZooKeeper could not be reached within the allowed time.

    EIO, as an NFS hard mount reports a server gone for longer than it waits:
    the mount's user sees an I/O error, never "No route to host".
    """

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


class QuietError(Exception):
    """A failure a command reports in one clear line (no traceback) and ends with `exitcode`.

    Every main catches it in one place: `dfs` subcommands (tools/cli.py), the
    node (nodes/main.py) and the mount (mount/main.py). Exit codes follow the
    command contract: 1 ran and found a problem or refused, 2 usage or
    connection error.
    """

    def __init__(self, message: str, exitcode: int = 2):
        self.message = message
        self.exitcode = exitcode
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class UsageError(QuietError):
    """Bad command-line input: one line, exit 2."""

    def __init__(self, message: str):
        super().__init__(message, 2)
