"""Training on BABILong and eval.py's task x length table under the official scoring rule."""

import csv
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import memlm.evaluation.babilong as babilong_eval
from memlm.checkpointing import load_checkpoint, read_checkpoint
from memlm.evaluation import evaluate
from memlm.generation import Sampling, generate
from memlm.training import train
from tests.conftest import REPO, TINY_BERT, fast_config
from tests.test_evaluation import eval_cfg

BABILONG = ["model=lm2", "model.memory_slots=4", "data=babilong", "data.task=qa1", "data.segment_length=128",
            "data.val_samples=4"]


@pytest.fixture(scope="module")
def qa1_checkpoint(tmp_path_factory, background):
    run_dir = tmp_path_factory.mktemp("qa1")
    metrics = train(fast_config(background, run_dir, *BABILONG, head=[]))
    return run_dir / "checkpoints" / "last.ckpt", metrics


def test_lm2_trains_on_babilong_qa1(qa1_checkpoint):
    checkpoint, metrics = qa1_checkpoint
    hparams = read_checkpoint(checkpoint, "ckpt_path")["hyper_parameters"]

    assert (hparams["data"]["task"], hparams["model"]["_target_"]) == ("qa1", "memlm.memory.LM2")
    assert hparams["num_classes"] == 6
    assert {"val/accuracy_1seg", "val/accuracy_2seg"} <= set(metrics)


def test_eval_of_a_babilong_checkpoint_gives_its_task_at_standard_lengths(qa1_checkpoint, tmp_path):
    checkpoint, _ = qa1_checkpoint
    out = tmp_path / "eval"

    report = evaluate(eval_cfg(f"ckpt_path={checkpoint}", "babilong.lengths=[0k,1k]", "samples=3",
                               f"out_dir={out}"))

    assert list(report.accuracy) == ["qa1"] and list(report.accuracy["qa1"]) == ["0k", "1k"]
    with (out / "babilong_accuracy.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["task"], row["length"], row["tokens"], row["samples"]) for row in rows] == [
        ("qa1", "0k", "0", "3"), ("qa1", "1k", "1024", "3")]
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    assert (out / "babilong_accuracy.png").stat().st_size > 1000


def test_answers_are_greedy_generations_after_the_whole_prompt(qa1_checkpoint):
    checkpoint, _ = qa1_checkpoint
    model, _ = load_checkpoint(str(checkpoint))
    prompts = [babilong_eval.Prompt(list(range(300 + n, 500 + n)), "Where is Mary?", "garden") for n in range(3)]

    read = []

    answers = babilong_eval.generated_answers(model.head, prompts, 128, batch_size=2, max_new_tokens=3,
                                              progress=read.append)

    assert read == [2 * 200, 200]  # the prompt tokens of each batch, as it is done
    for prompt, answer in zip(prompts, answers, strict=True):
        alone = generate(model.head, torch.tensor([prompt.ids]), 128, Sampling(max_new_tokens=3))
        assert answer == model.tokenizer.decode(alone[0], skip_special_tokens=True)


@pytest.mark.parametrize(("answer", "expected"), [(None, 1.0), ("kitchen office", 0.0)])
def test_every_task_scores_generated_answers_with_the_official_rule(memorize_run, tmp_path, monkeypatch, answer,
                                                                    expected):
    checkpoint, _ = memorize_run  # a memorize checkpoint: BABILong tasks are asked for explicitly
    seen = []

    def answers(head, prompts, segment_length, batch_size, max_new_tokens, progress):
        seen.extend(prompts)
        return [answer or prompt.target.upper() + ". Office." for prompt in prompts]

    monkeypatch.setattr(babilong_eval, "generated_answers", answers)
    report = evaluate(eval_cfg(f"ckpt_path={checkpoint}",
                               "babilong.tasks=[qa1,qa2,qa3,qa4,qa5]", "babilong.lengths=[0k,1k]", "samples=4",
                               f"out_dir={tmp_path / 'eval'}"))

    assert report.accuracy == {task: {"0k": expected, "1k": expected} for task in ["qa1", "qa2", "qa3", "qa4", "qa5"]}
    assert len(seen) == 5 * 2 * 4
    assert {len(prompt.ids) for prompt in seen if len(prompt.ids) > 200} == {1024 - 2}


def test_each_task_and_length_shows_its_progress_and_accuracy(memorize_run, tmp_path, monkeypatch, capsys):
    checkpoint, _ = memorize_run

    def answers(head, prompts, segment_length, batch_size, max_new_tokens, progress):
        for prompt in prompts:
            progress(len(prompt.ids))
        return [prompt.target if index % 2 else "nowhere" for index, prompt in enumerate(prompts)]

    monkeypatch.setattr(babilong_eval, "generated_answers", answers)
    evaluate(eval_cfg(f"ckpt_path={checkpoint}", "babilong.tasks=[qa1,qa2]", "babilong.lengths=[0k,1k]",
                      "samples=4", f"out_dir={tmp_path / 'eval'}"))

    shown = capsys.readouterr().err
    for cell in ["qa1 0k", "qa1 1k", "qa2 0k", "qa2 1k"]:
        last = shown.split(cell)[-1].splitlines()[0]
        assert "100%" in last and "accuracy 0.50" in last, (cell, last)
    assert "4.09k/4.09k" in shown.split("qa1 1k")[-1]  # four prompts of 1,024 tokens less two


