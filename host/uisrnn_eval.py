"""Figures for the UIS-RNN back-end of a bundle: parity of the offline decoder with the reference
``uisrnn`` predict, online agreement vs lag, DER next to incremental clustering, and decoder time
per step (host only; the edge code paths are the daemon's own).

    python -m edged_host.uisrnn_eval --models BUNDLE --output DIR \\
        [--data ../shared/data] [--lags 0,1,2,4,8,16,32] [--beam 10] [--cache-dir DIR]

Evaluation data (never trained on by ``edged-export uisrnn`` as documented): AMI ``dev00``,
``dev01`` (scored inside their UEM), ``sample`` and ``falcon``. Parity, agreement vs lag and
decoder speed use the sequences of these recordings plus the bundle's training recordings and
conversations (decoding, not accuracy). Writes ``uisrnn_eval.json`` and prints tables.
"""

from __future__ import annotations

import edged  # noqa: F401  (first: one BLAS thread)

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edged.diarize.params import PipelineParams

EVAL = {  # uri -> (folder, reference, uem)
    "dev00": ("ami-debug", "ami-debug/reference.rttm", "ami-debug/reference.uem"),
    "dev01": ("ami-debug", "ami-debug/reference.rttm", "ami-debug/reference.uem"),
    "sample": ("sample", "sample/sample.rttm", None),
    "falcon": ("falcon", "falcon/falcon.rttm", None),
}
GROUPS = {"dev00": "ami-dev", "dev01": "ami-dev", "sample": "sample", "falcon": "falcon"}


def steps_of(seq, scale: float) -> list[np.ndarray]:
    """A sequence's observations grouped by pipeline step (empty steps included), scaled."""
    if not len(seq.steps):
        return []
    out = [np.zeros((0, seq.embeddings.shape[1])) for _ in range(int(seq.steps.max()) + 1)]
    for step in np.unique(seq.steps):
        out[step] = seq.embeddings[seq.steps == step].astype(np.float64) * scale
    return out


def decode_online(decoder, steps: Sequence[np.ndarray]) -> np.ndarray:
    decoder.reset()
    labels = [lab for obs in steps for _, lab in decoder.push_step(obs)]
    labels += [lab for _, lab in decoder.finish()]
    decoder.reset()
    return np.concatenate(labels) if labels else np.zeros(0, np.int64)


def matched_agreement(a: np.ndarray, b: np.ndarray) -> int:
    """Observations on which two labelings agree under the best one-to-one renaming."""
    from scipy.optimize import linear_sum_assignment

    if not len(a):
        return 0
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    rows, cols = linear_sum_assignment(-table)
    return int(table[rows, cols].sum())


def agreement_vs_lag(network, sequences, lags: Sequence[int], beam: int) -> list[dict[str, Any]]:
    """Online (fixed lag) vs offline labels, two ways: one observation per step (the decoder as
    the reference sees a sequence) and the pipeline's steps (several observations per step)."""
    from edged.diarize.uisrnn import UISRNNDecoder

    rows = []
    modes = {
        "observation": [[x[None] for x in s.embeddings.astype(np.float64) * network.input_scale] for s in sequences],
        "pipeline": [steps_of(s, network.input_scale) for s in sequences],
    }
    offline = {m: [decode_online(UISRNNDecoder(network, beam, None, 20), st) for st in seqs]
               for m, seqs in modes.items()}
    total = sum(len(s.labels) for s in sequences)
    for lag in lags:
        row: dict[str, Any] = {"lag": lag}
        for mode, seqs in modes.items():
            decoder = UISRNNDecoder(network, beam, lag, 20)
            same = exact = 0
            for st, ref in zip(seqs, offline[mode]):
                got = decode_online(decoder, st)
                same += matched_agreement(got, ref)
                exact += int(np.array_equal(got, ref))
            row[mode] = {"agreement": same / total, "identical_sequences": exact, "sequences": len(seqs)}
        rows.append(row)
    return rows


def run_file(models, path: Path, params: PipelineParams) -> tuple[list[tuple[str, float, float]], list[float], list[float]]:
    """The daemon's pipeline over one file in 100 ms blocks: turns, per-step clustering and total ms."""
    from edged.diarize.events import TurnEvent
    from edged.diarize.pipeline import StreamingDiarizer
    from edged.diarize.stream import diarize_source
    from edged.sources.file import FileSource

    diarizer = StreamingDiarizer(models, params)
    diarizer.stats.keep = sys.maxsize
    events = diarize_source(FileSource(path, models.sample_rate), diarizer)
    turns = [(e.speaker, e.start, e.end) for e in events if isinstance(e, TurnEvent)]
    return turns, list(diarizer.stats.parts_ms["clustering"]), list(diarizer.stats.total_ms)


