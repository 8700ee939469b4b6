"""The status page in a real browser: Debian's headless Chromium loads the page from a
running gateway (real backends on loopback), and each state is checked in the rendered
DOM and saved as a screenshot.

Chromium runs as a subprocess of the event loop, so the in-process gateway keeps
serving while the browser loads the page. Every call is bounded by a timeout.

``HAGW_DOCS_SCREENSHOT=docs/status-page.png pytest tests/test_status_page.py`` also
writes the README screenshot (see ``test_readme_screenshot``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import __version__
from gateway.app.runtime import Gateway
from gateway.maintenance import Phase
from gateway.node import Node, NodeState
from monitor.incident.tracker import RESOLVED, Incident
from monitor.slo import DAY
from tests.conftest import auth, require_tool, wait_for

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio")
#: One browser run (start, load, render, exit) must finish within this.
BROWSER_TIMEOUT = 30.0
WINDOWS = {"24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}


# -- a small DOM over Chromium's --dump-dom output -----------------------------------------

_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "source", "track", "wbr"})


@dataclass(eq=False)
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        """The text content, whitespace collapsed (like innerText, roughly)."""
        parts: list[str] = []

        def walk(el: Element) -> None:
            for child in el.children:
                if isinstance(child, str):
                    parts.append(child)
                else:
                    walk(child)

        walk(self)
        return " ".join("".join(parts).split())

    def iter(self) -> Iterator[Element]:
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def all(self, tag: str | None = None, cls: str | None = None,
            **attrs: str) -> list[Element]:
        """Descendants by tag, class and attributes (``data_state=`` means data-state)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [el for el in self.iter()
                if (tag is None or el.tag == tag) and (cls is None or cls in el.classes)
                and all(el.attrs.get(k) == v for k, v in wanted.items())]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Element:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, f"expected one <{tag or '*'} {cls or ''} {attrs}>, " \
                                f"found {len(found)}"
        return found[0]

    def by_id(self, value: str) -> Element:
        return self.one(id=value)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(el)
        if tag not in _VOID:
            self.stack.append(el)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_dom(markup: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(markup)
    builder.close()
    return builder.root


# -- the browser ------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and proof that it is a PNG)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@dataclass
class Browser:
    binary: str
    shots: Path

    async def run(self, *args: str) -> bytes:
        """One headless Chromium run with a fresh profile; its stdout."""
        with tempfile.TemporaryDirectory(prefix="hagw-chromium-",
                                         ignore_cleanup_errors=True) as profile:
            proc = await asyncio.create_subprocess_exec(
                self.binary, *FLAGS, f"--user-data-dir={profile}", *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT)
            except TimeoutError:
                out, err = b"", b"timed out"
            finally:
                # Its own session: this ends the renderer and zygote processes it started too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if err == b"timed out":
            pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT:g}s: {args}")
        assert proc.returncode == 0, \
            f"chromium exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
        return out

    async def dom(self, url: str) -> Element:
        return self._parse(url, await self.run("--dump-dom", url))

    async def screenshot(self, url: str, name: str, width: int = 1100, height: int = 1400,
                         dark: bool = False) -> Path:
        path = self.shots / f"{name}.png"
        await self.run(*self._shot_args(path, width, height, dark), url)
        self._check_png(path, width, height)
        return path

    async def load(self, url: str, name: str, width: int = 1100, height: int = 1400,
                   dark: bool = False) -> Element:
        """The rendered DOM and a screenshot, from one browser run."""
        path = self.shots / f"{name}.png"
        out = await self.run("--dump-dom", *self._shot_args(path, width, height, dark), url)
        self._check_png(path, width, height)
        return self._parse(url, out)

    @staticmethod
    def _shot_args(path: Path, width: int, height: int, dark: bool) -> list[str]:
        return [*(["--blink-settings=preferredColorScheme=0"] if dark else []),
                f"--screenshot={path}", f"--window-size={width},{height}"]

    @staticmethod
    def _check_png(path: Path, width: int, height: int) -> None:
        assert path.exists(), f"chromium wrote no screenshot {path.name}"
        assert png_size(path) == (width, height)
        # A blank page compresses to a few KB; a rendered status page is far bigger.
        assert path.stat().st_size > 15_000, f"{path} looks empty ({path.stat().st_size} B)"

    @staticmethod
    def _parse(url: str, out: bytes) -> Element:
        markup = out.decode()
        assert "<main>" in markup, f"no status page at {url}: {markup[:500]!r}"
        return parse_dom(markup)


