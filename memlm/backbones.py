"""Hugging Face backbones, used unmodified through `inputs_embeds`.

A backbone is named by a hub id, a local folder, or one of memlm's offline assets (see `memlm.assets`), or built
from a small config with random weights (`tiny=`) for tests and the embedded default. Memory heads only ever see the
`Backbone` wrapper below: embeddings in, last hidden states out, and for decoders the output embeddings that turn
hidden states into next-token logits.

Heads that work inside the backbone's layers reach them through two seams that act for one `with` block and leave
the model untouched outside it: `Backbone.intercepting` (each block's input and output hidden states) and
`Backbone.attending` (each layer's queries, keys and values, through transformers' attention registry). Neither
forks modeling code, and `Backbone.forward` pays nothing for them when they are not in use.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AttentionInterface,
    AttentionMaskInterface,
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    Cache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from memlm import assets

KINDS = ("causal", "encoder")

BeforeBlock = Callable[[int, torch.Tensor], torch.Tensor | None]
"""`before(index, hidden_states)`: the hidden states block `index` reads instead, or None to keep them."""
AfterBlock = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]
"""`after(index, block_input, hidden_states)`: the hidden states block `index` returns instead, or None to keep
them."""
AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
"""transformers' attention function: `(module, query, key, value, attention_mask, **kwargs) -> (output, weights)`
with queries, keys and values shaped (batch, heads, positions, head_dim) and the output (batch, positions, heads,
head_dim)."""
SeamAttention = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
"""`fn(module, query, key, value, attention_mask, attend, **kwargs) -> (output, weights)`: an attention function
that also gets `attend`, the `AttentionFunction` the model would otherwise have run."""

ATTENDING = "memlm_attending"
"""The attention implementation a model runs under inside `Backbone.attending`."""
SEAM_IMPLEMENTATIONS = ("eager", "sdpa")
"""Implementations `Backbone.attending` can stand in for: their attention and mask functions never read the
implementation's name (flash attention picks its kernel by it), so they run unchanged under `ATTENDING`."""

_attending: dict[int, tuple[SeamAttention, str]] = {}
"""Per model config in an `attending` block (by identity: configs are not hashable), its function and the
implementation it replaced."""


