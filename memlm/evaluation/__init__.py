"""`evaluate(cfg)`: a checkpoint measured under one evaluation protocol; `eval.py` is a thin wrapper.

The model and its task come from the checkpoint (its hyper-parameters hold the training data config); `data.*` keys
of the eval config override them, for another background text, task or corpus. Without a checkpoint
(`ckpt_path=null`) the model is built from the `backbone`, `model` and `data` groups as training builds it, with
the backbone's own weights and a fresh head: how a training-free head (`model=extended_mind`), or the plain
backbone (`model=baseline`), is measured. `protocol` picks how it is measured,
one module each:
- `lengths` (`memlm.evaluation.lengths`): the training figure (accuracy, or perplexity) at a list of input lengths;
- `babilong` (`memlm.evaluation.babilong`): BABILong's task x length table, answers generated and scored with the
  benchmark's rule;
- `auto`: `babilong` for a checkpoint trained on a BABILong task or when `babilong.tasks` names tasks, else
  `lengths`; the choice is printed.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from memlm.backbones import backbone_tokenizer
from memlm.checkpointing import load_checkpoint
from memlm.config import check_boolean
from memlm.evaluation.babilong import evaluate_babilong, tasks_to_score
from memlm.evaluation.lengths import evaluate_lengths
from memlm.module import MemoryLM
from memlm.runs import ending_on_sigterm, keep_freed_memory
from memlm.training import build_datamodule

PROTOCOLS = {"lengths": evaluate_lengths, "babilong": evaluate_babilong}

EVAL_CONFIG = "eval_cli"
"""What eval.py composes: conf/eval.yaml with its `data` node open to any key. `data.<key>=` overrides the
checkpoint's data config, whose keys are not known until the checkpoint is read; Hydra closes every node (struct
mode) except one whose own flag says otherwise, and a YAML file cannot say so, hence this node in Hydra's config
store. A misspelt key elsewhere is still refused."""


def _eval_config() -> DictConfig:
    config = OmegaConf.create({"defaults": ["eval", "_self_"], "data": {}})
    OmegaConf.set_struct(config.data, False)
    return config


ConfigStore.instance().store(name=EVAL_CONFIG, node=_eval_config())


def choose_protocol(cfg: DictConfig, data: DictConfig) -> str:
    """The protocol `cfg.protocol` names; for `auto`, BABILong's where there are BABILong tasks to score."""
    protocol = cfg.protocol
    if protocol != "auto":
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r} is not one of {('auto', *PROTOCOLS)}")
        return protocol
    tasks = tasks_to_score(cfg, data)
    chosen = "babilong" if tasks else "lengths"
    reason = f"BABILong tasks {tasks}" if tasks else f"no BABILong task (trained on {data.get('task', 'a corpus')!r})"
    print(f"protocol=auto: {chosen} ({reason}); set protocol=lengths|babilong to choose")
    return chosen


def resolved_data(cfg: DictConfig, data: DictConfig) -> DictConfig:
    """A data config with its training-config interpolations resolved: `seed` from the eval config, and
    `val_segments` (training's `${curriculum.segments}`, which evaluation never reads) as one segment."""
    context = OmegaConf.create({"seed": cfg.seed, "curriculum": {"segments": [1]}, "data": data})
    return OmegaConf.create(OmegaConf.to_container(context.data, resolve=True))


def composed_model(cfg: DictConfig) -> MemoryLM:
    """The model of `backbone=`, `model=` and `data=` with a fresh head: what `ckpt_path=null` evaluates."""
    missing = [group for group in ("backbone", "model") if cfg.get(group) is None]
    if "_target_" not in cfg.data:
        missing.append("data")
    if missing:
        raise ValueError(f"ckpt_path=null builds the model from the config groups, but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not chosen: add e.g. backbone=smollm2 "
                         "model=extended_mind data=babilong, or give ckpt_path=<a checkpoint from train.py>")
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    data = resolved_data(cfg, cfg.data)
    tokenizer = backbone_tokenizer(backbone.get("name_or_path"), backbone.get("tokenizer"))
    datamodule = build_datamodule(data, tokenizer, is_decoder=backbone.get("kind", "causal") == "causal")
    model = MemoryLM(backbone=backbone, model=OmegaConf.to_container(cfg.model, resolve=True), recurrence={},
                     optim={}, objective=datamodule.objective, num_classes=datamodule.num_classes,
                     data=OmegaConf.to_container(data))
    model.head.check_fits(datamodule.segment_length)
    return model


def evaluate(cfg: DictConfig):
    """Measure the checkpoint `cfg.ckpt_path`, or without one the model the config groups build, under
    `cfg.protocol`; write its tables and plots into `cfg.out_dir` and return the protocol's report."""
    check_boolean("keep_freed_memory", cfg.keep_freed_memory)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    if cfg.ckpt_path is None:
        model, checkpoint = composed_model(cfg), {}
    else:
        chosen = [group for group in ("backbone", "model") if cfg.get(group) is not None]
        if chosen:
            raise ValueError(f"ckpt_path={cfg.ckpt_path} holds its own {' and '.join(chosen)}; "
                             f"{', '.join(f'{group}=' for group in chosen)} build a model only with ckpt_path=null: "
                             "drop them, or drop ckpt_path to evaluate the model they build")
        model, checkpoint = load_checkpoint(cfg.ckpt_path)
    data = resolved_data(cfg, OmegaConf.merge(model.hparams.data, cfg.data, {"batch_size": cfg.batch_size}))
    with ending_on_sigterm():
        return PROTOCOLS[choose_protocol(cfg, data)](cfg, model, checkpoint, data)
