"""Generation with memory: greedy output is what the segment recurrence predicts, across segment boundaries."""

import pytest
import torch

from memlm.backbones import load_backbone
from memlm.generation import Sampling, generate
from memlm.memory import RMT
from tests.heads import HEADS, build_head, tiny_gpt2

SEGMENT = 6


@pytest.fixture(scope="module")
def backbone():
    return tiny_gpt2()


def teacher_forced_argmax(head, ids: torch.Tensor) -> torch.Tensor:
    """The argmax next token after every position of `ids`, read segment by segment with memory."""
    state, predictions = head.initial_state(ids.shape[0]), []
    for start in range(0, ids.shape[1], SEGMENT):
        segment = ids[:, start : start + SEGMENT]
        out = head(segment, torch.ones_like(segment), state)
        predictions.append(head.backbone.logits(out.token_states).argmax(-1))
        state = out.state
    return torch.cat(predictions, dim=1)


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("prompt_length", [1, 5, 6, 7, 13])
def test_greedy_generation_follows_the_segment_recurrence(backbone, name, prompt_length):
    torch.manual_seed(3)
    head = build_head(name, backbone).eval()
    prompt = torch.randint(1000, 20000, (2, prompt_length), generator=torch.Generator().manual_seed(4))
    new = generate(head, prompt, SEGMENT, Sampling(max_new_tokens=10, stop_at_eos=False))
    assert new.shape == (2, 10)
    # Generated text crosses at least one segment boundary; each token must be the recurrence's own prediction.
    predicted = teacher_forced_argmax(head, torch.cat([prompt, new], dim=1))
    assert torch.equal(new, predicted[:, prompt_length - 1 : -1])


LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
         "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 64}


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_head_that_caches_its_open_segment_reads_each_new_token_once(backbone, name, family):
    if family == "llama":
        torch.manual_seed(0)
        backbone = load_backbone(kind="causal", tokenizer="gpt2-tokenizer", tiny=LLAMA)
    torch.manual_seed(3)
    head = build_head(name, backbone).eval()
    calls = []
    hook = head.backbone.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(
            (kwargs["inputs_embeds"].shape[1], kwargs.get("cache", kwargs.get("past_key_values")))),
        with_kwargs=True)
    prompt = torch.randint(1000, 20000, (2, 4), generator=torch.Generator().manual_seed(4))
    try:
        new = generate(head, prompt, SEGMENT, Sampling(max_new_tokens=9, stop_at_eos=False))
    finally:
        hook.remove()
    predicted = teacher_forced_argmax(head, torch.cat([prompt, new], dim=1))
    assert torch.equal(new, predicted[:, 3:-1])
    if not head.caches_open_segment:
        assert all(cache is None for _, cache in calls)
        return
    # The prompt's 4 tokens (after the positions the memory is read from, if the head has any) open the segment
    # and give the first new token; each of the other 8 is one position's read: 2 fill the segment, which is then
    # written, and the next segment opens with the memory's positions and the token that did not fit. The write
    # reads only its own positions after the cached segment, or, for a head that cannot, the whole segment again.
    cached = [positions for positions, cache in calls if cache is not None]
    read, write = cached[0] - 4, head.extra_positions() - (cached[0] - 4)
    if head.writes_from_cache:
        expected, uncached = [4 + read, 1, 1] + ([write] if write else []) + [1 + read] + [1] * 5, []
    else:
        expected, uncached = [4 + read, 1, 1, 1 + read] + [1] * 5, [SEGMENT + head.extra_positions()]
    assert cached == expected
    assert [positions for positions, cache in calls if cache is None] == uncached


def test_sampling_is_reproducible_and_top_k_one_is_greedy(backbone):
    head = RMT(backbone, num_mem_tokens=2).eval()
    prompt = torch.randint(1000, 20000, (3, 8), generator=torch.Generator().manual_seed(5))
    options = Sampling(max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9, stop_at_eos=False)
    first = generate(head, prompt, SEGMENT, options, torch.Generator().manual_seed(0))
    again = generate(head, prompt, SEGMENT, options, torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    top1 = Sampling(max_new_tokens=8, do_sample=True, top_k=1, stop_at_eos=False)
    greedy = Sampling(max_new_tokens=8, stop_at_eos=False)
    assert torch.equal(generate(head, prompt, SEGMENT, top1, torch.Generator().manual_seed(1)),
                       generate(head, prompt, SEGMENT, greedy))


def test_finished_samples_hold_end_of_text(backbone, monkeypatch):
    head = RMT(backbone, num_mem_tokens=2).eval()
    eos = backbone.tokenizer.eos_token_id
    calls = iter(range(100))

    def end_sample_zero_on_the_second_token(hidden):
        logits = torch.zeros(hidden.shape[0], len(backbone.tokenizer))
        logits[:, 7] = 1.0
        if next(calls) >= 1:
            logits[0, eos] = 2.0
        return logits

    monkeypatch.setattr(backbone, "logits", end_sample_zero_on_the_second_token)
    new = generate(head, torch.ones(2, 3, dtype=torch.long), SEGMENT, Sampling(max_new_tokens=4))
    assert new[0].tolist() == [7, eos, eos, eos]
    assert new[1].tolist() == [7, 7, 7, 7]


@pytest.mark.parametrize("options", [{"max_new_tokens": 0}, {"temperature": 0.0}, {"top_p": 1.5}])
def test_bad_sampling_options_are_refused(options):
    with pytest.raises(ValueError):
        Sampling(**options)


def test_generate_script_continues_a_prompt_from_a_checkpoint(memorize_run, capsys):
    import importlib.util

    from tests.conftest import REPO

    checkpoint, _ = memorize_run
    capsys.readouterr()  # drop the training run's output
    spec = importlib.util.spec_from_file_location("generate_script", REPO / "scripts" / "generate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    prompt = " Mary went to the kitchen. " + "The baker walked down the lane. " * 12 + "Where is Mary?"
    continuation = script.main([str(checkpoint), "--prompt", prompt,
                                "--max-new-tokens", "5", "--no-stop"])
    captured = capsys.readouterr()
    assert "read as 4 segment(s) of 24" in captured.err
    assert continuation and captured.out.strip() == continuation.strip()
