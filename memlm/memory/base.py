"""The one interface every memory head implements.

A memory model is a backbone run segment by segment, carrying a state. A head says how a segment's input is built
from the state and how the next state is read out; the segment loop (`memlm.recurrence`) does the rest and never
asks which head it runs. The state is any pytree of tensors (a tensor, a tuple, a dict, or None), so the loop can
detach it at the truncation point without knowing its shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Cache

from memlm.backbones import Backbone

MemoryState = Any


@dataclass
class SegmentOutput:
    token_states: torch.Tensor
    """Last hidden states at the segment's own token positions, (batch, segment_length, hidden)."""
    summary: torch.Tensor
    """One vector per sample for classification, (batch, hidden): CLS for encoders, the last token for decoders."""
    state: MemoryState
    """The memory handed to the next segment."""
    diagnostics: dict = field(default_factory=dict)
    """Head-specific statistics for callbacks and plots (HMT: its retrieval weights over the cache)."""
    penalty: torch.Tensor | None = None
    """A regulariser of this segment's write, added to the training loss (divided by the batch's segment count),
    except on the last segment, whose write no segment reads."""


class MemoryHead(nn.Module):
    """Base class: holds the backbone; subclasses add memory parameters and the segment layout."""

    size_key = "the memory size under model.*"
    """The config key that sets the positions a head adds, named when they do not fit."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def embedding_scaled(self, *shape: int) -> nn.Parameter:
        """A learned parameter drawn at the scale of the word embeddings, so the backbone sees it as an ordinary
        input."""
        scale = self.backbone.embedding.weight.detach().std().item()
        return nn.Parameter(torch.randn(*shape) * scale)

    def initial_state(self, batch_size: int) -> MemoryState:
        """The memory the first segment of a document reads."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState,
                token_embeddings: torch.Tensor | None = None) -> SegmentOutput:
        """Process one segment of (batch, segment_length) token ids given the memory; return outputs and new memory.
        `token_embeddings`, if given, are the ids' embeddings already looked up (`embed_tokens`)."""
        raise NotImplementedError

    caches_open_segment = False
    """Whether `extend` is implemented: generation then reads each new token once instead of re-reading the open
    segment for every token."""

    def extend(self, input_ids: torch.Tensor, state: MemoryState, cache: Cache) -> torch.Tensor:
        """Last hidden states (batch, n, hidden) of the open segment's next n tokens, which attend to its earlier
        tokens through `cache` (their keys and values; an empty cache: these are the segment's first tokens, and
        the head adds what it reads the memory with). The reading half of `forward`, without the write, which
        generation does once the segment is complete. A decoder head whose read is causal can implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not cache its open segment")

    writes_from_cache = False
    """Whether `written_from_cache` is implemented: generation then commits a complete segment from its cache
    instead of reading it again."""

    def written_from_cache(self, state: MemoryState, cache: Cache) -> MemoryState:
        """The memory after the open segment, complete, whose keys and values `cache` holds (`extend`): `forward`'s
        write, reading only what the write adds after the tokens. A head whose write reads only positions after
        the segment's tokens can implement it."""
        raise NotImplementedError(f"{type(self).__name__} writes from the whole segment")

    def embed_tokens(self, input_ids: torch.Tensor, token_embeddings: torch.Tensor | None) -> torch.Tensor:
        """The segment's token embeddings: those the segment loop looked up for the whole BPTT window at once, or
        a lookup of this segment's ids. One lookup per window matters in training: the backward of every lookup
        builds and zero-fills a vocabulary x hidden gradient, 11% of the default step when done per segment."""
        return self.backbone.embed(input_ids) if token_embeddings is None else token_embeddings

    def extra_positions(self) -> int:
        """Positions the head adds around a segment; segment_length + this must fit the backbone's positions."""
        raise NotImplementedError

    def check_fits(self, segment_length: int) -> None:
        """Fail at start, naming the keys to change, when a segment and its memory exceed the backbone's positions."""
        needed = segment_length + self.extra_positions()
        if needed > self.backbone.max_positions:
            raise ValueError(
                f"data.segment_length={segment_length} plus {self.extra_positions()} positions for "
                f"{type(self).__name__}'s memory/special tokens needs {needed} positions, but the backbone has "
                f"{self.backbone.max_positions}: lower data.segment_length or {self.size_key}"
            )


def memory_layers(backbone: Backbone, layers: Sequence[int] | None) -> tuple[int, ...]:
    """The block indices `model.layers` chooses, in order (None: every block); an error names the key when they
    are not distinct indices of the backbone's blocks."""
    blocks = len(backbone.blocks)
    chosen = list(range(blocks)) if layers is None else list(layers)
    if not chosen:
        raise ValueError("model.layers=[] gives no layer a memory: list block indices, or null for all")
    if any(not 0 <= index < blocks for index in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"model.layers={chosen} must be distinct block indices in 0..{blocks - 1} "
                         f"(the backbone has {blocks} blocks)")
    return tuple(sorted(chosen))


def frame_for_encoder(backbone: Backbone, inside: list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """BERT-style layout `[CLS] inside... [SEP] tokens [SEP]` (or `[CLS] tokens [SEP]` when `inside` is empty)."""
    batch = tokens.shape[0]
    tok = backbone.tokenizer
    cls = backbone.special_embedding(tok.cls_token_id, batch)
    sep = backbone.special_embedding(tok.sep_token_id, batch)
    if inside:
        return torch.cat([cls, *inside, sep, tokens, sep], dim=1)
    return torch.cat([cls, tokens, sep], dim=1)


def pad_mask(attention_mask: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Extend a segment's attention mask over positions the head adds before and after the tokens."""
    batch = attention_mask.shape[0]
    ones = attention_mask.new_ones
    return torch.cat([ones(batch, before), attention_mask, ones(batch, after)], dim=1)
