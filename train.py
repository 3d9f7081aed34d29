"""Train a memory-augmented LM: `python train.py [group=option ...] [key=value ...]`; see `--help` and README.md."""

import hydra
from omegaconf import DictConfig

from memlm.training import train


def optimized_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The metric a sweeper optimises (`optimized_metric`), or None when none is named."""
    if name is None:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; the run logged {sorted(metrics)}")
    return metrics[name]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return optimized_value(train(cfg), cfg.optimized_metric)


if __name__ == "__main__":
    main()
