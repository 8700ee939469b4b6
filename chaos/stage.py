"""One scenario's world: its directory, node processes, gateway process, rotation
watch, load and ledger, plus the timeline and fault windows the analysis needs.

``close`` stops every process the stage started (and every node a deploy started
for it) whatever happened, so a scenario that fails or is interrupted leaves
nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import aiohttp

from chaos.analysis import GATEWAY_LOSS, NODE_LOSS, Check, FaultWindow, Tally, tally
from chaos.fleet import Fleet, Node
from chaos.gateway import Admin, ConfigBuilder, GatewayProcess, operator_config
from chaos.instances import INSTANCES, Balancer, peered
from chaos.ledger import Ledger
from chaos.load import LoadConfig, MixedLoad
from chaos.netem import NetnsHost
from chaos.peers import PEERS, PeerProcess
from chaos.processes import ProcessGroup
from chaos.redis import RedisServer
from chaos.settings import Settings
from chaos.watch import RotationWatch


class Stage:
    def __init__(self, settings: Settings, name: str, http: aiohttp.ClientSession,
                 root: Path, *, nodes: int = 3, netns: NetnsHost | None = None,
                 proxy: str = "hagw", config: ConfigBuilder = operator_config,
                 max_requests: int | None = None, instances: int = 1,
                 redis_binary: str = "redis-server") -> None:
        self.settings = settings
        self.name = name
        self.http = http
        #: The test host (network namespace) of the netem scenarios.
        self.netns = netns
        self.workdir = root / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The directory is in every command line this stage starts (pidfiles, the config,
        # the ledger): it is how cleanup recognises processes that are not our children.
        self.procs = ProcessGroup(marker=f"{self.workdir}{os.sep}")
        self.ledger = Ledger(self.workdir / "ledger")
        self.fleet = Fleet(self.procs, self.workdir, http, self.ledger)
        for i in range(nodes):
            if netns is not None and i == nodes - 1:
                self.fleet.add(f"node-{i + 1}", host=netns.node_ip, netns=netns.ns,
                               port=18080)
            else:
                self.fleet.add(f"node-{i + 1}")
        deploy_command = [sys.executable, "-m", "chaos.deploy_hook", "--ledger",
                          str(self.ledger.hook_dir), "--run-dir", str(self.fleet.run_dir),
                          "{node}", "{url}", "{version}"]
        #: Several hagw instances sharing a redis-server, behind haproxy in TCP mode (the
        #: fleet scenarios); None for one gateway.
        self.redis: RedisServer | None = None
        self.balancer: Balancer | None = None
        if instances > 1:
            self.redis = RedisServer(redis_binary, self.workdir / "redis")
            self.gateways = [
                GatewayProcess(self.procs, self.workdir / name, http, self.fleet.nodes,
                               deploy_command, peered(config, name, self.redis, workers))
                for name, workers in INSTANCES[:instances]]
            self.balancer = Balancer(self.procs, self.workdir, self.gateways)
            # The watch and the admin calls go to one instance (another once it died).
            self.admin = Admin(http, "")
        else:
            self.gateways = [GatewayProcess(self.procs, self.workdir, http, self.fleet.nodes,
                                            deploy_command, config)]
            self.admin = self.gateways[0].admin
        self.gateway = self.gateways[0]
        #: nginx or haproxy instead of hagw, for the comparisons on defaults.
        self.peer = (PeerProcess(proxy, self.procs, self.workdir, self.fleet.nodes)
                     if proxy in PEERS else None)
        self.watch = RotationWatch(self.admin)
        tag = f"{name}-{time.strftime('%H%M%S')}"
        # Behind the L4 balancer every request takes a new connection, so the balancer
        # spreads the load and sends none on to an instance after it died: a pooled
        # connection to a dead instance fails whenever it is next used, which no
        # fault window could tell apart from a failure of the others.
        load = LoadConfig(rate=settings.rate, keepalive=instances == 1)
        if max_requests is not None:
            load.max_requests = max_requests
        self.load = MixedLoad(self.gateway.traffic_url, tag, load)
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, str]] = []
        self.windows: list[FaultWindow] = []
        self.notes: list[str] = []
        self.checks: list[Check] = []
        self.tally: Tally | None = None
        self._load_running = False

    # -- the world ---------------------------------------------------------------------

    async def open(self) -> None:
        await self.fleet.start_all()
        self.mark(f"{len(self.fleet.nodes)} nodes up")
        if self.peer is not None:
            await self.peer.start()
            self.load.base = self.peer.traffic_url
            self.mark(f"{self.peer.peer} up in front of them")
            return
        if self.redis is not None and self.balancer is not None:
            await asyncio.to_thread(self.redis.start)
            self.mark(f"redis-server up (AOF, appendfsync always) on port {self.redis.port}")
            for gateway in self.gateways:
                await gateway.start()
            await self.balancer.start()
            self.use(self.gateway)
            self.load.base = self.balancer.traffic_url
            self.mark(f"{len(self.gateways)} hagw instances up behind haproxy (TCP mode)")
        else:
            await self.gateway.start()
            self.load.base = self.gateway.traffic_url
        self.watch.start()
        if not await self.watch.wait(lambda nodes: len(nodes) == len(self.fleet.nodes) and all(
                n["serving"] for n in nodes.values()), self.settings.wait_timeout):
            raise RuntimeError(f"not every node came into rotation: {self.watch.latest}")
        self.mark("gateway up, every node serving")

    async def start_load(self) -> None:
        await self.load.start()
        self._load_running = True
        self.mark(f"load started at {self.settings.rate:g} req/s")

    async def warm_up(self) -> None:
        await self.start_load()
        await self.hold(self.settings.warmup)

    async def hold(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def mark(self, text: str) -> float:
        now = time.monotonic()
        self.timeline.append((round(now - self.t0, 2), text))
        return now

    def node(self, name: str) -> Node:
        return self.fleet.get(name)

    # -- fault windows -----------------------------------------------------------------

    def node_window(self, label: str, node: str, start: float, restored: float,
                    signatures: tuple[str, ...] = NODE_LOSS, *, note: bool = True) -> None:
        """Requests could be in flight on ``node`` from the fault until the gateway took it
        out of rotation (or the fault ended), plus the per-try timeout and slack."""
        left = self.watch.left_rotation(node, start)
        end = min(left, restored) if left is not None else restored
        self.windows.append(FaultWindow(label, start, end + self.settings.slack, signatures))
        if not note:
            return
        if left is not None:
            self.notes.append(f"{node} out of rotation {left - start:.2f}s after the fault")
        else:
            self.notes.append(f"{node} stayed in rotation")

    # -- several instances ---------------------------------------------------------------

    def use(self, gateway: GatewayProcess) -> None:
        """Send the admin calls and the rotation watch to this instance."""
        self.admin.url = gateway.admin_url

    async def leader(self, timeout: float) -> GatewayProcess:
        """The instance every live one agrees leads the fleet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = {}
            for gateway in self.gateways:
                if gateway.child is not None and gateway.child.alive():
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                        views[gateway] = await Admin(self.http, gateway.admin_url).get("/peers")
            leaders = {v.get("leader") for v in views.values()}
            leading = [g for g, v in views.items() if v.get("leading")]
            if views and len(leaders) == 1 and len(leading) == 1:
                return leading[0]
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no leader the live instances agree on within {timeout:g}s")

    # -- restarting the gateway --------------------------------------------------------

    async def restart_gateway(self) -> tuple[float, float]:
        """SIGKILL the gateway, start it again on the same state; returns (killed, ready)."""
        killed = await self.gateway.kill()
        self.mark(f"gateway SIGKILLed (pid {self.gateway.pid})")
        self.watch.forget()
        await asyncio.sleep(0.5)  # down for a moment: clients see refused connections
        await self.gateway.start()
        ready = self.mark(f"gateway restarted (pid {self.gateway.pid}), ready")
        self.windows.append(FaultWindow("gateway SIGKILL", killed, ready + 1.0,
                                        GATEWAY_LOSS))
        await self.watch.wait(lambda nodes: len(nodes) == len(self.fleet.nodes), 10)
        return killed, ready

    # -- the end -----------------------------------------------------------------------

    async def run_out(self, timeout: float) -> None:
        """Until the load has sent its ``max_requests`` (bounded by ``timeout``)."""
        await self.load.exhausted(timeout)
        self.mark(f"load sent its {self.load.sent} requests")

    async def stop_load(self) -> None:
        """Stop sending and wait for the requests still in flight."""
        await self.load.stop()
        self._load_running = False
        self.mark(f"load stopped ({self.load.sent} requests)")

    async def count(self) -> Tally:
        """Read every write log (live nodes and saved snapshots) and count."""
        await self.fleet.collect()
        self.tally = tally(self.load, self.ledger, self.windows)
        return self.tally

    async def finish(self) -> Tally:
        await self.stop_load()
        return await self.count()

    async def close(self) -> None:
        if self._load_running:
            await self.load.abort()
        await self.watch.stop()
        self.fleet.thaw_all()
        await asyncio.to_thread(self.procs.stop_all, self.fleet.pids())
        if self.redis is not None:
            await asyncio.to_thread(self.redis.kill)
