"""systemd/edged.service and scripts/install.sh, checked by systemd itself.

- ``systemd-analyze verify`` finds nothing to say about the unit (in a scratch root where the
  unit's executables exist, as they do after install.sh).
- ``systemd-analyze security`` rates its exposure at most 2.5 and the hardening the daemon relies
  on stays in place.
- In a real systemd booted in systemd-nspawn (tests/nspawn): install.sh installs into a fresh
  system, the hardened unit runs a stand-in that probes the sandbox with the real runtime
  libraries (onnxruntime runs the installed bundle under MemoryDenyWriteExecute and the syscall
  filter, MQTT works without AF_NETLINK, the paths that must be read-only are), the notify/
  watchdog/reload/stop protocol works, install.sh is idempotent and keeps the config, and
  uninstall.sh removes what it should. Then the real ``edged run`` under the unit.

The container tests need root (they skip without it, except in CI where they fail) and take
about a minute, most of it pip installing the runtime inside.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "edged.service"
INSTALL = REPO / "scripts" / "install.sh"
UNINSTALL = REPO / "scripts" / "uninstall.sh"
MAX_EXPOSURE = 2.5

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mosquitto import Mosquitto, require, wait_for  # noqa: E402
from nspawn.container import REPO_INSIDE, Container, requirements  # noqa: E402


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, in order (keys may repeat)."""
    entries, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_entries(UNIT.read_text()) if s == section and k == key]


def analyze() -> str:
    return require("systemd-analyze", "systemd")


def verify(unit_text: str, root: Path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify --root`` of ``unit_text`` installed as edged.service in a scratch
    root holding the system's unit files and a stub for every absolute Exec*= binary."""
    units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                  if (p / "sysinit.target").exists()), None)
    assert units is not None, "no systemd unit folder with sysinit.target; install the apt package systemd"
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    for section, key, value in unit_entries(unit_text):
        if key.startswith("Exec") and value:
            binary = value.lstrip("@-:+!").split()[0]
            stub = root / binary.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    dest = root / "etc/systemd/system/edged.service"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(unit_text)
    return subprocess.run([analyze(), "verify", f"--root={root}", "edged.service"],
                          capture_output=True, text=True, timeout=120)


