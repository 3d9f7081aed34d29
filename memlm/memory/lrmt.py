"""Long-Range Memory Transformer, as memlm's reference describes it (seed 000).

The input is read in chunks, memlm's segments. Each segment is pooled into memory: in every chosen layer l, one
memory vector per segment, the mean of the segment's (unpadded) token states at that layer. A bounded store keeps
the last `memory_size` of them per layer, oldest first: a new segment's vector goes in at the end and the oldest
falls out. The tokens of later segments read the store by cross-attention, in a path beside the block's own
attention (the short-range path, inside the segment):

    read = softmax(q Mᵀ / √d) M,   q = W_Q h,
    h <- h + sigmoid(g) * read

with h a token's state as block l hands it on, M the layer's stored memory vectors, W_Q learned and g a learned
gate per channel. A token attends to its own segment and to at most `memory_size` vectors, so the cost grows
linearly with the length of the text.

Causal by construction: a segment reads the store as earlier segments left it, and its own memory vectors are
written only once the whole segment has been read, so no prediction depends on a later token. While the store is
empty (every sample's first segment) the read is exactly zero, not a softmax over nothing: the weights of empty
slots are set to zero after the softmax, so the first segment runs as the bare backbone and no NaN reaches any
gradient.

What the reference leaves open, and memlm's choices:
- Which states, and where the read goes: block l's output. The read is added to it (beside the block, not into its
  attention) and the query is taken from it; the memory vector is the mean of the same output after the read, the
  state the block hands on. So queries and memories live in one space, and what a segment read from older memories
  is part of what it writes: a memory is not cut off from the text before the store's window. Trained on memorize
  with segments [1, 2, 4] for 300 steps (memory_size 32), the model answers all of 100 test samples at 34 and at
  64 segments, where the fact's segment has left the store.
- Keys and values: the memory vectors themselves, as in the reference (`projections=false`, the default). With
  `projections=true`, learned W_K and W_V, starting as the identity so that training starts from the same read,
  match and carry `W_K M` and `W_V M` instead. They made no difference we could measure: after the same 300 steps,
  validation accuracy at 2 and 4 segments was 1.000 / 1.000 with and without them on memorize, and on detect (the
  fact at a random sentence boundary, so the read must choose the right segment's memory) 0.957 / 0.785 with and
  0.961 / 0.867 without, one seed each. A segment's mean blurs a single fact among its other tokens, yet training
  finds means from which the fact can be read without them.
- The gate: one learned value per channel, `gate_bias` at initialisation, 0 by default: half open. The read's
  gradient is scaled by the gate, and a nearly closed start learns later: on memorize, after 100 steps on 2
  segments, a half-open start answered 0.996 of the 2-segment validation samples and `gate_bias=-4` (sigmoid 0.018)
  0.266, reaching 0.992 only 100 steps further on. A pretrained backbone may still want the closed start, to keep
  its function while the read learns.
- `layers` chooses the blocks that read and write memory (default: all); `memory_size` bounds the store.
- A segment that is all padding writes nothing: the sample's store stays as it was.
- Gradients: the reference keeps the long-range path apart from the local one; here the two are separate sums in
  every block, and how far gradients flow back through the store is the segment loop's `recurrence.bptt_depth`,
  as for every head.

As in memlm's other layer heads, the store is the recurrent state (per sample, reset for every document, detached
by the segment loop at the truncation point), not a module attribute, and the backbone is not forked: inside
`LRMT.forward` the block interceptors (`Backbone.intercepting` on `Backbone.blocks`, GPT-2's `h` or Llama's
`layers`) add the reads. The store is float32 and the read runs in float32 with autocast off, whatever the
backbone's precision, as ARMT's does: a memory vector, a mean over a segment's tokens, is kept at full precision
rather than rounded to bfloat16's 8 significant bits every time it is stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import Cache

from memlm.backbones import Backbone
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput, memory_layers


def identity_projection(size: int) -> nn.Linear:
    projection = nn.Linear(size, size, bias=False)
    nn.init.eye_(projection.weight)
    return projection


def pooled(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The float32 mean of (batch, positions, d) states over each sample's unpadded positions; zero for a sample
    with none."""
    mask = attention_mask.bool().unsqueeze(-1)
    total = torch.where(mask, states.float(), 0.0).sum(dim=1)
    return total / mask.sum(dim=1).clamp_min(1)


def remember(state: MemoryState, vectors: torch.Tensor, wrote: torch.Tensor) -> MemoryState:
    """The store after this segment: each sample that `wrote` (batch,) appends its vectors (batch, layers, d) and
    drops its oldest slot; the others keep their store as it was."""
    memories, valid = state["memories"], state["valid"]
    appended = torch.cat([memories[:, :, 1:], vectors.unsqueeze(2)], dim=2)
    appended_valid = torch.cat([valid[:, 1:], valid.new_ones(valid.shape[0], 1)], dim=1)
    return {
        "memories": torch.where(wrote[:, None, None, None], appended, memories),
        "valid": torch.where(wrote[:, None], appended_valid, valid),
    }


