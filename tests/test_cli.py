"""``edged diarize`` end to end, torch-free, with one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO
from test_torch_free import BLOCK_TORCH


def test_diarize_writes_rttm_and_events_without_torch(bundle, data_dir, tmp_path):
    code = BLOCK_TORCH + "from edged.cli import main; import sys; rc = main(sys.argv[1:]); " \
        "assert not any(m.split('.')[0] in ('torch', 'pyannote') for m in sys.modules); sys.exit(rc)"
    proc = subprocess.run(
        [sys.executable, "-c", code, "diarize", str(data_dir / "sample" / "sample.wav"),
         str(data_dir / "falcon" / "falcon.wav"), str(tmp_path / "missing.wav"),
         "--models", str(bundle), "--output", str(tmp_path / "out"), "--latency", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 1, proc.stderr  # one input failed, the others were written
    assert proc.stderr.strip() == f"edged: error: {tmp_path / 'missing.wav'}: audio file not found"
    rttm = (tmp_path / "out" / "sample.rttm").read_text().splitlines()
    assert rttm and all(line.startswith("SPEAKER sample 1 ") for line in rttm)
    events = [json.loads(l) for l in (tmp_path / "out" / "sample.events.jsonl").read_text().splitlines()]
    turns = [e for e in events if e["type"] == "turn"]
    assert len(turns) == len(rttm)
    assert set(turns[0]) >= {"speaker", "start", "end", "duration", "confidence", "seq", "stream_seq", "device_id"}
    assert (tmp_path / "out" / "falcon.rttm").read_text()
    assert "sample: 30.0 s" in proc.stdout and "falcon: 18.6 s" in proc.stdout


def test_bad_bundle_is_one_line(tmp_path, data_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "edged.cli", "diarize", str(data_dir / "sample" / "sample.wav"),
         "--models", str(tmp_path / "nobundle")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "model bundle folder not found" in proc.stderr