def der_table(models, dataset, configs: dict[str, PipelineParams]) -> list[dict[str, Any]]:
    from edged_host.scoring import ErrorRates, annotation_from_turns, score_file

    rows = []
    for name, params in configs.items():
        per_file, clustering_ms, step_ms = {}, [], []
        for uri, path in sorted(dataset.audio.items()):
            turns, c_ms, s_ms = run_file(models, path, params)
            per_file[uri] = score_file(dataset.items[uri], annotation_from_turns(uri, turns))
            clustering_ms += c_ms
            step_ms += s_ms
        row: dict[str, Any] = {"config": name, "clustering": params.clustering, "latency": params.latency,
                               "lag": params.uisrnn_lag if params.clustering == "uisrnn" else 0}
        row["output_delay_s"] = params.latency + row["lag"] * params.step
        for group in sorted(set(GROUPS.values())):
            r = ErrorRates.total(per_file[u] for u in per_file if GROUPS[u] == group)
            row[group] = {"der": r.der, "miss": r.miss, "false_alarm": r.false_alarm, "confusion": r.confusion}
        r = ErrorRates.total(per_file.values())
        row["all"] = {"der": r.der, "miss": r.miss, "false_alarm": r.false_alarm, "confusion": r.confusion}
        row["clustering_ms_p50"], row["clustering_ms_p95"] = (float(v) for v in np.percentile(clustering_ms, [50, 95]))
        row["step_ms_p50"] = float(np.median(step_ms))
        rows.append(row)
    return rows


def decoder_speed(network, sequences, beam: int, minutes: float, max_speakers: int = 20, lag: int = 4,
                  seed: int = 0) -> dict[str, Any]:
    """Time per pipeline step of the decoder alone over one long stream: the pipeline-step
    sequences one after another, each under a fresh random rotation (so new speakers keep
    coming until ``max_speakers``)."""
    from edged.diarize.uisrnn import UISRNNDecoder
    from edged_export.uisrnn import random_rotation

    rng = np.random.default_rng(seed)
    decoder = UISRNNDecoder(network, beam, lag, max_speakers)
    total = int(minutes * 60 / PipelineParams().step)
    times, observations, most_hyp = [], 0, 0
    pieces = [steps_of(s, network.input_scale) for s in sequences]
    while len(times) < total:
        for steps in pieces:
            q = random_rotation(network.dim, rng)
            for obs in steps:
                obs = obs @ q
                start = time.perf_counter()
                decoder.push_step(obs)
                times.append(1e3 * (time.perf_counter() - start))
                observations += len(obs)
                most_hyp = max(most_hyp, decoder.hypotheses)
                if len(times) >= total:
                    break
            if len(times) >= total:
                break
    t = np.asarray(times)
    first, last = np.median(t[: len(t) // 10]), np.median(t[-len(t) // 10 :])
    return {"beam": beam, "lag": lag, "max_speakers": max_speakers, "steps": len(t), "observations": observations,
            "stream_minutes": minutes, "ms_p50": float(np.median(t)), "ms_p95": float(np.percentile(t, 95)),
            "ms_p99": float(np.percentile(t, 99)), "ms_max": float(t.max()),
            "ms_p50_first_tenth": float(first), "ms_p50_last_tenth": float(last),
            "speakers": decoder.num_speakers, "most_hypotheses": most_hyp}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, required=True, help="bundle with a clustering.uisrnn section")
    p.add_argument("--variant", default="int8")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("EDGED_DATA", "../shared/data")))
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--lags", default="0,1,2,4,8,16,32")
    p.add_argument("--der-lags", default="0,4,10", help="uisrnn_lag values of the DER table")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--speed-minutes", type=float, default=60.0)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--parts", default="parity,agreement,der,speed", help="figures to make (comma-separated)")
    args = p.parse_args(argv)

    from edged.models.blocks import load_models
    from edged.diarize.uisrnn import UISRNNNetwork
    from edged_host.inputs import load_dataset

    from . import uisrnn_data as data

    models = load_models(args.models, args.variant, threads=1)
    if models.bundle.uisrnn is None:
        print(f"uisrnn_eval: error: {args.models} has no clustering.uisrnn section; run edged-export uisrnn first",
              file=sys.stderr)
        return 1
    network = UISRNNNetwork(models.bundle.uisrnn)
    d = args.data
    audio = [d / EVAL[u][0] / f"{u}.wav" for u in EVAL]
    refs = sorted({d / r for _, r, _ in EVAL.values()})
    dataset = load_dataset(audio, refs, [d / "ami-debug/reference.uem"])
    params = PipelineParams()
    cache = None if args.cache_dir is None else args.cache_dir / "uisrnn-sequences"
    sequences = data.recordings(models, audio, refs, params, cache)
    training = models.bundle.manifest["clustering"]["uisrnn"].get("training", {})
    report: dict[str, Any] = {"models": str(args.models), "training": training,
                              "evaluation": sorted(EVAL), "beam": args.beam}

    train_names = {s["name"] for s in training.get("sequences", [])}
    extra = []
    ami = sorted(n for n in train_names if not n.startswith("synth"))
    if ami:
        extra += data.recordings(models, [d / "ami-debug" / f"{n}.wav" for n in ami],
                                 [d / "ami-debug/reference.rttm"], params, cache)
    conv = training.get("conversations")
    if conv:
        extra += data.conversations(models, Path(conv["source"]), conv["count"], params, conv["duration"],
                                    seed=conv["seed"], cache=cache)
    every = sequences + extra
    parts = set(args.parts.split(","))
    if "parity" in parts:
        from .uisrnn import decoder_parity, load_reference

        model = load_reference(args.models)
        seqs = [s.embeddings.astype(np.float64) * network.input_scale for s in every if len(s.labels) >= 2]
        started = time.perf_counter()
        report["parity"] = decoder_parity(model, network, seqs, args.beam)
        report["parity"]["seconds"] = round(time.perf_counter() - started, 1)
        q = report["parity"]
        print(f"parity, offline decoder vs uisrnn.UISRNN.predict (test_iteration=1, look_ahead=1, beam {q['beam']}): "
              f"{q['identical_up_to_renaming']} / {q['sequences']} sequences identical up to renaming "
              f"({q['observations']} observations, whole sequences; mismatched: {q['mismatched'] or 'none'})\n")
    lags = [int(x) for x in args.lags.split(",")]
    if "agreement" in parts:
        _agreement(report, network, every, lags, args.beam)
    if "der" in parts:
        _der(report, models, dataset, args)
    if "speed" in parts:
        _speed(report, network, every, args)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "uisrnn_eval.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"\nreport: {args.output / 'uisrnn_eval.json'}")
    return 0


