"""FLOPs and activation memory of a memory model against full attention, up to two million tokens.

    python scripts/flops.py [--backbone tiny_gpt2|smollm2|<folder or hub id>] [--segment-length 512]
                            [--memory-positions 20] [--lengths 512 2048 ... 2097152] [--scored-fraction 1.0]
                            [--bptt-depth -1] [--bytes-per-value 2] [--flash-attention] [--out outputs/flops]

Estimates with `memlm.flops` (its docstring gives the formulas and what they leave out), per sample: the forward
FLOPs of the memory model (segments of --segment-length tokens, each run with --memory-positions more: 20 is RMT's
decoder form with 10 memory tokens, read and write) and of one full-attention pass over the same length, and the
activations each keeps for a training backward. Backward costs twice the forward in both, so the ratio holds for
training too. Prints a table, then RMT's published OPT comparison at 2,048,000 tokens beside ours, and writes
flops_<backbone>.json and flops_<backbone>.png (log-log: linear against quadratic growth) under --out.

Offline: the backbone's config comes from memlm's conf/backbone/<name>.yaml (its tiny config, with the vocabulary
of its tokenizer asset, or the config.json of its prepared asset folder), else from a folder, or a hub id already
in the local hub cache. Nothing is downloaded or built.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig  # noqa: E402

from memlm import assets  # noqa: E402
from memlm.flops import (  # noqa: E402
    TransformerShape,
    full_attention_activation_bytes,
    full_attention_flops,
    memory_model_activation_bytes,
    memory_model_flops,
    transformer_shape,
)
from memlm.runs import write_json  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"

# OPT's shapes (Zhang et al. 2022, Table 1: layers, heads, d_model; the MLP is 4 d_model wide) and vocabulary.
OPT = {
    "OPT-125M": {"model_type": "opt", "num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
                 "ffn_dim": 3072, "vocab_size": 50272},
    "OPT-175B": {"model_type": "opt", "num_hidden_layers": 96, "hidden_size": 12288, "num_attention_heads": 96,
                 "ffn_dim": 49152, "vocab_size": 50272},
}
# Bulatov et al. 2023, "Scaling Transformer to 1M tokens and beyond with RMT", Figure 3: forward FLOPs of full
# attention over RMT's at 2,048,000 tokens, RMT reading 512-token segments with 10 memory tokens.
PUBLISHED_RATIO = {"OPT-125M": 295, "OPT-175B": 29}
RMT_LENGTH, RMT_SEGMENT, RMT_MEMORY = 2_048_000, 512, 10


def backbone_config(backbone: str) -> PretrainedConfig:
    """The config of memlm's backbone `backbone` (conf/backbone/<name>.yaml), or of a folder or cached hub id."""
    conf_file = CONF / "backbone" / f"{backbone}.yaml"
    spec = OmegaConf.to_container(OmegaConf.load(conf_file)) if conf_file.is_file() else {"name_or_path": backbone}
    if spec.get("tiny") is not None:
        # As memlm.backbones.load_backbone builds it: the vocabulary is the tokenizer's.
        vocab = len(AutoTokenizer.from_pretrained(offline(spec["tokenizer"])))
        return AutoConfig.for_model(**spec["tiny"], vocab_size=vocab)
    return AutoConfig.from_pretrained(offline(spec["name_or_path"]))


def offline(name: str) -> str:
    """An offline asset's prepared folder (looked up, never built); folders and hub ids pass through."""
    return str(assets.folder(name)) if name in assets.ASSETS else name


def estimate(shape: TransformerShape, length: int, args: argparse.Namespace) -> dict:
    """One row of the table: both models' forward FLOPs and training activations at `length` tokens."""
    segments = math.ceil(length / args.segment_length)
    held = segments if args.bptt_depth == -1 else min(args.bptt_depth, segments)
    window = min(args.segment_length, length)
    scored = round(args.scored_fraction * length)
    memory_flops = memory_model_flops(shape, length, args.segment_length, args.memory_positions, scored)
    full_flops = full_attention_flops(shape, length, scored)
    precision = {"bytes_per_value": args.bytes_per_value, "stores_scores": not args.flash_attention}
    return {
        "length": length,
        "memory_model_flops": memory_flops,
        "full_attention_flops": full_flops,
        "ratio": full_flops / memory_flops,
        "memory_model_activation_bytes": memory_model_activation_bytes(
            shape, window, args.memory_positions, held, round(args.scored_fraction * held * window), **precision),
        "full_attention_activation_bytes": full_attention_activation_bytes(shape, length, scored, **precision),
    }


