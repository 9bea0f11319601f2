"""CAM++ speaker embeddings with overlap-aware weighted statistics pooling, exported to ONNX.

The exported graph takes one chunk's fbank features (batch, frames, 80) and per-local-speaker
frame weights (batch, speakers, frames) and returns (batch, speakers, dim): the convolutional
trunk runs once per chunk, then each speaker gets its own weighted mean/std pooling and the
final dense layer. With uniform weights this equals the original CAM++ forward pass.

``WeightedCAMPPlus`` is the plain PyTorch reference; ``ExportCAMPPlus`` computes the same
function in a form that runs faster in onnxruntime, and is what gets exported:

- CAM++'s context-aware masking (speakerlab ``CAMLayer``) feeds the chunk mean plus the mean
  of each 100-frame segment through two 1x1 convs and a sigmoid. That context is constant
  within a segment, so the convs and the sigmoid run on one column per segment (3 for a 5 s
  chunk) instead of every frame, and the averages are one small matmul with a pooling matrix
  built once per chunk (no per-layer AvgPool/Expand/shape ops). Exact up to float rounding.
- The context path reads the layer's activations time-major, the layout onnxruntime's int8
  convs produce, so no transpose is inserted for it.
- Weighted statistics use matmuls on data shifted by its chunk mean instead of a 4-D einsum.
"""

from __future__ import annotations

import inspect
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