class LayerRead(nn.Module):
    """One layer's gated cross-attention from the tokens to the stored memory vectors."""

    def __init__(self, hidden_size: int, projections: bool, gate_bias: float):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key = identity_projection(hidden_size) if projections else nn.Identity()
        self.value = identity_projection(hidden_size) if projections else nn.Identity()
        self.gate = nn.Parameter(torch.full((hidden_size,), float(gate_bias)))

    def forward(self, hidden: torch.Tensor, memories: torch.Tensor, valid: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden states (batch, positions, d) with each position's gated read of the memories (batch, slots, d)
        added, and the read's weights (batch, positions, slots); `valid` (batch, slots) marks the slots that hold a
        memory."""
        with torch.autocast(hidden.device.type, enabled=False):
            dtype = self.query.weight.dtype
            queries = self.query(hidden.to(dtype)).float()
            stored = memories.to(dtype)
            keys, values = self.key(stored).float(), self.value(stored).float()
            scores = queries @ keys.transpose(1, 2) / math.sqrt(keys.shape[-1])
            empty = ~valid.unsqueeze(1)
            # The dtype's minimum, not -inf: a row of -inf softmaxes to NaN. Zeroing afterwards gives an empty
            # store's uniform weights no say, so it reads exactly zero whatever its slots hold.
            weights = scores.masked_fill(empty, torch.finfo(scores.dtype).min).softmax(dim=-1).masked_fill(empty, 0.0)
            read = torch.sigmoid(self.gate.float()) * (weights @ values)
        return hidden + read.to(hidden.dtype), weights


class LRMT(MemoryHead):
    def __init__(self, backbone: Backbone, memory_size: int = 32, layers: Sequence[int] | None = None,
                 projections: bool = False, gate_bias: float = 0.0):
        """`layers`: the indices of the blocks that read and write memory; None: all of them."""
        super().__init__(backbone)
        if not backbone.is_decoder:
            raise ValueError("model=lrmt needs a decoder backbone (backbone.kind=causal): its memory is read inside "
                             "decoder blocks, and an encoder's segment framing (CLS, SEP) is not built for it")
        if memory_size < 1:
            raise ValueError(f"model.memory_size={memory_size} must be at least 1: the store keeps that many past "
                             "segments' memory vectors")
        self.memory_size = memory_size
        self.layers = memory_layers(backbone, layers)
        self.slot_of_block = {block: slot for slot, block in enumerate(self.layers)}
        self.reads = nn.ModuleList(LayerRead(backbone.hidden_size, projections, gate_bias) for _ in self.layers)

    def initial_state(self, batch_size: int) -> MemoryState:
        device = self.reads[0].gate.device
        shape = (batch_size, len(self.layers), self.memory_size, self.backbone.hidden_size)
        return {
            "memories": torch.zeros(shape, device=device),  # (batch, layers, slots, d), oldest slot first
            "valid": torch.zeros(batch_size, self.memory_size, dtype=torch.bool, device=device),
        }

    def extra_positions(self) -> int:
        return 0  # memory lives beside attention, not in the sequence

    caches_open_segment = True

    def extend(self, input_ids: torch.Tensor, state: MemoryState, cache: Cache) -> torch.Tensor:
        def read(index: int, block_input: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor | None:
            if index not in self.slot_of_block:
                return None
            slot = self.slot_of_block[index]
            return self.reads[slot](hidden, state["memories"][:, slot], state["valid"])[0]

        with self.backbone.intercepting(after=read):
            return self.backbone(self.backbone.embed(input_ids), cache=cache)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState,
                token_embeddings: torch.Tensor | None = None) -> SegmentOutput:
        slot_of_block = self.slot_of_block
        memories, valid = state["memories"], state["valid"]
        layer_states: list[torch.Tensor | None] = [None] * len(self.layers)
        read_weights: list[torch.Tensor | None] = [None] * len(self.layers)

        def read(index: int, block_input: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor | None:
            if index not in slot_of_block:
                return None
            slot = slot_of_block[index]
            layer_states[slot], read_weights[slot] = self.reads[slot](hidden, memories[:, slot], valid)
            return layer_states[slot]

        with self.backbone.intercepting(after=read):
            hidden = self.backbone(self.embed_tokens(input_ids, token_embeddings), attention_mask)
        vectors = torch.stack([pooled(states, attention_mask) for states in layer_states], dim=1)
        next_state = remember(state, vectors, attention_mask.bool().any(dim=1))
        # Kept for plots (scripts/plot_attention.py): (batch, memory layers, positions, slots), oldest slot first.
        return SegmentOutput(hidden, hidden[:, -1], next_state, {"read_weights": torch.stack(read_weights, dim=1)})
