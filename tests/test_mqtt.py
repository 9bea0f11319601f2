"""The MQTT publisher against a real mosquitto: at-least-once turns in seq order across broker
outages, broker restarts and a SIGKILLed publisher; status/LWT, retained active, stats, Home
Assistant discovery, TLS with a client certificate, password logins, MQTT 3.1.1 fallback."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edged.errors import ConfigError, EdgedError
from edged.delivery.mqtt import MqttConfig, MqttPublisher, check_broker, discovery, resolve_password
from edged.settings import build
from edged.delivery.spool import HEADER, Spool, SpoolConfig, scan_records
from mosquitto import Mosquitto, V311OnlyProxy, wait_for

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "edged", "pa55-word-s3cret"
TIMEOUT = 60.0  # generous: a loaded 2-core machine


# --- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def secure_broker(tmp_path):
    b = Mosquitto(tmp_path / "secure-broker", users={USER: PASSWORD, "reader": "reader-pw"}, tls=True).start()
    yield b
    b.stop()


@pytest.fixture
def spool(tmp_path):
    s = Spool(SpoolConfig(path=tmp_path / "spool"))
    yield s
    s.close()


def config_for(broker: Mosquitto, **kw) -> MqttConfig:
    base = dict(host="127.0.0.1", port=broker.port, keepalive=5, reconnect_min_s=0.1, reconnect_max_s=0.5)
    return MqttConfig(**{**base, **kw})


class Subscriber:
    """A QoS 1 subscriber with a persistent session (clean_session false, fixed id) that
    reconnects by itself; keeps every message in arrival order."""

    def __init__(self, port: int, topics: list[str], client_id: str = "test-subscriber",
                 username: str | None = None, password: str | None = None):
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.topics = topics
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=paho.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "subscriber did not connect"

    def _on_connect(self, client, userdata, flags, reason, properties):
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])
            self.connected.set()

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append(message)

    def on(self, topic: str) -> list[paho.MQTTMessage]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def turns(self, topic: str) -> list[dict]:
        return [json.loads(m.payload) for m in self.on(topic)]

    def texts(self, topic: str) -> list[str]:
        return [m.payload.decode() for m in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def subscribe_once(port: int, topics: list[str], count: int, **kw) -> list[paho.MQTTMessage]:
    """A fresh clean-session subscriber: the first ``count`` messages (e.g. retained ones)."""
    sub = Subscriber(port, topics, client_id=f"probe-{time.monotonic_ns()}", **kw)
    try:
        wait_for(lambda: len(sub.messages) >= count, TIMEOUT, what=f"{count} message(s) on {topics}")
        return list(sub.messages)
    finally:
        sub.close()


def retained(port: int, topic: str) -> paho.MQTTMessage | None:
    """The retained message on ``topic`` as a new subscriber gets it (None: none yet, or only live)."""
    message = subscribe_once(port, [topic], 1)[0]
    return message if message.retain else None


def tally(sent: set[int], messages: list[paho.MQTTMessage], allowed_extra: set[int] = frozenset()) -> dict:
    """Delivery figures: every sent seq received, new seqs in order, duplicates counted by cause
    (the broker re-delivering to the subscriber sets DUP; a publisher re-send arrives without it)."""
    seqs = [json.loads(m.payload)["seq"] for m in messages]
    firsts = list(dict.fromkeys(seqs))
    seen: set[int] = set()
    redelivered = resent = 0
    for message, seq in zip(messages, seqs):
        if seq in seen:
            redelivered += bool(message.dup)
            resent += not message.dup
        seen.add(seq)
    figures = {"sent": len(sent), "received": len(seqs), "unique": len(firsts), "duplicated": len(seqs) - len(firsts),
               "dup_broker_redelivery": redelivered, "dup_publisher_resend": resent}
    assert not sent - set(seqs), f"turns lost: {sorted(sent - set(seqs))[:20]} ({figures})"
    assert set(seqs) - sent <= allowed_extra, f"unexpected seqs {sorted(set(seqs) - sent)}"
    assert firsts == sorted(firsts), f"turns out of seq order: {firsts}"
    return figures


def turn(k: int) -> dict:
    return {"type": "turn", "speaker": f"speaker_{k % 2}", "start": float(k), "end": k + 0.8,
            "duration": 0.8, "confidence": 0.9, "stream_seq": k, "device_id": "dev", "k": k}


@pytest.fixture
def started(broker, spool):
    """A subscriber on edged/dev/# and a started, connected publisher for device "dev"."""
    sub = Subscriber(broker.port, ["edged/dev/#"])
    pub = MqttPublisher(config_for(broker), "dev", spool)
    pub.start()
    wait_for(lambda: pub.connected, TIMEOUT, what="publisher connected")
    yield broker, sub, pub
    pub.stop()
    sub.close()


