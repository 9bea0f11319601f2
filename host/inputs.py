"""Inputs of a benchmark or tuning run: audio files (or folders of them) matched with references.

A recording's uri is its file name without extension, as in RTTM files. Everything is validated
before any compute is spent, with one-line errors naming the file and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edged.errors import AudioError

from .scoring import ScoringError, ScoringInput, load_rttm, load_uem, prepare

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def find_audio(paths: Sequence[Path | str]) -> dict[str, Path]:
    """uri -> audio path, from files and folders (a folder's ``*.wav|flac|ogg``, not recursive)."""
    if not paths:
        raise AudioError("no audio given; pass WAV/FLAC/OGG files or folders holding them")
    found: dict[str, Path] = {}
    for item in map(Path, paths):
        if item.is_dir():
            files = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise AudioError(f"{item}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder; pass files or another folder")
        elif item.is_file():
            files = [item]
        else:
            raise AudioError(f"{item}: audio file or folder not found; check the path")
        for path in files:
            uri = path.stem
            if uri in found and found[uri].resolve() != path.resolve():
                raise AudioError(f"two inputs have the uri {uri!r} ({found[uri]} and {path}); rename one, uris must be unique")
            found[uri] = path
    return found


def audio_duration(path: Path) -> float:
    """Seconds of audio in a file (header only); AudioError names the file."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError...
        raise AudioError(f"{path}: cannot decode audio ({exc}); use WAV, FLAC or OGG") from None
    if info.frames == 0:
        raise AudioError(f"{path}: audio file is empty")
    return info.frames / info.samplerate


@dataclass
class Dataset:
    """Recordings with their references and scored regions, grouped by folder."""

    audio: dict[str, Path]
    items: dict[str, ScoringInput]
    groups: dict[str, str]  # uri -> group name (the audio file's folder name)

    @property
    def duration(self) -> float:
        return sum(item.duration for item in self.items.values())


def load_dataset(
    inputs: Sequence[Path | str], reference: Sequence[Path | str], uem: Sequence[Path | str] = ()
) -> Dataset:
    """Find the audio, read references (and UEMs) and match them; every problem is one line."""
    if not reference:
        raise ScoringError("no reference given; pass --reference RTTM_OR_DIR")
    audio = find_audio(inputs)
    durations = {uri: audio_duration(path) for uri, path in audio.items()}
    refs = load_rttm(reference)
    uems = load_uem(uem) if uem else None
    items = prepare(durations, refs, uems)
    groups = {uri: path.parent.name or "." for uri, path in audio.items()}
    return Dataset(audio=audio, items=items, groups=groups)
