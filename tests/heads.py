"""The heads the tests run: one row per `conf/model/*.yaml`, sized small enough for every test that uses it.

A new head needs one row here, and `tests/test_heads.py` fails until it has one; the tests that run every head
(causality, generation, training, language modelling, chunked backward, state-dict round trip) then cover it.
Sizes fit the shortest segments these tests use (6 tokens): HMT's summary reads at most a segment (j <= L) and its
sensory memory is shorter than one (k < L).
"""

import torch
from hydra.utils import instantiate

from memlm.backbones import Backbone, load_backbone
from memlm.memory import MemoryHead
from tests.conftest import compose_train

HEADS = {
    "baseline": ["model=baseline"],
    "rmt": ["model=rmt", "model.num_mem_tokens=2"],
    "hmt": ["model=hmt", "model.sensory_tokens=2", "model.summary_tokens=3", "model.cache_size=4"],
    "lm2": ["model=lm2", "model.memory_slots=4"],
    "armt": ["model=armt", "model.num_mem_tokens=2", "model.d_mem=8", "model.nu=2"],
    "lrmt": ["model=lrmt", "model.memory_size=2"],
    # No parameters of its own, and its memory is written detached: the state-dict round trip carries only the
    # backbone, and a chunked backward matches one plain backward because nothing flows between segments.
    "extended_mind": ["model=extended_mind", "model.memory_size=8", "model.topk=2"],
}
"""Head name (the stem of its `conf/model/*.yaml`) -> the Hydra overrides that select it at test size."""


def tiny_gpt2(n_positions: int = 64) -> Backbone:
    """A 2-layer d=32 GPT-2-shaped backbone from seed 0, without dropout as conf/backbone's tiny models are: a test
    that trains leaves a module-scoped backbone in training mode, and another test's two forward passes must still
    agree, whichever ran first."""
    torch.manual_seed(0)
    size = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": n_positions,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=size)


def build_head(name: str, backbone: Backbone, *overrides: str) -> MemoryHead:
    """The head `name` on `backbone`, built from the composed config as training builds it, so a test runs what
    `model=<name>` runs; `overrides` come after the row's and win."""
    return instantiate(compose_train([*HEADS[name], *overrides]).model, backbone=backbone)


def unroll(head: MemoryHead, ids: torch.Tensor, mask: torch.Tensor | None = None, state=None) -> list:
    """The head's outputs over (batch, segments, length) ids, segment by segment from `state` (default: its
    initial state); `mask` defaults to every token."""
    state = head.initial_state(ids.shape[0]) if state is None else state
    mask = torch.ones_like(ids) if mask is None else mask
    outputs = []
    for k in range(ids.shape[1]):
        outputs.append(head(ids[:, k], mask[:, k], state))
        state = outputs[-1].state
    return outputs
