"""Worker processes: a real supervisor (``hagw run``) and its real workers, on loopback, with
real signals. The nodes are demo backends in the test's own event loop, so the test sees
every request that reached one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import feedparser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import free_port
from chaos.load import LoadConfig, MixedLoad, Outcome
from tests.conftest import TOKEN, Backend, auth, config_dict, require_tool

pytestmark = pytest.mark.timeout(180)


class Supervised:
    """``hagw run -c FILE`` with workers, as an operator starts it."""

    def __init__(self, workdir: Path, config: dict[str, Any], http: aiohttp.ClientSession,
                 seen: set[int]) -> None:
        self.workdir = workdir
        self.config = config
        self.http = http
        self.path = workdir / "gateway.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.traffic_url = f"http://{config['listen']}"
        self.admin_url = f"http://{config['admin']['listen']}"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Every pid this gateway ever had (supervisors and workers), killed at the end.
        self.seen = seen
        self.starts = 0

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.starts += 1
        log = (self.workdir / f"gateway-{self.starts}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(self.path)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        log.close()
        self.proc = proc
        self.seen.add(proc.pid)
        return proc

    def log_tail(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.workdir.glob("gateway-*.log")))

    async def processes(self) -> dict[str, Any]:
        async with self.http.get(f"{self.admin_url}/processes",
                                 timeout=aiohttp.ClientTimeout(total=2)) as resp:
            data: dict[str, Any] = await resp.json()
        self.seen.add(data["supervisor"]["pid"])
        self.seen.update(w["pid"] for w in data["workers"])
        return data

    async def serving(self, count: int, *, supervisor: int | None = None,
                      without: set[int] = frozenset(),  # type: ignore[assignment]
                      timeout: float = 30.0) -> dict[str, Any]:
        """Until ``count`` workers serve (under supervisor pid ``supervisor``), none of them
        with a pid in ``without``."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                data = await self.processes()
                serving = [w for w in data["workers"] if w["serving"]]
                pids = {w["pid"] for w in data["workers"]}
                if len(serving) == count and len(data["workers"]) == count and (
                        supervisor is None or data["supervisor"]["pid"] == supervisor) and (
                        not pids & without):
                    return data
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} workers not serving within {timeout:g}s:\n"
                                     f"{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.admin_url}{path}", json=body,
                                     headers=auth(),
                                     timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.json(content_type=None)

    async def metrics(self) -> dict[str, float]:
        async with self.http.get(f"{self.admin_url}/metrics") as resp:
            text = await resp.text()
        return {f"{s.name}{sorted(s.labels.items())}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        # A zombie (our child, not yet reaped) is dead for this purpose.
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


async def gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} still runs after {timeout:g}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def supervised(tmp_path: Path, http: aiohttp.ClientSession
                     ) -> AsyncIterator[Callable[..., Awaitable[Supervised]]]:
    """``gw = await supervised(urls, workers=2, **overrides)``: started and serving."""
    seen: set[int] = set()
    made: list[Supervised] = []

    async def start(urls: list[str], *, workers: int = 2, env: dict[str, str] | None = None,
                    **overrides: Any) -> Supervised:
        workdir = tmp_path / f"gw{len(made)}"
        workdir.mkdir()
        config = config_dict(urls, workdir / "state", workers=workers,
                             log_level="warning", **overrides)
        config["listen"] = f"127.0.0.1:{free_port()}"
        config["admin"] = {"listen": f"127.0.0.1:{free_port()}", "token": TOKEN}
        gw = Supervised(workdir, config, http, seen)
        made.append(gw)
        gw.start(env)
        await gw.serving(workers)
        return gw

    yield start
    for gw in made:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.terminate()
    for pid in seen:  # supervisors started by an upgrade: stopped as systemd would
        if is_supervisor(pid):
            os.kill(pid, signal.SIGTERM)
    for pid in seen:
        with contextlib.suppress(AssertionError):
            await gone(pid, timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for gw in made:
        if gw.proc is not None:
            gw.proc.wait()


def is_supervisor(pid: int) -> bool:
    try:
        return b"gateway.app.worker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def run_load(gw: Supervised, during: Callable[[], Awaitable[None]], *,
                   rate: float = 400, after: float = 1.5, tag: str = "w",
                   keepalive: bool = True) -> list[Outcome]:
    """400 requests/s, 30% POSTs, from before ``during`` until ``after`` seconds past it;
    the failed ones (by the client's own judgement: refused, cut, 5xx)."""
    load = MixedLoad(gw.traffic_url, tag, LoadConfig(rate=rate, max_requests=20_000,
                                                     keepalive=keepalive))
    await load.start()
    try:
        await asyncio.sleep(1.0)
        await during()
        await asyncio.sleep(after)
    finally:
        await load.stop()
    assert load.sent >= rate, "the load did not run"  # a second's worth, at least
    return [o for o in load.outcomes if o.failure]


