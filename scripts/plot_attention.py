"""How a checkpoint's memory is written and read over one sample: attention maps with the tokens labelled.

    python scripts/plot_attention.py <checkpoint> [--segments 3] [--split test] [--out <checkpoint dir>/..]
    python scripts/plot_attention.py --build backbone=smollm2 model=extended_mind data=memorize [--out DIR]

Runs the first sample of the checkpoint's own data at --segments segments and draws attention_<head>.png:
- the backbone's attention (mean over heads) in its first and last layer, for the sample's first segment (where a
  fact task states the fact, so memory is written) and its last (where the question reads it). Rows attend to
  columns; memory positions are labelled by role: RMT's read and write tokens, ARMT's memory tokens, HMT's
  retrieved memory P and sensory tokens. The rows of write positions show what goes into memory, the columns of
  read positions what the tokens take from it;
- where the head has its own read, a third panel of the last segment's weights in the last memory layer: LM2's
  tokens over slots, LRMT's tokens over past segments' memories, HMT's memory search over the cache.

Extended Mind, a training-free head, is plotted without a checkpoint (`--build` takes eval.py's groups): what each
of the last segment's queries retrieved from memory, in the first and last retrieving layer, the share of its
heads' top-k picks that fell on each earlier token (its citations).

Maps come from the queries and keys the attention really gets (`Backbone.attending` hands them over; the output
is computed by the model's own attention function as always), scored as eager attention scores them.
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from memlm.checkpointing import load_checkpoint  # noqa: E402
from memlm.evaluation import composed_model  # noqa: E402
from memlm.memory import ARMT, HMT, RMT, ExtendedMind  # noqa: E402
from memlm.training import build_datamodule  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def attention_weights(module, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, queries, keys) weights, the mean over heads, as eager attention computes them; `mask` is what
    sdpa or eager gets (boolean, additive, or None for the causal flag)."""
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # grouped-query attention
    scale = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
    scores = query.float() @ key.float().transpose(-1, -2) * scale
    queries, keys = scores.shape[-2:]
    if mask is None:
        scores = scores.masked_fill(~torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries), -torch.inf)
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[..., :keys], -torch.inf)
    else:
        scores = scores + mask[..., :keys].float()
    return scores.softmax(dim=-1).mean(dim=1)


