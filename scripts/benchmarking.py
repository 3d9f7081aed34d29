"""What the benchmarks share: composed configs, a fresh training run on a fixed step budget, the machine and the
load other processes put on it while a measurement runs."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from memlm.runs import OthersLoad
from memlm.training import train

CONF = Path(__file__).resolve().parents[1] / "conf"


def composed(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def train_on_budget(overrides: list[str], run_dir: Path, segments: list[int], steps_per_stage: int):
    """Train afresh in `run_dir` with a curriculum over `segments`, exactly `steps_per_stage` optimiser steps each,
    so every head gets the same budget; return the final validation metrics, the seconds it took and the cores other
    processes kept busy meanwhile (`watched`)."""
    # A run directory with a checkpoint would resume instead of training afresh.
    shutil.rmtree(run_dir, ignore_errors=True)
    what, loads, started = f"the training in {run_dir}", {}, time.perf_counter()
    with watched(what, loads):
        metrics = train(composed("train", [
            *overrides,
            f"curriculum.segments=[{','.join(map(str, segments))}]",
            f"curriculum.max_steps_per_stage={steps_per_stage}",
            "curriculum.threshold=null",
            # One validation per stage, at its end, where the curriculum moves on.
            f"trainer.limit_train_batches={steps_per_stage}",
            f"trainer.max_steps={steps_per_stage * len(segments)}",
            f"run_dir={run_dir}",
            "callbacks.progress_bar=null",
        ]))
    return metrics, time.perf_counter() - started, loads[what]


def machine() -> dict:
    return {"cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}


@contextmanager
def watched(what: str, loads: dict) -> Iterator[None]:
    """Record in `loads[what]` the cores other processes kept busy during the block (None where /proc cannot be
    read), and say so when that makes the block's timings noisy."""
    with OthersLoad() as load:
        yield
    loads[what] = None if load.cores is None else round(load.cores, 3)
    if load.noisy:
        print(f"noisy: other processes kept {load.cores:.2f} cores busy on average during {what}; its timings "
              "are not comparable", flush=True)
