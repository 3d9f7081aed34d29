"""Forward FLOPs and training activation memory of a memory model, against one full-attention pass.

A memory model reads L tokens in segments of S, each run through the backbone with m more positions (the head's
memory or special tokens, `MemoryHead.extra_positions()`: 2m for RMT's decoder form). Attention is quadratic only
inside a segment, so its cost grows linearly with L; one full-attention pass over the same L tokens pays L² in its
attention. Everything here is counted from a transformers config's shape, per sample, for one forward pass.

FLOPs, a multiply-add counted as 2 (as `torch.utils.flop_counter` does). Per layer, over one attention window of n
positions, with d the hidden size, q = heads x head_dim, k = kv_heads x head_dim (GQA: k < q), f the MLP width:
- projections: 2n (d(q + 2k) + qd + c d f), c = 2 matrices for a GELU/ReLU MLP, 3 for SwiGLU;
- attention: 4n²q, the scores QKᵀ (2n²q) and the weighted values (2n²q) over the dense n x n square, as eager and
  math attention compute it before or regardless of the causal mask. That is what torch's counter measures, and
  what RMT's published ratios imply (counting half the square about halves them); a causal flash kernel skips
  about half;
- the LM head: 2dV per scored token, only where a next-token prediction is needed (every token for language
  modelling, the answer's tokens for a question, none for a classifier), the same in both models.
Memory model: floor(L/S) windows of S + m positions and one of r + m for the r tokens left over, plus the LM head.
Full attention: one window of L positions plus the LM head. Left out, as torch's counter leaves them out too:
embedding lookups (no arithmetic), norms, softmax, activation functions, biases and residual adds (O(nd) elementwise
work). Also left out, a head's own compute beyond its positions: RMT's write gate, HMT's summary pass (a second
backbone window of j + 2 positions per segment), the memory reads and writes of LM2 and ARMT.

Backward is counted as twice the forward, the usual rule (Kaplan et al. 2020): every forward matmul y = xW needs
two of its size in backward, ∂x = ∂y Wᵀ and ∂W = xᵀ ∂y. Recomputation (memlm's `recurrence.recompute`, flash
attention's backward) runs part of the forward again on top.

Activation memory, the values each layer keeps for backward (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", §4.1, without dropout). Per layer and position of an n-position window:
- 2d: the inputs of the two norms;
- d + q + 2k + q: the QKV projection's input, Q, K, V, and the output projection's input;
- h n: the softmaxed scores of the h heads, kept by eager and math attention; a flash or memory-efficient kernel
  keeps h (one log-sum-exp per row) instead and recomputes the scores in backward;
- d + 2f for a GELU/ReLU MLP (its input, the activation's input and output), d + 4f for SwiGLU (its input, the gate
  projection's output and its activation, the up projection's output, their product).
For GPT-2's shape (q = k = d, f = 4d) in 2-byte values that is 32nd + 2hn² bytes per layer and sample: Korthikanti's
34nd + 5hn² with dropout's masks and outputs taken out (memlm's configs set dropout to 0). The LM head's logits add
V values per scored token. Left out: parameters, gradients and optimizer state; the final norm and the embeddings'
output; framework temporaries (Llama's RMSNorm and rotary embeddings keep a few more d-wide tensors, and eager GQA
keeps K and V repeated to every query head: measured 9-21% above this count for a 2-layer d=64 Llama); a float32
copy of the logits that the loss may keep; and the memory state (m x d values per sample).

A memory model holds the activations of the segments whose graph is alive at once: all of them under one plain
backward (full BPTT, memlm's default `recurrence.bptt_depth=-1`), the last k under memlm's chunked truncated BPTT
with depth k, so its training memory is linear in L, or constant. Full attention holds one L-position window.
"""

from __future__ import annotations

from dataclasses import dataclass

GATED_MLP = {"gpt2": False, "opt": False, "bert": False, "llama": True, "mistral": True, "qwen2": True, "qwen3": True}
"""Families whose shape these estimates know, and whether their MLP is gated (SwiGLU: gate, up and down matrices)
or two matrices around an activation."""


