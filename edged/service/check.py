"""``edged check``: config, model bundle, audio device, spool folder and broker, one line each."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from edged.config import DaemonConfig
from edged.settings import load_config
from edged.errors import ConfigError, EdgedError


def check_models(c: DaemonConfig) -> str:
    from edged.models.blocks import load_models

    models = load_models(c.models.path, c.models.variant, threads=c.models.threads, providers=c.models.providers)
    if c.pipeline.clustering == "uisrnn" and models.bundle.uisrnn is None:
        raise ConfigError(f"pipeline.clustering=uisrnn but {c.models.path} has no UIS-RNN model; "
                          f"add one with edged-export uisrnn --out {c.models.path}, or set pipeline.clustering: incremental")
    sizes = ", ".join(f"{role} {models.bundle.model(role, c.models.variant).path.stat().st_size / 1e6:.1f} MB"
                      for role in ("segmentation", "embedding"))
    return f"{c.models.path} ({c.models.variant}: {sizes}; checksums verified, sessions open)"


def check_audio(c: DaemonConfig) -> str:
    if c.audio.source == "file":
        from edged.sources.file import read_audio

        samples = read_audio(c.audio.file)
        return f"file {c.audio.file} ({len(samples) / 16000:.1f} s, replayed in real time)"
    from edged.sources.alsa import check_device

    detail = check_device(c.audio)
    return detail[3:] if detail.startswith("ok ") else detail


def check_spool(c: DaemonConfig) -> str:
    path = Path(c.spool.path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".check-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise EdgedError(f"spool folder {path} is not writable ({exc.strerror}); fix spool.path or its owner") from None
    free = os.statvfs(path)
    return f"{path} writable, {free.f_bavail * free.f_frsize / 1e6:.0f} MB free"


def check_broker(c: DaemonConfig) -> str:
    from edged.delivery.mqtt import check_broker as probe

    return probe(c.mqtt, c.device)


CHECKS: list[tuple[str, Callable[[DaemonConfig], str]]] = [
    ("models", check_models), ("audio", check_audio), ("spool", check_spool), ("broker", check_broker),
]


def run_checks(path: Path | None, overrides: Sequence[str] = (), out=sys.stdout) -> int:
    """Print ``ok``/``FAIL`` per item; exit status 0 when everything passed."""
    try:
        config = load_config(path, overrides)
    except EdgedError as exc:
        print(f"FAIL  config  {exc}", file=out)
        return 1
    print(f"ok    config  {path} (device {config.device})", file=out)
    failed = 0
    for name, check in CHECKS:
        try:
            detail = check(config)
            print(f"ok    {name:<7} {detail}", file=out)
        except EdgedError as exc:
            failed += 1
            print(f"FAIL  {name:<7} {exc}", file=out)
        except Exception as exc:  # a check must report, never crash the others
            failed += 1
            print(f"FAIL  {name:<7} {type(exc).__name__}: {exc}", file=out)
    return 1 if failed else 0
