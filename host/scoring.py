"""Reference loading (RTTM, UEM) with validation, and DER/JER scoring with pyannote.metrics.

Scores are percentages. Totals over a set of files come from the summed components (seconds of
missed, false-alarm and confused speech over seconds of reference speech; for JER, summed
per-speaker errors over the number of reference speakers), never from an average of per-file rates.
Defaults match diart's benchmark: no collar, overlapped speech scored.

Handling of imperfect references (documented in the README):
- an input without a reference is an error, unless the UEM lists it: then its reference is empty
  (a recording where nobody speaks);
- reference uris that match no input are ignored (a reference file may cover a whole data set);
  when an input has no reference they are named in the error, since a typo is the usual cause;
- without a UEM a file is scored over its whole audio; with ``--uem``, inputs the UEM does not list
  are scored over their whole audio too and reported (``uem: "audio"`` in report.json);
- a UEM region or a reference turn past the end of the audio is an error (wrong file or wrong
  reference), beyond a tolerance of ``END_TOLERANCE`` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edged.errors import EdgedError

# reference turns and UEM regions may end this far past the audio (rounding of annotation tools)
END_TOLERANCE = 0.5


class ScoringError(EdgedError):
    """A reference, UEM or hypothesis cannot be used for scoring (one-line message)."""


def _annotation(uri: str):
    from pyannote.core import Annotation

    return Annotation(uri=uri)


def _read_text(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScoringError(
            f"{path}: {kind} is not UTF-8 (byte {exc.start}); re-save it as UTF-8 (speaker labels may be non-ASCII)"
        ) from None
    except OSError as exc:
        raise ScoringError(f"{path}: cannot read {kind} ({exc.strerror})") from None


def _files(paths: Sequence[Path | str], suffix: str, kind: str) -> list[Path]:
    """Files given directly, or every ``*suffix`` in given folders; errors name what is missing."""
    out: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.glob(f"*{suffix}") if p.is_file())
            if not found:
                raise ScoringError(f"{item}: no {suffix} files in this folder; pass the {kind} file(s) themselves")
            out.extend(found)
        elif item.is_file():
            out.append(item)
        else:
            raise ScoringError(f"{item}: {kind} not found; check the path")
    return out


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ScoringError(f"{path}:{line}: {what} {text!r} is not a non-negative number; fix the line")
    return value


@dataclass
class References:
    """Reference annotations by uri, and the file each uri came from."""

    annotations: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)


def load_rttm(paths: Sequence[Path | str]) -> References:
    """``SPEAKER`` lines of RTTM files (or of every ``*.rttm`` in folders), UTF-8.

    Other RTTM line types and ``;;`` comments are skipped; zero-length turns are dropped. A uri
    found in two files is an error (a duplicated reference would be scored twice)."""
    from pyannote.core import Segment

    refs = References()
    for path in _files(paths, ".rttm", "reference RTTM"):
        seen_here: set[str] = set()
        for number, line in enumerate(_read_text(path, "RTTM").splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith(";;") or fields[0] != "SPEAKER":
                continue
            if len(fields) < 8:
                raise ScoringError(
                    f"{path}:{number}: RTTM SPEAKER line has {len(fields)} fields, needs 10 "
                    "(SPEAKER uri channel start duration <NA> <NA> speaker <NA> <NA>)"
                )
            uri, label = fields[1], fields[7]
            start = _number(fields[3], path, number, "start")
            duration = _number(fields[4], path, number, "duration")
            if uri in refs.sources and uri not in seen_here:
                raise ScoringError(
                    f"uri {uri!r} is in both {refs.sources[uri]} and {path}; keep one reference per recording"
                )
            seen_here.add(uri)
            refs.sources[uri] = path
            annotation = refs.annotations.setdefault(uri, _annotation(uri))
            if duration > 0:
                annotation[Segment(start, start + duration), len(annotation)] = label
    return refs


@dataclass
class Uems:
    """Scored regions (pyannote Timeline) by uri, and the file each came from."""

    timelines: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)


def load_uem(paths: Sequence[Path | str]) -> Uems:
    """UEM files (``uri channel start end`` per line); regions of one uri are merged."""
    from pyannote.core import Segment, Timeline

    uems = Uems()
    for path in _files(paths, ".uem", "UEM"):
        for number, line in enumerate(_read_text(path, "UEM").splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith(";;"):
                continue
            if len(fields) != 4:
                raise ScoringError(f"{path}:{number}: UEM line has {len(fields)} fields, needs 4 (uri channel start end)")
            start = _number(fields[2], path, number, "start")
            end = _number(fields[3], path, number, "end")
            if end <= start:
                raise ScoringError(f"{path}:{number}: UEM region ends ({end}) before it starts ({start}); fix the line")
            uri = fields[0]
            if uri in uems.sources and uems.sources[uri] != path:
                raise ScoringError(f"uri {uri!r} is in both {uems.sources[uri]} and {path}; keep one UEM per recording")
            uems.sources[uri] = path
            timeline = uems.timelines.setdefault(uri, Timeline(uri=uri))
            timeline.add(Segment(start, end))
    for uri, timeline in uems.timelines.items():
        uems.timelines[uri] = timeline.support()
    return uems


@dataclass(frozen=True)
class ScoreOptions:
    """How errors are counted (defaults as diart's benchmark)."""

    # seconds around each reference boundary not scored (0: none)
    collar: float = 0.0
    # do not score regions where two or more reference speakers overlap
    skip_overlap: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.collar) and self.collar >= 0):
            raise ScoringError(f"collar={self.collar!r} must be a non-negative number of seconds")


@dataclass(frozen=True)
class ScoringInput:
    """One recording ready to score: its reference, scored region and where that region came from."""

    uri: str
    duration: float
    reference: Any  # pyannote.core.Annotation
    uem: Any  # pyannote.core.Timeline
    uem_source: str  # "file" (from the UEM) or "audio" (the whole recording)


