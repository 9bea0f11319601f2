"""UIS-RNN for the bundle: train it on the edge's own embeddings, export it, add it to a bundle.

The command (``edged-export uisrnn``, which builds the training sequences with the host tools) is
``edged_host.uisrnn_train``.

Training is the reference implementation (the ``uisrnn`` package, google/uis-rnn 0.1.2) run as
is, with one compatibility fix for current PyTorch (``pack_sequence`` hands a reversed numpy
view to ``pack_padded_sequence``, which now refuses negative strides: the same code on a copy).
The GRU + projection network is exported as a single ONNX step
(``observation (batch, dim), hidden (depth, batch, hidden) -> mean (batch, dim), hidden_out``);
``sigma2``, ``transition_bias``, ``crp_alpha`` and the initial hidden state go into the bundle
manifest's optional ``clustering.uisrnn`` section with the file's size and sha256.

Gates before the bundle is touched: the ONNX step equals the PyTorch step (max |diff| <= 1e-4),
and the edge decoder (``edged.diarize.uisrnn``, offline) returns the same labels as
``UISRNN.predict(test_iteration=1)`` up to renaming on the parity sequences.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from edged.models.bundle import MANIFEST_NAME, load_bundle, read_manifest, sha256_file
from edged.diarize.params import PipelineParams

from .errors import ExportError, ParityError

log = logging.getLogger(__name__)

ONNX_NAME = "uisrnn.onnx"
# the trained reference model (PyTorch, host only: parity figures); the edge never opens it
REFERENCE_NAME = "uisrnn.reference.pt"
ONNX_TOLERANCE = 1e-4



class TrainingSequence(Protocol):
    """One labelled embedding sequence (``edged_host.uisrnn_data.LabelledSequence``)."""

    name: str
    source: str
    embeddings: np.ndarray
    labels: list[str]

    def select(self, min_purity: float) -> tuple[np.ndarray, list[str]]:
        ...


@dataclass
class TrainOptions:
    """UIS-RNN model and training settings (the reference's arguments; defaults are ours)."""

    hidden_size: int = 128
    depth: int = 1
    dropout: float = 0.2
    iterations: int = 1000
    learning_rate: float = 3e-3
    batch_size: int = 10
    num_permutations: int = 10
    sigma_alpha: float = 1.0
    sigma_beta: float = 1.0
    regularization: float = 1e-5
    grad_max_norm: float = 5.0
    crp_alpha: float = 1.0
    # observations labelled with less than this share of their active frames are not trained on
    min_purity: float = 0.5
    # observations = embedding * input_scale (None: sqrt(dim), about unit variance per dimension)
    input_scale: float | None = None
    # randomly rotated copies of every training sequence (0: none): the GRU cannot memorise the
    # few training speakers and must learn to track any speaker
    rotations: int = 8
    seed: int = 0
    threads: int = 1


def _pack_sequence(sub_sequences, seq_lengths, batch_size, observation_dim, device):
    """``uisrnn.utils.pack_sequence`` of uisrnn 0.1.2, with the reversed index arrays copied."""
    import torch

    num_clusters = len(seq_lengths)
    sorted_seq_lengths = np.sort(seq_lengths)[::-1].copy()
    permute_index = np.argsort(seq_lengths)[::-1].copy()
    if batch_size is None:
        rnn_input = np.zeros((sorted_seq_lengths[0], num_clusters, observation_dim))
        for i in range(num_clusters):
            rnn_input[1:sorted_seq_lengths[i], i, :] = sub_sequences[permute_index[i]]
        rnn_input = torch.from_numpy(rnn_input).float().to(device)
        packed = torch.nn.utils.rnn.pack_padded_sequence(rnn_input, sorted_seq_lengths, batch_first=False)
    else:
        mini_batch = np.sort(np.random.choice(num_clusters, batch_size))
        rnn_input = np.zeros((sorted_seq_lengths[mini_batch[0]], batch_size, observation_dim))
        for i in range(batch_size):
            rnn_input[1:sorted_seq_lengths[mini_batch[i]], i, :] = sub_sequences[permute_index[mini_batch[i]]]
        rnn_input = torch.from_numpy(rnn_input).float().to(device)
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            rnn_input, sorted_seq_lengths[mini_batch].copy(), batch_first=False)
    return packed, rnn_input[1:, :, :]


def reference():
    """The ``uisrnn`` package with the compatibility fix applied; ExportError if missing."""
    try:
        import uisrnn
        import uisrnn.utils
    except ImportError:
        raise ExportError(
            "the uisrnn package is not installed; pip install --no-deps uisrnn==0.1.2 colortimelog "
            "(its torch requirement is the torch==2.13.0 already installed)"
        ) from None
    uisrnn.utils.pack_sequence = _pack_sequence
    return uisrnn


