"""Extended Mind Transformer (Klett & Ahle 2024): a pretrained decoder attends to its own past keys and values.

Training-free. Every segment's keys and values, in each chosen layer and as that layer's attention sees them, go
into an external memory once the segment has been read. In those layers every query of a later segment also
attends to its top-k memory keys by cosine similarity, concatenated with the segment's own keys before one softmax:

    scores = (K_mem / |K_mem|) (q / |q|),   the k best per query and head: K_sel, V_sel
    out    = softmax(q [K_sel ; K_local]ᵀ · scaling) [V_sel ; V_local]

(`scaling` is the layer's own, 1/√d for both families). With `similarity_threshold` a retrieved memory whose
cosine is below it is masked out of the softmax (the authors' `mask_by_sim`, 0.25). A query with grouped key and
value heads (Llama's GQA) retrieves from its own group's keys. The head adds no parameters: it runs any
pretrained decoder as it is, and still trains through the usual loop (gradients reach the backbone through the
queries, the local keys and values, and the softmax over both).

Causal by construction: a segment reads only memory that earlier segments wrote, and its own keys enter the
memory only after it has been read. The memory is the recurrent state (per sample, empty at every document's
start), never a module attribute: per chosen layer, keys and values (batch, kv_heads, slots, head_dim), up to
`memory_size` tokens, first in first out; padding is never stored. It is written detached, as the authors'
memory is computed without gradients: `recurrence.bptt_depth` therefore changes nothing for this head. While a
sample's memory is empty its softmax runs over its own keys only (the retrieved slots get zero weight), and a
segment before which no sample has any memory runs the backbone's own attention unchanged.

Rotary positions (Llama family; GPT-2's learned absolute positions are added to the input and need nothing).
memlm runs every segment at positions 0..S-1, and the seam hands keys over after rotary, so a cached key carries
its position inside its own segment. `memory_positions` chooses where a retrieved key sits for the query:
- `original`: as cached. The query at p sees the key at distance p - j, j its position in its old segment, which
  is negative when j > p: the key looks like a future token.
- `segment_start` (the authors' choice): the key at position 0. Their memory holds keys cached before rotary
  (`src/llama/modeling.py` rotates after reading its cache, and the long-range memory skips rotary altogether),
  so a retrieved key has no rotation, which is rotary's position 0: at distance p from the query at p, where the
  segment's first token sits. memlm un-rotates each key once, when it is written.
- `query`: the key at the query's own position (distance 0), so retrieval and attention compare contents alone,
  free of position: both query and key are un-rotated.
The selection's cosine uses the same query and key as the attention, so it also depends on the choice (the
authors select with the rotated query against un-rotated keys, as `segment_start` does).
Measured on SmolLM2-135M, no training, one CPU thread: a fact in one segment ("The secret password of the blue
door is pineapple." and a filler sentence) and the question in the next ("... The secret password of the blue
door is");
the probability of " pineapple" next is 0.56 with `segment_start`, 1.7e-4 with `query`, 4.0e-4 with `original`,
1.3e-6 for the second segment read alone and 0.66 for both segments read at once as one. With
`similarity_threshold=0.25`, as the authors' `mask_by_sim`, it falls to 1.4e-5 (`segment_start`): SmolLM2's
query-key cosines are mostly below 0.25, so the threshold masks the memory that answers; hence no threshold by
default (the authors' own retrieval runs keep `mask_by_sim` off). `python scripts/extended_mind_positions.py`
reproduces these; BABILong figures are in the README.

Citations: with `citations=True` (or the attribute set on a built head) each segment's output carries
`diagnostics["citations"]`, per chosen layer the document positions (token index from the document's start) of the
memories each query retrieved, (batch, heads, positions, k), -1 where a slot was empty or masked by the
threshold. Off by default, so an ordinary forward keeps no indices.

Where memlm departs from the authors' code, and why:
- The memory is written segment by segment while the text is read, by the same forward that reads it (with
  retrieval on), instead of a separate pass over a given document; so it is a recurrent memory like memlm's other
  heads, and a BABILong sample is read as any head reads it.
- Special tokens are kept in memory (the authors can drop them): memlm's prompts hold none but padding, which is
  never stored.
- Exact top-k over the sample's own memory, no FAISS index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from memlm.backbones import Backbone
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput, memory_layers

POSITIONS = ("original", "segment_start", "query")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backwards: bool = False) -> torch.Tensor:
    """x (batch, heads, positions, d) turned by rotary's angles at each position (cos, sin: (positions, d)), or
    back by them."""
    return x * cos + rotate_half(x) * (-sin if backwards else sin)


def document_positions(state: MemoryState, mask: torch.Tensor) -> torch.Tensor:
    """Each of the segment's positions as a token index from the document's start (padding does not count)."""
    return state["read"].unsqueeze(1) + mask.long().cumsum(dim=1) - 1


def remember(state: MemoryState, keys: list[torch.Tensor], values: list[torch.Tensor], mask: torch.Tensor,
             capacity: int) -> MemoryState:
    """The memory after a segment: its unpadded tokens appended after each sample's stored ones, the oldest
    dropped beyond `capacity` tokens; every tensor detached."""
    valid = torch.cat([state["valid"], mask.bool()], dim=1)
    positions = torch.cat([state["positions"], document_positions(state, mask)], dim=1)
    width = min(capacity, valid.shape[1])
    # A stable sort puts each sample's empty slots first and keeps its stored tokens in order: the last `width`
    # are its newest tokens, and any empty slots before them.
    keep = valid.long().argsort(dim=1, stable=True)[:, -width:]

    def kept(tensor: torch.Tensor) -> torch.Tensor:
        index = keep[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[-1])
        return tensor.gather(2, index)

    return {
        "keys": tuple(kept(torch.cat([old, new.detach().to(old.dtype)], dim=2))
                      for old, new in zip(state["keys"], keys, strict=True)),
        "values": tuple(kept(torch.cat([old, new.detach().to(old.dtype)], dim=2))
                        for old, new in zip(state["values"], values, strict=True)),
        "valid": valid.gather(1, keep),
        "positions": positions.gather(1, keep),
        "read": state["read"] + mask.long().sum(dim=1),
    }


def attend_with_memory(query, key, value, allowed, memory_query, memory_keys, memory_values, memory_valid,
                       topk: int, threshold: float | None, scaling: float, dropout: float, training: bool):
    """One softmax over each query's top-k memories and its own segment's keys.

    query (b, H, S, d) meets the segment's key, value (b, KV, S, d) where `allowed` (b, 1, S, S) lets it;
    memory_query (b, H, S, d), the same query placed for the memory (`memory_positions`), chooses among and
    meets memory_keys, memory_values (b, KV, M, d) where memory_valid (b, M). Returns the output (b, S, H, d)
    and the chosen slots (b, H, S, k), -1 where a slot was empty or below the threshold.
    """
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    q, mq = query.float(), memory_query.float()
    grouped = mq.reshape(batch, key.shape[1], groups * length, dim)
    similarity = F.normalize(grouped, dim=-1) @ F.normalize(memory_keys.float(), dim=-1).transpose(2, 3)
    similarity = similarity.reshape(batch, heads, length, -1)
    similarity = similarity.masked_fill(~memory_valid[:, None, None, :], -math.inf)
    best, slots = similarity.topk(min(topk, similarity.shape[-1]), dim=-1)
    used = best > -math.inf
    if threshold is not None:
        used &= best >= threshold
    # Heads are grouped contiguously (head h reads key head h // groups), so the chosen slots of a key head's
    # query heads index its memory directly: no copy of the memory per query head.
    flat = slots.reshape(batch, key.shape[1], -1, 1).expand(-1, -1, -1, dim)
    chosen_keys = memory_keys.float().gather(2, flat).reshape(batch, heads, length, -1, dim)
    chosen_values = memory_values.float().gather(2, flat).reshape(batch, heads, length, -1, dim)

    local_keys = key.float().repeat_interleave(groups, dim=1)
    local_values = value.float().repeat_interleave(groups, dim=1)
    floor = torch.finfo(torch.float32).min
    memory_scores = torch.einsum("bhsd,bhskd->bhsk", mq, chosen_keys) * scaling
    local_scores = (q @ local_keys.transpose(2, 3)) * scaling
    scores = torch.cat([memory_scores.masked_fill(~used, floor), local_scores.masked_fill(~allowed, floor)], dim=-1)
    weights = F.dropout(scores.softmax(dim=-1), p=dropout, training=training)
    from_memory, local = weights.split([memory_scores.shape[-1], length], dim=-1)
    out = torch.einsum("bhsk,bhskd->bhsd", from_memory, chosen_values) + local @ local_values
    return out.transpose(1, 2).to(value.dtype), slots.masked_fill(~used, -1)


class ExtendedMind(MemoryHead):
    size_key = "model.memory_size"

    def __init__(self, backbone: Backbone, memory_size: int = 4096, topk: int = 12,
                 similarity_threshold: float | None = None, layers: Sequence[int] | None = None,
                 memory_positions: str = "segment_start", citations: bool = False):
        """`layers`: the indices of the blocks that retrieve; None: all of them."""
        super().__init__(backbone)
        if not backbone.is_decoder:
            raise ValueError("model=extended_mind needs a decoder backbone (backbone.kind=causal): its memory holds "
                             "causal attention's keys and values")
        if memory_size < 1:
            raise ValueError(f"model.memory_size={memory_size} must be at least 1: the memory keeps that many past "
                             "tokens per layer")
        if topk < 1:
            raise ValueError(f"model.topk={topk} must be at least 1: the memories each query retrieves")
        if similarity_threshold is not None and not -1 <= similarity_threshold <= 1:
            raise ValueError(f"model.similarity_threshold={similarity_threshold} must be a cosine in [-1, 1], or "
                             "null to keep every retrieved memory")
        if memory_positions not in POSITIONS:
            raise ValueError(f"model.memory_positions={memory_positions!r} is not one of {POSITIONS}")
        self.memory_size = memory_size
        self.topk = topk
        self.threshold = similarity_threshold
        self.layers = memory_layers(backbone, layers)
        self.slot_of_block = {block: slot for slot, block in enumerate(self.layers)}
        self.memory_positions = memory_positions
        self.citations = citations
        self.rotary = getattr(backbone.model.base_model, "rotary_emb", None)
        if self.rotary is not None and memory_positions != "original" and self.rotary.attention_scaling != 1.0:
            # Un-rotating divides out only the angle; a scaled rotary (YaRN, LongRoPE) also scales the key.
            raise ValueError(f"model.memory_positions={memory_positions!r} re-rotates keys, which this backbone's "
                             f"scaled rotary ({self.rotary.rope_type}) does not allow: use "
                             "model.memory_positions=original")
        config = backbone.model.config
        self.kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def initial_state(self, batch_size: int) -> MemoryState:
        weight = self.backbone.embedding.weight
        empty = weight.new_zeros(batch_size, self.kv_heads, 0, self.head_dim)
        return {
            "keys": tuple(empty for _ in self.layers),
            "values": tuple(empty for _ in self.layers),
            "valid": torch.zeros(batch_size, 0, dtype=torch.bool, device=weight.device),
            "positions": torch.zeros(batch_size, 0, dtype=torch.long, device=weight.device),
            "read": torch.zeros(batch_size, dtype=torch.long, device=weight.device),
        }

    def extra_positions(self) -> int:
        return 0  # memory lives inside attention, not in the sequence

    def rotary_angles(self, length: int, device: torch.device, dtype: torch.dtype):
        """cos and sin of rotary's angles at positions 0..length-1, (length, head_dim)."""
        positions = torch.arange(length, device=device)[None]
        cos, sin = self.rotary(torch.empty(0, device=device, dtype=dtype), positions)
        return cos[0], sin[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState,
                token_embeddings: torch.Tensor | None = None) -> SegmentOutput:
        length = input_ids.shape[1]
        has_memory = bool(state["valid"].any())
        unrotate = self.rotary is not None and self.memory_positions != "original"
        angles = self.rotary_angles(length, input_ids.device, torch.float32) if unrotate else None
        causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
        written_keys: list[torch.Tensor | None] = [None] * len(self.layers)
        written_values: list[torch.Tensor | None] = [None] * len(self.layers)
        cited: dict[int, torch.Tensor] = {}

        def attention(module, query, key, value, mask, attend, **kwargs):
            slot = self.slot_of_block.get(module.layer_idx)
            if slot is None:
                return attend(module, query, key, value, mask, **kwargs)
            written_keys[slot] = rotated(key.float(), *angles, backwards=True) if unrotate else key
            written_values[slot] = value
            if not has_memory:
                return attend(module, query, key, value, mask, **kwargs)
            at_query = unrotate and self.memory_positions == "query"
            reading = rotated(query.float(), *angles, backwards=True) if at_query else query
            scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
            output, slots = attend_with_memory(
                query, key, value, allowed, reading, state["keys"][slot], state["values"][slot], state["valid"],
                self.topk, self.threshold, scaling, kwargs.get("dropout", 0.0), module.training)
            if self.citations:
                cited[slot] = slots
            return output, None

        with self.backbone.attending(attention):
            hidden = self.backbone(self.embed_tokens(input_ids, token_embeddings), attention_mask)
        next_state = remember(state, written_keys, written_values, attention_mask, self.memory_size)
        diagnostics = {}
        if self.citations:
            diagnostics["citations"] = {
                self.layers[slot]: torch.where(slots >= 0, state["positions"].gather(
                    1, slots.clamp_min(0).flatten(1)).view_as(slots), -1)
                for slot, slots in cited.items()}
        return SegmentOutput(hidden, hidden[:, -1], next_state, diagnostics)
