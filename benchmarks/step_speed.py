"""Per-step compute of several bundles/variants, interleaved in one process (one onnxruntime thread).

    .venv/bin/python benchmarks/step_speed.py models/v2:int8 models/v3:int8 [--rounds 2]

Every recording of the shared data is streamed through ``StreamingDiarizer`` (100 ms blocks, as
capture delivers them) once per config, the configs taking turns file by file (order reversed on
every other file), so a busy neighbour slows them alike. A step is one ``push`` that ran the
models; its wall time (``perf_counter``) and its thread CPU time (``thread_time``) are recorded.
On a shared machine the wall time includes waiting for a core; the CPU time does not (it still
feels cache and memory contention), so it is close to the step's time on a core of its own.
Prints median / p95 of both per config, the real-time factor (steps' time / audio), the
pipeline's own per-part medians (wall), and each config's CPU median over the first's.
"""

from __future__ import annotations

import edged  # noqa: F401  (first: pins numpy's BLAS pools to one thread before numpy loads)

import argparse
import os
import time
from pathlib import Path

import numpy as np

from edged.sources.file import read_audio
from edged.diarize.params import PipelineParams
from edged.models.blocks import load_models
from edged.diarize.pipeline import STEPS, StreamingDiarizer

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("ami-debug", "sample", "falcon")
BLOCK_SECONDS = 0.1


def stream(models, wav: np.ndarray, params: PipelineParams) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """(wall ms, CPU ms) of every step of one recording, and the pipeline's per-part wall ms."""
    diarizer = StreamingDiarizer(models, params)
    diarizer.stats.keep = 10**9
    block = int(round(BLOCK_SECONDS * diarizer.sample_rate))
    wall, cpu = [], []
    for i in range(0, len(wav), block):
        steps, w0, c0 = diarizer.stats.steps, time.perf_counter(), time.thread_time()
        diarizer.push(wav[i : i + block])
        if diarizer.stats.steps > steps:
            wall.append(1e3 * (time.perf_counter() - w0))
            cpu.append(1e3 * (time.thread_time() - c0))
    diarizer.flush()
    return wall, cpu, diarizer.stats.parts_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", help="BUNDLE:VARIANT, e.g. models/v3:int8")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EDGED_DATA") or REPO.parent / "shared" / "data"))
    parser.add_argument("--rounds", type=int, default=1, help="passes over the data (default 1)")
    args = parser.parse_args()
    files = sorted(p for folder in FOLDERS for p in (args.data / folder).glob("*.wav"))
    if not files:
        parser.error(f"no recordings under {args.data}; set --data or EDGED_DATA to the shared data folder")
    configs = []
    for spec in args.configs:
        root, _, variant = spec.rpartition(":")
        if not root or variant not in ("int8", "fp32"):
            parser.error(f"{spec}: expected BUNDLE:int8 or BUNDLE:fp32")
        configs.append((spec, load_models(root, variant, threads=1)))
    wavs = [read_audio(p, configs[0][1].sample_rate) for p in files]
    params = PipelineParams()
    results = {spec: ([], [], {s: [] for s in STEPS}) for spec, _ in configs}
    for r in range(args.rounds):
        for i, wav in enumerate(wavs):
            for spec, models in configs if (i + r) % 2 == 0 else configs[::-1]:
                wall, cpu, parts = stream(models, wav, params)
                results[spec][0].extend(wall)
                results[spec][1].extend(cpu)
                for name in STEPS:
                    results[spec][2][name].extend(parts[name])
    print(f"{len(files)} recordings, {sum(map(len, wavs)) / 16000:.1f} s, {args.rounds} round(s), one onnxruntime thread")
    audio_s = args.rounds * sum(map(len, wavs)) / configs[0][1].sample_rate
    print("config | steps | wall ms p50 / p95 | CPU ms p50 / p95 | RTF wall / CPU | parts wall ms p50 (seg / emb / clust / aggr) | CPU p50 vs first")
    base = None
    for spec, _ in configs:
        wall, cpu, parts = (np.asarray(results[spec][0]), np.asarray(results[spec][1]), results[spec][2])
        med = float(np.median(cpu))
        base = base or med
        part_text = " / ".join(f"{np.median(parts[s]):.1f}" for s in STEPS)
        print(f"{spec} | {len(wall)} | {np.median(wall):.1f} / {np.percentile(wall, 95):.1f} | "
              f"{med:.1f} / {np.percentile(cpu, 95):.1f} | {wall.sum() / 1e3 / audio_s:.3f} / {cpu.sum() / 1e3 / audio_s:.3f} | "
              f"{part_text} | {med / base:.2f}x")


if __name__ == "__main__":
    main()
