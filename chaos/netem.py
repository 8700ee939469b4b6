"""Test hosts in network namespaces, for packet loss and partitions with ``tc netem``.

A test host is a namespace joined to the root one by a veth pair on a /30; a node
runs inside it and the gateway (in the root namespace) reaches it at the veth
address. netem is applied on both ends of the pair, so loss and partitions hit
both directions. Everything is created per scenario and removed in ``finally``,
including after errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from types import TracebackType

#: 10.213.<index>.0/30 for the test hosts; checked against the addresses in use.
SUBNET_PREFIX = "10.213"


class NetemError(RuntimeError):
    pass


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    if proc.returncode != 0:
        raise NetemError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")


class NetnsHost:
    """A network namespace with a veth link to the root namespace."""

    def __init__(self, index: int) -> None:
        tag = f"{os.getpid() % 100000}{index}"
        self.ns = f"hagw-chaos-{tag}"
        # Interface names are at most 15 characters.
        self.host_if = f"hc{tag}h"[:15]
        self.node_if = f"hc{tag}n"[:15]
        self.host_ip = f"{SUBNET_PREFIX}.{index}.1"
        self.node_ip = f"{SUBNET_PREFIX}.{index}.2"
        self._created_ns = False
        self._created_link = False

    def __enter__(self) -> NetnsHost:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

    def create(self) -> None:
        in_use = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True,
                                check=False).stdout
        if f"{self.host_ip}/" in in_use:
            raise NetemError(f"{self.host_ip} is already in use on this machine")
        _run(["ip", "netns", "add", self.ns])
        self._created_ns = True
        _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if])
        self._created_link = True
        _run(["ip", "link", "set", self.node_if, "netns", self.ns])
        _run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
        _run(["ip", "link", "set", self.host_if, "up"])
        inside = ["ip", "netns", "exec", self.ns]
        _run([*inside, "ip", "addr", "add", f"{self.node_ip}/30", "dev", self.node_if])
        _run([*inside, "ip", "link", "set", self.node_if, "up"])
        _run([*inside, "ip", "link", "set", "lo", "up"])

    def netem(self, *spec: str) -> None:
        """``netem("loss", "20%")``: both directions of the link."""
        _run(["tc", "qdisc", "replace", "dev", self.host_if, "root", "netem", *spec])
        _run(["ip", "netns", "exec", self.ns, "tc", "qdisc", "replace", "dev", self.node_if,
              "root", "netem", *spec])

    def clear(self) -> None:
        for argv in (["tc", "qdisc", "del", "dev", self.host_if, "root"],
                     ["ip", "netns", "exec", self.ns, "tc", "qdisc", "del", "dev",
                      self.node_if, "root"]):
            with contextlib.suppress(NetemError, subprocess.TimeoutExpired):
                _run(argv)

    def destroy(self) -> None:
        # Deleting one end of a veth pair deletes both; deleting the namespace ends the rest.
        if self._created_link:
            with contextlib.suppress(NetemError, subprocess.TimeoutExpired):
                _run(["ip", "link", "del", self.host_if])
            self._created_link = False
        if self._created_ns:
            with contextlib.suppress(NetemError, subprocess.TimeoutExpired):
                _run(["ip", "netns", "del", self.ns])
            self._created_ns = False


def unsupported() -> str | None:
    """Why netem scenarios cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        with NetnsHost(250) as host:
            try:
                host.netem("loss", "0%")
            except NetemError as exc:
                return f"tc netem is not available on this kernel ({exc})"
    except (NetemError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace with a veth pair ({exc})"
    return None
