"""Who is speaking, by name: enrolled voices on conversations with enrolled and never-enrolled voices.

Voices with at least two recordings (../shared/data/librispeech: 10 readers x 10; speakers/:
the 4 ARCTIC voices and the 6 speakers with two utterances) can be enrolled from some
recordings and heard in conversations made of the *others*; the single-utterance voices of
speakers/ are never enrolled (impostors). Two disjoint halves, by voice:

- calibration: 5 LibriSpeech readers enrolled + half of the impostors. ``--calibrate`` sweeps
  the two acceptance thresholds here (one chunk: ``--sweep``; an anonymous speaker's accumulated
  voice: ``--voice-sweep``) and picks, among the pairs whose false accept stays within
  ``--fa-target`` in 95% of bootstrap resamples of the conversations (a margin for unseen voices),
  the one naming the most speech;
- evaluation: the other 5 readers, the ARCTIC and two-utterance voices enrolled + the other half
  of the impostors. The figures reported come from this half only.

Each conversation (host.conversations, exact reference) has ``--enrolled`` enrolled and
``--others`` never-enrolled voices. Reported, frame by frame (10 ms): the share of enrolled
voices' speech labelled with their right name (``named``; of all their reference speech, and
of the part the pipeline detected), the share of never-enrolled voices' speech (where no
enrolled voice speaks) labelled with any enrolled name (``false accept``), DER with and without
profiles (no collar, overlap scored), and the compute per step.

The pipeline runs with the bundle's tuned preset for the latency (what users get; ``--preset
ami`` for diart's). ``--cache FILE`` remembers segmentation/embedding outputs, so sweeps replay
only the clustering (whole-step timings of cached runs are then not model timings).

    PYTHONPATH=. python benchmarks/identification.py --calibrate --sweep 0.6,0.65,0.7 --voice-sweep 0.5,0.55,0.6 --conversations 16 --cache cache/ident.pkl
    PYTHONPATH=. python benchmarks/identification.py --conversations 8 --json out/identification.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.diarize.events import TurnEvent  # noqa: E402
from edged.diarize.identify import Identifier  # noqa: E402
from edged.diarize.pipeline import StreamingDiarizer  # noqa: E402
from edged.errors import EdgedError  # noqa: E402
from edged.models.blocks import load_models  # noqa: E402
from edged.service.enroll import profile_from_audio  # noqa: E402
from edged.sources.file import read_audio  # noqa: E402
from host.conversations import ConversationSpec, build_conversation  # noqa: E402

BIN = 0.01


class _Cached:
    """A model block whose outputs are remembered by input bytes (``--cache``): identification
    settings do not change segmentation or embeddings, so a sweep replays only the clustering.
    Step timings are meaningless with a warm cache (report them from a run without it)."""

    def __init__(self, inner, store: dict, kind: str):
        self._inner, self._store, self._kind = inner, store, kind

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, *args):
        import hashlib

        h = hashlib.sha1(self._kind.encode())
        for a in args:
            h.update(np.ascontiguousarray(a).tobytes() if isinstance(a, np.ndarray) else repr(a).encode())
        key = h.hexdigest()
        if key not in self._store:
            self._store[key] = self._inner(*args)
            self._store["_dirty"] = True
        return self._store[key]


def cached_models(models, path: Path):
    import pickle
    from dataclasses import replace

    store = pickle.loads(path.read_bytes()) if path.exists() else {}
    store["_dirty"] = False

    def save():
        if store.get("_dirty"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(store))
            tmp.replace(path)
            store["_dirty"] = False

    wrapped = replace(models, segmentation=_Cached(models.segmentation, store, "seg"),
                      embedding=_Cached(models.embedding, store, "emb"))
    return wrapped, save


def voices(data: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(voices with >= 2 recordings, voices with one), each speaker -> its files, sorted."""
    multi: dict[str, list[Path]] = {}
    for row in csv.DictReader(open(data / "librispeech" / "manifest.tsv"), delimiter="\t"):
        multi.setdefault("ls_" + row["speaker"], []).append(data / "librispeech" / row["path"])
    single: dict[str, list[Path]] = {}
    by: dict[str, list[Path]] = {}
    for row in csv.DictReader(open(data / "speakers" / "utt2spk.tsv"), delimiter="\t"):
        by.setdefault(row["speaker"], []).append(data / "speakers" / row["file"])
    for spk, files in by.items():
        (multi if len(files) >= 2 else single)[spk] = sorted(files)
    return {k: sorted(v) for k, v in sorted(multi.items())}, dict(sorted(single.items()))


