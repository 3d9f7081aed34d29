"""Recurrent Memory Transformer (Bulatov, Kuratov, Burtsev 2022; 2023).

Decoder form: the segment is `[read memory (m) ; tokens (S) ; write memory (m)]`; the last hidden states at the m
write positions are the next segment's memory. A causal backbone lets every token read the memory and the write
positions see the whole segment, which is why memory goes on both sides.

Encoder form: `[CLS] memory (m) [SEP] tokens [SEP]`; the hidden states at the memory positions are the next memory
and the CLS of the last segment is what a classifier reads. The paper adds m token ids to the vocabulary and uses
their embeddings as the initial memory; a learned (m, hidden) parameter is the same thing without resizing the
backbone's vocabulary.
"""

from __future__ import annotations

import torch

from memlm.backbones import Backbone
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput, frame_for_encoder, pad_mask


class RMT(MemoryHead):
    size_key = "model.num_mem_tokens"

    def __init__(self, backbone: Backbone, num_mem_tokens: int = 10):
        super().__init__(backbone)
        if num_mem_tokens < 1:
            raise ValueError(f"model.num_mem_tokens={num_mem_tokens} must be at least 1 (use model=baseline for none)")
        self.num_mem_tokens = num_mem_tokens
        self.memory = self.embedding_scaled(num_mem_tokens, backbone.hidden_size)

    def initial_state(self, batch_size: int) -> MemoryState:
        return self.memory.unsqueeze(0).expand(batch_size, -1, -1)

    def extra_positions(self) -> int:
        m = self.num_mem_tokens
        return 2 * m if self.backbone.is_decoder else m + 3

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState) -> SegmentOutput:
        m = self.num_mem_tokens
        tokens = self.backbone.embed(input_ids)
        if self.backbone.is_decoder:
            hidden = self.backbone(torch.cat([state, tokens, state], dim=1), pad_mask(attention_mask, m, m))
            token_states = hidden[:, m:-m]
            return SegmentOutput(token_states, token_states[:, -1], hidden[:, -m:])
        hidden = self.backbone(frame_for_encoder(self.backbone, [state], tokens), pad_mask(attention_mask, m + 2, 1))
        return SegmentOutput(hidden[:, m + 2 : -1], hidden[:, 0], hidden[:, 1 : m + 1])
