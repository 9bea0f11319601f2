"""Per-chunk inference time of an ONNX model with one thread, as the edge runs it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np

from edged.models.runtime import create_session


def median_ms(path: Path, inputs: Mapping[str, np.ndarray], runs: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median and p90 wall time (ms) of one ``session.run`` with intra/inter-op threads = 1."""
    session = create_session(path, intra_op_threads=1, inter_op_threads=1)
    feed = dict(inputs)
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "runs": runs}
