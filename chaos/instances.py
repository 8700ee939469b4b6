"""Several hagw instances as one gateway (``peers``): their configs, sharing one
redis-server, and haproxy in TCP mode in front of them, for the fleet scenarios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.templates import render_file
from chaos.gateway import ConfigBuilder, GatewayProcess
from chaos.peers import HERE, PeerProcess
from chaos.processes import ProcessGroup
from chaos.redis import RedisServer

#: The instances' names and worker processes: one of them a supervisor with two workers,
#: the others single processes (the machine has two cores for all of them).
INSTANCES = (("gw-a", 0), ("gw-b", 2), ("gw-c", 0))
#: The leader's lease: a dead leader is replaced within it.
LEASE_TTL = "2s"


def peered(config: ConfigBuilder, name: str, redis: RedisServer,
           workers: int) -> ConfigBuilder:
    """``config`` for one instance of the fleet: ``peers`` on the shared redis-server."""

    def build(*args: Any, **kwargs: Any) -> dict[str, Any]:
        data = config(*args, **kwargs)
        data["workers"] = workers
        data["peers"] = {"redis": redis.url, "name": name, "lease_ttl": LEASE_TTL,
                         "timeout": "500ms"}
        return data

    return build


class Balancer(PeerProcess):
    """haproxy in TCP mode over the instances' traffic listeners."""

    def __init__(self, procs: ProcessGroup, workdir: Path,
                 gateways: list[GatewayProcess]) -> None:
        super().__init__("haproxy", procs, workdir, [])
        self.gateways = gateways

    @property
    def log(self) -> str:
        return "haproxy-tcp.log"

    def argv(self, path: str, values: dict[str, str]) -> list[str]:
        values["servers"] = "\n".join(f"    server {g.workdir.name} 127.0.0.1:{g.traffic_port}"
                                      for g in self.gateways)
        conf = render_file(HERE / "haproxy-tcp.cfg", values, self.workdir / "haproxy-tcp.cfg")
        return [path, "-db", "-f", str(conf)]
