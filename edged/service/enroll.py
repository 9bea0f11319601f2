"""``edged enroll`` and ``edged speakers``: voice profiles from recordings, listed, removed, renamed.

Every check runs before anything is written, so a refused command changes nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edged.diarize.enrollment import check_single_voice, profile_vector, voice_sample
from edged.diarize.identify import Identifier, check_name
from edged.diarize.params import PipelineParams
from edged.models.blocks import Models
from edged.profiles.store import Profile, ProfileError, ProfileStore
from edged.sources.file import read_audio

PROFILES_ENV = "EDGED_PROFILES"
DEFAULT_PROFILES = Path("/var/lib/edged/speakers")  # speakers/ in the unit's StateDirectory


def default_profiles() -> Path:
    return Path(os.environ.get(PROFILES_ENV) or DEFAULT_PROFILES)


def embedding_sha256(models: Models) -> str:
    """sha256 of the embedding model file in use (profiles are only valid with it)."""
    return models.bundle.model("embedding", models.variant).sha256


def profile_from_audio(models: Models, name: str, clips: Sequence[tuple[str, np.ndarray]],
                       params: PipelineParams | None = None) -> Profile:
    """A profile from ``(label, 16 kHz samples)`` clips; EnrollmentError/NameError_ on bad input."""
    check_name(name)
    samples = []
    for label, audio in clips:
        sample = voice_sample(models, audio, params)
        check_single_voice(sample, label)
        samples.append(sample)
    what = clips[0][0] if len(clips) == 1 else f"the {len(clips)} recordings"
    vector, speech = profile_vector(samples, what)
    return Profile(name, vector, embedding_sha256(models), speech, time.time(), tuple(label for label, _ in clips))


def enroll_files(models: Models, store: ProfileStore, name: str, paths: Sequence[Path | str], replace: bool = False,
                 params: PipelineParams | None = None) -> Profile:
    """Enroll ``name`` from audio files and save the profile (nothing is written on any error)."""
    check_name(name)
    if not replace and store.get(name) is not None:
        raise ProfileError(f"speaker {name!r} is already enrolled in {store.folder}; add --replace to overwrite it, "
                           "or choose another name")
    clips = [(str(p), read_audio(p, models.sample_rate)) for p in paths]
    profile = profile_from_audio(models, name, clips, params)
    store.save(profile, replace=replace)
    return profile


def load_identifier(store: ProfileStore, models: Models, threshold: float, voice_threshold: float) -> Identifier:
    """The usable profiles as an Identifier (corrupt or foreign profiles skipped with a warning)."""
    profiles = store.load(embedding_sha256(models))
    vectors = np.asarray([p.vector for p in profiles]) if profiles else None
    return Identifier([p.name for p in profiles], vectors, threshold, voice_threshold)


def list_lines(store: ProfileStore) -> list[str]:
    """One line per profile: name, speech seconds, date, embedding model; then warnings."""
    profiles, warnings = store.scan()
    lines = [f"{p.name}\t{p.speech_s:.1f} s of speech\tenrolled {time.strftime('%Y-%m-%d %H:%M', time.localtime(p.created))}"
             f"\tembedding {p.embedding_sha256[:12]}" for p in profiles]
    return lines + [f"warning: {w}" for w in warnings]
