"""``edged-cvtune``: grouped k-fold cross-validated tuning per latency on the edged-devset dev set.

  edged-cvtune extract  --devset DEV --models models/default --variant int8 --cache CACHE
  edged-cvtune tune     --devset DEV --cache CACHE --variant int8 --trials 60 --seed 0 --output OUT
  edged-cvtune evaluate --devset DEV --cache CACHE --variant fp32 --cv OUT/cv-int8.json --output OUT
  edged-cvtune uisrnn   --devset DEV --cache CACHE --models models/default --cv OUT/cv-int8.json --output UOUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from edged.errors import EdgedError


def _latencies(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated seconds, e.g. 0.5,1,2,5") from None


def _lags(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated whole steps, e.g. 0,2") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged-cvtune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("extract", "tune", "evaluate", "uisrnn"):
        s = sub.add_parser(name)
        s.add_argument("--devset", type=Path, required=True, help="edged-devset output folder (devset.json)")
        s.add_argument("--cache", type=Path, required=True, help="feature cache folder (outside the repository)")
        s.add_argument("--variant", choices=("int8", "fp32"), default="int8")
        default = [1.0, 5.0] if name == "uisrnn" else [0.5, 1.0, 2.0, 5.0]
        s.add_argument("--latency", type=_latencies, default=default,
                       help=f"latencies, s (default {','.join(f'{x:g}' for x in default)})")
        if name in ("extract", "uisrnn"):
            s.add_argument("--models", type=Path, required=True, help="model bundle folder (of the cache)")
        if name == "tune":
            s.add_argument("--trials", type=int, default=60, help="optuna trials per study (default 60)")
            s.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
        if name in ("tune", "evaluate"):
            s.add_argument("--output", type=Path, required=True, help="folder for cv-VARIANT.json and presets.json")
        if name in ("evaluate", "uisrnn"):
            s.add_argument("--cv", type=Path, required=True, help="cv-VARIANT.json of a tune run")
        if name == "uisrnn":
            s.add_argument("--output", type=Path, required=True,
                           help="folder for bundle-foldK (the per-fold bundles) and uisrnn-VARIANT.json")
            s.add_argument("--lag", type=_lags, default=[0], help="UIS-RNN lags, steps (default 0)")
            s.add_argument("--retrain", action="store_true",
                           help="train again even where a fold's bundle was trained on the same data")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        from . import cvtune

        if args.command == "extract":
            cvtune.extract_all(args.devset, args.models, args.variant, args.cache, args.latency, log)
        elif args.command == "tune":
            cvtune.cross_validate(args.devset, args.cache, args.output, args.variant, args.latency, args.trials,
                                  args.seed, log=log)
            print(f"presets: {args.output / 'presets.json'}; details: {args.output / f'cv-{args.variant}.json'}")
        elif args.command == "uisrnn":
            from . import cvuisrnn

            out = cvuisrnn.compare(args.devset, args.cache, args.models, args.cv, args.output, args.variant,
                                   args.latency, args.lag, retrain=args.retrain, log=log)
            print(cvuisrnn.table(out))
            print("training: " + "; ".join(f"fold {f['fold']} {f['observations']} observations {f['train_seconds']:.0f} s"
                                             for f in out["folds"]))
            print(f"written {args.output / f'uisrnn-{args.variant}.json'}")
        else:
            out = cvtune.evaluate_variant(args.devset, args.cache, args.cv, args.variant, log)
            path = args.output / f"eval-{args.variant}.json"
            path.write_text(json.dumps(out, indent=1, default=cvtune._default) + "\n", encoding="utf-8")
            print(f"written {path}")
    except EdgedError as exc:
        print(f"edged-cvtune: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
