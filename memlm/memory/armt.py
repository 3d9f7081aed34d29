"""Associative Recurrent Memory Transformer (Rodkin, Kuratov, Bulatov, Burtsev 2024).

RMT's segment recurrence with an associative memory in every chosen layer instead of memory tokens carried from
segment to segment. Each segment is `[tokens (S) ; memory tokens (m)]`, the m memory tokens a fixed learned
parameter; what flows between segments is, per layer l, a matrix A (d_key x d) and a normaliser z (d_key).

- Read, before layer l, for every position x (tokens and memory tokens alike):
  `x <- x + A φ(W_Q x) / (zᵀ φ(W_Q x) + eps)`. With A = 0 and z = 0, as every sample starts, the read is 0.
- Write, once the segment has been read, from the outputs m_i of layer l at the memory-token positions:
  k_i = φ(W_K m_i), v_i = W_V m_i, β_i = σ(W_β m_i), the value the memory already holds for that key
  v̄_i = A k_i / (zᵀ k_i + eps), and the delta rule `A <- A + Σ_i β_i (v_i − v̄_i) ⊗ k_i`: with β = 1, writing a
  key again replaces its value instead of adding to it. The normaliser counts only what is new about a key,
  `z <- z + Σ_i γ_i k_i` with γ_i = clip(1 − zᵀ k_i / ‖k_i‖², 0, 1), γ detached.
- φ is DPFP-ν (Schlag et al. 2021): with r = [relu(x), relu(−x)] (2 d_mem features), the products of r with r
  rolled by 1..ν places, concatenated: d_key = 2 ν d_mem non-negative features. Queries and keys are L2-normalised
  after φ, as in the authors' code. W_V starts at zero, so the memory holds nothing until training gives it values.

The memory tokens sit after the tokens, so a causal backbone lets them see the whole segment while no token sees
them: a token's prediction depends on its own segment and on what earlier segments wrote, never on a later token.
They take the positions after the segment's, as RMT's write memory does, and unlike RMT's they carry nothing from
segment to segment: every segment starts from the same learned tokens.

Where memlm departs from the authors' code, and why:
- A and z are the recurrent state (a tuple of per-layer (A, z) pairs, shaped per sample), not attributes of
  wrapped layers: every sample starts from an empty memory, the segment loop detaches it at the truncation point
  like any head's state, nothing is shared between DDP ranks or between a batch's samples, and a checkpoint holds
  only parameters.
- The backbone's code is not forked or wrapped: inside `ARMT.forward` the block interceptors
  (`Backbone.intercepting` on `Backbone.blocks`, GPT-2's `h` or Llama's `layers`) add the read to each memory
  layer's input and keep its output at the memory positions for the write.
- The read and write run in float32 with autocast off, and the state is float32 whatever the backbone's precision:
  z is a running sum over every segment that every read divides by, and in bfloat16 (8 significant bits) an entry
  past 256 no longer moves for an increment below 1.
- One memory head per layer (the authors' default); `layers` chooses which layers carry memory (the authors: all).
- Generation re-reads its open segment without committing it, so a segment is written once, when it is complete
  (`memlm.generation`); the authors switch writing off with a mode flag instead.

Foreign writes in training (`foreign_writes` = R, memlm's; 0, the default, is the paper's write). What loses a fact
over thousands of segments is the background's writes: each moves the fact's value a little wherever its key
overlaps the fact's, and 32-segment training holds too few of them for the loss to notice (README, ARMT: keeping A
as the fact's segment left it answers every sample). With R > 0, in training only, each memory that already holds
something also takes, by the same delta rule, the writes of the R samples after its own in the batch at the same
segment: R + 1 times the background writes per segment, so the keys, values and strengths learn to leave what a
memory holds alone. Another sample's writes stand for background only where facts open a sample (memorize: the
first segment, which an empty memory takes alone); where facts may come anywhere (detect, BABILong) they would
bring other samples' facts, so it is off by default. On memorize, R = 3 answers every sample from 8 to 32,768
segments on three CPU seeds of four, and loses the fourth past 512 (0.281 at a million tokens); trained in bf16 on
an H200, one seed of four (0.83-0.90 the others, against 0.63-1.00 with the paper's write; README, ARMT).

The gated write (`write="gated"`, memlm's; `"delta"` is the paper's). With the paper's write, β never learns to tell
the fact from background (0.41-0.50 on both, README): into an empty memory, where memorize's fact goes, the write
leaves `A = β k vᵀ` and `z = k`, so the read is β v and β's scale is interchangeable with the value's. The gated
write takes that freedom away and gives β a reason to close:
- values are unit vectors times a learned gain per layer, `v = g W_V m / ‖W_V m‖`, so how far a write moves the
  memory is set by β alone (W_V then starts random, since a zero vector has no direction);
- β = hardsigmoid(W_β m) = clip(W_β m / 6 + 1/2, 0, 1) instead of σ, so a closed write is exactly 0 and leaves A
  bit for bit, where σ only approaches 0 and a leak of 1e-4 per segment adds up over thousands (z stays the
  paper's, counting every key: counting only the keys written leaves it near 0 where the reads divide by it);
- `write_penalty` adds the mean β of every segment but the last, times this weight, to the training loss, as RMT's
  does for its gate: writing costs, so β stays open where the memory's content pays for it and closes elsewhere.
  0.01 by default (0.1 weakens the fact's write too: 0.906 at 512 segments on seed 0).
The delta rule, z and the reads are the paper's. On memorize every background write closes (β exactly 0 on
98-100% of them) while the fact's stays open (0.35 on average in the first layer), and four seeds of four answer
every sample at a million tokens, where the paper's write loses two of four by 4,096 segments; on detect four seeds
average 0.469 at 2,048 segments against the paper's write's 0.238. Off by default: on BABILong qa1 the small
default model learns to write nothing with it (β exactly 0 on every write, the facts' included; without the price,
one layer shut and the other open on every write, as hardsigmoid's gradient is 0 beyond its linear range), and
answers at 1k as a model without memory, where the paper's write learns a β that picks out the facts (README, ARMT).
The unit values are what closes background writes on memorize: with the paper's free values, the hard-sigmoid,
priced β learns qa1's writes, but its first memory layer then closes no background write, and one seed of four
loses a quarter of its facts by 4,096 segments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache

from memlm.backbones import Backbone
from memlm.memory.base import MemoryHead, MemoryState, SegmentOutput, memory_layers, pad_mask

EPS = 1e-5
"""Added to the normaliser of every read, so an empty memory (z = 0) reads 0 instead of 0/0."""

WRITES = ("delta", "gated")


def dpfp(x: torch.Tensor, nu: int) -> torch.Tensor:
    """DPFP-ν features of the last dimension: (..., d) -> (..., 2 ν d), all non-negative."""
    signed = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([signed * signed.roll(shift, dims=-1) for shift in range(1, nu + 1)], dim=-1)


def recall(matrix: torch.Tensor, normaliser: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """What the memory holds for each feature vector: `A φ / (zᵀ φ + eps)`.

    matrix (batch, d_key, d), normaliser (batch, d_key), features (batch, positions, d_key) -> (batch, positions, d).
    """
    numerator = features @ matrix
    denominator = (features @ normaliser.unsqueeze(-1)) + EPS
    return numerator / denominator


def associate(matrix: torch.Tensor, normaliser: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory after writing `values` under `keys` by the delta rule; (A, z) after the write.

    keys (batch, n, d_key) are feature vectors, values (batch, n, d), betas (batch, n, 1) in [0, 1].
    """
    previous = recall(matrix, normaliser, keys)
    matrix = matrix + keys.transpose(1, 2) @ (betas * (values - previous))
    covered = (keys @ normaliser.unsqueeze(-1)) / keys.square().sum(-1, keepdim=True).clamp_min(EPS)
    novelty = (1 - covered).clamp(0, 1).detach()
    return matrix, normaliser + (novelty * keys).sum(dim=1)


