"""Extended Mind on SmolLM2-135M: does a fact in one segment reach the next, for each rotary placement of the
retrieved keys (`model.memory_positions`) and with or without the similarity threshold?

    python scripts/extended_mind_positions.py

Prints the probability of the fact's answer as the next token after the question, for the second segment read
alone (no memory), both segments read at once (the whole text in context), and Extended Mind in each setting.
Needs the offline asset smollm2-135m (`python -m memlm.assets smollm2-135m`).
"""

import torch

from memlm import assets
from memlm.backbones import load_backbone
from memlm.memory import Baseline, ExtendedMind

FACT = " The secret password of the blue door is pineapple. It must never be written down."
FILLER = " The weather was mild and the market was busy with traders from the hills."
QUESTION = " Someone asked me about the blue door. The secret password of the blue door is"
ANSWER = " pineapple"


def main() -> None:
    backbone = load_backbone(str(assets.folder("smollm2-135m")))
    tokenizer = backbone.tokenizer
    segments = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (FACT + FILLER, FILLER + QUESTION)]
    answer = tokenizer(ANSWER, add_special_tokens=False)["input_ids"][0]

    def next_token_probability(head, texts) -> float:
        state = head.initial_state(1)
        with torch.no_grad():
            for ids in texts:
                out = head(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), state)
                state = out.state
        return backbone.logits(out.token_states[:, -1]).softmax(-1)[0, answer].item()

    plain = Baseline(backbone).eval()
    print(f"second segment alone        {next_token_probability(plain, segments[1:]):.2e}")
    print(f"both segments as one        {next_token_probability(plain, [segments[0] + segments[1]]):.2e}")
    for positions in ("segment_start", "query", "original"):
        for threshold in (None, 0.25):
            head = ExtendedMind(backbone, memory_positions=positions, similarity_threshold=threshold).eval()
            print(f"{positions:13s} threshold {threshold!s:4s} {next_token_probability(head, segments):.2e}")


if __name__ == "__main__":
    main()
