"""Recurrent Memory Transformer (Bulatov, Kuratov, Burtsev 2022; 2023).

Decoder form: the segment is `[read memory (m) ; tokens (S) ; write memory (m)]`; the last hidden states at the m
write positions are the next segment's memory. A causal backbone lets every token read the memory and the write
positions see the whole segment, which is why memory goes on both sides.

Encoder form: `[CLS] memory (m) [SEP] tokens [SEP]`; the hidden states at the memory positions are the next memory
and the CLS of the last segment is what a classifier reads. The paper adds m token ids to the vocabulary and uses
their embeddings as the initial memory; a learned (m, hidden) parameter is the same thing without resizing the
backbone's vocabulary.

Memory write. The paper replaces the memory with the write positions' outputs (`write="replace"`). Over thousands
of segments that asks the network to copy a fact through every step unchanged, and small errors compound: trained
to 8 segments of varied lengths, it scores 1.00 at 16 segments and 0.16 at 64. A gate makes keeping the old memory
the easy path: `g = sigmoid(W [new ; m] + b)` per memory element, computed from the new and the old memory.
- `write="gated"`: `m <- g * new + (1 - g) * m`. Still leaky: a gate of 1e-4 on every segment has forgotten a fact
  after tens of thousands of them, and training on 32 segments never asks for less (0.16-0.47 at 4,096 segments
  over the gate biases and penalties tried).
- `write="switch"` (the default, memlm's): the same mix with `g` thresholded at 1/2 in the forward pass, so each
  element is replaced or kept bit for bit, and trained straight through the soft gate (the backward pass uses
  sigmoid's derivative). A fact written once and never overwritten is held at any length, exactly: memorize
  reaches the same loss at 4,096 segments as at 16.
`gate_bias` is b at initialisation (0: each gate starts near its threshold, where it learns fastest; a switch
starting shut, at -3, never learns to open on the short curriculum stages). `write_penalty` adds the mean soft gate
of every segment, times this weight, to the training loss: writing costs, so the gate learns to open where the text
holds something to keep and to stay far below 1/2 elsewhere (1.0; with the soft gate, 3.0 slowed the first stages
and 10 stopped the write being learnt). The last segment's write is not priced (the segment loop leaves it out):
no segment reads it, so its price could only push the gate shut, and on the curriculum's one-segment stage that
was all the gate learnt; on detect with seed 42 the switch then never opened.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Cache

from memlm.backbones import Backbone
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput, frame_for_encoder, pad_mask

WRITES = ("replace", "gated", "switch")


class RMT(MemoryHead):
    size_key = "model.num_mem_tokens"

    def __init__(self, backbone: Backbone, num_mem_tokens: int = 10, write: str = "replace", gate_bias: float = 0.0,
                 write_penalty: float | None = None):
        """`write_penalty` None: 1.0 for a gated write (gated, switch), none for replace."""
        super().__init__(backbone)
        if num_mem_tokens < 1:
            raise ValueError(f"model.num_mem_tokens={num_mem_tokens} must be at least 1 (use model=baseline for none)")
        if write not in WRITES:
            raise ValueError(f"model.write={write!r} is not one of {WRITES}")
        if write_penalty is None:
            write_penalty = 0.0 if write == "replace" else 1.0
        if write_penalty < 0 or (write_penalty and write == "replace"):
            raise ValueError(f"model.write_penalty={write_penalty} must be 0, or positive with a gated write")
        self.write = write
        self.num_mem_tokens = num_mem_tokens
        self.write_penalty = write_penalty
        self.memory = self.embedding_scaled(num_mem_tokens, backbone.hidden_size)
        if write != "replace":
            self.write_gate = nn.Linear(2 * backbone.hidden_size, backbone.hidden_size)
            nn.init.constant_(self.write_gate.bias, gate_bias)
        else:
            self.write_gate = None

    def initial_state(self, batch_size: int) -> MemoryState:
        return self.memory.unsqueeze(0).expand(batch_size, -1, -1)

    def extra_positions(self) -> int:
        m = self.num_mem_tokens
        return 2 * m if self.backbone.is_decoder else m + 3

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState,
                token_embeddings: torch.Tensor | None = None) -> SegmentOutput:
        m = self.num_mem_tokens
        tokens = self.embed_tokens(input_ids, token_embeddings)
        if self.backbone.is_decoder:
            hidden = self.backbone(torch.cat([state, tokens, state], dim=1), pad_mask(attention_mask, m, m))
            token_states = hidden[:, m:-m]
            memory, penalty = self._written(hidden[:, -m:], state)
            return SegmentOutput(token_states, token_states[:, -1], memory, penalty=penalty)
        hidden = self.backbone(frame_for_encoder(self.backbone, [state], tokens), pad_mask(attention_mask, m + 2, 1))
        memory, penalty = self._written(hidden[:, 1 : m + 1], state)
        return SegmentOutput(hidden[:, m + 2 : -1], hidden[:, 0], memory, penalty=penalty)

    @property
    def caches_open_segment(self) -> bool:
        return self.backbone.is_decoder

    def extend(self, input_ids: torch.Tensor, state: MemoryState, cache: Cache) -> torch.Tensor:
        tokens = self.backbone.embed(input_ids)
        if cache.get_seq_length() > 0:
            return self.backbone(tokens, cache=cache)
        m = self.num_mem_tokens
        return self.backbone(torch.cat([state, tokens], dim=1), cache=cache)[:, m:]

    @property
    def writes_from_cache(self) -> bool:
        return self.backbone.is_decoder

    def written_from_cache(self, state: MemoryState, cache: Cache) -> MemoryState:
        # The write positions follow the tokens, which the cache holds: the same positions and attention as in
        # forward's one pass.
        return self._written(self.backbone(state, cache=cache), state)[0]

    def _written(self, new: torch.Tensor, old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The memory the next segment reads (the write positions' outputs, or their gated mix with the old) and
        the write penalty, if any."""
        if self.write_gate is None:
            return new, None
        gate = torch.sigmoid(self.write_gate(torch.cat([new, old.to(new.dtype)], dim=-1)))
        penalty = self.write_penalty * gate.mean() if self.write_penalty else None
        if self.write == "switch":
            # Straight through: forward with the 0/1 switch, backward through the soft gate.
            gate = gate + ((gate > 0.5).to(gate.dtype) - gate).detach()
        return gate * new + (1 - gate) * old, penalty
