"""``edged-cvtune``: grouped k-fold cross-validated tuning per latency on the edged-devset dev set.

  edged-cvtune extract  --devset DEV --models models/default --variant int8 --cache CACHE
  edged-cvtune tune     --devset DEV --cache CACHE --variant int8 --trials 60 --seed 0 --output OUT
  edged-cvtune evaluate --devset DEV --cache CACHE --variant fp32 --cv OUT/cv-int8.json --output OUT
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged-cvtune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("extract", "tune", "evaluate"):
        s = sub.add_parser(name)
        s.add_argument("--devset", type=Path, required=True, help="edged-devset output folder (devset.json)")
        s.add_argument("--cache", type=Path, required=True, help="feature cache folder (outside the repository)")
        s.add_argument("--variant", choices=("int8", "fp32"), default="int8")
        s.add_argument("--latency", type=_latencies, default=[0.5, 1.0, 2.0, 5.0], help="latencies, s (default 0.5,1,2,5)")
        if name == "extract":
            s.add_argument("--models", type=Path, required=True, help="model bundle folder")
        if name == "tune":
            s.add_argument("--trials", type=int, default=60, help="optuna trials per study (default 60)")
            s.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
        if name in ("tune", "evaluate"):
            s.add_argument("--output", type=Path, required=True, help="folder for cv-VARIANT.json and presets.json")
        if name == "evaluate":
            s.add_argument("--cv", type=Path, required=True, help="cv-VARIANT.json of a tune run")
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
