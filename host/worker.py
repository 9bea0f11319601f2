"""Benchmark worker processes: the daemon's own pipeline code over files, one onnxruntime thread.

Runs in ``spawn`` processes and imports only the edge runtime (no pyannote, optuna or matplotlib),
so the step times and peak RSS measured here are what the daemon would use. The models of a
variant are loaded once per process; parameters come with each task.
"""

from __future__ import annotations

import edged  # noqa: F401  (first: pins numpy's BLAS pool to one thread before numpy loads)

import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# one ORT thread, as on a Pi; the block size the daemon's capture delivers (100 ms)
THREADS = 1
BLOCK_SECONDS = 0.1

_MODELS: Any = None


@dataclass
class FileResult:
    """What one worker measured on one file."""

    uri: str
    turns: list[tuple[str, float, float]]
    audio_s: float
    compute_s: float
    step_ms: list[float]
    pid: int
    peak_rss_mb: float = 0.0
    bad_samples: int = 0
    parts_ms: dict[str, float] = field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB: VmHWM of /proc/self/status on Linux.

    Not getrusage's ru_maxrss: Linux keeps that across execve, so a spawned worker would report
    at least its parent's size at fork time (the host process with pyannote and matplotlib)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def init_worker(models_dir: str, variant: str) -> None:
    """Pool initializer: Ctrl-C is left to the parent (which stops the pool cleanly); load models."""
    global _MODELS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from edged.models.blocks import load_models

    _MODELS = load_models(models_dir, variant, threads=THREADS)


def run_file(path: str, uri: str, params: dict[str, Any]) -> FileResult:
    """Stream one file through StreamingDiarizer in 100 ms blocks; return turns and timings."""
    import numpy as np

    from edged.diarize.events import TurnEvent
    from edged.diarize.params import PipelineParams
    from edged.diarize.pipeline import StreamingDiarizer
    from edged.diarize.stream import diarize_source
    from edged.sources.file import FileSource

    if _MODELS is None:
        raise RuntimeError("worker not initialised; call init_worker first")
    diarizer = StreamingDiarizer(_MODELS, PipelineParams.from_dict(params))
    diarizer.stats.keep = sys.maxsize  # keep every step time, however long the file
    source = FileSource(path, diarizer.sample_rate, block_ms=int(round(BLOCK_SECONDS * 1000)))
    started = time.perf_counter()
    turns = [(e.speaker, e.start, e.end) for e in diarize_source(source, diarizer) if isinstance(e, TurnEvent)]
    compute = time.perf_counter() - started
    parts = {name: float(np.sum(values)) for name, values in diarizer.stats.parts_ms.items()}
    return FileResult(
        uri=uri,
        turns=turns,
        audio_s=source.seconds_read,
        compute_s=compute,
        step_ms=list(diarizer.stats.total_ms),
        pid=os.getpid(),
        peak_rss_mb=peak_rss_mb(),
        bad_samples=diarizer.stats.bad_samples,
        parts_ms=parts,
    )
