"""The Dockerfile and compose.yaml agree with the settings and the command line.

No container engine runs here: the files are parsed and checked, not built.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from flight_server.cli.main import build_parser
from flight_server.settings import PROJECT_ROOT, Settings, settings_fields

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())
PORT_DEFAULTS = {name: Settings.model_fields[name].default for name in ("port", "health_port", "metrics_port")}
PORTS = set(PORT_DEFAULTS.values())


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            env.update(dict(token.split("=", 1) for token in shlex.split(rest)))
    return env


def test_deploy_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    bases = [rest.split()[0] for keyword, rest in _instructions() if keyword == "FROM"]
    assert len(bases) >= 2 and all(base.endswith("-slim") for base in bases)
    final = _final_stage()
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert "[dev]" not in DOCKERFILE and "pytest" not in runs  # runtime dependencies only
    copied = " ".join(rest for keyword, rest in final if keyword == "COPY")
    assert "tests" not in copied and "bench" not in copied


def test_deploy_dockerfile_ports_volume_and_environment_match_the_settings() -> None:
    final = _final_stage()
    exposed = {int(p) for keyword, rest in final if keyword == "EXPOSE" for p in rest.split()}
    assert exposed == PORTS == {8815, 8816, 9464}
    env = _env(final)
    known = settings_fields()
    assert all(name in known for name in env if name.startswith("FLIGHT_"))
    assert {int(env["FLIGHT_PORT"]), int(env["FLIGHT_HEALTH_PORT"]), int(env["FLIGHT_METRICS_PORT"])} == PORTS
    volumes = [rest for keyword, rest in final if keyword == "VOLUME"]
    assert volumes and env["FLIGHT_DATA_DIR"] in volumes[0]


def test_deploy_dockerfile_healthcheck_asks_the_grpc_health_service() -> None:
    checks = [rest for keyword, rest in _final_stage() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].split("CMD", 1)[1].strip()
    argv = yaml.safe_load(command)  # the exec form is a JSON array
    assert argv[:2] == ["flight-server", "health-check"]
    build_parser().parse_args(argv[1:])  # a real subcommand


def test_deploy_compose_services_have_healthchecks_and_start_in_order() -> None:
    services = COMPOSE["services"]
    assert {"postgres", "redis", "flight"} <= set(services)
    for name in ("postgres", "redis", "flight"):
        assert services[name]["healthcheck"]["test"], name
    flight = services["flight"]
    assert flight["healthcheck"]["test"][1:3] == ["flight-server", "health-check"]
    assert flight["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_deploy_compose_environment_and_ports_match_the_settings() -> None:
    flight = COMPOSE["services"]["flight"]
    env = flight["environment"]
    known = settings_fields()
    unknown = [name for name in env if name.startswith("FLIGHT_") and name not in known]
    assert not unknown
    assert env["FLIGHT_POSTGRES__URI"].startswith("postgresql://") and "@postgres:5432/" in env["FLIGHT_POSTGRES__URI"]
    # user queries run as the reader role, which is granted no secret column
    assert env["FLIGHT_POSTGRES__READER_URI"].startswith("postgresql://chrono_reader:")
    assert "@postgres:5432/chrono" in env["FLIGHT_POSTGRES__READER_URI"]
    example = (PROJECT_ROOT / "deploy/example.env").read_text()
    assert all(f"{name}=" in example for name in re.findall(r"\$\{(\w+):\?", env["FLIGHT_POSTGRES__READER_URI"]))
    assert env["FLIGHT_REDIS__URL"].startswith("redis://redis:6379/")
    container_ports = {int(str(p).split("#")[0].strip().rsplit(":", 1)[-1]) for p in flight["ports"]}
    assert container_ports == PORTS
    volumes = [str(v) for v in flight["volumes"]]
    assert any(v.endswith(":/data") for v in volumes)
    grace = float(str(flight["stop_grace_period"]).rstrip("s"))
    assert grace > float(env["FLIGHT_DRAIN_TIMEOUT_S"]) + 5  # SIGTERM drains before the kill


def test_deploy_compose_redis_never_evicts_version_counters() -> None:
    command = " ".join(COMPOSE["services"]["redis"]["command"])
    policy = re.search(r"--maxmemory-policy (\S+)", command)
    assert policy and policy.group(1).startswith("volatile-")


@pytest.mark.parametrize("path", ["deploy/prometheus.yml", "deploy/alerts.yml"])
def test_deploy_compose_prometheus_files_exist(path: str) -> None:
    mounts = " ".join(COMPOSE["services"]["prometheus"]["volumes"])
    assert f"./{path}:" in mounts
    assert Path(PROJECT_ROOT / path).exists()
    config = yaml.safe_load((PROJECT_ROOT / "deploy/prometheus.yml").read_text())
    assert config["scrape_configs"][0]["job_name"] == "chrono-flight"  # the job the alerts name
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == [f"flight:{PORT_DEFAULTS['metrics_port']}"]
