"""A real ZooKeeper (the Debian `zookeeper` package), run by our own code.

`ZkEnsemble(base_dir, servers=1 or 3)` writes a config per server with free
loopback ports and its own data dir, starts the JVMs, waits until each answers
`ruok`, and stops them by PID. Used by the tests, by `dfs up` and by benchmarks.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dfs.tls import client_context, zookeeper_pems

ZK_JARS = "/usr/share/java/zookeeper.jar"
ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# what NettyServerCnxnFactory (TLS) needs besides zookeeper.jar's own Class-Path
NETTY_JARS = ":".join(f"/usr/share/java/netty-{n}.jar" for n in (
    "codec", "handler", "buffer", "common", "transport", "resolver",
    "transport-native-unix-common", "transport-native-epoll"))
JUTE_MAXBUFFER = 16 * 1024 * 1024  # big directory listings (see README)

LOG4J = """\
log4j.rootLogger=INFO, FILE
log4j.appender.FILE=org.apache.log4j.FileAppender
log4j.appender.FILE.File={log}
log4j.appender.FILE.layout=org.apache.log4j.PatternLayout
log4j.appender.FILE.layout.ConversionPattern=%d{{ISO8601}} [myid:%X{{myid}}] %-5p [%t:%C{{1}}@%L] - %m%n
"""


def default_heap_mb(servers: int = 1) -> int:
    """`dfs up`'s heap per ZooKeeper server: a quarter of the machine's memory
    (shared by the servers of a local ensemble), at least 512 MiB and at most
    8 GiB (README: Capacity; `dfs up --zk-heap` overrides)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(512, min(8192, (total >> 20) // 4 // servers))


def jvm_flags(heap_mb: int) -> list[str]:
    """A server JVM for ZooKeeper: a fixed heap (Xms = Xmx: the data tree lives there,
    and admission control sizes against it), G1, and exit on OutOfMemoryError
    rather than linger half-dead (a supervisor restarts it; no multi-GiB heap dump)."""
    return ["-server", f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=100", "-XX:+ExitOnOutOfMemoryError",
            "-XX:-HeapDumpOnOutOfMemoryError", "-Xshare:auto"]


class ZkError(Exception):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def four_letter(host: str, port: int, cmd: str, timeout: float = 1.0,
                tls: ssl.SSLContext | None = None) -> str:
    """Send a ZooKeeper four-letter command (over TLS to a secure client port: `tls`);
    '' when the server does not answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                (tls.wrap_socket(raw) if tls is not None else raw) as s:
            s.sendall(cmd.encode())
            chunks = []
            while True:
                b = s.recv(4096)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def heap_used(pid: int) -> int | None:
    """Live heap bytes of a local JVM after a full GC (jcmd), or None."""
    try:
        for _ in range(2):  # (one full GC leaves some of what the previous work let go)
            subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=120, check=True)
        out = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"used (\d+)K", out)
    return int(m.group(1)) << 10 if m else None


def java_available() -> bool:
    return shutil.which("java") is not None and Path(ZK_JARS).exists()


@dataclass
class ZkServer:
    myid: int
    dir: Path
    client_port: int
    quorum_port: int
    election_port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    tls: ssl.SSLContext | None = None  # its client port speaks TLS (secureClientPort)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "zookeeper.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / "zookeeper.pid"

    def mode(self) -> str:
        """'standalone', 'leader', 'follower' or '' when not serving."""
        out = four_letter(self.host, self.client_port, "srvr", tls=self.tls)
        for line in out.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ZkEnsemble:
    """One standalone server or a quorum of `servers` on loopback (or on `host`)."""

    def __init__(self, base_dir: str | os.PathLike, servers: int = 1, *, heap_mb: int = 256,
                 tick_ms: int = 200, ports: list[tuple[int, int, int]] | None = None,
                 extra: list[str] | None = None, host: str = "127.0.0.1",
                 tls_key: bytes | None = None):
        """ports: (client, quorum, election) per server, to restart on the same ports.
        extra: more zoo.cfg lines ("key=value").
        host: the local address every server binds (tests/netns.py: one that a
        network namespace reaches over a veth pair).
        tls_key: the cluster key: clients reach every server over TLS only (its client
        port is a secureClientPort, with a certificate of the cluster CA, dfs.tls),
        and `hosts` says "tls:"."""
        self.extra = list(extra or [])
        self.tls_key = tls_key
        self.base = Path(base_dir)
        self.tick_ms = tick_ms
        self.heap_mb = heap_mb
        self.servers: list[ZkServer] = []
        for i in range(servers):
            d = self.base / f"zk{i + 1}"
            cp, qp, ep = ports[i] if ports else (free_port(host), free_port(host), free_port(host))
            self.servers.append(ZkServer(i + 1, d, cp, qp, ep, host,
                                         tls=client_context(tls_key) if tls_key else None))

    @property
    def ports(self) -> list[tuple[int, int, int]]:
        return [(s.client_port, s.quorum_port, s.election_port) for s in self.servers]

    # -- configuration

    @property
    def hosts(self) -> str:
        return ("tls:" if self.tls_key else "") + ",".join(s.address for s in self.servers)

    def _config(self, s: ZkServer) -> str:
        lines = [
            f"tickTime={self.tick_ms}",
            "initLimit=20",
            "syncLimit=10",
            f"dataDir={s.dir / 'data'}",
            *([f"secureClientPort={s.client_port}", f"secureClientPortAddress={s.host}",
               "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
               f"ssl.keyStore.location={s.dir / 'keystore.pem'}", "ssl.keyStore.type=PEM",
               f"ssl.trustStore.location={s.dir / 'truststore.pem'}", "ssl.trustStore.type=PEM",
               "ssl.clientAuth=none",  # (clients prove the key by the digest ACL, inside TLS)
               "ssl.protocol=TLSv1.3", "ssl.enabledProtocols=TLSv1.3",
               "ssl.ciphersuites=TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384,"
               "TLS_CHACHA20_POLY1305_SHA256"]
              if self.tls_key else [f"clientPort={s.client_port}", f"clientPortAddress={s.host}"]),
            "maxClientCnxns=0",
            "minSessionTimeout=1000",
            "maxSessionTimeout=60000",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "autopurge.snapRetainCount=3",
            "autopurge.purgeInterval=1",
            "snapCount=20000",
            "preAllocSize=16384",
        ]
        lines += self.extra
        if len(self.servers) > 1:
            for o in self.servers:
                lines.append(f"server.{o.myid}={o.host}:{o.quorum_port}:{o.election_port}")
        return "\n".join(lines) + "\n"

    def _write(self, s: ZkServer) -> None:
        (s.dir / "data").mkdir(mode=0o700, parents=True, exist_ok=True)
        (s.dir / "zoo.cfg").write_text(self._config(s))
        (s.dir / "data" / "myid").write_text(f"{s.myid}\n")
        (s.dir / "log4j.properties").write_text(LOG4J.format(log=s.log_path))
        if self.tls_key:
            keystore, truststore = zookeeper_pems(self.tls_key)
            for name, pem in (("keystore.pem", keystore), ("truststore.pem", truststore)):
                fd = os.open(s.dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)

    # -- lifecycle

    def start(self, timeout: float = 60.0) -> "ZkEnsemble":
        if not java_available():
            raise ZkError("ZooKeeper is not installed (need java and /usr/share/java/zookeeper.jar;"
                          " the README's commands install the Debian 'zookeeper' package)")
        try:
            for s in self.servers:
                self.start_server(s.myid - 1, wait=False)
            self.wait_serving(timeout)
        except BaseException:  # a failed or interrupted start leaves no server behind
            self.stop()
            raise
        return self

    def start_server(self, index: int, wait: bool = True, timeout: float = 60.0) -> None:
        s = self.servers[index]
        if s.alive():
            return
        self._write(s)
        cmd = [
            "java", *jvm_flags(self.heap_mb),
            f"-Djute.maxbuffer={JUTE_MAXBUFFER}",
            "-Dzookeeper.admin.enableServer=false",
            f"-Dlog4j.configuration=file:{s.dir / 'log4j.properties'}",
            "-cp", f"{s.dir}:{ZK_JARS}:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"
                   + (f":{NETTY_JARS}" if self.tls_key else ""),
            ZK_MAIN, str(s.dir / "zoo.cfg"),
        ]
        out = open(s.dir / "stdout.log", "ab")
        # umask 077: the transaction logs and snapshots hold inline file contents
        s.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)
        out.close()
        s.pid_path.write_text(f"{s.proc.pid}\n")
        if wait:
            self._wait_one(s, time.monotonic() + timeout)

    def _wait_one(self, s: ZkServer, deadline: float) -> None:
        while time.monotonic() < deadline:
            if s.proc is not None and s.proc.poll() is not None:
                raise ZkError(f"ZooKeeper server {s.myid} exited with {s.proc.returncode}:\n"
                              + self.log_tail(s))
            if s.mode() in ("standalone", "leader", "follower"):
                return
            time.sleep(0.1)
        raise ZkError(f"ZooKeeper server {s.myid} did not start serving:\n" + self.log_tail(s))

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for s in self.servers:
            if s.alive():
                self._wait_one(s, deadline)

    def stop_server(self, index: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        s = self.servers[index]
        if s.proc is None:
            return
        if s.proc.poll() is None:
            s.proc.send_signal(sig)
            try:
                s.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
        s.proc = None

    def kill_server(self, index: int) -> None:
        self.stop_server(index, signal.SIGKILL)

    def stop(self) -> None:
        for i in range(len(self.servers)):
            self.stop_server(i)

    def leader_index(self) -> int | None:
        for i, s in enumerate(self.servers):
            if s.mode() in ("leader", "standalone"):
                return i
        return None

    def log_tail(self, s: ZkServer | None = None, lines: int = 40) -> str:
        out = []
        for srv in [s] if s else self.servers:
            for p in (srv.log_path, srv.dir / "stdout.log"):
                if p.exists():
                    text = p.read_text(errors="replace").splitlines()[-lines:]
                    out.append(f"--- {p}\n" + "\n".join(text))
        return "\n".join(out)

    def __enter__(self) -> "ZkEnsemble":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
