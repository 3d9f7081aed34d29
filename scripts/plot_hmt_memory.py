"""What an HMT checkpoint's memory does over one long sample: three PNGs.

    python scripts/plot_hmt_memory.py <hmt checkpoint> [--segments 48] [--cache-size 16] [--split test]
                                      [--out <checkpoint dir>/../hmt_memory]

- cache_growth.png: memory embeddings in the cache after each segment; it grows by one per segment until it
  holds N (`model.cache_size`), then the oldest leaves as each new one joins.
- retrieval_weights.png: for each segment (row), the memory search's attention over the memories of the earlier
  segments still cached (columns, by the segment that wrote them). A row is empty while the cache is, and in the
  paper's first stage (`memory_search=false`), when a learned vector stands in.
- augmented_input.png: the two passes per segment with this checkpoint's sizes: the summary pass `[T ; j ; T]`
  and the augmented pass `[P ; sensory k ; segment L ; P]`.

The sample is the first of the checkpoint's own data at `--segments` segments (for language modelling, the
opening of the split's first document). `--cache-size` replaces N for this run, to show the cache filling up
within a short sample; the search's weights do not depend on N.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from memlm.checkpointing import load_checkpoint  # noqa: E402
from memlm.memory import HMT  # noqa: E402
from memlm.training import build_datamodule  # noqa: E402


def memory_trace(head: HMT, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[list[int], np.ndarray]:
    """Cache size after each segment, and weights[n, m]: segment n's retrieval weight on segment m's memory."""
    num_segments = input_ids.shape[1]
    weights = np.full((num_segments, num_segments), np.nan)
    sizes = []
    state = head.initial_state(input_ids.shape[0])
    with torch.no_grad():
        for n in range(num_segments):
            cached = state["cache"].shape[1]
            out = head(input_ids[:, n], attention_mask[:, n], state)
            retrieval = out.diagnostics["retrieval_weights"]
            if retrieval is not None:
                # The cache holds the memories of segments n - cached ... n - 1, oldest first.
                weights[n, n - cached : n] = retrieval[0].float().numpy()
            state = out.state
            sizes.append(state["cache"].shape[1])
    return sizes, weights


def plot_cache_growth(sizes: list[int], cache_size: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    segments = range(1, len(sizes) + 1)
    ax.step(segments, sizes, where="post", marker=".")
    ax.axhline(cache_size, linestyle="--", color="grey", label=f"N = {cache_size}")
    ax.set(xlabel="segment", ylabel="memories in the cache", title="HMT memory cache after each segment")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_retrieval_weights(weights: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(np.ma.masked_invalid(weights), cmap="viridis", origin="upper", aspect="auto",
                      extent=(0.5, weights.shape[1] + 0.5, weights.shape[0] + 0.5, 0.5))
    fig.colorbar(image, ax=ax, label="retrieval weight")
    ax.set(xlabel="memory written by segment", ylabel="segment searching", title="HMT memory search over the cache")
    return _save(fig, path)


def plot_augmented_input(head: HMT, segment_length: int, path: Path) -> Path:
    k, j, L = head.sensory_tokens, head.summary_tokens, segment_length
    summary_text = (f"first j={j} tokens of segment n" if head.summary_source == "current"
                    else f"last j={j} tokens of segment n-1")
    rows = [
        ("summary pass → S_n", [("T", 1, "#d62728"), (summary_text, j, "#9ecae1"), ("T", 1, "#d62728")]),
        ("augmented pass", [("P_n", 1, "#2ca02c"), (f"sensory k={k}", k, "#fdae6b"),
                            (f"segment n, L={L}", L, "#6baed6"), ("P_n → m_n", 1, "#2ca02c")]),
    ]
    unit = 1.0 / (k + L + 8)  # the widest row fills the figure; a memory or prompt slot is drawn 4 units wide
    fig, ax = plt.subplots(figsize=(10, 2.6))
    for row, (label, parts) in enumerate(rows):
        y = 1 - row
        x = 0.0
        for name, width, colour in parts:
            drawn = max(width, 4) * unit
            ax.add_patch(Rectangle((x, y), drawn, 0.7, facecolor=colour, edgecolor="black"))
            ax.text(x + drawn / 2, y + 0.35, name, ha="center", va="center", fontsize=8)
            x += drawn
        ax.text(-0.01, y + 0.35, label, ha="right", va="center", fontsize=9)
    search = "memory search: P_n = softmax((S_n Wq)(M Wk)ᵀ/√d) M" if head.memory_search else "P_n: learned vector"
    ax.set_title(f"HMT inputs per segment ({search}; m_n joins the cache of N={head.cache_size})", fontsize=9)
    ax.set_xlim(-0.25, 1.1)
    ax.set_ylim(-0.2, 1.9)
    ax.axis("off")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--segments", type=int, default=48)
    parser.add_argument("--cache-size", type=int, help="N for this run (default: the checkpoint's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    model, _ = load_checkpoint(str(args.checkpoint))
    head = model.head.eval()
    if not isinstance(head, HMT):
        parser.error(f"{args.checkpoint} holds a {type(head).__name__} head; these views are HMT's")
    if args.cache_size is not None:
        if args.cache_size < 1:
            parser.error("--cache-size must be at least 1")
        head.cache_size = args.cache_size
    datamodule = build_datamodule(model.hparams.data, model.tokenizer, model.head.backbone.is_decoder)
    datamodule.prepare_data()
    sample = datamodule.samples(args.split, args.segments, 1)[0]
    sizes, weights = memory_trace(head, sample["input_ids"][None], sample["attention_mask"][None])
    out = args.out or args.checkpoint.resolve().parent.parent / "hmt_memory"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot_cache_growth(sizes, head.cache_size, out / "cache_growth.png"),
        plot_retrieval_weights(weights, out / "retrieval_weights.png"),
        plot_augmented_input(head, datamodule.segment_length, out / "augmented_input.png"),
    ]
    print("\n".join(f"written: {path}" for path in written))
    return written


if __name__ == "__main__":
    main()
