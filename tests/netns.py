"""A network namespace of a test's own for one storage node, to partition it (issue 14).

    with node_netns() as net:
        zk = ZkEnsemble(base, host=net.meta.host_ip)         # the host end of the meta link
        cluster.add_node(listen=f"{net.data.ns_ip}:0", netns=net.name)
        other nodes: listen=f"{net.data.host_ip}:0"          # reachable from the namespace
        net.cut(net.data); ...; net.heal(net.data)

Two veth pairs join the namespace to the host's: `meta` (the node reaches
ZooKeeper over it) and `data` (the node serves blocks on its namespace end and
reaches the other nodes at its host end). Everything else stays in the host's
namespaces: ZooKeeper, the other nodes, the mount (a FUSE mount made under `ip
netns exec` would land in another mount namespace). Host processes reach the
addresses of the host ends as local addresses, whatever state the links are in.

`cut(link)` sets the namespace end down: the host end loses its carrier and
packets either way are dropped without an error, as in a real partition
(established connections time out; a new one fails at once inside the
namespace, no route, and after ~3 s from the host, when ARP gives up); there is
no iptables, nft or netem on the test machines. `heal(link)` sets it up again.

Each namespace gets a /29 in a 10.213.X.0/24 that no interface uses yet, and
names with the pid and a random suffix, so parallel pytest-xdist workers never
collide (a lock file serializes the choice). Everything is deleted on exit,
whatever happened; processes still in the namespace (ours: the only thing that
runs there) are stopped by PID first.
"""

import fcntl
import ipaddress
import os
import random
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from tools.local.procs import stop_pid

LOCK = "/run/dfs-test-netns.lock"


class NetnsError(RuntimeError):
    pass


def ip(*args: str, netns: str = "") -> str:
    """Run `ip ARGS` (in `netns`); raise NetnsError with its stderr when it fails."""
    cmd = (["ip", "netns", "exec", netns, "ip"] if netns else ["ip"]) + list(args)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NetnsError("`ip` is not installed (Debian package iproute2; tools/dfs.sh installs it)") from None
    if r.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


@dataclass
class Link:
    """One veth pair: `host_if` in the host's namespace, `ns_if` in the test's."""

    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    netns: str


@dataclass
class NodeNetns:
    name: str
    meta: Link
    data: Link

    def cut(self, link: Link) -> None:
        ip("link", "set", link.ns_if, "down", netns=self.name)

    def heal(self, link: Link) -> None:
        ip("link", "set", link.ns_if, "up", netns=self.name)


def netns_pids(name: str) -> list[int]:
    """The processes running in namespace `name`."""
    try:
        return [int(p) for p in ip("netns", "pids", name).split()]
    except NetnsError:
        return []


def _used_subnets() -> set[int]:
    """Third octets of 10.213.x.y addresses on the host's interfaces."""
    used = set()
    for word in ip("-o", "-4", "addr", "show").split():
        if word.startswith("10.213."):
            used.add(int(word.split(".")[2]))
    return used


def _link(name: str, tag: str, role: str, subnet: ipaddress.IPv4Network, made: list[str]) -> Link:
    """A veth pair between the host and namespace `name`; its host end goes to `made`."""
    host_ip, ns_ip = (str(a) for a in list(subnet.hosts())[:2])
    link = Link(f"p{tag}{role}h", f"p{tag}{role}n", host_ip, ns_ip, name)
    ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
    made.append(link.host_if)
    ip("link", "set", link.ns_if, "netns", name)
    ip("addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", link.host_if)
    ip("link", "set", link.host_if, "up")
    ip("addr", "add", f"{ns_ip}/{subnet.prefixlen}", "dev", link.ns_if, netns=name)
    ip("link", "set", link.ns_if, "up", netns=name)
    return link


@contextmanager
def node_netns() -> Iterator[NodeNetns]:
    """A namespace with a meta and a data link to the host's; all deleted on exit.

    Raises:
      NetnsError: a namespace or link could not be made (not root, no iproute2).
    """
    tag = f"{os.getpid() % 100000}{random.randrange(256):02x}"  # "p" + tag + "mh": <= 15 chars
    name = f"dfs-part-{tag}"
    made_ns = False
    host_ifs: list[str] = []
    try:
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the links hold their addresses
            free = sorted(set(range(256)) - _used_subnets())
            if not free:
                raise NetnsError("no free 10.213.X.0/24 left")
            octet = random.choice(free)
            base = ipaddress.ip_network(f"10.213.{octet}.0/29")
            meta_net, data_net = base.subnets(new_prefix=30)
            ip("netns", "add", name)
            made_ns = True
            ip("link", "set", "lo", "up", netns=name)
            meta = _link(name, tag, "m", meta_net, host_ifs)
            data = _link(name, tag, "d", data_net, host_ifs)
        yield NodeNetns(name, meta, data)
    finally:
        if made_ns:
            for pid in netns_pids(name):
                print(f"netns {name}: stopping pid {pid}, still running there")
                stop_pid(pid, timeout=5)
        for ifname in host_ifs:
            try:
                ip("link", "del", ifname)  # deletes its peer too
            except NetnsError:
                pass  # gone with the namespace already
        if made_ns:
            ip("netns", "del", name)
