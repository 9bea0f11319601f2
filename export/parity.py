"""Parity of the exported ONNX models against their PyTorch originals, with pass/fail gates."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .errors import ParityError


@dataclass(frozen=True)
class Gates:
    """Thresholds an export must meet (fp32 vs PyTorch, int8 vs PyTorch)."""

    seg_fp32_max_abs: float = 1e-3
    seg_int8_frame_agreement: float = 0.985
    emb_fp32_cosine_min: float = 0.9999
    emb_int8_cosine_min: float = 0.98
    emb_int8_cosine_mean: float = 0.99
    # a local speaker counts as present in a chunk (and its embedding is gated) above this
    active_threshold: float = 0.5


def chunk_waveforms(waveforms: Sequence[np.ndarray], chunk_samples: int, hop_samples: int) -> np.ndarray:
    """Cut each waveform into full windows (batch, chunk_samples); short files are zero-padded."""
    chunks = []
    for wav in waveforms:
        if len(wav) < chunk_samples:
            chunks.append(np.pad(wav, (0, chunk_samples - len(wav))))
            continue
        for start in range(0, len(wav) - chunk_samples + 1, hop_samples):
            chunks.append(wav[start : start + chunk_samples])
    return np.stack(chunks).astype(np.float32)


def speaker_activity_agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Agreement of binarised activations (batch, frames, speakers).

    ``frames``: fraction of frames whose set of active speakers is identical;
    ``cells``: fraction of (frame, speaker) decisions that agree.
    """
    ref = reference >= threshold
    cand = candidate >= threshold
    same = ref == cand
    return {"frames": float(same.all(axis=-1).mean()), "cells": float(same.mean())}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) arrays."""
    num = (a * b).sum(axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


def segmentation_figures(
    reference: np.ndarray, fp32: np.ndarray, int8: np.ndarray | None,
    hard: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Max/mean abs difference for fp32 and activity agreement for fp32 and int8.

    ``hard``: the (reference, fp32, int8) ``active`` outputs (speakers of the argmax powerset
    class), whose per-frame agreement is reported too.
    """
    figures: dict[str, Any] = {
        "chunks": int(reference.shape[0]),
        "frames": int(reference.shape[0] * reference.shape[1]),
        "fp32_max_abs_diff": float(np.abs(fp32 - reference).max()),
        "fp32_mean_abs_diff": float(np.abs(fp32 - reference).mean()),
        "fp32_frame_agreement": speaker_activity_agreement(reference, fp32)["frames"],
    }
    if int8 is not None:
        agreement = speaker_activity_agreement(reference, int8)
        figures.update(
            {
                "int8_max_abs_diff": float(np.abs(int8 - reference).max()),
                "int8_mean_abs_diff": float(np.abs(int8 - reference).mean()),
                "int8_frame_agreement": agreement["frames"],
                "int8_cell_agreement": agreement["cells"],
            }
        )
    if hard is not None:
        figures["fp32_argmax_agreement"] = speaker_activity_agreement(hard[0], hard[1])["frames"]
        if hard[2] is not None:
            figures["int8_argmax_agreement"] = speaker_activity_agreement(hard[0], hard[2])["frames"]
    return figures


def embedding_figures(reference: np.ndarray, fp32: np.ndarray, int8: np.ndarray | None, active: np.ndarray) -> dict[str, Any]:
    """Cosine of fp32/int8 embeddings to PyTorch for the active (chunk, speaker) pairs."""
    ref, f32 = reference[active], fp32[active]
    cos32 = cosine_rows(ref, f32)
    figures: dict[str, Any] = {
        "embeddings": int(active.sum()),
        "fp32_cosine_min": float(cos32.min()),
        "fp32_cosine_mean": float(cos32.mean()),
    }
    if int8 is not None:
        cos8 = cosine_rows(ref, int8[active])
        figures.update(
            {
                "int8_cosine_min": float(cos8.min()),
                "int8_cosine_mean": float(cos8.mean()),
                "int8_cosine_p05": float(np.percentile(cos8, 5)),
            }
        )
    return figures


def check_gates(segmentation: dict[str, Any], embedding: dict[str, Any], gates: Gates) -> list[str]:
    """Every missed gate as one readable line (empty when all pass)."""
    failures = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    need(segmentation["fp32_max_abs_diff"] <= gates.seg_fp32_max_abs,
         f"segmentation fp32 max abs diff {segmentation['fp32_max_abs_diff']:.2e} > {gates.seg_fp32_max_abs:g}")
    for key in ("int8_frame_agreement", "int8_argmax_agreement"):
        if key in segmentation:
            need(segmentation[key] >= gates.seg_int8_frame_agreement,
                 f"segmentation {key.replace('_', ' ')} {segmentation[key]:.4f} < {gates.seg_int8_frame_agreement}")
    if embedding["embeddings"] == 0:
        failures.append("embedding parity had no active speaker in the parity audio; pass real speech with --parity-audio")
        return failures
    need(embedding["fp32_cosine_min"] >= gates.emb_fp32_cosine_min,
         f"embedding fp32 cosine min {embedding['fp32_cosine_min']:.6f} < {gates.emb_fp32_cosine_min}")
    if "int8_cosine_min" in embedding:
        need(embedding["int8_cosine_min"] >= gates.emb_int8_cosine_min,
             f"embedding int8 cosine min {embedding['int8_cosine_min']:.4f} < {gates.emb_int8_cosine_min}")
        need(embedding["int8_cosine_mean"] >= gates.emb_int8_cosine_mean,
             f"embedding int8 cosine mean {embedding['int8_cosine_mean']:.4f} < {gates.emb_int8_cosine_mean}")
    return failures


def enforce(segmentation: dict[str, Any], embedding: dict[str, Any], gates: Gates) -> dict[str, Any]:
    """Raise ParityError naming every missed gate; return the figures with the gates otherwise."""
    failures = check_gates(segmentation, embedding, gates)
    if failures:
        raise ParityError("parity gate missed: " + "; ".join(failures) + " (the bundle was not written)")
    return {"segmentation": segmentation, "embedding": embedding, "gates": asdict(gates), "passed": True}


def torch_batched(fn, *arrays: np.ndarray, batch: int = 16) -> list[np.ndarray]:
    """Run a torch module over numpy inputs in batches, without gradients; one array per output."""
    outs = []
    with torch.no_grad():
        for i in range(0, arrays[0].shape[0], batch):
            out = fn(*[torch.from_numpy(np.ascontiguousarray(a[i : i + batch])) for a in arrays])
            outs.append([o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))])
    return [np.concatenate(parts) for parts in zip(*outs)]