@pytest.fixture
def browser(tmp_path: Path) -> Browser:
    return Browser(require_tool("chromium"), tmp_path)


# -- helpers ------------------------------------------------------------------------------


async def fleet(backends: Any, gateway: Any, count: int = 3, version: str = "v3.1.4",
                **config: Any) -> tuple[list[Any], Gateway]:
    nodes = await backends(count, version=version)
    gw = await gateway([b.url for b in nodes], **config)
    await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in gw.cluster), timeout=5,
                   what="every node HEALTHY")
    return nodes, gw


def node(gw: Gateway, name: str) -> Node:
    found = gw.cluster.get(name)
    assert found is not None, name
    return found


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def iso_in(seconds: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def banner(dom: Element) -> tuple[str, str]:
    overall = dom.by_id("overall")
    return overall.attrs["data-state"], overall.one("h1").text


def metric(dom: Element, window: str) -> str:
    return dom.one(cls="metric", data_window=window).one(cls="value").text


def nodes_table(dom: Element) -> dict[str, Element]:
    return {row.attrs["data-node"]: row for row in dom.all("tr", cls="node")}


# -- the states ---------------------------------------------------------------------------


async def test_healthy(backends: Any, gateway: Any, http: aiohttp.ClientSession,
                       browser: Browser) -> None:
    nodes, gw = await fleet(backends, gateway)
    # One failed request (a node's 500 is not retried), then 39 good ones: 97.5%.
    for b in nodes:
        b.fault(error_rate=1.0, error_status=500)
    async with http.get(f"{gw.traffic_url}/x") as resp:
        assert resp.status == 500
    for b in nodes:
        b.fault(error_rate=0.0)
    for _ in range(39):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            assert resp.status == 200

    dom = await browser.load(f"{gw.admin_url}/status", "healthy")
    data = await get_json(http, f"{gw.admin_url}/status.json")

    assert banner(dom) == ("operational", "All systems operational")
    assert data["state"] == "operational"
    for name, seconds in WINDOWS.items():
        expected = gw.slo.availability(seconds)
        assert expected == pytest.approx(39 / 40)
        assert metric(dom, name) == f"{expected * 100:.3f}%" == "97.500%"
        assert data["slo"]["availability"][name] == pytest.approx(expected)
    assert dom.by_id("target").text == "99.99%"
    budget = dom.by_id("budget")
    assert float(budget.attrs["data-value"]) == pytest.approx(gw.slo.budget_remaining())
    assert budget.text == "exhausted (250.0\u00d7 spent)"  # 1 bad in 40 against 1 in 10,000

    bars = dom.one("svg", cls="uptime").all("rect", cls="day")
    assert len(bars) == 90
    assert [b.attrs["data-date"] for b in bars] == [d["date"] for d in data["uptime"]]
    today = bars[-1]
    assert today.one("title").text == f"{today.attrs['data-date']}: 97.500% " \
                                      f"(40 requests, 1 failed)"
    assert "bad" in today.classes
    assert all(b.one("title").text.endswith("no traffic") for b in bars[:-1])

    rows = nodes_table(dom)
    assert sorted(rows) == ["node-1", "node-2", "node-3"]
    for b in nodes:
        row = rows[b.name]
        assert row.attrs["data-state"] == "HEALTHY"
        assert row.one(cls="addr").text == b.url
        assert row.one(cls="version").text == "v3.1.4"


async def test_one_node_warning(backends: Any, gateway: Any, browser: Browser) -> None:
    nodes, gw = await fleet(backends, gateway)
    warned = node(gw, "node-2")
    nodes[1].fault(health="warn")
    await wait_for(lambda: warned.state is NodeState.WARNING and not warned.serving, timeout=5)

    dom = await browser.load(f"{gw.admin_url}/status", "warning")

    assert banner(dom) == ("degraded", "Degraded performance")
    rows = nodes_table(dom)
    assert {name: row.attrs["data-state"] for name, row in rows.items()} == {
        "node-1": "HEALTHY", "node-2": "WARNING", "node-3": "HEALTHY"}
    reason = rows["node-2"].one(cls="reason").text
    assert reason == warned.reason
    assert "health endpoint reports warn" in reason
    assert "WARNING" in rows["node-2"].one(cls="state").text
    assert "Nodes (2/3 serving" in dom.text


async def test_maintenance_scheduled(backends: Any, gateway: Any, http: aiohttp.ClientSession,
                                     browser: Browser) -> None:
    _, gw = await fleet(backends, gateway)
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(), json={
            "start": iso_in(2 * 3600), "duration": "45m", "reason": "db upgrade"}) as resp:
        assert resp.status == 201, await resp.text()
        window = await resp.json()

    dom = await browser.load(f"{gw.admin_url}/status", "maintenance-scheduled")

    assert banner(dom)[0] == "operational"  # scheduled, not yet started
    assert re.search(r"Maintenance scheduled in (2h|1h 59m): db upgrade",
                     dom.by_id("overall").text)
    item = dom.one("li", cls="window", data_window_id=window["id"])
    assert item.attrs["data-status"] == "scheduled"
    assert item.one("strong").text == "db upgrade"
    assert re.fullmatch(r"in (2h|1h 59m)", item.one(cls="when").text), item.text
    start, end = item.all("time")
    assert (start.attrs["datetime"], end.attrs["datetime"]) == (window["start_iso"],
                                                                  window["end_iso"])
    assert start.text == time.strftime("%Y-%m-%d %H:%M", time.gmtime(window["start"]))
    assert end.text.endswith(time.strftime("%H:%M", time.gmtime(window["end"])))
    assert "(45m)" in item.text
    assert item.one(cls="scope").text == "whole fleet"


