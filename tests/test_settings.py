"""The generic YAML -> dataclass validator: types, bounds, choices, nesting, one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from edged.errors import ConfigError
from edged.settings import build, describe, set_path


@dataclass(frozen=True)
class Inner:
    # a port
    port: int = field(default=1883, metadata={"range": (1, 65535)})
    # a secret
    password: str | None = field(default=None, metadata={"secret": True})


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    ratio: float = field(default=0.5, metadata={"range": (0.0, 1.0)})
    mode: Literal["auto", "5", "3.1.1"] = "auto"
    qos: Literal[0, 1, 2] = 1
    path: Path | None = None
    tags: tuple[str, ...] = ("a",)
    on: bool = False
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        if self.name == "bad":
            raise ValueError("name must not be 'bad'")


def test_defaults_and_conversions():
    o = build(Outer, {"ratio": 1, "path": "/tmp/x", "tags": ["b", "c"], "mode": 5, "inner": {"port": 1884}}, "")
    assert o.ratio == 1.0 and isinstance(o.ratio, float)
    assert o.path == Path("/tmp/x") and o.tags == ("b", "c") and o.mode == "5"
    assert o.inner == Inner(port=1884)
    assert build(Outer, None, "") == Outer()


@pytest.mark.parametrize("data, message", [
    ({"nope": 1}, "s.nope: unknown key; allowed keys: name, ratio"),
    ({"inner": {"port": 70000}}, "s.inner.port=70000 is out of range; allowed 1..65535"),
    ({"inner": {"port": "1883"}}, "s.inner.port='1883' has the wrong type; expected an integer"),
    ({"ratio": -0.1}, "s.ratio=-0.1 is out of range; allowed 0.0..1.0"),
    ({"ratio": float("nan")}, "s.ratio=nan must be a finite number"),
    ({"on": "yes"}, "s.on='yes' has the wrong type; expected true or false"),
    ({"qos": 3}, "s.qos=3 is not allowed; choose one of 0, 1, 2"),
    ({"qos": True}, "s.qos=True is not allowed"),
    ({"tags": "a"}, "s.tags='a' has the wrong type; expected a list"),
    ({"inner": 5}, "s.inner must be a mapping"),
    ({"name": "bad"}, "s: name must not be 'bad'"),
    ({"inner": {"password": 12.5, "port": 0}}, "s.inner.port=0 is out of range"),
])
def test_errors_are_one_line_and_name_key_value_and_allowed(data, message):
    with pytest.raises(ConfigError) as info:
        build(Outer, data, "s")
    text = str(info.value)
    assert message in text and "\n" not in text


def test_secret_values_are_never_shown():
    with pytest.raises(ConfigError) as info:
        build(Outer, {"inner": {"password": ["hunter2"]}}, "s")
    assert "hunter2" not in str(info.value) and "<secret>" in str(info.value)


def test_set_path_parses_yaml_scalars_and_creates_sections():
    data: dict = {"mqtt": {"host": "a"}}
    set_path(data, "mqtt.port", "1884")
    set_path(data, "mqtt.tls", "true")
    set_path(data, "audio.device", "hw:1,0")
    set_path(data, "models.providers", "[CUDAExecutionProvider, CPUExecutionProvider]")
    assert data == {"mqtt": {"host": "a", "port": 1884, "tls": True}, "audio": {"device": "hw:1,0"},
                    "models": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}}
    with pytest.raises(ConfigError, match="mqtt.host.x: host is not a section"):
        set_path(data, "mqtt.host.x", "1")


def test_describe_lists_every_leaf_key():
    keys = [k for k, _, _ in describe(Outer)]
    assert keys == ["name", "ratio", "mode", "qos", "path", "tags", "on", "inner.port", "inner.password"]