# --- delivery across outages ------------------------------------------------------------------
def test_broker_down_for_a_while_then_up(started, spool):
    broker, sub, pub = started
    sent = {pub.publish_turn(turn(k)) for k in range(20)}
    wait_for(lambda: len(sub.turns("edged/dev/turn")) >= 20, TIMEOUT, what="20 turns before the outage")
    broker.stop()
    wait_for(lambda: not pub.connected, TIMEOUT, what="publisher noticing the outage")
    down = time.monotonic()
    sent |= {pub.publish_turn(turn(k)) for k in range(20, 50)}  # during the outage: spooled, not blocked
    assert time.monotonic() - down < 5
    assert spool.depth >= 30
    time.sleep(1.5)  # the outage lasts: several failed reconnect attempts (not a correctness wait)
    assert not pub.connected
    broker.start()
    wait_for(lambda: pub.connected, TIMEOUT, what="publisher reconnecting")
    sent |= {pub.publish_turn(turn(k)) for k in range(50, 70)}
    wait_for(lambda: sent <= {t["seq"] for t in sub.turns("edged/dev/turn")}, TIMEOUT, what="all turns")
    wait_for(lambda: spool.depth == 0, TIMEOUT, what="spool acknowledged")
    figures = tally(sent, sub.on("edged/dev/turn"))
    assert sorted(sent) == list(range(1, 71))
    assert pub.reconnects >= 1
    print(f"\nbroker down (30 turns during the outage): {figures}, reconnects {pub.reconnects}")


def test_broker_restarted_mid_stream(started, spool):
    broker, sub, pub = started
    sent: set[int] = set()
    halfway = threading.Event()

    def produce():
        for k in range(300):
            sent.add(pub.publish_turn(turn(k)))
            if k == 100:
                halfway.set()
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    assert halfway.wait(TIMEOUT)
    broker.restart()
    producer.join(TIMEOUT)
    assert len(sent) == 300
    wait_for(lambda: sent <= {t["seq"] for t in sub.turns("edged/dev/turn")}, TIMEOUT, what="all 300 turns")
    wait_for(lambda: spool.depth == 0, TIMEOUT, what="spool acknowledged")
    figures = tally(sent, sub.on("edged/dev/turn"))
    assert pub.reconnects >= 1
    print(f"\nbroker restarted mid-stream (300 turns): {figures}, reconnects {pub.reconnects}")


PUBLISHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edged.delivery.mqtt import MqttConfig, MqttPublisher
    from edged.delivery.spool import Spool, SpoolConfig

    port, path, first, count = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    finish = sys.argv[5] == "finish"
    spool = Spool(SpoolConfig(path=path))
    for r in spool.pending():
        print("pending", r["seq"], r["k"], flush=True)
        first = max(first, r["k"] + 1)
    config = MqttConfig(host="127.0.0.1", port=port, keepalive=5, reconnect_min_s=0.1, reconnect_max_s=0.5)
    pub = MqttPublisher(config, "killme", spool)
    pub.start()
    deadline = time.monotonic() + 60
    while not pub.connected:
        assert time.monotonic() < deadline, "not connected"
        time.sleep(0.01)
    print("connected", flush=True)
    for k in range(first, first + count):
        seq = pub.publish_turn({"type": "turn", "speaker": "speaker_0", "start": k, "end": k + 1, "k": k})
        print("sent", seq, k, time.monotonic(), flush=True)
        time.sleep(0.004)
    if finish:
        deadline = time.monotonic() + 60
        while spool.depth and time.monotonic() < deadline:
            time.sleep(0.02)
        pub.stop()
        print("done", spool.depth, flush=True)
        spool.close()
