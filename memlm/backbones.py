"""Hugging Face backbones, used unmodified through `inputs_embeds`.

A backbone is named by a hub id, a local folder, or one of memlm's offline assets (see `memlm.assets`), or built
from a small config with random weights (`tiny=`) for tests and the embedded default. Memory heads only ever see the
`Backbone` wrapper below: embeddings in, last hidden states out, and for decoders the output embeddings that turn
hidden states into next-token logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

KINDS = ("causal", "encoder")


class Backbone(nn.Module):
    """A causal LM or an encoder with the few operations memory heads need."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kind: str):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"backbone.kind={kind!r} is not one of {KINDS}")
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind

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

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer hidden states (batch, positions, hidden)."""
        # The base model skips the LM head: heads project only the positions they score, which for answer-only
        # losses is a handful of tokens instead of every position times a 50k vocabulary.
        out = self.model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.is_decoder:
            raise ValueError("an encoder backbone has no language-model head; use a classification objective")
        return self.model.get_output_embeddings()(hidden)


def _resolve(name_or_path: str) -> str:
    """An offline asset name becomes its prepared folder; hub ids and paths pass through."""
    from memlm import assets

    if name_or_path in assets.ASSETS:
        return str(assets.ASSETS[name_or_path]())
    return name_or_path


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(_resolve(name_or_path))
    if tokenizer.pad_token is None:
        # Causal tokenizers (GPT-2, Llama) ship without a pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(
    name_or_path: str | None = None,
    kind: str = "causal",
    tokenizer: str | None = None,
    tiny: dict | None = None,
    dtype: str = "float32",
) -> Backbone:
    """Load a pretrained backbone, or build one with random weights from `tiny` (a transformers config dict).

    `tiny` needs `model_type` and the model's size keys; the vocabulary comes from the tokenizer.
    """
    if (name_or_path is None) == (tiny is None):
        raise ValueError("set exactly one of backbone.name_or_path (pretrained) or backbone.tiny (random init)")
    if kind not in KINDS:
        raise ValueError(f"backbone.kind={kind!r} is not one of {KINDS}")
    tokenizer_source = tokenizer or name_or_path
    if tokenizer_source is None:
        raise ValueError("backbone.tiny needs backbone.tokenizer (a hub id, a folder or an asset name)")
    tok = load_tokenizer(tokenizer_source)
    auto = AutoModelForCausalLM if kind == "causal" else AutoModel
    if tiny is not None:
        config = AutoConfig.for_model(**{**dict(tiny), "vocab_size": len(tok)})
        model = auto.from_config(config, dtype=getattr(torch, dtype))
    else:
        source = _resolve(name_or_path)
        if source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists():
            raise FileNotFoundError(f"backbone.name_or_path={name_or_path!r}: no such folder")
        model = auto.from_pretrained(source, dtype=getattr(torch, dtype))
    return Backbone(model, tok, kind)
