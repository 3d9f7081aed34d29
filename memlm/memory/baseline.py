"""No memory: each segment is read alone. The floor every memory head must beat."""

from __future__ import annotations

import torch
from transformers import Cache

from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput, frame_for_encoder, pad_mask


class Baseline(MemoryHead):
    caches_open_segment = True
    writes_from_cache = True

    def initial_state(self, batch_size: int) -> MemoryState:
        return None

    def extra_positions(self) -> int:
        return 0 if self.backbone.is_decoder else 2

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState,
                token_embeddings: torch.Tensor | None = None) -> SegmentOutput:
        tokens = self.embed_tokens(input_ids, token_embeddings)
        if self.backbone.is_decoder:
            hidden = self.backbone(tokens, attention_mask)
            return SegmentOutput(hidden, hidden[:, -1], None)
        hidden = self.backbone(frame_for_encoder(self.backbone, [], tokens), pad_mask(attention_mask, 1, 1))
        return SegmentOutput(hidden[:, 1:-1], hidden[:, 0], None)

    def extend(self, input_ids: torch.Tensor, state: MemoryState, cache: Cache) -> torch.Tensor:
        return self.backbone(self.backbone.embed(input_ids), cache=cache)

    def written_from_cache(self, state: MemoryState, cache: Cache) -> MemoryState:
        return None
