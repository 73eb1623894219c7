"""Run `dfs mount` as a foreground subprocess we hold by PID (tests, `dfs up`, benchmarks)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.local.procs import log_tail, pid_alive, stop_pid

DUMP_AFTER = 5.0  # seconds after the unmount: a daemon still running logs its task tree (SIGUSR1)


def fusermount_unmount(mountpoint: str | os.PathLike, lazy: bool = False) -> bool:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    return subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def is_mounted(mountpoint: str | os.PathLike) -> bool:
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == target for line in f)
    except OSError:
        return False


class MountProcess:
    def __init__(self, zk_hosts: str, fsname: str, mountpoint: str | os.PathLike, *,
                 options: list[str] | None = None, log_path: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, detach: bool = False,
                 key_file: str | os.PathLike | None = None, metrics: str = ""):
        self.zk_hosts = zk_hosts
        self.fsname = fsname
        self.mountpoint = Path(mountpoint)
        self.options = options or []
        self.log_path = Path(log_path) if log_path else self.mountpoint.parent / f"{self.mountpoint.name}.mount.log"
        self.env = env
        self.key_file = key_file  # None: the mount's default (dfs/keys.py)
        self.metrics = metrics  # HOST:PORT of its Prometheus endpoint ("": none)
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    def start(self, timeout: float = 30.0) -> "MountProcess":
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mount", str(self.mountpoint), "--zk", self.zk_hosts,
               "--fs", self.fsname, "--foreground"]
        if self.key_file:
            cmd += ["--key-file", str(self.key_file)]
        for o in self.options:
            cmd += ["-o", o]
        if self.metrics:
            cmd += ["--metrics", self.metrics]
        env = dict(os.environ, **(self.env or {}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited with {self.proc.returncode}\n{log_tail(self.log_path)}")
            if is_mounted(self.mountpoint):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mount did not appear within {timeout} s\n{log_tail(self.log_path)}")

    def stop(self, timeout: float = 60.0) -> None:
        """Unmount cleanly (the daemon flushes), lazily if busy; then make sure it exited."""
        if is_mounted(self.mountpoint):
            if not fusermount_unmount(self.mountpoint):
                time.sleep(0.5)
                if not fusermount_unmount(self.mountpoint):
                    fusermount_unmount(self.mountpoint, lazy=True)
        if self.pid is not None:
            start = time.monotonic()
            deadline = start + timeout
            asked = False
            while time.monotonic() < deadline and pid_alive(self.pid):
                if self.proc is not None and self.proc.poll() is not None:
                    break
                if not asked and time.monotonic() - start > DUMP_AFTER:
                    # slow to exit: have it log what each of its tasks waits on (mount/tasks.py)
                    asked = True
                    try:
                        os.kill(self.pid, signal.SIGUSR1)
                    except ProcessLookupError:
                        break
                time.sleep(0.05)
            stop_pid(self.pid, proc=self.proc)

    def kill(self) -> None:
        """SIGKILL the daemon (a crash), then detach the dead mount."""
        if self.pid is not None and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait()
        if is_mounted(self.mountpoint):
            fusermount_unmount(self.mountpoint, lazy=True)

    def log_tail(self) -> str:
        return log_tail(self.log_path)
