"""Host side of the arm64 proof: arm64 vs x86-64 turns, and the turns an MQTT subscriber got.

    .venv/bin/python scripts/arm64/compare.py --work W --x86 X --data DATA --daemon-file REL --device ID FILE...

Per diarized recording: the arm64 RTTM must equal the x86-64 RTTM byte for byte, or else score
within ``DER_TOLERANCE`` points of it against the shared reference (pyannote.metrics, collar 0,
overlap scored, the whole recording) or have the same turns and labels with every boundary
within ``MAX_FRAME_SHIFT`` model frames (kernel rounding); the report says where they differ.
The same rule holds for the turns the arm64 daemon spooled for its recording (``daemon-events.jsonl``) against
the x86-64 ``edged diarize`` turns of that recording. The MQTT turns a subscriber on the host got
(``edged listen --json`` output) must be the daemon's spooled turns, in order, with the same
``seq`` (contiguous, no duplicates), and ``online`` then ``offline`` on the status topic.
Exit status 0 when all holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import edged  # noqa: F401  (pins BLAS threads before numpy)
from edged.sources.file import read_audio
from edged_host.scoring import annotation_from_turns, load_rttm, prepare, score_file

DER_TOLERANCE = 0.1  # DER points
# segmentation-3.0 frame step (s): onnxruntime's arm64 (NEON) and x86-64 (AVX) kernels round
# differently, which can move an activation across a threshold and a boundary by a frame
FRAME_STEP = 0.016875
MAX_FRAME_SHIFT = 2  # frames; with the same turns and labels, a difference of rounding only


def rttm_turns(path: Path) -> list[tuple[str, float, float]]:
    turns = []
    for line in path.read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            turns.append((f[7], float(f[3]), float(f[3]) + float(f[4])))
    return turns


def event_turns(path: Path) -> list[tuple[str, float, float]]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(e["speaker"], e["start"], e["end"]) for e in events if e.get("type") == "turn"]


def confidence_gap(arm_events: Path, x86_events: Path) -> str:
    """Largest difference of the turns' confidence (mean activation, 4 decimals) between the runs."""
    def confidences(path: Path) -> list[float]:
        events = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        return [e["confidence"] for e in events if e.get("type") == "turn"]

    arm, x86 = confidences(arm_events), confidences(x86_events)
    if not arm or len(arm) != len(x86):
        return "turn confidences not comparable"
    return f"turn confidence (4 decimals) differs by at most {max(abs(a - b) for a, b in zip(arm, x86)):.4f}"


def compare_turns(name: str, wav: Path, reference: Path, arm_turns: list[tuple[str, float, float]],
                  x86_turns: list[tuple[str, float, float]], identical: bool, x86_rttm: Path) -> tuple[bool, str]:
    """Identical, or within ``DER_TOLERANCE`` DER points against the reference (one report line)."""
    duration = len(read_audio(wav)) / 16000
    items = prepare({name: duration}, load_rttm([reference]))
    der_arm = score_file(items[name], annotation_from_turns(name, arm_turns)).der
    der_x86 = score_file(items[name], annotation_from_turns(name, x86_turns)).der
    head = f"{name} ({duration:.1f} s): {len(arm_turns)} turns; DER vs reference arm64 {der_arm:.2f}% x86-64 {der_x86:.2f}%"
    if identical:
        return True, head + "; identical"
    # not identical: how far apart, turn by turn and in DER
    x86_as_ref = prepare({name: duration}, load_rttm([x86_rttm]))
    der_between = score_file(x86_as_ref[name], annotation_from_turns(name, arm_turns)).der
    same_count = len(arm_turns) == len(x86_turns)
    shift = max((max(abs(a[1] - b[1]), abs(a[2] - b[2])) for a, b in zip(arm_turns, x86_turns)), default=0.0)
    labels = same_count and all(a[0] == b[0] for a, b in zip(arm_turns, x86_turns))
    diff = abs(der_arm - der_x86)
    rounding = labels and shift <= MAX_FRAME_SHIFT * FRAME_STEP + 1e-3
    ok = diff < DER_TOLERANCE or rounding
    why = (f"DER difference {diff:.3f} points ({'<' if diff < DER_TOLERANCE else '>='} {DER_TOLERANCE})"
           + (f"; same turns and labels, boundaries within {MAX_FRAME_SHIFT} frames (kernel rounding)"
              if rounding else ""))
    return ok, (f"{head}; differ: {len(x86_turns)} x86 turns, same labels: {labels}, largest boundary "
                f"shift {shift * 1000:.0f} ms, DER of arm64 against x86-64 {der_between:.2f}%, {why}")


def compare_recording(name: str, wav: Path, reference: Path, arm_dir: Path, x86_dir: Path) -> tuple[bool, str]:
    """``edged diarize`` on arm64 vs on x86-64: the RTTM files."""
    arm, x86 = arm_dir / f"{name}.rttm", x86_dir / f"{name}.rttm"
    for path in (arm, x86):
        if not path.is_file():
            return False, f"{name}: {path} missing"
    identical = arm.read_bytes() == x86.read_bytes()
    ok, line = compare_turns(name, wav, reference, rttm_turns(arm), rttm_turns(x86), identical, x86)
    if identical:
        gap = confidence_gap(arm_dir / f"{name}.events.jsonl", x86_dir / f"{name}.events.jsonl")
        line = line.replace("; identical", f"; RTTM identical (byte for byte); {gap}")
    return ok, "diarize " + line