async def test_public_page_leaks_nothing(backends: Any, gateway: Any,
                                         http: aiohttp.ClientSession, browser: Browser) -> None:
    version = "v9.8.7-canary"
    nodes, gw = await fleet(backends, gateway, version=version, status={"public": True})
    # Everything that could leak: an incident whose title names nodes and states, a
    # WARNING node with an internal reason, a maintenance window on one node.
    for b in nodes:
        b.fault(health="fail")
    await wait_for(lambda: gw.incidents.tracker.current is not None, timeout=5)
    for b in nodes:
        b.fault(health="ok")
    await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in gw.cluster), timeout=5)
    nodes[1].fault(health="warn")
    await wait_for(lambda: node(gw, "node-2").state is NodeState.WARNING, timeout=5)
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(), json={
            "start": iso_in(3600), "duration": "30m", "reason": "kernel patch",
            "nodes": ["node-3"]}) as resp:
        assert resp.status == 201, await resp.text()
    await gw.incidents.evaluate()
    incident = gw.incidents.tracker.current
    assert incident is not None and "node-1" in incident.causes[0]
    assert incident.title == "Service unavailable" and incident.status == "monitoring"

    public_url = f"{gw.traffic_url}{gw.config.status.path}"
    async with http.get(public_url) as resp:
        assert resp.status == 200
        assert "script-src" not in resp.headers["Content-Security-Policy"]
        public_html = await resp.text()
    async with http.get(f"{public_url}.json") as resp:
        assert resp.status == 200
        public_json = await resp.text()
    public, admin = await asyncio.gather(browser.load(public_url, "public"),
                                         browser.dom(f"{gw.admin_url}/status"))

    secrets = ["127.0.0.1", *(f":{b.port}" for b in nodes), "node-1", "node-2", "node-3",
               version, "health endpoint", "UNHEALTHY", __version__]
    for text in (public_html, public_json, public.text):
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"the public page shows {leaked}"
    assert "<script" not in public_html
    data = await get_json(http, f"{public_url}.json")
    assert data["public"] is True
    assert not {"nodes", "version", "deploy", "queue_depth"} & set(data)
    assert "burn_rate" not in data["slo"]

    assert "public" in public.one("body").classes
    assert public.all("tr", cls="node") == []
    assert public.by_id("capacity").text == "2 of 3 servers in service"
    assert public.one("li", cls="incident").one("strong").text == "Service unavailable"
    assert public.one("li", cls="window").one(cls="scope").text == "some capacity (partial)"
    # The fleet recovered (the incident is monitoring), but node-2 is WARNING.
    assert banner(public)[0] == banner(admin)[0] == "degraded"

    # The admin page shows what the public one hides.
    admin_text = admin.text
    for b in nodes:
        assert b.url in admin_text
    for shown in ("node-1", "node-2", "node-3", version, "health endpoint reports warn",
                  incident.title):
        assert shown in admin_text, shown
    assert admin.one("li", cls="window").one(cls="scope").text == "node-3"


