"""onnxruntime sessions with edge settings: explicit threads and execution providers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import onnxruntime as ort

from edged.errors import BundleError
from edged.models.bundle import TensorSpec

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
_shared_arena = False  # whether this process registered its CPU arena in onnxruntime's environment


def _register_shared_arena() -> None:
    """One CPU memory arena for every session of the process (both models, and the sessions of a
    reload) instead of one arena each; registered once per process."""
    global _shared_arena
    if _shared_arena:
        return
    _shared_arena = True
    try:
        ort.create_and_register_allocator(
            ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT),
            ort.OrtArenaCfg(0, -1, -1, -1))  # onnxruntime's default arena settings
    except Exception as exc:  # an older onnxruntime: each session keeps its own arena
        log.debug("shared onnxruntime CPU arena not registered: %s", exc)


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
    # memory: no buffers pre-planned per input shape, and the CPU arena shared between sessions
    options.enable_mem_pattern = False
    _register_shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3  # errors only: no provider or graph banners on stderr
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


# onnxruntime element types -> numpy names
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}


def session_io(session: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of an open model as TensorSpecs."""
    def spec(arg) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else (str(d) if d is not None else None) for d in (arg.shape or ()))
        return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]
