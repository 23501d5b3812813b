"""B15: the cost of authentication and project scoping on a small named query.

Two `flight-server serve` processes over identical demo data, one without auth and one
with JWT auth; the same named query (`domains.statistics`) is timed against both,
interleaved in rounds. On the secured server a viewer scoped to three projects calls
it, so every request verifies a token and rewrites the query for the caller's scope.

Run: `python -m bench.security [--rows N] [--calls N]`; writes bench/results/security.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import pyarrow.flight as flight

from bench.common import RESULTS_DIR, FlightServer, log, machine_info, median, percentile, prepare_data

SECRET = "bench-secret-long-enough-for-hs256-signatures"
COMMAND = json.dumps({"query": "domains.statistics", "params": {"domain": "example.com"}}).encode()


def _token() -> str:
    now = int(time.time())
    claims = {"sub": "bench-viewer", "aud": "chrono-flight", "iat": now, "exp": now + 3600, "role": "viewer",
              "projects": ["proj-001", "proj-002", "proj-003"]}  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _wait(location: str, call: flight.FlightCallOptions, server: FlightServer) -> None:
    deadline = time.monotonic() + 180
    while True:
        server.check_alive()
        try:
            with flight.connect(location) as client:
                list(client.do_action(flight.Action("health", b""), call))
            return
        except flight.FlightError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _round(client: flight.FlightClient, call: flight.FlightCallOptions, calls: int) -> list[float]:
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        client.do_get(flight.Ticket(COMMAND), call).read_all()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(tempfile.gettempdir()) / "chrono-flight-bench"
    plain_data = prepare_data(root / f"security-plain-{args.rows}", args.rows).data_dir
    secured_data = prepare_data(root / f"security-auth-{args.rows}", args.rows).data_dir
    logs = root / "logs"
    plain = FlightServer(plain_data, logs / "security-plain.log")
    secured = FlightServer(
        secured_data,
        logs / "security-auth.log",
        {"FLIGHT_AUTH__JWT_SECRET": SECRET, "FLIGHT_LIMITS__RATE_PER_S": "1000000"},
    )
    bearer = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {_token()}".encode())])
    anonymous = flight.FlightCallOptions()
    try:
        _wait(plain.location, anonymous, plain)
        _wait(secured.location, bearer, secured)
        plain_client, secured_client = flight.connect(plain.location), flight.connect(secured.location)
        _round(plain_client, anonymous, 30)  # warm up: the first call fills the cache
        _round(secured_client, bearer, 30)
        off: list[float] = []
        on: list[float] = []
        ratios = []
        for _ in range(args.rounds):
            a, b = _round(plain_client, anonymous, args.calls), _round(secured_client, bearer, args.calls)
            off += a
            on += b
            ratios.append(median(b) / median(a))
        overhead = median(ratios) - 1
    finally:
        plain.stop()
        secured.stop()
    result: dict[str, Any] = {
        "benchmark": "B15",
        "query": "domains.statistics (cache hit), one DoGet with the command as ticket",
        "calls": len(on),
        "off_p50_ms": round(median(off), 3),
        "off_p99_ms": round(percentile(off, 99), 3),
        "on_p50_ms": round(median(on), 3),
        "on_p99_ms": round(percentile(on, 99), 3),
        "overhead_p50": round(overhead, 4),
        "round_ratios": [round(r, 4) for r in ratios],
        "target": "< 10%",
        "met": overhead < 0.10,
        "machine": machine_info(),
        "rows": args.rows,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "security.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = (
        "# B15: auth and project scoping overhead\n\n"
        f"`python -m bench.security --rows {args.rows} --calls {args.calls} --rounds {args.rounds}`; "
        f"{result['machine']['logical_cores']} cores; rounds interleaved; ratio = median of per-round p50 ratios.\n\n"
        "| benchmark | auth off p50 (p99) | auth + scoping on p50 (p99) | overhead | target | met? |\n"
        "|---|---|---|---|---|---|\n"
        f"| B15 `domains.statistics` round trip | {result['off_p50_ms']} ms ({result['off_p99_ms']} ms) | "
        f"{result['on_p50_ms']} ms ({result['on_p99_ms']} ms) | {overhead:+.1%} | < 10% | "
        f"{'yes' if result['met'] else '**no**'} |\n"
    )
    (RESULTS_DIR / "security.md").write_text(markdown)
    log(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
