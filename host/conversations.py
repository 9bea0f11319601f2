"""Synthetic multi-speaker conversations from single-speaker recordings, with exact references.

Speakers take turns of a controlled length, separated by pauses or overlapping so that a target
fraction of the speech is overlapped; each speaker gets its own level within a loudness spread.
Everything is drawn from one seeded generator: the same sources, spec and seed give the same
bytes.

The reference marks where each source recording is speech by an energy detector (10 ms frames
within ``VAD_RANGE_DB`` of the recording's loud frames and at least ``VAD_FLOOR_DB`` above its noise
floor, so a noisy recording's pauses are not speech; pauses shorter than ``VAD_BRIDGE_S`` are
bridged, blips shorter than ``VAD_MIN_S`` dropped), so leading and trailing silence and long
pauses inside a recording are not counted as speech. Clean read speech (LibriSpeech) suits it.

Sources: a folder with ``manifest.tsv`` (tab-separated, header with ``path`` and ``speaker``
columns, paths relative to the folder; as ``../shared/data/librispeech``), or else one sub-folder
per speaker holding .wav/.flac/.ogg files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.sources.file import read_audio
from edged.errors import EdgedError

SAMPLE_RATE = 16000
FRAME_S = 0.01
VAD_RANGE_DB = 35.0  # speech frames: within this of the recording's 95th-percentile frame level
VAD_FLOOR_DB = 10.0  # ... and this far above its noise floor (10th-percentile frame level)
VAD_BRIDGE_S = 0.25  # pauses shorter than this inside speech are speech
VAD_MIN_S = 0.08  # shorter bursts are dropped
FADE_S = 0.01  # fade at cuts made inside speech
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class ConversationError(EdgedError):
    """Sources or a conversation spec cannot be used (one-line message)."""


def _range(lo: float | None, hi: float | None) -> dict[str, Any]:
    return {"range": (lo, hi)}


@dataclass(frozen=True)
class ConversationSpec:
    """How one conversation is built; durations in seconds."""

    # speakers in the conversation (drawn from the sources)
    speakers: int = field(default=2, metadata=_range(1, None))
    # length of the conversation
    duration: float = field(default=60.0, metadata=_range(2.0, None))
    # shortest and longest turn (speech of one speaker before the next takes over)
    turn_min: float = field(default=1.0, metadata=_range(0.3, None))
    turn_max: float = field(default=6.0, metadata=_range(0.3, None))
    # silence between turns that do not overlap
    pause_min: float = field(default=0.1, metadata=_range(0.0, None))
    pause_max: float = field(default=1.0, metadata=_range(0.0, None))
    # target fraction of the speech time where two speakers talk at once (0: none)
    overlap: float = field(default=0.1, metadata=_range(0.0, 0.5))
    # speaker levels spread uniformly over this many dB around level_dbfs
    loudness_spread_db: float = field(default=6.0, metadata=_range(0.0, 40.0))
    # mean speech level (RMS of speech frames), dBFS
    level_dbfs: float = field(default=-26.0, metadata=_range(-60.0, -3.0))
    # random seed: the same sources, spec and seed give the same conversation
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        import dataclasses

        for f in dataclasses.fields(self):
            lo, hi = f.metadata.get("range", (None, None))
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConversationError(f"{f.name}={value!r} must be a number")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ConversationError(f"{f.name}={value!r} is out of range; allowed "
                                        f"{'' if lo is None else lo}..{'' if hi is None else hi}")
        if self.turn_min > self.turn_max:
            raise ConversationError(f"turn_min={self.turn_min} is above turn_max={self.turn_max}; swap them")
        if self.pause_min > self.pause_max:
            raise ConversationError(f"pause_min={self.pause_min} is above pause_max={self.pause_max}; swap them")
        if self.speakers == 1 and self.overlap > 0:
            raise ConversationError("overlap needs at least 2 speakers; set overlap to 0 or add speakers")


def speech_regions(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[tuple[float, float]]:
    """Energy-detected speech of a clean single-speaker recording, as (start, end) seconds."""
    hop = int(round(FRAME_S * sample_rate))
    frames = len(samples) // hop
    if frames == 0:
        return []
    power = (samples[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2).mean(axis=1)
    level = 10 * np.log10(power + 1e-12)
    # 43 of the 222 recordings in ../shared/data have a noise floor within VAD_RANGE_DB of their
    # speech; without the floor rule their pauses would all count as speech
    threshold = max(np.percentile(level, 95) - VAD_RANGE_DB, np.percentile(level, 10) + VAD_FLOOR_DB)
    active = level > threshold
    regions: list[list[float]] = []
    start = None
    for i, on in enumerate(np.append(active, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            regions.append([start * FRAME_S, i * FRAME_S])
            start = None
    merged: list[list[float]] = []
    for region in regions:
        if merged and region[0] - merged[-1][1] < VAD_BRIDGE_S:
            merged[-1][1] = region[1]
        else:
            merged.append(region)
    return [(a, b) for a, b in merged if b - a >= VAD_MIN_S]


def load_sources(root: Path | str) -> dict[str, list[Path]]:
    """speaker -> recordings, from ``manifest.tsv`` or one sub-folder per speaker."""
    root = Path(root)
    if not root.is_dir():
        raise ConversationError(f"{root}: source folder not found; pass a folder of single-speaker recordings")
    manifest = root / "manifest.tsv"
    speakers: dict[str, list[Path]] = {}
    if manifest.is_file():
        with open(manifest, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows or not {"path", "speaker"} <= set(rows[0]):
            raise ConversationError(f"{manifest}: needs a header with 'path' and 'speaker' columns (tab-separated)")
        for number, row in enumerate(rows, 2):
            path = root / (row["path"] or "")
            if not row["path"] or not path.is_file():
                raise ConversationError(f"{manifest}:{number}: {path} not found; fix the path (relative to {root})")
            speakers.setdefault(str(row["speaker"]).strip(), []).append(path)
    else:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if files:
                speakers[folder.name] = files
    if not speakers:
        raise ConversationError(
            f"{root}: no speakers found; add manifest.tsv (path<TAB>speaker) or one sub-folder of recordings per speaker"
        )
    return speakers


@dataclass
class _Clip:
    audio: np.ndarray
    regions: list[tuple[float, float]]  # speech, seconds from the clip start


@dataclass
class Turn:
    """One turn as placed: speaker, span of its speech, and the recordings it came from."""

    speaker: str
    start: float
    end: float
    sources: list[str]


@dataclass
class Conversation:
    """The mixed audio, the reference speech segments (speaker, start, end), and statistics."""

    name: str
    audio: np.ndarray
    segments: list[tuple[str, float, float]]
    turns: list[Turn]
    levels_db: dict[str, float]
    stats: dict[str, float]
    spec: ConversationSpec
    # per-speaker dry signals before the peak scaling (only with ``keep_tracks``), for effects
    tracks: dict[str, np.ndarray] | None = None
    # what ``apply_effects`` did (empty: a clean conversation)
    effects: dict[str, Any] = field(default_factory=dict)


class _SpeakerStream:
    """A speaker's recordings in a seeded order, cut into turns of the asked length."""

    def __init__(self, speaker: str, files: list[Path], rng: np.random.Generator, cache: dict[Path, _Clip]):
        self.speaker = speaker
        self.files = [files[i] for i in rng.permutation(len(files))]
        self.next = 0
        self.cache = cache

    def _clip(self, path: Path) -> _Clip:
        if path not in self.cache:
            audio = read_audio(path, SAMPLE_RATE)
            regions = speech_regions(audio)
            if regions:
                idx = np.concatenate([np.arange(int(a * SAMPLE_RATE), int(b * SAMPLE_RATE)) for a, b in regions])
                rms = float(np.sqrt(np.mean(audio[idx[idx < len(audio)]].astype(np.float64) ** 2)))
                audio = audio / max(rms, 1e-6)  # speech RMS 1.0 (0 dB); the speaker level is applied later
            self.cache[path] = _Clip(audio.astype(np.float32), regions)
        return self.cache[path]

    def take(
        self, length: float, shortest: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[tuple[float, float]], list[str]]:
        """Up to ``length`` s from speech onset to speech end (recordings joined by short pauses),
        cut at the end of a speech region when one ends after ``shortest`` s and 60% of ``length``."""
        pieces: list[np.ndarray] = []
        regions: list[tuple[float, float]] = []
        sources: list[str] = []
        t = 0.0
        for _ in range(4 * len(self.files)):
            if t >= length:
                break
            path = self.files[self.next % len(self.files)]
            self.next += 1
            clip = self._clip(path)
            if not clip.regions:
                continue
            if pieces:  # a short pause between two recordings of the same speaker
                gap = float(rng.uniform(0.15, 0.3))
                pieces.append(np.zeros(int(round(gap * SAMPLE_RATE)), np.float32))
                t += gap
            first, last = clip.regions[0][0], clip.regions[-1][1]
            lo, hi = int(round(first * SAMPLE_RATE)), int(round(last * SAMPLE_RATE))
            pieces.append(clip.audio[lo:hi])
            regions += [(t + a - first, t + b - first) for a, b in clip.regions]
            sources.append(path.name)
            t += (hi - lo) / SAMPLE_RATE
        if not pieces:
            raise ConversationError(f"speaker {self.speaker}: no speech found in its recordings; check the files")
        audio = np.concatenate(pieces)
        if t > length:  # cut: at the end of a speech region when one ends late enough, else mid-speech with a fade
            ends = [b for _, b in regions if b <= length]
            cut = ends[-1] if ends and ends[-1] >= max(0.6 * length, shortest) else length
            audio = audio[: int(round(cut * SAMPLE_RATE))].copy()
            regions = [(a, min(b, cut)) for a, b in regions if a < cut]
            fade = min(len(audio), int(FADE_S * SAMPLE_RATE))
            audio[len(audio) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        return audio, regions, sources


def _union(segments: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(segments):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def measure(segments: list[tuple[str, float, float]]) -> dict[str, float]:
    """Speech seconds (any speaker), overlapped seconds (two or more) and their ratio."""
    bounds = sorted({t for _, a, b in segments for t in (a, b)})
    speech = overlapped = 0.0
    for a, b in zip(bounds, bounds[1:]):
        mid = (a + b) / 2
        count = sum(1 for _, s, e in segments if s <= mid < e)
        if count >= 1:
            speech += b - a
        if count >= 2:
            overlapped += b - a
    return {"speech_s": speech, "overlap_s": overlapped, "overlap_ratio": overlapped / speech if speech else 0.0}


def build_conversation(
    sources: Mapping[str, list[Path]], spec: ConversationSpec, name: str = "conv000",
    cache: dict[Path, _Clip] | None = None, keep_tracks: bool = False,
) -> Conversation:
    """Draw speakers, place turns with pauses or overlaps, mix at the speakers' levels.

    ``keep_tracks``: also return each speaker's own signal (the mix is their sum) so that
    ``apply_effects`` can put every speaker at its own place in a room."""
    if len(sources) < spec.speakers:
        raise ConversationError(f"{spec.speakers} speakers asked but the sources have {len(sources)}; ask for fewer")
    rng = np.random.default_rng(spec.seed)
    cache = {} if cache is None else cache
    names = sorted(sources)
    chosen = [names[i] for i in sorted(rng.choice(len(names), spec.speakers, replace=False))]
    offsets = rng.uniform(-spec.loudness_spread_db / 2, spec.loudness_spread_db / 2, spec.speakers)
    levels = {s: float(spec.level_dbfs + o) for s, o in zip(chosen, offsets)}
    streams = {s: _SpeakerStream(s, sources[s], rng, cache) for s in chosen}
    total = int(round(spec.duration * SAMPLE_RATE))
    mix = np.zeros(total, np.float64)
    tracks = {s: np.zeros(total, np.float32) for s in chosen} if keep_tracks else None
    segments: list[tuple[str, float, float]] = []
    turns: list[Turn] = []
    ends: list[float] = []  # speech end of every placed turn
    speaker = chosen[int(rng.integers(len(chosen)))]
    t = float(rng.uniform(spec.pause_min, spec.pause_max))
    while t < spec.duration - 0.2:
        length = float(rng.uniform(spec.turn_min, spec.turn_max))
        audio, regions, used = streams[speaker].take(length, spec.turn_min, rng)
        if turns:
            prev = turns[-1]
            stats = measure(segments)
            want = (spec.overlap * (stats["speech_s"] + length) - stats["overlap_s"]) / (1 + spec.overlap)
            floor = ends[-2] if len(ends) >= 2 else 0.0  # never three speakers at once
            most = min(0.8 * (prev.end - prev.start), 0.8 * length, prev.end - floor)
            shift = min(want, most) if spec.overlap > 0 and want > 0.05 else 0.0
            t = prev.end - shift if shift > 0.05 else prev.end + float(rng.uniform(spec.pause_min, spec.pause_max))
            if t >= spec.duration - 0.2:
                break
        start_sample = int(round(t * SAMPLE_RATE))
        gain = 10 ** (levels[speaker] / 20)
        piece = audio[: max(0, total - start_sample)]
        mix[start_sample : start_sample + len(piece)] += gain * piece
        if tracks is not None:
            tracks[speaker][start_sample : start_sample + len(piece)] += (gain * piece).astype(np.float32)
        placed = [(speaker, round(t + a, 3), round(min(t + b, spec.duration), 3)) for a, b in regions if t + a < spec.duration]
        placed = [s for s in placed if s[2] - s[1] > 0]
        if placed:
            segments += placed
            turns.append(Turn(speaker, placed[0][1], placed[-1][2], used))
            ends.append(placed[-1][2])
        t = ends[-1] if ends else t + length
        others = [s for s in chosen if s != speaker]
        speaker = others[int(rng.integers(len(others)))] if others else speaker
    peak = float(np.max(np.abs(mix))) if len(mix) else 0.0
    scale = 0.99 / peak if peak > 0.99 else 1.0
    stats = measure(segments)
    stats.update({"duration_s": spec.duration, "turns": len(turns), "peak_scale": scale})
    return Conversation(name, (mix * scale).astype(np.float32), sorted(segments, key=lambda s: (s[1], s[0])),
                        turns, levels, stats, spec, tracks)


@dataclass
class Effects:
    """Acoustic conditions applied to a conversation built with ``keep_tracks``.

    ``rirs``: speaker -> room impulse response (16 kHz) convolved with that speaker's signal
    (far field; the reference stays the dry speech, as usual for reverberant sets). ``noise`` is
    looped from a random offset and added at ``snr_db`` (speech power over the reference's speech
    time against the noise's power). ``telephone``: 300 Hz high-pass, 8 kHz down-sampling,
    G.711 mu-law 8-bit companding and back to 16 kHz (the band and coding of a narrowband call).
    """

    rirs: Mapping[str, np.ndarray] | None = None
    noise: np.ndarray | None = None
    snr_db: float = 15.0
    telephone: bool = False
    labels: dict[str, Any] = field(default_factory=dict)  # names of the RIRs / noise, for the manifest


def telephone_band(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """300 Hz high-pass, down to 8 kHz (anti-alias at 4 kHz), mu-law 8 bit, back up to ``sample_rate``."""
    from scipy.signal import butter, resample_poly, sosfilt

    x = sosfilt(butter(4, 300, "highpass", fs=sample_rate, output="sos"), audio.astype(np.float64))
    narrow = resample_poly(x, 8000, sample_rate)
    mu = 255.0
    peak = max(1.0, float(np.max(np.abs(narrow))) if len(narrow) else 1.0)
    y = np.sign(narrow / peak) * np.log1p(mu * np.abs(narrow / peak)) / np.log1p(mu)
    y = np.round(y * 127.0) / 127.0  # 8-bit code words
    narrow = peak * np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu
    wide = resample_poly(narrow, sample_rate, 8000)[: len(audio)]
    if len(wide) < len(audio):
        wide = np.pad(wide, (0, len(audio) - len(wide)))
    return wide


def _speech_mask(segments: list[tuple[str, float, float]], length: int, sample_rate: int) -> np.ndarray:
    mask = np.zeros(length, bool)
    for _, a, b in segments:
        mask[int(a * sample_rate) : int(b * sample_rate)] = True
    return mask


def apply_effects(conv: Conversation, effects: Effects, rng: np.random.Generator) -> Conversation:
    """A new conversation with reverberation, noise and/or telephone band applied; same reference."""
    from dataclasses import replace

    from scipy.signal import fftconvolve

    if conv.tracks is None:
        raise ConversationError("effects need the speakers' own signals; build with keep_tracks=True")
    length = len(conv.audio)
    mix = np.zeros(length, np.float64)
    for speaker, track in conv.tracks.items():
        rir = None if effects.rirs is None else effects.rirs.get(speaker)
        if rir is not None:
            wet = fftconvolve(track.astype(np.float64), np.asarray(rir, np.float64))[:length]
            # keep the speaker's level: scale the reverberant signal to the dry one's power
            dry_p, wet_p = float(np.mean(track.astype(np.float64) ** 2)), float(np.mean(wet**2))
            mix += wet * (np.sqrt(dry_p / wet_p) if wet_p > 0 else 0.0)
        else:
            mix += track
    info: dict[str, Any] = dict(effects.labels)
    if effects.noise is not None and len(effects.noise):
        noise = np.asarray(effects.noise, np.float64)
        start = int(rng.integers(len(noise)))
        reps = int(np.ceil((start + length) / len(noise)))
        noise = np.tile(noise, reps)[start : start + length]
        speech = _speech_mask(conv.segments, length, SAMPLE_RATE)
        p_speech = float(np.mean(mix[speech] ** 2)) if speech.any() else float(np.mean(mix**2))
        p_noise = float(np.mean(noise**2))
        if p_noise > 0:
            mix += noise * np.sqrt(p_speech / p_noise / 10 ** (effects.snr_db / 10))
        info.update(snr_db=round(float(effects.snr_db), 2), noise_offset_s=round(start / SAMPLE_RATE, 3))
    if effects.telephone:
        mix = telephone_band(mix)
        info["telephone"] = True
    peak = float(np.max(np.abs(mix))) if length else 0.0
    scale = 0.99 / peak if peak > 0.99 else 1.0
    stats = dict(conv.stats, peak_scale=scale)
    return replace(conv, audio=(mix * scale).astype(np.float32), stats=stats, effects=info)


def write_conversation(conv: Conversation, folder: Path) -> tuple[Path, Path]:
    """``<name>.wav`` (16-bit PCM, 16 kHz) and ``<name>.rttm`` (the exact reference)."""
    import soundfile as sf

    from edged.messages import format_rttm

    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / f"{conv.name}.wav"
    sf.write(str(wav), conv.audio, SAMPLE_RATE, subtype="PCM_16")
    rttm = folder / f"{conv.name}.rttm"
    rttm.write_text(format_rttm(conv.name, [_Seg(*s) for s in conv.segments]), encoding="utf-8")
    return wav, rttm


@dataclass
class _Seg:
    speaker: str
    start: float
    end: float


def draw_effects(speakers: list[str], rng: np.random.Generator, rirs: Mapping[str, np.ndarray] | None = None,
                 noises: Mapping[str, np.ndarray] | None = None, snr: tuple[float, float] = (5.0, 20.0),
                 telephone: bool = False) -> Effects:
    """Seeded conditions: each speaker one RIR of ``rirs`` (name -> response), one noise of ``noises``
    at an SNR drawn uniformly in ``snr`` dB, and optionally the telephone band."""
    labels: dict[str, Any] = {}
    chosen = None
    if rirs:
        names = sorted(rirs)
        picks = {s: names[int(rng.integers(len(names)))] for s in speakers}
        chosen = {s: rirs[n] for s, n in picks.items()}
        labels["rirs"] = picks
    noise = None
    snr_db = 0.0
    if noises:
        names = sorted(noises)
        name = names[int(rng.integers(len(names)))]
        noise, snr_db = noises[name], float(rng.uniform(*snr))
        labels["noise"] = name
    return Effects(chosen, noise, snr_db, telephone, labels)


def load_effect_files(paths: list[Path]) -> dict[str, np.ndarray]:
    """name (file stem) -> 16 kHz samples of RIR or noise files."""
    out = {}
    for path in paths:
        if not Path(path).is_file():
            raise ConversationError(f"{path}: RIR/noise file not found; check the path")
        out[Path(path).stem] = read_audio(path, SAMPLE_RATE)
    return out


def build_set(source: Path | str, output: Path, spec: ConversationSpec, count: int = 1, prefix: str = "conv",
              rirs: list[Path] = (), noises: list[Path] = (), snr: tuple[float, float] = (5.0, 20.0),
              telephone: bool = False) -> dict:
    """``count`` conversations (seeds ``spec.seed``, ``spec.seed + 1``, ...) into ``output``:
    WAV + RTTM each, ``reference.rttm`` and ``reference.uem`` for all, ``conversations.json``.
    With ``rirs``/``noises``/``telephone`` each conversation gets drawn conditions (``draw_effects``,
    seeded by the conversation's seed)."""
    from dataclasses import replace

    if count < 1:
        raise ConversationError(f"count={count} must be at least 1")
    sources = load_sources(source)
    for speaker in sources:
        if not speaker or any(c.isspace() for c in speaker):
            raise ConversationError(f"speaker name {speaker!r} has whitespace; RTTM labels cannot, rename it")
    cache: dict[Path, _Clip] = {}
    rir_audio, noise_audio = load_effect_files(list(rirs)), load_effect_files(list(noises))
    augment = bool(rir_audio or noise_audio or telephone)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"source": str(source), "spec": asdict(spec), "conversations": []}
    rttm_all, uem_all = [], []
    for i in range(count):
        conv = build_conversation(sources, replace(spec, seed=spec.seed + i), f"{prefix}{i:03d}", cache, augment)
        if augment:
            rng = np.random.default_rng([spec.seed + i, 1])
            effects = draw_effects(sorted(conv.levels_db), rng, rir_audio, noise_audio, snr, telephone)
            conv = apply_effects(conv, effects, rng)
        wav, rttm = write_conversation(conv, output)
        rttm_all.append(rttm.read_text(encoding="utf-8"))
        uem_all.append(f"{conv.name} NA 0.000 {spec.duration:.3f}\n")
        summary["conversations"].append({
            "name": conv.name, "wav": wav.name, "rttm": rttm.name, "seed": spec.seed + i,
            "levels_dbfs": conv.levels_db, **{k: round(v, 4) for k, v in conv.stats.items()},
            "effects": conv.effects,
            "turns": [asdict(t) for t in conv.turns],
        })
    (output / "reference.rttm").write_text("".join(rttm_all), encoding="utf-8")
    (output / "reference.uem").write_text("".join(uem_all), encoding="utf-8")
    (output / "conversations.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
