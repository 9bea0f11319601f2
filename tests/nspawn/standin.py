"""Stand-in for ``edged run`` that probes the sandbox of systemd/edged.service from inside it.

Runs under the real unit (a drop-in only replaces ExecStart), with the real libraries of
/opt/edged/venv: loads the installed model bundle with onnxruntime and runs it, connects to the
MQTT broker named in the config, then speaks the daemon's systemd protocol (READY=1, WATCHDOG=1,
SIGHUP reload, SIGTERM stop with STOPPING=1). Every probe's outcome goes to
/var/lib/edged/standin.json for the test to assert on. Stdlib + numpy/onnxruntime/paho/yaml only.

SIGUSR1 stops the watchdog pings (the test expects systemd to kill and restart the service).
"""

from __future__ import annotations

import grp
import json
import mmap
import os
import pwd
import signal
import socket
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("STATE_DIRECTORY", "/var/lib/edged"))
REPORT = STATE / "standin.json"
report: dict = {"pid": os.getpid(), "starts": 0, "reloads": 0, "checks": {}}


def check(name: str, func) -> None:
    """Record ``ok`` / the exception of one probe (probes never abort the stand-in)."""
    try:
        value = func()
        report["checks"][name] = {"ok": True, "value": value}
    except BaseException as exc:  # noqa: BLE001 - a probe's failure is data
        report["checks"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                  "errno": getattr(exc, "errno", None)}


def save() -> None:
    tmp = REPORT.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, REPORT)


def notify(*fields: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto("\n".join(fields).encode(), address)


def write_probe(path: str) -> str:
    with open(path, "w") as f:
        f.write("x")
    os.unlink(path)
    return "written"


def run_models(folder: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    sizes = {"batch": 1, "samples": 80000, "frames": 200, "speakers": 3}
    out = {}
    for path in sorted(folder.glob("*.int8.onnx")):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {}
        for item in session.get_inputs():
            shape = [d if isinstance(d, int) else sizes.get(d, 1) for d in item.shape]
            feed[item.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1
        result = session.run(None, feed)
        out[path.name] = [list(r.shape) for r in result]
    if not out:
        raise FileNotFoundError(f"no *.int8.onnx in {folder}")
    return out


def portaudio_devices() -> int:
    """PortAudio + alsa-lib initialise and enumerate (no sound card on a test machine: 0 devices)."""
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        return pa.get_device_count()
    finally:
        pa.terminate()


def mqtt_connect(config: dict):
    import paho.mqtt.client as mqtt

    section = config.get("mqtt") or {}
    host, port = section.get("host", "localhost"), int(section.get("port", 1883))
    topic = f"{section.get('topic_prefix') or 'edged/' + str(config.get('device_id', 'standin'))}/status"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"standin-{os.getpid()}")
    client.will_set(topic, "offline", qos=1, retain=True)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    client.publish(topic, "online", qos=1, retain=True).wait_for_publish(10)
    return client, topic


def main() -> int:
    config_path = Path(sys.argv[sys.argv.index("--config") + 1]) if "--config" in sys.argv else Path("/etc/edged/config.yaml")
    previous = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    report["starts"] = previous.get("starts", 0) + 1
    report["pids"] = previous.get("pids", []) + [os.getpid()]
    stop = {"term": False, "hup": 0, "watchdog": True}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(term=True))
    signal.signal(signal.SIGHUP, lambda *_: stop.update(hup=stop["hup"] + 1))
    signal.signal(signal.SIGUSR1, lambda *_: stop.update(watchdog=False))

    import yaml

    config: dict = {}

    def read_config() -> str:
        config.update(yaml.safe_load(config_path.read_text()) or {})
        return str(config_path)

    check("user", lambda: pwd.getpwuid(os.getuid()).pw_name)
    check("read_config", read_config)
    # device nodes (made by the test) of /dev/null's numbers: one root:audio 0660, one root:root 0660
    check("audio_device", lambda: open("/dev/edged-probe-audio", "rb").close())
    check("root_device", lambda: open("/dev/edged-probe-root", "rb").close())
    check("write_spool", lambda: write_probe(str(STATE / "spool-probe")))
    check("write_tmp", lambda: write_probe("/tmp/edged-probe"))
    check("write_etc", lambda: write_probe("/etc/edged/probe"))
    check("write_opt", lambda: write_probe("/opt/edged/probe"))
    check("write_models", lambda: write_probe(str(STATE / "models" / "probe")))
    check("list_home", lambda: os.listdir("/home"))
    check("list_root", lambda: os.listdir("/root"))
    check("proc_pid1", lambda: Path("/proc/1/comm").read_text().strip())
    check("proc_cpuinfo", lambda: len(Path("/proc/cpuinfo").read_text()))
    check("proc_self", lambda: Path("/proc/self/status").read_text().count("\n"))
    check("umask", lambda: oct(os.umask(0o077)))
    check("realtime", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10)))
    check("wx_mmap", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close())
    check("netlink_socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
    check("getaddrinfo", lambda: sorted({a[4][0] for a in socket.getaddrinfo("localhost", 1883, type=socket.SOCK_STREAM)}))
    check("audio_gid_in_groups", lambda: grp.getgrnam("audio").gr_gid in os.getgroups())
    check("portaudio", portaudio_devices)
    check("models", lambda: run_models(Path((config.get("models") or {}).get("path", STATE / "models"))))
    client = None

    def connect() -> str:
        nonlocal client
        client, topic = mqtt_connect(config)
        return topic

    check("mqtt", connect)
    save()

    notify("READY=1", "STATUS=stand-in running")
    while not stop["term"]:
        if stop["hup"] != report["reloads"]:
            report["reloads"] = stop["hup"]
            check("reload_config", read_config)
            save()
        if stop["watchdog"]:
            notify("WATCHDOG=1")
        time.sleep(0.2)
    notify("STOPPING=1")
    if client is not None:
        topic = report["checks"]["mqtt"]["value"]
        client.publish(topic, "offline", qos=1, retain=True).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
    report["stopped"] = True
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