def arguments(dim: int, options: TrainOptions, beam: int = 10):
    """The reference's (model, training, inference) argument namespaces for these options."""
    uisrnn = reference()
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        model_args, training_args, inference_args = uisrnn.parse_arguments()
    finally:
        sys.argv = saved
    model_args.observation_dim = dim
    model_args.rnn_hidden_size = options.hidden_size
    model_args.rnn_depth = options.depth
    model_args.rnn_dropout = options.dropout
    model_args.crp_alpha = options.crp_alpha
    model_args.verbosity = 0  # the reference logs level-1 lines as "[ERROR]"
    model_args.enable_cuda = False
    training_args.train_iteration = options.iterations
    training_args.learning_rate = options.learning_rate
    training_args.batch_size = options.batch_size
    training_args.num_permutations = options.num_permutations
    training_args.sigma_alpha = options.sigma_alpha
    training_args.sigma_beta = options.sigma_beta
    training_args.regularization_weight = options.regularization
    training_args.grad_max_norm = options.grad_max_norm
    training_args.enforce_cluster_id_uniqueness = True
    inference_args.beam_size = beam
    inference_args.look_ahead = 1
    inference_args.test_iteration = 1
    return model_args, training_args, inference_args


def seed_everything(seed: int, threads: int = 1) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def input_scale(options: TrainOptions, dim: int) -> float:
    return float(np.sqrt(dim)) if options.input_scale is None else float(options.input_scale)


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def training_data(sequences: Sequence[TrainingSequence], options: TrainOptions) -> list[tuple[np.ndarray, list[str]]]:
    """Scaled labelled observations of each sequence, then ``rotations`` rotated copies of each."""
    data = [s.select(options.min_purity) for s in sequences]
    data = [(x, y) for x, y in data if len(y) >= 2]
    if not data:
        raise ExportError("no labelled observations to train on; pass recordings with references or --conversations")
    scale = input_scale(options, data[0][0].shape[1])
    data = [(x * scale, y) for x, y in data]
    rng = np.random.default_rng(options.seed)
    rotated = [(x @ random_rotation(x.shape[1], rng), y) for _ in range(options.rotations) for x, y in data]
    return data + rotated


def train(sequences: Sequence[TrainingSequence], options: TrainOptions):
    """Fit the reference UISRNN on the sequences' labelled observations; returns the model."""
    uisrnn = reference()
    data = training_data(sequences, options)
    model_args, training_args, _ = arguments(data[0][0].shape[1], options)
    seed_everything(options.seed, options.threads)
    model = uisrnn.UISRNN(model_args)
    model.fit([x for x, _ in data], [np.asarray(y) for _, y in data], training_args)
    model.rnn_model.eval()
    return model


class _Step:
    """Builds the exported module lazily (torch is imported only on the host)."""

    @staticmethod
    def module(model):
        import torch
        from torch import nn
        from torch.nn import functional as F

        class Step(nn.Module):
            def __init__(self, core):
                super().__init__()
                self.core = core

            def forward(self, observation, hidden):
                out, hidden_out = self.core.gru(observation.unsqueeze(0), hidden)
                mean = self.core.linear_mean2(F.relu(self.core.linear_mean1(out[0])))
                return mean, hidden_out

        step = Step(model.rnn_model).eval()
        for p in step.parameters():
            p.requires_grad_(False)
        return step, torch


def export_onnx(model, path: Path, opset: int = 17) -> float:
    """Write the one-step network to ``path``; returns max |ONNX - PyTorch| on random inputs."""
    import onnxruntime

    step, torch = _Step.module(model)
    dim = model.observation_dim
    depth, _, hidden = model.rnn_init_hidden.shape
    example = (torch.zeros(2, dim), torch.zeros(depth, 2, hidden))
    torch.onnx.export(
        step, example, str(path), input_names=["observation", "hidden"], output_names=["mean", "hidden_out"],
        dynamic_axes={"observation": {0: "batch"}, "hidden": {1: "batch"}, "mean": {0: "batch"},
                      "hidden_out": {1: "batch"}},
        opset_version=opset, dynamo=False,
    )
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(7, dim)) * 0.1).astype(np.float32)
    h = rng.normal(size=(depth, 7, hidden)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"observation": x, "hidden": h})
    with torch.no_grad():
        want = [t.numpy() for t in step(torch.from_numpy(x), torch.from_numpy(h))]
    return float(max(np.abs(a - b).max() for a, b in zip(got, want)))


