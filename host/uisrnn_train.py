"""``edged-export uisrnn``: build training sequences with the bundle's own models, train UIS-RNN,
export it and add it to the bundle (the training and export steps are ``edged_export.uisrnn``)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from edged.diarize.params import PipelineParams
from edged.errors import EdgedError
from edged_export.errors import ExportError
from edged_export.uisrnn import ONNX_NAME, TrainOptions, UISRNNExport, run

from .uisrnn_data import LabelledSequence


def build_sequences(job: UISRNNExport) -> list[LabelledSequence]:
    """Training sequences from the recordings and synthesized conversations, with the bundle's models."""
    from edged.models.blocks import load_models

    from . import uisrnn_data as data

    models = load_models(job.out, job.variant, threads=1)
    params = PipelineParams()
    cache = None if job.cache_dir is None else job.cache_dir / "uisrnn-sequences"
    sequences: list[LabelledSequence] = []
    if job.train:
        sequences += data.recordings(models, job.train, job.reference, params, cache)
    if job.conversations is not None and job.conversation_count > 0:
        sequences += data.conversations(models, job.conversations, job.conversation_count, params,
                                        job.conversation_duration, seed=job.conversation_seed, cache=cache)
    if not sequences:
        raise ExportError("nothing to train on; pass --train AUDIO --reference RTTM and/or --conversations DIR")
    return sequences


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions()
    p = argparse.ArgumentParser(
        prog="edged-export uisrnn",
        description="Train UIS-RNN on embedding sequences made by the bundle's own models (recordings with "
                    "RTTM and/or conversations synthesized from single-speaker audio), export it as ONNX and "
                    "add it to the bundle (manifest section clustering.uisrnn).",
        epilog="example: edged-export uisrnn --out models/default --train data/ami-debug/trn*.wav "
               "--reference data/ami-debug/reference.rttm --conversations data/librispeech --conversation-count 24")
    p.add_argument("--out", type=Path, required=True, help="existing bundle (made by edged-export) to add the model to")
    p.add_argument("--train", type=Path, nargs="+", default=[], metavar="AUDIO_OR_DIR",
                   help="training recordings (uri = file name without extension)")
    p.add_argument("--reference", type=Path, nargs="+", default=[], metavar="RTTM",
                   help="reference RTTM file(s) of the training recordings")
    p.add_argument("--conversations", type=Path, default=None, metavar="DIR",
                   help="single-speaker recordings (manifest.tsv or one folder per speaker) to synthesize conversations from")
    p.add_argument("--conversation-count", type=int, default=24, help="synthesized conversations (default 24)")
    p.add_argument("--conversation-duration", type=float, default=60.0, help="seconds each (default 60)")
    p.add_argument("--conversation-seed", type=int, default=0, help="seed of the first conversation (default 0)")
    p.add_argument("--variant", choices=("fp32", "int8"), default="int8",
                   help="model variant whose embeddings train it: the one the daemon runs (default int8)")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"training iterations (default {d.iterations})")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help=f"GRU size (default {d.hidden_size})")
    p.add_argument("--depth", type=int, default=d.depth, help=f"GRU layers (default {d.depth})")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help=f"Adam step (default {d.learning_rate})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per iteration (default {d.batch_size})")
    p.add_argument("--crp-alpha", type=float, default=d.crp_alpha, help=f"CRP concentration (default {d.crp_alpha})")
    p.add_argument("--sigma-alpha", type=float, default=d.sigma_alpha, help="inverse-gamma prior shape of sigma2")
    p.add_argument("--sigma-beta", type=float, default=d.sigma_beta, help="inverse-gamma prior scale of sigma2")
    p.add_argument("--rotations", type=int, default=d.rotations,
                   help=f"randomly rotated copies of each training sequence (default {d.rotations})")
    p.add_argument("--min-purity", type=float, default=d.min_purity,
                   help=f"train only on observations this pure (default {d.min_purity})")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    p.add_argument("--parity-sequences", type=int, default=5, help="sequences checked against uisrnn predict (default 5)")
    p.add_argument("--parity-length", type=int, default=60,
                   help="observations of each parity sequence (its first ones; default 60)")
    p.add_argument("--beam", type=int, default=10, help="beam size of the parity check (default 10)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache of extracted sequences (default: none)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="edged-export: %(message)s")
    warnings.filterwarnings("ignore")  # torch GRU / ONNX exporter notices; errors still raise
    if args.train and not args.reference:
        print("edged-export uisrnn: error: --train needs --reference RTTM for its recordings", file=sys.stderr)
        return 2
    options = TrainOptions(hidden_size=args.hidden_size, depth=args.depth, iterations=args.iterations,
                           learning_rate=args.learning_rate, batch_size=args.batch_size, crp_alpha=args.crp_alpha,
                           sigma_alpha=args.sigma_alpha, sigma_beta=args.sigma_beta, min_purity=args.min_purity,
                           rotations=args.rotations, seed=args.seed)
    job = UISRNNExport(out=args.out, train=args.train, reference=args.reference, conversations=args.conversations,
                       conversation_count=args.conversation_count if args.conversations else 0,
                       conversation_duration=args.conversation_duration, conversation_seed=args.conversation_seed,
                       variant=args.variant, options=options, parity_sequences=args.parity_sequences,
                       parity_max_length=args.parity_length,
                       beam=args.beam, opset=args.opset, cache_dir=args.cache_dir)
    try:
        entry = run(job, build_sequences)
    except EdgedError as exc:
        print(f"edged-export uisrnn: error: {exc}", file=sys.stderr)
        return 1
    t = entry["training"]
    p = entry["parity"]
    print(f"bundle: {args.out}  clustering.uisrnn: {ONNX_NAME} {entry['bytes'] / 1e6:.2f} MB sha256 {entry['sha256'][:12]}")
    print(f"  trained on {t['observations']} observations of {len(t['sequences'])} sequences ({t['embedding_variant']} "
          f"embeddings), hidden {entry['hidden_size']}x{entry['depth']}, transition_bias {entry['transition_bias']:.3f}, "
          f"crp_alpha {entry['crp_alpha']:g}, mean sigma2 {np.mean(entry['sigma2']):.4g}")
    print(f"  parity: ONNX step max|diff| {p['onnx_max_abs_diff']:.1e}; decoder = uisrnn predict on "
          f"{p['identical_up_to_renaming']}/{p['sequences']} sequences ({p['observations']} observations, beam {p['beam']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
