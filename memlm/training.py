"""`train(cfg)`: build everything from a composed Hydra config, fit, report. `train.py` is a thin wrapper; tests
call this directly."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from memlm.curriculum import SegmentCurriculum
from memlm.module import MemoryLM, checkpoint_file, read_checkpoint
from memlm.plots import plot_by_length


def build_model(cfg: DictConfig) -> MemoryLM:
    plain = OmegaConf.to_container(cfg, resolve=True)
    data_class = get_class(cfg.data._target_)
    return MemoryLM(
        backbone=plain["backbone"],
        model=plain["model"],
        recurrence=plain["recurrence"],
        optim=plain["optim"],
        num_classes=len(data_class.answer_classes(cfg.data)),
        data=plain["data"],
        objective=data_class.objective,
    )


def load_initial_weights(model: MemoryLM, path: str) -> None:
    """Start from a checkpoint's model weights only: a new run with its own optimiser, step and curriculum."""
    state = read_checkpoint(path, "init_weights")["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"init_weights={path} does not match this model (missing {missing[:5]}, unexpected {unexpected[:5]}): "
            "use a checkpoint of the same backbone and head"
        )


def build_datamodule(data: DictConfig | dict, model: MemoryLM) -> L.LightningDataModule:
    answer_format = "generate" if model.head.backbone.is_decoder else "classify"
    datamodule = instantiate(data, tokenizer=model.tokenizer, answer_format=answer_format)
    model.head.check_fits(datamodule.segment_length)
    return datamodule


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """`ckpt_path` if given, else the run directory's own last checkpoint, so a re-run in place resumes."""
    if cfg.ckpt_path is not None:
        return checkpoint_file(cfg.ckpt_path, "ckpt_path")
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as `cfg` says and return the final validation metrics."""
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    # Read first: a missing mandatory value (hmt_stage2's stage1_checkpoint) fails before any work.
    init_weights = cfg.init_weights
    model = build_model(cfg)
    if init_weights is not None:
        load_initial_weights(model, init_weights)
    datamodule = build_datamodule(cfg.data, model)
    objective = model.objective
    curriculum = SegmentCurriculum(
        datamodule, **cfg.curriculum, metric=objective.headline, higher_is_better=objective.higher_is_better
    )
    unvalidated = sorted(set(curriculum.segments) - set(datamodule.val_segments))
    if unvalidated:
        raise ValueError(
            f"data.val_segments={datamodule.val_segments} lacks {unvalidated}: the curriculum decides on validation "
            f"{objective.headline} at every count in curriculum.segments, so validate at all of them"
        )
    # A component set to null on the command line (callbacks.progress_bar=null) is switched off.
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback is not None]
    loggers = [instantiate(logger) for logger in cfg.logger.values() if logger is not None]
    trainer = instantiate(
        cfg.trainer, callbacks=[*callbacks, curriculum], logger=loggers or False, default_root_dir=run_dir
    )
    ckpt_path = resume_checkpoint(cfg, run_dir)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    report(run_dir, metrics, curriculum, trainer)
    return metrics


@rank_zero_only
def report(run_dir: Path, metrics: dict[str, float], curriculum: SegmentCurriculum, trainer: L.Trainer) -> None:
    """Write summary.json and a plot of the curriculum's figure into the run directory; say where everything is."""
    name = curriculum.metric
    by_length = {n: metrics[f"val/{name}_{n}seg"] for n in curriculum.segments if f"val/{name}_{n}seg" in metrics}
    summary = {
        "global_step": trainer.global_step,
        "curriculum": curriculum.state_dict(),
        f"val_{name}_by_segments": by_length,
        "metrics": metrics,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot = plot_by_length(by_length, run_dir / f"{name}.png", title=f"validation {name} after training", ylabel=name)
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    log_dirs = [str(getattr(logger, "log_dir", None) or logger.save_dir) for logger in trainer.loggers]
    lines = ["", f"finished at step {trainer.global_step}; validation {name} by segment count:"]
    lines += [f"  {n:>4} segments: {value:.3f}" for n, value in by_length.items()]
    lines += [
        f"checkpoint: {checkpoint or 'none (checkpointing is off)'}",
        f"logs:       {', '.join(log_dirs) or 'none'}",
        f"plot:       {plot}",
        f"summary:    {run_dir / 'summary.json'}",
        f"resume:     the same command with hydra.run.dir={run_dir}",
    ]
    print("\n".join(lines))