def section(model, path: Path, options: TrainOptions, training: dict[str, Any], opset: int) -> dict[str, Any]:
    """The manifest's ``clustering.uisrnn`` entry for an exported model."""
    import torch

    depth, _, hidden = model.rnn_init_hidden.shape
    dim = model.observation_dim
    return {
        "path": path.name,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "opset": opset,
        "inputs": [{"name": "observation", "dtype": "float32", "shape": ["batch", dim]},
                   {"name": "hidden", "dtype": "float32", "shape": [depth, "batch", hidden]}],
        "outputs": [{"name": "mean", "dtype": "float32", "shape": ["batch", dim]},
                    {"name": "hidden_out", "dtype": "float32", "shape": [depth, "batch", hidden]}],
        "model": "UIS-RNN (Zhang et al., ICASSP 2019), uisrnn 0.1.2 reference training",
        "observation_dim": int(dim),
        "hidden_size": int(hidden),
        "depth": int(depth),
        "sigma2": [float(v) for v in model.sigma2.detach().cpu().numpy().reshape(-1)],
        "transition_bias": float(model.transition_bias),
        "crp_alpha": float(model.crp_alpha),
        "input_scale": input_scale(options, dim),
        "init_hidden": [[float(v) for v in row] for row in model.rnn_init_hidden.detach().cpu().numpy()[:, 0, :]],
        "observations": "one per active local speaker per step, ordered by the centre of its activity "
                        "(edged.diarize.uisrnn.step_observations)",
        "training": training,
        "options": asdict(options),
        "tools": {"torch": torch.__version__, "uisrnn": _version("uisrnn")},
    }


def save_reference(model, path: Path) -> None:
    """The reference model's weights and constants (tensors and floats only: ``torch.load`` safe)."""
    import torch

    torch.save({
        "rnn_state_dict": model.rnn_model.state_dict(),
        "rnn_init_hidden": model.rnn_init_hidden.detach().cpu().clone(),
        "sigma2": model.sigma2.detach().cpu().clone(),
        "transition_bias": float(model.transition_bias),
        "crp_alpha": float(model.crp_alpha),
    }, path)


def load_reference(bundle: Path):
    """The reference ``uisrnn.UISRNN`` saved by ``edged-export uisrnn`` in ``bundle`` (host only)."""
    import torch
    from torch import nn

    section = read_manifest(bundle).get("clustering", {}).get("uisrnn")
    if not section or "reference_model" not in section:
        raise ExportError(f"{bundle}: no UIS-RNN reference model; run edged-export uisrnn --out {bundle}")
    path = Path(bundle) / section["reference_model"]["path"]
    if not path.is_file() or sha256_file(path) != section["reference_model"]["sha256"]:
        raise ExportError(f"{path}: missing or does not match the manifest; re-run edged-export uisrnn --out {bundle}")
    state = torch.load(path, weights_only=True)
    options = TrainOptions(hidden_size=int(section["hidden_size"]), depth=int(section["depth"]),
                           crp_alpha=float(section["crp_alpha"]))
    model_args, _, _ = arguments(int(section["observation_dim"]), options)
    model = reference().UISRNN(model_args)
    model.rnn_model.load_state_dict(state["rnn_state_dict"])
    model.rnn_init_hidden = nn.Parameter(state["rnn_init_hidden"])
    model.sigma2 = nn.Parameter(state["sigma2"])
    model.transition_bias = float(state["transition_bias"])
    model.crp_alpha = float(state["crp_alpha"])
    model.rnn_model.eval()
    return model


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def same_up_to_renaming(a: Sequence[int], b: Sequence[int]) -> bool:
    """True when a one-to-one renaming of speakers maps ``a`` onto ``b``."""
    if len(a) != len(b):
        return False
    forward: dict[int, int] = {}
    backward: dict[int, int] = {}
    for x, y in zip(a, b):
        if forward.setdefault(int(x), int(y)) != int(y) or backward.setdefault(int(y), int(x)) != int(x):
            return False
    return True


def decoder_parity(model, network, sequences: Sequence[np.ndarray], beam: int = 10) -> dict[str, Any]:
    """Reference ``predict`` (look_ahead 1, test_iteration 1) vs the edge decoder offline."""
    from edged.diarize.uisrnn import UISRNNDecoder

    _, _, inference_args = arguments(model.observation_dim, TrainOptions(), beam)
    decoder = UISRNNDecoder(network, beam_size=beam, lag=None, max_speakers=1 << 20)
    same = 0
    observations = 0
    mismatches = []
    for i, seq in enumerate(sequences):
        want = model.predict(np.asarray(seq, dtype=float), inference_args)
        got = decoder.decode(seq)
        observations += len(seq)
        if same_up_to_renaming(got, want):
            same += 1
        else:
            mismatches.append(i)
    return {"sequences": len(sequences), "observations": observations, "identical_up_to_renaming": same,
            "mismatched": mismatches, "beam": beam}