async def test_public_page_during_fleet_maintenance(backends: Any, gateway: Any,
                                                    http: aiohttp.ClientSession,
                                                    browser: Browser) -> None:
    _, gw = await fleet(backends, gateway, status={"public": True})
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(),
                         json={"duration": "45m", "reason": "db upgrade"}) as resp:
        assert resp.status == 201, await resp.text()
        window = await resp.json()
    await wait_for(lambda: gw.maintenance.mode.phase is Phase.ACTIVE, timeout=5)

    public_url = f"{gw.traffic_url}{gw.config.status.path}"
    async with http.get(f"{gw.traffic_url}/x") as resp:
        assert resp.status == 503  # the service itself is down for maintenance...
    async with http.get(public_url) as resp:
        assert resp.status == 200  # ...its status page is not
    data = await get_json(http, f"{public_url}.json")
    assert (data["state"], data["state_text"]) == ("maintenance", "Under maintenance")

    dom = await browser.load(public_url, "public-maintenance")

    assert banner(dom) == ("maintenance", "Under maintenance")
    assert re.search(r"Maintenance in progress until .* UTC \(ends in 4[45]m\): db upgrade",
                     dom.by_id("overall").text)
    item = dom.one("li", cls="window", data_window_id=window["id"])
    assert item.attrs["data-status"] == "active"
    assert re.fullmatch(r"ends in (45m|44m)", item.one(cls="when").text)
    assert item.one(cls="scope").text == "whole service"


async def test_an_operator_update_is_rendered_on_the_public_page(
        backends: Any, gateway: Any, http: aiohttp.ClientSession, browser: Browser) -> None:
    """Statuspage's way: the public page shows the operator's words, not internal ones."""
    nodes, gw = await fleet(backends, gateway, status={"public": True})
    for b in nodes:
        b.fault(health="fail")
    # The nodes fail one health check apart: the incident opens as "Reduced capacity" and
    # is retitled once the last node is out.
    def outage() -> str:
        current = gw.incidents.tracker.current
        return (f"a total outage: nodes {[(n.name, n.state.value) for n in gw.cluster]}, "
                f"incident {current!r} {current.conditions if current else ''}")

    await wait_for(lambda: gw.incidents.tracker.current is not None
                   and gw.incidents.tracker.current.title == "Service unavailable", timeout=5,
                   what=outage)
    incident = gw.incidents.tracker.current
    async with http.post(f"{gw.admin_url}/incidents/{incident.id}/updates", headers=auth(),
                         json={"status": "identified", "text": "A bad config push; rolling "
                               "it back now."}) as resp:
        assert resp.status == 201, await resp.text()
    public = await browser.load(f"{gw.traffic_url}{gw.config.status.path}", "update")
    item = public.one("li", cls="incident")
    assert item.one("strong").text == "Service unavailable"
    updates = item.all("li", cls="update")
    assert [u.attrs["data-status"] for u in updates] == ["identified", "investigating"]
    assert updates[0].one(cls="utext").text == "A bad config push; rolling it back now."
    assert "every node is out of rotation" not in public.text  # the internal cause
    assert "identified" in item.one(cls="status").text


# -- components ---------------------------------------------------------------------------


def components(dom: Element) -> dict[str, Element]:
    return {li.attrs["data-component"]: li for li in dom.all("li", cls="component")}


