"""The admin API and the CLI that drives it."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import TOKEN, auth, hagw, write_cli_config


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 403),
    ({"Authorization": "Basic dGVzdA=="}, 401),
    ({"Authorization": f"Bearer {TOKEN}"}, 200),
])
async def test_mutating_calls_need_the_token(backends: Any, gateway: Any,
                                             http: aiohttp.ClientSession,
                                             headers: dict[str, str], status: int) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes])
    async with http.post(f"{gw.admin_url}/nodes/node-1/drain", headers=headers) as resp:
        assert resp.status == status
        body = await resp.json()
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert body["error"] == "unauthorized"
    expected = "DRAINING" if status == 200 else "HEALTHY"
    assert gw.cluster.get("node-1").state.value == expected


async def test_reads_are_open_and_errors_are_json(backends: Any, gateway: Any,
                                                  http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes])
    async with http.get(f"{gw.admin_url}/nodes") as resp:
        data = await resp.json()
        assert [n["name"] for n in data["nodes"]] == ["node-1", "node-2"]
        assert data["cluster"]["serving"] == 2
    async with http.get(f"{gw.admin_url}/nodes/nope") as resp:
        assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    async with http.post(f"{gw.admin_url}/nodes/node-1/drain", headers=auth(),
                         data=b"{not json") as resp:
        assert resp.status == 400
        assert "not valid JSON" in (await resp.json())["message"]
    async with http.post(f"{gw.admin_url}/nodes/node-1/drain", headers=auth(),
                         json=["a list"]) as resp:
        assert resp.status == 400 and "expected a JSON object" in (await resp.json())["message"]
    async with http.post(f"{gw.admin_url}/nodes/node-1/drain", headers=auth(),
                         json={"reason": 5}) as resp:
        assert resp.status == 400 and "reason: expected str" in (await resp.json())["message"]
    async with http.get(f"{gw.admin_url}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{gw.admin_url}/readyz") as resp:
        assert resp.status == 200 and (await resp.json())["ready"] is True
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
        assert 'hagw_node_state{node="node-1",state="HEALTHY"} 1.0' in text
        assert "hagw_build_info{" in text


async def test_the_admin_listener_is_not_the_traffic_listener(backends: Any, gateway: Any,
                                                              http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url])
    assert gw.admin_address != gw.traffic_address
    async with http.get(f"{gw.traffic_url}/nodes") as resp:
        assert (await resp.json())["node"] == "node-1"  # proxied, not the admin API


async def test_deploy_held_nodes_need_force_to_undrain(backends: Any, gateway: Any,
                                                       http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes])
    gw.cluster.get("node-1").drain("deploy v2", "deploy")
    async with http.post(f"{gw.admin_url}/nodes/node-1/undrain", headers=auth()) as resp:
        assert resp.status == 409
    async with http.post(f"{gw.admin_url}/nodes/node-1/undrain", headers=auth(),
                         json={"force": True}) as resp:
        assert resp.status == 200


async def test_cli_nodes_drain_undrain(backends: Any, gateway: Any, tmp_path: Path) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes])
    config = tmp_path / "gateway.yaml"
    data = write_cli_config(config, [b.url for b in nodes], gw.admin_address[1])

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return hagw(*args, config=config)

    result = await asyncio.to_thread(run, "nodes")
    assert result.returncode == 0, result.stderr
    assert "2/2 nodes serving" in result.stdout
    assert "node-1" in result.stdout and "HEALTHY" in result.stdout
    assert "\033[" not in result.stdout  # no colour when stdout is not a terminal
    result = await asyncio.to_thread(run, "drain", "node-1", "--reason", "patching", "--wait")
    assert result.returncode == 0, result.stderr
    assert "node-1: DRAINING (patching)" in result.stdout
    assert gw.cluster.get("node-1").state.value == "DRAINING"
    result = await asyncio.to_thread(run, "undrain", "node-1")
    assert result.returncode == 0 and "HEALTHY" in result.stdout
    result = await asyncio.to_thread(run, "drain", "nope")
    assert result.returncode == 1 and "HTTP 404" in result.stderr
    bad_token = tmp_path / "bad.yaml"
    data["admin"]["token"] = "wrong"
    bad_token.write_text(yaml.safe_dump(data))
    result = await asyncio.to_thread(hagw, "drain", "node-1", config=bad_token)
    assert result.returncode == 1 and "HTTP 403" in result.stderr


def test_cli_reports_an_unreachable_gateway(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    write_cli_config(config, ["http://127.0.0.1:1"], 1)
    result = hagw("nodes", config=config)
    assert result.returncode == 1 and "cannot reach the admin API" in result.stderr
