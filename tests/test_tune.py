"""edged-tune: a few real trials on sqlite, resume, Ctrl-C, and two workers sharing a real PostgreSQL study."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from edged_host.cli_tune import main as tune_main
from edged_host.conversations import ConversationSpec, build_set


@pytest.fixture(scope="module")
def conv(data_dir, tmp_path_factory) -> Path:
    """An 8 s two-speaker conversation (one trial: 8 pipeline steps)."""
    root = tmp_path_factory.mktemp("tune-data")
    build_set(data_dir / "librispeech", root, ConversationSpec(speakers=2, duration=8, turn_min=1.5, turn_max=3,
                                                                 overlap=0.05, seed=11))
    return root


def _args(conv: Path, bundle: Path, out: Path, *extra: str) -> list[str]:
    return [str(conv / "conv000.wav"), "--reference", str(conv / "reference.rttm"), "--uem", str(conv / "reference.uem"),
            "--models", str(bundle), "--output", str(out), *extra]


def _study(url: str, name: str = "edged"):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def _states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _tune_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edged_host.cli_tune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sqlite_trials_fragment_and_resume(conv, bundle, tmp_path, capsys):
    out = tmp_path / "tune"
    assert tune_main(_args(conv, bundle, out, "--trials", "2", "--seed", "0")) == 0
    printed = capsys.readouterr().out
    assert "2 finished trials, 2 from this run" in printed and "% before (base parameters) -> " in printed
    result = json.loads((out / "tune.json").read_text())
    from edged.models.bundle import load_bundle
    from edged.settings import pipeline_params

    presets = load_bundle(bundle, variants=()).presets
    base = pipeline_params({}, presets and presets.by_latency)  # the bundle's preset for 5 s
    first = result["trials"][0]
    assert first["baseline"] and first["params"] == {k: getattr(base, k) for k in ("tau_active", "rho_update", "delta_new")}
    assert result["best"]["der"] <= result["baseline"]["der"] == first["der"]
    # the fragment drops into an edged config: its pipeline section loads to the best parameters
    from edged.settings import pipeline_params

    fragment = yaml.safe_load((out / "best-pipeline.yaml").read_text())
    params = pipeline_params(fragment["pipeline"])
    assert params.to_dict() == result["best_params"]
    best = result["best"]["params"]
    assert params.tau_active == best["tau_active"] == params.onset == params.offset  # diart's coupling
    assert (params.rho_update, params.delta_new) == (best["rho_update"], best["delta_new"])
    assert (out / "best-pipeline.yaml").read_text().startswith("# edged-tune: study 'edged'")

    # resumable: the same command continues the study
    assert tune_main(_args(conv, bundle, out, "--trials", "1")) == 0
    assert "3 finished trials, 1 from this run" in capsys.readouterr().out
    assert _states(_study(f"sqlite:///{out / 'study.db'}")) == {"COMPLETE": 3}

    # a study remembers what it is tuned on
    falcon = conv.parent / "falcon"
    falcon.mkdir(exist_ok=True)
    shutil.copy(conv / "conv000.wav", falcon / "other.wav")
    (falcon / "other.rttm").write_text((conv / "conv000.rttm").read_text().replace("conv000", "other"))
    assert tune_main([str(falcon / "other.wav"), "--reference", str(falcon / "other.rttm"), "--models", str(bundle),
                      "--output", str(out), "--trials", "1"]) == 1
    err = capsys.readouterr().err
    assert "study 'edged' was tuned with other files" in err and err.count("\n") == 1


def test_ctrl_c_leaves_a_consistent_study(conv, bundle, tmp_path):
    out = tmp_path / "tune"
    url = f"sqlite:///{out / 'study.db'}"
    proc = _tune_process(_args(conv, bundle, out, "--trials", "200"))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "study.db").exists():
                try:
                    if _states(_study(url)).get("COMPLETE", 0) >= 1:
                        break
                except Exception:  # the study is being created
                    pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "is consistent with" in err and "run the same command again to continue" in err
    states = _states(_study(url))
    assert "RUNNING" not in states and states["COMPLETE"] >= 1
    assert set(states) <= {"COMPLETE", "FAIL"}
    # and it continues
    assert tune_main(_args(conv, bundle, out, "--trials", "1")) == 0
    assert _states(_study(url))["COMPLETE"] == states["COMPLETE"] + 1


def _pg_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found; install the apt package postgresql")


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on a private unix socket in a temporary folder; yields its URL."""
    bindir = _pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="edged-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the unprivileged postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("no 'postgres' user to run the test server as; install the apt package postgresql")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, timeout=300)
    started = subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "300",
         "-o", f"-k {root} -p {port} -c listen_addresses='' -c fsync=off", "start"],
        capture_output=True, text=True, timeout=360)
    assert started.returncode == 0, started.stderr + (root / "server.log").read_text()
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgres_study(conv, bundle, tmp_path, postgres):
    workers = [_tune_process(_args(conv, bundle, tmp_path / f"w{i}", "--trials", "2", "--storage", postgres,
                                   "--study", "shared")) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=480) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    study = _study(postgres, "shared")
    trials = study.get_trials(deepcopy=False)
    reports = [json.loads((tmp_path / f"w{i}" / "tune.json").read_text()) for i in range(2)]
    # every trial of both workers is in the one study, none lost, none left running
    assert _states(study) == {"COMPLETE": 4}
    assert [r["ran_here"] for r in reports] == [2, 2]
    assert len({t.number for t in trials}) == 4
    by_worker: dict[str, int] = {}
    for t in trials:
        by_worker[t.user_attrs["worker"]] = by_worker.get(t.user_attrs["worker"], 0) + 1
    assert sorted(by_worker.values()) == [2, 2]
    # the worker that finished last saw everyone's trials; the base parameters were tried first
    assert max(r["finished"] for r in reports) == 4
    assert any(t.user_attrs.get("baseline") for t in trials)
    assert "postgresql" in reports[0]["storage"] and not (tmp_path / "w0" / "study.db").exists()


def test_bad_storage_and_space_are_one_line(conv, bundle, tmp_path, capsys):
    cases = [
        (["--storage", "study.db"], "is not a database URL"),
        (["--storage", f"postgresql+psycopg2://nobody@/x?host={tmp_path}&port=9"], "cannot open study storage"),
        (["--params", "tau_active,latency"], "cannot tune latency; choose among tau_active"),
    ]
    for extra, message in cases:
        assert tune_main(_args(conv, bundle, tmp_path / "out", "--trials", "1", *extra)) == 1
        err = capsys.readouterr().err
        assert err.startswith("edged-tune: error:") and message in err and err.count("\n") == 1, err
