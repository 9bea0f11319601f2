"""``edged-conversations``: synthesize multi-speaker conversations with exact references."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from edged.errors import EdgedError


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be MIN,MAX in seconds, e.g. 1,6") from None
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edged-conversations",
        description="Build multi-speaker conversations from single-speaker recordings (a folder with manifest.tsv "
                    "of path<TAB>speaker, or one sub-folder per speaker): WAV + exact RTTM each, plus "
                    "reference.rttm, reference.uem and conversations.json. Seeded: same input, same output.")
    p.add_argument("source", type=Path, help="folder of single-speaker recordings, e.g. ../shared/data/librispeech")
    p.add_argument("--output", type=Path, required=True, help="folder to write into")
    p.add_argument("--count", type=int, default=1, help="conversations to build (seeds SEED, SEED+1, ...; default 1)")
    p.add_argument("--speakers", type=int, default=2, help="speakers per conversation (default 2)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per conversation (default 60)")
    p.add_argument("--turn", type=_pair, default=(1.0, 6.0), metavar="MIN,MAX", help="turn length, s (default 1,6)")
    p.add_argument("--pause", type=_pair, default=(0.1, 1.0), metavar="MIN,MAX", help="pause between turns, s (default 0.1,1)")
    p.add_argument("--overlap", type=float, default=0.1, help="target fraction of speech overlapped (default 0.1)")
    p.add_argument("--loudness-spread", type=float, default=6.0, help="speaker levels spread over this many dB (default 6)")
    p.add_argument("--level", type=float, default=-26.0, help="mean speech level, dBFS (default -26)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--rir", nargs="+", type=Path, default=[], metavar="WAV",
                   help="room impulse responses: each speaker is convolved with one drawn from these (far field)")
    p.add_argument("--noise", nargs="+", type=Path, default=[], metavar="AUDIO",
                   help="noises: one drawn per conversation, looped, added at an SNR drawn in --snr")
    p.add_argument("--snr", type=_pair, default=(5.0, 20.0), metavar="MIN,MAX", help="noise SNR range, dB (default 5,20)")
    p.add_argument("--telephone", action="store_true",
                   help="narrowband telephone: 300 Hz high-pass, 8 kHz mu-law round trip")
    p.add_argument("--prefix", default="conv", help="file name prefix (default conv)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .conversations import ConversationSpec, build_set

        spec = ConversationSpec(
            speakers=args.speakers, duration=args.duration, turn_min=args.turn[0], turn_max=args.turn[1],
            pause_min=args.pause[0], pause_max=args.pause[1], overlap=args.overlap,
            loudness_spread_db=args.loudness_spread, level_dbfs=args.level, seed=args.seed)
        summary = build_set(args.source, args.output, spec, args.count, args.prefix, rirs=args.rir,
                            noises=args.noise, snr=args.snr, telephone=args.telephone)
    except EdgedError as exc:
        print(f"edged-conversations: error: {exc}", file=sys.stderr)
        return 1
    for c in summary["conversations"]:
        print(f"{args.output / c['wav']}: {c['duration_s']:.0f} s, {len(c['levels_dbfs'])} speakers, {c['turns'].__len__()} turns, "
              f"speech {c['speech_s']:.1f} s, overlap {100 * c['overlap_ratio']:.1f}%")
    print(f"references: {args.output / 'reference.rttm'}, {args.output / 'reference.uem'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
