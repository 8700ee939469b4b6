"""What the admin API shows, and to whom (issue 16, item 8 and the report escape): secrets
from the config never reach an answer or an event, deploy output needs a token, reads can
need one too, and a web page cannot reach the API through DNS rebinding.

Real gateways on loopback; the secrets come from the environment as they would in
production (``${VAR}`` in the config).
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.config.redact import redact_urls, shown_url
from monitor.incident.tracker import Incident
from tests.conftest import TOKEN, auth, config_dict, hagw, wait_for, write_cli_config

SECRET = "hunter2-Z9q7-do-not-show"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def texts(http: aiohttp.ClientSession, gw: Any, *paths: str,
                headers: dict[str, str] | None = None) -> str:
    out = []
    for path in paths:
        async with http.get(f"{gw.admin_url}{path}", headers=headers or {}) as resp:
            out.append(await resp.text())
    return "\n".join(out)


async def finished_deploy(http: aiohttp.ClientSession, gw: Any, version: str = "v2") -> str:
    async with http.post(f"{gw.admin_url}/deploys", headers=auth(),
                         json={"version": version}) as resp:
        assert resp.status == 202, await resp.text()
        deploy_id = str((await resp.json())["id"])
    await wait_for(lambda: not gw.deploys.history()[0].active, timeout=30,
                   what="the deploy finished")
    return deploy_id


async def test_a_webhook_url_with_a_token_is_shown_by_its_origin_only(
        backends: Any, gateway: Any, http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOY_HOOK_TOKEN", SECRET)
    port = closed_port()
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], deploy={
        "webhook": {"url": f"http://deployer:{SECRET}@127.0.0.1:{port}/hooks/"
                           "${DEPLOY_HOOK_TOKEN}?key=${DEPLOY_HOOK_TOKEN}"},
        "action_attempts": 1, "verify_version": False})
    deploy_id = await finished_deploy(http, gw)
    shown = await texts(http, gw, f"/deploys/{deploy_id}", "/deploys", "/events?limit=1000",
                        "/status.json", "/maintenance")
    assert f"webhook http://127.0.0.1:{port}/... failed" in shown
    assert SECRET not in shown and "deployer" not in shown
    # Not even with the admin token: nobody needs the secret back.
    assert SECRET not in await texts(http, gw, f"/deploys/{deploy_id}", headers=auth())


async def test_config_errors_never_echo_values_from_the_environment(
        backends: Any, gateway: Any, http: aiohttp.ClientSession, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = await backends(1)
    path = tmp_path / "gateway.yaml"
    data = config_dict([nodes[0].url], tmp_path / "state0")
    path.write_text(yaml.safe_dump(data))
    gw = await gateway([nodes[0].url], config_path=str(path))
    monkeypatch.setenv("UPSTREAM_TIMEOUT", SECRET)
    monkeypatch.setenv("SLACK_HOOK", f"not-a-url-{SECRET}")
    for bad in ({"timeouts": {"connect": "${UPSTREAM_TIMEOUT}"}},
                {"notifiers": [{"type": "slack", "url": "${SLACK_HOOK}"}]}):
        path.write_text(yaml.safe_dump({**data, **bad}))
        async with http.post(f"{gw.admin_url}/reload", headers=auth()) as resp:
            assert resp.status == 422
            refused = await resp.json()
        assert SECRET not in refused["message"]
        assert "found the value of ${" in refused["message"]
    events = await texts(http, gw, "/events?kind=config")
    assert "config.reload_failed" in events and SECRET not in events
    checked = await asyncio.to_thread(hagw, "check", config=path)
    assert checked.returncode == 2 and SECRET not in checked.stdout + checked.stderr


async def test_deploy_output_needs_a_token(backends: Any, gateway: Any,
                                           http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], deploy={
        "command": ["echo", f"deployed {{node}} with password={SECRET}"],
        "verify_version": False, "bake_time": "0ms"})
    deploy_id = await finished_deploy(http, gw)
    for path in (f"/deploys/{deploy_id}", "/deploys/current"):
        assert SECRET not in await texts(http, gw, path)
        assert "[hidden: deploy output needs" in await texts(http, gw, path)
        assert f"password={SECRET}" in await texts(http, gw, path, headers=auth())


async def test_a_read_token_closes_every_read_but_the_probes(
        backends: Any, gateway: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], admin={"listen": "127.0.0.1:0", "token": TOKEN,
                                              "read_token": "read-only-token"})
    reader = {"Authorization": "Bearer read-only-token"}
    for path in ("/nodes", "/events", "/metrics", "/status", "/status.json", "/deploys",
                 "/maintenance", "/incidents", "/openapi.json", "/"):
        async with http.get(f"{gw.admin_url}{path}") as resp:
            assert resp.status == 401, path
        async with http.get(f"{gw.admin_url}{path}",
                            headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 403, path
        for headers in (reader, auth()):
            async with http.get(f"{gw.admin_url}{path}", headers=headers) as resp:
                assert resp.status == 200, path
    for path in ("/healthz", "/readyz"):
        async with http.get(f"{gw.admin_url}{path}") as resp:
            assert resp.status == 200, path
    async with http.post(f"{gw.admin_url}/nodes/node-1/drain", headers=reader,
                         json={}) as resp:
        assert resp.status == 403  # the read token never mutates
    config = tmp_path / "cli.yaml"
    data = write_cli_config(config, [nodes[0].url], gw.admin_address[1])
    data["admin"]["read_token"] = "read-only-token"
    config.write_text(yaml.safe_dump(data))
    listed = await asyncio.to_thread(hagw, "nodes", "--json", config=config)
    assert listed.returncode == 0, listed.stderr  # the CLI sends its token on reads too


@pytest.mark.parametrize(("host", "status"), [
    ("evil.example", 403), ("evil.example:{port}", 403), ("127.0.0.1.evil.example", 403),
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("[::1]:{port}", 200),
    ("gw.internal:{port}", 200),
])
async def test_the_admin_api_answers_only_to_its_own_hosts(
        backends: Any, gateway: Any, host: str, status: int) -> None:
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 reaches the
    listener with ``Host: evil.example``."""
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], admin={"listen": "127.0.0.1:0", "token": TOKEN,
                                              "hosts": ["gw.internal"]})
    port = gw.admin_address[1]
    async with aiohttp.ClientSession(skip_auto_headers=("Host",)) as http, \
            http.get(f"{gw.admin_url}/nodes",
                     headers={"Host": host.format(port=port)} if host else {}) as resp:
        assert resp.status == status, await resp.text()


