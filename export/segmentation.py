"""pyannote segmentation-3.0: load with pyannote.audio, wrap, export to ONNX.

The exported graph takes a waveform (batch, 1, samples) and returns, per frame and local speaker
(batch, frames, speakers): ``activations``, the activation probabilities (powerset posteriors
marginalised inside the graph), and ``active``, the 0/1 speakers of the most likely powerset
class (pyannote's hard ``to_multilabel``, what diart consumes). The edge needs no powerset code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import ExportError
from .sources import Source


def load_segmentation(source: Source, token: str | None = None) -> torch.nn.Module:
    """Load a pyannote segmentation model (powerset, e.g. segmentation-3.0) in eval mode."""
    from pyannote.audio import Model

    target = str(source.path) if source.path is not None else source.hub_id
    try:
        model = Model.from_pretrained(target, token=token)
    except Exception as exc:  # pyannote raises many types: corrupt file, no network, gated repo
        hint = "check the file" if source.path is not None else "check internet access and --hf-token"
        raise ExportError(f"{target}: cannot load the segmentation model ({type(exc).__name__}: {exc}); {hint}") from None
    if model is None:
        raise ExportError(f"{target}: the hub returned no model; pass --hf-token with access to {target}")
    specs = model.specifications
    if getattr(specs, "powerset_max_classes", None) is None:
        raise ExportError(f"{target}: not a powerset segmentation model (expected segmentation-3.0 style)")
    return model.eval()


class SpeakerActivations(torch.nn.Module):
    """Segmentation model followed by powerset -> per-speaker activation probabilities."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        from pyannote.audio.utils.powerset import Powerset

        specs = model.specifications
        powerset = Powerset(len(specs.classes), specs.powerset_max_classes)
        self.model = model
        # mapping[c, k] = 1 when powerset class c contains speaker k
        self.register_buffer("mapping", powerset.mapping.to(torch.float32))

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = self.model(waveform)
        soft = torch.matmul(torch.exp(log_probs), self.mapping)
        best = torch.nn.functional.one_hot(torch.argmax(log_probs, dim=-1), self.mapping.shape[0])
        hard = torch.matmul(best.to(torch.float32), self.mapping)
        return soft, hard


def geometry(model: torch.nn.Module) -> dict[str, Any]:
    """Sample rate, frame timing and speaker count, as written into the manifest."""
    specs = model.specifications
    rf = model.receptive_field
    return {
        "sample_rate": int(model.hparams.sample_rate),
        "num_speakers": len(specs.classes),
        "max_speakers_per_frame": int(specs.powerset_max_classes),
        "frame_start": float(rf.start),
        "frame_step": float(rf.step),
        "frame_duration": float(rf.duration),
        "receptive_field_samples": int(model.receptive_field_size(1)),
        "training_chunk_duration": float(specs.duration),
    }


def export_segmentation(model: torch.nn.Module, path: Path, opset: int, sample_rate: int) -> None:
    """Write the fp32 ONNX graph with dynamic batch and sample axes."""
    wrapper = SpeakerActivations(model).eval()
    example = torch.zeros(1, 1, 5 * sample_rate)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=["waveform"],
            output_names=["activations", "active"],
            dynamic_axes={
                "waveform": {0: "batch", 2: "samples"},
                "activations": {0: "batch", 1: "frames"},
                "active": {0: "batch", 1: "frames"},
            },
            opset_version=opset,
            dynamo=False,
        )
