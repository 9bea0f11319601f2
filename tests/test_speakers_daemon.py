"""The real daemon with named speakers: speakers survive a restart (either clustering back-end),
corrupt or foreign state is one warning, MQTT commands (name, enroll, rename, forget, reset, bad
input) against a real mosquitto, the Home Assistant "<name> speaking" sensors, and the README's
command ACL."""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from mosquitto import Mosquitto, wait_for  # noqa: E402
from test_daemon import REPO, start_daemon, write_config  # noqa: E402

from edged.delivery.people import person_key  # noqa: E402
from edged.models.bundle import load_bundle  # noqa: E402
from edged.profiles.store import Profile, ProfileStore, profile_path  # noqa: E402
from edged.sources.file import read_audio  # noqa: E402
from host.conversations import ConversationSpec, build_conversation, write_conversation  # noqa: E402


class Client:
    """Subscribes to everything under edged/<device>/ and homeassistant/ (logged in as ``login``, user and
    password, when given); publishes commands."""

    def __init__(self, port: int, device: str, login: tuple[str, str] | None = None):
        self.prefix = f"edged/{device}"
        self.messages: list[tuple[str, str, bool]] = []
        self.acks: dict[int, paho.ReasonCode] = {}  # message id -> the broker's PUBACK reason
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        if login:
            self.client.username_pw_set(*login)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{self.prefix}/#", 1), ("homeassistant/#", 1)])
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.ready.wait(30)

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic[len(self.prefix) + 1:] if msg.topic.startswith(self.prefix) else msg.topic,
                                  msg.payload.decode(), bool(msg.retain)))

    def _on_publish(self, client, userdata, mid, reason, properties):
        with self.lock:
            self.acks[mid] = reason

    def on(self, topic: str) -> list:
        with self.lock:
            return [json.loads(p) if p.startswith(("{", "[")) else p for t, p, _ in self.messages if t == topic]

    def turns(self) -> list[dict]:
        return self.on("turn")

    def command(self, payload) -> int:
        """Publishes ``payload`` (QoS 1); its message id, the key of its PUBACK in ``acks``."""
        data = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        return self.client.publish(f"{self.prefix}/command", data, qos=1).mid

    def result(self, request_id, timeout: float = 120):
        return wait_for(lambda: next((r for r in self.on("command/result") if r.get("id") == request_id), None),
                        timeout, what=f"command result {request_id}")

    def wait_ready(self, timeout: float = 180) -> None:
        """Until the daemon answers commands (its command client subscribes after the models load)."""
        import time

        deadline = time.monotonic() + timeout
        while not any(r.get("id") == "ready?" for r in self.on("command/result")):
            assert time.monotonic() < deadline, "the daemon never answered a command"
            self.command({"id": "ready?", "action": "forget", "name": "Nobody"})
            time.sleep(0.5)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def audio(libri, tmp_path_factory):
    """A 30 s conversation of two readers, and a clip of the second reader alone (other utterances)."""
    folder = tmp_path_factory.mktemp("audio")
    a, b = sorted(libri)[3:5]
    conv = build_conversation({a: libri[a][:5], b: libri[b][:5]},
                              ConversationSpec(speakers=2, duration=30.0, overlap=0.0, seed=5), name="talk")
    wav, _ = write_conversation(conv, folder)
    alone = np.concatenate([read_audio(p) for p in libri[b][5:8]])
    sf.write(folder / "alone.wav", alone, 16000, subtype="PCM_16")
    return {"conv": conv, "talk": wav, "alone": folder / "alone.wav", "a": a, "b": b}


def heard(conv, turns, reader: str) -> Counter:
    """Label -> seconds of ``reader``'s reference speech it covers."""
    votes: Counter = Counter()
    for spk, s, e in conv.segments:
        if spk != reader:
            continue
        for t in turns:
            overlap = min(e, t["end"]) - max(s, t["start"])
            if overlap > 0:
                votes[t["speaker"]] += overlap
    return votes


def majority(conv, turns, reader: str) -> str:
    """The label that covers most of ``reader``'s reference speech."""
    return heard(conv, turns, reader).most_common(1)[0][0]


