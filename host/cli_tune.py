"""``edged-tune``: optuna search of the pipeline's hyper-parameters on your recordings."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from edged.errors import EdgedError
from edged.diarize.params import PipelineParams

from .cli_bench import add_data_arguments, base_params

EPILOG = """\
The objective is the total DER of the edged-bench code over the inputs. The first trial of a new
study is the base parameters. The study is kept in --storage (default sqlite OUTPUT/study.db):
rerun the same command to continue it (each run adds --trials trials). Workers on several
machines share one study through PostgreSQL:

  edged-tune data/ami-debug/trn*.wav --reference data/ami-debug/reference.rttm \\
      --uem data/ami-debug/reference.uem --models models/default --trials 30 \\
      --storage postgresql://edged:secret@db.example/edged --study room1 --output tune-out

Writes OUTPUT/best-pipeline.yaml (a pipeline: section for the edged config) and OUTPUT/tune.json.
"""


def build_parser() -> argparse.ArgumentParser:
    tunable = ", ".join(PipelineParams.tunable_bounds())
    p = argparse.ArgumentParser(
        prog="edged-tune", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Tune the streaming pipeline's hyper-parameters (optuna TPE) to minimise DER on your recordings.")
    add_data_arguments(p)
    p.add_argument("--trials", type=int, required=True, help="trials this worker adds to the study (0: only report)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="optuna storage URL, e.g. postgresql://user:password@host/db (default: sqlite:///OUTPUT/study.db)")
    p.add_argument("--study", default="edged", help="study name; workers with the same name share it (default edged)")
    p.add_argument("--params", default=None, metavar="NAMES",
                   help=f"comma-separated parameters to tune (default tau_active,rho_update,delta_new; any of {tunable})")
    p.add_argument("--variant", choices=("fp32", "int8"), default="int8", help="model precision (default int8)")
    p.add_argument("--latency", type=float, default=None, help="latency in seconds to tune at (default: the base's, 5)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (reproducible single-worker runs)")
    p.add_argument("--write-bundle", action="store_true",
                   help="write the best parameters into the bundle's manifest as its preset for --latency "
                        "(edged diarize, edged run and edged-bench then default to it)")
    p.add_argument("--eval", nargs="+", action="extend", default=[], metavar="WAV_OR_DIR",
                   help="held-out recordings: report DER before/after on them too")
    p.add_argument("--eval-reference", nargs="+", action="extend", type=Path, default=[], metavar="RTTM_OR_DIR",
                   help="references of the --eval recordings (default: --reference)")
    p.add_argument("--eval-uem", nargs="+", action="extend", type=Path, default=[], metavar="UEM_OR_DIR",
                   help="UEM of the --eval recordings (default: --uem)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="edged-tune: %(levelname)s: %(message)s")
    try:
        from .inputs import load_dataset
        from .scoring import ScoreOptions
        from .tune import DEFAULT_SPACE, TuneInterrupted, tune

        base = base_params(args, args.latency)
        dataset = load_dataset(args.inputs, args.reference, args.uem)
        evaluation = None
        if args.eval:
            evaluation = load_dataset(args.eval, args.eval_reference or args.reference, args.eval_uem or args.uem)
        space = [x.strip() for x in args.params.split(",") if x.strip()] if args.params else list(DEFAULT_SPACE)
        result = tune(dataset, args.models, args.output, args.trials, variant=args.variant, base=base,
                      storage=args.storage, study_name=args.study, space_names=space, jobs=args.jobs, seed=args.seed,
                      options=ScoreOptions(args.collar, args.skip_overlap), evaluation=evaluation)
    except TuneInterrupted as exc:
        print(f"edged-tune: {exc}", file=sys.stderr)
        return 130
    except EdgedError as exc:
        print(f"edged-tune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edged-tune: interrupted before the first trial; nothing was recorded", file=sys.stderr)
        return 130
    b, base_r = result.best, result.baseline
    print(f"study {result.study!r} ({result.storage}): {result.finished} finished trials, {result.ran_here} from this run")
    print(f"tuning files ({len(dataset.items)}): DER {base_r['der']:.2f}% before (base parameters) -> "
          f"{b['der']:.2f}% after (trial {b['trial']})")
    if result.evaluation:
        e = result.evaluation
        print(f"held-out files ({e['files']}): DER {e['before']['der']:.2f}% before -> {e['after']['der']:.2f}% after")
        for group, before in e["before"].get("groups", {}).items():
            print(f"  {group}: {before['der']:.2f}% -> {e['after']['groups'][group]['der']:.2f}%")
    print("best: " + ", ".join(f"{k}={v:.4g}" for k, v in b["params"].items()))
    print(f"config fragment: {args.output / 'best-pipeline.yaml'}")
    if args.write_bundle:
        from edged_export.presets import write_presets

        best = base.replace(**b["params"])
        try:
            write_presets(args.models, {best.latency: preset_values(best)},
                          f"edged-tune study {result.study!r}, {len(dataset.items)} files, DER {b['der']:.2f}% on them")
        except EdgedError as exc:
            print(f"edged-tune: error: cannot write the preset into {args.models}: {exc}", file=sys.stderr)
            return 1
        print(f"bundle {args.models}: preset for latency {best.latency:g} s written")
    return 0


def preset_values(params: PipelineParams) -> dict:
    """The values a bundle preset holds: everything but the stream geometry and the back-end."""
    geometry = {"duration", "step", "latency", "max_speakers", "clustering", "uisrnn_lag", "uisrnn_beam"}
    return {k: v for k, v in params.to_dict().items() if k not in geometry}


if __name__ == "__main__":
    sys.exit(main())
