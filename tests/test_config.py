"""The daemon config: the shipped files, validation messages, overrides and secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.settings import config_to_dict, load_config
from edged.errors import ConfigError
from edged.diarize.params import PRESETS

REPO = Path(__file__).resolve().parents[1]


def test_documented_default_file_equals_the_code_defaults():
    shipped = load_config(REPO / "config" / "edged.yaml", environ={})
    assert shipped == load_config(None, environ={})


@pytest.mark.parametrize("name", ["raspberry-pi-usb-mic.yaml", "jetson.yaml"])
def test_examples_are_valid(name):
    c = load_config(REPO / "config" / "examples" / name, environ={})
    assert c.device_id and c.audio.source == "alsa"


@pytest.mark.parametrize("text, message", [
    ("mqtt:\n  port: 70000\n", "mqtt.port=70000 is out of range; allowed 1..65535"),
    ("mqtt:\n  prot: 1\n", "mqtt.prot: unknown key; allowed keys: host, port"),
    ("nonsense: 1\n", "nonsense: unknown key; allowed keys: device_id, audio"),
    ("audio:\n  source: mic\n", "audio.source='mic' is not allowed; choose one of 'alsa', 'file'"),
    ("audio:\n  source: file\n", "audio: source is file but file is not set"),
    ("models:\n  threads: 0\n", "models.threads=0 is out of range; allowed 1.."),
    ("pipeline:\n  preset: meeting\n", "pipeline.preset='meeting' is not allowed; choose one of bundle, ami"),
    ("pipeline:\n  tau_active: 2\n", "pipeline: tau_active=2 is out of range; allowed [0.0, 1.0]"),
    ("pipeline:\n  latency: 0.7\n", "pipeline: latency=0.7 must be a whole multiple of step=0.5"),
    ("device_id: a/b\n", "device_id='a/b' is not allowed"),
    ("- a\n- b\n", "must be a mapping of sections"),
    ("mqtt: [\n", "invalid YAML at line 2"),
    ("mqtt:\n  topic_prefix: $SYS/edged\n", "mqtt: topic_prefix='$SYS/edged' starts with $, which brokers reserve"),
    ("mqtt:\n  topic_prefix: a/+/b\n", "mqtt: topic_prefix='a/+/b' holds a wildcard (+ or #)"),
    ("mqtt:\n  topic_prefix: " + "x" * 70000 + "\n", "is 70000 bytes; an MQTT topic is at most 65535 bytes"),
    ("mqtt:\n  host: a\n  port: 1\n  host: b\n", "key 'host' is written twice (lines 2 and 4); keep one"),
    ("device_id: a\ndevice_id: b\n", "key 'device_id' is written twice (lines 1 and 2); keep one"),
    ("device_id: -\n", "quote a value that starts with - (e.g. device_id: \"-\")"),
])
def test_bad_values_fail_with_one_line_naming_key_value_and_allowed(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_bare_dash_override_is_a_string(tmp_path):
    assert load_config(None, ["device_id=-"], environ={}).device_id == "-"
    assert load_config(None, environ={"EDGED__DEVICE_ID": "-"}).device_id == "-"
    assert load_config(None, ["audio.device=a: b"], environ={}).audio.device == "a: b"


def test_a_password_written_in_the_file_is_warned_about(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  username: u\n  password: hunter2\n")
    with caplog.at_level("WARNING", logger="edged.settings"):
        load_config(path, environ={})
    assert "mqtt.password is written in the config file; move it to mqtt.password_file" in caplog.text
    assert "hunter2" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="edged.settings"):
        load_config(None, ["mqtt.username=u", "mqtt.password=x"], environ={})
    assert caplog.text == ""


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="config file not found; copy config/edged.yaml"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_precedence_file_then_environment_then_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  port: 1000\n  host: a\npipeline:\n  preset: dihard3\n")
    env = {"EDGED__MQTT__PORT": "2000", "EDGED__MQTT__HOST": "b", "EDGED__PIPELINE__LATENCY": "1"}
    c = load_config(path, ["mqtt.port=3000"], environ=env)
    assert (c.mqtt.port, c.mqtt.host) == (3000, "b")
    assert c.pipeline == PRESETS["dihard3"].replace(latency=1.0)
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(path, ["mqtt.port"], environ={})


def test_password_is_redacted_in_the_printed_config(tmp_path):
    c = load_config(None, ["mqtt.username=edged", "mqtt.password=hunter2"], environ={})
    assert c.mqtt.password == "hunter2"
    assert config_to_dict(c)["mqtt"]["password"] == "<redacted>"
    assert "hunter2" not in repr(c)


def test_device_id_defaults_to_a_topic_safe_host_name():
    c = load_config(None, environ={})
    assert c.device_id is None and c.device and "/" not in c.device and "+" not in c.device
