"""Pipeline presets in a bundle's manifest: the shipped, tuned ones, and writing new ones.

The presets belong to the embedding (and segmentation) model they were tuned with: ``presets.json``
beside this module records the sha256 of both source checkpoints, and ``edged-export`` writes
its presets into a bundle only when the bundle is made from those same checkpoints.
``edged-tune --write-bundle`` writes presets tuned on your own recordings with ``write_presets``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edged.diarize.params import PipelineParams
from edged.models.bundle import MANIFEST_NAME, load_bundle, read_manifest

from .errors import ExportError

SHIPPED = Path(__file__).with_name("presets.json")


def _section(by_latency: Mapping[float, Mapping[str, Any]], source: str) -> dict[str, Any]:
    latencies: dict[str, dict[str, Any]] = {}
    for latency, values in sorted(by_latency.items()):
        values = {k: v for k, v in values.items() if k != "latency"}
        try:
            PipelineParams.from_dict({**values, "latency": float(latency)})
        except ValueError as exc:
            raise ExportError(f"preset for latency {latency:g} s is not valid ({exc})") from None
        latencies[f"{float(latency):g}"] = values
    if not latencies:
        raise ExportError("no presets to write; tune at least one latency")
    return {"latencies": latencies, "source": source}


def shipped_presets(segmentation_sha256: str | None, embedding_sha256: str | None) -> dict[str, Any] | None:
    """The manifest ``presets`` section shipped for these source checkpoints, or None."""
    if not SHIPPED.is_file():
        return None
    data = json.loads(SHIPPED.read_text(encoding="utf-8"))
    tuned_for = data.get("tuned_for", {})
    if (tuned_for.get("segmentation_sha256"), tuned_for.get("embedding_sha256")) != (segmentation_sha256, embedding_sha256):
        return None
    return _section({float(k): v for k, v in data["latencies"].items()}, data.get("source", ""))


def write_presets(bundle: Path, by_latency: Mapping[float, Mapping[str, Any]], source: str,
                  replace_all: bool = False) -> dict[str, Any]:
    """Write presets into an existing bundle's manifest (atomically), keeping the presets of other
    latencies unless ``replace_all``; the bundle is verified again afterwards. The new section."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    old = manifest.get("presets") or {}
    merged = {} if replace_all else {float(k): v for k, v in old.get("latencies", {}).items()}
    merged.update({float(k): dict(v) for k, v in by_latency.items()})
    sources = [] if replace_all or not old.get("source") else [old["source"]]
    manifest["presets"] = _section(merged, "; ".join(dict.fromkeys([*sources, source])))
    path = bundle / MANIFEST_NAME
    with tempfile.NamedTemporaryFile("w", dir=bundle, prefix=".manifest-", suffix=".tmp", delete=False,
                                     encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    Path(handle.name).replace(path)
    load_bundle(bundle, variants=())  # the edge loader must accept what we wrote
    return manifest["presets"]
