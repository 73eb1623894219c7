"""TLS under WireZk's non-blocking socket (ZooKeeper's `secureClientPort`).

WireZk drives a raw non-blocking socket itself (`sock.send` straight from the
calling task, `sock.recv` in its reader, `trio.lowlevel.wait_readable` on it):
the speed it exists for. `TlsSocket` keeps that interface over an
`ssl.SSLObject` with memory BIOs, so the session code does not change:

- `recv(n)` returns every byte the TLS layer can decrypt from what the socket
  has (at least one, possibly more than `n`), and raises BlockingIOError only
  when it needs more from the socket. So nothing decrypted is ever left inside
  the TLS object while the reader waits for the socket to become readable.
- `send(data)` encrypts all of `data` and returns its length; what the socket
  did not take stays in `backlog`, which the next `send` or `flush` pushes first
  (and `send` raises BlockingIOError while the backlog cannot move, so the
  caller keeps the frame queued, in order). WireZk's writer task flushes the
  backlog when the socket is writable.

A hosts string that starts with `tls:` ("tls:host:port,host:port") asks for TLS
(`split_tls`); the context comes from the caller (dfs.tls.client_context: the
cluster CA rebuilt from the key, TLS 1.3).
"""

import socket
import ssl

import trio

TLS_PREFIX = "tls:"
RAW_READ = 256 * 1024


def split_tls(hosts: str) -> tuple[bool, str]:
    """("tls:" given, the hosts string without it)."""
    if hosts.startswith(TLS_PREFIX):
        return True, hosts[len(TLS_PREFIX):]
    return False, hosts


class TlsSocket:
    """A TLS client connection over a connected non-blocking socket (see the module)."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext):
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=False)
        self.backlog = bytearray()  # ciphertext the socket has not taken yet

    @classmethod
    async def handshake(cls, raw: socket.socket, ctx: ssl.SSLContext) -> "TlsSocket":
        """Run the TLS handshake (raises ssl.SSLError, an OSError, if it fails)."""
        self = cls(raw, ctx)
        while True:
            try:
                self._obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            await self._flush_all()
            if done:
                return self
            await self._pull()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()

    # -- reading

    def recv(self, n: int) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self._obj.read(max(n, 16384))
            except ssl.SSLWantReadError:
                self._take_output()  # (post-handshake messages may want an answer)
                if out:
                    return bytes(out)
                data = self.raw.recv(RAW_READ)  # BlockingIOError: the caller waits
                if not data:
                    return b""
                self._in.write(data)
                continue
            except ssl.SSLZeroReturnError:  # the server closed the TLS session
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    async def _pull(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.raw)
            try:
                data = self.raw.recv(RAW_READ)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionResetError("the server closed the connection during the TLS handshake")
            self._in.write(data)
            return

    # -- writing

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self.backlog:
            self.flush()
            if self.backlog:
                raise BlockingIOError
        self._obj.write(data)
        self._take_output()
        self.flush()
        return len(data)

    def flush(self) -> None:
        """Push the backlog into the socket as far as it takes it (never blocks)."""
        while self.backlog:
            try:
                n = self.raw.send(self.backlog)
            except BlockingIOError:
                return
            del self.backlog[:n]

    def _take_output(self) -> None:
        if self._out.pending:
            self.backlog += self._out.read()

    async def _flush_all(self) -> None:
        self._take_output()
        while True:
            self.flush()
            if not self.backlog:
                return
            await trio.lowlevel.wait_writable(self.raw)
