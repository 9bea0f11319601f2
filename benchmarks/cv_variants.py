"""Variants of the embeddings scored like the presets: per fold, re-tuned on the fitting folds,
scored on the held-out fold (edged-cvtune's protocol, shorter studies).

    .venv/bin/python benchmarks/cv_variants.py --devset ../devdata/devset --cache ../devdata/cache \
        --cv ../devdata/cv/cv-int8.json --models models/default --latency 5,1 [--gamma 1] [--center]

- ``--gamma G``: overlap-aware weights with another gamma (features extracted again, into
  ``CACHE-gG``; about 7 min of one core for the dev set);
- ``--center``: the mean unit embedding of the fitting folds subtracted from every embedding
  before clustering (a per-fold vector: nothing of the held-out fold is used);
- neither: the bundle's own features, the baseline of the same protocol.

Each fold's study starts from the point ``edged-cvtune tune`` found for it (``--cv``) and runs
``--trials`` TPE trials. Prints the validation mean DER over kinds and per kind (DER / confusion).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.diarize.params import PipelineParams  # noqa: E402
from host.cvtune import LATENCIES, Evaluator, _params, cache_path, load_manifest, run_study  # noqa: E402
from host.replay import _Prepared, extract  # noqa: E402


def extract_gamma(devset: Path, models_dir: Path, cache: Path, gamma: float) -> None:
    """int8 features with ``gamma`` for every dev-set file not cached yet."""
    from edged.models.blocks import load_models
    from edged.sources.file import read_audio

    models = load_models(models_dir, "int8", threads=1)
    started = time.perf_counter()
    for f in load_manifest(devset)["files"]:
        out = cache_path(cache, "int8", f["uri"])
        if not out.is_file():
            samples = read_audio(f["audio"], models.sample_rate)
            extract(models, samples, f["uri"], LATENCIES, gamma=gamma).save(out)
            print(f"{f['uri']}: extracted, {time.perf_counter() - started:.0f} s", flush=True)


def center(ev: Evaluator, original: dict[str, np.ndarray], fit: list[str]) -> None:
    """Subtract the fitting files' mean unit embedding from every file's embeddings."""
    rows = np.concatenate([original[u].reshape(-1, original[u].shape[-1]) for u in fit])
    rows = rows[np.isfinite(rows).all(axis=1)]
    mean = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(axis=0)
    for u, emb in original.items():
        ev.features[u].emb = (emb - mean).astype(np.float32)
        ev.prepared[u] = _Prepared(ev.features[u])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devset", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True, help="edged-cvtune's feature cache (gamma 3)")
    ap.add_argument("--cv", type=Path, required=True, help="cv-int8.json of edged-cvtune tune")
    ap.add_argument("--models", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--latency", default="5,1")
    ap.add_argument("--gamma", type=float, default=3.0)
    ap.add_argument("--center", action="store_true")
    ap.add_argument("--trials", type=int, default=60)
    args = ap.parse_args()

    cache = args.cache
    if args.gamma != 3.0:
        cache = args.cache.with_name(f"{args.cache.name}-g{args.gamma:g}")
        extract_gamma(args.devset, args.models, cache, args.gamma)
    ev = Evaluator(args.devset, cache, "int8")
    cv = json.loads(args.cv.read_text(encoding="utf-8"))
    base = PipelineParams.preset("ami").replace(gamma=args.gamma)
    original = {u: f.emb.copy() for u, f in ev.features.items()}
    for latency in (float(x) for x in args.latency.split(",")):
        hyps: dict = {}
        for fold in range(ev.k):
            fit, held = ev.uris([f for f in range(ev.k) if f != fold]), ev.uris([fold])
            if args.center:
                center(ev, original, fit)
            start = cv["latencies"][f"{latency:g}"]["folds"][fold]["search"]
            best = run_study(ev, fit, base, latency, args.trials, 1000 * fold + int(10 * latency),
                             lambda line: print(line, flush=True), f"latency {latency:g} fold {fold}", [start])
            hyps.update(ev.hypotheses(_params(base.replace(latency=latency), best["params"]), held))
        report = ev.report(hyps)
        kinds = " ".join(f"{k} {v['der']:.1f}/{v['confusion']:.1f}" for k, v in report["kinds"].items())
        print(f"gamma {args.gamma:g}{', centered' if args.center else ''}, latency {latency:g} s: validation mean "
              f"DER {report['mean']['der']:.2f} (total {report['total']['der']:.2f}); per kind DER/confusion: {kinds}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
