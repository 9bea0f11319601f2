"""int8 quantization with onnxruntime.

- Segmentation (SincNet + LSTM + linear): dynamic quantization of MatMul/LSTM/Gemm weights.
- CAM++ (convolutional): static QDQ, per-channel int8 weights on Conv only, the first and the
  last Conv left in float, activation ranges from percentile calibration on real speech.
  ReLUs that follow a quantized Conv are folded into it (the Conv's output is quantized with
  the ReLU's range, and onnxruntime runs Conv+ReLU as one int8 op): without that, every such
  pair costs a dequantize/requantize round trip, and the extra rounding makes embeddings worse.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

SEGMENTATION_METHOD = "dynamic int8 weights (MatMul, LSTM, Gemm), per-tensor"
EMBEDDING_METHOD = "static QDQ int8, per-channel Conv weights, Conv+ReLU fused, first/last Conv in float, percentile calibration"
CALIBRATION_PERCENTILE = 99.999


class _Batches(CalibrationDataReader):
    """Feeds pre-computed input dicts to the calibrator, one at a time."""

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]]):
        self._iter = iter(list(batches))

    def get_next(self):
        return next(self._iter, None)


def _preprocess(src: Path, dst: Path, symbolic_shapes: bool = True) -> None:
    """Shape inference and graph optimisation (Conv+BN folding) before quantization."""
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=not symbolic_shapes)


def quantize_segmentation(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantization of the segmentation model."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        _preprocess(fp32, pre)
        quantize_dynamic(
            str(pre),
            str(out),
            op_types_to_quantize=["MatMul", "LSTM", "Gemm"],
            weight_type=QuantType.QInt8,
            per_channel=False,
        )


def conv_nodes(path: Path) -> list[str]:
    """Names of the Conv nodes in graph order."""
    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


def quantize_embedding(fp32: Path, out: Path, calibration: Iterable[Mapping[str, np.ndarray]]) -> None:
    """Static QDQ int8 quantization of CAM++ calibrated on ``calibration`` input dicts."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # symbolic shape inference cannot follow the strided weights slice; ONNX inference can
        _preprocess(fp32, pre, symbolic_shapes=False)
        convs = conv_nodes(pre)
        if len(convs) < 3:
            raise ValueError(f"{fp32}: expected a convolutional embedding model, found {len(convs)} Conv nodes")
        # the calibrator prints progress to stdout; keep the CLI output to the summary
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre),
                str(out),
                _Batches(calibration),
                quant_format=QuantFormat.QDQ,
                # Relu only goes with a quantized Conv before it (onnxruntime's removable activation)
                op_types_to_quantize=["Conv", "Relu"],
                nodes_to_exclude=[convs[0], convs[-1]],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE, "CalibTensorRangeSymmetric": False},
            )
