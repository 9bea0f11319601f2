"""``edged run`` for real: file-replayed audio -> pipeline -> spool -> a real mosquitto; signals,
sd_notify, reload, SIGKILL with the broker down, and ``edged check``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).parent))
from mosquitto import wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EDGED = [sys.executable, "-m", "edged.cli"]


class Collector:
    """Subscribes to edged/<device>/# and keeps every message (re-subscribes after reconnects)."""

    def __init__(self, port: int, device: str):
        self.prefix = f"edged/{device}"
        self.turns: list[dict] = []
        self.status: list[tuple[str, bool]] = []
        self.active: list[dict] = []
        self.stats: list[dict] = []
        self.subscriptions = 0
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{self.prefix}/#", qos=1)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        wait_for(lambda: self.subscriptions > 0, 30, what="collector subscription")

    def _on_subscribe(self, *_):
        with self.lock:
            self.subscriptions += 1

    def _on_message(self, client, userdata, msg):
        name = msg.topic[len(self.prefix) + 1:]
        text = msg.payload.decode()
        with self.lock:
            if name == "turn":
                self.turns.append(json.loads(text))
            elif name == "status":
                self.status.append((text, bool(msg.retain)))
            elif name == "active":
                self.active.append(json.loads(text))
            elif name == "stats":
                self.stats.append(json.loads(text))

    def seqs(self) -> list[int]:
        with self.lock:
            return [t["seq"] for t in self.turns]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def write_config(tmp_path: Path, bundle: Path, port: int, audio: Path, device: str = "test1", **extra: str) -> Path:
    sections = {
        "device_id": device,
        "audio": {"source": "file", "file": str(audio)},
        "models": {"path": str(bundle)},
        "mqtt": {"host": "127.0.0.1", "port": port, "stats_interval": 1.0, "reconnect_min_s": 0.2,
                 "reconnect_max_s": 1.0},
        "spool": {"path": str(tmp_path / "spool")},
        "logging": {"events_file": str(tmp_path / "events.jsonl")},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        sections.setdefault(section, {})[name] = value
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(sections))
    return path


