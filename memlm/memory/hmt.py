"""Hierarchical Memory Transformer (He et al. 2024, NAACL 2025).

Per segment n, with a backbone used unmodified:
1. sensory memory: the input embeddings of the last k tokens of segment n-1;
2. summary S_n: the last hidden state of the backbone run on `[T ; j tokens ; T]`, T a learned prompt embedding;
3. memory search: P_n = softmax((S_n Wq)(M Wk)^T / sqrt(d)) M over the cache M of the last N memory embeddings
   (no value or output projection), or a learned vector while the cache is empty;
4. augmented pass `[P_n ; sensory ; segment ; P_n]`: the segment's hidden states give its logits, the hidden state
   at the final P_n is the memory embedding m_n, which joins the cache (first in, first out, N at most).

Causality. As published, the summary's j tokens are segment n's own first j tokens, and P_n sits in front of them:
a prediction at position t < j can see, through P_n, tokens up to j-1. That is not a language model.
`summary_source="previous"` (the default) summarises the last j tokens of segment n-1 instead: the most recent
text already read, the nearest causal stand-in for what segment n begins with. `summary_source="current"` keeps the
published behaviour, for reproducing the paper's numbers.

`memory_search=False` is the paper's first training stage: P_n is always the learned vector and no summary pass
runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from memlm.backbones import Backbone
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput, pad_mask

SUMMARY_SOURCES = ("previous", "current")
READOUTS = ("last", "first", "mean", "max")


class HMT(MemoryHead):
    size_key = "model.sensory_tokens"

    def __init__(
        self,
        backbone: Backbone,
        sensory_tokens: int = 32,
        summary_tokens: int = 512,
        cache_size: int = 300,
        summary_source: str = "previous",
        readout: str = "last",
        memory_search: bool = True,
    ):
        super().__init__(backbone)
        if not backbone.is_decoder:
            raise ValueError("model=hmt needs a causal backbone (backbone.kind=causal)")
        if summary_source not in SUMMARY_SOURCES:
            raise ValueError(f"model.summary_source={summary_source!r} is not one of {SUMMARY_SOURCES}")
        if readout not in READOUTS:
            raise ValueError(f"model.readout={readout!r} is not one of {READOUTS}")
        for key, value, least in (("sensory_tokens", sensory_tokens, 0), ("summary_tokens", summary_tokens, 1),
                                  ("cache_size", cache_size, 1)):
            if value < least:
                raise ValueError(f"model.{key}={value} must be at least {least}")
        self.sensory_tokens = sensory_tokens
        self.summary_tokens = summary_tokens
        self.cache_size = cache_size
        self.summary_source = summary_source
        self.readout = readout
        self.memory_search = memory_search
        d = backbone.hidden_size
        self.summary_prompt = self.embedding_scaled(1, 1, d)
        self.empty_cache_memory = self.embedding_scaled(1, 1, d)
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)

    def initial_state(self, batch_size: int) -> MemoryState:
        empty = self.empty_cache_memory.new_zeros(batch_size, 0, self.backbone.hidden_size)
        # `recent`: input embeddings of the previous segment's last tokens, for the sensory memory and (causal
        # mode) the summary; `cache`: the memory embeddings of past segments, oldest first.
        return {"cache": empty, "recent": empty}

    def extra_positions(self) -> int:
        return self.sensory_tokens + 2

    def check_fits(self, segment_length: int) -> None:
        super().check_fits(segment_length)
        if self.summary_tokens > segment_length:
            raise ValueError(
                f"model.summary_tokens={self.summary_tokens} (j) exceeds data.segment_length={segment_length} (L): "
                "the summary reads j tokens of one segment"
            )
        if self.sensory_tokens >= segment_length:
            raise ValueError(
                f"model.sensory_tokens={self.sensory_tokens} (k) must be below data.segment_length={segment_length}"
                " (L): the sensory memory is the end of the previous segment"
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState,
                token_embeddings: torch.Tensor | None = None) -> SegmentOutput:
        tokens = self.embed_tokens(input_ids, token_embeddings)
        cache, recent = state["cache"], state["recent"]
        retrieved, weights = self._search(tokens, attention_mask, cache, recent)
        sensory = last_positions(recent, self.sensory_tokens)
        inputs = torch.cat([retrieved, sensory, tokens, retrieved], dim=1)
        hidden = self.backbone(inputs, pad_mask(attention_mask, 1 + sensory.shape[1], 1))
        start = 1 + sensory.shape[1]
        token_states = hidden[:, start : start + tokens.shape[1]]
        memory = self._read_out(hidden).unsqueeze(1)
        keep = max(self.sensory_tokens, self.summary_tokens if self.summary_source == "previous" else 0)
        next_state = {
            "cache": torch.cat([cache, memory], dim=1)[:, -self.cache_size :],
            "recent": last_positions(tokens, keep),
        }
        return SegmentOutput(token_states, token_states[:, -1], next_state, {"retrieval_weights": weights})

    def _search(self, tokens, attention_mask, cache, recent) -> tuple[torch.Tensor, torch.Tensor | None]:
        """P_n and the attention weights over the cache (None when the learned vector stands in)."""
        batch = tokens.shape[0]
        if not self.memory_search or cache.shape[1] == 0:
            return self.empty_cache_memory.expand(batch, -1, -1), None
        if self.summary_source == "current":
            text, mask = tokens[:, : self.summary_tokens], attention_mask[:, : self.summary_tokens]
        else:
            text = last_positions(recent, self.summary_tokens)
            mask = attention_mask.new_ones(text.shape[:2])
        prompt = self.summary_prompt.expand(batch, -1, -1)
        summary = self.backbone(torch.cat([prompt, text, prompt], dim=1), pad_mask(mask, 1, 1))[:, -1:]
        scores = self.query(summary) @ self.key(cache).transpose(1, 2) / math.sqrt(cache.shape[-1])
        weights = scores.softmax(dim=-1)
        return weights @ cache, weights.squeeze(1)

    def _read_out(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.readout == "last":
            return hidden[:, -1]
        if self.readout == "first":
            return hidden[:, 0]
        if self.readout == "mean":
            return hidden.mean(dim=1)
        return hidden.max(dim=1).values


def last_positions(sequence: torch.Tensor, count: int) -> torch.Tensor:
    """The last `count` positions of a (batch, positions, ...) tensor, all of them if fewer, none for 0
    (`sequence[:, -0:]` would give all)."""
    return sequence[:, sequence.shape[1] - min(count, sequence.shape[1]) :]
