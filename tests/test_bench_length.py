"""scripts/bench_length.py: a benchmark stopped part way keeps the figures of the runs it finished."""

import importlib.util
import json

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("bench_length", REPO / "scripts" / "bench_length.py")
bench_length = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_length)


def test_a_benchmark_stopped_in_its_second_run_keeps_the_first_run_s_figures(tmp_path, monkeypatch):
    def trained(model, data, seed, run_dir, overrides):
        return {"train_seconds": 1.0, "steps": 10, "trained_segments": 2}

    def evaluated(checkpoint, segments, samples, precision, out_dir):
        if "seed1" in str(out_dir):
            raise KeyboardInterrupt
        return {"accuracy": 1 / segments, "seconds": 1.0, "tokens_per_s": 100.0 * segments, "peak_rss_mib": 500.0}

    monkeypatch.setattr(bench_length, "train_seed", trained)
    monkeypatch.setattr(bench_length, "evaluate_length", evaluated)
    with pytest.raises(KeyboardInterrupt):
        bench_length.main(["--models", "rmt", "--seeds", "0", "1", "--lengths", "1", "4", "--out", str(tmp_path)])

    report = json.loads((tmp_path / "bench_length_memorize_rmt.json").read_text())
    assert report["complete"] is False
    assert [(run["model"], run["seed"]) for run in report["runs"]] == [("rmt", 0)]
    assert report["runs"][0]["lengths"] == {"1": evaluated(None, 1, 0, "", ""), "4": evaluated(None, 4, 0, "", "")}
    assert report["summary"]["rmt"]["lengths"]["4"]["mean"] == 0.25
    assert (tmp_path / "accuracy_by_length_memorize_rmt.png").stat().st_size > 0


def test_a_finished_benchmark_says_it_is_complete_and_summarises_every_model(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_length, "train_seed", lambda *args: {"train_seconds": 1.0, "steps": 10,
                                                                   "trained_segments": 2})
    monkeypatch.setattr(bench_length, "evaluate_length", lambda checkpoint, segments, *args: {
        "accuracy": 0.5 if "baseline" in str(args[-1]) else 1.0, "seconds": 1.0, "tokens_per_s": 1.0,
        "peak_rss_mib": 1.0})
    bench_length.main(["--models", "rmt", "baseline", "--seeds", "0", "--lengths", "8", "--out", str(tmp_path)])

    report = json.loads((tmp_path / "bench_length_memorize_rmt_baseline.json").read_text())
    assert report["complete"] is True
    assert {model: summary["lengths"]["8"]["mean"] for model, summary in report["summary"].items()} == {
        "rmt": 1.0, "baseline": 0.5}
