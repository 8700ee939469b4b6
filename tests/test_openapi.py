"""The admin API's OpenAPI document: valid, complete, and true to a live gateway.

* the document is valid OpenAPI 3.1 (schemathesis' loader and openapi-spec-validator);
* every route the admin app registers is documented, and every documented operation exists;
* schemathesis fuzzes a live gateway with it (a bounded number of examples per operation):
  no 5xx, and every answer's status, content type, headers and body match the document.
  Mutating calls are made without a token (401), with a wrong one (403) and with the right
  one (valid and invalid input).

The gateway under test is safe to fuzz: deploys run ``true`` and do not verify versions, a
reload re-reads a copy of the running config, and nothing listens where it could point.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app.admin import openapi
from gateway.app.runtime import Gateway
from gateway.config import load_config
from monitor.incident.tracker import Incident
from tests.conftest import auth, config_dict

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in openapi.document()["paths"].items()
            for method in item if method in METHODS}


def test_the_document_is_valid_openapi() -> None:
    document = openapi.document()
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()
    validate(document)


def test_mutating_operations_need_the_token_and_say_so() -> None:
    document = openapi.document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            secured = bool(operation.get("security"))
            assert secured == (method != "get"), (method, path)
            if secured:
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            if "requestBody" in operation:
                assert "400" in operation["responses"], (method, path)


@pytest.fixture
async def live(backends: Any, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway that is safe to fuzz, started from a config file that a reload re-reads."""
    nodes = await backends(2)
    data = config_dict([b.url for b in nodes], tmp_path / "state", deploy={
        "command": ["true"], "verify_version": False, "bake_time": "0ms",
        "drain_timeout": "2s", "node_timeout": "3s", "command_timeout": "2s",
        "action_attempts": 1})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    gw = Gateway(load_config(path), config_path=str(path))
    await gw.start()
    # An incident under the id the document gives as its example, so that the fuzzer's
    # explicit examples reach a real one.
    example = openapi.document()["paths"]["/incidents/{id}"]["parameters"][0]["example"]
    now = gw.clock.time()
    gw.incidents.tracker.restore(Incident(id=example, title="a seeded incident",
                                          opened_at=now, started_at=now))
    try:
        yield gw
    finally:
        await gw.stop()


def registered(gw: Gateway) -> set[tuple[str, str]]:
    assert gw.admin_runner is not None
    app = gw.admin_runner.app
    assert isinstance(app, web.Application)
    # aiohttp adds HEAD to every GET route by itself; the document leaves it implicit.
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.resource is not None and route.method != "HEAD"}


async def test_every_admin_route_is_documented_and_vice_versa(live: Gateway) -> None:
    routes = registered(live)
    documents = documented()
    assert routes - documents == set(), "registered but not documented"
    assert documents - routes == set(), "documented but not registered"


async def test_the_document_is_served(http: aiohttp.ClientSession, serve: Any) -> None:
    app = web.Application()
    openapi.add_routes(app)
    url = await serve(app)
    async with http.get(f"{url}{openapi.PATH}") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        served = await resp.json()
    assert served["servers"] == [{"url": url, "description": "This admin listener"}]
    assert {**served, "servers": None} == {**openapi.document(), "servers": None}


# -- fuzzing a live gateway -----------------------------------------------------------------

CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_headers_conformance, response_schema_conformance]
#: Examples per operation and variant (operations without inputs run once).
EXAMPLES = {"valid": 30, "invalid": 15, "no token": 4, "wrong token": 3}


def fuzz(schema: Any, base_url: str) -> list[str]:
    """Run every operation in every variant; return what failed (empty when all is well)."""
    failures: list[str] = []

    def run(operation: Any, variant: str, mode: GenerationMode,
            headers: dict[str, str], expect: int | None) -> None:
        @settings(max_examples=EXAMPLES[variant], deadline=None, derandomize=True,
                  database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def test(case: Any) -> None:
            case.headers = {k: v for k, v in (case.headers or {}).items()
                            if k.lower() != "authorization"}
            response = case.call(base_url=base_url, session=session, headers=headers,
                                 timeout=10)
            if expect is not None:
                assert response.status_code == expect, (
                    f"{variant}: expected {expect}, got {response.status_code}\n"
                    f"{case.as_curl_command()}")
            case.validate_response(response, checks=CONFORMANCE)

        try:
            test()
        except FailureGroup as exc:  # schemathesis' checks: its message says it all
            failures.append(f"{operation.label} [{variant}]: {exc}")
        except Exception:
            failures.append(f"{operation.label} [{variant}]\n{traceback.format_exc(limit=3)}")

    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            secured = bool(operation.definition.raw.get("security"))
            token = auth() if secured else {}
            run(operation, "valid", GenerationMode.POSITIVE, token, None)
            if _has_input(operation):  # negative mode also drops the token now and then
                run(operation, "invalid", GenerationMode.NEGATIVE, token, None)
            if secured:
                run(operation, "no token", GenerationMode.POSITIVE, {}, 401)
                run(operation, "wrong token", GenerationMode.POSITIVE,
                    {"Authorization": "Bearer not-the-token"}, 403)
    return failures


def _has_input(operation: Any) -> bool:
    """A body or a query to get wrong (a path segment is always some string)."""
    return bool(operation.definition.raw.get("requestBody")
                or any(p.location == "query" for p in operation.iter_parameters()))


async def test_fuzz_the_admin_api(live: Gateway) -> None:
    schema = schemathesis.openapi.from_dict(openapi.document())
    failures = await asyncio.to_thread(fuzz, schema, live.admin_url)
    assert not failures, "\n\n".join(failures)
    # The fuzzing did real work: a deploy ran, and the seeded incident got notes.
    assert live.deploys.history(), "no fuzzed deploy was accepted"
    assert any(i.notes for i in live.incidents.tracker.incidents.values()), "no note was added"

