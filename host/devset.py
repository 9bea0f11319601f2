"""The tuning dev set of issue 16: real recordings in place plus seeded synthetic conversations,
split into k folds grouped by source.

Folds are made first, then the conversations of each fold are built only from that fold's voices,
rooms and noises, so no voice, room impulse response (both positions of a simulated room count as
one room), noise or real recording is in two folds. Noises that contain voices (``babble``,
``tv_like``; the rooms manifest names their talkers) take those voices into their fold, and
``tv_like`` (built over the jazz track) takes ``music_jazz_vibe_ace`` along. AMI excerpts are
grouped by shared speakers (which also groups excerpts of one meeting); ``sample`` and ``falcon``
each go to one fold.

Kinds of audio (the scoring groups): ``ami`` (AMI meeting excerpts, headset mix), ``telephone``
(synthetic telephone-band conversations and the telephone-style ``sample``), ``farfield``
(synthetic, each speaker convolved with an RIR of the room, household noise or music at 5-20 dB
SNR), ``clean`` (synthetic, dry), ``short`` (``falcon`` and 20-35 s dry synthetic conversations).

Everything comes from ``data`` (``../shared/data``) and the seed; audio is written to ``output``
with ``devset.json`` (the manifest: per file kind, fold, voices, room/RIRs, noise, SNR, groups).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .conversations import (
    ConversationError,
    ConversationSpec,
    apply_effects,
    build_conversation,
    draw_effects,
    load_effect_files,
    load_sources,
    write_conversation,
)

KINDS = ("ami", "telephone", "farfield", "clean", "short")
# synthetic conversations per fold: kind -> (count, duration range s, speakers range, effects)
PLAN: dict[str, tuple[int, tuple[float, float], tuple[int, int]]] = {
    "clean": (4, (60.0, 90.0), (2, 6)),
    "telephone": (4, (60.0, 90.0), (2, 4)),
    "farfield": (4, (60.0, 90.0), (2, 6)),
    "short": (3, (20.0, 35.0), (2, 3)),
}
VOICED_NOISES = ("babble_8talkers", "tv_like")
NOISE_TIES = {"tv_like": "music_jazz_vibe_ace"}  # tv_like is speech over this track


def _room(rir: str) -> str:
    """Room of an RIR file stem: the two positions of a simulated room are one room."""
    return re.sub(r"_\d+$", "", rir) if rir.startswith("sim_") else rir


def _noise_voices(rooms: Path) -> dict[str, list[str]]:
    """noise stem -> speakers/ voices it contains (from the rooms manifest's description)."""
    out: dict[str, list[str]] = {}
    with open(rooms / "manifest.tsv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            stem = Path(row["file"]).stem
            if stem in VOICED_NOISES:
                inside = re.search(r"\(([^)]*)\)", row["type"])
                out[stem] = [v.strip() for v in inside.group(1).split(",")] if inside else []
    return out


def _ami_groups(ami: Path) -> list[list[str]]:
    """AMI excerpts joined when they share a speaker (same meeting or same participants)."""
    speakers: dict[str, set[str]] = {}
    for line in (ami / "reference.rttm").read_text(encoding="utf-8").splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            speakers.setdefault(f[1], set()).add(f[7])
    groups: list[tuple[set[str], set[str]]] = []
    for uri in sorted(speakers):
        joined = [g for g in groups if g[1] & speakers[uri]]
        files, spk = {uri}, set(speakers[uri])
        for g in joined:
            files |= g[0]
            spk |= g[1]
            groups.remove(g)
        groups.append((files, spk))
    return sorted((sorted(files) for files, _ in groups), key=lambda g: (-len(g), g[0]))


def voices(data: Path) -> dict[str, list[Path]]:
    """All single-speaker voices: ``speakers/`` (54, folder names) and ``librispeech/`` (10, ``ls`` + id)."""
    out = dict(load_sources(data / "speakers"))
    for speaker, files in load_sources(data / "librispeech").items():
        out[f"ls{speaker}"] = files
    return out


def make_folds(data: Path, k: int = 4, seed: int = 0) -> dict[str, Any]:
    """Assign voices, rooms, noises and real recordings to ``k`` folds (see the module doc)."""
    if k < 2:
        raise ConversationError(f"k={k}: need at least 2 folds")
    rng = np.random.default_rng([seed, 16])
    rooms = data / "rooms"
    rir_stems = sorted(p.stem for p in (rooms / "rir").glob("*.wav"))
    noise_stems = sorted(p.stem for p in (rooms / "noise").glob("*.flac"))
    all_voices = sorted(voices(data))
    inside = _noise_voices(rooms)

    # noises: tied ones travel together; voiced noises spread over different folds first
    groups: list[list[str]] = []
    for stem in noise_stems:
        if stem in NOISE_TIES.values():
            continue
        groups.append([stem] + ([NOISE_TIES[stem]] if stem in NOISE_TIES else []))
    voiced = [g for g in groups if g[0] in VOICED_NOISES]
    plain = [groups[i] for i in rng.permutation(len(groups)) if groups[i][0] not in VOICED_NOISES]
    noise_fold: dict[str, int] = {}
    load = [0] * k
    for g in voiced + plain:
        f = int(np.argmin(load))
        load[f] += len(g)
        for stem in g:
            noise_fold[stem] = f

    # voices: those inside a voiced noise go with it; the rest fill the folds evenly, with the
    # data-rich voices (LibriSpeech, ARCTIC) spread first
    voice_fold: dict[str, int] = {}
    for stem, talkers in inside.items():
        for v in talkers:
            if v in all_voices:
                voice_fold.setdefault(v, noise_fold[stem])
    count = [sum(1 for f in voice_fold.values() if f == i) for i in range(k)]
    rest = [all_voices[i] for i in rng.permutation(len(all_voices)) if all_voices[i] not in voice_fold]
    rich = [v for v in rest if v.startswith(("ls", "arctic_"))]
    rich_count = [0] * k
    for v in rich:
        f = min(range(k), key=lambda i: (rich_count[i], count[i]))
        voice_fold[v] = f
        rich_count[f] += 1
        count[f] += 1
    for v in (v for v in rest if v not in voice_fold):
        f = int(np.argmin(count))
        voice_fold[v] = f
        count[f] += 1

    # rooms: whole rooms round-robin; real (large, reverberant) rooms spread first
    room_names = sorted({_room(s) for s in rir_stems})
    real = [r for r in room_names if r.startswith("real_")]
    sim = [room_names[i] for i in rng.permutation(len(room_names)) if room_names[i] not in real]
    room_fold = {r: i % k for i, r in enumerate(real + sim)}
    rir_fold = {s: room_fold[_room(s)] for s in rir_stems}

    # real recordings: AMI groups largest first to the least-loaded fold, then sample and falcon
    real_fold: dict[str, int] = {}
    real_load = [0] * k
    for g in _ami_groups(data / "ami-debug"):
        f = int(np.argmin(real_load))
        real_load[f] += len(g)
        for uri in g:
            real_fold[uri] = f
    for uri in ("sample", "falcon"):
        f = int(np.argmin(real_load))
        real_load[f] += 1
        real_fold[uri] = f
    return {"k": k, "seed": seed, "voices": voice_fold, "rirs": rir_fold, "rooms": room_fold,
            "noises": noise_fold, "real": real_fold, "noise_voices": inside}


def check_folds(folds: dict[str, Any], files: list[dict[str, Any]]) -> None:
    """Raise if any voice, RIR, room, noise or real recording is used by files of two folds."""
    seen: dict[str, int] = {}
    for item in files:
        for source in item["groups"]:
            if seen.setdefault(source, item["fold"]) != item["fold"]:
                raise ConversationError(f"{source} is in folds {seen[source]} and {item['fold']}; the split leaks")


def _seed(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def build_devset(data: Path, output: Path, seed: int = 0, k: int = 4, log=print) -> dict[str, Any]:
    """Build the synthetic conversations of every fold into ``output`` and write ``devset.json``."""
    data, output = Path(data).resolve(), Path(output)
    folds = make_folds(data, k, seed)
    pool = voices(data)
    rirs = load_effect_files(sorted((data / "rooms" / "rir").glob("*.wav")))
    noises = load_effect_files(sorted((data / "rooms" / "noise").glob("*.flac")))
    output.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    cache: dict = {}

    # real recordings, in place
    ami = data / "ami-debug"
    for uri, fold in sorted(folds["real"].items()):
        if uri in ("sample", "falcon"):
            files.append({"uri": uri, "audio": str(data / uri / f"{uri}.wav"), "rttm": str(data / uri / f"{uri}.rttm"),
                          "uem": None, "kind": "telephone" if uri == "sample" else "short", "fold": fold,
                          "real": True, "groups": [f"recording:{uri}"]})
        else:
            speakers = sorted({ln.split()[7] for ln in (ami / "reference.rttm").read_text(encoding="utf-8").splitlines()
                               if ln.startswith("SPEAKER") and ln.split()[1] == uri})
            files.append({"uri": uri, "audio": str(ami / f"{uri}.wav"), "rttm": str(ami / "reference.rttm"),
                          "uem": str(ami / "reference.uem"), "kind": "ami", "fold": fold, "real": True,
                          "voices": speakers, "groups": [f"recording:ami:{s}" for s in speakers]})

    rttm_all, uem_all = [], []
    for fold in range(k):
        fold_voices = {v: pool[v] for v, f in folds["voices"].items() if f == fold}
        fold_rooms = sorted(r for r, f in folds["rooms"].items() if f == fold)
        fold_noises = {n: noises[n] for n, f in folds["noises"].items() if f == fold}
        for kind_index, (kind, (count, (dmin, dmax), (smin, smax))) in enumerate(PLAN.items()):
            for i in range(count):
                s = _seed(seed, fold, kind_index, i)
                rng = np.random.default_rng(s)
                n_spk = int(rng.integers(smin, smax + 1))
                turn_min = float(rng.uniform(0.5, 1.5))
                pause_min = float(rng.uniform(0.05, 0.3))
                spec = ConversationSpec(
                    speakers=n_spk, duration=round(float(rng.uniform(dmin, dmax)), 1),
                    turn_min=turn_min, turn_max=float(rng.uniform(max(3.0, turn_min), 8.0)),
                    pause_min=pause_min, pause_max=float(rng.uniform(pause_min + 0.3, 1.5)),
                    overlap=float(rng.uniform(0.05, 0.20)), loudness_spread_db=float(rng.uniform(3.0, 12.0)),
                    level_dbfs=float(rng.uniform(-32.0, -20.0)), seed=s)
                name = f"f{fold}_{kind}{i:02d}"
                augment = kind in ("farfield", "telephone")
                conv = build_conversation(fold_voices, spec, name, cache, keep_tracks=augment)
                entry: dict[str, Any] = {"uri": name, "audio": str((output / f"{name}.wav").resolve()),
                                         "rttm": str((output / f"{name}.rttm").resolve()), "uem": None,
                                         "kind": kind, "fold": fold, "real": False, "spec": asdict(spec),
                                         "voices": sorted(conv.levels_db), "levels_dbfs": conv.levels_db}
                groups = [f"voice:{v}" for v in conv.levels_db]
                if augment:
                    erng = np.random.default_rng([s, 1])
                    if kind == "farfield":
                        room = fold_rooms[int(erng.integers(len(fold_rooms)))]
                        room_rirs = {r: rirs[r] for r in rirs if _room(r) == room}
                        effects = draw_effects(sorted(conv.levels_db), erng, room_rirs, fold_noises, (5.0, 20.0))
                        effects.labels["room"] = room
                        groups += [f"room:{room}"] + [f"rir:{r}" for r in set(effects.labels["rirs"].values())]
                        groups += [f"noise:{effects.labels['noise']}"]
                        if effects.labels["noise"] in NOISE_TIES:
                            groups.append(f"noise:{NOISE_TIES[effects.labels['noise']]}")
                        groups += [f"voice:{v}" for v in folds["noise_voices"].get(effects.labels["noise"], [])]
                    else:
                        effects = draw_effects(sorted(conv.levels_db), erng, telephone=True)
                    conv = apply_effects(conv, effects, erng)
                    conv.tracks = None
                    entry["effects"] = conv.effects
                write_conversation(conv, output)
                entry.update({"duration_s": spec.duration, "speakers": n_spk,
                              "speech_s": round(conv.stats["speech_s"], 3),
                              "overlap_ratio": round(conv.stats["overlap_ratio"], 4), "groups": sorted(set(groups))})
                files.append(entry)
                rttm_all.append((output / f"{name}.rttm").read_text(encoding="utf-8"))
                uem_all.append(f"{name} NA 0.000 {spec.duration:.3f}\n")
                log(f"{name}: {spec.duration:.0f} s, {n_spk} speakers, overlap {100 * conv.stats['overlap_ratio']:.1f}%"
                    + (f", {conv.effects}" if conv.effects else ""))
    check_folds(folds, files)
    (output / "reference.rttm").write_text("".join(rttm_all), encoding="utf-8")
    (output / "reference.uem").write_text("".join(uem_all), encoding="utf-8")
    manifest = {"seed": seed, "k": k, "data": str(data), "kinds": list(KINDS), "folds": folds,
                "plan": {kind: {"count": c, "duration_s": d, "speakers": sp} for kind, (c, d, sp) in PLAN.items()},
                "files": files, "summary": summarize(files)}
    (output / "devset.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def summarize(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Minutes and files per kind and fold (real recordings: their scored duration)."""
    import soundfile as sf

    out: dict[str, Any] = {}
    for item in files:
        if item.get("duration_s") is None:
            info = sf.info(item["audio"])
            item["duration_s"] = round(30.0 if item["kind"] == "ami" else info.frames / info.samplerate, 3)
        key = out.setdefault(item["kind"], {"files": 0, "minutes": 0.0, "by_fold": {}})
        key["files"] += 1
        key["minutes"] = round(key["minutes"] + item["duration_s"] / 60, 3)
        fold = key["by_fold"].setdefault(str(item["fold"]), 0.0)
        key["by_fold"][str(item["fold"])] = round(fold + item["duration_s"] / 60, 3)
    return out


def load_manifest(path: Path | str) -> dict[str, Any]:
    """``devset.json`` (a folder holding it, or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "devset.json"
    if not path.is_file():
        raise ConversationError(f"{path}: dev-set manifest not found; build it with edged-devset")
    return json.loads(path.read_text(encoding="utf-8"))