class LayerMemory(nn.Module):
    """The projections of one layer's associative memory: its read query, and the key, value and write strength
    of what the memory tokens write; `gated`: unit values times a learned gain and a hard-sigmoid β (the module's
    docstring), else the paper's."""

    def __init__(self, hidden_size: int, d_mem: int, nu: int, gated: bool = False):
        super().__init__()
        self.nu = nu
        self.gated = gated
        self.query = nn.Linear(hidden_size, d_mem, bias=False)
        self.key = nn.Linear(hidden_size, d_mem, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.strength = nn.Linear(hidden_size, 1)
        self.activation = F.hardsigmoid if gated else torch.sigmoid
        """β from W_β's output."""
        if gated:
            self.value_gain = nn.Parameter(torch.ones(()))
        else:
            nn.init.zeros_(self.value.weight)

    def features(self, projected: torch.Tensor) -> torch.Tensor:
        return F.normalize(dpfp(projected.float(), self.nu), dim=-1)

    def strengths(self, memory_states: torch.Tensor) -> torch.Tensor:
        """β of each memory token's write, (batch, m, 1) in [0, 1]."""
        with torch.autocast(memory_states.device.type, enabled=False):
            return self.activation(self.strength(memory_states.to(self.strength.weight.dtype))).float()

    def values(self, states: torch.Tensor) -> torch.Tensor:
        values = self.value(states).float()
        return F.normalize(values, dim=-1) * self.value_gain if self.gated else values

    def read(self, hidden: torch.Tensor, matrix: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
        """The hidden states with the memory's answer to each position's query added."""
        with torch.autocast(hidden.device.type, enabled=False):
            queries = self.features(self.query(hidden.to(self.query.weight.dtype)))
            return hidden + recall(matrix, normaliser, queries).to(hidden.dtype)

    def write(self, memory_states: torch.Tensor, matrix: torch.Tensor, normaliser: torch.Tensor,
              foreign_writes: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, z) after the memory tokens' states (batch, m, d) are written by the delta rule; with
        `foreign_writes` = R, each memory that already holds something also takes the writes of the R samples
        after its own, or of every other sample where the batch holds fewer (see the module's docstring)."""
        with torch.autocast(memory_states.device.type, enabled=False):
            states = memory_states.to(self.key.weight.dtype)
            keys = self.features(self.key(states))
            values = self.values(states)
            betas = self.strengths(states)
            count = min(foreign_writes, states.shape[0] - 1)
            if count:
                # A zero key writes nothing and counts nothing: an empty memory takes its own writes alone.
                receives = (normaliser > 0).any(dim=-1).to(keys.dtype).view(-1, 1, 1)
                keys = with_foreign(keys, count, receives)
                values = with_foreign(values, count)
                betas = with_foreign(betas, count)
            return associate(matrix, normaliser, keys, values, betas)


def with_foreign(own: torch.Tensor, count: int, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """`own` (batch, m, ...) followed, along the memory-token axis, by the same tensor of each of the `count`
    samples after each sample's in the batch (rolled round), times `scale`."""
    return torch.cat([own, *(own.roll(-shift, dims=0) * scale for shift in range(1, count + 1))], dim=1)


class ARMT(MemoryHead):
    size_key = "model.num_mem_tokens"

    def __init__(self, backbone: Backbone, num_mem_tokens: int = 4, d_mem: int = 32, nu: int = 3,
                 layers: Sequence[int] | None = None, foreign_writes: int = 0, write: str = "delta",
                 write_penalty: float | None = None):
        """`layers`: the indices of the blocks that carry memory; None: all of them. `foreign_writes`: in
        training, the other samples' writes each memory also takes per segment (module docstring); 0: none.
        `write`: "delta" (the paper's) or "gated" (module docstring); `write_penalty` None: 0.01 for a gated
        write, none for delta."""
        super().__init__(backbone)
        if not backbone.is_decoder:
            raise ValueError("model=armt needs a decoder backbone (backbone.kind=causal): its memory tokens follow "
                             "the segment and are written from what causal attention lets them see")
        if num_mem_tokens < 1:
            raise ValueError(f"model.num_mem_tokens={num_mem_tokens} must be at least 1: the memory tokens are "
                             "what writes the memory")
        if d_mem < 2:
            raise ValueError(f"model.d_mem={d_mem} must be at least 2")
        if not 1 <= nu < d_mem:
            # Rolled by d_mem places, relu(x_i) meets relu(-x_i): their product is always zero.
            raise ValueError(f"model.nu={nu} must be between 1 and model.d_mem - 1 = {d_mem - 1}")
        if foreign_writes < 0:
            raise ValueError(f"model.foreign_writes={foreign_writes} must be 0 (none) or more")
        if write not in WRITES:
            raise ValueError(f"model.write={write!r} is not one of {WRITES}")
        if write_penalty is None:
            write_penalty = 0.01 if write == "gated" else 0.0
        if write_penalty < 0 or (write_penalty and write != "gated"):
            raise ValueError(f"model.write_penalty={write_penalty} must be 0, or positive with model.write=gated")
        self.write_penalty = write_penalty
        self.num_mem_tokens = num_mem_tokens
        self.foreign_writes = foreign_writes
        self.d_key = 2 * nu * d_mem
        self.layers = memory_layers(backbone, layers)
        self.slot_of_block = {block: slot for slot, block in enumerate(self.layers)}
        self.memory = self.embedding_scaled(num_mem_tokens, backbone.hidden_size)
        self.memories = nn.ModuleList(LayerMemory(backbone.hidden_size, d_mem, nu, gated=write == "gated")
                                      for _ in self.layers)

    def initial_state(self, batch_size: int) -> MemoryState:
        device = self.memory.device
        return tuple(
            (torch.zeros(batch_size, self.d_key, self.backbone.hidden_size, device=device),
             torch.zeros(batch_size, self.d_key, device=device))
            for _ in self.layers
        )

    def extra_positions(self) -> int:
        return self.num_mem_tokens

    caches_open_segment = True

    def extend(self, input_ids: torch.Tensor, state: MemoryState, cache: Cache) -> torch.Tensor:
        with self.backbone.intercepting(before=self._reading(state)):
            return self.backbone(self.backbone.embed(input_ids), cache=cache)

    writes_from_cache = True

    def written_from_cache(self, state: MemoryState, cache: Cache) -> MemoryState:
        memory_tokens = self._memory_tokens(state[0][0].shape[0], self.backbone.embedding.weight.dtype)
        return self._read_and_written(memory_tokens, None, state, cache)[1]

    def _memory_tokens(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.memory.to(dtype).unsqueeze(0).expand(batch, -1, -1)

    def _read_and_written(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None, state: MemoryState,
                          cache: Cache | None = None) -> tuple[torch.Tensor, MemoryState, list[torch.Tensor]]:
        """The backbone's hidden states over `inputs`, whose last m positions are the memory tokens, with the
        memory read before each memory layer; the memory those positions' outputs write; and those outputs, per
        memory layer."""
        m = self.num_mem_tokens
        memory_outputs: list[torch.Tensor | None] = [None] * len(self.layers)

        def keep_memory_outputs(index: int, block_input: torch.Tensor, hidden: torch.Tensor) -> None:
            if index in self.slot_of_block:
                memory_outputs[self.slot_of_block[index]] = hidden[:, -m:]

        with self.backbone.intercepting(before=self._reading(state), after=keep_memory_outputs):
            hidden = self.backbone(inputs, attention_mask, cache=cache)
        foreign = self.foreign_writes if self.training else 0
        written = tuple(memory.write(memory_outputs[i], *state[i], foreign_writes=foreign)
                        for i, memory in enumerate(self.memories))
        return hidden, written, memory_outputs

    def _reading(self, state: MemoryState):
        """The block interceptor that adds each memory layer's read to that block's input."""

        def add_read(index: int, hidden: torch.Tensor) -> torch.Tensor | None:
            if index not in self.slot_of_block:
                return None
            slot = self.slot_of_block[index]
            return self.memories[slot].read(hidden, *state[slot])

        return add_read

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, state: MemoryState,
                token_embeddings: torch.Tensor | None = None) -> SegmentOutput:
        m = self.num_mem_tokens
        tokens = self.embed_tokens(input_ids, token_embeddings)
        inputs = torch.cat([tokens, self._memory_tokens(tokens.shape[0], tokens.dtype)], dim=1)
        hidden, next_state, memory_outputs = self._read_and_written(inputs, pad_mask(attention_mask, 0, m), state)
        token_states = hidden[:, :-m]
        return SegmentOutput(token_states, token_states[:, -1], next_state, penalty=self._penalty(memory_outputs))

    def _penalty(self, memory_outputs: list[torch.Tensor]) -> torch.Tensor | None:
        """The price of this segment's writes in training: `write_penalty` times the mean β over memory layers
        and tokens."""
        if not (self.write_penalty and self.training):
            return None
        strengths = [memory.strengths(states) for memory, states in zip(self.memories, memory_outputs, strict=True)]
        return self.write_penalty * torch.cat(strengths, dim=1).mean()
