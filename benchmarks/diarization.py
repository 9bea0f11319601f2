"""Accuracy, speed and memory of the streaming pipeline on the shared recordings.

    .venv/bin/python benchmarks/diarization.py --models models/default \
        [--variant fp32,int8] [--latency 0.5,5] [--long-minutes 60]

Each (variant, latency) runs in a fresh worker process that imports only the edge runtime (as
the daemon would: one onnxruntime thread), so step times and peak RSS are the edge's own. DER is
scored with pyannote.metrics in the parent (collar 0, overlap scored, UEM where given), totals
from summed components. ``--long-minutes`` feeds one long stream built from the recordings as
fast as possible and reports RSS along the way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import edged  # noqa: F401  (first: pins the BLAS pools to one thread before numpy loads)
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "ami-debug": ("ami-debug/*.wav", "ami-debug/reference.rttm", "ami-debug/reference.uem"),
    "sample": ("sample/sample.wav", "sample/sample.rttm", None),
    "falcon": ("falcon/falcon.wav", "falcon/falcon.rttm", None),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def run_worker(models_dir: str, variant: str, latency: float, files: list[str], block: int = 1600) -> dict:
    """In a fresh process: run the pipeline over files; return turns, step times, RTF, peak RSS."""
    from edged.audio import read_audio
    from edged.events import TurnEvent
    from edged.hyperparams import PipelineParams
    from edged.models import load_models
    from edged.pipeline import StreamingDiarizer

    models = load_models(models_dir, variant, threads=1)
    params = PipelineParams(latency=latency)
    out = {"files": {}, "step_ms": [], "compute_s": 0.0, "audio_s": 0.0}
    for path in files:
        wav = read_audio(path)
        diarizer = StreamingDiarizer(models, params)
        started = time.perf_counter()
        blocks = (wav[i : i + block] for i in range(0, len(wav), block))
        turns = [e for e in diarizer.run(blocks) if isinstance(e, TurnEvent)]
        out["compute_s"] += time.perf_counter() - started
        out["audio_s"] += len(wav) / 16000
        out["step_ms"] += diarizer.stats.total_ms
        out["files"][Path(path).stem] = [(t.speaker, t.start, t.end) for t in turns]
    out["peak_rss_mb"] = _peak_rss_mb()
    out["sys"] = {"onnxruntime_threads": 1}
    return out


def run_long(models_dir: str, variant: str, files: list[str], minutes: float) -> dict:
    """In a fresh process: one stream of ``minutes`` built by cycling the files; RSS over time."""
    from edged.audio import read_audio
    from edged.hyperparams import PipelineParams
    from edged.models import load_models
    from edged.pipeline import StreamingDiarizer

    models = load_models(models_dir, variant, threads=1)
    audio = np.concatenate([read_audio(p) for p in files])
    diarizer = StreamingDiarizer(models, PipelineParams())
    total = int(minutes * 60 * 16000)
    fed, samples, turns = 0, [], 0
    started = time.perf_counter()
    while fed < total:
        piece = audio[: min(len(audio), total - fed)]
        for i in range(0, len(piece), 8000):
            turns += len(diarizer.push(piece[i : i + 8000]))
        fed += len(piece)
        samples.append((fed / 16000 / 60, _rss_mb()))
    speakers = diarizer.clustering.num_speakers  # flush() resets the clustering
    turns += len(diarizer.flush())
    return {"rss": samples, "events": turns, "elapsed_s": time.perf_counter() - started,
            "speakers": speakers, "audio_mb": audio.nbytes / 1e6}


def score(name: str, data: Path, hyp_files: dict) -> dict:
    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm, load_uem
    from pyannote.metrics.diarization import DiarizationErrorRate

    _, rttm, uem = DATASETS[name]
    refs = load_rttm(data / rttm)
    uems = load_uem(data / uem) if uem else {}
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    for uri, turns in hyp_files.items():
        hyp = Annotation(uri=uri)
        for i, (spk, start, end) in enumerate(turns):
            hyp[Segment(start, end), i] = spk
        metric(refs[uri], hyp, uem=uems.get(uri))
    comp = {k: sum(r[1][k] for r in metric.results_) for k in ("total", "missed detection", "false alarm", "confusion")}
    t = comp["total"]
    return {"der": 100 * abs(metric), "miss": 100 * comp["missed detection"] / t,
            "false_alarm": 100 * comp["false alarm"] / t, "confusion": 100 * comp["confusion"] / t}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=os.environ.get("EDGED_MODELS", "models/default"))
    p.add_argument("--data", type=Path, default=Path(os.environ.get("EDGED_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--variant", default="fp32,int8")
    p.add_argument("--latency", default="0.5,5")
    p.add_argument("--long-minutes", type=float, default=0.0, help="also run one stream this long (RSS flatness)")
    p.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"benchmark: error: {args.data}: data folder not found; pass --data or set EDGED_DATA", file=sys.stderr)
        return 1
    files = {name: sorted(str(f) for f in args.data.glob(pattern)) for name, (pattern, _, _) in DATASETS.items()}
    ctx = get_context("spawn")
    results = []
    print(f"{'variant':7s} {'latency':>7s} | " + " | ".join(f"{n:>24s}" for n in DATASETS)
          + " | step ms p50/p95 |   RTF | peak RSS")
    print(f"{'':7s} {'':>7s} | " + " | ".join(f"{'DER (miss/fa/conf)':>24s}" for _ in DATASETS) + " |")
    for variant in args.variant.split(","):
        for latency in (float(x) for x in args.latency.split(",")):
            row = {"variant": variant, "latency": latency, "datasets": {}}
            steps, compute, audio, rss = [], 0.0, 0.0, 0.0
            for name in DATASETS:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    out = pool.submit(run_worker, args.models, variant, latency, files[name]).result()
                row["datasets"][name] = score(name, args.data, out["files"])
                steps += out["step_ms"]
                compute += out["compute_s"]
                audio += out["audio_s"]
                rss = max(rss, out["peak_rss_mb"])
            row.update({"step_ms_p50": float(np.median(steps)), "step_ms_p95": float(np.percentile(steps, 95)),
                        "rtf": compute / audio, "peak_rss_mb": rss, "steps": len(steps)})
            results.append(row)
            cells = " | ".join(
                f"{d['der']:5.1f} ({d['miss']:4.1f}/{d['false_alarm']:3.1f}/{d['confusion']:4.1f})".rjust(24)
                for d in row["datasets"].values())
            print(f"{variant:7s} {latency:7.1f} | {cells} | {row['step_ms_p50']:6.1f} / {row['step_ms_p95']:5.1f} | "
                  f"{row['rtf']:.3f} | {rss:5.0f} MB", flush=True)
    report = {"models": str(args.models), "results": results}
    if args.long_minutes > 0:
        every = sorted(f for fs in files.values() for f in fs)
        variant = args.variant.split(",")[-1]
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            long = pool.submit(run_long, args.models, variant, every, args.long_minutes).result()
        rss = long["rss"]
        first = next((r for m, r in rss if m >= min(5.0, args.long_minutes / 2)), rss[0][1])
        print(f"long stream ({variant}, {args.long_minutes:g} min, as fast as possible): RSS {first:.0f} MB after "
              f"{min(5.0, args.long_minutes / 2):g} min -> {rss[-1][1]:.0f} MB at the end "
              f"(growth {rss[-1][1] - first:+.1f} MB; includes the {long['audio_mb']:.0f} MB source audio), "
              f"{long['elapsed_s']:.0f} s, {long['speakers']} speakers")
        report["long_stream"] = long
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
