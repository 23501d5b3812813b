"""The Markdown report of the result-cache benchmarks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bench.cache.harness import DEFAULT_CODEC, MIB, OTHER_CODECS
from bench.common import Result, cell


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, through lists and dicts."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_rounded(value), default=str)


def _codec_table(results: Sequence[Result]) -> list[str]:
    rec = next((r for r in results if r.benchmark == "B11" and r.details.get("summaries")), None)
    if rec is None:
        return []
    lines = [
        "## B11 codecs in detail",
        "",
        "| result | codec | value | encode ms (IPC write alone) | decode ms | SET ms | GET ms "
        "| hit path (GET+decode) ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, codecs in rec.details["summaries"].items():
        for codec, s in codecs.items():
            lines.append(
                f"| {cell(name)} | {codec} | {s['bytes'] / MIB:.3f} MiB | {s['encode_ms']:.2f} "
                f"({s['ipc_write_ms']:.2f}) | {s['decode_ms']:.2f} | {s['set_ms']:.2f} | {s['get_ms']:.2f} | "
                f"{s['hit_path_ms']:.2f} |"
            )
    return [*lines, ""]


def render_markdown(results: Sequence[Result], meta: Mapping[str, Any]) -> str:
    machine = meta.get("machine", {})
    lines = [
        "# Chrono Flight result-cache benchmarks",
        "",
        f"Run {meta.get('started', '')}, {meta.get('rows', 0):,} demo CDX rows, "
        f"mode {'quick' if meta.get('quick') else 'full'}, total {meta.get('duration_s', 0):.0f} s "
        f"(`{meta.get('command', '')}`). Machine: {machine.get('logical_cores')} logical cores "
        f"({machine.get('cpu_model', '?')}), {machine.get('memory_gb')} GB RAM, load average at start "
        f"{machine.get('load_avg_at_start')}, at end {meta.get('load_avg_at_end')}. "
        "Servers: `flight-server serve` processes, L1+L2 and L2 only (FLIGHT_CACHE__L1_MAX_ENTRIES=0), plus "
        f"diagnostic ones (L1 without Redis; L2 only with {' and '.join(OTHER_CODECS)} entries); Redis on "
        f"loopback, {DEFAULT_CODEC} entries (the server's default codec) unless said otherwise. Baseline and "
        "candidate run side by side, interleaved; figures are medians over the repetitions, ratios medians of "
        "the per-repetition ratios.",
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
    lines += ["", *_codec_table(results), "## Details", ""]
    for r in results:
        notes = r.details.get("notes")
        lines.append(
            f"- **{r.benchmark}** {r.title} ({r.repetitions} reps): " + (notes if isinstance(notes, str) else "")
        )
        for key, value in r.details.items():
            if key not in ("notes", "summaries"):
                lines.append(f"  - {key}: {_compact(value)}")
    lines.append("")
    return "\n".join(lines)