def test_published_samples_are_prompted_as_input_then_question(memorize_run, tmp_path, monkeypatch):
    checkpoint, _ = memorize_run
    records = [{"input": f"Mary moved to the office. Day {n} was long.", "question": "Where is Mary?",
                "target": "office"} for n in range(3)]
    (tmp_path / "babilong" / "qa1").mkdir(parents=True)
    (tmp_path / "babilong" / "qa1" / "0k.json").write_text(json.dumps(records))
    seen = []

    def answers(head, prompts, segment_length, batch_size, max_new_tokens, progress):
        seen.extend(head.backbone.tokenizer.decode(prompt.ids) for prompt in prompts)
        return ["office"] * len(prompts)

    monkeypatch.setattr(babilong_eval, "generated_answers", answers)
    report = evaluate(eval_cfg(f"ckpt_path={checkpoint}", "babilong.tasks=[qa1]",
                               "babilong.lengths=[0k]", f"babilong.source={tmp_path / 'babilong'}",
                               f"out_dir={tmp_path / 'eval'}"))

    assert report.accuracy == {"qa1": {"0k": 1.0}} and report.samples == {"qa1": {"0k": 3}}
    assert seen == [f" {record['input']} {record['question']}" for record in records]


def test_an_encoder_classifies_qa5_answers_but_is_refused_by_babilong_eval(fast_cfg, tmp_path):
    train(fast_cfg("data=babilong", "data.task=qa5", "data.segment_length=128", "data.val_samples=4", head=[],
                   backbone=TINY_BERT))
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = f"ckpt_path={path}"
    state = read_checkpoint(path, "ckpt_path")["state_dict"]
    assert state["objective.classifier.weight"].shape[0] == 7  # Bill, Fred, Jeff, Mary, apple, football, milk
    with pytest.raises(ValueError, match=r"\['qa9'\] not among"):
        evaluate(eval_cfg(checkpoint, "babilong.tasks=[qa1,qa9]"))
    with pytest.raises(ValueError, match="needs a decoder checkpoint"):
        evaluate(eval_cfg(checkpoint, "babilong.tasks=[qa1]"))


def test_the_protocol_is_chosen_once_and_auto_says_which(qa1_checkpoint, tmp_path, capsys):
    checkpoint, _ = qa1_checkpoint
    capsys.readouterr()

    auto = evaluate(eval_cfg(f"ckpt_path={checkpoint}", "babilong.lengths=[0k]", "samples=2", f"out_dir={tmp_path}"))
    assert "protocol=auto: babilong (BABILong tasks ['qa1'])" in capsys.readouterr().out
    assert auto.accuracy.keys() == {"qa1"}
    sweep = evaluate(eval_cfg(f"ckpt_path={checkpoint}", "protocol=lengths", "lengths=[1,2]", "samples=2",
                              f"out_dir={tmp_path}"))
    assert list(sweep.by_length) == [1, 2] and (tmp_path / "accuracy_by_length.csv").is_file()


def test_babilong_protocol_on_another_task_names_the_tasks_to_score(memorize_run):
    checkpoint, _ = memorize_run
    with pytest.raises(ValueError, match=r"trained on 'memorize', not a BABILong task.*babilong.tasks="):
        evaluate(eval_cfg(f"ckpt_path={checkpoint}", "protocol=babilong"))
    with pytest.raises(ValueError, match="protocol='bleu' is not one of"):
        evaluate(eval_cfg(f"ckpt_path={checkpoint}", "protocol=bleu"))


def test_generation_runs_under_the_precision_eval_names():
    cpu = torch.device("cpu")
    with babilong_eval.precision_context("bf16-mixed", cpu):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with babilong_eval.precision_context("32-true", cpu):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision='64-true'"):
        babilong_eval.precision_context("64-true", cpu)


def test_bench_reuse_refuses_runs_it_has_no_record_of(tmp_path):
    """--reuse names each head x task it has no training record for and stops before training or evaluating:
    training them instead would use this call's steps and overrides, not the ones the other runs had."""
    (tmp_path / "armt" / "qa1").mkdir(parents=True)
    (tmp_path / "armt" / "qa1" / "bench_training.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "scripts/bench_babilong.py", "--reuse", "--heads", "armt", "rmt", "--tasks", "qa1",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert str(tmp_path / "rmt" / "qa1" / "bench_training.json") in result.stderr
    assert "armt" not in result.stderr.split("no training record")[1]
    assert not (tmp_path / "rmt" / "qa1" / "checkpoints").exists()


def test_a_babilong_benchmark_stopped_part_way_keeps_the_heads_and_tasks_it_evaluated(tmp_path, monkeypatch):
    """The report is rewritten as each head x task is evaluated, so a benchmark stopped in its third run keeps the
    first two runs' figures."""
    spec = importlib.util.spec_from_file_location("bench_babilong", REPO / "scripts" / "bench_babilong.py")
    bench_babilong = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_babilong)
    monkeypatch.setattr(bench_babilong, "trained_run", lambda head, task, args: (
        tmp_path / head / task, {"train_seconds": 1.0, "steps": 3}))

    def evaluated(run_dir, task, args):
        if run_dir.parent.name == "rmt":
            raise KeyboardInterrupt
        return {"0k": 0.5 if task == "qa1" else 0.25}, 1.0

    monkeypatch.setattr(bench_babilong, "evaluated", evaluated)
    with pytest.raises(KeyboardInterrupt):
        bench_babilong.main(["--heads", "armt", "rmt", "--tasks", "qa1", "qa2", "--lengths", "0k",
                             "--out", str(tmp_path)])

    report = json.loads((tmp_path / "bench_babilong_0k.json").read_text())
    assert report["complete"] is False
    assert {head: {task: run["accuracy_by_length"] for task, run in by_task.items()}
            for head, by_task in report["results"].items()} == {
        "armt": {"qa1": {"0k": 0.5}, "qa2": {"0k": 0.25}}}
