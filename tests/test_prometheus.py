"""The shipped Prometheus and Grafana files, checked with promtool and a real Prometheus.

- configs/prometheus/hagw-rules.yml passes ``promtool check rules`` and its unit tests
  (configs/prometheus/hagw-rules.test.yml);
- configs/prometheus/prometheus.yml passes ``promtool check config``;
- a real scrape of a running gateway passes ``promtool check metrics`` and exports every
  metric the rules and the dashboard read;
- configs/grafana/hagw-dashboard.json is an importable dashboard with the expected panels;
- a real Prometheus, configured from the shipped prometheus.yml and rules, scrapes a real
  gateway that served known good and bad traffic, and its SLI, alert and dashboard
  queries agree with what the client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bench.processes import free_port
from tests.conftest import require_tool
from tests.readme import sections, slug

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
RULES = PROMETHEUS_DIR / "hagw-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "hagw-rules.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "configs" / "grafana" / "hagw-dashboard.json"

#: The metric contract: every hagw_* series the rules and the dashboard may read.
CONTRACT = frozenset({
    "hagw_requests_total",
    "hagw_request_duration_seconds_bucket",
    "hagw_upstream_requests_total",
    "hagw_upstream_request_duration_seconds_bucket",
    "hagw_upstream_retries_total",
    "hagw_upstream_ejections_total",
    "hagw_node_state",
    "hagw_node_up",
    "hagw_node_in_flight",
    "hagw_node_weight",
    "hagw_health_checks_total",
    "hagw_build_info",
    "hagw_config_reload_total",
    "hagw_gateway_errors_total",
    "hagw_slo_requests_total",
    "hagw_slo_target_ratio",
    "hagw_sli_availability_ratio",
    "hagw_error_budget_remaining_ratio",
    "hagw_burn_rate",
    "hagw_cluster_nodes",
    "hagw_cluster_serving_nodes",
    "hagw_cluster_min_healthy_nodes",
    "hagw_deploy_in_progress",
    "hagw_deploy_last_progress_timestamp_seconds",
    "hagw_deploys_total",
    "hagw_maintenance_active",
    "hagw_tls_certificate_expiry_timestamp_seconds",
})

#: Bounds for every wait on Prometheus (seconds); it scrapes and evaluates every second.
PROMETHEUS_START = 30.0
PROMETHEUS_CATCH_UP = 20.0


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
        f"{result.stdout}\n{result.stderr}")


def hagw_names(text: str) -> set[str]:
    return set(re.findall(r"\bhagw_[a-z_]+[a-z]\b", text))


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    out = []
    for panel in load_dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    exprs += [a["expr"] for a in load_dashboard()["annotations"]["list"] if "expr" in a]
    return exprs


def grafana_to_promql(expr: str) -> str:
    """Fill in the dashboard's variables as Grafana would for a 1m range."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def scraped_names(exposition: str) -> set[str]:
    """Sample names in a /metrics page, plus the counters declared without samples yet."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", exposition, re.MULTILINE))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.MULTILINE):
        names.add(name)
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
        if kind == "histogram":
            names.add(f"{name}_bucket")
    return names


# -- promtool, offline ---------------------------------------------------------------------

def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_cover_every_alert() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if not case["exp_alerts"]}
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"


def test_alerts_have_severity_and_annotations() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]
                assert rule["annotations"]["description"], rule["alert"]


#: Where runbook_url points (README "Runbooks"); operators replace it with their own copy.
RUNBOOK_BASE = "https://hagw.example/README.md"


def test_slugs_are_githubs() -> None:
    assert slug("HagwNodeDown") == "hagwnodedown"
    assert slug("Several gateways: shared state on Redis") == \
        "several-gateways-shared-state-on-redis"
    assert slug("Logs, access log and tracing") == "logs-access-log-and-tracing"
    assert slug("Stalled nodes, detected from live traffic") == \
        "stalled-nodes-detected-from-live-traffic"
    assert list(sections("# A\n## A\n```\n# not a heading\n```\n")) == ["a", "a-1"]


def test_every_alert_has_a_runbook_in_the_readme() -> None:
    """runbook_url on every alert, to a README section that exists and says what the alert
    means, what to check and what to do."""
    readme = sections()
    alerts = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 10
    for rule in alerts:
        url = rule["annotations"].get("runbook_url")
        assert url, f"{rule['alert']} has no runbook_url"
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_BASE, url
        assert anchor == slug(rule["alert"]), url
        assert anchor in readme, f"{rule['alert']}: README has no section #{anchor}"
        body = readme[anchor]
        for part in ("**Means.**", "**Check.**", "**Do.**"):
            assert part in body, f"README #{anchor} has no {part}"
        assert len(body.split()) > 60, f"README #{anchor} says too little"
    # Every runbook is for an alert that exists (none left behind by a rename).
    runbooks = readme["runbooks"]
    assert runbooks
    listed = [a for a in readme if a.startswith("hagw") and "**Means.**" in readme[a]]
    assert sorted(listed) == sorted(slug(rule["alert"]) for rule in alerts)


def test_promtool_check_config() -> None:
    # rule_files are resolved against the config file's directory, whatever the cwd.
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert_ok(result)
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "hagw"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["hagw-rules.yml"]


def test_rules_and_dashboard_read_only_contract_metrics() -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    texts = [rule["expr"] for rule in rules]
    texts += [text for rule in rules for text in rule.get("annotations", {}).values()]
    texts += dashboard_exprs()
    texts += [v["definition"] for v in load_dashboard()["templating"]["list"]]
    used = set().union(*map(hagw_names, texts))
    assert "hagw_slo_requests_total" in used
    assert used - CONTRACT == set(), "names outside the metric contract (typo?)"
    recorded = recorded_names()
    for expr in dashboard_exprs():
        for name in re.findall(r"\bslo:[a-z_:0-9]+(?![a-z_:0-9(])", expr):
            assert name in recorded, f"dashboard reads {name}, which no rule records"
        for window in re.findall(r"slo:sli_error:ratio_rate\(([^)]*)\)", expr):
            for w in window.split("|"):
                assert f"slo:sli_error:ratio_rate{w}" in recorded


# -- Grafana ------------------------------------------------------------------------------

def test_dashboard_is_importable_with_the_expected_panels() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None
    [ds_input] = dashboard["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS"
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")

    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert t["expr"].strip()
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]

    def find(type_: str, *needles: str) -> dict[str, Any]:
        for panel in panels:
            exprs = " ".join(t["expr"] for t in panel.get("targets", []))
            if panel["type"] == type_ and all(n in exprs for n in needles):
                return panel
        raise AssertionError(f"no {type_} panel reading {needles}")

    availability = find("timeseries", "slo:sli_error:ratio_rate5m", "slo:objective:ratio")
    assert "99.99" in availability["title"]
    find("stat", "slo:sli_error:ratio_rate30d")
    find("stat", "slo:period_error_budget_remaining:ratio")
    find("timeseries", "slo:period_error_budget_remaining:ratio")
    burn = find("timeseries", "slo:sli_error:ratio_rate(5m|30m|1h|2h|6h|1d|3d)",
                "slo:error_budget:ratio")
    steps = [s["value"] for s in burn["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert {1, 3, 6, 14.4} <= set(steps), "burn-rate panel shows the alert thresholds"
    find("timeseries", "hagw_burn_rate")
    find("timeseries", "sum by (code_class)", "hagw_requests_total")
    latency = find("timeseries", "hagw_request_duration_seconds_bucket")
    quantiles = sorted(re.findall(r"histogram_quantile\(([\d.]+)",
                                  " ".join(t["expr"] for t in latency["targets"])))
    assert quantiles == ["0.5", "0.95", "0.99"]
    states = find("state-timeline", "hagw_node_state")
    mapped = {o["text"] for m in states["fieldConfig"]["defaults"]["mappings"]
              for o in m["options"].values()}
    assert mapped == {"HEALTHY", "WARNING", "UNHEALTHY", "DRAINING", "EJECTED",
                      "MAINTENANCE", "STARTING"}
    find("timeseries", "hagw_upstream_retries_total")
    find("timeseries", "hagw_upstream_ejections_total")
    find("timeseries", "hagw_cluster_serving_nodes", "hagw_cluster_min_healthy_nodes")


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, expr in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    assert_ok(promtool("check", "rules", str(path)))


# -- a real gateway ------------------------------------------------------------------------

async def scrape(http: aiohttp.ClientSession, gw: Any) -> str:
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


async def send(http: aiohttp.ClientSession, url: str, count: int,
               concurrency: int = 20) -> dict[int, int]:
    """``count`` GETs, ``concurrency`` at a time; the statuses the client saw."""
    statuses: dict[int, int] = {}
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            async with http.get(url) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

    async with asyncio.timeout(60):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def test_real_scrape_passes_promtool_check_metrics(backends: Any, gateway: Any,
                                                         http: Any) -> None:
    require_tool("promtool")
    good, failing = await backends(2)
    # 503s are retried and eject the failing node: retry and ejection series appear too.
    failing.fault(error_rate=1.0, error_status=503)
    gw = await gateway([good.url, failing.url])
    await send(http, f"{gw.traffic_url}/hello", 40, concurrency=4)
    await send(http, f"{gw.traffic_url}/no-such-page", 5, concurrency=1)
    exposition = await scrape(http, gw)
    assert "hagw_upstream_retries_total{" in exposition

    result = await asyncio.to_thread(promtool, "check", "metrics", stdin=exposition)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"promtool check metrics complains about the gateway's metrics:\n"
        f"{result.stdout}{result.stderr}")


async def test_scrape_exports_every_metric_the_rules_and_dashboard_read(
        backends: Any, gateway: Any, http: Any) -> None:
    [node] = await backends(1)
    gw = await gateway([node.url])
    await send(http, f"{gw.traffic_url}/hello", 5, concurrency=1)
    missing = CONTRACT - scraped_names(await scrape(http, gw))
    assert missing == set(), "the gateway does not export these contract metrics"


# -- a real Prometheus ---------------------------------------------------------------------

@dataclass
class Prometheus:
    url: str
    process: asyncio.subprocess.Process
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
async def prometheus_server(tmp_path: Path) -> AsyncIterator[
        Callable[[str], Awaitable[Prometheus]]]:
    """``await prometheus_server("127.0.0.1:PORT")``: a real Prometheus scraping that target
    every second with the shipped config and rules. Stopped (and killed if need be) after."""
    binary = require_tool("prometheus")
    started: list[Prometheus] = []
    logs: list[Any] = []

    async def start(target: str) -> Prometheus:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s",
                                scrape_timeout="1s")
        config["rule_files"] = [str(RULES)]
        [job] = [j for j in config["scrape_configs"] if j["job_name"] == "hagw"]
        job["static_configs"] = [{"targets": [target]}]
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        for attempt in range(3):  # the free port may be taken before Prometheus binds it
            port = free_port()
            log_path = tmp_path / f"prometheus-{attempt}.log"
            log = log_path.open("wb")
            logs.append(log)
            process = await asyncio.create_subprocess_exec(
                binary, f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / f'data-{attempt}'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            server = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
            started.append(server)
            if await wait_ready(server):
                return server
            if process.returncode is None:
                break
        raise AssertionError(f"Prometheus did not become ready:\n{server.log_tail()}")

    yield start
    for server in started:
        if server.process.returncode is None:
            server.process.terminate()
            try:
                async with asyncio.timeout(10):
                    await server.process.wait()
            except TimeoutError:
                server.process.kill()
                await server.process.wait()
    for log in logs:
        log.close()


async def wait_ready(server: Prometheus) -> bool:
    """True once /-/ready answers 200; False if the process exited first or took too long."""
    async with aiohttp.ClientSession() as session:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PROMETHEUS_START):
                while server.process.returncode is None:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{server.url}/-/ready") as resp:
                            if resp.status == 200:
                                return True
                    await asyncio.sleep(0.1)
    return False


async def api(session: aiohttp.ClientSession, server: Prometheus, path: str,
              **params: str) -> Any:
    async with session.get(f"{server.url}/api/v1/{path}", params=params) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return body["data"]


async def query(session: aiohttp.ClientSession, server: Prometheus,
                expr: str) -> list[dict[str, Any]]:
    data = await api(session, server, "query", query=expr)
    result: list[dict[str, Any]] = data["result"]
    return result


async def scalar(session: aiohttp.ClientSession, server: Prometheus, expr: str) -> float | None:
    """The value of a one-series query, None when it has no result."""
    result = await query(session, server, expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


async def poll(session: aiohttp.ClientSession, server: Prometheus, expr: str,
               done: Callable[[float | None], bool], timeout: float = PROMETHEUS_CATCH_UP
               ) -> float | None:
    """Query until ``done(value)`` or the timeout; the last value either way."""
    value: float | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                value = await scalar(session, server, expr)
                if done(value):
                    break
                await asyncio.sleep(0.2)
    return value


async def test_prometheus_scrapes_the_gateway_and_computes_the_sli(
        backends: Any, gateway: Any, prometheus_server: Any) -> None:
    [node] = await backends(1)
    # A known share of 500s that reach the client: no retries (500 is not retried by
    # default anyway), no outlier ejection. The client counts what it saw.
    node.fault(error_rate=0.2, error_status=500)
    gw = await gateway([node.url], retries={"attempts": 1},
                       outlier_detection={"enabled": False})
    host, port = gw.admin_address
    server: Prometheus = await prometheus_server(f"{host}:{port}")

    async with aiohttp.ClientSession() as session:
        # Traffic starts after three scrapes, so every counter is seen at 0 first (rate()
        # over 5m covers all of it) and increase() extrapolates little: with one second of
        # history, 1100 requests in one burst could look like 2000 in increase([6h]).
        # (Prometheus applies new targets after ~5s, which is most of this test's time.)
        up = await poll(session, server, 'up{job="hagw"}', lambda v: v == 1)
        assert up == 1, f"Prometheus never scraped the gateway:\n{server.log_tail()}"
        scrapes = await poll(session, server, 'count_over_time(up{job="hagw"}[1m])',
                             lambda v: v is not None and v >= 3)
        assert scrapes is not None and scrapes >= 3

        # 1100 requests: above the fast-burn alert's 1000-requests/1h guard, below the
        # 6h alert's 2000.
        statuses = await send(session, f"{gw.traffic_url}/hello", 1100)
        total = sum(statuses.values())
        bad = statuses.get(500, 0)
        assert set(statuses) <= {200, 500}, statuses
        assert 0.1 < bad / total < 0.3, statuses
        expected = bad / total

        # Wait until Prometheus has scraped the final counts.
        seen = await poll(session, server, 'sum(hagw_requests_total{job="hagw"})',
                          lambda v: v == total)
        assert seen == total, f"Prometheus saw {seen} requests, the client sent {total}"

        # Ratio from the existing per-class counter (no SLI metrics needed).
        by_class = await poll(
            session, server,
            'sum(rate(hagw_requests_total{job="hagw", code_class="5xx"}[5m]))'
            ' / sum(rate(hagw_requests_total{job="hagw"}[5m]))',
            lambda v: v is not None and math.isclose(v, expected, abs_tol=0.005))
        assert by_class is not None and math.isclose(by_class, expected, abs_tol=0.005), (
            by_class, expected)

        # The rules loaded and evaluate (objective needs no gateway metric).
        assert await scalar(session, server,
                            'slo:objective:ratio{sloth_service="hagw"}') == 0.9999

        # --- from here on: hagw_slo_requests_total{result} -------------------------------
        counted = await poll(session, server,
                             'sum(hagw_slo_requests_total{job="hagw", result="bad"})',
                             lambda v: v == bad)
        assert counted == bad, "hagw_slo_requests_total{result=bad} != 500s the client saw"
        good = await scalar(session, server,
                            'sum(hagw_slo_requests_total{job="hagw", result="good"})')
        assert good == total - bad

        sli = await poll(
            session, server,
            'slo:sli_error:ratio_rate5m{sloth_id="hagw-availability"}',
            lambda v: v is not None and math.isclose(v, expected, abs_tol=0.005))
        assert sli is not None and math.isclose(sli, expected, abs_tol=0.005), (
            f"slo:sli_error:ratio_rate5m = {sli}, the client saw {expected:.4f}")

        burn = await poll(session, server, 'slo:current_burn_rate:ratio{sloth_slo="availability"}',
                          lambda v: v is not None and math.isclose(v, expected / 0.0001,
                                                                   rel_tol=0.05))
        assert burn is not None and math.isclose(burn, expected / 0.0001, rel_tol=0.05)

        # A 2000x burn over 1100 requests pages (fast burn); the 6h alert's traffic guard
        # (2000 requests) holds it back.
        fast = await poll(
            session, server,
            'count(ALERTS{alertname="HagwErrorBudgetBurnFast", alertstate="firing",'
            ' severity="page"})', lambda v: v == 1)
        assert fast == 1, "HagwErrorBudgetBurnFast did not fire"
        assert await query(session, server, 'ALERTS{alertname="HagwErrorBudgetBurnHigh"}') == []

        # Every rule evaluates without errors.
        groups = (await api(session, server, "rules"))["groups"]
        assert {g["name"] for g in groups} == {g["name"] for g in
                                               yaml.safe_load(RULES.read_text())["groups"]}
        broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
                  if r["health"] == "err"]
        assert broken == []

        # Every dashboard query runs against the real server.
        for expr in dashboard_exprs():
            await query(session, server, grafana_to_promql(expr))
