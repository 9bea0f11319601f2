"""``edged-devset``: build the grouped k-fold tuning dev set (real sets in place + synthetic conversations)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from edged.errors import EdgedError

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edged-devset",
        description="Build the dev set for honest tuning: AMI excerpts, sample and falcon in place, plus seeded "
                    "clean, telephone-band, far-field (RIR + noise) and short conversations of the shared voices, "
                    "split into k folds so that no voice, room, noise or recording is in two folds. Writes WAV + "
                    "RTTM per conversation and OUTPUT/devset.json (kind, fold, voices, room, noise per file).")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    p.add_argument("--output", type=Path, required=True, help="folder to write into (outside the repository)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--folds", type=int, default=4, help="number of folds (default 4)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .devset import build_devset

        manifest = build_devset(args.data, args.output, args.seed, args.folds)
    except EdgedError as exc:
        print(f"edged-devset: error: {exc}", file=sys.stderr)
        return 1
    total = 0.0
    for kind, s in manifest["summary"].items():
        total += s["minutes"]
        print(f"{kind}: {s['files']} files, {s['minutes']:.1f} min, by fold {s['by_fold']}")
    print(f"total {total:.1f} min; manifest {args.output / 'devset.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