""")


class Script:
    """The publisher script in a subprocess; its stdout lines collected by a thread."""

    def __init__(self, *args: str, log: Path):
        self.lines: list[list[str]] = []
        self.stderr = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, *args], stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, cwd=REPO)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.endswith("\n"):  # a line cut by the kill is incomplete: ignored
                self.lines.append(line.split())

    def of(self, kind: str) -> list[list[str]]:
        return [line for line in list(self.lines) if line[0] == kind]

    def finish(self, timeout: float = TIMEOUT) -> None:
        self.proc.wait(timeout)
        self.reader.join(timeout)
        self.stderr.close()


def test_publisher_sigkilled_mid_stream_and_restarted(broker, tmp_path):
    topic = "edged/killme/turn"
    sub = Subscriber(broker.port, [topic, "edged/killme/status"])
    spool_path = str(tmp_path / "kill-spool")
    try:
        first = Script(str(broker.port), spool_path, "0", "100000", "run", log=tmp_path / "first.log")
        wait_for(lambda: len(first.of("sent")) >= 150, TIMEOUT, what="150 turns sent")
        # freeze the broker: the next turns are written to the socket but never acknowledged
        broker.pause()
        frozen = time.monotonic() + 0.05  # CLOCK_MONOTONIC is system-wide: comparable with the script's
        after_freeze = lambda: [int(s) for _, s, _, t in first.of("sent") if float(t) > frozen]  # noqa: E731
        wait_for(lambda: len(after_freeze()) >= 30, TIMEOUT, what="30 turns sent to the frozen broker")
        os.kill(first.proc.pid, signal.SIGKILL)
        first.finish()
        broker.resume()  # it now reads what the dead publisher wrote, then its last will
        assert first.proc.returncode == -signal.SIGKILL
        # the broker publishes the last will when the connection dies
        wait_for(lambda: sub.texts("edged/killme/status")[-1:] == ["offline"], TIMEOUT, what="LWT offline")

        sent_first = [(int(s), int(k)) for _, s, k, _ in first.of("sent")]
        last_k = sent_first[-1][1]
        second = Script(str(broker.port), spool_path, str(last_k + 1), "100", "finish", log=tmp_path / "second.log")
        second.finish()
        assert second.proc.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
        assert second.of("done") == [["done", "0"]]
        pending = [(int(s), int(k)) for _, s, k in second.of("pending")]
        # every turn sent while the broker was frozen was never acknowledged: still in the spool
        assert set(after_freeze()) <= {s for s, _ in pending}
        sent_second = [(int(s), int(k)) for _, s, k, _ in second.of("sent")]
        sent = {s for s, _ in sent_first + pending + sent_second}
        wait_for(lambda: sent <= {t["seq"] for t in sub.turns(topic)}, TIMEOUT, what="every sent turn")
        wait_for(lambda: sub.texts("edged/killme/status")[-1:] == ["offline"], TIMEOUT, what="offline at stop")
        # a turn appended just before the kill, before its "sent" line, may arrive without being listed
        figures = tally(sent, sub.on(topic), allowed_extra={sent_first[-1][0] + 1})
        received_k = {t["k"] for t in sub.turns(topic)}
        assert set(range(sent_second[-1][1] + 1)) <= received_k, "a turn index is missing"
        assert min(s for s, _ in sent_second) > max(s for s, _ in sent_first), "seq went backwards"
        statuses = sub.texts("edged/killme/status")
        assert statuses[-3:] == ["offline", "online", "offline"], statuses  # LWT, restart, clean stop
        print(f"\npublisher SIGKILLed after {len(sent_first)} turns (broker frozen), "
              f"{len(pending)} pending at restart, "
              f"{len(sent_second)} more sent: {figures}")
    finally:
        sub.close()


# --- status, active, stats, discovery ---------------------------------------------------------
def test_status_online_retained_active_retained_and_offline_at_stop(broker, spool):
    pub = MqttPublisher(config_for(broker), "dev", spool)
    pub.publish_active({"speakers": ["speaker_0"], "count": 1, "time": 1.0})  # before connecting: kept
    pub.start()
    wait_for(lambda: pub.connected, TIMEOUT, what="publisher connected")
    pub.publish_active({"speakers": ["speaker_0", "speaker_2"], "count": 2, "time": 2.5})
    latest = b'{"speakers":["speaker_0","speaker_2"],"count":2,"time":2.5}'
    wait_for(lambda: (retained(broker.port, "edged/dev/active") or paho.MQTTMessage()).payload == latest,
             TIMEOUT, what="the latest active retained")
    status = wait_for(lambda: retained(broker.port, "edged/dev/status"), TIMEOUT, what="retained status")
    assert status.payload == b"online" and status.qos == 1
    pub.stop()
    assert not pub.connected
    status = wait_for(lambda: retained(broker.port, "edged/dev/status"), TIMEOUT, what="retained status")
    assert status.payload == b"offline"  # published at stop (no last will on a clean disconnect)


def test_stats_carry_the_publisher_figures(started, spool):
    broker, sub, pub = started
    pub.publish_turn(turn(0))
    wait_for(lambda: spool.depth == 0, TIMEOUT, what="turn acknowledged")
    pub.publish_stats({"device_id": "dev", "uptime_s": 1.5})
    wait_for(lambda: sub.on("edged/dev/stats"), TIMEOUT, what="stats")
    stats = sub.turns("edged/dev/stats")[0]
    assert stats == {"device_id": "dev", "uptime_s": 1.5, "reconnects": 0, "mqtt_protocol": "5",
                     "turns_delivered": 1, "spool_depth": 0, "spool_dropped": 0, "spool_dropped_full": 0,
                     "spool_dropped_nospace": 0, "spool_corrupt": 0, "rejected": 0}
    assert not sub.on("edged/dev/stats")[0].retain
    pub.publish_stats({"final": True})  # the daemon's last stats right before stop: still sent
    pub.stop()
    wait_for(lambda: len(sub.on("edged/dev/stats")) == 2, TIMEOUT, what="the final stats")
    assert sub.turns("edged/dev/stats")[1]["final"] is True


def test_home_assistant_device_discovery(broker, spool):
    pub = MqttPublisher(config_for(broker, homeassistant=True), "dev", spool)
    pub.start()
    try:
        message = wait_for(lambda: retained(broker.port, "homeassistant/device/edged_dev/config"), TIMEOUT,
                           what="retained discovery config")
    finally:
        pub.stop()
    config = json.loads(message.payload)
    assert config == discovery(config_for(broker, homeassistant=True), "dev")[1]
    assert config["availability_topic"] == "edged/dev/status"
    assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    assert config["device"]["identifiers"] == ["edged_dev"] and config["origin"]["name"] == "edged"
    components = config["components"]
    assert set(components) == {"edged_dev_speaker", "edged_dev_speakers_count", "edged_dev_last_speaker",
                               "edged_dev_reconnects", "edged_dev_spool_depth", "edged_dev_problems"}
    for key, component in components.items():
        assert component["platform"] == "sensor" and component["unique_id"] == key
    speaker, count = components["edged_dev_speaker"], components["edged_dev_speakers_count"]
    assert speaker["state_topic"] == count["state_topic"] == "edged/dev/active"
    # the templates render the daemon's payloads (HA templates are Jinja2)
    import jinja2  # installed with the default extras (a torch dependency)

    env = jinja2.Environment()
    two = {"speakers": ["speaker_0", "speaker_2"], "count": 2}
    render = lambda c, value: env.from_string(c["value_template"]).render(value_json=value)  # noqa: E731
    assert render(speaker, two) == "speaker_0, speaker_2" and render(count, two) == "2"
    assert render(speaker, {"speakers": []}) == "none" and render(count, {"speakers": []}) == "0"
    problems = components["edged_dev_problems"]
    assert problems["state_topic"] == "edged/dev/health"
    assert render(problems, {"ok": True, "problems": []}) == "none"
    assert render(problems, {"ok": False, "problems": ["a", "b"]}) == "a; b"


# --- protocol -----------------------------------------------------------------------------------
def _connected_protocol_in_log(broker: Mosquitto, client_id: str) -> str:
    """mosquitto logs ``New client connected ... as <id> (p2, ...)``: p2 is 3.1.1, p5 is 5."""
    lines = [line for line in broker.log_tail(200000).splitlines() if f" as {client_id} (p" in line]
    return lines[-1].split(f" as {client_id} (p")[1][0]


@pytest.mark.parametrize("protocol, expected", [("auto", "5"), ("5", "5"), ("3.1.1", "3.1.1")])
def test_protocol_choice(broker, spool, protocol, expected):
    sub = Subscriber(broker.port, ["edged/dev/turn"])
    pub = MqttPublisher(config_for(broker, protocol=protocol), "dev", spool)
    pub.start()
    try:
        seq = pub.publish_turn(turn(1))
        wait_for(lambda: sub.turns("edged/dev/turn"), TIMEOUT, what="the turn")
        assert sub.turns("edged/dev/turn")[0]["seq"] == seq
        assert pub.protocol == expected
        wait_for(lambda: broker.log_tail(200000).count(" as edged-dev (p") >= 1, TIMEOUT, what="log line")
        assert _connected_protocol_in_log(broker, "edged-dev") == {"5": "5", "3.1.1": "2"}[expected]
        assert check_broker(config_for(broker, protocol=protocol), "dev").endswith(
            f"(MQTT {expected}) and a probe on edged/dev/turn")
    finally:
        pub.stop()
        sub.close()


def test_auto_falls_back_to_3_1_1_when_the_broker_refuses_5(broker, spool):
    proxy = V311OnlyProxy(broker.port)  # answers an MQTT 5 CONNECT like a 3.1.1-only broker
    sub = Subscriber(broker.port, ["edged/dev/turn"])
    pub = MqttPublisher(config_for(broker, port=proxy.port), "dev", spool)
    try:
        pub.start()
        wait_for(lambda: pub.connected, TIMEOUT, what="connected after the fallback")
        assert pub.protocol == "3.1.1" and proxy.refused_v5 >= 1 and pub.reconnects == 0
        seq = pub.publish_turn(turn(1))
        wait_for(lambda: sub.turns("edged/dev/turn"), TIMEOUT, what="the turn through the proxy")
        assert sub.turns("edged/dev/turn")[0]["seq"] == seq
        assert _connected_protocol_in_log(broker, "edged-dev") == "2"
        assert check_broker(config_for(broker, port=proxy.port), "dev").endswith("(MQTT 3.1.1) and a probe on edged/dev/turn")
        with pytest.raises(EdgedError, match="does not support MQTT 5; set mqtt.protocol to 3.1.1"):
            check_broker(config_for(broker, port=proxy.port, protocol="5"), "dev")
    finally:
        pub.stop()
        sub.close()
        proxy.close()


# --- spool integration ------------------------------------------------------------------------
def test_corrupt_spool_record_is_skipped_and_the_rest_sent(broker, tmp_path, caplog):
    path = tmp_path / "spool"
    with Spool(SpoolConfig(path=path)) as s:
        for k in range(5):
            s.append(turn(k))
    (segment,) = path.glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    _, offset, _ = scan_records(bytes(data))[0][1]  # seq 2
    data[offset + HEADER.size + 3] ^= 0x20
    segment.write_bytes(bytes(data))
    sub = Subscriber(broker.port, ["edged/dev/turn"])
    with caplog.at_level(logging.WARNING, logger="edged.delivery.spool"), Spool(SpoolConfig(path=path)) as s:
        pub = MqttPublisher(config_for(broker), "dev", s)
        pub.start()
        try:
            wait_for(lambda: s.depth == 0, TIMEOUT, what="the readable records acknowledged")
            wait_for(lambda: len(sub.turns("edged/dev/turn")) >= 4, TIMEOUT, what="4 turns")
            assert [t["seq"] for t in sub.turns("edged/dev/turn")] == [1, 3, 4, 5]
            assert s.skipped_corrupt == 1 and "corrupt or torn record" in caplog.text
        finally:
            pub.stop()
            sub.close()


# --- TLS and passwords ------------------------------------------------------------------------
def test_tls_with_client_certificate_and_password(secure_broker, spool):
    certs = secure_broker.certs
    tls = dict(host="localhost", port=secure_broker.tls_port, tls=True, ca_file=certs.ca, username=USER,
               password=PASSWORD)
    good = config_for(secure_broker, **tls, cert_file=certs.client_cert, key_file=certs.client_key)
    assert check_broker(good, "dev") == (f"mqtts://localhost:{secure_broker.tls_port} accepted user edged "
                                         "(MQTT 5, TLS with client certificate) and a probe on edged/dev/turn")
    sub = Subscriber(secure_broker.port, ["edged/dev/turn"], username="reader", password="reader-pw")
    pub = MqttPublisher(good, "dev", spool)
    pub.start()
    try:
        seq = pub.publish_turn(turn(7))
        wait_for(lambda: sub.turns("edged/dev/turn"), TIMEOUT, what="the turn over TLS")
        assert sub.turns("edged/dev/turn")[0]["seq"] == seq
    finally:
        pub.stop()
        sub.close()
    with pytest.raises(EdgedError, match="closed the connection before accepting the login.*client certificate"):
        check_broker(config_for(secure_broker, **tls), "dev")  # the listener requires a client cert
    wrong_ca = config_for(secure_broker, **{**tls, "ca_file": certs.client_cert}, cert_file=certs.client_cert,
                          key_file=certs.client_key)
    with pytest.raises(EdgedError, match="TLS handshake with .* failed .*mqtt.ca_file"):
        check_broker(wrong_ca, "dev")
    with pytest.raises(EdgedError, match="TLS listener"):
        check_broker(config_for(secure_broker, **{**tls, "port": secure_broker.port}), "dev")
    with pytest.raises(ConfigError, match="mqtt.ca_file=/nonexistent/ca.pem does not exist"):
        MqttPublisher(replace(good, ca_file=Path("/nonexistent/ca.pem")), "dev", spool)


def test_password_sources_and_wrong_password(secure_broker, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("EDGED_MQTT_PASSWORD", raising=False)
    caplog.set_level(logging.DEBUG)
    ok = f"mqtt://127.0.0.1:{secure_broker.port} accepted user edged (MQTT 5) and a probe on edged/dev/turn"
    assert check_broker(config_for(secure_broker, username=USER, password=PASSWORD), "dev") == ok
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    assert check_broker(config_for(secure_broker, username=USER, password_file=secret), "dev") == ok
    monkeypatch.setenv("EDGED_MQTT_PASSWORD", PASSWORD)
    assert check_broker(config_for(secure_broker, username=USER), "dev") == ok
    monkeypatch.setenv("EDGED_MQTT_PASSWORD", "wrong-Pw-123")
    with pytest.raises(EdgedError) as err:
        check_broker(config_for(secure_broker, username=USER), "dev")
    message = str(err.value)
    assert message == (f"mqtt://127.0.0.1:{secure_broker.port} refused the login of user 'edged': Not authorized; "
                       "check mqtt.username and the password (mqtt.password, mqtt.password_file or "
                       "$EDGED_MQTT_PASSWORD)")
    monkeypatch.delenv("EDGED_MQTT_PASSWORD")
    with pytest.raises(EdgedError, match="refused the login of an anonymous client"):
        check_broker(config_for(secure_broker), "dev")
    for password in (PASSWORD, "wrong-Pw-123"):
        assert password not in caplog.text
        assert password not in repr(config_for(secure_broker, username=USER, password=password))
    with pytest.raises(ConfigError, match="password_file=.*missing.* cannot be read"):
        resolve_password(config_for(secure_broker, username=USER, password_file=tmp_path / "missing"))


def test_publisher_keeps_retrying_a_refused_login_and_logs_without_the_password(secure_broker, spool, caplog):
    config = config_for(secure_broker, username=USER, password="not-the-Pw-42")
    pub = MqttPublisher(config, "dev", spool)
    with caplog.at_level(logging.DEBUG):
        pub.start()
        pub.publish_turn(turn(0))
        wait_for(lambda: pub.last_error, TIMEOUT, what="the refusal")
        pub.stop(timeout=0.5)
    assert "refused the connection: Not authorized; check mqtt.username and the password" in pub.last_error
    assert not pub.connected and spool.depth == 1  # kept for later
    assert "not-the-Pw-42" not in caplog.text


def test_unreachable_broker_is_a_one_line_error():
    config = MqttConfig(host="127.0.0.1", port=1)
    with pytest.raises(EdgedError, match=r"^nothing listens on 127.0.0.1:1 \(connection refused\); start the broker"):
        check_broker(config, "dev")


# --- config ---------------------------------------------------------------------------------------
def test_config_section_validation():
    assert build(MqttConfig, None, "mqtt") == MqttConfig()
    assert build(MqttConfig, {"protocol": 5}, "mqtt").protocol == "5"
    cases = {
        "mqtt: a password is set but username is not; set username": {"password": "x"},
        "mqtt: password and password_file are both set; keep one": {"username": "u", "password": "x",
                                                                    "password_file": "/p"},
        "mqtt: ca_file is set but tls is false; set tls: true (and usually port: 8883)": {"ca_file": "/ca.pem"},
        "mqtt: key_file is set without cert_file; set cert_file too": {"tls": True, "key_file": "/k.pem"},
        "mqtt: reconnect_min_s=5.0 is above reconnect_max_s=1.0; lower reconnect_min_s": {
            "reconnect_min_s": 5, "reconnect_max_s": 1},
        "mqtt.protocol='4' is not allowed; choose one of 'auto', '5', '3.1.1'": {"protocol": "4"},
        "mqtt.port=70000 is out of range; allowed 1..65535": {"port": 70000},
        "mqtt.password=<secret> has the wrong type; expected a string or null": {"password": [1, 2]},
    }
    for message, data in cases.items():
        with pytest.raises(ConfigError) as err:
            build(MqttConfig, data, "mqtt")
        assert str(err.value) == message
    with pytest.raises(ConfigError, match="topic_prefix='edged/#' holds a wildcard"):
        build(MqttConfig, {"topic_prefix": "edged/#"}, "mqtt")
    with pytest.raises(ConfigError, match=r"\$EDGED_MQTT_PASSWORD is set but mqtt.username is not"):
        resolve_password(MqttConfig(), {"EDGED_MQTT_PASSWORD": "x"})
    assert build(MqttConfig, {"topic_prefix": "home/diarization"}, "mqtt").topic_prefix == "home/diarization"


def test_world_readable_password_file_is_warned_about(tmp_path, caplog):
    secret = tmp_path / "pw"
    secret.write_text("s3cret-Pw\n")
    secret.chmod(0o644)
    config = MqttConfig(username="u", password_file=secret)
    with caplog.at_level(logging.WARNING, logger="edged.delivery.mqtt"):
        assert resolve_password(config) == "s3cret-Pw"
    assert f"mqtt.password_file={secret} is readable by every user (mode 0644); chmod 600 it" in caplog.text
    caplog.clear()
    secret.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="edged.delivery.mqtt"):
        resolve_password(config)
    assert caplog.text == ""


DENY_TURN = ("topic readwrite edged/dev/status\ntopic readwrite edged/dev/active\n"
             "topic readwrite edged/dev/stats\ntopic readwrite edged/dev/health\ntopic read edged/dev/turn\n")


def test_turn_refused_by_the_broker_stays_spooled_and_is_delivered_once_allowed(tmp_path, spool, caplog):
    """An ACL that forbids the turn topic: MQTT 5 PUBACK "not authorized" -> kept in the spool,
    logged with the fix, counted, reported on the retained health topic; once the ACL allows
    it (mosquitto re-reads its acl_file on SIGHUP) every turn arrives, in order."""
    broker = Mosquitto(tmp_path / "acl-broker", acl=DENY_TURN).start()
    sub = Subscriber(broker.port, ["edged/dev/turn", "edged/dev/health"])
    pub = MqttPublisher(config_for(broker), "dev", spool)
    try:
        with caplog.at_level(logging.WARNING, logger="edged.delivery.mqtt"):
            pub.start()
            sent = [pub.publish_turn(turn(k)) for k in range(5)]
            wait_for(lambda: pub.rejected >= 3, TIMEOUT, what="refusals, retried")
            assert spool.depth == 5 and [r["seq"] for r in spool.pending()] == sent
            health = wait_for(lambda: [h for h in sub.turns("edged/dev/health") if not h["ok"]], TIMEOUT,
                              what="health with the problem")[-1]
            assert health["problems"] == [pub.rejection]
            assert ("refused turn seq 1 on edged/dev/turn (Not authorized); it stays in the spool and is sent "
                    "again: allow this client to publish on edged/dev/turn in the broker's ACL") in caplog.text
            assert caplog.text.count("refused turn seq") == 1  # once per episode, not per retry
            assert sub.turns("edged/dev/turn") == []
            broker.allow("topic readwrite edged/#\n")
            sent += [pub.publish_turn(turn(k)) for k in range(5, 8)]
            wait_for(lambda: spool.depth == 0, TIMEOUT, what="the held turns delivered")
            wait_for(lambda: len(sub.turns("edged/dev/turn")) >= 8, TIMEOUT, what="8 turns")
            got = [t["seq"] for t in sub.turns("edged/dev/turn")]
            assert got == sent  # each once, in seq order
            wait_for(lambda: sub.turns("edged/dev/health")[-1]["ok"], TIMEOUT, what="health ok again")
            assert "accepts turns again" in caplog.text and pub.rejection is None
            assert spool.dropped == 0
    finally:
        pub.stop()
        sub.close()
        broker.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_check_detects_a_turn_topic_the_acl_denies(tmp_path, protocol):
    broker = Mosquitto(tmp_path / "acl-broker", acl=DENY_TURN.replace("topic read edged/dev/turn\n", "")).start()
    try:
        with pytest.raises(EdgedError) as err:
            check_broker(config_for(broker, protocol=protocol), "dev", timeout=2.0)
        message = str(err.value)
        assert "\n" not in message and "edged/dev/turn" in message
        if protocol == "5":
            assert "refused a publish on edged/dev/turn (Not authorized)" in message
            assert "allow this client to publish on edged/dev/turn in the broker's ACL" in message
        else:
            assert "did not come back" in message and "MQTT 3.1.1 acknowledges a denied publish" in message
        broker.allow("topic readwrite edged/#\n")
        assert check_broker(config_for(broker, protocol=protocol), "dev").endswith("a probe on edged/dev/turn")
    finally:
        broker.stop()


def test_auto_fallback_to_3_1_1_warns_that_denials_are_silent(broker, spool, caplog):
    proxy = V311OnlyProxy(broker.port)
    pub = MqttPublisher(config_for(broker, port=proxy.port), "dev", spool)
    try:
        with caplog.at_level(logging.WARNING, logger="edged.delivery.mqtt"):
            pub.start()
            wait_for(lambda: pub.connected and pub.protocol == "3.1.1", TIMEOUT, what="3.1.1 connection")
        assert ("reconnecting with MQTT 3.1.1, under which the broker acknowledges turns its ACL denies as if "
                "delivered: run edged check") in caplog.text
    finally:
        pub.stop()
        proxy.close()


def test_client_id_takeover_names_the_cause(broker, spool, caplog):
    pub = MqttPublisher(config_for(broker), "dev", spool)
    other = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="edged-dev", protocol=paho.MQTTv5)
    try:
        with caplog.at_level(logging.WARNING, logger="edged.delivery.mqtt"):
            pub.start()
            wait_for(lambda: pub.connected, TIMEOUT, what="connected")
            other.connect("127.0.0.1", broker.port)
            other.loop_start()
            wait_for(lambda: "connection to" in caplog.text, TIMEOUT, what="the lost connection logged")
        assert "Unspecified error" not in caplog.text
        assert "another client connected with client id 'edged-dev'" in caplog.text
        assert "give each device its own device_id or mqtt.client_id" in caplog.text
    finally:
        other.disconnect()
        other.loop_stop()
        pub.stop()
