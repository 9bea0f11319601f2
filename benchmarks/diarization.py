"""Accuracy, speed and memory of the streaming pipeline on the shared recordings.

    .venv/bin/python benchmarks/diarization.py --models models/default \
        [--variant fp32,int8] [--latency 0.5,5] [--jobs 1] [--output bench-out] [--long-minutes 60] \
        [--extra DIR ...]

A thin wrapper over ``edged-bench`` (package ``edged_host``): the same as

    edged-bench DATA/ami-debug DATA/sample DATA/falcon \
        --reference DATA/ami-debug/reference.rttm DATA/sample/sample.rttm DATA/falcon/falcon.rttm \
        --uem DATA/ami-debug/reference.uem --models ... --variant ... --latency ... --output ...

printed as one row per (variant, latency) with the DER of each data set. ``--extra`` adds folders
holding ``reference.rttm`` (and optionally ``reference.uem``), e.g. held-out conversations from
``edged-conversations ../shared/data/librispeech --output conv3 --count 12 --speakers 3 --seed 100``,
each as one more column. ``--long-minutes`` also
feeds one long stream built from the recordings as fast as possible, in a fresh edge-only worker
process, and reports RSS along the way (flat memory over hours).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import edged  # noqa: F401  (first: pins the BLAS pools to one thread before numpy loads)
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "ami-debug": ("ami-debug", "ami-debug/reference.rttm", "ami-debug/reference.uem"),
    "sample": ("sample", "sample/sample.rttm", None),
    "falcon": ("falcon", "falcon/falcon.rttm", None),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def run_long(models_dir: str, variant: str, files: list[str], minutes: float) -> dict:
    """In a fresh process: one stream of ``minutes`` built by cycling the files; RSS over time."""
    from edged.sources.file import read_audio
    from edged.diarize.params import PipelineParams
    from edged.models.blocks import load_models
    from edged.diarize.pipeline import StreamingDiarizer

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=os.environ.get("EDGED_MODELS", "models/default"))
    p.add_argument("--data", type=Path, default=Path(os.environ.get("EDGED_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--variant", default="fp32,int8")
    p.add_argument("--latency", default="0.5,5")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1: clean step times)")
    p.add_argument("--output", type=Path, default=Path("bench-out"), help="edged-bench output folder")
    p.add_argument("--long-minutes", type=float, default=0.0, help="also run one stream this long (RSS flatness)")
    p.add_argument("--extra", type=Path, nargs="+", default=[], metavar="DIR",
                   help="more data set folders, each with reference.rttm (and optionally reference.uem)")
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"benchmark: error: {args.data}: data folder not found; pass --data or set EDGED_DATA", file=sys.stderr)
        return 1
    from edged.errors import EdgedError
    from edged_host.bench import run_bench
    from edged_host.inputs import load_dataset

    d = args.data
    sets = {name: (d / a, d / r, d / u if u else None) for name, (a, r, u) in DATASETS.items()}
    for extra in args.extra:  # a missing reference.rttm is named by load_dataset
        uem = extra / "reference.uem"
        sets[extra.name] = (extra, extra / "reference.rttm", uem if uem.is_file() else None)
    try:
        dataset = load_dataset([a for a, _, _ in sets.values()], [r for _, r, _ in sets.values()],
                               [u for _, _, u in sets.values() if u])
        report = run_bench(dataset, args.models, args.output, variants=args.variant.split(","),
                           latencies=[float(x) for x in args.latency.split(",")], jobs=args.jobs)
    except EdgedError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 1
    print(f"{'variant':7s} {'latency':>7s} | " + " | ".join(f"{n:>24s}" for n in sets)
          + " | step ms p50/p95 |   RTF | peak RSS")
    print(f"{'':7s} {'':>7s} | " + " | ".join(f"{'DER (miss/fa/conf)':>24s}" for _ in sets) + " |")
    for row in report["runs"]:
        cells = " | ".join(
            f"{g['der']:5.1f} ({g['miss']:4.1f}/{g['false_alarm']:3.1f}/{g['confusion']:4.1f})".rjust(24)
            for g in (row["groups"][n] for n in sets))
        print(f"{row['variant']:7s} {row['latency']:7.1f} | {cells} | {row['step_ms_p50']:6.1f} / {row['step_ms_p95']:5.1f} | "
              f"{row['rtf']:.3f} | {row['peak_rss_mb']:5.0f} MB", flush=True)
    print(f"report: {args.output / 'report.md'}")
    if args.long_minutes > 0:
        every = sorted(str(p) for p in dataset.audio.values())
        variant = args.variant.split(",")[-1]
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            long = pool.submit(run_long, args.models, variant, every, args.long_minutes).result()
        rss = long["rss"]
        first = next((r for m, r in rss if m >= min(5.0, args.long_minutes / 2)), rss[0][1])
        print(f"long stream ({variant}, {args.long_minutes:g} min, as fast as possible): RSS {first:.0f} MB after "
              f"{min(5.0, args.long_minutes / 2):g} min -> {rss[-1][1]:.0f} MB at the end "
              f"(growth {rss[-1][1] - first:+.1f} MB; includes the {long['audio_mb']:.0f} MB source audio), "
              f"{long['elapsed_s']:.0f} s, {long['speakers']} speakers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