@dataclass(frozen=True)
class TransformerShape:
    """The sizes the estimates read from a transformers config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_width: int
    gated_mlp: bool
    vocab: int

    @property
    def query_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def key_width(self) -> int:
        return self.kv_heads * self.head_dim


def transformer_shape(config) -> TransformerShape:
    """The shape of a transformers config (`PretrainedConfig`) of a family in `GATED_MLP`.

    transformers maps GPT-2's n_layer, n_embd and n_head to the common names; the MLP width is Llama's and BERT's
    `intermediate_size`, OPT's `ffn_dim` or GPT-2's `n_inner` (None there means 4d). Tied or untied embeddings
    change the parameter count, not the FLOPs: the LM head is a d x V matmul either way.
    """
    if config.model_type not in GATED_MLP:
        raise ValueError(f"memlm.flops knows the shapes of {sorted(GATED_MLP)}, not model_type="
                         f"{config.model_type!r}: add the family to memlm.flops.GATED_MLP")
    hidden, heads = config.hidden_size, config.num_attention_heads
    widths = (getattr(config, key, None) for key in ("intermediate_size", "ffn_dim", "n_inner"))
    return TransformerShape(
        layers=config.num_hidden_layers,
        hidden=hidden,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or hidden // heads,
        mlp_width=next((width for width in widths if width), 4 * hidden),
        gated_mlp=GATED_MLP[config.model_type],
        vocab=config.vocab_size,
    )


def projection_flops(shape: TransformerShape, positions: int) -> int:
    """Every layer's weight matmuls over `positions` positions: Q, K, V, the output projection and the MLP."""
    d = shape.hidden
    mlp_matrices = 3 if shape.gated_mlp else 2
    attention = d * (shape.query_width + 2 * shape.key_width) + shape.query_width * d
    per_position = attention + mlp_matrices * d * shape.mlp_width
    return 2 * shape.layers * positions * per_position


def attention_flops(shape: TransformerShape, positions: int) -> int:
    """Every layer's scores and weighted values over one window, dense: 2 n² q each."""
    return 2 * 2 * shape.layers * positions**2 * shape.query_width


def window_flops(shape: TransformerShape, positions: int) -> int:
    """The backbone's layers over one attention window of `positions` positions (no LM head)."""
    return projection_flops(shape, positions) + attention_flops(shape, positions)


def lm_head_flops(shape: TransformerShape, scored_tokens: int) -> int:
    """Next-token logits for `scored_tokens` tokens: one d x V matmul per token."""
    return 2 * scored_tokens * shape.hidden * shape.vocab


def memory_model_flops(shape: TransformerShape, length: int, segment_length: int, memory_positions: int,
                       scored_tokens: int) -> int:
    """Forward FLOPs of reading `length` tokens in segments of `segment_length`, each window widened by
    `memory_positions`, with next-token logits for `scored_tokens` of them."""
    segments, rest = divmod(length, segment_length)
    flops = segments * window_flops(shape, segment_length + memory_positions)
    if rest:
        flops += window_flops(shape, rest + memory_positions)
    return flops + lm_head_flops(shape, scored_tokens)


def full_attention_flops(shape: TransformerShape, length: int, scored_tokens: int) -> int:
    """Forward FLOPs of one pass over all `length` tokens, with next-token logits for `scored_tokens` of them."""
    return window_flops(shape, length) + lm_head_flops(shape, scored_tokens)


def backward_flops(forward_flops: int) -> int:
    """The usual rule: two matmuls of each forward matmul's size, for the input's and the weight's gradient."""
    return 2 * forward_flops


def window_activation_bytes(shape: TransformerShape, positions: int, bytes_per_value: int = 2,
                            stores_scores: bool = True) -> int:
    """Bytes every layer keeps for backward over one window of `positions`; `stores_scores=False` for a flash or
    memory-efficient attention kernel, which keeps one log-sum-exp per row and head instead of the scores."""
    d = shape.hidden
    norms = 2 * d
    attention = d + 2 * shape.query_width + 2 * shape.key_width
    scores = shape.heads * (positions if stores_scores else 1)
    mlp = d + (4 if shape.gated_mlp else 2) * shape.mlp_width
    return shape.layers * positions * (norms + attention + scores + mlp) * bytes_per_value


def logit_bytes(shape: TransformerShape, scored_tokens: int, bytes_per_value: int = 2) -> int:
    """The logits the loss keeps for backward: V values per scored token."""
    return scored_tokens * shape.vocab * bytes_per_value


def memory_model_activation_bytes(shape: TransformerShape, segment_length: int, memory_positions: int,
                                  held_segments: int, scored_tokens: int, bytes_per_value: int = 2,
                                  stores_scores: bool = True) -> int:
    """Activations of the `held_segments` segments whose graph is alive at once, with the logits of the
    `scored_tokens` scored among them."""
    window = window_activation_bytes(shape, segment_length + memory_positions, bytes_per_value, stores_scores)
    return held_segments * window + logit_bytes(shape, scored_tokens, bytes_per_value)


def full_attention_activation_bytes(shape: TransformerShape, length: int, scored_tokens: int,
                                    bytes_per_value: int = 2, stores_scores: bool = True) -> int:
    """Activations of one pass over all `length` tokens, with the logits of `scored_tokens` of them."""
    return (window_activation_bytes(shape, length, bytes_per_value, stores_scores)
            + logit_bytes(shape, scored_tokens, bytes_per_value))