def prepare(
    durations: Mapping[str, float],
    refs: References,
    uems: Uems | None = None,
) -> dict[str, ScoringInput]:
    """Match each input (uri -> audio seconds) with its reference and scored region; validate."""
    from pyannote.core import Segment, Timeline

    if not refs.annotations:
        raise ScoringError("the reference RTTM has no SPEAKER lines; pass the reference of these recordings")
    uems = uems or Uems()
    unused = sorted(set(refs.annotations) - set(durations))
    out: dict[str, ScoringInput] = {}
    for uri, duration in durations.items():
        reference = refs.annotations.get(uri)
        if reference is None:
            if uri in uems.timelines:  # listed as scored, no turns: nobody speaks
                reference = _annotation(uri)
            else:
                hint = f"; reference uris matching no input: {', '.join(unused[:5])}" if unused else ""
                raise ScoringError(
                    f"no reference for {uri!r} (the audio file name without extension) in "
                    f"{', '.join(sorted({str(p) for p in refs.sources.values()}))}{hint}; "
                    "add its turns, or list it in the UEM if nobody speaks in it"
                )
        speech_end = reference.get_timeline().extent().end if reference else 0.0
        if speech_end > duration + END_TOLERANCE:
            raise ScoringError(
                f"reference of {uri!r} has speech until {speech_end:.1f} s but the audio lasts {duration:.1f} s; "
                "the reference belongs to another recording"
            )
        if uri in uems.timelines:
            uem = uems.timelines[uri]
            extent = uem.extent()
            if extent.end > duration + END_TOLERANCE:
                raise ScoringError(
                    f"UEM of {uri!r} ({uems.sources[uri]}) covers {extent.start:.1f}-{extent.end:.1f} s but the audio "
                    f"lasts {duration:.1f} s; fix the UEM to lie within the recording"
                )
            uem = uem.crop(Segment(0.0, duration), mode="intersection")
            source = "file"
        else:
            uem = Timeline([Segment(0.0, duration)], uri=uri)
            source = "audio"
        out[uri] = ScoringInput(uri, duration, reference, uem, source)
    return out


@dataclass
class ErrorRates:
    """DER with its parts and JER (percent), and the seconds they come from."""

    der: float | None
    miss: float | None
    false_alarm: float | None
    confusion: float | None
    jer: float | None
    speech_s: float  # scored reference speech, seconds (the DER denominator)
    missed_s: float
    false_alarm_s: float
    confusion_s: float
    speakers: int  # reference speakers (the JER denominator)
    jer_error: float  # summed per-speaker JER

    @classmethod
    def from_components(cls, der_c: Mapping[str, float], jer_c: Mapping[str, float]) -> ErrorRates:
        total = der_c["total"]
        miss, fa, conf = der_c["missed detection"], der_c["false alarm"], der_c["confusion"]
        pct = (lambda x: 100.0 * x / total) if total > 0 else (lambda x: 0.0 if (miss + fa + conf) == 0 else None)
        der = pct(miss + fa + conf)
        count = jer_c["speaker count"]
        jer = 100.0 * jer_c["speaker error"] / count if count > 0 else None
        return cls(der, pct(miss), pct(fa), pct(conf), jer, total, miss, fa, conf, int(count), jer_c["speaker error"])

    @classmethod
    def total(cls, parts: Iterable[ErrorRates]) -> ErrorRates:
        """Rates of a set of files from the summed components."""
        parts = list(parts)
        der_c = {"total": sum(p.speech_s for p in parts), "missed detection": sum(p.missed_s for p in parts),
                 "false alarm": sum(p.false_alarm_s for p in parts), "confusion": sum(p.confusion_s for p in parts)}
        jer_c = {"speaker count": sum(p.speakers for p in parts), "speaker error": sum(p.jer_error for p in parts)}
        return cls.from_components(der_c, jer_c)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_file(item: ScoringInput, hypothesis: Any, options: ScoreOptions = ScoreOptions()) -> ErrorRates:
    """DER and JER components of one recording (hypothesis: a pyannote Annotation)."""
    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

    if hypothesis.uri not in (None, item.uri):
        raise ScoringError(f"hypothesis uri {hypothesis.uri!r} does not match the recording {item.uri!r}")
    der = DiarizationErrorRate(collar=options.collar, skip_overlap=options.skip_overlap)
    jer = JaccardErrorRate(collar=options.collar, skip_overlap=options.skip_overlap)
    der_c = der.compute_components(item.reference, hypothesis, uem=item.uem)
    jer_c = jer.compute_components(item.reference, hypothesis, uem=item.uem)
    return ErrorRates.from_components(der_c, jer_c)


def annotation_from_turns(uri: str, turns: Iterable[tuple[str, float, float]]) -> Any:
    """(speaker, start, end) turns -> pyannote Annotation (zero-length turns dropped)."""
    from pyannote.core import Segment

    annotation = _annotation(uri)
    for i, (speaker, start, end) in enumerate(turns):
        if end > start:
            annotation[Segment(start, end), i] = speaker
    return annotation


def score_set(
    items: Mapping[str, ScoringInput], hypotheses: Mapping[str, Any], options: ScoreOptions = ScoreOptions()
) -> tuple[ErrorRates, dict[str, ErrorRates]]:
    """Per-file rates and the set's total (summed components)."""
    missing = sorted(set(items) - set(hypotheses))
    if missing:
        raise ScoringError(f"no hypothesis for {', '.join(missing)}; the run did not finish these files")
    per_file = {uri: score_file(items[uri], hypotheses[uri], options) for uri in items}
    return ErrorRates.total(per_file.values()), per_file