def rounded(turns: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    return [(s, round(a, 3), round(b, 3)) for s, a, b in turns]


def compare_daemon(name: str, wav: Path, reference: Path, daemon_events: Path, x86_dir: Path,
                   arm_dir: Path) -> tuple[bool, str]:
    """The arm64 daemon's spooled turns vs ``edged diarize`` of the same recording on x86-64 (and,
    when it ran there too, on arm64, which must be equal: the daemon runs the same pipeline)."""
    x86 = x86_dir / f"{name}.rttm"
    for path in (daemon_events, x86):
        if not path.is_file():
            return False, f"daemon {name}: {path} missing"
    arm_turns, x86_turns = rounded(event_turns(daemon_events)), rounded(rttm_turns(x86))
    ok, line = compare_turns(name, wav, reference, arm_turns, x86_turns, arm_turns == x86_turns, x86)
    line = "daemon  " + line.replace("; identical", "; turns identical to the x86-64 RTTM (ms)")
    arm_diarize = arm_dir / f"{name}.rttm"
    if arm_diarize.is_file():  # the daemon replayed a recording `edged diarize` also ran on arm64
        same = arm_turns == rounded(rttm_turns(arm_diarize))
        ok &= same
        line += "; " + ("equal to" if same else "DIFFERENT from") + " the arm64 `edged diarize` turns"
    return ok, line


def check_mqtt(listened: Path, daemon_events: Path, device: str) -> tuple[bool, str]:
    """What the subscriber got equals what the daemon spooled: turns, order, ``seq``, status."""
    if not listened.is_file():
        return False, f"MQTT: {listened} missing (the subscriber did not run)"
    messages = [json.loads(line) for line in listened.read_text().splitlines() if line.startswith("{")]
    prefix = f"edged/{device}/"
    # the turn topic also carries edged check's probe ({"type": "probe"}): consumers keep type "turn"
    turns = [m["payload"] for m in messages if m["topic"] == prefix + "turn" and isinstance(m["payload"], dict)
             and m["payload"].get("type") == "turn"]
    status = [m["payload"] for m in messages if m["topic"] == prefix + "status" and not m["retained"]]
    stats = [m["payload"] for m in messages if m["topic"] == prefix + "stats"]
    problems = []
    logged = [json.loads(x) for x in daemon_events.read_text().splitlines()] if daemon_events.is_file() else []
    logged_turns = [e for e in logged if e.get("type") == "turn"]
    got = [(t["speaker"], t["start"], t["end"], t["seq"]) for t in turns]
    expected = [(t["speaker"], t["start"], t["end"], t["seq"]) for t in logged_turns]
    if not turns:
        problems.append("no turn arrived")
    if got != expected:
        problems.append(f"turns differ from the daemon's spooled turns ({len(got)} got, {len(expected)} spooled)")
    seqs = [t["seq"] for t in turns]
    if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        problems.append(f"seq not contiguous: {seqs}")
    if any(t.get("device_id") != device for t in turns):
        problems.append("a turn has another device_id")
    if "online" not in status or status[-1:] != ["offline"]:
        problems.append(f"status sequence {status}, expected online ... offline")
    steps = stats[-1].get("steps") if stats else None
    summary = (f"MQTT: {len(turns)} turns on {prefix}turn (seq {seqs[0] if seqs else '-'}..{seqs[-1] if seqs else '-'}), "
               f"status {' -> '.join(status)}, {len(stats)} stats messages (last: steps {steps})")
    if problems:
        return False, summary + "; FAIL: " + "; ".join(problems)
    return True, summary + "; equal to the daemon's spooled turns, in order, no duplicates"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="run folder: arm64/, listen.jsonl, daemon-events.jsonl")
    ap.add_argument("--x86", type=Path, required=True, help="folder of the x86-64 edged diarize output")
    ap.add_argument("--data", type=Path, required=True, help="shared data folder")
    ap.add_argument("--daemon-file", required=True, help="recording the daemon replayed, relative to --data")
    ap.add_argument("--device", required=True, help="device_id of the daemon run")
    ap.add_argument("files", nargs="+", help="recordings, relative to --data (e.g. falcon/falcon.wav)")
    args = ap.parse_args(argv)

    ok = True
    for rel in args.files:
        wav = args.data / rel
        name = wav.stem
        passed, line = compare_recording(name, wav, wav.with_suffix(".rttm"), args.work / "arm64", args.x86)
        ok &= passed
        print(("ok    " if passed else "FAIL  ") + line)
    wav = args.data / args.daemon_file
    passed, line = compare_daemon(wav.stem, wav, wav.with_suffix(".rttm"), args.work / "daemon-events.jsonl", args.x86,
                                  args.work / "arm64")
    ok &= passed
    print(("ok    " if passed else "FAIL  ") + line)
    passed, line = check_mqtt(args.work / "listen.jsonl", args.work / "daemon-events.jsonl", args.device)
    ok &= passed
    print(("ok    " if passed else "FAIL  ") + line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