def described(failures: list[Outcome]) -> str:
    return ", ".join(f"{o.method} {o.failure} {o.detail}" for o in failures[:10])


# -- a worker dies ---------------------------------------------------------------------------


async def test_a_killed_worker_costs_only_its_in_flight_requests(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(3)
    gw: Supervised = await supervised([b.url for b in nodes])
    before = await gw.processes()
    victim = before["workers"][0]
    replaced: dict[str, Any] = {}

    async def kill() -> None:
        replaced["killed"] = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        data = await gw.serving(2, without={victim["pid"]}, timeout=10)
        replaced["after"] = time.monotonic() - replaced["killed"]
        replaced["ids"] = {w["id"] for w in data["workers"]}

    # A connection per request: what a client had pooled to the dead worker is reset under
    # it, and a POST it sends on one before it sees the reset fails on its side (that is
    # the client's keep-alive, measured in chaos "worker-kill"); here only what the worker
    # had accepted can fail.
    failures = await run_load(gw, kill, keepalive=False)
    assert victim["id"] not in replaced["ids"]
    # Only what was in flight on the dead worker fails: every failed request was sent
    # before the SIGKILL and still unanswered then (at 400/s on a quiet machine, a handful;
    # more when the machine is loaded and answers are slow). Nothing sent after it fails,
    # and no connection is refused: the socket is the supervisor's, the other worker
    # accepts, then the replacement too.
    killed = replaced["killed"]
    assert all(o.sent < killed < o.done for o in failures), described(failures)
    assert not [o for o in failures if o.failure == "refused"], described(failures)
    assert replaced["after"] < 10
    _, events = await gw.admin("GET", "/events?limit=200")
    assert any(e["kind"] == "worker.died" for e in events["events"])


# -- reload and upgrade ----------------------------------------------------------------------


async def test_a_reload_replaces_every_worker_and_fails_no_request(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(3)
    gw: Supervised = await supervised([b.url for b in nodes])
    old = {w["pid"] for w in (await gw.processes())["workers"]}

    async def reload() -> None:
        status, _ = await gw.admin("POST", "/reload")
        assert status == 200
        await gw.serving(2, without=old)

    failures = await run_load(gw, reload)
    assert failures == [], described(failures)
    for pid in old:
        await gone(pid)


async def test_an_upgrade_hands_the_sockets_over_and_keeps_drains_and_windows(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(3)
    gw: Supervised = await supervised([b.url for b in nodes])
    status, _ = await gw.admin("POST", "/nodes/node-2/drain", {"reason": "disk swap"})
    assert status == 200
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    status, window = await gw.admin("POST", "/maintenance", {
        "start": start, "duration": "30m", "reason": "kernel upgrade", "nodes": ["node-3"]})
    assert status == 201, window
    first = await gw.processes()
    old_pids = {first["supervisor"]["pid"]} | {w["pid"] for w in first["workers"]}

    async def upgrade() -> None:
        status, answer = await gw.admin("POST", "/upgrade")
        assert status == 202, answer
        gw.seen.add(answer["pid"])
        await gw.serving(2, supervisor=answer["pid"])
        for pid in old_pids:
            await gone(pid)

    node2 = nodes[1].info.requests
    failures = await run_load(gw, upgrade)
    assert failures == [], described(failures)
    # The new supervisor read the old one's state: node-2 is still drained (and got no
    # request), the window is still scheduled.
    status, node = await gw.admin("GET", "/nodes/node-2")
    assert node["state"] == "DRAINING" and node["drain"]["reason"].startswith("disk swap")
    assert nodes[1].info.requests == node2
    status, windows = await gw.admin("GET", "/maintenance")
    assert [w["reason"] for w in windows["upcoming"]] == ["kernel upgrade"]


async def test_an_upgrade_that_dies_half_way_leaves_the_old_supervisor_in_charge(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(2)
    gw: Supervised = await supervised([b.url for b in nodes])
    pid = (await gw.processes())["supervisor"]["pid"]
    status, answer = await gw.admin("POST", "/upgrade")
    assert status == 202
    successor = answer["pid"]
    gw.seen.add(successor)
    # Kill the new supervisor as soon as it holds the sockets (before its workers serve).
    deadline = time.monotonic() + 20
    while True:
        _, events = await gw.admin("GET", "/events?limit=50")
        if any(f"to pid {successor}" in e["message"] for e in events["events"]
               if e["kind"] == "gateway.upgrade"):
            break
        assert time.monotonic() < deadline, gw.log_tail()
        await asyncio.sleep(0.02)
    os.kill(successor, signal.SIGKILL)
    # The old supervisor takes its state back: mutations work again, traffic flows.
    deadline = time.monotonic() + 20
    while True:
        status, _ = await gw.admin("POST", "/nodes/node-1/drain", {"reason": "after"})
        if status == 200:
            break
        assert status == 503 and time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await gw.processes())["supervisor"]["pid"] == pid
    status, node = await gw.admin("GET", "/nodes/node-1")
    assert node["state"] == "DRAINING"
    async with gw.http.get(f"{gw.traffic_url}/x") as resp:
        assert resp.status == 200


# -- the supervisor dies ---------------------------------------------------------------------


async def test_orphaned_workers_serve_until_a_new_supervisor_adopts_them(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(3)
    gw: Supervised = await supervised([b.url for b in nodes], orphan_grace="60s")
    first = await gw.processes()
    orphans = [w["pid"] for w in first["workers"]]

    async def kill_and_restart() -> None:
        assert gw.proc is not None
        gw.proc.kill()
        gw.proc.wait()
        await asyncio.sleep(1.0)  # the orphans serve alone meanwhile
        assert all(alive(pid) for pid in orphans)
        gw.start()
        await gw.serving(2, supervisor=gw.proc.pid, without=set(orphans))
        for pid in orphans:
            await gone(pid)

    failures = await run_load(gw, kill_and_restart)
    assert failures == [], described(failures)


async def test_orphaned_workers_stop_when_no_supervisor_comes(
        backends: Any, supervised: Any, http: aiohttp.ClientSession) -> None:
    nodes: list[Backend] = await backends(2)
    gw: Supervised = await supervised([b.url for b in nodes], orphan_grace="500ms")
    orphans = [w["pid"] for w in (await gw.processes())["workers"]]
    assert gw.proc is not None
    gw.proc.kill()
    gw.proc.wait()
    for pid in orphans:  # they do not serve a stale view for long
        await gone(pid, timeout=10)
    with pytest.raises(aiohttp.ClientConnectorError):
        async with http.get(f"{gw.traffic_url}/x"):
            pass


# -- state down: drains ---------------------------------------------------------------------


async def test_once_a_drain_answers_no_worker_sends_the_node_a_request(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(3)
    gw: Supervised = await supervised([b.url for b in nodes])
    status, _ = await gw.admin("POST", "/nodes/node-1/drain", {"reason": "now"})
    assert status == 200
    before = nodes[0].info.requests
    # At once, on new connections, so both workers take some.
    connector = aiohttp.TCPConnector(force_close=True, limit=50)
    async with aiohttp.ClientSession(connector=connector) as client:
        async def one(i: int) -> int:
            async with client.get(f"{gw.traffic_url}/item/{i}") as resp:
                await resp.read()
                return resp.status
        statuses = await asyncio.gather(*(one(i) for i in range(300)))
    assert Counter(statuses) == {200: 300}
    assert nodes[0].info.requests == before
    await gw.metrics()  # a scrape collects every worker's counts
    workers = (await gw.processes())["workers"]
    assert all(w["requests"] > 0 for w in workers), workers


async def test_workers_serve_the_public_page_its_json_and_its_feed(
        backends: Any, supervised: Any, http: aiohttp.ClientSession) -> None:
    """The supervisor has the state and renders; each worker asks for the page over its
    channel (gateway.app.worker.RemotePage), for every format."""
    nodes: list[Backend] = await backends(3)
    gw: Supervised = await supervised(
        [b.url for b in nodes], status={"public": True},
        nodes=[{"name": f"node-{i + 1}", "url": b.url, "zone": zone}
               for i, (b, zone) in enumerate(zip(nodes, ["a", "a", "b"], strict=True))])
    status, window = await gw.admin("POST", "/maintenance", {
        "start": "+2h", "duration": "45m", "reason": "db upgrade"})
    assert status == 201, window

    async def feed() -> Any:
        async with http.get(f"{gw.traffic_url}/_status.atom") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/atom+xml; charset=utf-8"
            parsed = feedparser.parse(await resp.read(), response_headers={
                "content-type": resp.headers["Content-Type"],
                "content-location": str(resp.url)})
        assert not parsed.bozo, parsed.get("bozo_exception")
        return parsed

    # A worker may hold a page rendered before the window for up to RemotePage.MAX_AGE.
    deadline = time.monotonic() + 10
    while not (parsed := await feed()).entries:
        assert time.monotonic() < deadline, "the window never reached the workers' feed"
        await asyncio.sleep(0.2)
    assert [e.title for e in parsed.entries] == ["Scheduled maintenance: db upgrade"]
    assert parsed.entries[0].link == f"{gw.traffic_url}/_status#maintenance-{window['id']}"

    # On new connections, so both workers answer some: every format from every worker.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        async def get(path: str) -> tuple[int, str, bytes]:
            async with client.get(f"{gw.traffic_url}{path}") as resp:
                return resp.status, resp.headers["Content-Type"], await resp.read()
        answers = await asyncio.gather(*(get(path) for path in
                                         ["/_status", "/_status.json", "/_status.atom"] * 10))
    assert {(status, kind) for status, kind, _ in answers} == {
        (200, "text/html; charset=utf-8"), (200, "application/json"),
        (200, "application/atom+xml; charset=utf-8")}
    html = next(body for _, kind, body in answers if kind.startswith("text/html")).decode()
    assert 'data-component="a"' in html and 'href="/_status.atom"' in html
    data = json.loads(next(body for _, kind, body in answers if kind == "application/json"))
    assert [(c["name"], c["state"]) for c in data["components"]] == [
        ("a", "operational"), ("b", "operational")]
    assert "node-1" not in html + json.dumps(data)
    # The admin listener (the supervisor itself) has the feed too.
    async with http.get(f"{gw.admin_url}/status.atom") as resp:
        assert resp.status == 200 and b"db upgrade" in await resp.read()


# -- state up: accounting and rate limits ---------------------------------------------------


async def test_metrics_and_slo_counts_equal_the_clients_across_workers(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(1)
    nodes[0].fault(error_rate=0.01, error_status=500)
    gw: Supervised = await supervised([b.url for b in nodes],
                                      retries={"attempts": 1}, outlier_detection={"enabled": False})
    connector = aiohttp.TCPConnector(force_close=True, limit=40)
    async with aiohttp.ClientSession(connector=connector) as client:
        async def one(i: int) -> int:
            async with client.get(f"{gw.traffic_url}/item/{i}") as resp:
                await resp.read()
                return resp.status
        statuses = Counter(await asyncio.gather(*(one(i) for i in range(2000))))
    assert statuses[500] > 0
    metrics = await gw.metrics()
    assert metrics["hagw_requests_total[('code_class', '2xx')]"] == statuses[200]
    assert metrics["hagw_requests_total[('code_class', '5xx')]"] == statuses[500]
    assert metrics["hagw_slo_requests_total[('result', 'good')]"] == statuses[200]
    assert metrics["hagw_slo_requests_total[('result', 'bad')]"] == statuses[500]
    # One series per name and labels: no per-pid duplicates.
    async with gw.http.get(f"{gw.admin_url}/metrics") as resp:
        lines = [line for line in (await resp.text()).splitlines() if line.startswith("hagw_")]
    assert len(lines) == len({line.rsplit(" ", 1)[0] for line in lines})


async def test_a_client_is_rate_limited_across_workers(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(2)
    rate, burst = 100, 20
    gw: Supervised = await supervised([b.url for b in nodes], rate_limit={
        "enabled": True, "rate": rate, "burst": burst})
    # Twice its rate, over many connections (so both workers see it), for three seconds.
    connector = aiohttp.TCPConnector(force_close=True, limit=20)
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(connector=connector) as client:
        async def one(i: int) -> None:
            async with client.get(f"{gw.traffic_url}/item/{i}") as resp:
                await resp.read()
                statuses[resp.status] += 1

        began = time.monotonic()
        tasks = []
        for i in range(3 * 2 * rate):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(max(0.0, began + (i + 1) / (2 * rate) - time.monotonic()))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - began
    allowed = burst + rate * elapsed
    assert set(statuses) == {200, 429}
    assert 0.9 * allowed <= statuses[200] <= 1.1 * allowed, (statuses, allowed)


# -- the write queue -------------------------------------------------------------------------


async def test_queued_writes_replay_once_in_commit_order_even_when_a_worker_dies(
        backends: Any, supervised: Any) -> None:
    nodes: list[Backend] = await backends(1)
    gw: Supervised = await supervised(
        [b.url for b in nodes],
        # One client queues 2000 writes: the per-client queue rate limit (10/s, a burst
        # of 50, on by default since issue 16) would refuse all but ~150 of them.
        maintenance={"queue_routes": [{"method": "POST", "path": "/orders"}],
                     "verify_timeout": "10s", "live_wait": "0ms",
                     "queue_rate_limit": {"enabled": False}})
    status, window = await gw.admin("POST", "/maintenance", {
        "start": "now", "duration": "10m", "reason": "queue test"})
    assert status == 201, window
    await asyncio.sleep(0.5)  # the window opened: every worker queues
    victim = (await gw.processes())["workers"][0]["pid"]
    accepted: dict[str, str] = {}
    connector = aiohttp.TCPConnector(force_close=True, limit=40)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def one(i: int) -> None:
            body = f'{{"order": {i}}}'
            with contextlib.suppress(aiohttp.ClientError):
                async with client.post(f"{gw.traffic_url}/orders", data=body) as resp:
                    answer = await resp.json(content_type=None)
                    if resp.status == 202:
                        accepted[answer["ticket"]] = body

        tasks = [asyncio.create_task(one(i)) for i in range(2000)]
        deadline = time.monotonic() + 60
        while len(accepted) < 1000:
            assert time.monotonic() < deadline and not all(t.done() for t in tasks), \
                f"only {len(accepted)} of 2000 writes accepted"
            await asyncio.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        await asyncio.gather(*tasks)
    assert len(accepted) >= 1900  # only what was in flight on the dead worker is lost
    # What is on disk, in the queue's order (a replayed entry's body is not kept).
    db = sqlite3.connect(Path(gw.config["state_dir"]) / "queue.db")
    committed = [bytes(row[0]).decode() for row in
                 db.execute("SELECT body FROM entries ORDER BY seq")]
    db.close()
    status, _ = await gw.admin("POST", f"/maintenance/{window['id']}/end")
    assert status == 200
    deadline = time.monotonic() + 60
    while len(nodes[0].info.writes) < len(accepted):
        assert time.monotonic() < deadline, (len(nodes[0].info.writes), len(accepted))
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # nothing more arrives
    replayed = [w["body"] for w in nodes[0].info.writes]
    # Every accepted write exactly once, nothing twice. A write the dead worker committed
    # but could not acknowledge (it died before its 202 left) is replayed too: it was on
    # disk, and its client saw the request fail, as for any write in flight.
    assert len(replayed) == len(set(replayed))
    assert set(accepted.values()) <= set(replayed)
    # ...in commit order (the queue's seq), whichever worker committed it.
    assert replayed == committed


# -- systemd ---------------------------------------------------------------------------------

UNIT = Path(__file__).resolve().parent.parent / "configs" / "systemd" / "hagw.service"


def test_the_systemd_unit_verifies_and_matches_the_process_model(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    text = UNIT.read_text()
    directives = dict(line.split("=", 1) for line in text.splitlines()
                      if "=" in line and not line.startswith("#"))
    assert directives["Type"] == "notify" and directives["NotifyAccess"] == "all"
    assert directives["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # Workers must outlive a crashed supervisor to be adopted (see README).
    assert directives["KillMode"] == "process"
    hagw = Path(sys.executable).with_name("hagw")
    unit = tmp_path / "hagw.service"
    unit.write_text(text.replace("/opt/hagw/.venv/bin/hagw", str(hagw))
                    .replace("User=hagw", "User=root").replace("Group=hagw", "Group=root"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


async def test_systemd_hears_ready_reloading_stopping_and_the_new_mainpid(
        backends: Any, supervised: Any, tmp_path: Path) -> None:
    nodes: list[Backend] = await backends(2)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.setblocking(False)
    heard: list[str] = []

    async def hear(what: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not any(what in message for message in heard):
                heard.append((await loop.sock_recv(listener, 4096)).decode())

    try:
        gw: Supervised = await supervised([b.url for b in nodes],
                                          env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert gw.proc is not None
        await hear(f"MAINPID={gw.proc.pid}")
        assert any("READY=1" in m for m in heard)
        status, _ = await gw.admin("POST", "/reload")
        assert status == 200
        await hear("RELOADING=1")
        status, answer = await gw.admin("POST", "/upgrade")
        assert status == 202
        gw.seen.add(answer["pid"])
        await hear(f"MAINPID={answer['pid']}")
        await hear("STOPPING=1")  # the old one, once the new one serves
    finally:
        listener.close()