def shifted_weighted_statistics(features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``weighted_statistics`` with two matmuls: sums of the data and its squares, after
    subtracting the unweighted mean over time (which keeps the variance free of cancellation)."""
    v1 = weights.sum(dim=-1, keepdim=True)  # (b, s, 1)
    v2 = (weights * weights).sum(dim=-1, keepdim=True)
    shift = features.mean(dim=-1, keepdim=True)  # (b, c, 1)
    centred = (features - shift).transpose(1, 2)  # (b, t, c)
    shift = shift.transpose(1, 2)  # (b, 1, c)
    s1 = torch.matmul(weights, centred)  # (b, s, c)
    s2 = torch.matmul(weights, centred * centred)
    # the reference mean sum(w x) / (v1 + eps), minus the shift (exact also for tiny v1)
    mean = (s1 - eps * shift) / (v1 + eps)
    var = (s2 - 2.0 * mean * s1 + mean * mean * v1) / torch.clamp(v1 - v2 / (v1 + eps), min=eps)
    std = torch.sqrt(torch.clamp(var, min=1e-10))
    return torch.cat([mean + shift, std], dim=-1)


def split_campplus(campplus: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.nn.Module], torch.nn.Module]:
    """speakerlab CAM++ -> (head, trunk layers before the stats pooling, dense layer)."""
    layers = dict(campplus.xvector.named_children())
    if "stats" not in layers or "dense" not in layers:
        raise ExportError("unexpected CAM++ layout: no 'stats'/'dense' layers in xvector")
    trunk = [m for n, m in layers.items() if n not in ("stats", "dense")]
    return campplus.head, trunk, layers["dense"]


class WeightedCAMPPlus(torch.nn.Module):
    """CAM++ with the stats pooling replaced by per-speaker weighted pooling (shared trunk)."""

    def __init__(self, campplus: torch.nn.Module):
        super().__init__()
        self.head, trunk, self.dense = split_campplus(campplus)
        self.trunk = torch.nn.Sequential(*trunk)

    def forward(self, fbank: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = self.head(fbank.permute(0, 2, 1))  # (b, f, t) in, (b, c, t) out
        x = self.trunk(x)  # (b, c, ceil(t / 2))
        w = weights[:, :, ::TRUNK_STRIDE]
        stats = weighted_statistics(x, w)  # (b, s, 2c)
        b, s, c2 = stats.shape
        emb = self.dense(stats.reshape(b * s, c2))
        return emb.reshape(b, s, -1)


# speakerlab's CAMLayer.seg_pooling: average pooling over segments of this many frames
CAM_SEGMENT_FRAMES = 100


def segment_matrices(x: torch.Tensor, seg_len: int = CAM_SEGMENT_FRAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """For x (b, c, t): ``pool`` (segments, t), whose rows give chunk mean + segment mean
    (``x @ pool.T``), and ``expand`` (segments, t), the 0/1 map from segments back to frames."""
    t = x.shape[-1]
    segment = torch.div(torch.arange(t), seg_len, rounding_mode="floor")
    count = torch.div(t + seg_len - 1, seg_len, rounding_mode="floor")
    expand = (torch.arange(count).unsqueeze(1) == segment.unsqueeze(0)).to(x.dtype)  # (segments, t)
    pool = expand / expand.sum(dim=1, keepdim=True) + 1.0 / t
    return pool, expand


class _CAMDenseLayer(torch.nn.Module):
    """speakerlab ``CAMDenseTDNNLayer`` with the context computed per segment (same output)."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        cam = layer.cam_layer
        signature = inspect.signature(type(cam).seg_pooling).parameters
        if signature["seg_len"].default != CAM_SEGMENT_FRAMES or signature["stype"].default != "avg":
            raise ExportError("unexpected speakerlab CAMLayer: segment pooling is not 100-frame average pooling")
        self.nonlinear1, self.linear1, self.nonlinear2 = layer.nonlinear1, layer.linear1, layer.nonlinear2
        self.linear_local = cam.linear_local
        # the two 1x1 context convs as (in, out) matrices for time-major context
        self.register_buffer("w1", cam.linear1.weight.detach()[:, :, 0].t().contiguous())
        self.register_buffer("b1", cam.linear1.bias.detach().clone())
        self.register_buffer("w2", cam.linear2.weight.detach()[:, :, 0].t().contiguous())
        self.register_buffer("b2", cam.linear2.bias.detach().clone())

    def forward(self, x: torch.Tensor, pool: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
        h = self.nonlinear2(self.linear1(self.nonlinear1(x)))  # (b, c, t)
        y = self.linear_local(h)
        context = torch.matmul(pool, h.transpose(1, 2))  # (b, segments, c)
        m = torch.sigmoid(torch.matmul(torch.relu(torch.matmul(context, self.w1) + self.b1), self.w2) + self.b2)
        return y * torch.matmul(m.transpose(1, 2), expand)  # (b, out, t)


class _CAMDenseBlock(torch.nn.Module):
    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.layers = torch.nn.ModuleList([_CAMDenseLayer(layer) for layer in block])

    def forward(self, x: torch.Tensor, pool: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x, pool, expand)], dim=1)
        return x


class ExportCAMPPlus(torch.nn.Module):
    """``WeightedCAMPPlus`` restated for onnxruntime (see the module docstring); same outputs."""

    def __init__(self, campplus: torch.nn.Module):
        super().__init__()
        from speakerlab.models.campplus.layers import CAMDenseTDNNBlock

        self.head, trunk, self.dense = split_campplus(campplus)
        self.trunk = torch.nn.ModuleList([_CAMDenseBlock(m) if isinstance(m, CAMDenseTDNNBlock) else m for m in trunk])

    def forward(self, fbank: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = self.head(fbank.permute(0, 2, 1))
        matrices = None
        for module in self.trunk:
            if isinstance(module, _CAMDenseBlock):
                if matrices is None:  # the time axis is the same in every block
                    matrices = segment_matrices(x)
                x = module(x, *matrices)
            else:
                x = module(x)
        stats = shifted_weighted_statistics(x, weights[:, :, ::TRUNK_STRIDE])
        b, s, c2 = stats.shape
        return self.dense(stats.reshape(b * s, c2)).reshape(b, s, -1)


def export_embedding(model: torch.nn.Module, path: Path, opset: int, num_frames: int = 498, num_speakers: int = 3) -> None:
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
