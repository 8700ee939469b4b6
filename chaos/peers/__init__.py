"""nginx and haproxy in front of a scenario's fleet, for the comparisons on defaults.

Their configs sit next to this module as templates (``{{name}}`` placeholders) and say
which of each proxy's settings the comparison uses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.templates import render_file
from chaos.fleet import Node
from chaos.processes import Child, ProcessGroup, StartError, free_port, until_listening

HERE = Path(__file__).parent
PEERS = ("nginx", "haproxy")


def binary(peer: str) -> str | None:
    return shutil.which(peer) or shutil.which(peer, path="/usr/sbin:/sbin")


class PeerProcess:
    """One nginx or haproxy process proxying to the fleet's nodes."""

    def __init__(self, peer: str, procs: ProcessGroup, workdir: Path, nodes: list[Node]) -> None:
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}")
        self.peer = peer
        self.procs = procs
        self.workdir = workdir
        self.nodes = nodes
        self.port = 0
        self.child: Child | None = None

    @property
    def traffic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 15.0) -> None:
        path = binary(self.peer)
        if path is None:
            raise StartError(f"{self.peer} is not installed (.ci/run installs it)")
        self.port = free_port()
        argv = self.argv(path, {"workdir": str(self.workdir), "port": str(self.port)})
        self.child = self.procs.start(self.peer, argv, self.workdir / "logs" / self.log)
        await until_listening(self.child, self.port, self.peer, timeout)

    @property
    def log(self) -> str:
        return f"{self.peer}.log"

    def argv(self, path: str, values: dict[str, str]) -> list[str]:
        """Its config written from the template, and its command line."""
        if self.peer == "nginx":
            (self.workdir / "nginx-tmp").mkdir(parents=True, exist_ok=True)
            values["servers"] = "\n".join(f"        server {n.host}:{n.port};"
                                          for n in self.nodes)
            conf = render_file(HERE / "nginx.conf", values, self.workdir / "nginx.conf")
            return [path, "-p", str(self.workdir), "-c", str(conf),
                    "-e", str(self.workdir / "nginx.error.log")]
        values["servers"] = "\n".join(f"    server {n.name} {n.host}:{n.port}"
                                      for n in self.nodes)
        conf = render_file(HERE / "haproxy.cfg", values, self.workdir / "haproxy.cfg")
        return [path, "-db", "-f", str(conf)]
