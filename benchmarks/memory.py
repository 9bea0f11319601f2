"""Peak memory of whole edged processes, as an operator would measure it (``/usr/bin/time -v``).

Builds a long recording from the shared data (default 120 minutes, in a temporary folder), then
runs, each as its own process with one onnxruntime thread:

- ``edged diarize LONG.wav`` (the file streamed in blocks);
- ``edged run`` with ``audio.source: file`` on it, replayed ``--replay-speed`` times faster than
  real time, publishing to a local mosquitto when one is installed (else to nowhere: the turns
  wait in the spool, which is bounded);
- with ``--live-minutes N``: the daemon replaying N minutes at wall-clock speed, as from a
  microphone (an hour takes an hour).

Prints each command's peak RSS (``Maximum resident set size``), wall time and exit status.

    .venv/bin/python benchmarks/memory.py --models models/default [--minutes 120] [--live-minutes 60]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
EDGED = [sys.executable, "-m", "edged.cli"]


def long_recording(data: Path, minutes: float, path: Path) -> float:
    """Concatenate the shared recordings (with 1 s of silence between) to ``minutes``; seconds written."""
    files = sorted((data / "ami-debug").glob("*.wav")) + [data / "sample" / "sample.wav", data / "falcon" / "falcon.wav"]
    target = int(minutes * 60 * 16000)
    written = 0
    gap = np.zeros(16000, np.float32)
    with sf.SoundFile(str(path), "w", samplerate=16000, channels=1, subtype="PCM_16") as out:
        while written < target:
            for f in files:
                audio, rate = sf.read(str(f), dtype="float32")
                assert rate == 16000 and audio.ndim == 1, f
                piece = np.concatenate([audio, gap])[: target - written]
                out.write(piece)
                written += len(piece)
                if written >= target:
                    break
    return written / 16000


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float | int]:
    """Run under /usr/bin/time -v; peak RSS (MiB), wall seconds, exit status."""
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    text = log.read_text(errors="replace")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {"peak_rss_mib": int(peak.group(1)) / 1024 if peak else float("nan"),
            "wall_s": time.monotonic() - started, "status": proc.returncode}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen | None, int]:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    port = free_port()
    if binary is None:
        return None, port
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def daemon_config(folder: Path, models: Path, wav: Path, port: int) -> Path:
    config = folder / "config.yaml"
    config.write_text(
        f"device_id: memory\n"
        f"audio: {{source: file, file: {wav}}}\n"
        f"models: {{path: {models.resolve()}, variant: int8, threads: 1}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {port}, stats_interval: 60}}\n"
        f"spool: {{path: {folder / 'spool'}}}\n"
        f"logging: {{level: warning}}\n")
    return config


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=REPO / "models" / "default")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("EDGED_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--minutes", type=float, default=120.0, help="length of the long recording (default 120)")
    p.add_argument("--replay-speed", type=float, default=1000.0, help="daemon file replay speed (default 1000)")
    p.add_argument("--live-minutes", type=float, default=0.0, help="also run the daemon this long in real time")
    args = p.parse_args()
    if not Path("/usr/bin/time").exists():
        print("memory: error: /usr/bin/time not found; apt-get install time", file=sys.stderr)
        return 1
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="edged-memory-") as tmp:
        folder = Path(tmp)
        wav = folder / "long.wav"
        seconds = long_recording(args.data, args.minutes, wav)
        print(f"recording: {seconds / 60:.1f} min, {wav.stat().st_size / 2**20:.0f} MiB PCM16")
        broker, port = start_broker(folder)
        runs = [("edged diarize", [*EDGED, "diarize", str(wav), "--models", str(args.models), "--variant", "int8",
                                   "--threads", "1", "--output", str(folder / "out")])]
        config = daemon_config(folder, args.models, wav, port)
        runs.append((f"edged run (file, {args.replay_speed:g}x)",
                     [*EDGED, "run", "--config", str(config), "--replay-speed", str(args.replay_speed)]))
        if args.live_minutes > 0:
            live = folder / "live.wav"
            long_recording(args.data, args.live_minutes, live)
            (folder / "live").mkdir()
            live_config = daemon_config(folder / "live", args.models, live, port)
            runs.append((f"edged run (live, {args.live_minutes:g} min)", [*EDGED, "run", "--config", str(live_config)]))
        try:
            print(f"{'process':<28} {'peak RSS MiB':>12} {'wall s':>8} {'status':>6}")
            for name, cmd in runs:
                r = measure(cmd, env, folder / "log.txt")
                print(f"{name:<28} {r['peak_rss_mib']:>12.1f} {r['wall_s']:>8.1f} {r['status']:>6}", flush=True)
                if r["status"] != 0:
                    print((folder / "log.txt").read_text()[-2000:], file=sys.stderr)
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
