"""Evaluate a checkpoint: `python eval.py ckpt_path=<file> [protocol=...] [lengths=[...]] [data.<key>=...]`; see
README.md."""

import hydra
from omegaconf import DictConfig

from memlm.evaluation import EVAL_CONFIG, evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name=EVAL_CONFIG)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
