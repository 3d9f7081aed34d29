"""Evaluate a checkpoint at many input lengths: `python eval.py ckpt_path=<file> [lengths=[...]]`; see README.md."""

import hydra
from omegaconf import DictConfig

from memlm.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
