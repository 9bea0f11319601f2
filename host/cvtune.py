"""Grouped k-fold cross-validated tuning per latency on the dev set, with cached model outputs.

1. ``extract``: segmentation + embeddings of every dev-set file, once per bundle variant
   (``replay.extract``), into ``CACHE/VARIANT/URI.npz``.
2. ``tune``: for each latency and each fold, an optuna TPE study fits the parameters on the other
   k-1 folds (objective: the mean over kinds of audio of each kind's DER, so the mean the issue is
   judged on), one study per aggregation window, and the best trial of them is scored on the
   held-out fold. The validation figures pooled over
   the k held-out folds are the honest ones; fit figures are never reported as results. The preset
   of a latency is then tuned the same way on all folds. diart's AMI preset (the pipeline
   defaults) is scored on the same files beside it.
3. ``evaluate``: the per-fold parameters of a ``tune`` run (and the presets) on another variant's
   cache (fp32 vs int8).

Reported figures come from pyannote.metrics (``host.scoring``); the objective uses the equal,
faster ``replay.fast_der``.
"""

from __future__ import annotations

import edged  # noqa: F401  (first: pins the BLAS pools to one thread before numpy loads)

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edged.diarize.params import AGGREGATION_WINDOWS, PipelineParams
from edged.errors import EdgedError

from .devset import KINDS, load_manifest
from .replay import Features, _Prepared, extract, fast_der, fast_replay, rates, reference_from_item, replay

LATENCIES = (0.5, 1.0, 2.0, 5.0)
# what is tuned, with the search range (min durations: see ``space``)
SPACE: dict[str, tuple[float, float]] = {
    "rho_update": (0.0, 0.6),
    "delta_new": (0.4, 1.8),
    "onset": (0.2, 0.9),
    "offset_ratio": (0.2, 1.0),  # offset = onset * offset_ratio (hysteresis: offset <= onset)
    "min_duration_on": (0.0, 1.0),
    "min_duration_off": (0.0, 1.0),
    "decision_weight": (0.0, 1.0),
    "decision_threshold": (0.2, 0.8),
}
# text settings tuned by one study per value (``choices``): the window weighting of the
# aggregation (the newest frames of a window, with no audio after them, are its least reliable)
CHOICE_FIELDS = ("aggregation",)
# left fixed: tau_active (inert: the clustering sees 0/1 local decisions, so every value in
# (0, 1] gives the same output), gamma/beta (change the embeddings: a new extraction per value),
# duration/step (model geometry), max_speakers.


class CVError(EdgedError):
    """The dev set, cache or a tuning run cannot be used (one-line message)."""


def space(latency: float) -> dict[str, tuple[float, float]]:
    """Search ranges at ``latency``: min durations add to when a turn becomes final, so they are
    kept to at most the latency itself (the delay never more than doubles)."""
    out = dict(SPACE)
    for name in ("min_duration_on", "min_duration_off"):
        out[name] = (0.0, min(SPACE[name][1], latency))
    return out


