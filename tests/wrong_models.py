"""Test helper: put a wrong but loadable ONNX file into a copy of a bundle and update its
manifest entry (size and sha256), so that only the loader's model checks can catch it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edged.models.bundle import MANIFEST_NAME, sha256_file


def segmentation_with_speakers(path: Path, speakers: int, fixed: bool) -> Path:
    """A real ONNX model with the segmentation names (waveform -> activations, active) but
    ``speakers`` outputs per frame. ``fixed``: the last dim is known from the graph; else it
    comes from data (NonZero), so only running the model shows it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1, -1, 10], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["waveform", "shape"], ["r"])]
    if fixed:
        w = numpy_helper.from_array(np.full((10, speakers), 0.1, np.float32), "w")
        nodes.append(helper.make_node("MatMul", ["r", "w"], ["m"]))
    else:
        w = numpy_helper.from_array(np.full((10, 1), 0.1, np.float32), "w")
        ones = numpy_helper.from_array(np.ones(speakers, np.float32), "ones")
        axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
        nodes += [helper.make_node("MatMul", ["r", "w"], ["col"]),            # (1, frames, 1)
                  helper.make_node("NonZero", ["ones"], ["idx"]),             # (1, speakers), data-dependent
                  helper.make_node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT),
                  helper.make_node("Unsqueeze", ["idxf", "axes"], ["row"]),   # (1, 1, speakers)
                  helper.make_node("Add", ["col", "row"], ["m"])]             # (1, frames, speakers)
    nodes += [helper.make_node("Sigmoid", ["m"], ["activations"]),
              helper.make_node("Identity", ["activations"], ["active"])]
    dims = ["batch", "frames", speakers if fixed else "speakers"]
    graph = helper.make_graph(
        nodes, "wrong_segmentation",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", 1, "samples"])],
        [helper.make_tensor_value_info("activations", TensorProto.FLOAT, dims),
         helper.make_tensor_value_info("active", TensorProto.FLOAT, dims)],
        initializer=[w, shape] + ([] if fixed else [ones, axes]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def replace_model(bundle: Path, role: str, variant: str, source: Path) -> Path:
    """Copy ``source`` over the bundle's ``role``/``variant`` file and make the manifest match it."""
    mpath = bundle / MANIFEST_NAME
    manifest = json.loads(mpath.read_text())
    entry = manifest["models"][role][variant]
    target = bundle / entry["path"]
    target.write_bytes(source.read_bytes())
    entry["bytes"] = target.stat().st_size
    entry["sha256"] = sha256_file(target)
    mpath.write_text(json.dumps(manifest, indent=1))
    return target