def finish(proc) -> str:
    """The daemon's output once it stopped at the end of its file; fails unless it exited 0."""
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def run_daemon(config: Path, tmp_path: Path, speed: float = 8.0) -> str:
    return finish(start_daemon(config, speed=speed))


@contextmanager
def daemon(config: Path, client: Client, speed: float):
    """A running daemon that answers commands; killed if the test fails before it stopped. Closes ``client``."""
    proc = start_daemon(config, speed=speed)
    try:
        client.wait_ready()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()


def person(components: dict, name: str) -> dict:
    """The Home Assistant discovery component of ``name``'s "speaking" sensor ({} when absent)."""
    return next((c for k, c in components.items() if k.endswith(person_key(name))), {})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


ACL_USERS = {"edged-kitchen": "device-pw", "admin": "admin-pw", "homeassistant": "ha-pw"}


def readme_acl() -> str:
    """The mosquitto acl_file of the README's "Limit who may command" (device ``kitchen``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    acl = text.split("Limit who may command with a mosquitto ACL", 1)[1].split("```\n", 2)[1]
    assert "user edged-kitchen\n" in acl and "user admin\n" in acl, acl
    return acl


def test_speakers_survive_a_restart(bundle, broker, audio, tmp_path):
    client = Client(broker.port, "names1")
    config = write_config(tmp_path, bundle, broker.port, audio["talk"], device="names1")
    run_daemon(config, tmp_path)
    first = client.turns()
    of_a, of_b = heard(audio["conv"], first, audio["a"]), heard(audio["conv"], first, audio["b"])
    assert of_a.most_common(1)[0][0] != of_b.most_common(1)[0][0]
    state = tmp_path / "speakers.state.npz"  # in the state directory, beside the spool
    assert state.exists() and (state.stat().st_mode & 0o777) == 0o600

    # restart on the second reader alone: it keeps a label it had, one that held more of its speech
    # than of the first reader's (a fresh start would call it speaker_0, the first reader's label)
    config = write_config(tmp_path, bundle, broker.port, audio["alone"], device="names1")
    seen = len(client.turns())
    out = run_daemon(config, tmp_path)
    assert "speaker state reloaded" in out
    second = client.turns()[seen:]
    labels = Counter()
    for t in second:
        labels[t["speaker"]] += t["end"] - t["start"]
    kept = labels.most_common(1)[0][0]
    assert of_b[kept] > of_a[kept], (kept, labels, of_a, of_b)

    # the same restart with a corrupt state: one warning line, a fresh start, no crash
    state.write_bytes(b"PK\x03\x04 torn")
    seen = len(client.turns())
    out = run_daemon(config, tmp_path)
    warnings = [line for line in out.splitlines() if "speaker state" in line and "WARNING" in line]
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "no known speakers" in warnings[0], out[-2000:]
    fresh = Counter()
    for t in client.turns()[seen:]:
        fresh[t["speaker"]] += t["end"] - t["start"]
    assert fresh.most_common(1)[0][0] == "speaker_0"
    client.close()


def test_sighup_with_new_speakers_settings_reads_them_and_keeps_the_speakers(bundle, broker, audio, tmp_path):
    """A reload that moves the state directory (``spool.path``) and points ``speakers.profiles`` at
    another folder: the new profiles are read at once (Home Assistant gets their sensor), the running
    speakers are carried over, and the state is saved in the new place."""
    import signal

    people = tmp_path / "people"
    sha = load_bundle(bundle, ("int8",)).model("embedding", "int8").sha256
    ProfileStore(people).save(Profile("Bob", np.ones(192) / np.sqrt(192), sha, 5.0, 0.0))
    client = Client(broker.port, "names5")
    config = write_config(tmp_path, bundle, broker.port, audio["talk"], device="names5", mqtt__homeassistant=True)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, speed=2.0, log=log)
    try:
        wait_for(lambda: len(client.turns()) >= 4, 180, what="four turns")
        moved = tmp_path / "moved"
        text = config.read_text().replace(str(tmp_path / "spool"), str(moved / "spool"))
        config.write_text(text + f"speakers:\n  profiles: {people}\n  threshold: 0.7\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: speakers settings applied, speakers kept" in log.read_text(), 60, what="reload")
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert "enrolled speakers: Bob" in out
    configs = client.on("homeassistant/device/edged_names5/config")
    assert person(configs[-1]["components"], "Bob"), configs[-1]
    assert (moved / "speakers.state.npz").exists()  # saved at the reload and at the stop, in the new place
    assert "no known speakers" not in out  # carried over in memory (tests/test_speaker_state.py checks the labels)
    client.close()


def test_uisrnn_speakers_survive_a_restart(uisrnn_bundle, broker, audio, tmp_path):
    """The same with pipeline.clustering: uisrnn (its best hypothesis is saved); then a restart
    with the incremental back-end on that state: one warning line, a fresh start."""
    client = Client(broker.port, "names4")
    config = write_config(tmp_path, uisrnn_bundle, broker.port, audio["talk"], device="names4",
                          pipeline__clustering="uisrnn")
    run_daemon(config, tmp_path)
    first = client.turns()
    label_b = majority(audio["conv"], first, audio["b"])
    assert majority(audio["conv"], first, audio["a"]) != label_b != "speaker_0"  # a fresh start would give speaker_0

    config = write_config(tmp_path, uisrnn_bundle, broker.port, audio["alone"], device="names4",
                          pipeline__clustering="uisrnn")
    seen = len(client.turns())
    out = run_daemon(config, tmp_path)
    assert "speaker state reloaded" in out and "WARNING" not in out, out[-2000:]
    labels = Counter()
    for t in client.turns()[seen:]:
        labels[t["speaker"]] += t["end"] - t["start"]
    assert labels.most_common(1)[0][0] == label_b, (label_b, labels)

    config = write_config(tmp_path, uisrnn_bundle, broker.port, audio["alone"], device="names4")
    seen = len(client.turns())
    out = run_daemon(config, tmp_path)
    warnings = [line for line in out.splitlines() if "speaker state" in line and "WARNING" in line]
    assert len(warnings) == 1 and "saved by the uisrnn back-end" in warnings[0] \
        and "this pipeline runs the incremental back-end" in warnings[0], out[-2000:]
    fresh = Counter()
    for t in client.turns()[seen:]:
        fresh[t["speaker"]] += t["end"] - t["start"]
    assert fresh.most_common(1)[0][0] == "speaker_0"
    client.close()


def test_mqtt_commands_name_rename_forget_reset_and_bad_input(bundle, broker, audio, tmp_path):
    client = Client(broker.port, "names2")
    config = write_config(tmp_path, bundle, broker.port, audio["talk"], device="names2", mqtt__commands=True,
                          mqtt__homeassistant=True, speakers__keep_state=False)
    with daemon(config, client, speed=1.5) as proc:
        # bad input first: each gets one error result and changes nothing
        client.command(b"{not json")
        bad = wait_for(lambda: [r for r in client.on("command/result") if r.get("id") is None], 60,
                       what="bad json result")[0]
        assert bad["ok"] is False and bad["id"] is None and "not valid JSON" in bad["error"]
        client.command({"id": "u1", "action": "dance"})
        assert "unknown action 'dance'" in client.result("u1")["error"]
        client.command({"id": "u2", "action": "name", "speaker": "speaker_99", "name": "Alice"})
        assert "unknown speaker 'speaker_99'" in client.result("u2")["error"]
        client.command({"id": "u3", "action": "name", "speaker": "speaker_0", "name": "a/b"})
        assert "'/'" in client.result("u3")["error"]
        client.command({"id": "u4", "action": "forget", "name": "Nobody"})
        assert "unknown speaker 'Nobody'" in client.result("u4")["error"]
        profiles = tmp_path / "speakers"
        assert not ProfileStore(profiles).names()

        # name the first anonymous speaker once it has spoken
        first = wait_for(lambda: client.turns(), 120, what="a first turn")[0]
        anonymous = first["speaker"]
        client.command({"id": "n1", "action": "name", "speaker": anonymous, "name": "Alice"})
        result = client.result("n1")
        assert result["ok"] is True and result["name"] == "Alice", result
        assert profile_path(profiles, "Alice").exists()
        named = wait_for(lambda: [e for e in client.on("speaker") if e.get("type") == "named"], 30, what="named event")
        assert named[0]["speaker"] == anonymous and named[0]["name"] == "Alice"
        wait_for(lambda: any(t["speaker"] == "Alice" for t in client.turns()), 120, what="a turn named Alice")
        published_before = [t for t in client.turns() if t["seq"] <= first["seq"]]
        assert published_before[0]["speaker"] == anonymous  # turns already published never change

        def people():
            configs = [json.loads(p) for t, p, _ in client.messages if t.startswith("homeassistant/") and p]
            return configs[-1]["components"] if configs else {}
        wait_for(lambda: any(c.get("name") == "Alice speaking" for c in people().values()), 30, what="HA sensor")
        sensor = next(c for c in people().values() if c.get("name") == "Alice speaking")
        assert sensor["platform"] == "binary_sensor" and sensor["state_topic"].endswith("/active")
        last = next(c for k, c in people().items() if k.endswith("_last_speaker"))
        assert last["value_template"] == "{{ value_json.speaker }}"  # "Last speaker" shows the name

        client.command({"id": "n2", "action": "name", "speaker": "speaker_5", "name": "Alice"})
        assert client.result("n2")["ok"] is False

        # rename: refusals change nothing (a foreign-model profile Bob stands in for a taken name)
        ProfileStore(profiles).save(Profile("Bob", np.ones(192) / np.sqrt(192), "0" * 64, 5.0, 0.0))
        before = snapshot(profiles)
        for request_id, payload, words in [
                ("m1", {"name": "Nobody", "new_name": "Zed"}, "unknown speaker 'Nobody'; enrolled: Alice"),
                ("m2", {"name": "Alice", "new_name": "Bob"}, "'Bob' is already enrolled"),
                ("m3", {"name": "Alice", "new_name": "a/#"}, "new_name: speaker name 'a/#' contains '/'"),
                ("m4", {"name": "Alice"}, "rename needs a new_name")]:
            client.command({"id": request_id, "action": "rename", **payload})
            refused = client.result(request_id)
            assert refused["ok"] is False and words in refused["error"] and "\n" not in refused["error"], refused
        assert snapshot(profiles) == before
        assert not [e for e in client.on("speaker") if e.get("type") == "renamed"]

        client.command({"id": "m5", "action": "rename", "name": "Alice", "new_name": "Alicia"})
        result = client.result("m5")
        assert result == {"id": "m5", "action": "rename", "ok": True, "name": "Alice", "new_name": "Alicia"}
        assert not profile_path(profiles, "Alice").exists()
        assert ProfileStore(profiles).get("Alicia").vector.tolist() == \
            Profile.from_dict(json.loads(before[profile_path(profiles, "Alice").name])).vector.tolist()
        renamed = wait_for(lambda: [e for e in client.on("speaker") if e.get("type") == "renamed"], 30,
                           what="renamed event")
        assert renamed[0]["name"] == "Alice" and renamed[0]["new_name"] == "Alicia"
        assert renamed[0]["device_id"] == "names2"
        wait_for(lambda: person(people(), "Alice") == {"platform": "binary_sensor"}
                 and person(people(), "Alicia").get("name") == "Alicia speaking", 30, what="HA sensor renamed")
        first_alicia = wait_for(lambda: [t for t in client.turns() if t["speaker"] == "Alicia"], 120,
                                what="a turn named Alicia")[0]
        assert any(t["speaker"] == "Alice" for t in client.turns())  # turns already published keep the name

        client.command({"id": "r1", "action": "reset"})
        assert client.result("r1")["ok"] is True

        client.command({"id": "f1", "action": "forget", "name": "Alicia"})
        assert client.result("f1")["ok"] is True
        assert not profile_path(profiles, "Alicia").exists()
        wait_for(lambda: person(people(), "Alicia") == {"platform": "binary_sensor"}, 30, what="HA sensor removed")
        finish(proc)
    # every turn made after the first one named Alicia carries the new name, never the old one
    assert not [t for t in client.turns() if t["seq"] > first_alicia["seq"] and t["speaker"] == "Alice"]


def test_mqtt_enroll_from_the_next_seconds(bundle, broker, audio, tmp_path):
    client = Client(broker.port, "names3")
    config = write_config(tmp_path, bundle, broker.port, audio["alone"], device="names3", mqtt__commands=True,
                          speakers__keep_state=False)
    with daemon(config, client, speed=1.0) as proc:
        # the refusals are answered at once; asked while the daemon still has audio to play
        client.command({"id": "e3", "action": "enroll", "name": "Carl", "seconds": 2})
        assert "out of range" in client.result("e3")["error"]
        client.command({"id": "e1", "action": "enroll", "name": "Bob", "seconds": 7})
        result = client.result("e1")
        assert result["ok"] is True and result["name"] == "Bob" and result["speech_s"] >= 5.0, result
        assert profile_path(tmp_path / "speakers", "Bob").exists()
        client.command({"id": "e2", "action": "enroll", "name": "Bob", "seconds": 7})
        assert "already enrolled" in client.result("e2")["error"]
        wait_for(lambda: any(t["speaker"] == "Bob" for t in client.turns()), 120, what="a turn named Bob")
        finish(proc)


@pytest.fixture
def readme_broker(tmp_path):
    """A real mosquitto behind the README's ACL, with users edged-kitchen, admin and homeassistant."""
    m = Mosquitto(tmp_path / "broker", users=ACL_USERS, acl=readme_acl()).start()
    yield m
    m.stop()