async def test_components_show_each_group_of_nodes_with_its_own_state(
        backends: Any, gateway: Any, http: aiohttp.ClientSession, browser: Browser) -> None:
    """Statuspage's components: configured groups (two zones and a named node), each with
    the state of its own nodes, on the admin page and, without node names, the public one."""
    nodes = await backends(5, version="v7.7.7")
    zones = ["eu-central-1a", "eu-central-1a", "eu-west-1a", "eu-west-1a", None]
    gw = await gateway(
        [b.url for b in nodes], min_healthy=1, status={"public": True, "components": [
            {"name": "API (Frankfurt)", "zones": ["eu-central-1a"]},
            {"name": "API (Dublin)", "zones": ["eu-west-1a"]},
            {"name": "Reports <beta> & co", "nodes": ["node-5"]}]},
        nodes=[{"name": f"node-{i + 1}", "url": b.url, **({"zone": z} if z else {})}
               for i, (b, z) in enumerate(zip(nodes, zones, strict=True))])
    await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in gw.cluster), timeout=5)
    # Dublin: both nodes fail their health checks. Frankfurt: one node reports warn.
    # Reports: its only node drained by an operator (planned).
    nodes[2].fault(health="fail")
    nodes[3].fault(health="fail")
    nodes[1].fault(health="warn")
    async with http.post(f"{gw.admin_url}/nodes/node-5/drain", headers=auth(),
                         json={"reason": "reindex"}) as resp:
        assert resp.status == 200, await resp.text()
    await wait_for(lambda: [n.state for n in gw.cluster] == [
        NodeState.HEALTHY, NodeState.WARNING, NodeState.UNHEALTHY, NodeState.UNHEALTHY,
        NodeState.DRAINING], timeout=10, what="the faults seen")

    public_url = f"{gw.traffic_url}{gw.config.status.path}"
    public, admin = await asyncio.gather(browser.load(public_url, "components-public"),
                                         browser.load(f"{gw.admin_url}/status",
                                                      "components-admin"))
    expected = {"API (Frankfurt)": ("degraded", "Degraded performance"),
                "API (Dublin)": ("major_outage", "Major outage"),
                "Reports <beta> & co": ("maintenance", "Under maintenance")}
    for dom in (public, admin):
        shown = components(dom)
        assert list(shown) == list(expected)  # in the config's order
        for name, (state, text) in expected.items():
            assert shown[name].attrs["data-state"] == state
            assert shown[name].one(cls="cstate").text == text
            assert shown[name].one(cls="cname").text.startswith(name)
        # The page's own state is the service's: degraded, not the worst component's.
        assert banner(dom)[0] == "degraded"
    members = {name: li.one(cls="members").text for name, li in components(admin).items()}
    assert members == {"API (Frankfurt)": "node-1, node-2 \u00b7 1/2 serving",
                       "API (Dublin)": "node-3, node-4 \u00b7 0/2 serving",
                       "Reports <beta> & co": "node-5 \u00b7 0/1 serving"}
    assert public.all(cls="members") == []

    async with http.get(public_url) as resp:
        public_html = await resp.text()
    assert "Reports &lt;beta&gt; &amp; co" in public_html  # escaped, never markup
    data = await get_json(http, f"{public_url}.json")
    assert data["components"] == [
        {"name": "API (Frankfurt)", "state": "degraded", "state_text": "Degraded performance",
         "serving": 1, "nodes": 2},
        {"name": "API (Dublin)", "state": "major_outage", "state_text": "Major outage",
         "serving": 0, "nodes": 2},
        {"name": "Reports <beta> & co", "state": "maintenance",
         "state_text": "Under maintenance", "serving": 0, "nodes": 1}]
    secrets = ["127.0.0.1", *(f":{b.port}" for b in nodes), "node-", "v7.7.7", "eu-central",
               "eu-west", "reindex", "health endpoint"]
    for text in (public_html, json.dumps(data), public.text):
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"the public page shows {leaked}"


async def test_components_default_to_one_per_zone(backends: Any, gateway: Any,
                                                  http: aiohttp.ClientSession,
                                                  browser: Browser) -> None:
    nodes = await backends(4)
    zones = ["b", "a", "a", None]
    gw = await gateway([b.url for b in nodes], min_healthy=1, nodes=[
        {"name": f"node-{i + 1}", "url": b.url, **({"zone": z} if z else {})}
        for i, (b, z) in enumerate(zip(nodes, zones, strict=True))])
    await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in gw.cluster), timeout=5)
    nodes[1].fault(health="fail")  # one of zone a's two nodes: half of it is out
    await wait_for(lambda: node(gw, "node-2").state is NodeState.UNHEALTHY, timeout=5)

    dom = await browser.dom(f"{gw.admin_url}/status")

    shown = components(dom)
    assert {name: li.attrs["data-state"] for name, li in shown.items()} == {
        "a": "partial_outage", "b": "operational", "Other": "operational"}
    assert list(shown) == ["a", "b", "Other"]  # zones by name, nodes without one last
    assert shown["a"].one(cls="members").text == "node-2, node-3 \u00b7 1/2 serving"

    # A fleet without zones has no components section.
    plain = await gateway([b.url for b in nodes[:2]])
    data = await get_json(http, f"{plain.admin_url}/status.json")
    assert data["components"] == []
    async with http.get(f"{plain.admin_url}/status") as resp:
        assert 'class="components"' not in await resp.text()


