"""onnxruntime sessions: unavailable execution providers fall back to CPU with a log line."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edged.models.bundle import load_bundle
from edged.errors import BundleError
from edged.models.runtime import create_session


def test_missing_provider_falls_back_to_cpu(bundle, caplog):
    path = load_bundle(bundle, variants=("int8",)).model("segmentation", "int8").path
    with caplog.at_level(logging.WARNING, logger="edged.models.runtime"):
        session = create_session(path, providers=("TensorrtExecutionProvider", "CUDAExecutionProvider"))
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "TensorrtExecutionProvider is not available here; falling back to CPUExecutionProvider" in caplog.text
    out = session.run(None, {"waveform": np.zeros((1, 1, 16000), np.float32)})[0]
    assert out.shape[2] == 3


def test_unloadable_model_is_a_bundle_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(BundleError, match=r"model\.onnx: onnxruntime cannot load this model"):
        create_session(bad)
