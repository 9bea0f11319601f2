"""UIS-RNN against incremental clustering on the dev set, cross-validated by fold (issue #16).

For each fold k: UIS-RNN is trained on the other folds' files only, with the observations the
edge back-end decodes in their cached windows (``uisrnn_data.from_features``: no model run) and
``edged-export uisrnn``'s training and export path (``edged_export.uisrnn.run``: the reference
``UISRNN.fit``, the same options and rotations, ONNX + decoder parity gates), into a copy of the
bundle (``OUTPUT/bundle-foldK``). Fold k's files are then replayed from the cache
(``replay.replay``, turns identical to ``StreamingDiarizer``) with that fold's parameters of a
``tune`` run and ``clustering: uisrnn`` (``rho_update``/``delta_new`` unused), and with the same
parameters and incremental clustering, and scored with pyannote.metrics (``Evaluator.report``).
"""

from __future__ import annotations

import edged  # noqa: F401  (first: pins the BLAS pools to one thread before numpy loads)

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edged.diarize.params import PipelineParams

from .cvtune import CVError, Evaluator, _default
from .devset import KINDS
from .uisrnn_data import LabelledSequence, from_features

TRAIN_LATENCY = 5.0  # the training windows: PipelineParams()'s latency, as edged-export uisrnn
SIDECAR = "cv-training.json"  # in each fold's bundle: what it was trained on, and how long it took


def check_cache(cache: Path, variant: str, models: Path) -> None:
    """CVError unless the cache of ``variant`` was made with ``models``' segmentation and embedding."""
    from edged.models.bundle import load_bundle

    path = Path(cache) / variant / "bundle.json"
    if not path.is_file():
        raise CVError(f"{path}: missing; run edged-cvtune extract for {variant} first")
    made = json.loads(path.read_text(encoding="utf-8"))["sha256"]
    bundle = load_bundle(models, variants=(variant,))
    for name in ("segmentation", "embedding"):
        if made.get(name) != bundle.model(name, variant).sha256:
            raise CVError(f"{path}: the cache was made with another {name} model than {models} ({variant}); "
                          "extract again or pass the bundle it was made with")


def fold_params(cv: dict[str, Any], latency: float, fold: int, source: Path | str = "cv json") -> PipelineParams:
    """A tune run's parameters for ``fold`` at ``latency`` (fitted on the other folds)."""
    key = f"{latency:g}"
    block = cv["latencies"].get(key)
    if block is None:
        raise CVError(f"{source}: no latency {key} (has {', '.join(cv['latencies']) or 'none'}); "
                      "let the tune run finish or drop that latency")
    for entry in block["folds"]:
        if entry["fold"] == fold:
            return PipelineParams.from_dict(entry["params"])
    raise CVError(f"{source}: latency {key} has no fold {fold}")


def training_sequences(ev: Evaluator, uris: Sequence[str], latency: float = TRAIN_LATENCY,
                       tau_active: float | None = None) -> list[LabelledSequence]:
    """Labelled observation sequences of ``uris`` from the cache (reference: the dev set's RTTM)."""
    tau = PipelineParams().tau_active if tau_active is None else tau_active
    return [from_features(ev.features[u], ev.refs[u].turns, latency, tau,
                          source="rttm" if ev.files[u].get("real") else "synthetic")
            for u in sorted(uris)]


def fingerprint(sequences: Sequence[LabelledSequence], options: Any, variant: str) -> str:
    """What a fold's model depends on: the training observations, labels, options and variant."""
    h = hashlib.sha256(json.dumps({"options": asdict(options), "variant": variant}, sort_keys=True).encode())
    for s in sequences:
        h.update(s.name.encode())
        h.update(np.ascontiguousarray(s.embeddings).tobytes())
        h.update(json.dumps(s.labels).encode())
        h.update(np.ascontiguousarray(s.purity).tobytes())
    return h.hexdigest()[:24]


