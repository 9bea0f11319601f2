"""Test helper: a real small filesystem (tmpfs of a few hundred KiB) that runs out of space,
a filler file that takes the rest of it, and giving some of it back. Needs root to mount; skips
naming that otherwise."""

from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_tmpfs(where: Path, size: str = "256k") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``where`` (created) for the block; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real ENOSPC) needs root")
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root with CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(folder: Path, name: str = "filler") -> Path:
    """Write ``folder/name`` until the filesystem is full (ENOSPC); returns its path."""
    path = folder / name
    chunk = b"\0" * 4096
    with open(path, "ab", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        try:  # the last partial block too
            while True:
                handle.write(b"\0")
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return path


def free(filler: Path, size: int) -> None:
    """Give ``size`` bytes of a ``fill``ed filesystem back: the filler's tail is cut off."""
    os.truncate(filler, max(filler.stat().st_size - size, 0))
