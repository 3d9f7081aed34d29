"""LM2: Large Memory Models (Kang et al. 2025).

A memory bank M of N slots x d sits beside the attention of every decoder block. With E the block's input:

- read: E_mem = softmax((E W_Q)(M W_K)^T / sqrt(d)) (M W_V), one row per token; the output gate
  g_out = sigmoid(E_mem W_out) adds `g_out * E_mem` to the block's output;
- write, once per segment after the segment has been read: the N slots attend over the segment's tokens,
  U = softmax((M W_Q')(E W_K')^T / sqrt(d)) (E W_V'), and with the paper's gates taken per slot,
  g_in = sigmoid(U W_in), g_f = sigmoid(U W_f), M <- g_in * tanh(U) + g_f * M.

The paper's update mixes token rows with slot rows; the authors' code forces T = N = d, computes the input gate
from a mean over the whole sequence (later tokens leak into earlier positions) and carries memory across unrelated
batches. Here the slots are the queries of the write, so N is free of the segment length; a segment reads only what
earlier segments wrote, so no output depends on a later token; and the bank starts as identity rows in every sample
(reset per document).

The backbone's code is not forked: inside `LM2.forward` the backbone's block interceptors (`Backbone.intercepting`
on `Backbone.blocks`, GPT-2's `h` or Llama's `layers`) add the read to each block's output and keep each block's
input for the write; outside it the backbone is the plain model.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import Cache

from memlm.backbones import Backbone
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput


class BlockMemory(nn.Module):
    """The read, gates and write of one decoder block's memory bank."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.read_query, self.read_key, self.read_value = (nn.Linear(hidden_size, hidden_size, bias=False)
                                                           for _ in range(3))
        self.write_query, self.write_key, self.write_value = (nn.Linear(hidden_size, hidden_size, bias=False)
                                                              for _ in range(3))
        self.output_gate = nn.Linear(hidden_size, hidden_size)
        self.input_gate = nn.Linear(hidden_size, hidden_size)
        self.forget_gate = nn.Linear(hidden_size, hidden_size)

    def read(self, block_input: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the block adds to its output (the gated memory read of each token), and each token's attention
        weights over the slots."""
        memory = memory.to(block_input.dtype)
        scores = self.read_query(block_input) @ self.read_key(memory).transpose(1, 2) / math.sqrt(memory.shape[-1])
        weights = scores.softmax(dim=-1)
        read = weights @ self.read_value(memory)
        return torch.sigmoid(self.output_gate(read)) * read, weights

    def write(self, block_input: torch.Tensor, token_mask: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """The bank after this segment: each slot attends over the segment's (unpadded) tokens."""
        memory_in = memory.to(block_input.dtype)
        scores = self.write_query(memory_in) @ self.write_key(block_input).transpose(1, 2)
        scores = scores / math.sqrt(memory.shape[-1])
        scores = scores.masked_fill(~token_mask[:, None, :], torch.finfo(scores.dtype).min)
        update = scores.softmax(dim=-1) @ self.write_value(block_input)
        written = torch.sigmoid(self.input_gate(update)) * torch.tanh(update)
        return (written + torch.sigmoid(self.forget_gate(update)) * memory_in).to(memory.dtype)


class LM2(MemoryHead):
    size_key = "model.memory_slots"

    def __init__(self, backbone: Backbone, memory_slots: int = 16):
        super().__init__(backbone)
        if not backbone.is_decoder:
            raise ValueError("model=lm2 needs a decoder backbone (backbone.kind=causal): its memory sits in decoder "
                             "blocks")
        if memory_slots < 1:
            raise ValueError(f"model.memory_slots={memory_slots} must be at least 1")
        self.memory_slots = memory_slots
        d = backbone.hidden_size
        self.memories = nn.ModuleList(BlockMemory(d) for _ in backbone.blocks)
        # Identity rows, as in the paper (slots beyond d start at zero); a buffer so it follows the device.
        self.register_buffer("initial_memory", torch.eye(memory_slots, d), persistent=False)

    def initial_state(self, batch_size: int) -> MemoryState:
        # One bank per block: (batch, blocks, slots, hidden).
        bank = self.initial_memory.expand(batch_size, len(self.memories), -1, -1)
        return bank.to(self.backbone.embedding.weight.dtype)

    def extra_positions(self) -> int:
        return 0  # memory lives beside attention, not in the sequence

    caches_open_segment = True

    def extend(self, input_ids: torch.Tensor, state: MemoryState, cache: Cache) -> torch.Tensor:
        def add_read(index: int, block_input: torch.Tensor, block_output: torch.Tensor) -> torch.Tensor:
            return block_output + self.memories[index].read(block_input, state[:, index])[0]

        with self.backbone.intercepting(after=add_read):
            return self.backbone(self.backbone.embed(input_ids), cache=cache)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState,
                token_embeddings: torch.Tensor | None = None) -> SegmentOutput:
        block_inputs: list[torch.Tensor | None] = [None] * len(self.memories)
        read_weights: list[torch.Tensor | None] = [None] * len(self.memories)

        def add_read(index: int, block_input: torch.Tensor, block_output: torch.Tensor) -> torch.Tensor:
            block_inputs[index] = block_input  # the write reads the same E after the whole segment has been read
            read, read_weights[index] = self.memories[index].read(block_input, state[:, index])
            return block_output + read

        with self.backbone.intercepting(after=add_read):
            hidden = self.backbone(self.embed_tokens(input_ids, token_embeddings), attention_mask)
        token_mask = attention_mask.bool()
        next_state = torch.stack(
            [memory.write(block_inputs[i], token_mask, state[:, i]) for i, memory in enumerate(self.memories)],
            dim=1,
        )
        # Kept for plots (scripts/plot_attention.py): (batch, blocks, tokens, slots).
        return SegmentOutput(hidden, hidden[:, -1], next_state, {"read_weights": torch.stack(read_weights, dim=1)})
