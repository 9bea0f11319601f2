"""The daemon's configuration: one YAML file, one typed section per concern.

Sections: ``device_id``, ``audio`` (edged.capture), ``models``, ``pipeline`` (edged.hyperparams),
``mqtt`` (edged.mqtt), ``spool`` (edged.spool), ``logging``. Every key can be overridden with
``--set section.key=value`` on the command line or ``EDGED__SECTION__KEY=value`` in the
environment (values are parsed as YAML scalars); precedence: command line > environment > file.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .capture import AudioConfig
from .errors import ConfigError
from .hyperparams import PRESETS, PipelineParams
from .mqtt import MqttConfig
from .settings import build, set_path
from .spool import SpoolConfig

DEFAULT_PATH = Path("/etc/edged/config.yaml")
ENV_PREFIX = "EDGED__"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ModelsConfig:
    """The model bundle written by ``edged-export`` and how onnxruntime runs it."""

    # bundle folder (holds manifest.json)
    path: Path = Path("/var/lib/edged/models")
    # model precision: int8 (default, fastest) or fp32
    variant: Literal["int8", "fp32"] = "int8"
    # onnxruntime intra-op threads per model (1 on a Pi: leaves a core for capture and MQTT)
    threads: int = field(default=1, metadata={"range": (1, 64)})
    # execution providers in order of preference; unavailable ones fall back to CPU with a log line
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and the optional local event log."""

    # log level: debug, info, warning or error
    level: Literal["debug", "info", "warning", "error"] = "info"
    # also append every event as JSON lines to this file (null: off)
    events_file: Path | None = None


@dataclass(frozen=True)
class DaemonConfig:
    """The whole daemon configuration."""

    # device name in MQTT topics and payloads (letters, digits, _ and -); null: the host name
    device_id: str | None = None
    audio: AudioConfig = field(default_factory=AudioConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    pipeline: PipelineParams = field(default_factory=lambda: PRESETS["ami"])
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def device(self) -> str:
        """``device_id``, or the host name made topic-safe."""
        if self.device_id:
            return self.device_id
        return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "edged"


def pipeline_params(data: Any) -> PipelineParams:
    """``pipeline`` section: optional ``preset`` name plus any PipelineParams field."""
    if data is None:
        return PRESETS["ami"]
    if not isinstance(data, Mapping):
        raise ConfigError(f"pipeline must be a mapping of keys, got {type(data).__name__} {data!r}")
    values = dict(data)
    preset = values.pop("preset", "ami")
    if preset not in PRESETS:
        raise ConfigError(f"pipeline.preset={preset!r} is not allowed; choose one of {', '.join(PRESETS)}")
    try:
        return PipelineParams.preset(preset, **values)
    except (ConfigError, ValueError, TypeError) as exc:
        raise ConfigError(f"pipeline: {exc}") from None


def config_from_mapping(data: Any) -> DaemonConfig:
    """Validate a parsed YAML document into a DaemonConfig."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a mapping of sections, got {type(data).__name__}")
    values = dict(data)
    params = pipeline_params(values.pop("pipeline", None))
    config = build(DaemonConfig, values, "")
    device_id = config.device_id
    if device_id is not None and not _DEVICE_ID.match(device_id):
        raise ConfigError(f"device_id={device_id!r} is not allowed; use 1-64 letters, digits, _ or -")
    return DaemonConfig(device_id=device_id, audio=config.audio, models=config.models, pipeline=params,
                        mqtt=config.mqtt, spool=config.spool, logging=config.logging)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML config file; one-line ConfigError naming the file on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; copy config/edged.yaml there or pass --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
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
    environ = os.environ if environ is None else environ
    for item in [*env_overrides(environ), *overrides]:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        set_path(data, key.strip(), value)
    return config_from_mapping(data)


def pipeline_to_yaml(params: PipelineParams) -> str:
    """A ``pipeline:`` YAML fragment for these parameters."""
    return yaml.safe_dump({"pipeline": params.to_dict()}, sort_keys=False)


def config_to_dict(config: Any, redact: bool = True) -> Any:
    """Plain YAML-ready data of a config (Paths as strings, tuples as lists, secrets redacted)."""
    import dataclasses

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
