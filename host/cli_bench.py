"""``edged-bench``: accuracy (DER/JER), speed and memory of a model bundle on recordings."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from edged.errors import EdgedError
from edged.diarize.params import PipelineParams
from edged.diarize.presets import CHOICES as PRESET_CHOICES

EPILOG = """\
Inputs are matched to references by uri (the audio file name without extension). A file the UEM
does not list is scored over its whole audio (noted in the report); a reference turn or UEM
region past the end of its audio, or an input without a reference, is an error.

example:
  edged-bench data/ami-debug --reference data/ami-debug/reference.rttm \\
      --uem data/ami-debug/reference.uem --models models/default \\
      --variant fp32,int8 --latency 0.5,1,2,5 --jobs 2 --output bench-out
"""


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seconds, e.g. 0.5,1,2,5") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return values


def _variants(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in ("fp32", "int8")]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown variant {', '.join(bad) or text!r}; use fp32, int8 or fp32,int8")
    return list(dict.fromkeys(values))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _collar(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0 seconds")
    return value


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Inputs, references, models and scoring options shared by edged-bench and edged-tune."""
    p.add_argument("inputs", nargs="+", metavar="WAV_OR_DIR", help="audio files, or folders of .wav/.flac/.ogg")
    p.add_argument("--reference", required=True, nargs="+", action="extend", type=Path, metavar="RTTM_OR_DIR",
                   help="reference RTTM file(s), or folders of .rttm files (UTF-8)")
    p.add_argument("--uem", nargs="+", action="extend", type=Path, default=[], metavar="UEM_OR_DIR",
                   help="scored regions (UEM); files it does not list are scored over their whole audio")
    p.add_argument("--models", type=Path, default=Path(os.environ.get("EDGED_MODELS", "models/default")),
                   help="model bundle folder (default: $EDGED_MODELS or models/default)")
    p.add_argument("--preset", choices=PRESET_CHOICES, default=None,
                   help="base hyper-parameters: bundle (default: the bundle's tuned preset for each latency) or "
                        "one of diart's (ami, dihard3, voxconverse)")
    p.add_argument("--config", type=Path, default=None,
                   help="take the base hyper-parameters from the pipeline: section of this edged YAML config")
    p.add_argument("--jobs", type=_positive, default=1, help="worker processes, one onnxruntime thread each (default 1)")
    p.add_argument("--collar", type=_collar, default=0.0, help="seconds not scored around reference boundaries (default 0)")
    p.add_argument("--skip-overlap", action="store_true", help="do not score overlapped speech (default: scored)")
    p.add_argument("--output", type=Path, required=True, help="folder for the results")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def base_params(args: argparse.Namespace, latency: float | None = None) -> PipelineParams:
    """``--preset`` (default: the bundle's tuned preset for ``latency``), with ``--config``'s
    pipeline section over it, and ``latency`` (default: the section's, else 5 s)."""
    from edged.models.bundle import load_bundle
    from edged.settings import pipeline_params, read_yaml

    section = dict(read_yaml(args.config).get("pipeline") or {}) if args.config is not None else {}
    if args.preset is not None:
        section["preset"] = args.preset
    if latency is not None:
        section["latency"] = latency
    bundle = load_bundle(args.models, variants=())
    return pipeline_params(section, None if bundle.presets is None else bundle.presets.by_latency)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edged-bench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Run the daemon's streaming pipeline over recordings and report DER (miss / false alarm / "
                    "confusion), JER, per-step compute, real-time factor and peak memory.")
    add_data_arguments(p)
    p.add_argument("--variant", type=_variants, default=["int8"], help="fp32, int8 or fp32,int8 (default int8)")
    p.add_argument("--latency", type=_floats, default=None,
                   help="comma-separated latencies in seconds, multiples of the 0.5 s step (default: the preset's, 5)")
    p.add_argument("--no-timelines", action="store_true", help="skip the per-file timeline PNGs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="edged-bench: %(levelname)s: %(message)s")
    try:
        from .bench import run_bench
        from .inputs import load_dataset
        from .scoring import ScoreOptions

        latencies = args.latency or [base_params(args).latency]
        params = {latency: base_params(args, latency) for latency in latencies}
        dataset = load_dataset(args.inputs, args.reference, args.uem)
        report = run_bench(
            dataset, args.models, args.output, variants=args.variant,
            latencies=latencies, jobs=args.jobs,
            options=ScoreOptions(args.collar, args.skip_overlap), base=params.__getitem__,
            timelines=not args.no_timelines, show_progress=not args.quiet,
        )
    except EdgedError as exc:
        print(f"edged-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edged-bench: interrupted; no report written", file=sys.stderr)
        return 130
    from .report import markdown

    print(markdown(report).split("\n## Files")[0].rstrip())
    print(f"\nreport: {args.output / 'report.md'} and report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