async def test_cross_origin_requests_are_refused(backends: Any, gateway: Any,
                                                 http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url])
    host = f"127.0.0.1:{gw.admin_address[1]}"
    for origin, status in (("http://evil.example", 403), ("null", 403),
                           (f"http://{host}", 200)):
        async with http.get(f"{gw.admin_url}/nodes", headers={"Origin": origin}) as resp:
            assert resp.status == status, origin
        async with http.post(f"{gw.admin_url}/nodes/node-1/undrain", json={},
                             headers={**auth(), "Origin": origin}) as resp:
            assert resp.status == status, origin


async def test_admin_answers_say_nothing_of_their_software(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url])
    for path in ("/nodes", "/status", "/nope"):
        async with http.get(f"{gw.admin_url}{path}") as resp:
            assert "Server" not in resp.headers, path


async def test_the_incident_report_is_text_never_markup(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url])
    now = gw.clock.time()
    gw.incidents.tracker.restore(Incident(
        id="inc-x", title="<img src=x onerror=alert(1)>", opened_at=now, started_at=now,
        causes=["<script>alert('cause')</script>"],
        timeline=[{"at": now, "kind": "x", "message": "a | b <b>bold</b>"}]))
    for text in ("<script>alert(1)</script>", "line\n# Injected heading\n- [x](javascript:"
                 "alert(1))", "![img](http://evil.example/track.png)"):
        async with http.post(f"{gw.admin_url}/incidents/inc-x/notes", headers=auth(),
                             json={"text": text}) as resp:
            assert resp.status == 201
    async with http.get(f"{gw.admin_url}/incidents/inc-x/report") as resp:
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in resp.headers["Content-Security-Policy"]
        report = await resp.text()
    for markup in ("<img", "<script", "<b>"):
        assert markup not in report, markup
    assert re.search(r"(?<!\\)[\[\]]", report.split("## Root cause")[0]) is None, report
    assert not any(line.startswith("# Injected") for line in report.splitlines())
    assert "&lt;script>" in report and "a \\| b" in report


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", "https://hooks.slack.com/..."),
    ("http://user:pass@deploy.example:8080/", "http://deploy.example:8080"),
    ("https://deploy.example?token=x", "https://deploy.example/..."),
    ("http://[::1]:9000/hook#frag", "http://[::1]:9000/..."),
    ("https://deploy.example", "https://deploy.example"),
    ("not a url", "..."),
])
def test_urls_are_shown_by_their_origin(url: str, shown: str) -> None:
    assert shown_url(url) == shown
    assert redact_urls(f"webhook {url} failed") == (f"webhook {shown} failed"
                                                   if "://" in url else f"webhook {url} failed")
