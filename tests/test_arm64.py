"""Proof on 64-bit Arm: ``scripts/arm64/run.sh`` under qemu user emulation with the session's bundle.

The script installs edged in an arm64 Debian bookworm root with ``scripts/install.sh`` (base +
``alsa`` extra, pyaudio compiled there against portaudio19-dev), runs ``edged check``, ``edged
diarize`` and the daemon publishing to a mosquitto on the host's loopback, and requires the arm64
turns to match the x86-64 ones (identical, or < 0.1 DER point apart) and the daemon's turns to
arrive over MQTT (scripts/arm64/compare.py). With ``CI`` set the root is built fresh with
debootstrap (also with ``EDGED_ARM64_FRESH=1``); locally the cached root
(/var/cache/edged-arm64/root) is reused. Needs root and the
network (Debian mirror, Python package registry). Minutes, not seconds: emulation is 40-65x
slower than a device, and nothing here measures speed.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "scripts" / "arm64" / "run.sh"
TIMEOUT_S = 2700  # fails well inside CI's limit should a step hang; a fresh run takes ~20-30 min
# binary -> apt package that provides it
NEEDED = {"debootstrap": "debootstrap", "qemu-aarch64-static": "qemu-user-static",
          "update-binfmts": "binfmt-support", "mosquitto": "mosquitto", "unshare": "util-linux",
          "findmnt": "util-linux", "chroot": "coreutils"}


def _requirements() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("the arm64 proof needs root (debootstrap, mount, chroot); run the tests as root")
    if platform.machine() not in ("x86_64", "aarch64"):
        problems.append(f"the arm64 proof runs on x86-64 (under qemu) or aarch64 hosts, not {platform.machine()}")
    native = platform.machine() == "aarch64"
    for binary, package in NEEDED.items():
        if native and package in ("qemu-user-static", "binfmt-support"):
            continue
        if not (shutil.which(binary) or Path("/usr/sbin", binary).exists()):
            problems.append(f"{binary} not found; apt-get install {package}")
    return problems


def _mounted_roots() -> list[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=True).stdout
    return [t for t in out.splitlines() if "edged-arm64" in t]


def test_arm64_install_diarize_and_daemon_match_x86(bundle, data_dir, tmp_path):
    problems = _requirements()
    if problems:
        if os.environ.get("CI"):
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))
    before = _mounted_roots()
    work = tmp_path / "work"
    log = tmp_path / "arm64.log"
    env = {**os.environ, "EDGED_DATA": str(data_dir), "EDGED_ARM64_WORK": str(work)}
    fresh = os.environ.get("CI") or os.environ.get("EDGED_ARM64_FRESH") == "1"
    cmd = ["bash", str(RUN), "--models", str(bundle), "--fresh" if fresh else "--cached"]
    with open(log, "w") as out:
        # own process group: on a timeout the whole run gets SIGTERM, so run.sh's trap tears down
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            pytest.fail(f"scripts/arm64/run.sh ran past {TIMEOUT_S} s; log tail:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert _mounted_roots() == before, f"mounts left behind: {_mounted_roots()}"
    assert rc == 0, f"scripts/arm64/run.sh failed ({rc}); log tail:\n{text[-6000:]}"
    assert "PASS:" in text and "nothing mounted under" in text, text[-3000:]
    assert "== arm64" in text and "inside Debian GNU/Linux 12 (bookworm), aarch64" in text, text[-3000:]
    compare = (work / "compare.txt").read_text().splitlines()
    assert compare and all(line.startswith("ok") for line in compare), "\n".join(compare)
    assert [line.split()[1] for line in compare] == ["diarize", "daemon", "MQTT:"], "\n".join(compare)
    check = (work / "check.txt").read_text()
    assert "broker  mqtt://127.0.0.1:" in check and "checksums verified, sessions open" in check, check
    versions = (work / "versions.txt").read_text()
    assert "uname -m: aarch64" in versions and "PyAudio==" in versions, versions
    print("\n".join(compare))