def split_enroll(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """Enrollment recordings (about 10 s of audio, never more than half the files) and the rest."""
    if len(files) == 2:  # the longer one to enroll
        durations = [len(read_audio(f)) for f in files]
        i = int(np.argmax(durations))
        return [files[i]], [files[1 - i]]
    enroll, seconds = [], 0.0
    for f in files[: len(files) // 2]:
        enroll.append(f)
        seconds += len(read_audio(f)) / 16000
        if seconds >= 10.0:
            break
    return enroll, [f for f in files if f not in enroll]


def halves(data: Path):
    multi, single = voices(data)
    libri = [s for s in multi if s.startswith("ls_")]
    calib_enrolled = libri[:5]
    eval_enrolled = libri[5:] + [s for s in multi if not s.startswith("ls_")]
    impostors = list(single)
    return ({s: multi[s] for s in calib_enrolled}, {s: single[s] for s in impostors[0::2]}), \
           ({s: multi[s] for s in eval_enrolled}, {s: single[s] for s in impostors[1::2]})


def enroll_all(models, params, enrolled: dict[str, list[Path]]):
    """-> (Identifier vectors by voice, test files by voice, skipped voices with the reason)."""
    vectors, tests, skipped = {}, {}, {}
    for spk, files in enrolled.items():
        enroll, rest = split_enroll(files)
        try:
            profile = profile_from_audio(models, "N_" + spk, [(str(f), read_audio(f)) for f in enroll], params)
        except EdgedError as exc:
            skipped[spk] = str(exc)
            continue
        vectors[spk] = profile.vector
        tests[spk] = rest
    return vectors, tests, skipped


def conversations(tests, impostors, count: int, enrolled_per: int, others_per: int, duration: float, seed: int):
    rng = np.random.default_rng(seed)
    names, others = sorted(tests), sorted(impostors)
    out = []
    for i in range(count):
        chosen = [names[(i * enrolled_per + k) % len(names)] for k in range(enrolled_per)]
        strangers = [others[j] for j in rng.choice(len(others), others_per, replace=False)]
        sources = {s: tests[s] for s in chosen} | {s: impostors[s] for s in strangers}
        spec = ConversationSpec(speakers=len(sources), duration=duration, overlap=0.1, seed=seed + i)
        out.append((build_conversation(sources, spec, name=f"id{i:03d}"), set(chosen)))
    return out


def run(models, params, audio: np.ndarray, identifier: Identifier | None):
    diarizer = StreamingDiarizer(models, params, identifier=identifier)
    block = 1600
    blocks = (audio[i:i + block] for i in range(0, len(audio), block))
    turns = [(e.speaker, e.start, e.end) for e in diarizer.run(blocks) if isinstance(e, TurnEvent)]
    return turns, diarizer.stats


def frames(segments, labels, n: int) -> dict[str, np.ndarray]:
    out = {lab: np.zeros(n, bool) for lab in labels}
    for lab, a, b in segments:
        out.setdefault(lab, np.zeros(n, bool))[int(round(a / BIN)):int(round(b / BIN))] = True
    return out


def score(conv, enrolled_here: set[str], turns, names: set[str]) -> dict[str, float]:
    n = int(round(conv.spec.duration / BIN)) + 1
    ref = frames(conv.segments, [], n)
    hyp = frames(turns, [], n)
    any_name = np.zeros(n, bool)
    for lab, f in hyp.items():
        if lab in names:
            any_name |= f
    detected = np.zeros(n, bool)
    for f in hyp.values():
        detected |= f
    enrolled_any = np.zeros(n, bool)
    for spk in enrolled_here:
        enrolled_any |= ref[spk]
    s = {"enrolled_s": 0.0, "named_s": 0.0, "enrolled_detected_s": 0.0, "other_s": 0.0, "fa_s": 0.0}
    for spk, f in ref.items():
        if spk in enrolled_here:
            right = hyp.get("N_" + spk, np.zeros(n, bool))
            s["enrolled_s"] += f.sum() * BIN
            s["named_s"] += (f & right).sum() * BIN
            s["enrolled_detected_s"] += (f & detected).sum() * BIN
        else:
            alone = f & ~enrolled_any
            s["other_s"] += alone.sum() * BIN
            s["fa_s"] += (alone & any_name).sum() * BIN
    return s


def der(conv, turns) -> tuple[float, float]:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(uri=conv.name), Annotation(uri=conv.name)
    for i, (spk, a, b) in enumerate(conv.segments):
        ref[Segment(a, b), i] = spk
    for i, (spk, a, b) in enumerate(turns):
        hyp[Segment(a, b), i] = spk
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    c = metric(ref, hyp, detailed=True)
    return c["missed detection"] + c["false alarm"] + c["confusion"], c["total"]


def fa_upper(per_conversation: list[tuple[float, float]], draws: int = 2000, seed: int = 0) -> float:
    """95th percentile of the false-accept share (percent) over bootstrap resamples of the
    conversations: how high it may go on other never-enrolled voices."""
    fa, other = np.asarray(per_conversation, dtype=np.float64).reshape(-1, 2).T
    if not len(fa):
        return float("nan")
    pick = np.random.default_rng(seed).integers(0, len(fa), size=(draws, len(fa)))
    shares = 100 * fa[pick].sum(axis=1) / np.maximum(other[pick].sum(axis=1), 1e-9)
    return round(float(np.percentile(shares, 95)), 2)


def evaluate(models, params, vectors, convs, threshold: float, voice_threshold: float, baseline: bool = True) -> dict:
    names = ["N_" + s for s in vectors]
    total = {"enrolled_s": 0.0, "named_s": 0.0, "enrolled_detected_s": 0.0, "other_s": 0.0, "fa_s": 0.0}
    err = {"with": [0.0, 0.0], "without": [0.0, 0.0]}
    cost = {"with": [], "without": []}
    per_conversation = []  # (false accept s, never-enrolled speech s) of each conversation
    for conv, here in convs:
        identifier = Identifier(names, np.asarray([vectors[s] for s in vectors]), threshold, voice_threshold)
        turns, stats = run(models, params, conv.audio, identifier)
        scores = score(conv, here, turns, set(names))
        for k, v in scores.items():
            total[k] += v
        per_conversation.append((round(scores["fa_s"], 2), round(scores["other_s"], 2)))
        e, t = der(conv, turns)
        err["with"][0] += e
        err["with"][1] += t
        cost["with"].append((stats.percentile(50), stats.percentile(50, "clustering")))
        if baseline:
            turns0, stats0 = run(models, params, conv.audio, None)
            e, t = der(conv, turns0)
            err["without"][0] += e
            err["without"][1] += t
            cost["without"].append((stats0.percentile(50), stats0.percentile(50, "clustering")))
    out = {
        "threshold": threshold,
        "voice_threshold": voice_threshold,
        "conversations": len(convs),
        "enrolled_speech_s": round(total["enrolled_s"], 1),
        "other_speech_s": round(total["other_s"], 1),
        "named_pct": round(100 * total["named_s"] / max(total["enrolled_s"], 1e-9), 1),
        "named_of_detected_pct": round(100 * total["named_s"] / max(total["enrolled_detected_s"], 1e-9), 1),
        "false_accept_pct": round(100 * total["fa_s"] / max(total["other_s"], 1e-9), 2),
        "der_with_pct": round(100 * err["with"][0] / max(err["with"][1], 1e-9), 1),
        "false_accept_pct_p95": fa_upper(per_conversation),
        "false_accept_per_conversation": per_conversation,
    }
    if baseline:
        out["der_without_pct"] = round(100 * err["without"][0] / max(err["without"][1], 1e-9), 1)
    for key, values in cost.items():
        if values:
            out[f"step_ms_p50_{key}"] = round(float(np.median([v[0] for v in values])), 1)
            out[f"clustering_ms_p50_{key}"] = round(float(np.median([v[1] for v in values])), 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--models", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--variant", default="int8", choices=("int8", "fp32"))
    ap.add_argument("--clustering", default="incremental", choices=("incremental", "uisrnn"))
    ap.add_argument("--threshold", type=float, default=None,
                    help="one chunk's acceptance threshold (default: speakers.threshold)")
    ap.add_argument("--voice-threshold", type=float, default=None,
                    help="an accumulated voice's acceptance threshold (default: speakers.voice_threshold)")
    ap.add_argument("--calibrate", action="store_true", help="sweep the thresholds on the calibration half")
    ap.add_argument("--sweep", default="0.6,0.65,0.7", help="chunk thresholds to sweep")
    ap.add_argument("--voice-sweep", default="0.5,0.55,0.6", help="accumulated-voice thresholds to sweep")
    ap.add_argument("--fa-target", type=float, default=5.0, help="false-accept target, percent (default 5)")
    ap.add_argument("--conversations", type=int, default=10)
    ap.add_argument("--enrolled", type=int, default=2, help="enrolled voices per conversation")
    ap.add_argument("--others", type=int, default=2, help="never-enrolled voices per conversation")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--preset", default="bundle",
                    help="pipeline preset: bundle (the bundle's tuned preset for the latency, what users get) or ami")
    ap.add_argument("--latency", type=float, default=5.0)
    ap.add_argument("--cache", type=Path, default=None,
                    help="remember segmentation/embedding outputs in this file (sweeps replay only clustering; "
                         "step timings are then meaningless)")
    args = ap.parse_args()

    from edged.config import SpeakersConfig

    from edged.diarize.presets import resolve

    models = load_models(args.models, args.variant)
    save = None
    if args.cache is not None:
        models, save = cached_models(models, args.cache)
    bundle_presets = None if models.bundle.presets is None else models.bundle.presets.by_latency
    params = resolve(args.preset, bundle_presets, {"clustering": args.clustering, "latency": args.latency})
    (cal_enrolled, cal_others), (ev_enrolled, ev_others) = halves(args.data)
    result: dict = {"variant": args.variant, "clustering": args.clustering, "preset": args.preset,
                    "latency": args.latency, "fa_target_pct": args.fa_target}
    started = time.perf_counter()
    if args.calibrate:
        vectors, tests, skipped = enroll_all(models, params, cal_enrolled)
        convs = conversations(tests, cal_others, args.conversations, args.enrolled, args.others, args.duration,
                              args.seed + 1000)
        rows = []
        grid = [(float(c), float(v)) for c in args.sweep.split(",") for v in args.voice_sweep.split(",")]
        for threshold, voice in grid:
            row = evaluate(models, params, vectors, convs, threshold, voice, baseline=False)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if save is not None:
                save()
        # the most right names among the thresholds whose false accept stays within the target in
        # 95% of bootstrap resamples of the conversations (a margin for unseen voices taken from
        # how much it varies between these), else the one with the fewest false accepts
        ok = [r for r in rows if r["false_accept_pct_p95"] <= args.fa_target]
        chosen = max(ok, key=lambda r: r["named_pct"]) if ok else min(rows, key=lambda r: r["false_accept_pct_p95"])
        result.update(calibration=rows, chosen_threshold=chosen["threshold"],
                      chosen_voice_threshold=chosen["voice_threshold"],
                      calibration_voices={"enrolled": sorted(vectors), "others": sorted(cal_others)})
        print(f"chosen threshold {chosen['threshold']}, voice threshold {chosen['voice_threshold']} "
              f"(calibration false accept {chosen['false_accept_pct']}%, bootstrap p95 "
              f"{chosen['false_accept_pct_p95']}%)")
    else:
        threshold = SpeakersConfig.threshold if args.threshold is None else args.threshold
        voice = SpeakersConfig.voice_threshold if args.voice_threshold is None else args.voice_threshold
        vectors, tests, skipped = enroll_all(models, params, ev_enrolled)
        convs = conversations(tests, ev_others, args.conversations, args.enrolled, args.others, args.duration,
                              args.seed)
        row = evaluate(models, params, vectors, convs, threshold, voice)
        result.update(row, enrolled_voices=sorted(vectors), other_voices=sorted(ev_others),
                      skipped_enrollment=skipped)
        print(json.dumps(row, indent=1))
        if skipped:
            print(f"not enrolled (refused): {skipped}")
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    if save is not None:
        save()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
