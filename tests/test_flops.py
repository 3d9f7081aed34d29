"""memlm.flops against torch's own counters (FlopCounterMode, the bytes autograd saves), its growth with length,
and scripts/flops.py."""

import importlib.util
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from memlm.backbones import load_backbone
from memlm.flops import (
    backward_flops,
    full_attention_activation_bytes,
    full_attention_flops,
    memory_model_activation_bytes,
    memory_model_flops,
    transformer_shape,
    window_activation_bytes,
)
from memlm.memory import RMT
from tests.conftest import REPO

GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 256, "vocab_size": 1000,
        "activation_function": "gelu_pytorch_tanh", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
# GQA (2 key/value heads for 4 query heads) and a SwiGLU width that is not a multiple of d: both change the count.
LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 176,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}


def random_model(config: dict, attention: str = "eager"):
    # Eager attention is plain matmuls, which FlopCounterMode counts as the dense n x n products memlm.flops counts.
    # Under SDPA the count depends on the kernel chosen: on CPU, Llama's causal SDPA runs
    # _scaled_dot_product_flash_attention_for_cpu, for which the counter has no formula, so it counts 0 for
    # attention; the CUDA kernels have formulas.
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), attn_implementation=attention).eval()


def counted_flops(forward) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops()


@pytest.mark.parametrize("scored", [0, 120], ids=["no_lm_head", "lm_head"])
@pytest.mark.parametrize("config", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_one_segment_matches_torchs_flop_counter(config, scored):
    model = random_model(config)
    segment_length, memory = 120, 8  # RMT's decoder layout: 4 read positions, the tokens, 4 write positions
    embeds = torch.randn(1, segment_length + memory, model.config.hidden_size)

    def forward():
        hidden = model.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        model.lm_head(hidden[:, memory // 2 : memory // 2 + scored])

    expected = memory_model_flops(transformer_shape(model.config), segment_length, segment_length, memory, scored)
    assert counted_flops(forward) == pytest.approx(expected, rel=0.05)


def test_memory_model_is_the_sum_of_its_measured_segments():
    backbone = load_backbone(kind="causal", tokenizer="gpt2-tokenizer",
                             tiny={"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64})
    backbone.model.set_attn_implementation("eager")
    head = RMT(backbone, num_mem_tokens=3)
    segment_length, length = 16, 56  # three whole segments and one of 8 tokens
    ids = torch.randint(0, len(backbone.tokenizer), (1, length))
    state, measured = head.initial_state(1), 0
    for segment in ids.split(segment_length, dim=1):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = head(segment, torch.ones_like(segment), state)
            # Language modelling: every token of the segment gets next-token logits, the memory positions none.
            backbone.logits(out.token_states)
        measured += counter.get_total_flops()
        state = out.state
    shape = transformer_shape(backbone.model.config)
    expected = memory_model_flops(shape, length, segment_length, head.extra_positions(), scored_tokens=length)
    assert measured == pytest.approx(expected, rel=0.05)


def test_memory_model_flops_grow_linearly_and_full_attention_faster():
    shape = transformer_shape(AutoConfig.for_model(**GPT2))
    for length in (4096, 1_000_000, 2**21):  # 1,000,000 leaves a partial segment
        memory = [memory_model_flops(shape, n, 512, 20, scored_tokens=n) for n in (length, 2 * length)]
        full = [full_attention_flops(shape, n, scored_tokens=n) for n in (length, 2 * length)]
        assert memory[1] / memory[0] == pytest.approx(2, rel=0.01)
        assert full[1] / full[0] > 3  # toward 4 as the quadratic term takes over


def saved_activation_bytes(model, positions: int) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for backward in one forward of the layers."""
    parameters = {tensor.untyped_storage().data_ptr() for tensor in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    embeds = torch.randn(1, positions, model.config.hidden_size, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.base_model(inputs_embeds=embeds, use_cache=False)
    return sum(saved.values())


@pytest.mark.parametrize("attention", ["eager", "flash"])
@pytest.mark.parametrize(("config", "excess"), [(GPT2, 0.0), (LLAMA, 0.18)], ids=["gpt2", "llama"])
def test_activation_bytes_match_what_autograd_saves(config, excess, attention):
    # Eager attention keeps the scores, the flash kernel one log-sum-exp per row and head. GPT-2's layers keep what
    # is counted, and the norms' statistics and the final norm's input (a few percent). Llama's keep `excess` more,
    # left out of the count: the rotary embeddings' cos, sin and unrotated Q and K, RMSNorm's normalised input and,
    # in eager attention, K and V repeated to every query head.
    model = random_model(config, "eager" if attention == "eager" else "sdpa")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        measured = saved_activation_bytes(model, 128)
    expected = window_activation_bytes(transformer_shape(model.config), 128, bytes_per_value=4,
                                       stores_scores=attention == "eager")
    assert measured == pytest.approx(expected * (1 + excess), rel=0.05)


@pytest.mark.parametrize("config", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_backward_is_twice_the_forward_in_torchs_count(config):
    model = random_model(config).train()
    embeds = torch.randn(1, 64, model.config.hidden_size, requires_grad=True)  # as a head's memory and embeddings
    with FlopCounterMode(display=False) as counter:
        logits = model(inputs_embeds=embeds, use_cache=False).logits
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        logits.sum().backward()
    assert counter.get_total_flops() == pytest.approx(backward_flops(forward), rel=0.05)


def test_truncated_bptt_holds_constant_memory_and_full_attention_grows_quadratically():
    shape = transformer_shape(AutoConfig.for_model(**GPT2))
    held = [memory_model_activation_bytes(shape, 512, 20, held_segments=2, scored_tokens=1024) for _ in range(2)]
    full = [full_attention_activation_bytes(shape, n, scored_tokens=n) for n in (2**16, 2**17)]
    flash = [full_attention_activation_bytes(shape, n, scored_tokens=n, stores_scores=False) for n in (2**16, 2**17)]
    assert held[0] == held[1] > 0
    assert full[1] / full[0] > 3.9
    assert flash[1] / flash[0] == pytest.approx(2, rel=0.01)


def test_unknown_family_names_the_table():
    with pytest.raises(ValueError, match="GATED_MLP"):
        transformer_shape(AutoConfig.for_model("gpt_neox"))


def test_script_writes_its_table_and_reproduces_rmts_opt_ratios(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("flops_script", REPO / "scripts" / "flops.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.main(["--backbone", "tiny_gpt2", "--lengths", "512", "65536", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "flops_tiny_gpt2.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "flops_tiny_gpt2.png").stat().st_size > 0
    assert report["shape"]["vocab"] == 50257  # the GPT-2 tokenizer's, as load_backbone builds it
    assert report["rows"][1]["ratio"] > 5 * report["rows"][0]["ratio"]  # the LM head, linear in both, holds it back
    assert "| OPT-175B | 29x |" in capsys.readouterr().out
    opt = {row["model"]: row for row in report["opt"]}
    assert opt["OPT-175B"]["lm_head_on_every_token"] == pytest.approx(29, rel=0.05)
    # The paper does not say how it counted OPT-125M's LM head, a third of that model's work per token: its 295x
    # lies between our count with the head on every token and without it.
    assert opt["OPT-125M"]["lm_head_on_every_token"] < 295 < opt["OPT-125M"]["no_lm_head"]