def start_daemon(config: Path, speed: float = 4.0, env: dict | None = None, log: Path | None = None):
    out = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen([*EDGED, "run", "--config", str(config), "--replay-speed", str(speed)],
                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def test_replayed_file_reaches_mqtt_with_the_same_turns_as_diarize(bundle, data_dir, broker, tmp_path):
    wav = data_dir / "falcon" / "falcon.wav"
    collector = Collector(broker.port, "test1")
    config = write_config(tmp_path, bundle, broker.port, wav)
    proc = start_daemon(config, speed=4.0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    wait_for(lambda: ("offline", False) in collector.status or ("offline", True) in collector.status, 30,
             what="offline status")
    collector.close()

    subprocess.run([*EDGED, "diarize", str(wav), "--models", str(bundle), "--output", str(tmp_path / "ref")],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    expected = [json.loads(line) for line in (tmp_path / "ref" / "falcon.events.jsonl").read_text().splitlines()]
    expected_turns = [e for e in expected if e["type"] == "turn"]
    got = collector.turns
    assert [(t["speaker"], t["start"], t["end"]) for t in got] == \
        [(t["speaker"], t["start"], t["end"]) for t in expected_turns]
    assert [t["seq"] for t in got] == list(range(got[0]["seq"], got[0]["seq"] + len(got)))
    first = got[0]
    assert first["device_id"] == "test1" and first["stream_seq"] == 0 and first["type"] == "turn"
    assert first["wall_end"] > first["wall_start"] and first["wall_start_iso"].endswith("+00:00")
    assert ("online", True) in collector.status or ("online", False) in collector.status
    assert collector.active and collector.active[-1]["speakers"] == []  # the stream ended in silence
    assert collector.stats and collector.stats[-1]["steps"] > 0 and collector.stats[-1]["audio"]["source"] == "file"
    # the local event log has the same turns
    logged = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e for e in logged if e["type"] == "turn"] == got  # the records are the MQTT payloads
    assert [e for e in logged if e["type"] == "activity"][-1] == collector.active[-1]
    # edged diarize writes the same schema (no wall clock for a file read as fast as it decodes)
    assert set(expected_turns[0]) == set(first) - {"wall_start", "wall_end"}
    assert f"stopped: {len(got)} turns produced this run, {len(got)} delivered, 0 dropped" in out


def test_sigterm_flushes_open_turns_and_publishes_offline(bundle, data_dir, broker, tmp_path):
    collector = Collector(broker.port, "test1")
    config = write_config(tmp_path, bundle, broker.port, data_dir / "sample" / "sample.wav")
    proc = start_daemon(config, speed=2.0, log=tmp_path / "daemon.log")
    wait_for(lambda: len(collector.seqs()) >= 2, 240, what="two turns")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "stopping: flushing the open turns" in log
    wait_for(lambda: ("offline", False) in collector.status, 30, what="offline")
    seqs = collector.seqs()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # the flushed turn ends where the audio stopped, before the end of the 30 s file
    assert collector.turns[-1]["end"] < 30.0
    collector.close()


def test_sigkill_with_broker_down_loses_nothing(bundle, data_dir, broker, tmp_path):
    """Turns made while the broker is down are spooled; SIGKILL; the restarted daemon sends them."""
    config = write_config(tmp_path, bundle, broker.port, data_dir / "falcon" / "falcon.wav")
    broker.stop()
    proc = start_daemon(config, speed=4.0, log=tmp_path / "run1.log")
    events = tmp_path / "events.jsonl"

    def spooled_turns() -> list[int]:
        if not events.exists():
            return []
        return [json.loads(x)["seq"] for x in events.read_text().splitlines() if '"type": "turn"' in x]

    wait_for(lambda: len(spooled_turns()) >= 2, 240, what="two spooled turns")
    proc.kill()
    proc.wait(30)
    made = spooled_turns()

    broker.start()
    collector = Collector(broker.port, "test1")
    proc = start_daemon(config, speed=4.0, log=tmp_path / "run2.log")
    wait_for(lambda: set(made) <= set(collector.seqs()), 120, what=f"spooled turns {made}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    seqs = collector.seqs()
    # run 1's turns first, in order, then run 2's, numbered on from the spool
    assert seqs[: len(made)] == made
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs[len(made)] == made[-1] + 1 if len(seqs) > len(made) else True
    collector.close()


def test_sd_notify_ready_watchdog_stopping(bundle, data_dir, broker, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(120)
    config = write_config(tmp_path, bundle, broker.port, data_dir / "falcon" / "falcon.wav")
    proc = start_daemon(config, speed=4.0, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []
    try:
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    finally:
        sock.close()
        proc.communicate(timeout=120)
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    assert "STATUS=loading models" in messages[:ready]
    assert sum("WATCHDOG=1" in m for m in messages[ready:]) >= 2
    assert proc.returncode == 0


def test_sighup_reloads_config_and_keeps_speakers(bundle, data_dir, broker, tmp_path):
    config = write_config(tmp_path, bundle, broker.port, data_dir / "sample" / "sample.wav")
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, speed=1.0, log=log)
    wait_for(lambda: "edged test1: models" in log.read_text(), 120, what="daemon running")
    text = config.read_text().replace("spool:", "pipeline:\n  delta_new: 0.9\nspool:")
    config.write_text(text)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "pipeline parameters applied, speakers kept" in log.read_text(), 60, what="reload")
    config.write_text(text.replace("delta_new: 0.9", "delta_new: 9"))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, keeping the running config" in log.read_text(), 60, what="bad reload")
    assert "delta_new=9 is out of range" in log.read_text().split("reload failed")[-1].splitlines()[0]
    # a valid config the bundle cannot serve (no UIS-RNN model): the running pipeline stays
    config.write_text(text.replace("delta_new: 0.9", "delta_new: 0.9\n  clustering: uisrnn"))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log.read_text().count("reload failed, keeping the running config") >= 2, 60, what="2nd bad reload")
    assert "has no UIS-RNN model" in log.read_text().split("reload failed")[-1].splitlines()[0]
    # a publisher the new config cannot build (its password file is missing): the running one stays
    config.write_text(text.replace("mqtt:", f"mqtt:\n  username: u\n  password_file: {tmp_path / 'missing'}"))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log.read_text().count("reload failed, keeping the running config") >= 3, 60, what="3rd bad reload")
    assert "mqtt.password_file=" in log.read_text().split("reload failed")[-1].splitlines()[0]
    assert "MQTT publisher stopped" not in log.read_text()
    assert proc.poll() is None, "the daemon must keep running after a reload it cannot apply"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def test_bad_config_exits_78_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt:\n  port: 70000\n")
    proc = subprocess.run([*EDGED, "run", "--config", str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 78
    assert proc.stderr.strip() == "edged: error: mqtt.port=70000 is out of range; allowed 1..65535"
    path.write_text("mqtt: [\n")
    proc = subprocess.run([*EDGED, "run", "--config", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78 and "invalid YAML at line" in proc.stderr and proc.stderr.count("\n") == 1


def test_unreadable_audio_file_exits_78_naming_it(bundle, tmp_path):
    missing = tmp_path / "gone.wav"
    config = write_config(tmp_path, bundle, 1, missing)
    proc = subprocess.run([*EDGED, "run", "--config", str(config)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"edged: error: audio.file: {missing}: audio file not found"


def test_check_reports_each_part(bundle, data_dir, broker, tmp_path):
    config = write_config(tmp_path, bundle, broker.port, data_dir / "falcon" / "falcon.wav")
    ok = subprocess.run([*EDGED, "check", "--config", str(config)], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", "config"], ["ok", "models"], ["ok", "audio"],
                                                   ["ok", "spool"], ["ok", "broker"]]
    broker.stop()
    down = subprocess.run([*EDGED, "check", "--config", str(config), "--set", "models.variant=fp32"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert down.returncode == 1
    assert down.stdout.splitlines()[1].startswith("ok    models")
    assert down.stdout.splitlines()[-1].startswith("FAIL  broker")