# -- the README screenshot --------------------------------------------------------------


def seed_history(gw: Gateway, incident_day: int) -> None:
    """Ninety days of made-up traffic (seeded, so the picture is stable): mostly clean
    days, a few with some errors, and the incident's day well below target."""
    rnd = random.Random(4)
    now = gw.clock.time()
    for back in range(1, 90):
        at = now - back * DAY
        good = rnd.randint(180_000, 240_000)
        bad = 0 if rnd.random() < 0.8 else rnd.choice([2, 5, 12, 30])
        if back == incident_day:
            bad = 300
        rows = [(gw.slo.days, at)]
        if back <= 30:
            rows += [(gw.slo.hours, at + h * 3600) for h in range(0, 24, 6)]
        if back <= 2:
            rows += [(gw.slo.minutes, at + h * 3600) for h in range(0, 24, 6)]
        for buckets, when in rows:
            share = 1 if buckets is gw.slo.days else 4
            buckets.add(when, [good // share, bad // share, 0])


async def test_readme_screenshot(backends: Any, gateway: Any, http: aiohttp.ClientSession,
                                 browser: Browser) -> None:
    """A realistic admin page: history, a resolved incident, a WARNING node and an
    upcoming window, light, dark and narrow."""
    nodes, gw = await fleet(backends, gateway, count=4, version="v2.4.1",
                            status={"title": "shop.example API"})
    incident_day = 12
    seed_history(gw, incident_day)
    opened = gw.clock.time() - incident_day * DAY + 3 * 3600
    gw.incidents.tracker.restore(Incident(
        id="inc-demo-1", title="every node is out of rotation (node-1 UNHEALTHY, node-2 "
        "UNHEALTHY, node-3 UNHEALTHY, node-4 UNHEALTHY)", opened_at=opened,
        started_at=opened - 20, status=RESOLVED, conditions=["all_nodes_out"],
        causes=["every node is out of rotation (node-1 UNHEALTHY, node-2 UNHEALTHY, node-3 "
                "UNHEALTHY, node-4 UNHEALTHY)", "deploy v2.4.0 rolled back: verify failed"],
        recovered_at=opened + 400, resolved_at=opened + 700, slo_now=[52_000, 300, 0],
        budget_open=0.93, budget_now=0.45))
    for _ in range(40):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            assert resp.status == 200
    nodes[2].fault(health="warn")
    await wait_for(lambda: node(gw, "node-3").state is NodeState.WARNING, timeout=5)
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(), json={
            "start": iso_in(2 * 3600 + 30 * 60), "duration": "45m",
            "reason": "database upgrade"}) as resp:
        assert resp.status == 201, await resp.text()

    # The arranged state holds still while three Chromium renders share the two cores:
    # probes starved of CPU would time out and take every node out (seen once).
    await gw.health.stop()
    url = f"{gw.admin_url}/status"
    dom, _, _ = await asyncio.gather(
        browser.load(url, "readme"),
        browser.screenshot(url, "readme-narrow", width=420, height=2000),
        browser.screenshot(url, "readme-dark", dark=True))

    assert banner(dom) == ("degraded", "Degraded performance")
    for name, seconds in WINDOWS.items():
        assert metric(dom, name) == f"{gw.slo.availability(seconds) * 100:.3f}%"
    bars = dom.one("svg", cls="uptime").all("rect", cls="day")
    assert len(bars) == 90 and "bad" in bars[-1 - incident_day].classes
    assert sum("good" in b.classes for b in bars) > 60
    assert dom.one("li", cls="incident", data_incident_id="inc-demo-1").one(cls="status").text \
        == "resolved"
    assert nodes_table(dom)["node-3"].attrs["data-state"] == "WARNING"
    assert dom.one("li", cls="window").one(cls="when").text in ("in 2h 30m", "in 2h 29m")

    target = os.environ.get("HAGW_DOCS_SCREENSHOT")
    if target:
        shutil.copyfile(browser.shots / "readme.png", target)
