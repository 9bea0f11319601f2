"""The edge runtime imports and runs a bundle with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchaudio", "torchcodec", "pyannote", "speakerlab", "lightning"):
                raise ImportError(f"{name} is blocked: the edge runtime must not import it")
    sys.meta_path.insert(0, _NoTorch())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_blocker_really_blocks():
    proc = run_blocked("import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_edge_modules_import_without_torch():
    proc = run_blocked(
        """
        import pkgutil, importlib, edged
        names = [m.name for m in pkgutil.walk_packages(edged.__path__, "edged.")]
        for name in names:
            importlib.import_module(name)
        assert not any(m.split(".")[0] in ("torch", "pyannote") for m in sys.modules)
        print(len(names), "modules")
        """
    )
    assert proc.returncode == 0, proc.stderr


def test_bundle_runs_without_torch(exported_bundle, data_dir):
    proc = run_blocked(
        f"""
        import numpy as np
        from edged.sources.file import read_audio
        from edged.models.blocks import load_models
        models = load_models({str(exported_bundle)!r}, "int8")
        wav = read_audio({str(data_dir / "sample" / "sample.wav")!r})[:80000]
        act = models.segmentation(wav)
        out = models.embedding(wav, act)
        assert act.shape == (293, 3) and out.shape == (3, 192) and np.isfinite(out).all()
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout
