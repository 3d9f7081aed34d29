"""`evaluate(cfg)`: a checkpoint measured under one evaluation protocol; `eval.py` is a thin wrapper.

The model and its task come from the checkpoint (its hyper-parameters hold the training data config); `data.*` keys
of the eval config override them, for another background text, task or corpus. `protocol` picks how it is measured,
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

from memlm.checkpointing import load_checkpoint
from memlm.evaluation.babilong import evaluate_babilong, tasks_to_score
from memlm.evaluation.lengths import evaluate_lengths

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


def evaluate(cfg: DictConfig):
    """Measure the checkpoint `cfg.ckpt_path` under `cfg.protocol`; write its tables and plots into `cfg.out_dir`
    and return the protocol's report."""
    model, checkpoint = load_checkpoint(cfg.ckpt_path)
    data = OmegaConf.merge(model.hparams.data, cfg.data, {"batch_size": cfg.batch_size})
    return PROTOCOLS[choose_protocol(cfg, data)](cfg, model, checkpoint, data)
