"""The transformers engine's own decode loop against transformers' `generate` and plain forwards."""

import pytest
import torch

from swarmgrpo.node.engines.base import SamplingParams
from swarmgrpo.node.engines.transformers_engine import TransformersEngine, sample

PROMPTS = [[1, 500, 42, 7], [9, 9, 13], [300, 301, 302, 303, 304, 305]]


def _plain_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_greedy_decoding_equals_transformers_generate(tiny):
    model, tok = tiny
    outs = TransformersEngine(model, tok).generate(PROMPTS, 2, SamplingParams(max_tokens=8, temperature=0))
    for prompt, completions in zip(PROMPTS, outs, strict=True):
        with torch.no_grad():
            ref = model.generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )[0, len(prompt) :].tolist()
        for c in completions:
            assert c.token_ids == ref[: len(c.token_ids)] and len(c.token_ids) == (
                ref.index(tok.eos_token_id) + 1 if tok.eos_token_id in ref else len(ref)
            )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behavior_logprobs_are_the_models_own(tiny, temperature):
    """Left padding, shared prompt caches and the loop's positions give the unpadded forward's values."""
    model, tok = tiny
    params = SamplingParams(max_tokens=6, temperature=temperature, seed=5)
    outs = TransformersEngine(model, tok).generate(PROMPTS, 3, params)
    for prompt, completions in zip(PROMPTS, outs, strict=True):
        for c in completions:
            assert len(c.token_ids) == len(c.logprobs) > 0
            torch.testing.assert_close(
                torch.tensor(c.logprobs),
                _plain_logprobs(model, prompt, c.token_ids, temperature),
                atol=1e-4,
                rtol=0,
            )


def test_a_seed_fixes_the_samples_and_different_seeds_differ(tiny):
    model, tok = tiny
    engine = TransformersEngine(model, tok)
    runs = [engine.generate(PROMPTS, 4, SamplingParams(max_tokens=6, seed=s)) for s in (1, 1, 2)]
    tokens = [[c.token_ids for cs in run for c in cs] for run in runs]
    assert tokens[0] == tokens[1]
    assert tokens[0] != tokens[2]


def test_completions_stop_at_end_of_sequence():
    """A row that samples EOS ends there (EOS included, finished=True); the others run to max_tokens."""
    eos = 3
    logits = torch.full((2, 5), -10.0)
    logits[0, eos] = 10.0  # row 0: EOS almost surely
    logits[1, 1] = 10.0  # row 1: token 1

    class Scripted(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache):
            class Out:
                pass

            out = Out()
            out.logits, out.past_key_values = logits[:, None, :], past_key_values
            return out

    class Tok:
        pad_token_id, eos_token_id = 0, eos

    engine = TransformersEngine(Scripted(), Tok())
    engine._prefill = lambda ids, mask, n: None
    (row0,), (row1,) = engine.generate([[5, 6], [7, 8]], 1, SamplingParams(max_tokens=4, seed=0))
    assert row0.token_ids == [eos] and row0.finished
    assert row1.token_ids == [1, 1, 1, 1] and not row1.finished


def test_top_k_and_top_p_narrow_the_draw_but_not_the_logprob():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    torch.manual_seed(0)
    for params, allowed in (
        (SamplingParams(max_tokens=1, top_k=2), {0, 1}),
        (SamplingParams(max_tokens=1, top_p=0.7), {0, 1}),  # 0.5 < 0.7: the second token is needed
        (SamplingParams(max_tokens=1, top_p=0.45), {0}),
    ):
        tokens, logps = sample(logits, params)
        assert set(tokens.tolist()) == allowed
        torch.testing.assert_close(logps, torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0])
    tokens, _ = sample(logits, SamplingParams(max_tokens=1))
    assert set(tokens.tolist()) == {0, 1, 2, 3}


def test_draw_follows_the_distribution_and_never_picks_zero_probability():
    from swarmgrpo.node.engines.transformers_engine import draw

    torch.manual_seed(0)
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]]).repeat(100_000, 1)
    counts = torch.bincount(draw(probs), minlength=5).double() / probs.shape[0]
    assert counts[1] == 0 and counts[4] == 0
    torch.testing.assert_close(counts, probs[0].double(), atol=0.006, rtol=0)  # ~4 standard errors


@pytest.mark.gpu
def test_on_a_gpu_the_engine_samples_where_the_model_is_and_gives_the_cpu_logprobs(tiny, monkeypatch):
    """A model on the GPU: greedy completions equal the CPU's and log-probs match its forward."""
    import copy

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model, tok = tiny
    params = SamplingParams(max_tokens=8, temperature=0)
    cpu = TransformersEngine(model, tok).generate(PROMPTS, 2, params)
    gpu = TransformersEngine(copy.deepcopy(model).cuda(), tok).generate(PROMPTS, 2, params)
    for cs_cpu, cs_gpu in zip(cpu, gpu, strict=True):
        for a, b in zip(cs_cpu, cs_gpu, strict=True):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-4, rtol=0)
