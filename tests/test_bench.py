"""edged-bench end to end on a small real subset: the daemon's pipeline in spawn workers, scored."""

from __future__ import annotations

import json
import shutil

import pytest

from edged.models.bundle import MANIFEST_NAME
from edged_host.cli_bench import main as bench_main
from edged_host.conversations import ConversationSpec, build_set
from edged_host.inputs import load_dataset
from edged_host.scoring import annotation_from_turns, load_rttm, score_set


@pytest.fixture(scope="module")
def subset(data_dir, tmp_path_factory) -> dict:
    """falcon (18.6 s, 3 speakers) and a 20 s synthesized two-speaker conversation, in two folders."""
    root = tmp_path_factory.mktemp("subset")
    shutil.copy(data_dir / "falcon" / "falcon.wav", root / "falcon.wav")
    build_set(data_dir / "librispeech", root / "conv", ConversationSpec(speakers=2, duration=20, overlap=0.05, seed=2))
    return {"inputs": [root / "falcon.wav", root / "conv"],
            "reference": [data_dir / "falcon" / "falcon.rttm", root / "conv" / "reference.rttm"],
            "uem": [root / "conv" / "reference.uem"]}


def _args(subset, bundle, out, *extra):
    return [*map(str, subset["inputs"]), "--reference", *map(str, subset["reference"]), "--uem",
            *map(str, subset["uem"]), "--models", str(bundle), "--output", str(out), "-q", *extra]


def test_bench_report_figures_and_hypotheses(subset, bundle, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench_main(_args(subset, bundle, out, "--latency", "1,5", "--jobs", "2")) == 0
    printed = capsys.readouterr().out
    assert "| int8 | 1 |" in printed and "| int8 | 5 |" in printed

    report = json.loads((out / "report.json").read_text())
    for key in ("der", "jer", "miss", "false_alarm", "confusion", "step_ms_p50", "step_ms_p95", "step_ms_p99", "rtf",
                "peak_rss_mb", "files", "variant", "latency", "models", "runs"):
        assert key in report, key
    assert [(r["variant"], r["latency"]) for r in report["runs"]] == [("int8", 1.0), ("int8", 5.0)]
    assert report["der"] == report["runs"][0]["der"]
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    assert report["models"]["sha256"]["int8"] == {
        role: manifest["models"][role]["int8"]["sha256"] for role in ("segmentation", "embedding")}

    data = load_dataset(subset["inputs"], subset["reference"], subset["uem"])
    for run in report["runs"]:
        assert sorted(run["files"]) == ["conv000", "falcon"]
        assert 0 < run["step_ms_p50"] <= run["step_ms_p95"] <= run["step_ms_p99"]
        assert 0 < run["rtf"] < 5 and 30 < run["peak_rss_mb"] < 3000
        assert run["steps"] == sum(f["steps"] for f in run["files"].values())
        assert len(run["workers"]) == 2 and all(w["files"] == 1 for w in run["workers"])
        assert set(run["groups"]) == {"conv", subset["inputs"][0].parent.name}
        assert run["files"]["conv000"]["uem"] == "file" and run["files"]["falcon"]["uem"] == "audio"
        # the written hypotheses rescore to the reported figures; the total is from summed seconds
        hyps = {}
        for uri, f in run["files"].items():
            ann = load_rttm([out / f["hypothesis"]]).annotations[uri]
            hyps[uri] = annotation_from_turns(uri, [(l, s.start, s.end) for s, _, l in ann.itertracks(yield_label=True)])
            assert (out / f["figure"]).stat().st_size > 5000
        total, per_file = score_set(data.items, hyps)
        assert run["der"] == pytest.approx(total.der, abs=0.01)
        missed = sum(f["components_s"]["missed"] for f in run["files"].values())
        assert run["miss"] == pytest.approx(100 * missed / run["speech_s"], abs=0.01)
        for uri, f in run["files"].items():
            assert f["der"] == pytest.approx(per_file[uri].der, abs=0.01)
    # quality: the falcon clip as tests/test_pipeline.py expects, the easy conversation well
    at5 = report["runs"][1]["files"]
    assert at5["falcon"]["der"] < 30 and at5["conv000"]["der"] < 35
    assert (out / "der_latency.png").stat().st_size > 5000
    md = (out / "report.md").read_text()
    assert "## Summary" in md and "## By folder" in md and "der_latency.png" in md


def test_bench_runs_the_daemon_pipeline_unchanged(bundle, data_dir, tmp_path):
    """Same turns as the daemon's code path (`edged diarize`: 100 ms file blocks through
    StreamingDiarizer.run, RTTM by format_rttm) on the same file and settings."""
    from edged.sources.file import file_blocks
    from edged.diarize.events import TurnEvent
    from edged.messages import format_rttm
    from edged.diarize.params import PipelineParams
    from edged.models.blocks import load_models
    from edged.diarize.pipeline import StreamingDiarizer

    out = tmp_path / "bench"
    falcon = data_dir / "falcon"
    assert bench_main([str(falcon / "falcon.wav"), "--reference", str(falcon / "falcon.rttm"), "--models",
                       str(bundle), "--latency", "2", "--preset", "ami", "--output", str(out), "-q", "--no-timelines"]) == 0
    diarizer = StreamingDiarizer(load_models(bundle, "int8", threads=1), PipelineParams(latency=2.0))
    turns = [e for e in diarizer.run(file_blocks(falcon / "falcon.wav")) if isinstance(e, TurnEvent)]
    assert turns and (out / "int8-lat2" / "rttm" / "falcon.rttm").read_text() == format_rttm("falcon", turns)
    assert not (out / "int8-lat2" / "timelines").exists() and "der_latency" not in json.loads(
        (out / "report.json").read_text())["figures"]


def test_bench_bad_input_is_one_line(subset, bundle, data_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    falcon = data_dir / "falcon"
    cases = [
        ([str(tmp_path / "empty"), "--reference", str(falcon / "falcon.rttm")], "no audio files"),
        ([str(falcon / "falcon.wav"), "--reference", str(data_dir / "sample" / "sample.rttm")],
         "no reference for 'falcon'"),
        ([str(falcon / "falcon.wav"), "--reference", str(falcon / "falcon.rttm"), "--latency", "0.7"],
         "latency=0.7 must be a whole multiple of step=0.5"),
        ([str(falcon / "falcon.wav"), "--reference", str(falcon / "falcon.rttm"), "--models", str(tmp_path)],
         "manifest missing"),
    ]
    for args, message in cases:
        if "--models" not in args:
            args += ["--models", str(bundle)]
        assert bench_main([*args, "--output", str(tmp_path / "out"), "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("edged-bench: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "report.json").exists()


def test_worker_peak_memory_is_its_own(bundle):
    """Linux keeps getrusage's ru_maxrss across execve: a spawned worker must not report its parent's size."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    import numpy as np

    from edged_host.worker import init_worker, peak_rss_mb

    ballast = np.ones(600 * 2**20 // 8)  # the parent holds 600 MiB more than usual
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=init_worker,
                             initargs=(str(bundle), "int8")) as pool:
        worker = pool.submit(peak_rss_mb).result(timeout=300)
    assert 30 < worker < 450, worker
    assert ballast.sum() > 0
