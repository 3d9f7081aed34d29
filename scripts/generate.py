"""Read a long prompt into memory segment by segment, then generate: any decoder checkpoint of train.py.

    python scripts/generate.py <checkpoint> --prompt "..."            (or --prompt-file book.txt)
        [--max-new-tokens 64] [--sample --temperature 0.8 --top-k 50 --top-p 0.95 --seed 0] [--no-stop]

The segment length is the checkpoint's training segment length. Prints how much of the prompt went into memory,
then the continuation.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from memlm.checkpointing import load_checkpoint  # noqa: E402
from memlm.generation import Sampling, generate  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt")
    prompt.add_argument("--prompt-file", type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-stop", action="store_true", help="do not stop at end-of-text")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    text = args.prompt if args.prompt is not None else args.prompt_file.read_text(encoding="utf-8")
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    tokenizer = model.tokenizer
    segment_length = model.hparams.data["segment_length"]
    # verbose=False: the prompt may exceed the backbone's positions; it is read one segment at a time.
    prompt = torch.tensor([tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]])
    sampling = Sampling(args.max_new_tokens, args.sample, args.temperature, args.top_k, args.top_p, not args.no_stop)
    new = generate(model.head, prompt, segment_length, sampling, torch.Generator().manual_seed(args.seed))
    continuation = tokenizer.decode(new[0], skip_special_tokens=True)
    segments = -(-prompt.shape[1] // segment_length)
    print(f"[prompt: {prompt.shape[1]} tokens, read as {segments} segment(s) of {segment_length}]", file=sys.stderr)
    print(continuation)
    return continuation


if __name__ == "__main__":
    main()
