"""pyannote segmentation-3.0: load with pyannote.audio, wrap, export to ONNX.

The exported graph takes a waveform (batch, 1, samples) and returns, per frame and local speaker
(batch, frames, speakers): ``activations``, the activation probabilities (powerset posteriors
marginalised inside the graph), and ``active``, the 0/1 speakers of the most likely powerset
class (pyannote's hard ``to_multilabel``, what diart consumes). The edge needs no powerset code.

What gets exported is ``export_module(model)``: the SincNet front end restated as 2-D
convolutions and pools of height 1, with the sinc filters computed once. Same function (checked
against the original in the parity gates), but onnxruntime runs 2-D convs and max-pools in its
blocked NCHWc layout on x86, where 1-D ones go through im2col: segmentation int8 0.85x the time.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

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


class SincNet2d(torch.nn.Module):
    """pyannote's ``SincNet`` with fixed sinc filters and (1, k) 2-D convs/pools; same output
    (the instance norms work the same on (b, c, 1, t) as on (b, c, t))."""

    def __init__(self, sincnet: torch.nn.Module):
        super().__init__()
        convs, pools, norms = list(sincnet.conv1d), list(sincnet.pool1d), list(sincnet.norm1d)
        encoder = convs[0]
        if len(convs) != 3 or not hasattr(encoder, "filterbank") or getattr(encoder, "padding", 0) != 0:
            raise ExportError("unexpected pyannote SincNet layout: expected a sinc encoder and two Conv1d layers")
        for pool in pools:
            if (pool.kernel_size, pool.stride, pool.padding, pool.dilation) != (3, 3, 0, 1):
                raise ExportError("unexpected pyannote SincNet layout: expected MaxPool1d(3, stride=3)")
        for norm in [sincnet.wav_norm1d, *norms]:
            if norm.track_running_stats:
                raise ExportError("unexpected pyannote SincNet layout: instance norms with running statistics")
        for conv in convs[1:]:
            if (conv.padding[0], conv.dilation[0], conv.groups) != (0, 1, 1):
                raise ExportError("unexpected pyannote SincNet layout: expected unpadded Conv1d layers")
        self.wav_norm1d = sincnet.wav_norm1d
        self.norm1d = sincnet.norm1d
        with torch.no_grad():
            sinc = encoder.filterbank.filters().detach().clone()  # (filters, 1, taps)
        self.register_buffer("sinc", sinc.unsqueeze(2))  # (filters, 1, 1, taps)
        self.sinc_stride = int(encoder.stride)
        self.convs = []  # (weight (out, in, 1, k), bias, stride) of the Conv1d layers
        for i, conv in enumerate(convs[1:]):
            self.register_buffer(f"weight{i}", conv.weight.detach().unsqueeze(2).clone())
            self.register_buffer(f"bias{i}", conv.bias.detach().clone())
            self.convs.append((f"weight{i}", f"bias{i}", int(conv.stride[0])))

    def _pool_norm(self, x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
        x = F.max_pool2d(x, (1, 3), (1, 3))
        return F.leaky_relu(F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.wav_norm1d(waveforms).unsqueeze(2)  # (b, 1, 1, samples)
        x = torch.abs(F.conv2d(x, self.sinc, stride=(1, self.sinc_stride)))
        x = self._pool_norm(x, self.norm1d[0])
        for (weight, bias, stride), norm in zip(self.convs, list(self.norm1d)[1:]):
            x = self._pool_norm(F.conv2d(x, getattr(self, weight), getattr(self, bias), stride=(1, stride)), norm)
        return x.squeeze(2)


def export_module(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with ``SincNet2d`` as its front end (the original is left alone)."""
    exported = copy.deepcopy(model).eval()
    exported.sincnet = SincNet2d(model.sincnet).eval()
    return exported


def export_segmentation(model: torch.nn.Module, path: Path, opset: int, sample_rate: int) -> None:
    """Write the fp32 ONNX graph of ``export_module(model)`` with dynamic batch and sample axes."""
    wrapper = SpeakerActivations(export_module(model)).eval()
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