def stage(model, path: Path, options: TrainOptions, training: dict[str, Any], opset: int = 17):
    """Export to ``path`` (ONNX parity gate), then the manifest entry and the edge network over
    that file: ``(entry, UISRNNNetwork)``; the entry's ``path`` is the file name."""
    from edged.models.bundle import ModelFile, UISRNNInfo
    from edged.diarize.uisrnn import UISRNNNetwork

    diff = export_onnx(model, path, opset)
    if not diff <= ONNX_TOLERANCE:
        raise ParityError(f"UIS-RNN ONNX step differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE}); "
                          "check the onnx/onnxruntime versions")
    entry = section(model, path, options, training, opset)
    info = UISRNNInfo(
        file=ModelFile("clustering", "uisrnn", path, entry["sha256"], ("observation", "hidden"), ("mean", "hidden_out")),
        observation_dim=entry["observation_dim"], hidden_size=entry["hidden_size"], depth=entry["depth"],
        sigma2=tuple(entry["sigma2"]), transition_bias=entry["transition_bias"], crp_alpha=entry["crp_alpha"],
        init_hidden=tuple(tuple(r) for r in entry["init_hidden"]), input_scale=entry["input_scale"])
    entry["onnx_max_abs_diff"] = diff
    return entry, UISRNNNetwork(info)


def write_section(bundle: Path, entry: dict[str, Any]) -> None:
    """Put ``entry`` at ``clustering.uisrnn`` of the bundle's manifest (atomic replace)."""
    manifest = read_manifest(bundle)
    manifest.setdefault("clustering", {})["uisrnn"] = entry
    path = bundle / MANIFEST_NAME
    with tempfile.NamedTemporaryFile("w", dir=bundle, suffix=".tmp", delete=False, encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    Path(handle.name).replace(path)


@dataclass
class UISRNNExport:
    """Everything ``edged-export uisrnn`` needs; the CLI fills it."""

    out: Path
    train: Sequence[Path] = ()
    reference: Sequence[Path] = ()
    conversations: Path | None = None
    conversation_count: int = 0
    conversation_duration: float = 60.0
    conversation_seed: int = 0
    variant: str = "int8"
    options: TrainOptions = field(default_factory=TrainOptions)
    parity_sequences: int = 5
    parity_max_length: int = 60
    beam: int = 10
    opset: int = 17
    cache_dir: Path | None = None


def run(job: UISRNNExport, build_sequences: Callable[[UISRNNExport], Sequence[TrainingSequence]]) -> dict[str, Any]:
    """Build data (``build_sequences``), train, export, check parity, then write the ONNX file and
    the manifest section."""
    started = time.perf_counter()
    load_bundle(job.out, variants=(job.variant,))  # a bad bundle fails before any work
    reference()
    sequences = build_sequences(job)
    model = train(sequences, job.options)
    selected = [s.select(job.options.min_purity) for s in sequences]
    training = {
        "sequences": [{"name": s.name, "source": s.source, "observations": len(s.labels),
                       "trained": len(y), "speakers": len(set(y))} for s, (_, y) in zip(sequences, selected)],
        "observations": int(sum(len(y) for _, y in selected)),
        "embedding_variant": job.variant,
        "pipeline": {k: getattr(PipelineParams(), k) for k in ("duration", "step", "tau_active", "gamma", "beta")},
        "conversations": None if job.conversations is None else {
            "source": str(job.conversations), "count": job.conversation_count,
            "duration": job.conversation_duration, "seed": job.conversation_seed},
    }
    with tempfile.TemporaryDirectory(dir=job.out) as tmp:
        entry, network = stage(model, Path(tmp) / ONNX_NAME, job.options, training, job.opset)
        staged = Path(tmp) / ONNX_NAME
        parity_seqs = [s.embeddings[: job.parity_max_length].astype(np.float64) * entry["input_scale"]
                       for s in sequences if len(s.labels) >= 2][: job.parity_sequences]
        parity = decoder_parity(model, network, parity_seqs, job.beam)
        parity["onnx_max_abs_diff"] = entry.pop("onnx_max_abs_diff")
        if parity["identical_up_to_renaming"] != parity["sequences"]:
            raise ParityError(
                f"edge UIS-RNN decoder differs from uisrnn predict on sequences {parity['mismatched']} "
                f"of {parity['sequences']}; report this with the bundle")
        entry["parity"] = parity
        saved = Path(tmp) / REFERENCE_NAME
        save_reference(model, saved)
        entry["reference_model"] = {"path": REFERENCE_NAME, "bytes": saved.stat().st_size,
                                    "sha256": sha256_file(saved), "format": "torch state (host only, not loaded by the edge)"}
        entry["export_seconds"] = round(time.perf_counter() - started, 1)
        staged.replace(job.out / ONNX_NAME)
        saved.replace(job.out / REFERENCE_NAME)
    write_section(job.out, entry)
    load_bundle(job.out, variants=(job.variant,))  # verifies the new section and its checksum
    return entry
