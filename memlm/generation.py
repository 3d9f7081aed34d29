"""Generation with memory, for any decoder head.

The prompt is read segment by segment into memory, as in training; its last (possibly partial) segment stays
open, and tokens are generated into it. When the open segment is full, its memory is committed and a new segment
starts with the token just generated: exactly the alignment of training, where a segment's last position predicts
the next segment's first token.

A head that can read its open segment incrementally (`MemoryHead.caches_open_segment`: the baseline, RMT, ARMT,
LM2 and LRMT) keeps the open segment's keys and values in a cache, so each new token is one position's forward.
The write runs once the segment is complete: from the cache, reading only the write's own positions, for heads
whose write positions follow the tokens (`MemoryHead.writes_from_cache`: the baseline, which writes nothing, RMT
and ARMT); by reading the segment again for LM2 and LRMT, whose writes read every token's states. Any other head
(HMT, whose retrieval depends on the segment's first tokens; Extended Mind) re-reads the open segment at every
step, at most one segment's worth of attention per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

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
    reader = _OpenSegment(head, state, open_segment)
    warpers = sampling.warpers()
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    new_tokens = []
    for _ in range(sampling.max_new_tokens):
        logits = head.backbone.logits(reader.last_hidden).float()
        token = _choose(logits, warpers, sampling.do_sample, generator)
        if sampling.stop_at_eos and eos is not None:
            token = torch.where(finished, torch.full_like(token, eos), token)
            finished |= token == eos
        new_tokens.append(token)
        if finished.all() or len(new_tokens) == sampling.max_new_tokens:
            break
        if reader.segment.shape[1] == segment_length:
            reader = _OpenSegment(head, reader.committed(), token[:, None])
        else:
            reader.append(token[:, None])
    return torch.stack(new_tokens, dim=1)


class _OpenSegment:
    """The segment being generated into: its tokens, the memory it reads, and its last position's hidden state."""

    def __init__(self, head: MemoryHead, state, tokens: torch.Tensor):
        self.head, self.state, self.segment = head, state, tokens
        self.cache = DynamicCache() if head.caches_open_segment else None
        self.last_hidden = self._read(tokens)

    def _read(self, new_tokens: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.head.extend(new_tokens, self.state, self.cache)[:, -1]
        return self.head(self.segment, torch.ones_like(self.segment), self.state).token_states[:, -1]

    def append(self, tokens: torch.Tensor) -> None:
        self.segment = torch.cat([self.segment, tokens], dim=1)
        self.last_hidden = self._read(tokens)

    def committed(self):
        """The memory after writing the complete segment."""
        if self.cache is not None and self.head.writes_from_cache:
            return self.head.written_from_cache(self.state, self.cache)
        return self.head(self.segment, torch.ones_like(self.segment), self.state).state


def _choose(logits, warpers, do_sample: bool, generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    scores = warpers(None, logits)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
