"""The Markdown report of the PostgreSQL benchmarks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bench.common import Result, cell


def render_markdown(results: Sequence[Result], meta: Mapping[str, Any]) -> str:
    machine = meta.get("machine", {})
    lines = [
        "# Chrono Flight PostgreSQL benchmarks (B5-B7)",
        "",
        f"Run {meta.get('started', '')}, {meta.get('rows', 0):,} demo CDX rows, "
        f"mode {'quick' if meta.get('quick') else 'full'}, total {meta.get('duration_s', 0):.0f} s "
        f"(set-up {meta.get('setup_s', 0):.0f} s). Machine: {machine.get('logical_cores')} logical cores "
        f"({machine.get('cpu_model', '?')}), {machine.get('memory_gb')} GB RAM, load average at start "
        f"{machine.get('load_avg_at_start')}, at end {meta.get('load_avg_at_end')}. PostgreSQL "
        f"{meta.get('postgres_settings', {}).get('server_version', '?')} with its settings unchanged "
        f"({', '.join(f'{k} {v}' for k, v in meta.get('postgres_settings', {}).items() if k != 'server_version')}). "
        "Baseline and candidate run side by side, interleaved; figures are medians over the repetitions, "
        "ratios are medians of the per-repetition ratios (baseline time / candidate time).",
        "",
        f"Command: `{meta.get('command', '')}`",
        "",
        "| benchmark | baseline | candidate | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {cell(r.benchmark + ' ' + r.title)} | {cell(r.baseline)} | {cell(r.candidate)} | "
            f"{cell(r.ratio_text)} | {cell(r.target)} | {met} |"
        )
    lines += ["", "## Details", ""]
    for r in results:
        notes = r.details.get("notes")
        if notes:
            lines.append(f"- **{r.benchmark}** {r.title} ({r.repetitions} reps): {notes}")
    restart = meta.get("restart_with_copies")
    if restart:
        lines.append(
            "- Restarting a server over the database that holds the analytics copies: "
            + ("it starts." if restart.get("started") else f"it does not start: `{restart.get('error')}`")
        )
    lines += ["", "## Set-up", ""]
    for key in ("setup_seconds", "analytics_copies", "scan_table", "oltp_rows"):
        lines.append(f"- {key}: {json.dumps(meta.get(key), default=str)}")
    lines.append("")
    return "\n".join(lines)
