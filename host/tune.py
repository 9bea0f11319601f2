"""Hyper-parameter search for the streaming pipeline: optuna TPE, objective the bench's total DER.

The study lives in an optuna RDB storage: ``sqlite:///OUTPUT/study.db`` by default, or a shared
``postgresql://`` database that any number of workers on any number of machines join with the same
``--study`` name (each runs ``--trials`` more trials; the sampler sees everyone's). The first trial
of a new study is the base parameters, so the best found is never worse than the defaults on the
tuning data.

Consistency: a study remembers what it is tuned on (files, bundle hashes, variant, base
parameters, search space); joining it with anything else is refused. Ctrl-C (or SIGTERM) during a
trial aborts that trial, which is recorded as FAIL; between trials it stops after the bookkeeping.
Either way no trial of this worker is left RUNNING, and rerunning the command continues the study.
Workers killed outright (SIGKILL, power loss) leave a RUNNING trial that the heartbeat marks FAIL
once ``GRACE_S`` have passed, when any worker next starts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.errors import EdgedError
from edged.diarize.params import PipelineParams

from .bench import Runner, bundle_hashes, evaluate
from .inputs import Dataset
from .scoring import ErrorRates, ScoreOptions

# diart's tuned parameters; any tunable PipelineParams field may be added with --params
DEFAULT_SPACE = ("tau_active", "rho_update", "delta_new")
HEARTBEAT_S = 30
GRACE_S = 120
SCHEMA_RETRIES = 5


class TuneError(EdgedError):
    """The study, its storage or the search space cannot be used (one-line message)."""


class TuneInterrupted(TuneError):
    """Ctrl-C or SIGTERM: the study is consistent and can be continued."""


def mask_url(url: str) -> str:
    """A storage URL with its password hidden, for messages and reports."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def storage_url(storage: str | None, output: Path) -> str:
    """``--storage`` as given, or the default sqlite file in ``output``."""
    if storage:
        if "://" not in storage:
            raise TuneError(f"--storage {storage!r} is not a database URL; use e.g. sqlite:///study.db or "
                            "postgresql://user:password@host/dbname")
        return storage
    output.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(output / 'study.db').resolve()}"


def open_storage(url: str):
    """An optuna RDB storage (schema created when new); driver and connection errors in one line."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several local workers wait for the lock
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    for attempt in range(SCHEMA_RETRIES + 1):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **kwargs)
        except ModuleNotFoundError as exc:
            raise TuneError(f"{mask_url(url)}: database driver {exc.name!r} is not installed; "
                            "pip install 'edged[host]' (psycopg2-binary for postgresql)") from None
        except Exception as exc:  # sqlalchemy OperationalError, ArgumentError...
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
            # workers starting together race to create the schema: the loser finds it made, and retries
            if attempt < SCHEMA_RETRIES and any(s in reason.lower() for s in ("already exists", "duplicate", "unique")):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise TuneError(f"cannot open study storage {mask_url(url)} ({reason[:300]}); check the URL and that "
                            "the database server is running and reachable") from None
    raise AssertionError("unreachable")


def search_space(names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``{name: (lo, hi)}`` for the chosen tunable fields, from PipelineParams' bounds."""
    bounds = PipelineParams.tunable_bounds()
    unknown = [n for n in names if n not in bounds]
    if unknown or not names:
        raise TuneError(f"cannot tune {', '.join(unknown) or 'nothing'}; choose among {', '.join(bounds)}")
    space = {}
    for name in dict.fromkeys(names):
        lo, hi = bounds[name]
        if isinstance(lo, str) or isinstance(hi, str):
            raise TuneError(f"{name} has bounds that depend on other fields; it cannot be tuned")
        space[name] = (float(lo), float(hi))
    return space


def trial_params(base: PipelineParams, values: dict[str, float]) -> PipelineParams:
    """Base parameters with the trial's values; diart's coupling onset = offset = tau_active holds
    unless onset or offset are tuned themselves."""
    values = dict(values)
    if "tau_active" in values and "onset" not in values and "offset" not in values:
        values["onset"] = values["offset"] = values["tau_active"]
    return base.replace(**values)


def signature(dataset: Dataset, models: Path | str, variant: str, base: PipelineParams,
              space: dict[str, tuple[float, float]], options: ScoreOptions) -> dict[str, Any]:
    """What a study is tuned on; a worker with another signature may not join it."""
    hashes = bundle_hashes(models, [variant])["sha256"][variant]
    return {
        "files": {uri: round(item.duration, 2) for uri, item in sorted(dataset.items.items())},
        "models": hashes,
        "variant": variant,
        "base": base.to_dict(),
        "space": {k: list(v) for k, v in space.items()},
        "scoring": {"collar": options.collar, "skip_overlap": options.skip_overlap},
    }


