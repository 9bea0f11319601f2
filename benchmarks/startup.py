"""Start-up cost of ``edged diarize``: wall time on a 1-second file, and where import time goes.

Runs the installed ``edged`` command (as a user would) ``--runs`` times on the first second of
the shared ``sample`` recording and prints the median and spread of the wall time; then one
``python -X importtime`` run, summarised as the slowest top-level imports (cumulative).

    .venv/bin/python benchmarks/startup.py --models models/default [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def edged_command() -> list[str]:
    script = Path(sys.executable).with_name("edged")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edged.cli"]


def import_times(stderr: str, top: int) -> list[tuple[float, str]]:
    """(cumulative ms, package) of the slowest top-level imports in ``-X importtime`` output."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        if cumulative.isdigit() and not name.startswith(" ") and "." not in name.strip():
            rows.append((int(cumulative) / 1000, name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=REPO / "models" / "default")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("EDGED_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--runs", type=int, default=9)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="edged-startup-") as tmp:
        wav = Path(tmp) / "one_second.wav"
        audio, rate = sf.read(str(args.data / "sample" / "sample.wav"), dtype="float32")
        sf.write(str(wav), audio[:rate], rate)
        cmd = [*edged_command(), "diarize", str(wav), "--models", str(args.models), "--output", str(Path(tmp) / "out")]
        walls = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
        q = statistics.quantiles(walls, n=4) if len(walls) >= 2 else [walls[0]] * 3
        print(f"edged diarize, 1 s file: median {statistics.median(walls):.3f} s "
              f"(quartiles {q[0]:.3f} / {q[2]:.3f}, min {min(walls):.3f}, {len(walls)} runs)")
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "edged.cli", *cmd[-6:]],
                              capture_output=True, text=True, check=True)
        print("slowest top-level imports (cumulative ms):")
        for ms, name in import_times(proc.stderr, 8):
            print(f"  {ms:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
