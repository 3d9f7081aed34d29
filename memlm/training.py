"""`train(cfg)`: build everything from a composed Hydra config, fit, report. `train.py` is a thin wrapper; tests
call this directly."""

from __future__ import annotations

import contextlib
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from memlm.backbones import backbone_tokenizer
from memlm.checkpointing import (
    check_resumable,
    check_room_for_checkpoints,
    load_initial_weights,
    remove_partial_saves,
    resume_checkpoint,
)
from memlm.config import check_config, check_types
from memlm.curriculum import SegmentCurriculum
from memlm.data.base import MemoryDataModule
from memlm.metrics import metric_name
from memlm.module import MemoryLM
from memlm.objectives import choose_objective
from memlm.plots import plot_by_length
from memlm.runs import (
    SIGTERM_EXIT_CODE,
    CheckpointOnSigterm,
    RunLock,
    fitting_threads,
    is_first_process,
    keep_freed_memory,
    write_json,
)


def build_datamodule(data: DictConfig | dict, tokenizer: PreTrainedTokenizerBase, is_decoder: bool
                     ) -> MemoryDataModule:
    """The DataModule of a data config, built for the one objective its kind of data and the backbone call for."""
    module = get_class(data["_target_"])
    # eval.py builds the data a checkpoint holds, which another version of memlm may have written with other keys.
    check_types(OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else data, module, "data")
    objective = choose_objective(module.kind, is_decoder)
    try:
        return instantiate(data, tokenizer=tokenizer, objective=objective)
    except InstantiationException as error:
        # The DataModule's own error names the key and the fix; Hydra's wrapper would bury it in a repr.
        raise (error.__cause__ or error) from None


def build(cfg: DictConfig) -> tuple[MemoryDataModule, MemoryLM]:
    """Everything a run needs, in one order: tokenizer, DataModule, model, and the check that they fit together."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    backbone = plain["backbone"]
    tokenizer = backbone_tokenizer(backbone.get("name_or_path"), backbone.get("tokenizer"))
    datamodule = build_datamodule(cfg.data, tokenizer, is_decoder=backbone.get("kind", "causal") == "causal")
    model = MemoryLM(
        backbone=backbone,
        model=plain["model"],
        recurrence=plain["recurrence"],
        optim=plain["optim"],
        objective=datamodule.objective,
        num_classes=datamodule.num_classes,
        data=plain["data"],
    )
    model.head.check_fits(datamodule.segment_length)
    return datamodule, model


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as `cfg` says and return the final validation metrics."""
    check_config(cfg)
    torch.set_num_threads(fitting_threads(cfg.threads, cfg.trainer.accelerator, cfg.trainer.devices))
    if cfg.keep_freed_memory:
        keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    # Read first: a missing mandatory value (hmt_stage2's stage1_checkpoint) fails before any work.
    init_weights = cfg.init_weights
    datamodule, model = build(cfg)
    if init_weights is not None:
        load_initial_weights(model, init_weights)
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
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer = instantiate(cfg.trainer, callbacks=[*callbacks, curriculum, CheckpointOnSigterm(last)],
                          logger=loggers or False, default_root_dir=run_dir)
    # The launch's other processes run this function too; the first one holds the directory for all of them.
    with RunLock(run_dir) if is_first_process() else contextlib.nullcontext():
        if is_first_process():
            remove_partial_saves(run_dir)
            # Lightning's own ModelCheckpoint counts: it stands in when callbacks.model_checkpoint=null, unless
            # trainer.enable_checkpointing=false, and then only a SIGTERM writes a checkpoint.
            if trainer.checkpoint_callbacks:
                check_room_for_checkpoints(run_dir, model)
        ckpt_path = resume_checkpoint(cfg.ckpt_path, run_dir)
        if ckpt_path is not None:
            check_resumable(ckpt_path, cfg)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:
            print(f"\nstopped by SIGTERM at step {trainer.global_step}; checkpoint: {last}\n"
                  f"resume: the same command with hydra.run.dir={run_dir}")
            raise SystemExit(SIGTERM_EXIT_CODE) from None
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    report(run_dir, metrics, curriculum, trainer)
    return metrics


@rank_zero_only
def report(run_dir: Path, metrics: dict[str, float], curriculum: SegmentCurriculum, trainer: L.Trainer) -> None:
    """Write summary.json and a plot of the curriculum's figure into the run directory; say where everything is."""
    name = curriculum.metric
    by_length = {n: metrics[metric_name(name, n)] for n in curriculum.segments if metric_name(name, n) in metrics}
    summary = {
        "global_step": trainer.global_step,
        "curriculum": curriculum.state_dict(),
        f"val_{name}_by_segments": by_length,
        "metrics": metrics,
    }
    write_json(run_dir / "summary.json", summary)
    plot = plot_by_length(by_length, run_dir / f"{name}.png", title=f"validation {name} after training", ylabel=name)
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
    # fast_dev_run swaps the loggers for a dummy that writes nowhere.
    log_dirs = [str(path) for logger in trainer.loggers
                if (path := getattr(logger, "log_dir", None) or logger.save_dir)]
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
