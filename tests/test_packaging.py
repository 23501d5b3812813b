"""A plain install runs: the wheel carries everything the server reads, and declares what it imports.

`test_packaging_wheel_serves_the_demo_from_another_directory` is the slow one (about a
minute, marked `packaging`): it builds the wheel from exactly what the Dockerfile's build
stage copies, installs it without extras in a fresh virtual environment (pip's cache and
configured indexes serve the dependencies), imports every module, then serves the demo
from an unrelated working directory and answers a query through the installed CLI.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from flight_server.settings import PROJECT_ROOT, Settings, packaged_schemas

from support.servers import serve_env

pytestmark = pytest.mark.slow

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
FIRST_PARTY = {"flight_server", "chrono_flight_client", "schemas"}


def _distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imports(root: Path) -> set[str]:
    """Top-level modules imported anywhere under `root` (lazy imports inside functions too)."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_packaging_declares_every_third_party_import() -> None:
    declared = {_distribution(r) for r in PYPROJECT["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    imported = _imports(PROJECT_ROOT / "flight_server") | _imports(PROJECT_ROOT / "clients" / "chrono_flight_client")
    third_party = {
        name
        for name in imported
        if name not in sys.stdlib_module_names and name not in FIRST_PARTY and name != "__future__"
    }
    undeclared = {
        name: providers.get(name, ["?"])
        for name in third_party
        if not declared & {_distribution(d) for d in providers.get(name, [])}
    }
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def test_packaging_lists_every_subpackage() -> None:
    """The package list is explicit (schemas/ is mapped in): no subpackage may be left out."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(PROJECT_ROOT).parts)
        for init in (PROJECT_ROOT / "flight_server").rglob("__init__.py")
    }
    assert listed == found | {"flight_server.schemas", "chrono_flight_client"}


def test_packaging_default_schemas_are_the_packaged_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory has nothing to do with it
    assert Settings().schemas_dir == packaged_schemas()
    shipped = {p.name for p in packaged_schemas().iterdir() if p.suffix in (".sql", ".toml")}
    assert shipped == {p.name for p in (PROJECT_ROOT / "schemas").iterdir() if p.suffix in (".sql", ".toml")}


def _docker_build_context(target: Path) -> None:
    """Copy what the Dockerfile's build stage copies: the wheel is built from that and nothing else."""
    text = re.sub(r"\\\n\s*", " ", (PROJECT_ROOT / "Dockerfile").read_text())
    stages = re.split(r"(?m)^FROM ", text)
    for line in stages[1].splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, dest = line.split()[1:]
        for source in sources:
            origin = PROJECT_ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, target / dest, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(origin, target / (dest if dest not in ("./", ".") else source))


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.packaging
def test_packaging_wheel_serves_the_demo_from_another_directory(tmp_path: Path) -> None:
    source, wheels, elsewhere = tmp_path / "src", tmp_path / "wheels", tmp_path / "elsewhere"
    for folder in (source, wheels, elsewhere):
        folder.mkdir()
    _docker_build_context(source)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, ".", cwd=source)
    (wheel,) = wheels.glob("*.whl")
    _run(sys.executable, "-m", "venv", tmp_path / "venv", cwd=tmp_path)
    bin_dir = tmp_path / "venv" / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, cwd=elsewhere)
    shutil.rmtree(source)  # nothing of the checkout is left to lean on
    every_module = (
        "import importlib, pkgutil, flight_server, chrono_flight_client\n"
        "for m in pkgutil.walk_packages(flight_server.__path__, 'flight_server.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    _run(bin_dir / "python", "-c", every_module, cwd=elsewhere)

    env = serve_env(elsewhere / "data", FLIGHT_CACHE__WARM_TOP_N="0")
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [str(bin_dir / "flight-server"), "serve", "--demo", "--rows", "2000"],
        cwd=elsewhere,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines, url = [], None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"listening on (grpc://\S+)", line)
            url = match.group(1) if match else None
        assert url, "the installed server did not start:\n" + "".join(lines[-30:])
        env_query = {k: v for k, v in env.items() if k != "FLIGHT_DATA_DIR"}
        query = [str(bin_dir / "flight-server"), "query", "--url", url, "--name", "domains.top", "-p", "limit=3"]
        answer = subprocess.run(
            [*query, "--format", "json"], cwd=elsewhere, env=env_query, capture_output=True, text=True, timeout=60
        )
        assert answer.returncode == 0, answer.stderr
        assert [row["rank"] for row in json.loads(answer.stdout)] == [1, 2, 3]
    finally:
        proc.send_signal(signal.SIGTERM)
        stderr_rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, stderr_rest[-2000:]
    assert "Traceback" not in stderr_rest