def train_fold(models: Path, variant: str, sequences: list[LabelledSequence], out: Path, options: Any,
               retrain: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy ``models`` to ``out`` and add UIS-RNN trained on ``sequences``; reuses ``out`` when it
    was trained on the same data with the same options (unless ``retrain``)."""
    from edged_export.uisrnn import UISRNNExport, run

    key = fingerprint(sequences, options, variant)
    sidecar = out / SIDECAR
    if not retrain and sidecar.is_file():
        done = json.loads(sidecar.read_text(encoding="utf-8"))
        if done.get("fingerprint") == key:
            log(f"{out}: trained on the same data before ({done['train_seconds']:.0f} s); reused")
            return done
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(models, out)
    started = time.perf_counter()
    entry = run(UISRNNExport(out=out, variant=variant, options=options), lambda job: sequences)
    t = entry["training"]
    done = {"fingerprint": key, "bundle": str(out), "train_seconds": round(time.perf_counter() - started, 1),
            "sequences": len(t["sequences"]), "observations": t["observations"],
            "speakers": int(sum(s["speakers"] for s in t["sequences"])),
            "transition_bias": entry["transition_bias"], "sigma2_mean": float(np.mean(entry["sigma2"])),
            "parity": entry["parity"]}
    sidecar.write_text(json.dumps(done, indent=1) + "\n", encoding="utf-8")
    return done


def network(bundle: Path, variant: str):
    """The edge ``UISRNNNetwork`` of a bundle (one thread)."""
    from edged.diarize.uisrnn import UISRNNNetwork
    from edged.models.bundle import load_bundle

    info = load_bundle(bundle, variants=(variant,)).uisrnn
    if info is None:
        raise CVError(f"{bundle}: no UIS-RNN model")
    return UISRNNNetwork(info, threads=1)


def compare(devset: Path, cache: Path, models: Path, cv_json: Path, output: Path, variant: str = "int8",
            latencies: Sequence[float] = (1.0, 5.0), lags: Sequence[int] = (0,), options: Any = None,
            retrain: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per fold: train on the other folds, replay the held-out fold with UIS-RNN (each lag) and
    with incremental clustering at each latency; the pooled validation reports, in
    OUTPUT/uisrnn-VARIANT.json."""
    from edged_export.uisrnn import TrainOptions

    options = options or TrainOptions()
    check_cache(cache, variant, models)
    cv = json.loads(Path(cv_json).read_text(encoding="utf-8"))
    if cv.get("variant") != variant:
        raise CVError(f"{cv_json}: tuned on {cv.get('variant')} features, not {variant}")
    ev = Evaluator(devset, cache, variant)
    per_fold = {(lat, k): fold_params(cv, lat, k, cv_json) for lat in latencies for k in range(ev.k)}
    output.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"variant": variant, "cv": str(cv_json), "models": str(models),
                              "train_latency": TRAIN_LATENCY, "options": asdict(options), "lags": list(lags),
                              "folds": [], "latencies": {}}
    hyps: dict[tuple[str, str], dict[str, list]] = {}
    for k in range(ev.k):
        fit, held = ev.uris([f for f in range(ev.k) if f != k]), ev.uris([k])
        sequences = training_sequences(ev, fit)
        log(f"fold {k}: training on {len(fit)} files ({sum(len(s.labels) for s in sequences)} observations)")
        done = train_fold(models, variant, sequences, output / f"bundle-fold{k}", options, retrain, log)
        log(f"fold {k}: {done['observations']} labelled observations, {done['train_seconds']:.0f} s, "
            f"transition bias {done['transition_bias']:.3f}")
        result["folds"].append({"fold": k, "train_files": sorted(fit), "held_out": sorted(held), **done})
        net = network(output / f"bundle-fold{k}", variant)
        for lat in latencies:
            params = per_fold[(lat, k)]
            hyps.setdefault((f"{lat:g}", "incremental"), {}).update(ev.hypotheses(params, held))
            for lag in lags:
                p = params.replace(clustering="uisrnn", uisrnn_lag=lag)
                hyps.setdefault((f"{lat:g}", f"uisrnn_lag{lag}"), {}).update(ev.hypotheses(p, held, net))
    for (key, name), h in sorted(hyps.items()):
        report = ev.report(h)
        result["latencies"].setdefault(key, {})[name] = {k: report[k] for k in ("kinds", "total", "mean", "files")}
        log(f"latency {key} {name}: validation mean DER {report['mean']['der']:.2f}")
    path = output / f"uisrnn-{variant}.json"
    path.write_text(json.dumps(result, indent=1, default=_default) + "\n", encoding="utf-8")
    return result


def _cell(r: dict[str, Any]) -> str:
    return f"{r['der']:.1f} ({r['miss']:.1f} / {r['false_alarm']:.1f} / {r['confusion']:.1f})"


def table(result: dict[str, Any]) -> str:
    """Markdown: kind x latency, validation DER % (miss / false alarm / confusion) per back-end."""
    names = ["incremental"] + [f"uisrnn_lag{lag}" for lag in result["lags"]]
    heads = ["incremental"] + [f"uisrnn, lag {lag}" for lag in result["lags"]]
    lines = ["| kind | latency | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    keys = list(result["latencies"])
    for kind in (*KINDS, "mean"):
        for key in keys:
            block = result["latencies"][key]
            cells = [_cell(block[n]["mean"] if kind == "mean" else block[n]["kinds"][kind]) for n in names
                     if kind == "mean" or kind in block[n]["kinds"]]
            if len(cells) == len(names):
                label = "**mean over kinds**" if kind == "mean" else kind
                lines.append(f"| {label} | {key} s | " + " | ".join(cells) + " |")
    return "\n".join(lines)