def test_readme_acl_lets_only_admin_command_and_everyone_read(bundle, readme_broker, audio, tmp_path):
    """The README's ACL as written (no anonymous logins): a forget from Home Assistant's user is
    refused by the broker and never reaches the daemon; the same from admin runs and is answered;
    Home Assistant's user reads turns, results and the discovery."""
    secret = tmp_path / "mqtt.password"
    secret.write_text(ACL_USERS["edged-kitchen"] + "\n")
    secret.chmod(0o600)
    profiles = tmp_path / "speakers"
    sha = load_bundle(bundle, ("int8",)).model("embedding", "int8").sha256
    ProfileStore(profiles).save(Profile("Alice", np.ones(192) / np.sqrt(192), sha, 5.0, 0.0))
    alice = profile_path(profiles, "Alice")
    config = write_config(tmp_path, bundle, readme_broker.port, audio["talk"], device="kitchen",
                          mqtt__commands=True, mqtt__homeassistant=True, mqtt__username="edged-kitchen",
                          mqtt__password_file=str(secret), speakers__keep_state=False)
    ha = Client(readme_broker.port, "kitchen", ("homeassistant", ACL_USERS["homeassistant"]))

    def components():
        configs = ha.on("homeassistant/device/edged_kitchen/config")
        return configs[-1]["components"] if configs else {}
    try:
        admin = Client(readme_broker.port, "kitchen", ("admin", ACL_USERS["admin"]))
        with daemon(config, admin, speed=2.0) as proc:
            mid = ha.command({"id": "h1", "action": "forget", "name": "Alice"})
            wait_for(lambda: mid in ha.acks, 30, what="the broker's PUBACK of h1")
            # published after the broker handled h1: the daemon would have answered h1 first
            admin.command({"id": "a0", "action": "forget", "name": "Nobody"})
            assert admin.result("a0")["ok"] is False
            assert not [r for r in admin.on("command/result") if r.get("id") == "h1"]
            assert alice.exists() and not admin.on("speaker")
            assert str(ha.acks[mid]) == "Not authorized"  # MQTT 5 tells the read-only user
            wait_for(lambda: person(components(), "Alice").get("name") == "Alice speaking", 30,
                     what="Alice's sensor, read by HA")

            admin.command({"id": "a1", "action": "forget", "name": "Alice"})
            assert admin.result("a1") == {"id": "a1", "action": "forget", "ok": True, "name": "Alice"}
            assert not alice.exists()

            # Home Assistant's user reads the result, the event and the discovery that follows
            wait_for(lambda: [r for r in ha.on("command/result") if r.get("id") == "a1"], 30, what="a1 read by HA")
            assert [e["name"] for e in ha.on("speaker") if e["type"] == "forgotten"] == ["Alice"]
            wait_for(lambda: person(components(), "Alice") == {"platform": "binary_sensor"}, 30,
                     what="Alice's sensor removed, read by HA")
            finish(proc)
        logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
        turns = [e for e in logged if e["type"] == "turn"]
        assert turns
        wait_for(lambda: ha.turns() == turns, 30, what="every turn, read by Home Assistant's user")
        assert not [r for r in ha.on("command/result") if r.get("id") == "h1"]
    finally:
        ha.close()
