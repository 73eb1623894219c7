"""ZooKeeper's error names, in one place: every other module catches these, never kazoo's.

They are kazoo's own exception classes (the wire client decodes a reply's error
code with kazoo's table), so one `except NoNodeError` covers every client.

- Outcomes the caller decides on (often "already done" after a retry):
  NoNodeError, NodeExistsError, BadVersionError, NotEmptyError.
- NoAuthError: the znode's ACL does not let this session's key in.
- RETRYABLE: the connection, not the request, failed; the client resends on
  the next connection until its op_timeout and then raises ZkUnavailable.
"""

from kazoo.exceptions import (
    EXCEPTIONS,
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RolledBackError,
    SessionExpiredError,
    ZookeeperError,
)

from dfs.errors import ZkUnavailable

RETRYABLE = (ConnectionLoss, OperationTimeoutError, SessionExpiredError, ConnectionClosedError)

__all__ = [
    "EXCEPTIONS", "RETRYABLE", "BadVersionError", "ConnectionClosedError", "ConnectionLoss",
    "NoAuthError", "NoNodeError", "NodeExistsError", "NotEmptyError", "OperationTimeoutError", "RolledBackError",
    "SessionExpiredError", "ZkUnavailable", "ZookeeperError",
]
