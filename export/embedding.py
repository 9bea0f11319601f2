"""CAM++ speaker embeddings with overlap-aware weighted statistics pooling, exported to ONNX.

The exported graph takes one chunk's fbank features (batch, frames, 80) and per-local-speaker
frame weights (batch, speakers, frames) and returns (batch, speakers, dim): the convolutional
trunk runs once per chunk, then each speaker gets its own weighted mean/std pooling and the
final dense layer. With uniform weights this equals the original CAM++ forward pass.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ExportError
from .sources import DEFAULT_EMBEDDING_HUB, EMBEDDING_HUB_FILE, Source

EMBEDDING_DIM = 192
FEAT_DIM = 80
# Time downsampling of the CAM++ trunk (the first TDNN layer has stride 2).
TRUNK_STRIDE = 2


def load_campplus(source: Source) -> torch.nn.Module:
    """Build speakerlab's CAMPPlus (192-dim, 80 fbank) and load the state dict."""
    from speakerlab.models.campplus.DTDNN import CAMPPlus

    path = source.path
    if path is None:
        path = _download_from_hub(source.hub_id or DEFAULT_EMBEDDING_HUB)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(f"{path}: cannot read the CAM++ checkpoint ({type(exc).__name__}: {exc}); check the file") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = CAMPPlus(feat_dim=FEAT_DIM, embedding_size=EMBEDDING_DIM)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"{path}: not a 192-dim CAM++ state dict ({first})") from None
    return model.eval()


def _download_from_hub(hub_id: str) -> Path:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise ExportError(
            f"{hub_id}: downloading CAM++ from its hub needs the modelscope package (pip install modelscope); "
            "or pass a local checkpoint file"
        ) from None
    try:
        folder = Path(snapshot_download(hub_id))
    except Exception as exc:
        raise ExportError(f"{hub_id}: hub download failed ({type(exc).__name__}); check internet access or pass a local file") from None
    path = folder / EMBEDDING_HUB_FILE
    if not path.is_file():
        raise ExportError(f"{hub_id}: {EMBEDDING_HUB_FILE} not in the downloaded model; pass a local checkpoint file")
    return path


def weighted_statistics(features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weighted mean and unbiased (reliability-weight) std over time.

    features (batch, channels, frames), weights (batch, speakers, frames) -> (batch, speakers, 2*channels).
    Uniform weights give the same result as ``mean`` and ``std(unbiased=True)``.
    """
    v1 = weights.sum(dim=-1, keepdim=True)  # (b, s, 1)
    v2 = (weights * weights).sum(dim=-1, keepdim=True)
    mean = torch.einsum("bst,bct->bsc", weights, features) / (v1 + eps)
    centred = features.unsqueeze(1) - mean.unsqueeze(-1)  # (b, s, c, t)
    var = torch.einsum("bst,bsct->bsc", weights, centred * centred) / torch.clamp(v1 - v2 / (v1 + eps), min=eps)
    std = torch.sqrt(torch.clamp(var, min=1e-10))
    return torch.cat([mean, std], dim=-1)


class WeightedCAMPPlus(torch.nn.Module):
    """CAM++ with the stats pooling replaced by per-speaker weighted pooling (shared trunk)."""

    def __init__(self, campplus: torch.nn.Module):
        super().__init__()
        layers = dict(campplus.xvector.named_children())
        if "stats" not in layers or "dense" not in layers:
            raise ExportError("unexpected CAM++ layout: no 'stats'/'dense' layers in xvector")
        self.head = campplus.head
        self.trunk = torch.nn.Sequential(*[m for n, m in campplus.xvector.named_children() if n not in ("stats", "dense")])
        self.dense = campplus.xvector.dense

    def forward(self, fbank: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = self.head(fbank.permute(0, 2, 1))  # (b, f, t) in, (b, c, t) out
        x = self.trunk(x)  # (b, c, ceil(t / 2))
        w = weights[:, :, ::TRUNK_STRIDE]
        stats = weighted_statistics(x, w)  # (b, s, 2c)
        b, s, c2 = stats.shape
        emb = self.dense(stats.reshape(b * s, c2))
        return emb.reshape(b, s, -1)


def export_embedding(model: WeightedCAMPPlus, path: Path, opset: int, num_frames: int = 498, num_speakers: int = 3) -> None:
    """Write the fp32 ONNX graph with dynamic batch, speaker and frame axes."""
    fbank = torch.randn(1, num_frames, FEAT_DIM)
    weights = torch.rand(1, num_speakers, num_frames)
    with torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (fbank, weights),
            str(path),
            input_names=["fbank", "weights"],
            output_names=["embeddings"],
            dynamic_axes={
                "fbank": {0: "batch", 1: "frames"},
                "weights": {0: "batch", 1: "speakers", 2: "frames"},
                "embeddings": {0: "batch", 1: "speakers"},
            },
            opset_version=opset,
            dynamo=False,
        )
