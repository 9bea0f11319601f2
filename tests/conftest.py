"""Shared fixtures: the data folder, one real exported bundle, its copy with a UIS-RNN and its int8
models per test session, the LibriSpeech readers of the shared data, and a real mosquitto per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mosquitto import Mosquitto  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$EDGED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("EDGED_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not root.is_dir():
        message = f"test data not found at {root}; set EDGED_DATA to the shared data folder"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory, data_dir) -> Path:
    """A real fp32 + int8 export through the CLI: calibrated on LibriSpeech utterances and AMI
    training excerpts, parity-checked on an AMI dev excerpt and the three-speaker clip (disjoint).

    Calibration needs meeting audio: calibrated on read speech alone, CAM++ int8 reached only
    cosine 0.970 on AMI (measured), below the 0.98 gate."""
    out = tmp_path_factory.mktemp("bundle") / "models"
    libri = sorted((data_dir / "librispeech").glob("*/*.flac"))
    calibration = [p for i, p in enumerate(libri) if i % 10 == 0][:6]  # one utterance of 6 speakers
    calibration += [data_dir / "ami-debug" / f"trn0{i}.wav" for i in range(3)]
    parity = [data_dir / "ami-debug" / "dev00.wav", data_dir / "falcon" / "falcon.wav"]
    cmd = [sys.executable, "-m", "edged_export.cli", "--quantize", "--out", str(out),
           "--calibration-audio", *map(str, calibration), "--parity-audio", *map(str, parity)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out.parent / "summary.txt").write_text(proc.stdout)
    return out


@pytest.fixture(scope="session")
def bundle(request) -> Path:
    """The bundle tests of the edge runtime use: ``exported_bundle``, or, for quick local runs,
    an existing bundle named by ``EDGED_TEST_BUNDLE`` (ignored in CI)."""
    existing = os.environ.get("EDGED_TEST_BUNDLE")
    if existing and not os.environ.get("CI"):
        return Path(existing)
    return request.getfixturevalue("exported_bundle")


@pytest.fixture(scope="session")
def uisrnn_bundle(bundle, data_dir, tmp_path_factory) -> Path:
    """A copy of ``bundle`` plus a UIS-RNN trained for real through the CLI on tiny data (~15 s):
    one AMI training excerpt (two speakers, one with a non-ASCII label) and one short conversation
    synthesized from LibriSpeech. Built once per session: the UIS-RNN and the speaker state tests
    share it."""
    out = tmp_path_factory.mktemp("uisrnn") / "bundle"
    shutil.copytree(bundle, out)
    ami = data_dir / "ami-debug"
    cmd = [sys.executable, "-m", "edged_export.cli", "uisrnn", "--out", str(out),
           "--train", str(ami / "trn03.wav"), "--reference", str(ami / "reference.rttm"),
           "--conversations", str(data_dir / "librispeech"), "--conversation-count", "1",
           "--conversation-duration", "20", "--iterations", "20", "--hidden-size", "32",
           "--parity-sequences", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decoder = uisrnn predict on 2/2 sequences" in proc.stdout, proc.stdout
    return out


@pytest.fixture(scope="session")
def models(bundle):
    """The int8 models of ``bundle``, loaded once per session."""
    from edged.models.blocks import load_models

    return load_models(bundle, "int8")


@pytest.fixture(scope="session")
def libri(data_dir) -> dict[str, list[Path]]:
    """LibriSpeech reader -> its utterances, in ``manifest.tsv`` order."""
    from edged_host.conversations import load_sources

    return load_sources(data_dir / "librispeech")


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on free ports, stopped after the test."""
    m = Mosquitto(tmp_path / "broker").start()
    yield m
    m.stop()
