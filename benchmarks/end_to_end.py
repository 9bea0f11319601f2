"""End-to-end latency from audio to MQTT: the daemon replays recordings in real time (as a
microphone would deliver them) to a local mosquitto; a subscriber notes when each turn arrives.

Latency of a turn = arrival time - wall-clock time of the turn's last audio sample. It includes the
pipeline's own output latency (``--latency``), the step computation, the spool fsync and MQTT.

    .venv/bin/python benchmarks/end_to_end.py --models models/default --latency 5,0.5 FILE...
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from edged.service.listen import listen

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = folder / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true"] + (["user root"] if os.geteuid() == 0 else [])
    conf.write_text("\n".join(lines) + "\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("mosquitto did not start; apt-get install mosquitto")


def run_one(audio: Path, models: Path, latency: float, port: int, work: Path) -> list[float]:
    device = "e2e"
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": device, "audio": {"source": "file", "file": str(audio)}, "models": {"path": str(models)},
        "pipeline": {"latency": latency}, "mqtt": {"host": "127.0.0.1", "port": port},
        "spool": {"path": str(work / "spool")}, "logging": {"level": "warning"},
    }))
    got: dict = {}
    listener = threading.Thread(target=lambda: got.update(r=listen(
        "127.0.0.1", port, f"edged/{device}", timeout=600, until_offline=True, out=open(os.devnull, "w"))))
    listener.start()
    time.sleep(0.5)
    subprocess.run([sys.executable, "-m", "edged.cli", "run", "--config", str(config)], cwd=REPO, check=True)
    listener.join(60)
    return got["r"].latencies_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--models", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--latency", default="5,0.5", help="pipeline output latencies to run (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            print("| pipeline latency | turns | end-to-end median | p95 | max |")
            print("|---|---|---|---|---|")
            for latency in (float(x) for x in args.latency.split(",")):
                values: list[float] = []
                for i, audio in enumerate(args.files):
                    work = Path(tmp) / f"{latency}-{i}"
                    work.mkdir()
                    values += run_one(audio, args.models, latency, port, work)
                values.sort()
                p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
                print(f"| {latency:g} s | {len(values)} | {statistics.median(values):.2f} s | {p95:.2f} s | "
                      f"{values[-1]:.2f} s |", flush=True)
        finally:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    main()
