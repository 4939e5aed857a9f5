"""A rollout node on vLLM in a real network: its behavior log-probs at every policy version are those
of that version's published weights, so the new weights went into the running engine in place.
"""

import json
import time

import pytest
import torch

from swarmgrpo.p2p.weights import load_into
from swarmgrpo.trainer.models import load_tokenizer, tiny_model
from tests.integration.netfixtures import open_network
from tests.vllm_support import VLLM_TINY_SHAPE as SHAPE
from tests.vllm_support import skip_module_without_vllm

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
skip_module_without_vllm()


def test_a_vllm_rollout_node_samples_from_each_published_version(tmp_path):
    tok = load_tokenizer("tiny")
    folder = tmp_path / "model"
    tiny_model(tok, seed=0, shape=SHAPE).save_pretrained(folder)
    tok.save_pretrained(folder)
    net = open_network(tmp_path, max_staleness=0, train={"model": str(folder), "max_steps": 3})
    try:
        net.start_coordinator()
        rollout = net.start_node("rollout", "rollout", "--engine", "vllm")
        trainer = net.start_node("trainer", "train")
        deadline = time.monotonic() + 240
        while trainer.poll() is None or rollout.poll() is None:
            assert time.monotonic() < deadline, f"the run did not finish:\n{net.logs()}"
            assert trainer.poll() in (None, 0) and rollout.poll() in (None, 0), net.logs()
            time.sleep(0.5)
        assert trainer.returncode == rollout.returncode == 0, net.logs()
    finally:
        net.close()
    assert "rollout engine: vLLM" in net.log("rollout")
    with net.db() as db:
        assert db.execute("SELECT MAX(version) FROM versions").fetchone()[0] == 3
        rows = db.execute(
            "SELECT r.policy_version, p.token_ids, r.completions FROM rollouts r "
            "JOIN prompts p ON p.prompt_index = r.prompt_index ORDER BY r.id"
        ).fetchall()
    assert sorted({v for v, _, _ in rows}) == [0, 1, 2]  # k = 0: step t is sampled at policy t
    model = tiny_model(tok, seed=0, shape=SHAPE)
    for version in (1, 2):
        load_into(model, (tmp_path / "weights" / f"v{version:06d}.safetensors").read_bytes())
        errors = []
        for v, prompt_json, completions_json in rows:
            if v != version:
                continue
            prompt = json.loads(prompt_json)
            for tokens, logprobs in zip(*json.loads(completions_json), strict=True):
                ids = torch.tensor([prompt + tokens])
                with torch.no_grad():
                    logp = model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
                ref = logp.gather(-1, torch.tensor(tokens)[:, None])[:, 0]
                errors.append(float((ref - torch.tensor(logprobs)).abs().max()))
        assert errors and max(errors) < 1e-4, (version, max(errors))