def _agreement(report, network, every, lags, beam) -> None:
    report["agreement"] = agreement_vs_lag(network, every, lags, beam)
    report["agreement_sequences"] = {"count": len(every), "observations": int(sum(len(s.labels) for s in every))}
    print(f"online vs offline labels ({len(every)} sequences, {report['agreement_sequences']['observations']} observations, beam {beam})")
    print(" lag (steps) | per-observation steps: agree / identical seq | pipeline steps: agree / identical seq")
    for row in report["agreement"]:
        o, q = row["observation"], row["pipeline"]
        print(f" {row['lag']:11d} | {100 * o['agreement']:6.2f}% / {o['identical_sequences']:3d} of {o['sequences']:<3d}"
              f"              | {100 * q['agreement']:6.2f}% / {q['identical_sequences']:3d} of {q['sequences']}")


def _der(report, models, dataset, args) -> None:
    base = PipelineParams()
    configs = {"incremental": base}
    for lag in [int(x) for x in args.der_lags.split(",")]:
        configs[f"uisrnn lag {lag}"] = replace(base, clustering="uisrnn", uisrnn_lag=lag, uisrnn_beam=args.beam)
    report["der"] = der_table(models, dataset, configs)
    print("\nDER % (miss / false alarm / confusion), int8, latency 5 s")
    print(f" {'config':16s} | delay | {'ami-dev':>22s} | {'sample':>22s} | {'falcon':>22s} | all   | clustering ms p50/p95")
    for row in report["der"]:
        cells = " | ".join(
            f"{row[g]['der']:5.1f} ({row[g]['miss']:4.1f}/{row[g]['false_alarm']:3.1f}/{row[g]['confusion']:4.1f})".rjust(22)
            for g in ("ami-dev", "sample", "falcon"))
        print(f" {row['config']:16s} | {row['output_delay_s']:4.1f}s | {cells} | {row['all']['der']:5.1f} | "
              f"{row['clustering_ms_p50']:.2f} / {row['clustering_ms_p95']:.2f}")


def _speed(report, network, every, args) -> None:
    report["speed"] = decoder_speed(network, every, args.beam, args.speed_minutes)
    s = report["speed"]
    print(f"\ndecoder alone, beam {s['beam']}, lag {s['lag']}, {s['stream_minutes']:g} min stream ({s['steps']} steps, "
          f"{s['observations']} observations, {s['speakers']} speakers): {s['ms_p50']:.2f} ms/step median, "
          f"p95 {s['ms_p95']:.2f}, p99 {s['ms_p99']:.2f}, max {s['ms_max']:.1f}; median first/last tenth "
          f"{s['ms_p50_first_tenth']:.2f}/{s['ms_p50_last_tenth']:.2f} ms; at most {s['most_hypotheses']} hypotheses")


if __name__ == "__main__":
    sys.exit(main())
