"""Generation with memory, for any decoder head.

The prompt is read segment by segment into memory, as in training; its last (possibly partial) segment stays
open, and tokens are generated into it. When the open segment is full, its memory is committed and a new segment
starts with the token just generated: exactly the alignment of training, where a segment's last position predicts
the next segment's first token. The open segment is re-read at every step (no key/value cache), which costs at most
one segment's worth of attention per token and works unchanged for every head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from memlm.memory.base import MemoryHead


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_at_eos: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature must be > 0, top_p in (0, 1], top_k >= 0 (0: off)")

    def warpers(self) -> LogitsProcessorList:
        warpers = LogitsProcessorList()
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


@torch.no_grad()
def generate(
    head: MemoryHead,
    prompt_ids: torch.Tensor,
    segment_length: int,
    sampling: Sampling = Sampling(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """New token ids, (batch, up to max_new_tokens), for a (batch, prompt_length) prompt.

    Samples that emit end-of-text stop there (their later positions hold end-of-text); generation ends when all
    have stopped or max_new_tokens is reached.
    """
    if not head.backbone.is_decoder:
        raise ValueError("generation needs a causal backbone; encoder backbones classify instead")
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] == 0:
        raise ValueError("prompt_ids must be (batch, length) with at least one token")
    batch = prompt_ids.shape[0]
    eos = head.backbone.tokenizer.eos_token_id
    state = head.initial_state(batch)
    # Commit every full segment but keep the last one open: generation continues inside it.
    committed = (prompt_ids.shape[1] - 1) // segment_length * segment_length
    for start in range(0, committed, segment_length):
        segment = prompt_ids[:, start : start + segment_length]
        state = head(segment, torch.ones_like(segment), state).state
    open_segment = prompt_ids[:, committed:]
    warpers = sampling.warpers()
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    new_tokens = []
    for _ in range(sampling.max_new_tokens):
        out = head(open_segment, torch.ones_like(open_segment), state)
        logits = head.backbone.logits(out.token_states[:, -1]).float()
        token = _choose(logits, warpers, sampling.do_sample, generator)
        if sampling.stop_at_eos and eos is not None:
            token = torch.where(finished, torch.full_like(token, eos), token)
            finished |= token == eos
        new_tokens.append(token)
        if open_segment.shape[1] == segment_length:
            state, open_segment = out.state, token[:, None]
        else:
            open_segment = torch.cat([open_segment, token[:, None]], dim=1)
        if finished.all():
            break
    return torch.stack(new_tokens, dim=1)


def _choose(logits, warpers, do_sample: bool, generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    scores = warpers(None, logits)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
