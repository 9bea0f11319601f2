"""The daemon's configuration as typed dataclasses, one per concern; no I/O.

Sections: ``device_id``, ``audio``, ``models``, ``pipeline`` (``edged.diarize.params``), ``mqtt``,
``spool``, ``logging``, ``speakers``. ``edged.settings`` reads, overrides and validates them.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from edged.diarize.params import PRESETS, PipelineParams

DEFAULT_PATH = Path("/etc/edged/config.yaml")

@dataclass(frozen=True)
class AudioConfig:
    """Where the audio comes from: a capture device (ALSA via PortAudio) or a file."""

    # alsa: live capture device; file: replay `file` at wall-clock speed (demos, tests)
    source: Literal["alsa", "file"] = "alsa"
    # capture device: index, exact PortAudio name, hw:CARD=X,DEV=N / plughw:..., or a unique substring (`edged check` lists them)
    device: str = "default"
    # audio file replayed when source is file
    file: Path | None = None
    # device sample rate in Hz (null: the device's default rate); resampled to 16 kHz
    rate: int | None = field(default=None, metadata={"range": (4000, 384000)})
    # device channels (null: the device's, at most 2); mixed down to mono
    channels: int | None = field(default=None, metadata={"range": (1, 64)})
    # capture block (PortAudio buffer) length in milliseconds
    block_ms: int = field(default=100, metadata={"range": (10, 1000)})
    # seconds buffered between capture and processing; when full the oldest block is dropped (counted)
    queue_seconds: float = field(default=10.0, metadata={"range": (0.1, 3600.0)})
    # first wait before reopening a lost device, seconds (doubles after each failed attempt)
    retry_min_s: float = field(default=0.5, metadata={"range": (0.01, 3600.0)})
    # longest wait between reopen attempts, seconds
    retry_max_s: float = field(default=30.0, metadata={"range": (0.01, 3600.0)})
    # an open device that delivers no audio for this many seconds counts as lost
    stall_s: float = field(default=2.0, metadata={"range": (0.1, 3600.0)})

    def validate(self) -> None:
        """Cross-field checks (ValueError, one line)."""
        if self.retry_max_s < self.retry_min_s:
            raise ValueError(f"retry_max_s={self.retry_max_s:g} must be >= retry_min_s={self.retry_min_s:g}")
        if self.source == "file" and self.file is None:
            raise ValueError("source is file but file is not set; set audio.file to a WAV/FLAC file")
        if self.stall_s * 1000 < 2 * self.block_ms:
            raise ValueError(f"stall_s={self.stall_s:g} must cover at least two blocks ({2 * self.block_ms} ms)")


@runtime_checkable
class CrossChecked(Protocol):
    """A config section with checks across its fields, run after the fields are each valid."""

    def validate(self) -> None:
        """Raise ValueError (one line) when the fields do not fit together."""


_BAD_TOPIC = re.compile(r"[#+\x00]|^/|/$|//")
# MQTT topic names are at most 65535 bytes (UTF-8); room is kept for the longest suffix edged adds
TOPIC_MAX_BYTES = 65535
_SUFFIX_ROOM = 100


def topic_prefix_problem(value: str) -> str | None:
    """Why ``value`` cannot prefix edged's topics (None when it can)."""
    if not value:
        return "is empty"
    if value.startswith("$"):
        return "starts with $, which brokers reserve for themselves ($SYS/...) and refuse publishes on"
    if _BAD_TOPIC.search(value):
        return "holds a wildcard (+ or #), a NUL, an empty level or a leading/trailing /"
    size = len(value.encode("utf-8"))
    if size > TOPIC_MAX_BYTES - _SUFFIX_ROOM:
        return (f"is {size} bytes; an MQTT topic is at most {TOPIC_MAX_BYTES} bytes and edged appends up to "
                f"{_SUFFIX_ROOM}")
    return None


