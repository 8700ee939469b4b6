"""The status page's Atom feed (``/_status.atom`` on the traffic listener, ``/status.atom``
on the admin one), read twice: by feedparser, as feed readers read it, and as XML, for
what RFC 4287 requires. Real gateways and backends on loopback, real incidents and
maintenance windows made through the admin API."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import aiohttp
import feedparser

from gateway import __version__
from gateway.app.runtime import Gateway
from gateway.node import NodeState
from tests.conftest import auth, wait_for

A = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def iso_in(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


async def admin(http: aiohttp.ClientSession, gw: Gateway, method: str, path: str,
                body: Any = None, expect: int = 200) -> Any:
    async with http.request(method, f"{gw.admin_url}{path}", json=body,
                            headers=auth()) as resp:
        assert resp.status == expect, await resp.text()
        return await resp.json()


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return resp, await resp.read()


class _Tags(HTMLParser):
    """The tags of an HTML fragment (what a feed reader would render)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def read_feed(resp: aiohttp.ClientResponse, body: bytes) -> Any:
    """The feed as a reader sees it: with the answer's Content-Type and URL (relative links
    resolve against it)."""
    parsed = feedparser.parse(body, response_headers={
        "content-type": resp.headers["Content-Type"], "content-location": str(resp.url)})
    assert not parsed.bozo, parsed.get("bozo_exception")
    return parsed


def tags(fragment: str) -> list[str]:
    parser = _Tags()
    parser.feed(fragment)
    return parser.tags


async def busy_fleet(backends: Any, gateway: Any, http: aiohttp.ClientSession
                     ) -> tuple[list[Any], Gateway, dict[str, str]]:
    """An incident with an operator's update (with markup in it), a scheduled window, a
    cancelled one and an ended one."""
    nodes = await backends(3, version="v5.4.3-rc1")
    gw = await gateway([b.url for b in nodes], min_healthy=1, status={"public": True})
    await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in gw.cluster), timeout=5)
    for b in nodes:
        b.fault(health="fail")
    await wait_for(lambda: gw.incidents.tracker.current is not None, timeout=5)
    incident = gw.incidents.tracker.current
    assert incident is not None
    await admin(http, gw, "POST", f"/incidents/{incident.id}/updates", expect=201, body={
        "status": "identified", "text": 'A bad push <script>alert(1)</script> & "more"'})
    for b in nodes:
        b.fault(health="ok")
    await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in gw.cluster), timeout=5)

    scheduled = await admin(http, gw, "POST", "/maintenance", expect=201, body={
        "start": iso_in(2 * 3600), "duration": "45m", "reason": "db upgrade"})
    cancelled = await admin(http, gw, "POST", "/maintenance", expect=201, body={
        "start": iso_in(5 * 3600), "duration": "20m", "reason": "kernel patch",
        "nodes": ["node-3"]})
    await admin(http, gw, "DELETE", f"/maintenance/{cancelled['id']}")
    ended = await admin(http, gw, "POST", "/maintenance", expect=201, body={
        "start": "now", "duration": "30m", "reason": "disk swap", "nodes": ["node-2"]})
    await wait_for(lambda: gw.maintenance.schedule.windows[ended["id"]].status == "active",
                   timeout=5)
    await admin(http, gw, "POST", f"/maintenance/{ended['id']}/end")
    await wait_for(lambda: gw.maintenance.schedule.windows[ended["id"]].status == "ended",
                   timeout=5)
    return nodes, gw, {"incident": incident.id, "scheduled": scheduled["id"],
                       "cancelled": cancelled["id"], "ended": ended["id"]}