def open_study(storage, name: str, sig: dict[str, Any], seed: int | None = None):
    """Create or join the study; refuse one tuned on other files, models or settings."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction="minimize",
                                load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise TuneError(f"study {name!r} is not a DER minimization; pass another --study name")
    stored = study.user_attrs.get("signature")
    if stored is None:
        try:
            study.set_user_attr("signature", sig)
        except Exception:  # another worker set it at the same moment: compare with theirs
            pass
        stored = study.user_attrs.get("signature")
    if stored != sig:
        parts = [k for k in sig if stored.get(k) != sig[k]]
        raise TuneError(f"study {name!r} was tuned with other {', '.join(parts)}; pass the same inputs, models and "
                        "options to continue it, or another --study name to start a new one")
    return study


class _Interrupt:
    """SIGINT/SIGTERM: abort the running trial (recorded as FAIL), or stop after the bookkeeping."""

    def __init__(self) -> None:
        self.requested = False
        self.computing = False

    def __call__(self, signum, frame) -> None:
        self.requested = True
        if self.computing:
            raise KeyboardInterrupt


@dataclass
class TuneResult:
    """What a worker reports at the end."""

    study: str
    storage: str
    ran_here: int  # trials this worker finished
    finished: int  # COMPLETE trials in the study (all workers)
    baseline: dict[str, Any]  # DER of the base parameters on the tuning files
    best: dict[str, Any]  # best trial: number, DER, parameters
    best_params: PipelineParams
    evaluation: dict[str, Any] | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)


def _rates(r: ErrorRates) -> dict[str, Any]:
    return {"der": r.der, "miss": r.miss, "false_alarm": r.false_alarm, "confusion": r.confusion, "jer": r.jer}


def _fmt(d: dict[str, Any]) -> str:
    return (f"DER {d['der']:.2f}% (miss {d['miss']:.2f}, FA {d['false_alarm']:.2f}, conf {d['confusion']:.2f})"
            if d.get("der") is not None else "DER n/a")


def tune(
    dataset: Dataset,
    models: Path | str,
    output: Path,
    trials: int,
    variant: str = "int8",
    base: PipelineParams | None = None,
    storage: str | None = None,
    study_name: str = "edged",
    space_names: Sequence[str] = DEFAULT_SPACE,
    jobs: int = 1,
    seed: int | None = None,
    options: ScoreOptions = ScoreOptions(),
    evaluation: Dataset | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> TuneResult:
    """Run ``trials`` more trials on the study (0: only report), write the best parameters."""
    import optuna
    from optuna.trial import TrialState

    if trials < 0:
        raise TuneError(f"--trials {trials} must be 0 or more")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    base = base or PipelineParams()
    space = search_space(space_names)
    url = storage_url(storage, output)
    shown = mask_url(url)
    sig = signature(dataset, models, variant, base, space, options)
    rdb = open_storage(url)
    study = open_study(rdb, study_name, sig, seed)
    study.enqueue_trial({k: getattr(base, k) for k in space}, user_attrs={"baseline": True}, skip_if_exists=True)
    me = f"{socket.gethostname()}:{os.getpid()}"
    interrupt = _Interrupt()
    ran = [0]
    jobs = max(1, min(jobs, len(dataset.audio)))
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    log(f"edged-tune: study {study_name!r} in {shown}: {done} finished trials so far; running {trials} more "
        f"on {len(dataset.items)} files ({dataset.duration:.0f} s), {variant}, latency {base.latency:g} s, "
        f"tuning {', '.join(space)}")

    with Runner(models, variant, jobs) as runner:
        def score(params: PipelineParams, data: Dataset) -> ErrorRates:
            interrupt.computing = True
            try:
                results = runner.run(data, params)
            finally:
                interrupt.computing = False
            return evaluate(data, results, variant, params, options).total

        def objective(trial: optuna.Trial) -> float:
            trial.set_user_attr("worker", me)
            if interrupt.requested:
                raise KeyboardInterrupt
            values = {k: trial.suggest_float(k, lo, hi) for k, (lo, hi) in space.items()}
            rates = score(trial_params(base, values), dataset)
            for key, value in _rates(rates).items():
                trial.set_user_attr(key, value)
            if rates.der is None:
                raise TuneError("the tuning files have no reference speech; DER is undefined")
            return rates.der

        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.state == TrialState.COMPLETE:
                ran[0] += 1
                best = study.best_trial
                shown_values = " ".join(f"{k}={v:.3f}" for k, v in trial.params.items())
                log(f"trial {trial.number} [{ran[0]}/{trials}]: {_fmt(trial.user_attrs)} {shown_values}"
                    f" | best {best.value:.2f}% (trial {best.number})")
            if interrupt.requested:
                study.stop()

        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig_num in (signal.SIGINT, signal.SIGTERM):
                handlers[sig_num] = signal.signal(sig_num, interrupt)
        try:
            if trials:
                study.optimize(objective, n_trials=trials, callbacks=[after], catch=())
            if interrupt.requested:
                raise KeyboardInterrupt
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not complete:
                raise TuneError(f"study {study_name!r} has no finished trial yet; run with --trials 1 or more")
            best = study.best_trial
            best_params = trial_params(base, best.params)
            baseline_trial = next((t for t in complete if t.user_attrs.get("baseline")), None)
            if baseline_trial is not None:
                baseline = {"trial": baseline_trial.number,
                            **{k: baseline_trial.user_attrs.get(k) for k in ("der", "miss", "false_alarm", "confusion", "jer")}}
            else:
                baseline = {"trial": None, **_rates(score(base, dataset))}
            evaluated = None
            if evaluation is not None:
                log(f"edged-tune: scoring base and best parameters on {len(evaluation.items)} held-out files")
                before = evaluate(evaluation, _run(runner, interrupt, evaluation, base), variant, base, options)
                after_r = evaluate(evaluation, _run(runner, interrupt, evaluation, best_params), variant, best_params, options)
                evaluated = {"files": len(evaluation.items), "audio_s": round(evaluation.duration, 3),
                             "before": _summary(before.report), "after": _summary(after_r.report)}
        except KeyboardInterrupt:
            _fail_running(study, rdb, me)
            finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            raise TuneInterrupted(
                f"interrupted; study {study_name!r} in {shown} is consistent with {finished} finished trials "
                f"({ran[0]} from this run); run the same command again to continue"
            ) from None
        finally:
            for sig_num, handler in handlers.items():
                signal.signal(sig_num, handler)
            _fail_running(study, rdb, me)

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    result = TuneResult(
        study=study_name, storage=shown, ran_here=ran[0], finished=len(finished), baseline=baseline,
        best={"trial": best.number, "worker": best.user_attrs.get("worker"),
              **{k: best.user_attrs.get(k) for k in ("der", "miss", "false_alarm", "confusion", "jer")},
              "params": best.params},
        best_params=best_params, evaluation=evaluated,
        trials=[{"number": t.number, "state": t.state.name, "der": t.value, "params": t.params,
                 "worker": t.user_attrs.get("worker"), "baseline": bool(t.user_attrs.get("baseline"))}
                for t in study.get_trials(deepcopy=False)],
    )
    write_outputs(result, output, dataset, variant, models)
    return result


def _run(runner: Runner, interrupt: _Interrupt, data: Dataset, params: PipelineParams):
    interrupt.computing = True
    try:
        return runner.run(data, params)
    finally:
        interrupt.computing = False


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("der", "miss", "false_alarm", "confusion", "jer")
    out = {k: report[k] for k in keys}
    if "groups" in report:
        out["groups"] = {g: {k: v[k] for k in keys} for g, v in report["groups"].items()}
    return out


def _fail_running(study, storage, me: str) -> None:
    """Mark this worker's RUNNING trials FAIL (none should be left; this makes sure)."""
    from optuna.trial import TrialState

    try:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker") == me:
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    except Exception:  # the storage may be gone; the heartbeat covers that case
        pass


