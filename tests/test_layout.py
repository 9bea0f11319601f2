"""The architecture, enforced: imports point one way, and the file path loads no daemon stack.

Layers, lowest first: errors and config (typed dataclasses), dsp, sources, models, diarize,
messages, delivery, profiles (voice profiles and speaker state on disk), settings (config files),
service, cli. A module may import its own package
and lower layers only, including imports inside functions. ``edged.config`` composes the
pipeline's own dataclass, ``edged.diarize.params``, which imports nothing above errors.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANK = {"errors": 0, "config": 0, "dsp": 1, "sources": 2, "models": 3, "diarize": 4, "messages": 5,
        "delivery": 6, "profiles": 6.5, "settings": 7, "service": 8, "cli": 9}
ALLOWED = {("edged.config", "edged.diarize.params")}  # the one upward edge, to a leaf dataclass module
LEAVES = {"edged.diarize.params": {"edged.errors"}}


def module_name(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join((package, *parts)).removesuffix(".__init__")


def imported(path: Path, name: str) -> set[str]:
    """Every module an ``import`` statement in the file names (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "edged" and len(parts) > 1 and parts[1] in RANK else None


def edge_modules() -> dict[str, Path]:
    root = REPO / "edged"
    return {module_name(p, root, "edged"): p for p in root.rglob("*.py")}


def test_every_package_is_installed():
    """A non-editable install (the device's, the arm64 proof's) only has the packages pyproject lists."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {module_name(p, REPO / "edged", "edged") for p in (REPO / "edged").rglob("__init__.py")}
    assert on_disk <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"


def test_every_edge_module_has_a_layer():
    unplaced = [m for m in edge_modules() if m != "edged" and layer(m) is None]
    assert not unplaced, f"modules outside the layers {sorted(RANK)}: {unplaced}"


def test_imports_point_down_the_layers():
    modules = edge_modules()
    wrong = []
    for name, path in modules.items():
        for target in imported(path, name):
            if target.split(".")[0] in ("edged_export", "edged_host", "torch", "pyannote"):
                wrong.append(f"{name} imports {target}")
                continue
            if target not in modules or name == "edged" or target == "edged":
                continue
            if name in LEAVES and target not in LEAVES[name]:
                wrong.append(f"{name} must stay a leaf but imports {target}")
            src, dst = layer(name), layer(target)
            if dst is None or (name, target) in ALLOWED or src == dst:
                continue
            if RANK[dst] >= RANK[src]:
                wrong.append(f"{name} ({src}) imports {target} ({dst})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_export_imports_nothing_from_host():
    root = REPO / "export"
    wrong = [f"{module_name(p, root, 'edged_export')} imports {t}" for p in root.rglob("*.py")
             for t in imported(p, module_name(p, root, "edged_export")) if t.split(".")[0] == "edged_host"]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from edged.service.daemon import Daemon\n")
    assert "edged.service.daemon" in imported(bad, "edged.dsp.bad")
    assert RANK[layer("edged.service.daemon")] > RANK[layer("edged.dsp.bad")]


def test_diarize_loads_no_daemon_stack_and_no_scipy(bundle, data_dir, tmp_path):
    code = (
        "import sys; from edged.cli import main; "
        "rc = main(sys.argv[1:]); "
        "loaded = sorted(m for m in ('paho', 'pyaudio', 'scipy', 'yaml', 'torch') if m in sys.modules); "
        "print('LOADED', loaded); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "diarize", str(data_dir / "falcon" / "falcon.wav"), "--models", str(bundle),
         "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout
