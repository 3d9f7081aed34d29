"""The mean of a run's last checkpoints' weights, written as one checkpoint that eval.py reads (checkpoint averaging:
the Transformer paper averaged its last 5 or 20 checkpoints).

    python train.py data=detect trainer.max_steps=1600 curriculum.stop_when_done=false \\
        callbacks.model_checkpoint.save_top_k=-1           # keep the checkpoint of every validation
    python scripts/average_checkpoints.py <run dir> --last 6
    python eval.py ckpt_path=<run dir>/averaged/last6.ckpt 'lengths=[512,2048]'

Why: one checkpoint's accuracy far beyond the trained length can be a poor guide to the run. On detect at 2,048
segments, one run (seed 2) scored 0.30 at one validation and 0.98 at the next, 100 steps later. The mean of the
last six checkpoints' weights scored near the checkpoints' mean on two seeds and below the last checkpoint on two
others (README, detect): a second look at a run, not a cure.

The checkpoints are those resuming chooses from (`memlm.checkpointing.checkpoints_by_step`), and the last N by
step are averaged: floating-point weights by their mean, integer buffers taken from the newest. The file keeps the
newest checkpoint's hyper-parameters, step and curriculum stage, and lists the steps averaged under
`averaged_steps`; it holds no optimiser or loop state, so it cannot be resumed from, and it is written to
`<run dir>/averaged/`, where resuming does not look.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from memlm.checkpointing import checkpoints_by_step, read_checkpoint
from memlm.curriculum import SegmentCurriculum

KEPT = ("epoch", "global_step", "pytorch-lightning_version", "hparams_name", "hyper_parameters", "state_dict")
"""What an averaged checkpoint keeps of the newest one (its curriculum's state too): what eval.py reads."""


def averaged(paths: list[Path]) -> dict:
    """A checkpoint holding the mean weights of `paths` (oldest first) and the newest one's other state."""
    newest = read_checkpoint(str(paths[-1]), "checkpoint")
    total = {name: torch.zeros_like(tensor, dtype=torch.float64) for name, tensor in newest["state_dict"].items()
             if tensor.is_floating_point()}
    steps = []
    for path in paths:
        checkpoint = newest if path == paths[-1] else read_checkpoint(str(path), "checkpoint")
        if checkpoint["hyper_parameters"] != newest["hyper_parameters"]:
            raise ValueError(f"{path} and {paths[-1]} hold different hyper-parameters: average checkpoints of "
                             "one run only")
        for name in total:
            total[name] += checkpoint["state_dict"][name].double()
        steps.append(checkpoint["global_step"])
    state_dict = {name: (total[name] / len(paths)).to(tensor.dtype) if name in total else tensor
                  for name, tensor in newest["state_dict"].items()}
    curriculum = newest.get("callbacks", {}).get(SegmentCurriculum.__qualname__)
    return {**{key: newest[key] for key in KEPT if key in newest}, "state_dict": state_dict,
            "callbacks": {SegmentCurriculum.__qualname__: curriculum} if curriculum else {},
            "averaged_steps": steps}


def write_average(run_dir: Path, last: int) -> Path:
    """Average the run's `last` newest checkpoints into `<run dir>/averaged/last<N>.ckpt`; the file's path."""
    if last < 1:
        raise ValueError(f"--last {last} must be at least 1")
    by_step = checkpoints_by_step(run_dir)
    if len(by_step) < last:
        raise ValueError(f"{run_dir / 'checkpoints'} holds checkpoints of {len(by_step)} steps "
                         f"({', '.join(map(str, by_step)) or 'none'}), fewer than --last {last}: train with "
                         "callbacks.model_checkpoint.save_top_k=-1 to keep one per validation")
    steps = list(by_step)[-last:]
    out = run_dir / "averaged" / f"last{last}.ckpt"
    out.parent.mkdir(exist_ok=True)
    torch.save(averaged([by_step[step] for step in steps]), out)
    print(f"averaged the weights of steps {', '.join(map(str, steps))}: {out}")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints to average")
    args = parser.parse_args(argv)
    return write_average(args.run_dir, args.last)


if __name__ == "__main__":
    main()
