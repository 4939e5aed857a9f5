"""Solo mode (`swarmgrpo train`): the node's rollout engine and a GRPO step in one process.

    load model → [resume] → loop { next prompts → generate G each → score → step → log → save } → eval

The same `RolloutGroup`s and `GRPOStep` serve the networked run; only where groups come from and
who averages gradients differ.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from swarmgrpo.core.device import resolve_device
from swarmgrpo.node.engines.base import SamplingParams
from swarmgrpo.node.engines.choose import build_engine
from swarmgrpo.node.evaluate import EvalResult, evaluate
from swarmgrpo.trainer.checkpoint import TrainerState, latest_checkpoint, load_trainer_state, save_checkpoint
from swarmgrpo.trainer.completions import score_completion
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.models import load_model
from swarmgrpo.trainer.prompts import encode_chat
from swarmgrpo.trainer.rollouts import RolloutGroup, group_from_completions
from swarmgrpo.trainer.step import GRPOStep
from swarmgrpo.trainer.tasks import Example, Task, make_task


def train(cfg: TrainConfig, log=print, progress: bool = True) -> dict:
    """Run `cfg` to `max_steps`; returns a summary (final step, eval before/after, checkpoint path)."""
    task = make_task(cfg.task)
    torch.manual_seed(cfg.seed)
    resume_from = latest_checkpoint(cfg.output_dir) if cfg.resume else None
    device = resolve_device(cfg.device)
    model, tokenizer = load_model(str(resume_from) if resume_from else cfg.model, seed=cfg.seed)
    model = model.to(device)
    ref_model = load_model(cfg.model, seed=cfg.seed)[0].to(device) if cfg.beta > 0 else None
    step = GRPOStep(model, cfg, tokenizer.pad_token_id, ref_model=ref_model)
    engine = build_engine(cfg.engine, cfg, lambda: (model, tokenizer))
    state = TrainerState(step=0, version=0, prompts_consumed=0)
    if resume_from:
        state = load_trainer_state(resume_from, step.optimizer)
        engine.sync_from(model)  # a vLLM engine starts from cfg.model's weights, not the checkpoint's
        step.version = state.version
        log(f"resumed from {resume_from} at step {state.step}")
    summary: dict = {"start_step": state.step}
    if cfg.eval_n and state.step == 0:
        summary["eval_before"] = _eval(engine, tokenizer, task, cfg, log, "before")
    stream = itertools.islice(task.train_examples(cfg.seed), state.prompts_consumed, None)
    metrics_file = Path(cfg.output_dir) / "metrics.jsonl"
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not progress, file=sys.stderr, desc="steps")
    try:  # closed on an error too, so that the error's line does not run on from the bar
        checkpoint = resume_from
        while state.step < cfg.max_steps:
            t0 = time.perf_counter()
            examples = list(itertools.islice(stream, cfg.prompts_per_step))
            groups, gen_s, n_tokens = rollout(
                engine, tokenizer, task, examples, cfg, step.version, seed=cfg.seed + state.step
            )
            metrics = step.train(groups)
            engine.sync_from(model)
            state = TrainerState(state.step + 1, step.version, state.prompts_consumed + len(examples))
            elapsed = time.perf_counter() - t0
            metrics.update(step=state.step, gen_s=gen_s, step_s=elapsed, tokens_per_s=n_tokens / elapsed)
            with metrics_file.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            bar.update(1)
            (log if bar.disable else bar.write)(_log_line(metrics))  # bar.write keeps the bar below the lines
            if state.step == cfg.max_steps or (cfg.save_steps and state.step % cfg.save_steps == 0):
                checkpoint = save_checkpoint(
                    cfg.output_dir, model, tokenizer, step.optimizer, cfg, state, keep=cfg.save_total_limit
                )
    finally:
        bar.close()
    summary.update(final_step=state.step, checkpoint=str(checkpoint) if checkpoint else None)
    if cfg.eval_n:
        summary["eval_after"] = _eval(engine, tokenizer, task, cfg, log, "after")
    engine.close()
    return summary


def rollout(
    engine, tokenizer, task: Task, examples: list[Example], cfg: TrainConfig, version: int, seed: int
) -> tuple[list[RolloutGroup], float, int]:
    """G completions for each example, scored by the task: the groups of one step."""
    t0 = time.perf_counter()
    prompts = [encode_chat(tokenizer, ex.messages, cfg.max_prompt_length) for ex in examples]
    params = SamplingParams(cfg.max_completion_length, cfg.temperature, cfg.top_p, cfg.top_k, seed=seed)
    outs = engine.generate(prompts, cfg.num_generations, params)
    gen_s = time.perf_counter() - t0
    groups = [
        group_from_completions(
            p,
            comps,
            [
                score_completion(tokenizer, task, ex, c.token_ids, cfg.max_completion_length).reward
                for c in comps
            ],
            version,
        )
        for p, ex, comps in zip(prompts, examples, outs, strict=True)
    ]
    return groups, gen_s, sum(len(c.token_ids) for comps in outs for c in comps)


def _eval(engine, tokenizer, task, cfg: TrainConfig, log, when: str) -> dict:
    result: EvalResult = evaluate(
        engine, tokenizer, task, cfg.eval_n, cfg.max_completion_length, cfg.max_prompt_length
    )
    log(f"held-out accuracy {when}: {result.accuracy:.1%} ({result.correct}/{result.n})")
    return {"accuracy": result.accuracy, "n": result.n, "mean_reward": result.mean_reward}


def _log_line(m: dict) -> str:
    return (
        f"step {m['step']:>4}  reward {m['reward_mean']:.3f}±{m['reward_std']:.3f}  loss {m['loss']:+.4f}  "
        f"kl {m['kl']:.4f}  clip {m['clip_frac']:.3f}  len {m['completion_len']:.1f}  "
        f"tok/s {m['tokens_per_s']:.0f}  gen {m['gen_s']:.1f}s  train {m['train_s']:.1f}s"
    )
