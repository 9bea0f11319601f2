"""``edged listen``: subscribe to a device's topics and print speaker turns as they arrive.

A subscriber for demos and checks; it also measures how long after the end of a turn (wall
clock) its message arrived, the end-to-end latency from audio to MQTT.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from edged.errors import EdgedError


@dataclass
class Listened:
    """What a listener received."""

    turns: list[dict[str, Any]] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    status: list[str] = field(default_factory=list)

    def summary(self) -> str:
        seqs = [t.get("seq") for t in self.turns]
        dup = len(seqs) - len(set(seqs))
        text = f"{len(self.turns)} turns ({dup} duplicates)"
        if self.latencies_s:
            lat = sorted(self.latencies_s)
            p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
            text += f", latency after turn end: median {statistics.median(lat):.2f} s, p95 {p95:.2f} s"
        return text


def listen(host: str, port: int, prefix: str, count: int | None = None, timeout: float | None = None,
           out: TextIO = sys.stdout, as_json: bool = False, until_offline: bool = False,
           username: str | None = None, password: str | None = None) -> Listened:
    """Print ``turn``/``active``/``status`` messages under ``prefix`` until ``count`` turns arrived,
    ``timeout`` seconds passed, or (``until_offline``) the device said ``offline``."""
    got = Listened()
    done = threading.Event()
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            out.write(f"broker refused the connection: {reason_code}\n")
            done.set()
            return
        client.subscribe(f"{prefix}/#", qos=1)
        connected.set()

    def on_message(client, userdata, msg):
        now = time.time()
        name = msg.topic[len(prefix) + 1:]
        text = msg.payload.decode("utf-8", "replace")
        if as_json:
            out.write(json.dumps({"topic": msg.topic, "retained": bool(msg.retain), "received": round(now, 3),
                                  "payload": _json(text)}) + "\n")
        if name == "turn":
            turn = _json(text)
            if isinstance(turn, dict) and turn.get("type", "turn") == "turn":  # skip edged check's probe
                got.turns.append(turn)
                if isinstance(turn.get("wall_end"), (int, float)) and not msg.retain:
                    got.latencies_s.append(now - turn["wall_end"])
                if not as_json:
                    out.write(f"turn #{turn.get('seq')}: {turn.get('speaker')} {turn.get('start', 0):8.2f} - "
                              f"{turn.get('end', 0):8.2f} s  ({turn.get('duration', 0):.2f} s, confidence "
                              f"{turn.get('confidence', 0):.2f})\n")
            if count is not None and len(got.turns) >= count:
                done.set()
        elif name == "status":
            got.status.append(text)
            if not as_json:
                out.write(f"status: {text}\n")
            if until_offline and text == "offline" and not msg.retain:
                done.set()
        elif name == "active" and not as_json:
            active = _json(text)
            speakers = ", ".join(active.get("speakers", [])) if isinstance(active, dict) else text
            out.write(f"active: {speakers or '(nobody)'}\n")
        out.flush()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise EdgedError(f"cannot reach the MQTT broker at {host}:{port} ({exc}); start it or fix --host/--port") from None
    client.loop_start()
    try:
        done.wait(timeout)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
