"""Prometheus metrics, scraped over HTTP from a whole server (`Runner`), and the alert rules."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from flight_server.demo.analytics import generate_demo_data
from flight_server.runner import Runner
from flight_server.settings import PROJECT_ROOT, CacheSettings

from support.servers import DEMO_SEED, runner_settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    settings = runner_settings(tmp_path_factory.mktemp("metrics"), cache=CacheSettings(warm_top_n=0))
    runner = Runner(settings)
    runner.start(lambda con: generate_demo_data(con, 20_000, seed=DEMO_SEED))
    yield runner
    runner.shutdown()


@pytest.fixture(scope="module")
def client(runner: Runner) -> Iterator[flight.FlightClient]:
    with flight.connect(runner.location) as client:
        yield client


def _text(runner: Runner) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{runner.metrics_port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _scrape(runner: Runner) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(_text(runner)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _get(client: flight.FlightClient, command: dict[str, Any]) -> pa.Table:
    return client.do_get(flight.Ticket(json.dumps(command).encode())).read_all()


def test_metrics_requests_latency_cache_and_rows_change_as_queries_run(
    runner: Runner, client: flight.FlightClient
) -> None:
    before = _scrape(runner)
    command = {"query": "domains.top", "params": {"limit": 7}}
    first, second = _get(client, command), _get(client, command)
    assert first.num_rows == second.num_rows == 7
    with pytest.raises(pa.ArrowInvalid, match="syntax error"):
        _get(client, {"sql": "SELEC 1"})
    after = _scrape(runner)

    ok = {"rpc": "DoGet", "route": "domains.top", "engine": "duckdb", "status": "ok"}
    assert _value(after, "chrono_requests_total", **ok) - _value(before, "chrono_requests_total", **ok) == 2
    count = "chrono_request_duration_seconds_count"
    assert _value(after, count, **ok) - _value(before, count, **ok) == 2
    bad = {"rpc": "DoGet", "route": "get", "engine": "", "status": "invalid_argument"}
    assert _value(after, "chrono_requests_total", **bad) - _value(before, "chrono_requests_total", **bad) == 1

    for result in ("miss", "hit_l1"):
        delta = _value(after, "chrono_cache_lookups_total", result=result) - _value(
            before, "chrono_cache_lookups_total", result=result
        )
        assert delta == 1, result
    hit = {"route": "domains.top", "engine": "duckdb", "cache": "hit-l1"}
    assert _value(after, "chrono_streamed_rows_total", **hit) - _value(before, "chrono_streamed_rows_total", **hit) == 7
    assert _value(after, "chrono_streamed_bytes_total", **hit) > _value(before, "chrono_streamed_bytes_total", **hit)

    decision = {"route": "domains.top", "engine": "duckdb", "fallback": "false"}
    assert (
        _value(after, "chrono_routing_decisions_total", **decision)
        >= _value(before, "chrono_routing_decisions_total", **decision) + 2
    )


def test_metrics_ingested_rows_by_dataset(runner: Runner, client: flight.FlightClient) -> None:
    table = pa.table({"id": pa.array(range(123), pa.int64()), "name": [f"n{i}" for i in range(123)]})
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("metrics_probe"), table.schema)
    writer.write_table(table)
    writer.done_writing()
    reader.read()
    writer.close()
    samples = _scrape(runner)
    assert _value(samples, "chrono_ingested_rows_total", dataset="metrics_probe") == 123
    assert _value(samples, "chrono_ingested_bytes_total", dataset="metrics_probe") > 0


def test_metrics_state_gauges(runner: Runner) -> None:
    samples = _scrape(runner)
    assert _value(samples, "chrono_health_status", component="") == 1
    assert _value(samples, "chrono_health_status", component="duckdb") == 1
    assert _value(samples, "chrono_duckdb_memory_bytes") > 0
    assert _value(samples, "chrono_duckdb_memory_limit_bytes") == 1000**3
    assert _value(samples, "chrono_build_info", version=runner.app.version if runner.app else "") == 1
    assert _value(samples, "process_resident_memory_bytes") > 0
    assert 0 <= _value(samples, "chrono_system_memory_ratio") <= 1
    assert _value(samples, "chrono_uptime_seconds") > 0


# -- alert rules ------------------------------------------------------------------------------

ALERTS = PROJECT_ROOT / "deploy" / "alerts.yml"
PROMETHEUS_BUILTINS = {"up"}
_METRIC = re.compile(r"\b((?:chrono|process)_[a-z_]+)\b")


def _exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_metrics_alert_rules_cover_the_seed_alerts_and_use_exported_metrics(runner: Runner) -> None:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    by_name = {rule["alert"]: rule for rule in rules}
    assert {
        "ChronoFlightDown",
        "ChronoFlightPerformanceDegraded",
        "ChronoFlightMemoryExhaustion",
        "ChronoFlightCpuExhaustion",
        "ChronoFlightDiskExhaustion",
        "ChronoFlightCircuitBreakerOpen",
        "ChronoFlightCacheHitRateLow",
        "ChronoFlightQueryTimeoutsIncreasing",
        "ChronoFlightMemoryTrendingUp",
    } <= set(by_name)
    exported = _exported_names(_text(runner))
    for rule in rules:
        expr = rule["expr"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert expr.count("(") == expr.count(")"), rule["alert"]
        used = set(_METRIC.findall(expr))
        assert used, rule["alert"]
        missing = {name for name in used if name not in exported} - PROMETHEUS_BUILTINS
        assert not missing, f"{rule['alert']} uses metrics the server does not export: {missing}"
    assert "0.8" in by_name["ChronoFlightMemoryExhaustion"]["expr"]
    assert "< 0.7" in by_name["ChronoFlightCacheHitRateLow"]["expr"]
    assert "1.5 *" in by_name["ChronoFlightPerformanceDegraded"]["expr"]