class Backbone(nn.Module):
    """A causal LM or an encoder with the few operations memory heads need."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kind: str):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"backbone.kind={kind!r} is not one of {KINDS}")
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self._unpadded = False
        # transformers 5 renamed the models' `past_key_values` argument to `cache` in a minor release, and takes
        # unknown keywords silently, so a cache passed by the wrong name is dropped and each generated token reads
        # nothing before it (seen with 5.17 on a GPU machine: BABILong answers garbled after their first token).
        parameters = inspect.signature(model.base_model.forward).parameters
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"

    @property
    def is_decoder(self) -> bool:
        return self.kind == "causal"

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_positions(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)

    def special_embedding(self, token_id: int, batch_size: int) -> torch.Tensor:
        """The embedding of one special token (CLS, SEP), shaped (batch, 1, hidden)."""
        ids = torch.full((batch_size, 1), token_id, dtype=torch.long, device=self.embedding.weight.device)
        return self.embed(ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: Cache | None = None) -> torch.Tensor:
        """Last-layer hidden states (batch, positions, hidden). With `cache` (a decoder's key/value cache), the
        positions continue those the cache holds, which they attend to, and their keys and values are added to it;
        every position is attended (generation)."""
        # The base model skips the LM head: heads project only the positions they score, which for answer-only
        # losses is a handful of tokens instead of every position times a 50k vocabulary.
        if self._unpadded:
            attention_mask = None
        if cache is not None:
            return self.model.base_model(inputs_embeds=inputs_embeds, use_cache=True,
                                         **{self._cache_keyword: cache}).last_hidden_state
        out = self.model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def compile_blocks(self) -> None:
        """`torch.compile` each block's forward (`backbone.compile=true`).

        The block's forward, not the module: the seams' hooks (`intercepting`) then run around the compiled code
        instead of being traced into it, where registering them for every segment would invalidate the compiled
        graph each time. The blocks are where the FLOPs are; the heads' own few operations stay eager. Parameter
        names and checkpoints are unchanged. A head that attends through the seam (`attending`) runs its Python
        function inside the block, where dynamo breaks the graph around it.
        """
        for block in self.blocks:
            block.forward = torch.compile(block.forward)

    @contextmanager
    def unpadded(self, unpadded: bool = True) -> Iterator[None]:
        """Inside, `forward` sends the model no attention mask: the caller knows that every position is attended.

        Given a mask, a Hugging Face model checks on the device whether it holds any padding, to choose between
        its masked and its causal attention kernel; on a GPU that check stops the host at every call. The segment
        loop knows from the batch which segments are padded (`SegmentedBatch.is_padded`), and every head extends a
        segment's mask only with ones, so for the rest it says so here. No mask and a mask of ones select the same
        kernel."""
        previous, self._unpadded = self._unpadded, unpadded
        try:
            yield
        finally:
            self._unpadded = previous

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.is_decoder:
            raise ValueError("an encoder backbone has no language-model head; use a classification objective")
        return self.model.get_output_embeddings()(hidden)

    @property
    def blocks(self) -> nn.ModuleList:
        """The stack of decoder (or encoder) blocks: the base model's ModuleList of `num_hidden_layers` modules,
        GPT-2's `h`, Llama's `layers`, BERT's `encoder.layer`. Found by shape, so a family needs no entry here."""
        layers = self.model.config.num_hidden_layers
        for module in self.model.base_model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == layers:
                return module
        raise ValueError(
            f"found no ModuleList of config.num_hidden_layers={layers} blocks in "
            f"{type(self.model.base_model).__name__}; Backbone.blocks needs a family that keeps its blocks in one "
            "list (GPT-2's h, Llama's layers, BERT's encoder.layer)"
        )

    @contextmanager
    def intercepting(self, before: BeforeBlock | None = None, after: AfterBlock | None = None) -> Iterator[None]:
        """Run `before` on every block's input and `after` on its output for the forwards inside the block.

        Forward (pre-)hooks on `blocks`, registered on entry and removed on exit, also when the body raises, so
        the backbone outside is the plain model and a head never forks modeling code. The input reaches a block
        positionally or as `hidden_states=`, and a block returns its hidden states alone or first in a tuple,
        depending on the family; both hooks handle either. `after` gets the input the block actually read (after
        `before`).
        """
        handles = []
        try:
            for index, block in enumerate(self.blocks):
                if before is not None:
                    handles.append(block.register_forward_pre_hook(_replace_input(index, before), with_kwargs=True))
                if after is not None:
                    handles.append(block.register_forward_hook(_replace_output(index, after), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def attending(self, fn: SeamAttention) -> Iterator[None]:
        """Run `fn` as every layer's attention for the forwards inside the block.

        `fn(module, query, key, value, attention_mask, attend, **kwargs)` gets the attention module (with its
        `layer_idx`), the projected queries, keys and values (after rotary embeddings where the family has them),
        the mask and kwargs the model built, and `attend`, the attention function the model would otherwise run,
        to call on extended keys and values; it returns what `attend` returns. Built on transformers' own
        attention registry rather than forked model code: `ATTENDING` is registered as an attention
        implementation (and as a mask implementation that builds the replaced implementation's mask), the model
        is switched to it with `set_attn_implementation` and switched back on exit, also when the body raises.
        """
        config = self.model.config
        replaced = config._attn_implementation
        if replaced == ATTENDING:
            raise RuntimeError(f"{type(self.model).__name__} is already inside Backbone.attending: compose the "
                               "attention functions into one fn instead of nesting the blocks")
        if replaced not in SEAM_IMPLEMENTATIONS:
            raise ValueError(
                f"Backbone.attending stands in for attention implementations {SEAM_IMPLEMENTATIONS}, but "
                f"{type(self.model).__name__} runs {replaced!r}: set_attn_implementation('sdpa') before entering"
            )
        if replaced == "eager" and getattr(config, "reorder_and_upcast_attn", False):
            raise ValueError("GPT-2's eager attention with reorder_and_upcast_attn=True bypasses transformers' "
                             "attention registry, so Backbone.attending cannot see it: use sdpa or turn it off")
        AttentionInterface.register(ATTENDING, _attend_through_seam)
        AttentionMaskInterface.register(ATTENDING, _mask_through_seam)
        _attending[id(config)] = (fn, replaced)
        try:
            self.model.set_attn_implementation(ATTENDING)
            if config._attn_implementation != ATTENDING:
                # transformers only warns, and keeps the old implementation, for a family that does not route
                # attention through its registry.
                raise ValueError(f"{type(self.model).__name__} does not route its attention through transformers' "
                                 "AttentionInterface, so Backbone.attending cannot reach it; use a family that does "
                                 "(GPT-2, Llama) or Backbone.intercepting")
            yield
        finally:
            self.model.set_attn_implementation(replaced)
            del _attending[id(config)]


def _replace_input(index: int, before: BeforeBlock):
    """A forward pre-hook for block `index` that hands its input hidden states to `before`."""

    def hook(block, args, kwargs):
        positional = bool(args)
        replaced = before(index, args[0] if positional else kwargs["hidden_states"])
        if replaced is None:
            return None
        if positional:
            return (replaced, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replaced}

    return hook


def _replace_output(index: int, after: AfterBlock):
    """A forward hook for block `index` that hands its input and output hidden states to `after`."""

    def hook(block, args, kwargs, output):
        block_input = args[0] if args else kwargs["hidden_states"]
        as_tuple = isinstance(output, tuple)
        replaced = after(index, block_input, output[0] if as_tuple else output)
        if replaced is None:
            return None
        return (replaced, *output[1:]) if as_tuple else replaced

    return hook


def _attend_through_seam(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The registered `ATTENDING` attention: the active function of the model this layer belongs to."""
    fn, replaced = _attending[id(module.config)]
    return fn(module, query, key, value, attention_mask, _attention_function(module, replaced), **kwargs)


def _mask_through_seam(*args, config, **kwargs):
    """The registered `ATTENDING` mask: the replaced implementation's own (sdpa's boolean or eager's additive
    mask, or none where sdpa's causal flag suffices), so `attend` gets the mask it expects."""
    return ALL_MASK_ATTENTION_FUNCTIONS[_attending[id(config)][1]](*args, config=config, **kwargs)


def _attention_function(module: nn.Module, implementation: str) -> AttentionFunction:
    """What `module` runs under `implementation`, looked up as its modeling code does: the registry's function,
    or for eager the family's own `eager_attention_forward` (GQA and scaling differ between families)."""
    family_eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if implementation == "eager" and family_eager is None:
        raise ValueError(f"{type(module).__module__} defines no eager_attention_forward for "
                         f"{type(module).__name__}: use sdpa with Backbone.attending")
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, family_eager)


def _resolve(name_or_path: str) -> str:
    """An offline asset name becomes its prepared folder; hub ids and paths pass through."""
    if name_or_path in assets.ASSETS:
        return str(assets.prepare([name_or_path])[name_or_path])
    return name_or_path


def _from_pretrained(load: Callable, name_or_path: str, key: str, **kwargs):
    """`load(source)` for a hub id, folder or asset name; a source that is neither a folder here nor a model the
    hub serves (a mistyped path, or no network) gets an error naming the key instead of the hub client's."""
    source = _resolve(name_or_path)
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"{key}={name_or_path!r}: no such folder")
    try:
        return load(source, **kwargs)
    except (OSError, ValueError) as error:
        raise OSError(f"{key}={name_or_path!r} is neither a model folder here nor a model the hub serves to this "
                      f"machine (offline? HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); give a local "
                      f"folder or one of memlm's offline assets {sorted(assets.ASSETS)}. The loader said: "
                      f"{str(error).splitlines()[0]}") from None


def load_tokenizer(name_or_path: str, key: str = "backbone.tokenizer") -> PreTrainedTokenizerBase:
    """A tokenizer by hub id, folder or offline asset name, with a pad token."""
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, key)
    if tokenizer.pad_token is None:
        # Causal tokenizers (GPT-2, Llama) ship without a pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def backbone_tokenizer(name_or_path: str | None = None, tokenizer: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a backbone config: its own `tokenizer`, else the pretrained model's."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer, "backbone.tokenizer")
    if name_or_path is None:
        raise ValueError("backbone.tiny needs backbone.tokenizer (a hub id, a folder or an asset name)")
    return load_tokenizer(name_or_path, "backbone.name_or_path")


def load_backbone(
    name_or_path: str | None = None,
    kind: str = "causal",
    tokenizer: str | None = None,
    tiny: dict | None = None,
    dtype: str = "float32",
    compile: bool = False,
) -> Backbone:
    """Load a pretrained backbone, or build one with random weights from `tiny` (a transformers config dict).

    `tiny` needs `model_type` and the model's size keys; the vocabulary comes from the tokenizer. `compile`:
    `Backbone.compile_blocks`.
    """
    if (name_or_path is None) == (tiny is None):
        raise ValueError("set exactly one of backbone.name_or_path (pretrained) or backbone.tiny (random init)")
    if kind not in KINDS:
        raise ValueError(f"backbone.kind={kind!r} is not one of {KINDS}")
    if not isinstance(compile, bool):
        raise ValueError(f"backbone.compile={compile!r} must be true or false")
    tok = backbone_tokenizer(name_or_path, tokenizer)
    auto = AutoModelForCausalLM if kind == "causal" else AutoModel
    if tiny is not None:
        config = AutoConfig.for_model(**{**dict(tiny), "vocab_size": len(tok)})
        model = auto.from_config(config, dtype=getattr(torch, dtype))
    else:
        model = _from_pretrained(auto.from_pretrained, name_or_path, "backbone.name_or_path",
                                 dtype=getattr(torch, dtype))
    backbone = Backbone(model, tok, kind)
    if compile:
        backbone.compile_blocks()
    return backbone
