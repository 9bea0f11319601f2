"""benchmarks/step_speed.py: interleaved per-step timing of bundles (figures only, no timed asserts)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "step_speed.py"


def test_two_configs_interleaved_on_one_recording(bundle, data_dir, tmp_path):
    (tmp_path / "falcon").mkdir()
    (tmp_path / "falcon" / "falcon.wav").symlink_to(data_dir / "falcon" / "falcon.wav")
    proc = subprocess.run([sys.executable, str(SCRIPT), f"{bundle}:int8", f"{bundle}:fp32", "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 recordings, 18.6 s" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith(str(bundle))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        steps = int(cells[1])
        assert 25 <= steps <= 40  # 18.6 s at a 0.5 s step after the first 5 s window
        wall = [float(x) for x in cells[2].split("/")]
        rtf = [float(x) for x in cells[4].split("/")]
        assert 0 < rtf[0] and 0 < rtf[1]
        cpu = [float(x) for x in cells[3].split("/")]
        assert 0 < wall[0] <= wall[1] and 0 < cpu[0] <= cpu[1]
    assert re.search(r"\| 1\.00x$", rows[0])


def test_bad_config_and_missing_data_are_one_line(bundle, tmp_path):
    bad = subprocess.run([sys.executable, str(SCRIPT), f"{bundle}:int4"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expected BUNDLE:int8 or BUNDLE:fp32" in bad.stderr
    empty = subprocess.run([sys.executable, str(SCRIPT), f"{bundle}:int8", "--data", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "no recordings under" in empty.stderr
