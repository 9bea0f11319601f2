"""Benchmark runs: the streaming pipeline over a data set in ``--jobs`` spawn workers, scored.

One run = one (variant, parameters) pair over every file. Workers (``edged_host.worker``) use one
onnxruntime thread each and import only the edge runtime. Each run gets a fresh pool, so the peak
RSS of a worker is that run's own; ``edged-tune`` keeps one pool for all its trials instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from edged.models.bundle import load_bundle
from edged.errors import EdgedError
from edged.diarize.params import PipelineParams

from .inputs import Dataset
from .scoring import ErrorRates, ScoreOptions, annotation_from_turns, score_set
from .worker import FileResult, init_worker, run_file


class Runner:
    """A pool of ``jobs`` spawn processes with one model variant loaded; runs files with any params.

    Use as a context manager. On Ctrl-C (or any error) pending files are cancelled and the workers
    terminated, so nothing is left running."""

    def __init__(self, models: Path | str, variant: str, jobs: int = 1):
        if jobs < 1:
            raise EdgedError(f"--jobs {jobs} must be at least 1")
        self.models = str(models)
        self.variant = variant
        self.jobs = jobs
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Runner:
        load_bundle(self.models, variants=(self.variant,))  # a bad bundle fails here, in one line
        self._pool = ProcessPoolExecutor(
            self.jobs, mp_context=get_context("spawn"), initializer=init_worker,
            initargs=(self.models, self.variant),
        )
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(abort=kind is not None)

    def close(self, abort: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if abort:
            processes = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=10)
        else:
            pool.shutdown(wait=True)

    def run(
        self, dataset: Dataset, params: PipelineParams, progress: Callable[[FileResult], None] | None = None
    ) -> dict[str, FileResult]:
        """Every file of ``dataset`` with ``params`` (longest first, for balance); uri -> result."""
        if self._pool is None:
            raise RuntimeError("Runner is not open; use it as a context manager")
        order = sorted(dataset.audio, key=lambda uri: -dataset.items[uri].duration)
        values = params.to_dict()
        futures: dict[Future, str] = {
            self._pool.submit(run_file, str(dataset.audio[uri]), uri, values): uri for uri in order
        }
        results: dict[str, FileResult] = {}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    results[result.uri] = result
                    if progress is not None:
                        progress(result)
        except BrokenProcessPool:
            raise EdgedError(
                "a benchmark worker died (out of memory or killed); retry with fewer --jobs"
            ) from None
        return results


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"step_ms_p50": None, "step_ms_p95": None, "step_ms_p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"step_ms_p50": round(float(p50), 3), "step_ms_p95": round(float(p95), 3),
            "step_ms_p99": round(float(p99), 3)}


def _rates(rates: ErrorRates) -> dict[str, Any]:
    r = {k: (None if v is None else round(v, 3)) for k, v in
         (("der", rates.der), ("jer", rates.jer), ("miss", rates.miss),
          ("false_alarm", rates.false_alarm), ("confusion", rates.confusion))}
    r["speech_s"] = round(rates.speech_s, 3)
    r["components_s"] = {"missed": round(rates.missed_s, 3), "false_alarm": round(rates.false_alarm_s, 3),
                         "confusion": round(rates.confusion_s, 3)}
    return r


@dataclass
class RunResult:
    """A scored run: the report block plus the raw material for files and figures."""

    report: dict[str, Any]
    total: ErrorRates
    hypotheses: dict[str, Any] = field(default_factory=dict)  # uri -> pyannote Annotation
    results: dict[str, FileResult] = field(default_factory=dict)


def evaluate(
    dataset: Dataset, results: Mapping[str, FileResult], variant: str, params: PipelineParams,
    options: ScoreOptions = ScoreOptions(),
) -> RunResult:
    """Score a run and gather its speed and memory figures into one report block."""
    hypotheses = {uri: annotation_from_turns(uri, r.turns) for uri, r in results.items()}
    total, per_file = score_set(dataset.items, hypotheses, options)
    steps = [ms for r in results.values() for ms in r.step_ms]
    audio_s = sum(r.audio_s for r in results.values())
    compute_s = sum(r.compute_s for r in results.values())
    workers: dict[int, dict[str, Any]] = {}
    for r in results.values():
        w = workers.setdefault(r.pid, {"pid": r.pid, "peak_rss_mb": 0.0, "files": 0})
        w["peak_rss_mb"] = round(max(w["peak_rss_mb"], r.peak_rss_mb), 1)
        w["files"] += 1
    files: dict[str, Any] = {}
    for uri in dataset.items:
        r, item = results[uri], dataset.items[uri]
        files[uri] = {
            **_rates(per_file[uri]),
            **_percentiles(r.step_ms),
            "audio_s": round(r.audio_s, 3),
            "rtf": round(r.compute_s / r.audio_s, 4) if r.audio_s else None,
            "steps": len(r.step_ms),
            "speakers_ref": len(item.reference.labels()),
            "speakers_hyp": len({t[0] for t in r.turns}),
            "uem": item.uem_source,
            "path": str(dataset.audio[uri]),
            "group": dataset.groups[uri],
            "bad_samples": r.bad_samples,
        }
    report: dict[str, Any] = {
        "variant": variant,
        "latency": params.latency,
        **_rates(total),
        **_percentiles(steps),
        "steps": len(steps),
        "rtf": round(compute_s / audio_s, 4) if audio_s else None,
        "audio_s": round(audio_s, 3),
        "compute_s": round(compute_s, 3),
        "peak_rss_mb": max((w["peak_rss_mb"] for w in workers.values()), default=None),
        "workers": sorted(workers.values(), key=lambda w: w["pid"]),
        "params": params.to_dict(),
        "files": files,
    }
    groups = sorted(set(dataset.groups.values()))
    if len(groups) > 1:
        report["groups"] = {}
        for g in groups:
            uris = [u for u in dataset.items if dataset.groups[u] == g]
            block = _rates(ErrorRates.total(per_file[u] for u in uris))
            block["files"] = len(uris)
            block["audio_s"] = round(sum(results[u].audio_s for u in uris), 3)
            report["groups"][g] = block
    return RunResult(report=report, total=total, hypotheses=hypotheses, results=dict(results))


def progress_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar on stderr (files done, audio seconds), or a no-op when disabled."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=True)


def run_config(
    dataset: Dataset, models: Path | str, variant: str, params: PipelineParams, jobs: int = 1,
    options: ScoreOptions = ScoreOptions(), show_progress: bool = True,
) -> RunResult:
    """One benchmark run in a fresh pool of min(jobs, files) workers."""
    jobs = max(1, min(jobs, len(dataset.audio)))
    with progress_bar(len(dataset.audio), f"{variant} {params.latency:g}s", show_progress) as bar:
        def tick(result: FileResult) -> None:
            bar.set_postfix_str(f"{result.uri} RTF {result.compute_s / max(result.audio_s, 1e-9):.3f}")
            bar.update(1)

        with Runner(models, variant, jobs) as runner:
            results = runner.run(dataset, params, tick)
    return evaluate(dataset, results, variant, params, options)


def bundle_hashes(models: Path | str, variants: list[str]) -> dict[str, Any]:
    """sha256 of every model file used, by variant, from the verified bundle."""
    bundle = load_bundle(models, variants=tuple(variants))
    return {
        "path": str(Path(models).resolve()),
        "created": bundle.manifest.get("created"),
        "sha256": {v: {role: bundle.model(role, v).sha256 for role in ("segmentation", "embedding")}
                   for v in variants},
    }


def cpu_info() -> dict[str, Any]:
    """Where the figures were measured."""
    import platform

    import onnxruntime

    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "onnxruntime_threads": 1}


def run_bench(
    dataset: Dataset,
    models: Path | str,
    output: Path,
    variants: Sequence[str] = ("int8",),
    latencies: Sequence[float] = (5.0,),
    jobs: int = 1,
    options: ScoreOptions = ScoreOptions(),
    base: PipelineParams | Callable[[float], PipelineParams] | None = None,
    timelines: bool = True,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict[str, Any]:
    """Every variant x latency over ``dataset``; writes RTTMs, figures, report.json and report.md.

    ``base``: the parameters (their latency replaced by each one run), or a function giving the
    parameters of each latency. Returns the report: the first run's figures at top level, every
    run under ``runs``."""
    from . import figures, report as out

    fixed = base or PipelineParams()
    params_for = fixed if callable(fixed) else (lambda lat: fixed.replace(latency=lat))
    configs = [(v, params_for(lat)) for v in variants for lat in latencies]  # validates all first
    hashes = bundle_hashes(models, list(dict.fromkeys(variants)))
    output.mkdir(parents=True, exist_ok=True)
    warnings = []
    whole = sorted(u for u, i in dataset.items.items() if i.uem_source == "audio")
    if whole and any(i.uem_source == "file" for i in dataset.items.values()):
        warnings.append(f"not in the UEM, scored over the whole audio: {', '.join(whole)}")
        log(f"edged-bench: note: {warnings[-1]}")
    runs: list[dict[str, Any]] = []
    for variant, params in configs:
        result = run_config(dataset, models, variant, params, jobs, options, show_progress)
        name = out.run_name(variant, params.latency)
        for uri, r in result.results.items():
            path = out.write_rttm(output / name / "rttm" / f"{uri}.rttm", uri, r.turns)
            result.report["files"][uri]["hypothesis"] = str(path.relative_to(output))
            if timelines:
                item = dataset.items[uri]
                f = result.report["files"][uri]
                png = figures.timeline_png(
                    output / name / "timelines" / f"{uri}.png", item.reference, result.hypotheses[uri], item.uem,
                    item.duration, f"{uri}: {variant}, latency {params.latency:g} s, DER {out.fmt(f['der'])}% "
                    f"(miss {out.fmt(f['miss'])}, FA {out.fmt(f['false_alarm'])}, conf {out.fmt(f['confusion'])})")
                f["figure"] = str(png.relative_to(output))
        runs.append(result.report)
        r = result.report
        log(f"{variant} latency {params.latency:g} s: DER {out.fmt(r['der'])}% (miss {out.fmt(r['miss'])}, FA "
            f"{out.fmt(r['false_alarm'])}, conf {out.fmt(r['confusion'])}), JER {out.fmt(r['jer'])}%, step "
            f"{out.fmt(r['step_ms_p50'])}/{out.fmt(r['step_ms_p95'])}/{out.fmt(r['step_ms_p99'])} ms, RTF "
            f"{out.fmt(r['rtf'], 3)}, peak RSS {out.fmt(r['peak_rss_mb'], 0)} MB")
    report: dict[str, Any] = {
        "version": 1,
        **{k: v for k, v in runs[0].items()},
        "models": hashes,
        "options": {"collar": options.collar, "skip_overlap": options.skip_overlap},
        "inputs": {"files": len(dataset.items), "audio_s": round(dataset.duration, 3)},
        "jobs": jobs,
        "machine": cpu_info(),
        "units": {"der": "%", "jer": "%", "miss": "%", "false_alarm": "%", "confusion": "%",
                  "step_ms": "ms of compute per pipeline step (every params.step s of audio: segmentation + embedding + clustering + aggregation)",
                  "rtf": "compute seconds / audio seconds, one thread", "peak_rss_mb": "MiB, max over workers"},
        "runs": runs,
        "figures": {},
        "warnings": warnings,
    }
    if len({r["latency"] for r in runs}) > 1:
        report["figures"]["der_latency"] = str(
            figures.der_latency_png(output / "der_latency.png", runs).relative_to(output))
    out.write_json(output / "report.json", report)
    out.write_markdown(output / "report.md", report)
    return report
