"""Typed settings: YAML mappings -> dataclasses, validated with one-line errors.

Generic over any dataclass whose fields use bool, int, float, str, Path, ``X | None``,
``Literal[...]``, ``tuple[str, ...]`` or nested dataclasses. Numeric bounds live in
``field(metadata={"range": (lo, hi)})`` (inclusive, ``None`` = open); a class may add a
``validate()`` method for cross-field checks that raises ``ValueError``. Errors name the key,
the value and what is allowed, e.g. ``mqtt.port=70000 is out of range; allowed 1..65535``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from edged.config import CrossChecked, DaemonConfig
from edged.diarize.params import PipelineParams
from edged.diarize.presets import BUNDLE, resolve as resolve_preset
from edged.diarize.presets import CHOICES as PRESET_CHOICES
from edged.errors import BundleError, ConfigError
from edged.models.bundle import MANIFEST_NAME, parse_presets, read_manifest

T = TypeVar("T")
log = logging.getLogger(__name__)


def _kind(tp: Any) -> str:
    """Human name of a type for error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_kind(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path", type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_range(key: str, value: float, metadata: Mapping[str, Any]) -> None:
    lo, hi = metadata.get("range", (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        allowed = f"{'' if lo is None else lo}..{'' if hi is None else hi}"
        raise ConfigError(f"{key}={value!r} is out of range; allowed {allowed}")


def coerce(tp: Any, value: Any, key: str, metadata: Mapping[str, Any] | None = None) -> Any:
    """Check ``value`` against type ``tp`` (and bounds); return it converted (lists -> tuples,
    str -> Path, int -> float, numbers -> str for str fields)."""
    metadata = metadata or {}
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, key, metadata)
            except ConfigError as exc:
                if "out of range" in str(exc) or "not allowed" in str(exc):
                    raise
        raise ConfigError(f"{key}={_show(value, metadata)} has the wrong type; expected {_kind(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        for option in allowed:
            if value == option and type(value) is type(option):
                return option
            if isinstance(option, str) and not isinstance(value, bool) and str(value) == option:
                return option
        raise ConfigError(f"{key}={_show(value, metadata)} is not allowed; choose one of "
                          + ", ".join(repr(a) for a in allowed))
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={_show(value, metadata)} has the wrong type; expected a list")
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        return tuple(coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            _check_range(key, value, metadata)
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}={value!r} must be a finite number")
            _check_range(key, float(value), metadata)
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
    elif tp is Any:
        return value
    raise ConfigError(f"{key}={_show(value, metadata)} has the wrong type; expected {_kind(tp)}")


def _show(value: Any, metadata: Mapping[str, Any]) -> str:
    return "<secret>" if metadata.get("secret") else repr(value)


def build(cls: type[T], data: Any, where: str) -> T:
    """Dataclass ``cls`` from a mapping (missing keys take defaults); one-line ConfigError on
    unknown keys, wrong types, out-of-range values or a failed ``validate()``."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key; allowed keys: {', '.join(fields)}")
    kwargs = {name: coerce(hints[name], value, _join(where, name), fields[name].metadata)
              for name, value in data.items()}
    try:
        obj = cls(**kwargs)
        if isinstance(obj, CrossChecked):
            obj.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where and not str(exc).startswith(where) else str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def set_path(data: dict[str, Any], dotted: str, text: str) -> None:
    """Override ``a.b.c`` in nested ``data`` with ``text`` parsed as a YAML scalar or list."""
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise ConfigError(f"override {dotted!r} has no key; write section.key=value")
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
        value = text
    if isinstance(value, (list, dict)) and not text.lstrip().startswith(("[", "{")):
        value = text  # block YAML such as "-" or "a: b" in one value is meant literally
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(key, kind, default)`` for every field, recursively (for docs and ``edged config``)."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((key, _kind(tp), default))
    return rows


# ---- the daemon's config file ------------------------------------------------------------

ENV_PREFIX = "EDGED__"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def pipeline_params(data: Any, presets: Mapping[float, Mapping[str, Any]] | None = None,
                    warn: bool = True) -> PipelineParams:
    """``pipeline`` section: optional ``preset`` (default ``bundle``: the bundle's tuned
    ``presets`` for the latency, else diart's AMI with a warning) plus any PipelineParams field."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"pipeline must be a mapping of keys, got {type(data).__name__} {data!r}")
    values = dict(data)
    preset = values.pop("preset", BUNDLE)
    if preset not in PRESET_CHOICES:
        raise ConfigError(f"pipeline.preset={preset!r} is not allowed; choose one of {', '.join(PRESET_CHOICES)}")
    try:
        return resolve_preset(preset, presets, values, warn=warn)
    except (ConfigError, ValueError, TypeError) as exc:
        raise ConfigError(f"pipeline: {exc}") from None


def bundle_presets(models: Path) -> Mapping[float, Mapping[str, Any]] | None:
    """The tuned presets in the manifest of the bundle at ``models``; None when it has none or
    cannot be read (loading the bundle reports that)."""
    try:
        manifest = read_manifest(models)
        section = manifest.get("presets")
        return None if section is None else parse_presets(section, models / MANIFEST_NAME).by_latency
    except BundleError:
        return None


def config_from_mapping(data: Any) -> DaemonConfig:
    """Validate a parsed YAML document into a DaemonConfig."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a mapping of sections, got {type(data).__name__}")
    values = dict(data)
    pipeline = values.pop("pipeline", None)
    config = build(DaemonConfig, values, "")
    presets = bundle_presets(config.models.path)
    params = pipeline_params(pipeline, presets, warn=(config.models.path / MANIFEST_NAME).is_file())
    device_id = config.device_id
    if device_id is not None and not _DEVICE_ID.match(device_id):
        raise ConfigError(f"device_id={device_id!r} is not allowed; use 1-64 letters, digits, _ or -")
    return DaemonConfig(device_id=device_id, audio=config.audio, models=config.models, pipeline=params,
                        mqtt=config.mqtt, spool=config.spool, logging=config.logging, speakers=config.speakers)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"key {key!r} is written twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


_YAML_HINTS = {
    "sequence entries are not allowed here": "; quote a value that starts with - (e.g. device_id: \"-\")",
    "mapping values are not allowed here": "; quote a value that holds ': '",
}


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML config file; one-line ConfigError naming the file on any problem, a key
    written twice included."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; copy config/edged.yaml there or pass --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}{_YAML_HINTS.get(problem, '')}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str]) -> list[str]:
    """``EDGED__MQTT__PORT=1884`` -> ``mqtt.port=1884`` (sorted, for a stable precedence)."""
    out = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            key = ".".join(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
            out.append(f"{key}={environ[name]}")
    return out


def load_config(
    path: Path | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> DaemonConfig:
    """File (if given) < environment ``EDGED__*`` < ``overrides`` (``section.key=value``)."""
    data = read_yaml(path) if path is not None else {}
    in_file = isinstance(data.get("mqtt"), Mapping) and data["mqtt"].get("password") is not None
    environ = os.environ if environ is None else environ
    for item in [*env_overrides(environ), *overrides]:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        set_path(data, key.strip(), value)
    config = config_from_mapping(data)
    if in_file and config.mqtt.password is not None:
        log.warning("%s: mqtt.password is written in the config file; move it to mqtt.password_file "
                    "(mode 0600) or $EDGED_MQTT_PASSWORD", path)
    return config


def config_to_dict(config: Any, redact: bool = True) -> Any:
    """Plain YAML-ready data of a config (Paths as strings, tuples as lists, secrets redacted)."""
    if dataclasses.is_dataclass(config):
        out = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if redact and f.metadata.get("secret") and value is not None:
                out[f.name] = "<redacted>"
            else:
                out[f.name] = config_to_dict(value, redact)
        return out
    if isinstance(config, (tuple, list)):
        return [config_to_dict(v, redact) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config
