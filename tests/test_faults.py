"""Issue 15 under fault injection: the real daemon (``python -m edged.cli run``) replaying real
recordings to a real mosquitto, with a real full filesystem (a small tmpfs; needs root), a real
broker ACL, damaged spool state, wrong models and bad configs. Each case ends with every turn
produced either delivered (once, after de-duplication on ``seq``) or counted as dropped, no
crash loop (exit 0, or 78 which the unit does not restart), and a one-line message."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import paho.mqtt.client as paho
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from mosquitto import Mosquitto, wait_for  # noqa: E402
from smallfs import fill, free, small_tmpfs  # noqa: E402
from wrong_models import replace_model, segmentation_with_speakers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EDGED = [sys.executable, "-m", "edged.cli"]
DEVICE = "fault1"
PREFIX = f"edged/{DEVICE}"
TIMEOUT = 240  # model loading and replay on 2 shared, busy cores
EX_CONFIG = 78


# --- helpers --------------------------------------------------------------------------------------
class Subscriber:
    """QoS 1, persistent session (clean_session false, fixed id): nothing published while it is
    briefly disconnected is missed. Keeps every message of ``PREFIX/#`` in arrival order."""

    def __init__(self, port: int, client_id: str = "fault-subscriber"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        assert self.connected.wait(30), "subscriber did not connect"

    def _on_connect(self, client, userdata, flags, reason, properties):
        if not reason.is_failure:
            client.subscribe(f"{PREFIX}/#", qos=1)
            self.connected.set()

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def payloads(self, name: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == f"{PREFIX}/{name}"]

    def turns(self) -> list[dict]:
        return [t for t in map(json.loads, self.payloads("turn")) if t.get("type") == "turn"]

    def seqs(self) -> list[int]:
        return [t["seq"] for t in self.turns()]

    def health(self) -> list[dict]:
        return [json.loads(p) for p in self.payloads("health")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def long_wav(data_dir, tmp_path_factory) -> Path:
    """Three real recordings back to back (90 s): long enough to inject faults while it plays."""
    import soundfile as sf

    parts = [sf.read(data_dir / name, dtype="float32")[0] for name in
             ("ami-debug/dev00.wav", "ami-debug/dev01.wav", "sample/sample.wav")]
    path = tmp_path_factory.mktemp("audio") / "long.wav"
    sf.write(path, np.concatenate(parts), 16000)
    return path


def write_config(folder: Path, bundle: Path, port: int, audio: Path, spool: Path | None = None,
                 **sections: dict) -> Path:
    data = {
        "device_id": DEVICE,
        "audio": {"source": "file", "file": str(audio)},
        "models": {"path": str(bundle)},
        "mqtt": {"host": "127.0.0.1", "port": port, "stats_interval": 1.0, "reconnect_min_s": 0.2,
                 "reconnect_max_s": 1.0, "keepalive": 5},
        "spool": {"path": str(spool or folder / "spool")},
        "logging": {"events_file": str(folder / "events.jsonl")},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(config: Path, log: Path, speed: float = 2.0, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*EDGED, "run", "--config", str(config), "--replay-speed", str(speed), *extra],
                            cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


@contextmanager
def running(config: Path, log: Path, speed: float = 2.0, *extra: str) -> Iterator[subprocess.Popen]:
    """The daemon (``start``), killed on the way out when the test fails before ``stop``."""
    proc = start(config, log, speed, *extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def stop(proc: subprocess.Popen, log: Path) -> str:
    """SIGTERM: the daemon exits 0 without a traceback; its log."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    return text


def run_once(config: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGED, *extra, "--config", str(config)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def events(folder: Path) -> list[dict]:
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["type"] == "turn"]


def stopped_line(log: Path) -> str:
    return next(line for line in log.read_text().splitlines() if "stopped: " in line)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edged: error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


# --- A + G + H: disk full ------------------------------------------------------------------------
def test_disk_full_drops_new_turns_keeps_draining_and_resumes_without_restart(bundle, long_wav, broker, tmp_path):
    """The spool's filesystem fills while the broker hangs with turns spooled: the daemon keeps
    running, new turns are counted as dropped (log, stats, health), the spooled ones drain once
    the broker answers (acks.log cannot grow), and after space returns turns are spooled again.
    Then SIGTERM on a full disk: the flush fails to spool, yet offline is published cleanly."""
    sub = Subscriber(broker.port)
    with small_tmpfs(tmp_path / "fs", "512k") as fs:
        config = write_config(tmp_path, bundle, broker.port, long_wav, spool=fs / "spool")
        log = tmp_path / "daemon.log"
        with running(config, log, 1.0) as proc:
            wait_for(lambda: len(sub.seqs()) >= 1, TIMEOUT, what="a first delivered turn")
            broker.pause()  # a hung broker: turns stay in the spool
            spooled = len(events(tmp_path))
            wait_for(lambda: len(events(tmp_path)) >= spooled + 2, TIMEOUT, what="turns spooled while hung")
            filler = fill(fs)
            wait_for(lambda: any(e["seq"] is None for e in events(tmp_path)), TIMEOUT, what="a dropped turn")
            assert proc.poll() is None, "the daemon must keep running on a full disk"
            held = [e["seq"] for e in events(tmp_path) if e["seq"] is not None]
            broker.resume()  # the spooled turns drain although the disk is still full
            wait_for(lambda: set(held) <= set(sub.seqs()), TIMEOUT, what=f"spooled turns {held} delivered")
            wait_for(lambda: any(not h["ok"] and "cannot write to spool" in h["problems"][0] for h in sub.health()),
                     TIMEOUT, what="the spool problem on the health topic")
            filler.unlink()  # room again: no restart
            dropped_before = sum(e["seq"] is None for e in events(tmp_path))
            wait_for(lambda: any(e["seq"] is not None for e in events(tmp_path)[len(held) + dropped_before:]),
                     TIMEOUT, what="a turn spooled again after space returned")
            wait_for(lambda: sub.health() and sub.health()[-1]["ok"], TIMEOUT, what="health ok again")
            # H: full again at shutdown; the flush cannot be spooled, offline still comes cleanly
            filler = fill(fs)
            text = stop(proc, log)
        assert "turns are dropped until there is room: free space on the card or move spool.path" in text
        assert "is writable again" in text
        made = events(tmp_path)
        delivered = [e["seq"] for e in made if e["seq"] is not None]
        dropped = [e for e in made if e["seq"] is None]
        wait_for(lambda: set(delivered) <= set(sub.seqs()), 60, what="every spooled turn delivered")
        seqs = sub.seqs()
        assert sorted(set(seqs)) == sorted(delivered) and delivered == sorted(delivered)
        assert dropped, "the full disk must have cost turns"
        # counters mean what they say, and the dropped count survives a restart
        line = stopped_line(log)
        assert f"stopped: {len(made)} turns produced this run, {len(delivered)} delivered, {len(dropped)} dropped" \
            in line, line
        stats = [json.loads(p) for p in sub.payloads("stats")]
        assert stats[-1]["spool_dropped_nospace"] == len(dropped) == stats[-1]["turns_unspooled"]
        # the last stats leave before stop() drains the flushed turns: delivered so far
        assert stats[-1]["turns_produced"] == len(made) and stats[-1]["turns_delivered"] <= len(delivered)
        from edged.delivery.spool import Spool, SpoolConfig

        filler.unlink()
        with Spool(SpoolConfig(path=fs / "spool")) as spool:
            assert spool.dropped_nospace == len(dropped) and spool.depth == 0 and spool.skipped_corrupt == 0
    assert f"Client edged-{DEVICE} disconnected" in broker.log_tail(10**7)  # a clean DISCONNECT, no will
    assert sub.payloads("status")[-1] == b"offline"
    sub.close()


# --- a full disk at a SIGHUP reload that moves the spool -------------------------------------------
def test_reload_moving_the_spool_onto_a_full_disk_is_refused_then_applied_with_room(bundle, long_wav, broker,
                                                                                    tmp_path):
    """SIGHUP points spool.path at a folder on a full filesystem while turns wait in the running
    spool (the broker hangs): the reload is refused whole, in one line naming the folder, the full
    disk and the fix, and the daemon goes on with the old spool; again with room for a spool's
    small files but not for the waiting turns (the disk full during the move: the copy is undone).
    Once space is freed a SIGHUP moves the spool: the waiting turns go along with their seqs, and
    every turn reaches the broker once (after de-duplication on seq), in order, no seq on two turns."""
    sub = Subscriber(broker.port)
    with small_tmpfs(tmp_path / "fs", "256k") as fs:
        moved = fs / "spool"
        config = write_config(tmp_path, bundle, broker.port, long_wav)
        log = tmp_path / "daemon.log"

        def refusals() -> list[str]:
            return [line for line in log.read_text().splitlines() if "reload failed" in line]

        with running(config, log, 2.0) as proc:
            wait_for(lambda: len(sub.seqs()) >= 1, TIMEOUT, what="a first delivered turn")
            broker.pause()  # a hung broker: turns wait in the running spool
            held = len(events(tmp_path))
            wait_for(lambda: len(events(tmp_path)) >= held + 1, TIMEOUT, what="a turn spooled while hung")
            filler = fill(fs)
            write_config(tmp_path, bundle, broker.port, long_wav, spool=moved)
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: len(refusals()) == 1, 60, what="the first reload refused")
            assert not (moved / "seq").exists()  # refused at open: nothing fit
            free(filler, 2 * 4096)  # room for the folder's floor and counters, not for the waiting turns
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: len(refusals()) == 2, 60, what="the second reload refused")
            assert (moved / "seq").exists() and not list(moved.glob("seg-*"))  # the copy failed, undone
            assert proc.poll() is None, "the daemon must keep running after a reload it cannot apply"
            spooled = len(events(tmp_path))
            wait_for(lambda: len(events(tmp_path)) > spooled, TIMEOUT, what="a turn spooled after the refusals")
            assert all(e["seq"] is not None for e in events(tmp_path)), "the old spool must still take turns"
            filler.unlink()
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload: spool moved to" in log.read_text(), 60, what="the reload applied")
            carried = [e["seq"] for e in events(tmp_path)]
            broker.resume()
            wait_for(lambda: len(events(tmp_path)) >= len(carried) + 1, TIMEOUT, what="a turn after the move")
            wait_for(lambda: set(carried) <= set(sub.seqs()), TIMEOUT, what="the carried turns delivered")
            text = stop(proc, log)
        expected = (f"edged: ERROR: edged.service.daemon: reload failed, keeping the running config: spool folder "
                    f"{moved} has no room (No space left on device); the disk is full: free space on it or set "
                    "spool.path to a folder with room")
        assert refusals() == [expected, expected]
        assert [line for line in text.splitlines() if str(moved) in line and "WARNING" in line] == []  # one line each
        made = events(tmp_path)
        seqs = [e["seq"] for e in made]
        assert None not in seqs and seqs == sorted(set(seqs)), seqs
        assert max(carried) < seqs[-1] and f"reload: spool moved to {moved}" in text
        wait_for(lambda: set(seqs) <= set(sub.seqs()), 60, what="every turn delivered")
        got = sub.turns()
        assert sorted(set(sub.seqs())) == seqs
        first = list(dict.fromkeys(sub.seqs()))
        assert first == seqs, f"out of order: {first}"
        by_seq = {t["seq"]: t for t in made}
        assert all(t == by_seq[t["seq"]] for t in got), "a seq named two different turns"
        assert f"stopped: {len(made)} turns produced this run, {len(made)} delivered, 0 dropped" in stopped_line(log)
        from edged.delivery.spool import Spool, SpoolConfig

        for folder in (tmp_path / "spool", moved):  # nothing waits in either: each turn was held by one
            with Spool(SpoolConfig(path=folder)) as spool:
                assert spool.depth == 0 and spool.skipped_corrupt == 0, folder
    assert sub.payloads("status")[-1] == b"offline"
    sub.close()


# --- B: broker rejection ---------------------------------------------------------------------------
DENY_TURN = "".join(f"topic readwrite {PREFIX}/{t}\n" for t in ("status", "active", "stats", "health")) + \
    f"topic read {PREFIX}/turn\n"


def test_acl_rejection_keeps_turns_and_delivers_them_once_allowed(bundle, data_dir, tmp_path):
    broker = Mosquitto(tmp_path / "broker", acl=DENY_TURN).start()
    sub = Subscriber(broker.port)
    config = write_config(tmp_path, bundle, broker.port, data_dir / "sample" / "sample.wav")
    try:
        check = run_once(config, "check")
        assert check.returncode == 1
        failed = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
        assert len(failed) == 1 and failed[0].startswith("FAIL  broker")
        assert f"refused a publish on {PREFIX}/turn (Not authorized)" in failed[0]
        log = tmp_path / "daemon.log"
        proc = start(config, log, 2.0)
        wait_for(lambda: len(events(tmp_path)) >= 2, TIMEOUT, what="two turns refused")
        wait_for(lambda: any(not h["ok"] for h in sub.health()), TIMEOUT, what="health reporting the refusal")
        assert sub.seqs() == []
        broker.allow(f"topic readwrite {PREFIX}/#\n")
        assert proc.wait(TIMEOUT) == 0, log.read_text()[-3000:]
        made = [e["seq"] for e in events(tmp_path)]
        wait_for(lambda: set(made) <= set(sub.seqs()), 60, what="every refused turn delivered")
        assert sorted(set(sub.seqs())) == made and None not in made
        text = log.read_text()
        assert text.count(f"refused turn seq {made[0]} on {PREFIX}/turn (Not authorized); it stays in the spool") == 1
        assert "accepts turns again" in text and "Traceback" not in text
        assert f"{len(made)} turns produced this run, {len(made)} delivered, 0 dropped" in stopped_line(log)
        stats = [json.loads(p) for p in sub.payloads("stats")]
        assert max(s["rejected"] for s in stats) >= 1 and stats[-1]["spool_dropped"] == 0
        assert run_once(config, "check").returncode == 0
    finally:
        sub.close()
        broker.stop()


@pytest.mark.parametrize("prefix, problem", [
    ("$SYS/edged", "starts with $, which brokers reserve"),
    ("edged/+/x", "holds a wildcard (+ or #)"),
    ("x" * 70000, "is 70000 bytes; an MQTT topic is at most 65535 bytes"),  # F
])
def test_unusable_topic_prefix_exits_78_with_one_line(bundle, data_dir, tmp_path, prefix, problem):
    config = write_config(tmp_path, bundle, 1, data_dir / "sample" / "sample.wav", mqtt={"topic_prefix": prefix})
    proc = run_once(config, "run", timeout=60)
    assert proc.returncode == EX_CONFIG
    assert problem in error_line(proc) and len(error_line(proc)) < 400


# --- C + D: the seq floor --------------------------------------------------------------------------
def test_seq_never_repeats_when_the_floor_is_lost_damaged_lowered_or_huge(bundle, data_dir, broker, tmp_path):
    sub = Subscriber(broker.port)
    config = write_config(tmp_path, bundle, broker.port, data_dir / "falcon" / "falcon.wav")
    floor = tmp_path / "spool" / "seq"
    damages = {"first run": None, "deleted": floor.unlink, "garbled": lambda: floor.write_bytes(b"\xff\x00zz"),
               "lowered": lambda: floor.write_text("1\n"), "huge (D)": lambda: floor.write_text("9" * 40 + "\n")}
    seen: list[int] = []
    try:
        for name, damage in damages.items():
            if damage is not None:
                damage()
            log = tmp_path / f"{name}.log"
            proc = start(config, log, 8.0)
            assert proc.wait(TIMEOUT) == 0, f"{name}: {log.read_text()[-3000:]}"
            wait_for(lambda: len(set(sub.seqs())) > len(seen), 60, what=f"turns after {name}")
            run = sorted(set(sub.seqs()) - set(seen))
            assert seen == [] or run[0] > seen[-1], f"{name}: seq restarted at {run[0]} after {seen[-1]}"
            seen += run
            if name == "huge (D)":
                assert "is beyond 2^53" in log.read_text() and "struct.error" not in log.read_text()
        assert seen == sorted(set(seen))  # strictly increasing across five runs
        assert all(seq < 2**53 for seq in seen)
    finally:
        sub.close()


# --- E: models ------------------------------------------------------------------------------------
def test_wrong_or_missing_models_exit_78_and_check_names_the_file(bundle, data_dir, broker, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    target = replace_model(copy, "segmentation", "int8",
                           segmentation_with_speakers(tmp_path / "seg7.onnx", 7, fixed=False))
    config = write_config(tmp_path, copy, broker.port, data_dir / "sample" / "sample.wav")
    run = run_once(config, "run")
    assert run.returncode == EX_CONFIG
    assert error_line(run).startswith(f"edged: error: {target.resolve()}: output activations float32[1, 8000, 7]")
    check = run_once(config, "check")
    assert check.returncode == 1
    models = next(line for line in check.stdout.splitlines() if " models " in line)
    assert models.startswith(f"FAIL  models  {target.resolve()}: output activations")
    replace_model(copy, "segmentation", "int8", copy / "embedding.int8.onnx")  # another model, checksum updated
    run = run_once(config, "run")
    assert run.returncode == EX_CONFIG and "inputs fbank, weights differ from the manifest's waveform" in error_line(run)
    for where in (tmp_path / "no-such-folder", data_dir / "sample"):  # missing; a folder that is no bundle
        bad = write_config(tmp_path, where, broker.port, data_dir / "sample" / "sample.wav")
        run = run_once(bad, "run")
        assert run.returncode == EX_CONFIG, run.stderr[-2000:]
        assert "edged-export" in error_line(run)


# --- I and the rest of the configuration class ----------------------------------------------------
def test_config_class_failures_exit_78_with_one_line(bundle, data_dir, broker, tmp_path):
    wav = data_dir / "sample" / "sample.wav"
    config = write_config(tmp_path, bundle, broker.port, wav)
    config.write_text(config.read_text() + f"device_id: {DEVICE}\n")  # a key written twice
    run = run_once(config, "run")
    assert run.returncode == EX_CONFIG and "key 'device_id' is written twice" in error_line(run)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = write_config(tmp_path, bundle, broker.port, wav, spool=blocker / "spool")
    run = run_once(config, "run")
    assert run.returncode == EX_CONFIG and "fix spool.path or its permissions" in error_line(run)


def test_daemon_messages_name_the_cause(bundle, data_dir, broker, tmp_path):
    """A password in the YAML, a client-id takeover, the 'device_id: -' override; no onnxruntime banner."""
    config = write_config(tmp_path, bundle, broker.port, data_dir / "sample" / "sample.wav",
                          mqtt={"username": "u", "password": "hunter2-Pw"})
    log = tmp_path / "daemon.log"
    with running(config, log, 1.0) as proc:
        wait_for(lambda: f"connected to mqtt://127.0.0.1:{broker.port}" in log.read_text(), TIMEOUT, what="connect")
        other = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"edged-{DEVICE}", protocol=paho.MQTTv5)
        other.connect("127.0.0.1", broker.port)
        other.loop_start()
        wait_for(lambda: "another client connected with client id" in log.read_text(), 60, what="takeover line")
        other.disconnect()
        other.loop_stop()
        text = stop(proc, log)
    assert "mqtt.password is written in the config file; move it to mqtt.password_file" in text
    assert "hunter2-Pw" not in text and "Unspecified error" not in text
    assert "give each device its own device_id or mqtt.client_id" in text
    assert not [line for line in text.splitlines() if not line.startswith("edged: ")], text[-3000:]
    dash = run_once(config, "config", "--set", "device_id=-")
    assert dash.returncode == 0 and "device_id: '-'" in dash.stdout


# --- scripts/arm64/run.sh: a cached root left broken by an interrupted apt-get ------------------------
def _root_damage(root: Path, key: str) -> str:
    common = REPO / "scripts" / "arm64" / "common.sh"
    proc = subprocess.run(["bash", "-c", f'. "{common}"; root_damage "$1" "$2"', "-", str(root), key],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_arm64_cached_root_is_rebuilt_when_dpkg_was_interrupted(tmp_path):
    """The check run.sh makes before reusing the cached root, on a root's dpkg files (no qemu needed)."""
    root = tmp_path / "root"
    for f in ("usr/bin/dpkg", "usr/bin/apt-get", "bin/bash"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("")
    dpkg = root / "var" / "lib" / "dpkg"
    (dpkg / "updates").mkdir(parents=True)
    (dpkg / "info").mkdir()
    package = "Package: {name}\nStatus: install ok {state}\nPriority: optional\nSection: misc\n" \
              "Maintainer: x <x@example.org>\nArchitecture: arm64\nVersion: 1.0\nDescription: x\n\n"
    (dpkg / "status").write_text(package.format(name="libc6", state="installed"))
    (root / ".edged-arm64-root").write_text("key-1\n")
    assert _root_damage(root, "key-1") == ""
    assert _root_damage(root, "key-2") == "built from another key"
    (dpkg / "updates" / "0001").write_text("")  # apt-get killed by ENOSPC while dpkg ran
    assert _root_damage(root, "key-1") == "dpkg was interrupted (pending entries in /var/lib/dpkg/updates)"
    (dpkg / "updates" / "0001").unlink()
    (dpkg / "status").write_text(package.format(name="libc6", state="installed")
                                 + package.format(name="python3", state="half-configured"))
    assert _root_damage(root, "key-1") == "dpkg left packages unfinished: python3 (half-configured)"
    (root / ".edged-arm64-root").unlink()
    assert _root_damage(root, "key-1") == "no build stamp (an interrupted build)"