def memory_roles(head, positions: int, tokens: int) -> tuple[list[str], list[str]]:
    """Labels of the positions a head puts before and after the segment's tokens in a backbone call."""
    extra = positions - tokens
    if isinstance(head, RMT):
        return [f"[read {i}]" for i in range(extra // 2)], [f"[write {i}]" for i in range(extra // 2)]
    if isinstance(head, ARMT):
        return [], [f"[mem {i}]" for i in range(extra)]
    if isinstance(head, HMT):
        return ["[P]", *(f"[sense {i}]" for i in range(extra - 2))], ["[P]"]
    return [], []


def trace(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Per segment: the last backbone call's attention maps by layer (sample 0) and the head's diagnostics; a head
    on the attention seam itself (Extended Mind) gives its diagnostics alone."""
    head = model.head
    per_segment = []
    calls: dict[int, torch.Tensor] = {}

    def record(module, query, key, value, mask, attend, **kwargs):
        calls[module.layer_idx] = attention_weights(module, query, key, mask)[0]
        return attend(module, query, key, value, mask, **kwargs)

    state = head.initial_state(1)
    recording = nullcontext() if isinstance(head, ExtendedMind) else head.backbone.attending(record)
    with torch.no_grad(), recording:
        for k in range(input_ids.shape[1]):
            calls.clear()
            out = head(input_ids[:, k], attention_mask[:, k], state)
            per_segment.append(({layer: maps.numpy() for layer, maps in calls.items()}, out.diagnostics))
            state = out.state
    return per_segment


def own_read(diagnostics: dict) -> tuple[np.ndarray, str] | None:
    """The last memory layer's read weights of sample 0 and what the columns are, where the head has a read."""
    if diagnostics.get("read_weights") is not None:
        return diagnostics["read_weights"][0, -1].float().numpy(), "memory slot"
    if diagnostics.get("retrieval_weights") is not None:
        return diagnostics["retrieval_weights"][0:1].float().numpy(), "cached memory (oldest first)"
    return None


def draw(ax, weights: np.ndarray, labels: list[str], title: str) -> None:
    # The first rows put all their weight on the first few positions; scaled to them, the rest would be black.
    positive = weights[weights > 0]
    ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=float(np.quantile(positive, 0.99)) if positive.size else 1.0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
    ax.set_yticks(range(len(labels)), labels, fontsize=5)


def plot_citations(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, path: Path) -> Path:
    """Extended Mind: for the last segment's tokens (rows), the share of their heads' top-k retrievals that fell on
    each earlier token of the document (columns)."""
    head, tokenizer = model.head, model.tokenizer
    head.citations = True
    citations = trace(model, input_ids, attention_mask)[-1][1]["citations"]
    real = attention_mask[0].bool()
    document = [tokenizer.decode([t]) for k in range(input_ids.shape[1] - 1) for t in input_ids[0, k][real[k]].tolist()]
    tokens = [tokenizer.decode([t]) for t in input_ids[0, -1][real[-1]].tolist()]
    layers = sorted(citations)
    fig, axes = plt.subplots(1, 2, figsize=(14, 7), squeeze=False)
    for ax, layer in zip(axes[0], (layers[0], layers[-1]), strict=True):
        picks = citations[layer][0][:, real[-1]]  # (heads, tokens, k): document positions, -1 where none
        shares = np.zeros((picks.shape[1], len(document)))
        for row in range(picks.shape[1]):
            chosen = picks[:, row].flatten()
            counts = torch.bincount(chosen[chosen >= 0], minlength=len(document)).numpy()
            shares[row] = counts / max(chosen.numel(), 1)
        ax.imshow(shares, cmap="viridis", aspect="auto", vmin=0.0)
        ax.set_title(f"last segment's retrievals, layer {layer}", fontsize=9)
        ax.set_xticks(range(len(document)), document, rotation=90, fontsize=5)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=5)
        ax.set_xlabel("earlier tokens of the document (memory)")
    return save(fig, f"ExtendedMind: share of each query's top-{head.topk} picks (all heads) per memory token", path)


def plot(model, sample: dict, path: Path) -> Path:
    """`sample`'s (segments, length) tensors drawn as a batch of one."""
    input_ids, attention_mask = sample["input_ids"][None], sample["attention_mask"][None]
    num_segments = input_ids.shape[1]
    if isinstance(model.head, ExtendedMind):
        return plot_citations(model, input_ids, attention_mask, path)
    per_segment = trace(model, input_ids, attention_mask)
    tokenizer, head = model.tokenizer, model.head
    shown = sorted({0, num_segments - 1})
    last_diagnostics = per_segment[-1][1]
    extra = own_read(last_diagnostics)
    columns = 2 + (extra is not None)
    fig, axes = plt.subplots(len(shown), columns, figsize=(6 * columns, 6 * len(shown)), squeeze=False)
    for row, k in enumerate(shown):
        maps, _ = per_segment[k]
        layers = sorted(maps)
        real = attention_mask[0, k].bool()  # padding is left out of the maps
        tokens = [tokenizer.decode([t]) for t in input_ids[0, k][real].tolist()]
        before, after = memory_roles(head, maps[layers[0]].shape[-1], len(real))
        labels = [*before, *tokens, *after]
        kept = torch.cat([torch.ones(len(before), dtype=torch.bool), real, torch.ones(len(after), dtype=torch.bool)])
        kept = kept.nonzero()[:, 0].numpy()
        for column, layer in enumerate((layers[0], layers[-1])):
            draw(axes[row, column], maps[layer][np.ix_(kept, kept)], labels,
                 f"segment {k + 1}/{num_segments}, layer {layer}")
        if extra is not None:
            ax = axes[row, 2]
            if k == shown[-1]:
                weights, what = extra
                if weights.shape[0] == len(real):
                    weights = weights[real.numpy()]
                    ax.set_yticks(range(len(tokens)), tokens, fontsize=5)
                else:
                    ax.set_yticks([0], ["segment"], fontsize=7)
                ax.set_xticks(range(weights.shape[1]))
                ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(weights.max()), 1e-6))
                ax.set_title(f"{type(head).__name__}'s own read, segment {k + 1}, last memory layer", fontsize=9)
                ax.set_xlabel(what)
            else:
                ax.axis("off")
    return save(fig, f"{type(head).__name__}: attention (rows attend to columns), mean over heads", path)


def save(fig, title: str, path: Path) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, nargs="?")
    parser.add_argument("--build", nargs="+", metavar="GROUP=OPTION",
                        help="no checkpoint: build the model from eval.py's groups (backbone=, model=, data=)")
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.build is None):
        parser.error("give a checkpoint or --build GROUP=OPTION ..., one of the two")
    if args.build:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            model = composed_model(compose("eval", [*args.build, "out_dir=unused"]))
    else:
        model, _ = load_checkpoint(str(args.checkpoint))
    model.eval()
    if not model.head.backbone.is_decoder:
        raise SystemExit(f"{args.checkpoint}: an encoder checkpoint; the maps are drawn for decoders")
    datamodule = build_datamodule(model.hparams.data, model.tokenizer, model.head.backbone.is_decoder)
    sample = datamodule.samples(args.split, args.segments, 1)[0]
    out = args.out or (args.checkpoint.resolve().parent.parent if args.checkpoint else Path("outputs/attention"))
    path = plot(model, sample, out / f"attention_{type(model.head).__name__.lower()}.png")
    print(f"written: {path}")
    return path


if __name__ == "__main__":
    main()