# --- static checks ------------------------------------------------------------------------------
def test_verify_is_clean(tmp_path):
    proc = verify(UNIT.read_text(), tmp_path)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_verify_would_report_a_bad_key(tmp_path):
    """The clean verdict above means something: a misspelt key is reported."""
    proc = verify(UNIT.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"), tmp_path)
    assert "ProtectHomes" in proc.stdout + proc.stderr


def test_security_exposure_at_most_2_5():
    proc = subprocess.run([analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"Overall exposure level for edged\.service: ([0-9.]+)", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_security_keeps_the_hardening_the_daemon_relies_on():
    proc = subprocess.run([analyze(), "security", "--offline=yes", "--json=short", str(UNIT)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    items = {item["name"]: item["set"] for item in json.loads(proc.stdout)}
    required = ["User=/DynamicUser=", "NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateTmp=",
                "MemoryDenyWriteExecute=", "RestrictRealtime=", "RestrictNamespaces=~user",
                "SystemCallArchitectures=", "SystemCallFilter=~@privileged", "RestrictAddressFamilies=~AF_PACKET",
                "RestrictAddressFamilies=~AF_NETLINK", "CapabilityBoundingSet=~CAP_SYS_ADMIN", "ProtectProc=",
                "ProtectKernelTunables=", "ProtectKernelModules=", "ProtectControlGroups=", "ProtectClock=",
                "LockPersonality=", "RestrictSUIDSGID=", "UMask=", "NotifyAccess=", "PrivateUsers="]
    missing = [name for name in required if items.get(name) is not True]
    assert not missing, f"hardening lost: {missing}"


def test_unit_speaks_the_daemon_contract():
    """What the daemon and install.sh rely on (sd_notify, paths, user, device access)."""
    def one(key: str) -> str:
        values = unit_values(key)
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert one("ExecStart") == "/opt/edged/venv/bin/edged run --config /etc/edged/config.yaml"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("KillSignal") == "SIGTERM" and one("Restart") == "on-failure"
    assert one("WatchdogSec").endswith("s") and one("TimeoutStopSec").endswith("s")
    assert one("User") == "edged" and one("SupplementaryGroups") == "audio"
    assert one("StateDirectory") == "edged" and one("ConfigurationDirectory") == "edged"
    # /dev/snd must stay visible: no PrivateDevices, a closed device policy that allows ALSA
    assert one("PrivateDevices") == "no" and one("DevicePolicy") == "closed"
    assert one("DeviceAllow") == "char-alsa rw"
    assert unit_values("WantedBy", "Install") == ["multi-user.target"]


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL])
def test_scripts_parse_and_reject_bad_options(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    helped = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "usage" in helped.stdout
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "--bogus" in bad.stderr, bad.stderr


def test_install_rejects_a_folder_that_is_not_a_bundle(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("install.sh checks for root first")
    proc = subprocess.run(["bash", str(INSTALL), "--models", str(tmp_path), "--no-apt"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "is not a model bundle (no manifest.json)" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# --- in a booted systemd ------------------------------------------------------------------------
STANDIN_DROPIN = """[Service]
ExecStart=
ExecStart=/opt/edged/venv/bin/python /opt/edged/standin.py --config /etc/edged/config.yaml
WatchdogSec=4s
"""


def _need_container() -> None:
    problems = requirements()
    if problems:
        message = "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Device:
    """The booted container after install.sh, and the broker it publishes to."""

    def __init__(self, container: Container, broker: Mosquitto, install_seconds: float):
        self.c = container
        self.broker = broker
        self.install_seconds = install_seconds

    def config(self, **sections: object) -> str:
        import yaml

        data = {"device_id": "nspawn-test", "mqtt": {"host": "127.0.0.1", "port": self.broker.port}}
        data.update(sections)
        return yaml.safe_dump(data, sort_keys=False)

    def active(self) -> dict[str, str]:
        return self.c.show("edged.service", "ActiveState", "SubState", "MainPID", "NRestarts", "Result",
                           "ExecMainStatus", "StatusText")

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- journal ---\n{self.c.journal('edged.service')}")


@pytest.fixture(scope="module")
def device(tmp_path_factory, bundle):
    _need_container()
    broker = Mosquitto(tmp_path_factory.mktemp("broker"), persistence=False).start()
    container = Container(repo=REPO)
    try:
        container.start()
        shutil.copytree(bundle, container.path("/root/bundle"))
        dev = Device(container, broker, 0.0)
        container.path("/root/edged-test.yaml").write_text(dev.config())
        started = time.monotonic()
        container.run("bash", f"{REPO_INSIDE}/scripts/install.sh", "--models", "/root/bundle",
                      "--config", "/root/edged-test.yaml", timeout=900)
        dev.install_seconds = time.monotonic() - started
        print(f"nspawn: booted in {container.boot_seconds:.1f} s, install.sh took {dev.install_seconds:.1f} s")
        yield dev
    finally:
        container.stop()
        broker.stop()


def retained(broker: Mosquitto, topic: str, timeout: float = 30.0) -> str | None:
    """The retained message on ``topic`` (None when there is none)."""
    import paho.mqtt.client as mqtt

    got: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
    client.on_message = lambda c, u, m: got.append(m.payload.decode())
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # a retained message arrives right after SUBACK; give stragglers a moment
    finally:
        client.loop_stop()
        client.disconnect()
    return got[-1] if got else None


def test_install_result_on_a_fresh_system(device):
    c = device.c
    assert c.run("systemctl", "is-enabled", "edged.service").stdout.strip() == "enabled"
    ids = c.run("id", "-nG", "edged").stdout.split()
    assert "audio" in ids and "edged" in ids
    assert c.run("getent", "passwd", "edged").stdout.split(":")[5:7] == ["/var/lib/edged", "/usr/sbin/nologin\n"]
    stat = c.run("stat", "-c", "%U:%G %a", "/etc/edged", "/etc/edged/config.yaml", "/var/lib/edged",
                 "/var/lib/edged/models", "/var/lib/edged/models/manifest.json").stdout.split("\n")
    assert stat[:5] == ["root:edged 750", "root:edged 640", "edged:edged 750", "root:edged 750", "root:edged 640"]
    pip_list = c.run("/opt/edged/venv/bin/python", "-m", "pip", "list", "--disable-pip-version-check").stdout.lower()
    assert "onnxruntime" in pip_list and "pyaudio" in pip_list
    assert "torch" not in pip_list, "the edge venv must not contain torch"
    verified = c.run("systemd-analyze", "verify", "/etc/systemd/system/edged.service", check=False)
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), verified.stdout + verified.stderr


def test_hardened_unit_runs_the_runtime_and_speaks_sd_notify(device):
    """A stand-in for the daemon under the real unit (a drop-in swaps ExecStart and shortens the
    watchdog): every sandbox probe, then reload, watchdog restart and stop."""
    c = device.c
    shutil.copy(REPO / "tests/nspawn/standin.py", c.path("/opt/edged/standin.py"))
    c.path("/opt/edged/standin.py").chmod(0o644)
    c.sh("rm -f /dev/edged-probe-*; mknod -m 0660 /dev/edged-probe-audio c 1 3; chgrp audio /dev/edged-probe-audio;"
         " mknod -m 0660 /dev/edged-probe-root c 1 3")
    dropin = c.path("/etc/systemd/system/edged.service.d/standin.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(STANDIN_DROPIN)
    report_path = c.path("/var/lib/edged/standin.json")
    try:
        c.run("systemctl", "daemon-reload")
        start = c.run("systemctl", "start", "edged.service", check=False, timeout=300)
        if start.returncode != 0:
            device.fail(f"systemctl start failed: {start.stderr}")
        state = device.active()
        assert (state["ActiveState"], state["SubState"], state["StatusText"]) == ("active", "running", "stand-in running")
        report = json.loads(report_path.read_text())
        checks = report["checks"]

        def ok(name: str):
            assert checks[name]["ok"], f"{name}: {checks[name]}"
            return checks[name]["value"]

        def denied(name: str, *errnos: int) -> None:
            assert not checks[name]["ok"] and checks[name]["errno"] in errnos, f"{name}: {checks[name]}"

        assert ok("user") == "edged"
        ok("read_config")
        ok("audio_device")  # SupplementaryGroups=audio opens root:audio 0660 device nodes under PrivateUsers=
        denied("root_device", 13)
        ok("write_spool")
        ok("write_tmp")
        assert ok("umask") == "0o77"
        assert ok("getaddrinfo") == ["127.0.0.1"]
        assert ok("proc_self") > 10 and ok("proc_cpuinfo") > 0  # onnxruntime's cpuinfo reads /proc/cpuinfo
        assert ok("portaudio") >= 0
        shapes = ok("models")
        assert shapes["segmentation.int8.onnx"][0][2] == 3 and shapes["embedding.int8.onnx"][0][2] == 192
        assert ok("mqtt") == "edged/nspawn-test/status"
        denied("write_etc", 13, 30)
        denied("write_opt", 13, 30)
        denied("write_models", 13, 30)
        denied("list_home", 13, 2)
        denied("list_root", 13, 2)
        denied("proc_pid1", 2)           # ProtectProc=invisible
        denied("realtime", 1)            # RestrictRealtime=
        denied("wx_mmap", 1)             # MemoryDenyWriteExecute=
        denied("netlink_socket", 97)     # RestrictAddressFamilies=
        assert retained(device.broker, "edged/nspawn-test/status") == "online"

        pid = state["MainPID"]
        c.run("systemctl", "reload", "edged.service", timeout=60)
        wait_for(lambda: json.loads(report_path.read_text()).get("reloads") == 1, 30, 0.1, "the reload")
        assert device.active()["MainPID"] == pid and device.active()["ActiveState"] == "active"

        # a hung main loop: no more WATCHDOG=1 -> SIGABRT, Restart=on-failure starts it again
        c.run("systemctl", "kill", "--signal=SIGUSR1", "--kill-whom=main", "edged.service")
        wait_for(lambda: (s := device.active())["NRestarts"] == "1" and s["ActiveState"] == "active"
                 and s["MainPID"] not in ("0", pid), 120, 0.2, "the watchdog restart")
        assert "Watchdog timeout" in c.journal("edged.service", 200)

        stopped = time.monotonic()
        c.run("systemctl", "stop", "edged.service", timeout=120)
        assert time.monotonic() - stopped < 20
        state = device.active()
        assert (state["ActiveState"], state["Result"], state["ExecMainStatus"]) == ("inactive", "success", "0")
        assert json.loads(report_path.read_text())["stopped"] is True
        assert retained(device.broker, "edged/nspawn-test/status") == "offline"
    finally:
        c.run("systemctl", "stop", "edged.service", check=False, timeout=120)
        dropin.unlink(missing_ok=True)
        report_path.unlink(missing_ok=True)
        c.run("systemctl", "daemon-reload", check=False)
        c.run("systemctl", "reset-failed", "edged.service", check=False)


def test_real_daemon_under_the_unit(device, data_dir):
    """``edged run`` itself under the hardened unit: READY=1, online, a turn on MQTT from a
    replayed recording, reload, a clean stop with offline."""
    c = device.c
    shutil.copy(data_dir / "sample" / "sample.wav", c.path("/var/lib/edged/sample.wav"))
    c.run("chown", "root:edged", "/var/lib/edged/sample.wav")
    c.path("/var/lib/edged/sample.wav").chmod(0o640)
    c.path("/etc/edged/config.yaml").write_text(
        device.config(audio={"source": "file", "file": "/var/lib/edged/sample.wav"}))
    # a short watchdog, so the run below proves the processing loop pings it
    dropin = c.path("/etc/systemd/system/edged.service.d/test-watchdog.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nWatchdogSec=8s\n")
    c.run("systemctl", "daemon-reload")
    import paho.mqtt.client as mqtt

    turns: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nspawn-turns")
    client.on_message = lambda cl, u, m: turns.append(json.loads(m.payload))
    client.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe("edged/nspawn-test/turn", qos=1)
    client.connect("127.0.0.1", device.broker.port)
    client.loop_start()
    try:
        start = c.run("systemctl", "start", "edged.service", check=False, timeout=300)
        if start.returncode != 0:
            device.fail(f"systemctl start edged failed: {start.stderr}")
        assert device.active()["ActiveState"] == "active"
        assert retained(device.broker, "edged/nspawn-test/status") == "online"
        pid = device.active()["MainPID"]
        invocation = c.show("edged.service", "InvocationID")["InvocationID"]
        c.run("systemctl", "reload", "edged.service", timeout=60)
        assert device.active()["MainPID"] == pid
        wait_for(lambda: turns, 120, 0.2, "a speaker turn on MQTT")
        assert {"speaker", "start", "end", "seq", "device_id"} <= set(turns[0])
        c.run("systemctl", "stop", "edged.service", timeout=120)
        state = device.active()
        assert (state["ActiveState"], state["Result"], state["NRestarts"]) == ("inactive", "success", "0"), \
            device.c.journal("edged.service")
        assert retained(device.broker, "edged/nspawn-test/status") == "offline"
        journal = c.run("journalctl", "--no-pager", f"_SYSTEMD_INVOCATION_ID={invocation}").stdout
        assert journal.strip(), "no journal lines for the daemon's invocation"
        assert "Traceback" not in journal and "cpuinfo" not in journal, journal
    finally:
        client.loop_stop()
        client.disconnect()
        c.run("systemctl", "stop", "edged.service", check=False, timeout=120)
        dropin.unlink(missing_ok=True)
        c.run("systemctl", "daemon-reload", check=False)
        c.run("systemctl", "reset-failed", "edged.service", check=False)


def test_sigkill_under_systemd_restarts_and_the_spool_drains(device, data_dir, tmp_path):
    """Broker down, turns spooled, the daemon SIGKILLed: systemd restarts it and, once the broker
    is back, every spooled turn arrives (a persistent subscriber session keeps what it missed)."""
    import paho.mqtt.client as mqtt

    c = device.c
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    shutil.copy(data_dir / "sample" / "sample.wav", c.path("/var/lib/edged/sample.wav"))
    c.run("chown", "root:edged", "/var/lib/edged/sample.wav")
    c.path("/var/lib/edged/sample.wav").chmod(0o640)
    events = c.path("/var/lib/edged/events.jsonl")
    events.unlink(missing_ok=True)
    c.path("/etc/edged/config.yaml").write_text(device.config(
        audio={"source": "file", "file": "/var/lib/edged/sample.wav"},
        mqtt={"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.5, "reconnect_max_s": 2.0},
        logging={"events_file": "/var/lib/edged/events.jsonl"}))
    c.run("systemctl", "daemon-reload")

    seqs: list[int] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nspawn-spool", clean_session=False,
                         protocol=mqtt.MQTTv311)
    client.on_message = lambda cl, u, m: seqs.append(json.loads(m.payload)["seq"])
    client.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe("edged/nspawn-test/turn", qos=1)
    client.reconnect_delay_set(0.2, 1.0)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()

    def spooled() -> list[int]:
        if not events.exists():
            return []
        return [json.loads(x)["seq"] for x in events.read_text().splitlines() if '"type": "turn"' in x]

    try:
        c.run("systemctl", "start", "edged.service", timeout=300)
        wait_for(lambda: seqs, 120, 0.2, "a first turn on MQTT")
        broker.stop()  # saves the subscriber's session
        seen = len(spooled())
        wait_for(lambda: len(spooled()) >= seen + 2, 120, 0.2, "two turns made while the broker is down")
        before = device.active()
        c.run("systemctl", "kill", "--signal=SIGKILL", "edged.service")
        wait_for(lambda: device.active()["NRestarts"] != before["NRestarts"]
                 and device.active()["ActiveState"] == "active", 120, 0.5, "systemd to restart edged")
        made = spooled()
        broker.start()
        wait_for(lambda: set(made) <= set(seqs), 120, 0.2, f"every spooled turn {made}")
        first = [s for i, s in enumerate(seqs) if s not in seqs[:i]]
        assert first == sorted(first), seqs
        print(f"nspawn SIGKILL: {len(made)} turns made, {len(set(seqs) & set(made))} received, "
              f"{len(seqs) - len(set(seqs))} duplicates; restarts {device.active()['NRestarts']}")
    finally:
        client.loop_stop()
        client.disconnect()
        c.run("systemctl", "stop", "edged.service", check=False, timeout=120)
        c.run("systemctl", "reset-failed", "edged.service", check=False)
        broker.stop()
        c.path("/etc/edged/config.yaml").write_text(device.config())


def test_daemon_captures_from_a_file_backed_alsa_device(device, data_dir):
    """The real capture path under the hardened unit: pyaudio -> PortAudio -> libasound reading an
    ALSA ``type file`` PCM whose input is a FIFO this test fills in real time with a recording."""
    import threading

    import numpy as np
    import paho.mqtt.client as mqtt
    import soundfile as sf

    c = device.c
    fifo, conf = "/var/lib/edged/mic.fifo", "/var/lib/edged/asound.conf"
    c.path(conf).write_text(f"""
pcm.edgedmic {{
    type file
    slave.pcm {{ type null }}
    file "/dev/null"
    infile "{fifo}"
    format "raw"
}}
pcm.default {{
    type null
}}
""")
    c.path(fifo).unlink(missing_ok=True)
    os.mkfifo(c.path(fifo), 0o666)
    os.chmod(c.path(fifo), 0o666)
    c.path(conf).chmod(0o644)
    dropin = c.path("/etc/systemd/system/edged.service.d/test-alsa.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(f"[Service]\nEnvironment=ALSA_CONFIG_PATH={conf}\n")
    c.path("/etc/edged/config.yaml").write_text(device.config(
        audio={"source": "alsa", "device": "edgedmic", "rate": 16000, "channels": 1, "block_ms": 100}))
    c.run("systemctl", "daemon-reload")

    audio, rate = sf.read(data_dir / "sample" / "sample.wav", dtype="int16")
    assert rate == 16000 and audio.ndim == 1
    fd = os.open(c.path(fifo), os.O_RDWR | os.O_NONBLOCK)
    stop = threading.Event()

    def play() -> None:  # 100 ms blocks, each written when its last sample is due, then silence
        t0, i, frames = time.monotonic(), 0, 1600
        while not stop.wait(max(0.0, t0 + (i + 1) * frames / rate - time.monotonic())):
            block = audio[i * frames:(i + 1) * frames]
            data = np.pad(block, (0, frames - len(block))).astype("<i2").tobytes()
            while data and not stop.is_set():
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    time.sleep(0.01)
            i += 1

    turns: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nspawn-alsa")
    client.on_message = lambda cl, u, m: turns.append(json.loads(m.payload))
    client.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe("edged/nspawn-test/turn", qos=1)
    client.connect("127.0.0.1", device.broker.port)
    client.loop_start()
    player = threading.Thread(target=play, daemon=True)
    player.start()
    try:
        start = c.run("systemctl", "start", "edged.service", check=False, timeout=300)
        if start.returncode != 0:
            device.fail(f"systemctl start edged failed: {start.stderr}")
        wait_for(lambda: len(turns) >= 2, 120, 0.2, "two speaker turns from the ALSA device")
        assert {t["speaker"] for t in turns} <= {"speaker_0", "speaker_1", "speaker_2"}
        journal = c.journal("edged.service")
        assert "edgedmic" in journal and "Traceback" not in journal, journal
        c.run("systemctl", "stop", "edged.service", timeout=120)
        assert device.active()["Result"] == "success"
    finally:
        stop.set()
        player.join(5)
        os.close(fd)
        client.loop_stop()
        client.disconnect()
        c.run("systemctl", "stop", "edged.service", check=False, timeout=120)
        dropin.unlink(missing_ok=True)
        c.run("systemctl", "daemon-reload", check=False)
        c.run("systemctl", "reset-failed", "edged.service", check=False)
        c.path("/etc/edged/config.yaml").write_text(device.config())


def test_install_again_keeps_the_config_then_uninstall(device):
    c = device.c
    c.path("/etc/edged/config.yaml").write_text(device.config() + "# edited on the device\n")
    c.run("bash", f"{REPO_INSIDE}/scripts/install.sh", "--models", "/root/bundle", "--no-apt", timeout=900)
    assert c.path("/etc/edged/config.yaml").read_text().endswith("# edited on the device\n")
    assert c.run("systemctl", "is-enabled", "edged.service").stdout.strip() == "enabled"

    c.run("bash", f"{REPO_INSIDE}/scripts/uninstall.sh", timeout=120)
    assert not c.path("/opt/edged").exists() and not c.path("/var/lib/edged/models").exists()
    assert not c.path("/etc/systemd/system/edged.service").exists()
    assert c.path("/etc/edged/config.yaml").exists() and c.path("/var/lib/edged").is_dir()
    assert c.run("systemctl", "is-enabled", "edged.service", check=False).returncode != 0
    assert c.run("id", "edged", check=False).returncode == 0

    c.run("bash", f"{REPO_INSIDE}/scripts/uninstall.sh", "--purge", timeout=120)
    assert not c.path("/etc/edged").exists() and not c.path("/var/lib/edged").exists()
    assert c.run("id", "edged", check=False).returncode != 0
