"""The demo backend nodes of one scenario, as real processes: start, kill, hang, restart,
inject faults, and read their write logs into the ledger.

Nodes write a pidfile in the run directory, the layout ``hagw demo-redeploy``
expects, so a deploy can replace them and the suite still finds the current pid.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from chaos.ledger import Ledger
from chaos.processes import Child, ProcessGroup, StartError, free_port, listening, pid_alive
from gateway.app.demo import redeploy


@dataclass
class Node:
    name: str
    host: str
    port: int
    version: str = "v1"
    #: Network namespace the node runs in (the netem scenarios), else the root one.
    netns: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Fleet:
    def __init__(self, procs: ProcessGroup, workdir: Path, http: aiohttp.ClientSession,
                 ledger: Ledger) -> None:
        self.procs = procs
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.http = http
        self.ledger = ledger
        self.nodes: list[Node] = []

    def add(self, name: str, host: str = "127.0.0.1", netns: str | None = None,
            port: int | None = None) -> Node:
        node = Node(name, host, port or free_port(), netns=netns)
        self.nodes.append(node)
        return node

    def get(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def pidfile(self, node: Node) -> Path:
        return redeploy.pidfile(self.run_dir, node.name)

    def pid(self, node: Node) -> int | None:
        """The pid of the node's current incarnation (a deploy may have replaced it)."""
        try:
            return int(self.pidfile(node).read_text().strip())
        except (OSError, ValueError):
            return None

    def pids(self) -> list[int]:
        return [pid for node in self.nodes if (pid := self.pid(node)) is not None]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, node: Node, timeout: float = 15.0, *, first: bool = False) -> None:
        """Start the node's process and wait until it answers as itself.

        Ports are picked free and bound a moment later, so on a busy machine another
        process can take one in between: on a node's first start the port is replaced
        and the start retried. A restart keeps its port (the gateway's config names it).
        """
        for attempt in range(3 if first else 1):
            if attempt:
                node.port = free_port()
            argv = redeploy.node_command(node.name, node.host, node.port, node.version,
                                         self.run_dir)
            if node.netns is not None:
                argv = ["ip", "netns", "exec", node.netns, *argv]
            self.pidfile(node).unlink(missing_ok=True)
            child = self.procs.start(node.name, argv,
                                     self.workdir / "logs" / f"{node.name}.log")
            if await self._answers_as(node, child, timeout):
                self.ledger.started(node.name, child.pid, time.monotonic())
                return
            await asyncio.to_thread(self.procs.kill_and_wait, child.pid)
        raise StartError(f"{node.name} could not listen on {node.url}:\n{child.log_tail()}")

    async def _answers_as(self, node: Node, child: Child, timeout: float) -> bool:
        """True once ``node.url`` is served by ``child`` (not by whoever else took the port);
        False if the child died or someone else answers there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                return False
            if await asyncio.to_thread(listening, node.host, node.port):
                try:
                    pid = int((await self.stats(node))["pid"])
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                    return False
                return pid == child.pid
            await asyncio.sleep(0.05)
        raise StartError(f"{node.name} did not listen on {node.url} within {timeout:g}s:\n"
                         f"{child.log_tail()}")

    async def start_all(self) -> None:
        await asyncio.gather(*(self.start(node, first=True) for node in self.nodes))

    async def kill(self, node: Node) -> float:
        """Save the node's write log, then SIGKILL it; returns when the signal went."""
        pid = self.pid(node)
        if pid is None:
            raise RuntimeError(f"{node.name} has no pidfile")
        await self.snapshot(node)
        at = time.monotonic()
        self.procs.signal(pid, signal.SIGKILL)
        self.ledger.killed(node.name, pid, at)
        await asyncio.to_thread(self.procs.kill_and_wait, pid)
        self.procs.reap()
        return at

    def freeze(self, node: Node) -> float:
        """SIGSTOP: the process hangs; its listen socket still completes TCP handshakes."""
        pid = self.pid(node)
        assert pid is not None
        at = time.monotonic()
        self.procs.signal(pid, signal.SIGSTOP)
        return at

    def thaw(self, node: Node) -> float:
        pid = self.pid(node)
        assert pid is not None
        self.procs.signal(pid, signal.SIGCONT)
        return time.monotonic()

    def thaw_all(self) -> None:
        """A stopped process is still ours to clean up; SIGCONT first so nothing lingers."""
        for pid in self.pids():
            if pid_alive(pid):
                self.procs.signal(pid, signal.SIGCONT)

    # -- the fault API and the write logs ------------------------------------------------

    async def fault(self, node: Node, **changes: Any) -> None:
        async with self.http.post(f"{node.url}/_fault", json=changes,
                                  timeout=aiohttp.ClientTimeout(total=5)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{node.name} refused fault {changes}: {await resp.text()}")

    async def stats(self, node: Node) -> dict[str, Any]:
        async with self.http.get(f"{node.url}/_stats",
                                 timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return dict(await resp.json())

    async def snapshot(self, node: Node) -> int:
        """Copy the node's write log into the ledger; returns how many writes it held."""
        timeout = aiohttp.ClientTimeout(total=20)
        async with self.http.get(f"{node.url}/_stats", timeout=timeout) as resp:
            pid = int((await resp.json())["pid"])
        async with self.http.get(f"{node.url}/_writes", timeout=timeout) as resp:
            log = list(await resp.json())
        return len(self.ledger.absorb(node.name, pid, log).writes)

    async def collect(self) -> None:
        """Every live node's log, plus what the deploy hook saved of replaced ones."""
        self.ledger.load_hook_snapshots()
        for node in self.nodes:
            pid = self.pid(node)
            if pid is not None and pid_alive(pid):
                await self.snapshot(node)