def opt_comparison() -> list[dict]:
    """RMT's published OPT ratios beside ours, with the LM head on every token and without it."""
    rows = []
    for name, config in OPT.items():
        shape = transformer_shape(AutoConfig.for_model(**config))
        ratios = {}
        for head, scored in (("lm_head_on_every_token", RMT_LENGTH), ("no_lm_head", 0)):
            ratios[head] = (full_attention_flops(shape, RMT_LENGTH, scored)
                            / memory_model_flops(shape, RMT_LENGTH, RMT_SEGMENT, RMT_MEMORY, scored))
        rows.append({"model": name, "published": PUBLISHED_RATIO[name], **ratios})
    return rows


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024


def print_report(report: dict) -> None:
    settings = report["settings"]
    held = "every segment" if settings["bptt_depth"] == -1 else f"the last {settings['bptt_depth']} segments"
    print(f"\n{report['backbone']}: forward FLOPs per sample (backward: 2x), memory model in segments of "
          f"{settings['segment_length']} + {settings['memory_positions']} positions, LM head on "
          f"{settings['scored_fraction']:.0%} of the tokens; training activations of {held}, "
          f"{settings['bytes_per_value']}-byte values{', flash attention' if settings['flash_attention'] else ''}")
    print("| tokens | memory model FLOPs | full attention FLOPs | ratio | memory model activations "
          "| full attention activations |")
    print("|---|---|---|---|---|---|")
    for row in report["rows"]:
        print(f"| {row['length']:,} | {row['memory_model_flops']:.3e} | {row['full_attention_flops']:.3e} | "
              f"{row['ratio']:.1f}x | {human_bytes(row['memory_model_activation_bytes'])} | "
              f"{human_bytes(row['full_attention_activation_bytes'])} |")
    print(f"\nRMT's OPT comparison: full attention's forward FLOPs over the memory model's at {RMT_LENGTH:,} tokens, "
          f"{RMT_SEGMENT}-token segments + {RMT_MEMORY} memory positions")
    print("| model | published | ours, LM head on every token | ours, no LM head |")
    print("|---|---|---|---|")
    for row in report["opt"]:
        print(f"| {row['model']} | {row['published']}x | {row['lm_head_on_every_token']:.1f}x | "
              f"{row['no_lm_head']:.1f}x |")


def plot(report: dict, path: Path) -> Path:
    """FLOPs and activations against length, log-log: the memory model's slope 1 beside full attention's 2."""
    lengths = [row["length"] for row in report["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, figure, ylabel in ((axes[0], "flops", "forward FLOPs per sample"),
                               (axes[1], "activation_bytes", "training activations per sample (bytes)")):
        for model, label in (("memory_model", "memory model (segments)"), ("full_attention", "full attention")):
            ax.plot(lengths, [row[f"{model}_{figure}"] for row in report["rows"]], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input tokens")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    settings = report["settings"]
    fig.suptitle(f"{report['backbone']}: segments of {settings['segment_length']} + "
                 f"{settings['memory_positions']} positions against one full-attention pass")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny_gpt2",
                        help="a conf/backbone name (tiny_gpt2, smollm2, ...), a model folder or a cached hub id")
    parser.add_argument("--segment-length", type=int, default=512, help="tokens per segment, memory not counted")
    parser.add_argument("--memory-positions", type=int, default=20,
                        help="positions a head adds to each segment (MemoryHead.extra_positions(): RMT decoder 2m)")
    parser.add_argument("--lengths", nargs="+", type=int,
                        default=[512, 2048, 8192, 32768, 131072, 524288, 2097152], help="input lengths in tokens")
    parser.add_argument("--scored-fraction", type=float, default=1.0,
                        help="share of tokens given next-token logits: 1 for language modelling, 0 for none")
    parser.add_argument("--bptt-depth", type=int, default=-1,
                        help="segments whose graph training holds at once (memlm's recurrence.bptt_depth; -1: all)")
    parser.add_argument("--bytes-per-value", type=int, default=2, help="2 for bf16/fp16 activations, 4 for fp32")
    parser.add_argument("--flash-attention", action="store_true",
                        help="an attention kernel that keeps no scores for backward (activations only)")
    parser.add_argument("--out", type=Path, default=Path("outputs/flops"))
    args = parser.parse_args(argv)

    shape = transformer_shape(backbone_config(args.backbone))
    settings = {key: getattr(args, key) for key in ("segment_length", "memory_positions", "scored_fraction",
                                                     "bptt_depth", "bytes_per_value", "flash_attention")}
    report = {"backbone": args.backbone, "shape": asdict(shape), "settings": settings,
              "rows": [estimate(shape, length, args) for length in args.lengths], "opt": opt_comparison()}
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    name = Path(args.backbone).name
    write_json(args.out / f"flops_{name}.json", report)
    figure = plot(report, args.out / f"flops_{name}.png")
    print(f"\nwritten: {args.out / f'flops_{name}.json'}\nwritten: {figure}")
    return report


if __name__ == "__main__":
    main()