def load_items(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """uri -> ScoringInput (reference + scored region) and uri -> manifest entry."""
    from .inputs import audio_duration
    from .scoring import load_rttm, load_uem, prepare

    files = {f["uri"]: f for f in manifest["files"]}
    refs = load_rttm(sorted({f["rttm"] for f in files.values()}))
    uem_paths = sorted({f["uem"] for f in files.values() if f.get("uem")})
    uems = load_uem(uem_paths) if uem_paths else None
    durations = {uri: audio_duration(Path(f["audio"])) for uri, f in files.items()}
    items = prepare(durations, refs, uems)
    return items, files


def cache_path(cache: Path, variant: str, uri: str) -> Path:
    return Path(cache) / variant / f"{uri}.npz"


def extract_all(devset: Path, models_dir: Path, variant: str, cache: Path, latencies: Sequence[float] = LATENCIES,
                log: Callable[[str], None] = print) -> None:
    """Features of every dev-set file not cached yet (one onnxruntime thread)."""
    from edged.models.blocks import load_models
    from edged.sources.file import read_audio

    manifest = load_manifest(devset)
    models = load_models(models_dir, variant, threads=1)
    todo = [f for f in manifest["files"] if not cache_path(cache, variant, f["uri"]).is_file()]
    started = time.perf_counter()
    audio_s = 0.0
    for n, f in enumerate(todo, 1):
        samples = read_audio(f["audio"], models.sample_rate)
        feat = extract(models, samples, f["uri"], latencies)
        feat.save(cache_path(cache, variant, f["uri"]))
        audio_s += len(samples) / models.sample_rate
        elapsed = time.perf_counter() - started
        log(f"[{n}/{len(todo)}] {f['uri']}: {len(feat.starts)} windows; {audio_s:.0f} s audio in {elapsed:.0f} s "
            f"(RTF {elapsed / audio_s:.3f})")
    (Path(cache) / variant / "bundle.json").write_text(json.dumps(
        {"models": str(Path(models_dir).resolve()), "variant": variant,
         "sha256": {k: v.sha256 for k, v in _hashes(models.bundle, variant).items()}}, indent=1) + "\n")


def _hashes(bundle: Any, variant: str) -> dict[str, Any]:
    return {name: bundle.model(name, variant) for name in ("segmentation", "embedding")}


class Evaluator:
    """Cached features and references of the dev set; scores parameter sets by replay."""

    def __init__(self, devset: Path, cache: Path, variant: str):
        self.manifest = load_manifest(devset)
        self.items, self.files = load_items(self.manifest)
        self.refs = {uri: reference_from_item(item) for uri, item in self.items.items()}
        self.features: dict[str, Features] = {}
        for uri in self.files:
            path = cache_path(cache, variant, uri)
            if not path.is_file():
                raise CVError(f"{path}: no cached features; run the extract step for {variant} first")
            self.features[uri] = Features.load(path)
        self.prepared = {uri: _Prepared(feat) for uri, feat in self.features.items()}
        self.variant = variant
        self.k = int(self.manifest["k"])

    def uris(self, folds: Sequence[int]) -> list[str]:
        return [u for u, f in self.files.items() if f["fold"] in folds]

    def hypotheses(self, params: PipelineParams, uris: Sequence[str], uisrnn: Any = None) -> dict[str, list]:
        """uri -> replayed turns; ``uisrnn``: the bundle's network for ``clustering: uisrnn``."""
        return {u: replay(self.features[u], params, uisrnn) for u in uris}

    def components(self, params: PipelineParams, uris: Sequence[str]) -> dict[str, tuple]:
        """uri -> (speech, missed, false alarm, confusion) seconds, fast DER."""
        return {u: fast_der(self.refs[u], fast_replay(self.prepared[u], params)) for u in uris}

    def objective(self, comps: dict[str, tuple]) -> float:
        """Mean over the kinds present of each kind's DER (percent)."""
        ders = []
        for kind in KINDS:
            parts = [c for u, c in comps.items() if self.files[u]["kind"] == kind]
            if parts:
                ders.append(rates(parts)["der"])
        return float(np.mean(ders))

    def report(self, hyps: dict[str, list]) -> dict[str, Any]:
        """pyannote.metrics DER per file, per kind, the mean over kinds and the total."""
        from .scoring import annotation_from_turns, score_file

        per_file = {u: score_file(self.items[u], annotation_from_turns(u, h)) for u, h in hyps.items()}
        return summarize_rates(per_file, self.files)


def _r(x: Any) -> dict[str, Any]:
    """ErrorRates -> the figures kept in the reports."""
    return {"der": x.der, "miss": x.miss, "false_alarm": x.false_alarm, "confusion": x.confusion,
            "speech_s": x.speech_s, "missed_s": x.missed_s, "false_alarm_s": x.false_alarm_s,
            "confusion_s": x.confusion_s}



def summarize_rates(per_file: dict[str, Any], files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from .scoring import ErrorRates

    out: dict[str, Any] = {"files": {u: _r(r) for u, r in per_file.items()}, "kinds": {}}
    for kind in KINDS:
        parts = [r for u, r in per_file.items() if files[u]["kind"] == kind]
        if parts:
            out["kinds"][kind] = {**_r(ErrorRates.total(parts)), "n": len(parts)}
    out["total"] = _r(ErrorRates.total(per_file.values()))
    kinds = out["kinds"].values()
    out["mean"] = {k: float(np.mean([v[k] for v in kinds])) for k in ("der", "miss", "false_alarm", "confusion")}
    return out


def _params(base: PipelineParams, values: dict[str, Any]) -> PipelineParams:
    values = dict(values)
    if "offset_ratio" in values:
        values["offset"] = values.get("onset", base.onset) * values.pop("offset_ratio")
    return base.replace(**values)


def _point(params: PipelineParams, rng_space: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Search-space coordinates of a parameter set (clipped to the ranges)."""
    values = {k: getattr(params, k) for k in rng_space if k != "offset_ratio"}
    if "offset_ratio" in rng_space:
        values["offset_ratio"] = params.offset / params.onset if params.onset > 0 else 1.0
    return {k: float(np.clip(v, *rng_space[k])) for k, v in values.items()}


def choices(latency: float, step: float) -> list[dict[str, str]]:
    """The values of ``CHOICE_FIELDS`` that get a study each (TPE explores a categorical poorly:
    the value that wins its first trials takes nearly all the others). At ``latency == step`` a
    frame has one window, so every aggregation window gives the same scores: "mean" only."""
    windows = ("mean",) if latency <= step + 1e-9 else AGGREGATION_WINDOWS
    return [{"aggregation": w} for w in windows]


def run_study(ev: Evaluator, uris: list[str], base: PipelineParams, latency: float, trials: int, seed: int,
              log: Callable[[str], None], label: str, starts: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """One TPE study per value of the choices (``choices``), each with the base point and
    ``starts`` first, then ``trials`` in all; the best of all on ``uris``."""
    studies = []
    for choice in choices(latency, base.step):
        tag = " ".join(f"{k} {v}" for k, v in choice.items())
        studies.append((choice, _study(ev, uris, base.replace(**choice), latency, trials, seed, log,
                                       f"{label} ({tag})", starts)))
    choice, best = min(studies, key=lambda cs: cs[1]["fit_objective"])
    return {"params": {**best["params"], **choice}, "fit_objective": best["fit_objective"],
            "base_fit_objective": studies[0][1]["base_fit_objective"],
            "choices": [{**c, "fit_objective": r["fit_objective"]} for c, r in studies],
            "trials": [{**t, "params": {**t["params"], **c}} for c, r in studies for t in r["trials"]]}


def _study(ev: Evaluator, uris: list[str], base: PipelineParams, latency: float, trials: int, seed: int,
           log: Callable[[str], None], label: str, starts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """TPE over ``space`` with ``base``'s choices; the best trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng_space = space(latency)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(8, trials // 5), multivariate=True))
    base_l = base.replace(latency=latency)
    study.enqueue_trial(_point(base_l, rng_space))
    for s in starts:
        study.enqueue_trial({k: float(np.clip(s[k], *rng_space[k])) for k in rng_space})
    t0 = time.perf_counter()

    def objective(trial) -> float:
        values = {k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in rng_space.items()}
        return ev.objective(ev.components(_params(base_l, values), uris))

    study.optimize(objective, n_trials=trials)
    best = study.best_trial
    log(f"{label}: {trials} trials in {time.perf_counter() - t0:.0f} s; fit objective base "
        f"{study.trials[0].value:.2f} -> best {best.value:.2f} (trial {best.number})")
    return {"params": dict(best.params), "fit_objective": best.value, "base_fit_objective": study.trials[0].value,
            "trials": [{"number": t.number, "value": t.value, "params": t.params} for t in study.trials]}


def cross_validate(devset: Path, cache: Path, output: Path, variant: str = "int8",
                   latencies: Sequence[float] = LATENCIES, trials: int = 60, seed: int = 0,
                   base: PipelineParams | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per latency: k fold studies scored on their held-out folds, the diart AMI preset on the same
    files, and the final preset tuned on all folds. Writes OUTPUT/cv-VARIANT.json and presets.json."""
    base = base or PipelineParams.preset("ami")
    ev = Evaluator(devset, cache, variant)
    output.mkdir(parents=True, exist_ok=True)
    everything = ev.uris(range(ev.k))
    results: dict[str, Any] = {"variant": variant, "k": ev.k, "trials": trials, "seed": seed,
                               "space": {f"{l:g}": space(l) for l in latencies},
                               "choices": {f"{l:g}": choices(l, base.step) for l in latencies}, "base": base.to_dict(),
                               "latencies": {}}
    out_path = output / f"cv-{variant}.json"
    previous: dict[str, float] | None = None
    for latency in latencies:
        key = f"{latency:g}"
        block: dict[str, Any] = {"folds": []}
        validation_hyps: dict[str, list] = {}
        for fold in range(ev.k):
            fit = ev.uris([f for f in range(ev.k) if f != fold])
            held = ev.uris([fold])
            starts = [previous] if previous else []
            best = run_study(ev, fit, base, latency, trials, seed + 1000 * fold + int(10 * latency), log,
                             f"latency {key} fold {fold}", starts)
            params = _params(base.replace(latency=latency), best["params"])
            hyps = ev.hypotheses(params, held)  # exact replay for every reported figure
            validation_hyps.update(hyps)
            fold_report = ev.report(hyps)
            log(f"latency {key} fold {fold}: validation mean-over-kinds DER {fold_report['mean']['der']:.2f} "
                f"(total {fold_report['total']['der']:.2f})")
            block["folds"].append({"fold": fold, "params": params.to_dict(), "search": best["params"],
                                   "fit_objective": best["fit_objective"],
                                   "base_fit_objective": best["base_fit_objective"], "choices": best["choices"],
                                   "validation": {k: fold_report[k] for k in ("kinds", "total", "mean")},
                                   "trials": best["trials"]})
        block["validation"] = ev.report(validation_hyps)
        base_l = base.replace(latency=latency)
        block["diart_ami"] = ev.report(ev.hypotheses(base_l, everything))
        final = run_study(ev, everything, base, latency, trials, seed + 77 + int(10 * latency), log,
                          f"latency {key} final (all folds)",
                          [f["search"] for f in block["folds"]])
        block["preset"] = _params(base_l, final["params"]).to_dict()
        block["preset_fit_objective"] = final["fit_objective"]
        block["preset_trials"] = final["trials"]
        block["preset_choices"] = final["choices"]
        previous = final["params"]
        v, d = block["validation"], block["diart_ami"]
        log(f"latency {key}: validation mean DER {v['mean']['der']:.2f} (total {v['total']['der']:.2f}) vs diart AMI "
            f"preset {d['mean']['der']:.2f} (total {d['total']['der']:.2f})")
        results["latencies"][key] = block
        out_path.write_text(json.dumps(results, indent=1, default=_default) + "\n", encoding="utf-8")
    write_presets(results, output / "presets.json")
    return results


def write_presets(results: dict[str, Any], path: Path) -> None:
    """{"0.5": {param: value, ...}, ...}: the tuned fields per latency, plus their validation figures."""
    presets: dict[str, Any] = {}
    tuned = [k for k in SPACE if k != "offset_ratio"] + ["offset", "tau_active"]
    for key, block in results["latencies"].items():
        p = block["preset"]
        entry: dict[str, Any] = {k: round(float(p[k]), 4) for k in tuned}
        entry.update({k: p[k] for k in CHOICE_FIELDS})
        v = block["validation"]
        entry["validation"] = {
            "variant": results["variant"], "folds": results["k"], "trials_per_study": results["trials"],
            "mean_der_over_kinds": round(v["mean"]["der"], 2), "total_der": round(v["total"]["der"], 2),
            "kinds": {k: {m: round(x[m], 2) for m in ("der", "miss", "false_alarm", "confusion")}
                      for k, x in v["kinds"].items()},
            "diart_ami_mean_der_over_kinds": round(block["diart_ami"]["mean"]["der"], 2),
        }
        presets[key] = entry
    path.write_text(json.dumps(presets, indent=1) + "\n", encoding="utf-8")


def evaluate_variant(devset: Path, cache: Path, cv_json: Path, variant: str,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score a tune run's per-fold parameters on their held-out folds, and the diart AMI preset,
    with another variant's cached features."""
    cv = json.loads(Path(cv_json).read_text(encoding="utf-8"))
    ev = Evaluator(devset, cache, variant)
    out: dict[str, Any] = {"variant": variant, "from": str(cv_json), "latencies": {}}
    for key, block in cv["latencies"].items():
        hyps: dict[str, list] = {}
        for fold in block["folds"]:
            params = PipelineParams.from_dict(fold["params"])
            hyps.update(ev.hypotheses(params, ev.uris([fold["fold"]])))
        v = ev.report(hyps)
        d = ev.report(ev.hypotheses(PipelineParams.from_dict(cv["base"]).replace(latency=float(key)),
                                    ev.uris(range(ev.k))))
        out["latencies"][key] = {"validation": v, "diart_ami": d}
        log(f"{variant} latency {key}: validation mean DER {v['mean']['der']:.2f} vs diart AMI {d['mean']['der']:.2f}")
    return out


def _default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