def fragment(result: TuneResult, dataset: Dataset, variant: str, models: Path | str) -> str:
    """The best parameters as a ``pipeline:`` YAML section for an edged config."""
    import yaml

    b, base = result.best, result.baseline
    header = [
        f"# edged-tune: study {result.study!r} ({result.storage}), best of {result.finished} finished trials "
        f"(trial {b['trial']})",
        f"# total DER on the {len(dataset.items)} tuning files ({dataset.duration:.0f} s): "
        f"{base['der']:.2f}% with the base parameters -> {b['der']:.2f}% tuned",
        f"# bundle {Path(models).resolve()}, variant {variant}; merge into /etc/edged/config.yaml or a file in config/",
    ]
    if result.evaluation:
        e = result.evaluation
        header.append(f"# held-out ({e['files']} files): DER {e['before']['der']:.2f}% -> {e['after']['der']:.2f}%")
    body = yaml.safe_dump({"pipeline": result.best_params.to_dict()}, sort_keys=False)
    return "\n".join(header) + "\n" + body


def write_outputs(result: TuneResult, output: Path, dataset: Dataset, variant: str, models: Path | str) -> None:
    """``best-pipeline.yaml`` (the config fragment) and ``tune.json`` (the whole story)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "best-pipeline.yaml").write_text(fragment(result, dataset, variant, models), encoding="utf-8")
    data = {
        "study": result.study, "storage": result.storage, "ran_here": result.ran_here, "finished": result.finished,
        "baseline": result.baseline, "best": result.best, "best_params": result.best_params.to_dict(),
        "evaluation": result.evaluation, "trials": result.trials,
    }
    tmp = output / f"tune.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(output / "tune.json")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
