"""Train a memory-augmented LM: `python train.py [group=option ...] [key=value ...]`; see `--help` and README.md."""

import hydra
from omegaconf import DictConfig

from memlm.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
