"""The edge loader refuses corrupt, truncated, missing and mismatched bundles, naming the file."""

from __future__ import annotations

import json
import shutil

import pytest

from edged.models.bundle import MANIFEST_NAME, MANIFEST_VERSION, BundleError, load_bundle


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _file(bundle, role="embedding", variant="int8"):
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    return bundle / manifest["models"][role][variant]["path"]


def test_loads_and_verifies(bundle_copy):
    bundle = load_bundle(bundle_copy)
    assert bundle.variants == ("fp32", "int8")
    assert bundle.segmentation.num_speakers == 3 and bundle.embedding.dim == 192
    assert bundle.model("embedding", "int8").path == _file(bundle_copy).resolve()


def test_corrupted_byte(bundle_copy):
    path = _file(bundle_copy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"embedding\.int8\.onnx: sha256 .* does not match the manifest .*corrupt"):
        load_bundle(bundle_copy)


def test_truncated_file(bundle_copy):
    path = _file(bundle_copy, "segmentation", "fp32")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"segmentation\.fp32\.onnx: size 1000 bytes, manifest says \d+ \(truncated"):
        load_bundle(bundle_copy)


def test_missing_file(bundle_copy):
    _file(bundle_copy, "segmentation", "int8").unlink()
    with pytest.raises(BundleError, match=r"segmentation\.int8\.onnx: model file is missing"):
        load_bundle(bundle_copy)


def test_manifest_from_another_version(bundle_copy):
    mpath = bundle_copy / MANIFEST_NAME
    manifest = json.loads(mpath.read_text())
    manifest["version"] = MANIFEST_VERSION + 1
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"manifest version {MANIFEST_VERSION + 1}, this edged reads version {MANIFEST_VERSION}"):
        load_bundle(bundle_copy)


def test_manifest_missing_or_not_json(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(BundleError, match="manifest is not valid JSON"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="model bundle folder not found"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest missing"):
        load_bundle(tmp_path / "empty")


def test_manifest_lacking_fields(bundle_copy):
    mpath = bundle_copy / MANIFEST_NAME
    manifest = json.loads(mpath.read_text())
    del manifest["segmentation"]["frame_step"]
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="segmentation lacks frame_step"):
        load_bundle(bundle_copy)


def test_only_requested_variant_is_hashed(bundle_copy):
    _file(bundle_copy, "embedding", "fp32").unlink()
    bundle = load_bundle(bundle_copy, variants=("int8",))
    assert bundle.variants == ("int8",)
    with pytest.raises(BundleError, match="no fp32 embedding model in this bundle"):
        bundle.model("embedding", "fp32")