async def test_the_public_feed_lists_incidents_and_windows(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes, gw, ids = await busy_fleet(backends, gateway, http)
    url = f"{gw.traffic_url}/_status.atom"
    resp, body = await fetch(http, url)
    assert resp.headers["Content-Type"] == "application/atom+xml; charset=utf-8"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")

    parsed = read_feed(resp, body)
    assert parsed.version == "atom10"
    assert parsed.feed.title == "Service status: incidents and maintenance"
    assert parsed.feed.id.startswith("urn:uuid:")
    titles = [e.title for e in parsed.entries]
    assert sorted(titles) == sorted([
        "Service unavailable", "Scheduled maintenance: db upgrade",
        "Cancelled maintenance: kernel patch", "Completed maintenance: disk swap"])
    updated = [e.updated_parsed for e in parsed.entries]
    assert updated == sorted(updated, reverse=True)  # the latest change first

    incident = next(e for e in parsed.entries if e.title == "Service unavailable")
    assert incident.link == f"{gw.traffic_url}/_status#incident-{ids['incident']}"
    assert {t.term for t in incident.tags} == {"incident", "monitoring"}
    assert incident.published_parsed <= incident.updated_parsed
    content = incident.content[0]
    assert content.type == "text/html"
    # The operator's text, as text: its markup is escaped, never markup in the reader.
    assert "A bad push &lt;script&gt;alert(1)&lt;/script&gt; &amp;" in content.value
    assert "script" not in tags(content.value)
    assert re.search(r"<strong>Identified</strong>.*<strong>Investigating</strong>",
                     content.value), "updates newest first"

    windows = {e.title.split(": ", 1)[1]: e for e in parsed.entries if "maintenance" in e.title}
    assert {t.term for t in windows["db upgrade"].tags} == {"maintenance", "scheduled"}
    assert {t.term for t in windows["kernel patch"].tags} == {"maintenance", "cancelled"}
    assert {t.term for t in windows["disk swap"].tags} == {"maintenance", "ended"}
    assert "Scope: whole service." in windows["db upgrade"].content[0].value
    assert "Scope: some capacity (partial)." in windows["kernel patch"].content[0].value
    assert "(45 min)" in windows["db upgrade"].content[0].value
    assert windows["db upgrade"].link.endswith(f"/_status#maintenance-{ids['scheduled']}")

    # The page links to the feed, and has the anchors its entries link to.
    _, page = await fetch(http, f"{gw.traffic_url}/_status")
    text = page.decode()
    assert ('<link rel="alternate" type="application/atom+xml" title="Service status: '
            'incidents and maintenance" href="/_status.atom">') in text
    assert f'id="incident-{ids["incident"]}"' in text
    assert f'id="maintenance-{ids["scheduled"]}"' in text

    # Nothing internal: no node, address, version or cause.
    secrets = ["127.0.0.1", *(f":{b.port}" for b in nodes), "node-1", "node-2", "node-3",
               "v5.4.3-rc1", __version__, "every node is out of rotation", "UNHEALTHY"]
    leaked = [s for s in secrets if s in body.decode()]
    assert not leaked, f"the public feed shows {leaked}"


async def test_the_feed_is_valid_atom(backends: Any, gateway: Any,
                                      http: aiohttp.ClientSession) -> None:
    """RFC 4287's musts, on the XML itself: ids that are URIs and never change, an
    ``updated`` on the feed and every entry, an author, a self link."""
    _, gw, _ = await busy_fleet(backends, gateway, http)
    _, first = await fetch(http, f"{gw.traffic_url}/_status.atom")
    _, again = await fetch(http, f"{gw.traffic_url}/_status.atom")
    assert first.startswith(b"<?xml version='1.0' encoding='utf-8'?>")

    def entries(body: bytes) -> dict[str, str]:
        root = ET.fromstring(body)
        return {e.findtext(f"{A}id", ""): e.findtext(f"{A}updated", "")
                for e in root.findall(f"{A}entry")}

    root = ET.fromstring(first)
    assert root.tag == f"{A}feed"
    for tag in ("id", "title", "updated"):
        assert root.findtext(f"{A}{tag}"), tag
    assert RFC3339.fullmatch(root.findtext(f"{A}updated", ""))
    assert root.findtext(f"{A}author/{A}name") == "Service status"
    assert root.findtext(f"{A}generator") == "hagw"  # no version on the public side
    rels = {link.get("rel"): link.get("href") for link in root.findall(f"{A}link")}
    assert rels == {"alternate": "/_status", "self": "/_status.atom"}
    assert len(root.findall(f"{A}entry")) == 4
    for entry in root.findall(f"{A}entry"):
        assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", entry.findtext(f"{A}id", ""))
        for tag in ("updated", "published"):
            assert RFC3339.fullmatch(entry.findtext(f"{A}{tag}", "")), tag
        assert entry.findtext(f"{A}title")
        assert entry.find(f"{A}content").get("type") == "html"  # type: ignore[union-attr]
    assert len(set(entries(first))) == 4
    assert entries(first) == entries(again)  # same ids, same times: nothing "new"


async def test_the_admin_feed_says_more(backends: Any, gateway: Any,
                                        http: aiohttp.ClientSession) -> None:
    _, gw, ids = await busy_fleet(backends, gateway, http)
    resp, body = await fetch(http, f"{gw.admin_url}/status.atom")
    assert resp.headers["Content-Type"] == "application/atom+xml; charset=utf-8"
    parsed = read_feed(resp, body)
    incident = next(e for e in parsed.entries if e.title == "Service unavailable")
    assert "every node is out of rotation" in incident.content[0].value  # the causes
    assert incident.link == f"{gw.admin_url}/status#incident-{ids['incident']}"
    patch = next(e for e in parsed.entries if e.title.endswith("kernel patch"))
    assert "Scope: node-3." in patch.content[0].value
    # Another feed: its ids are not the public feed's.
    public = read_feed(*await fetch(http, f"{gw.traffic_url}/_status.atom"))
    assert {e.id for e in public.entries}.isdisjoint(
        {e.id for e in parsed.entries})


async def test_a_quiet_service_has_an_empty_valid_feed(backends: Any, gateway: Any,
                                                       http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], status={"public": True, "path": "/status-page",
                                                       "title": "Shop & <Co>"})
    resp, body = await fetch(http, f"{gw.traffic_url}/status-page.atom")
    parsed = read_feed(resp, body)
    assert parsed.entries == []
    assert parsed.feed.title == "Shop & <Co>: incidents and maintenance"
    assert b"Shop &amp; &lt;Co&gt;" in body
    # Only the page's own formats are answered locally; anything else is the service's.
    async with http.get(f"{gw.traffic_url}/status-page.rss") as resp:
        assert resp.status == 200 and (await resp.json())["path"] == "/status-page.rss"
