"""onnxruntime sessions with edge settings: explicit threads and execution providers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import onnxruntime as ort

from edged.errors import BundleError

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def create_session(
    path: Path | str,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
) -> ort.InferenceSession:
    """Open an ONNX model; providers not available here are dropped with a log line (CPU stays last)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available]
    for p in providers:
        if p not in available:
            log.warning("execution provider %s is not available here; falling back to %s", p, "CPUExecutionProvider")
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: onnxruntime cannot load this model ({first}); re-export the bundle") from None