@dataclass(frozen=True)
class MqttConfig:
    """The MQTT broker, topics, credentials and TLS."""

    # broker host name or IP address
    host: str = "localhost"
    # broker port (usually 1883, or 8883 with TLS)
    port: int = field(default=1883, metadata={"range": (1, 65535)})
    # topic prefix; null: edged/<device_id>
    topic_prefix: str | None = None
    # MQTT client id; null: edged-<device_id>
    client_id: str | None = None
    # MQTT protocol: auto (MQTT 5, falling back to 3.1.1 when the broker refuses 5), 5 or 3.1.1
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    # user name for the broker login (null: anonymous)
    username: str | None = None
    # password (prefer password_file or $EDGED_MQTT_PASSWORD; never logged)
    password: str | None = field(default=None, repr=False, metadata={"secret": True})
    # file holding the password (trailing newline ignored), e.g. a systemd credential
    password_file: Path | None = None
    # connect with TLS
    tls: bool = False
    # CA certificate(s) to verify the broker (null: the system's CAs)
    ca_file: Path | None = None
    # client certificate (PEM) for brokers that require one
    cert_file: Path | None = None
    # private key of the client certificate (null: inside cert_file)
    key_file: Path | None = None
    # skip the broker host-name check (the certificate chain is still verified)
    tls_insecure: bool = False
    # seconds between keep-alive pings; the broker publishes the last will after 1.5x this without traffic
    keepalive: int = field(default=30, metadata={"range": (5, 3600)})
    # seconds between stats messages
    stats_interval: float = field(default=30.0, metadata={"range": (1.0, None)})
    # first reconnect delay in seconds (doubles per failed attempt)
    reconnect_min_s: float = field(default=1.0, metadata={"range": (0.1, 3600.0)})
    # longest reconnect delay in seconds
    reconnect_max_s: float = field(default=60.0, metadata={"range": (0.1, 3600.0)})
    # publish Home Assistant MQTT discovery (retained)
    homeassistant: bool = False
    # Home Assistant discovery prefix
    discovery_prefix: str = "homeassistant"
    # accept JSON commands on <prefix>/command (name, enroll, forget, reset, rename); limit who may
    # publish there with a broker ACL
    commands: bool = False

    def validate(self) -> None:
        if not self.host.strip():
            raise ValueError("host is empty; set the broker's host name or IP address")
        for name in ("topic_prefix", "discovery_prefix"):
            value = getattr(self, name)
            problem = None if value is None else topic_prefix_problem(value)
            if problem is not None:
                shown = repr(value) if len(value) <= 60 else repr(value[:40]) + "..."
                raise ValueError(f"{name}={shown} {problem}; use levels like 'edged/kitchen' without $, +, #, "
                                 "or a leading/trailing /")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_min_s={self.reconnect_min_s} is above reconnect_max_s="
                             f"{self.reconnect_max_s}; lower reconnect_min_s")
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and password_file are both set; keep one")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password is set but username is not; set username")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set without cert_file; set cert_file too")
        if not self.tls:
            for name in ("ca_file", "cert_file", "key_file", "tls_insecure"):
                if getattr(self, name):
                    raise ValueError(f"{name} is set but tls is false; set tls: true (and usually port: 8883)")


@dataclass(frozen=True)
class SpoolConfig:
    """Where turns wait for the broker's acknowledgement, and how much room they may take."""

    # spool folder (created if missing; under systemd the unit's StateDirectory)
    path: Path = Path("/var/lib/edged/spool")
    # bound on the segment files in bytes; when full the oldest unacknowledged turns are dropped (counted, logged)
    max_bytes: int = field(default=64 * 1024 * 1024, metadata={"range": (1024 * 1024, None)})
    # fdatasync every record and ack before going on (off: faster, but a power cut may lose turns)
    fsync: bool = True


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
class SpeakersConfig:
    """Enrolled voices (names) and the speaker state kept across restarts."""

    # folder of voice profiles written by `edged enroll` (null: speakers/ in the state directory, the spool's parent)
    profiles: Path | None = None
    # cosine similarity one chunk of a voice needs to take an enrolled name (higher: fewer false names,
    # more misses); calibrated by benchmarks/identification.py
    threshold: float = field(default=0.6, metadata={"range": (0.0, 1.0)})
    # cosine similarity the accumulated voice of an anonymous speaker needs to take an enrolled name
    # (checked again at each of its chunks); calibrated with threshold
    voice_threshold: float = field(default=0.5, metadata={"range": (0.0, 1.0)})
    # keep the anonymous speakers across restarts (speaker_3 stays speaker_3)
    keep_state: bool = True
    # file holding the speakers between restarts (null: speakers.state.npz in the state directory)
    state_file: Path | None = None
    # seconds between saves of the speaker state (also saved at a clean stop)
    save_interval_s: float = field(default=60.0, metadata={"range": (1.0, 86400.0)})
    # a saved state older than this many hours is not reloaded (speakers are numbered afresh)
    expiry_h: float = field(default=24.0, metadata={"range": (0.0, None)})


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
    speakers: SpeakersConfig = field(default_factory=SpeakersConfig)

    @property
    def device(self) -> str:
        """``device_id``, or the host name made topic-safe."""
        if self.device_id:
            return self.device_id
        return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "edged"
