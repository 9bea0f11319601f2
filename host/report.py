"""Benchmark outputs: hypothesis RTTMs, ``report.json`` and the human-readable ``report.md``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from edged.messages import format_rttm


class _Turn(NamedTuple):
    speaker: str
    start: float
    end: float


def run_name(variant: str, latency: float) -> str:
    """Folder name of one run, e.g. ``int8-lat5``."""
    return f"{variant}-lat{latency:g}"


def write_rttm(path: Path, uri: str, turns: Sequence[tuple[str, float, float]]) -> Path:
    """Hypothesis turns as RTTM (UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_rttm(uri, [_Turn(*t) for t in turns]), encoding="utf-8")
    return path


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def fmt(value: Any, digits: int = 1) -> str:
    """A number for tables, "–" when undefined."""
    return "–" if value is None else f"{value:.{digits}f}"


def _step(r: Mapping[str, Any]) -> str:
    return f"{fmt(r['step_ms_p50'])} / {fmt(r['step_ms_p95'])} / {fmt(r['step_ms_p99'])}"


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown tables: summary per run, per folder, per file; figure links."""
    runs = report["runs"]
    m = report["models"]
    opts = report["options"]
    lines = [
        "# edged-bench report",
        "",
        f"- models: `{m['path']}` (created {m.get('created')}); "
        + "; ".join(f"{v}: segmentation {h['segmentation'][:12]}…, embedding {h['embedding'][:12]}…"
                    for v, h in m["sha256"].items()),
        f"- scoring: pyannote.metrics, collar {opts['collar']:g} s, overlap "
        f"{'skipped' if opts['skip_overlap'] else 'scored'}; totals from summed components; rates in %",
        f"- {report['inputs']['files']} files, {report['inputs']['audio_s']:.1f} s of audio; "
        f"{report['jobs']} worker(s), 1 onnxruntime thread each; {report['machine']['cpus']} CPUs "
        f"({report['machine']['machine']}), onnxruntime {report['machine']['onnxruntime']}",
        "",
        "## Summary",
        "",
        "| variant | latency s | DER | miss | false alarm | confusion | JER | step ms p50 / p95 / p99 | RTF | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['variant']} | {r['latency']:g} | {fmt(r['der'])} | {fmt(r['miss'])} | {fmt(r['false_alarm'])} | "
            f"{fmt(r['confusion'])} | {fmt(r['jer'])} | {_step(r)} | {fmt(r['rtf'], 3)} | {fmt(r['peak_rss_mb'], 0)} |"
        )
    if "groups" in runs[0]:
        names = list(runs[0]["groups"])
        lines += ["", "## By folder: DER (miss / false alarm / confusion)", "",
                  "| variant | latency s | " + " | ".join(names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for r in runs:
            cells = [f"{fmt(g['der'])} ({fmt(g['miss'])} / {fmt(g['false_alarm'])} / {fmt(g['confusion'])})"
                     for g in (r["groups"][n] for n in names)]
            lines.append(f"| {r['variant']} | {r['latency']:g} | " + " | ".join(cells) + " |")
    for r in runs:
        name = run_name(r["variant"], r["latency"])
        lines += ["", f"## Files: {r['variant']}, latency {r['latency']:g} s", "",
                  "| file | audio s | DER | miss | false alarm | confusion | JER | speakers ref / hyp | step ms p50 | RTF | scored | timeline |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for uri, f in r["files"].items():
            png = f.get("figure")
            link = f"[png]({png})" if png else ""
            lines.append(
                f"| {uri} | {f['audio_s']:.1f} | {fmt(f['der'])} | {fmt(f['miss'])} | {fmt(f['false_alarm'])} | "
                f"{fmt(f['confusion'])} | {fmt(f['jer'])} | {f['speakers_ref']} / {f['speakers_hyp']} | "
                f"{fmt(f['step_ms_p50'])} | {fmt(f['rtf'], 3)} | {'UEM' if f['uem'] == 'file' else 'whole audio'} | {link} |"
            )
        lines.append(f"\nHypotheses: `{name}/rttm/`.")
    if report.get("figures", {}).get("der_latency"):
        lines += ["", "## DER against latency", "", f"![DER against latency]({report['figures']['der_latency']})"]
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, report: Mapping[str, Any]) -> Path:
    path.write_text(markdown(report), encoding="utf-8")
    return path
