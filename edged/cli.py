"""``edged`` command line: ``edged diarize`` runs the streaming pipeline over files or stdin."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .audio import file_blocks, paced, pcm_blocks
from .errors import EdgedError
from .events import TurnEvent, format_rttm
from .hyperparams import PRESETS, PipelineParams
from .models import load_models
from .pipeline import StreamingDiarizer

log = logging.getLogger("edged")


def _positive_threads(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description="Live speaker diarization on the edge.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diarize", help="diarize audio files (or raw PCM on stdin) with the streaming pipeline",
                       description="Writes one RTTM and one JSON-lines event log per input.")
    d.add_argument("inputs", nargs="+", metavar="FILE", help="WAV/FLAC/OGG files (any rate, any channels), or - for raw PCM on stdin")
    d.add_argument("--models", type=Path, default=Path(os.environ.get("EDGED_MODELS", "models/default")),
                   help="model bundle folder (default: $EDGED_MODELS or models/default)")
    d.add_argument("--output", type=Path, default=Path("out"), help="folder for <name>.rttm and <name>.events.jsonl (default: out)")
    d.add_argument("--variant", choices=("fp32", "int8"), default="int8", help="model precision (default int8)")
    d.add_argument("--preset", choices=sorted(PRESETS), default="ami", help="hyper-parameter preset (default ami)")
    d.add_argument("--latency", type=float, default=None, help="output latency in seconds, step..duration (default: 5)")
    d.add_argument("--threads", type=_positive_threads, default=1, help="onnxruntime intra-op threads (default 1, as on a Pi)")
    d.add_argument("--provider", action="append", default=None, metavar="NAME",
                   help="onnxruntime execution provider, repeatable, in order (default CPUExecutionProvider)")
    d.add_argument("--realtime", action="store_true", help="replay inputs at wall-clock speed, like a microphone")
    d.add_argument("--rate", type=int, default=16000, help="sample rate of raw PCM on stdin (default 16000)")
    d.add_argument("--channels", type=int, default=1, help="channels of raw PCM on stdin (default 1)")
    d.add_argument("--dtype", default="int16", choices=("int16", "int32", "float32"), help="raw PCM sample type (default int16)")
    d.add_argument("-v", "--verbose", action="store_true")
    return parser


def _blocks(name: str, args: argparse.Namespace, sample_rate: int) -> Iterator[np.ndarray]:
    if name == "-":
        blocks = pcm_blocks(sys.stdin.buffer, args.rate, args.channels, args.dtype, sample_rate)
    else:
        blocks = file_blocks(name, sample_rate)
    return paced(blocks, sample_rate) if args.realtime else blocks


def diarize_one(name: str, diarizer: StreamingDiarizer, args: argparse.Namespace) -> dict:
    """Run one input through the pipeline; write its RTTM and event log; return a summary."""
    uri = "stdin" if name == "-" else Path(name).stem
    args.output.mkdir(parents=True, exist_ok=True)
    rttm_path = args.output / f"{uri}.rttm"
    events_path = args.output / f"{uri}.events.jsonl"
    if args.realtime:
        diarizer.wall_origin = time.time()
    turns: list[TurnEvent] = []
    started = time.perf_counter()
    audio_samples = [0]

    def counted(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            audio_samples[0] += len(block)
            yield block

    # Each event is written and flushed as it comes, so a crash keeps what was produced.
    with open(events_path, "w", encoding="utf-8") as log_file:
        for event in diarizer.run(counted(_blocks(name, args, diarizer.sample_rate))):
            log_file.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
            log_file.flush()
            if isinstance(event, TurnEvent):
                turns.append(event)
    elapsed = time.perf_counter() - started
    rttm_path.write_text(format_rttm(uri, turns), encoding="utf-8")
    audio_seconds = audio_samples[0] / diarizer.sample_rate
    return {
        "uri": uri,
        "audio_s": audio_seconds,
        "turns": len(turns),
        "speakers": len({t.speaker for t in turns}),
        "step_ms_p50": diarizer.stats.percentile(50),
        "rtf": elapsed / audio_seconds if audio_seconds else float("nan"),
        "rttm": str(rttm_path),
    }


def cmd_diarize(args: argparse.Namespace) -> int:
    params = PipelineParams.preset(args.preset) if args.latency is None else PipelineParams.preset(args.preset, latency=args.latency)
    providers = tuple(args.provider) if args.provider else ("CPUExecutionProvider",)
    models = load_models(args.models, args.variant, threads=args.threads, providers=providers)
    failed = 0
    for name in args.inputs:
        diarizer = StreamingDiarizer(models, params)
        try:
            s = diarize_one(name, diarizer, args)
        except EdgedError as exc:
            print(f"edged: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{s['uri']}: {s['audio_s']:.1f} s, {s['turns']} turns, {s['speakers']} speakers, "
              f"{s['step_ms_p50']:.1f} ms/step (median), RTF {s['rtf']:.3f} -> {s['rttm']}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="edged: %(levelname)s: %(message)s")
    try:
        if args.command == "diarize":
            return cmd_diarize(args)
    except EdgedError as exc:
        print(f"edged: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
