"""One GRPO step of our trainer against TRL's `GRPOTrainer`: seconds per step and peak memory.

    python benchmarks/trainer_vs_trl.py                        # smollm2-135m, 2 rounds × 3 steps each
    python benchmarks/trainer_vs_trl.py --model tiny --rounds 1 --steps 2 --threads 1   # smoke test

The parent process owns nothing heavy: it resolves the model folder and starts one worker process per
(round, implementation), `ours` then `trl` in odd rounds and the reverse in even ones, so both sides see
the same machine load and each worker's peak RSS (`ru_maxrss`) is its own. A worker runs `--steps`
optimizer steps and prints one JSON line; its first step is warm-up and is left out of the medians.

Both sides get the same model folder, prompts (our arithmetic task's training stream, in order), G,
completion length, reward (our task's), AdamW (betas 0.9/0.99, constant lr, clip 1.0) and threads.
Where the two still differ, on purpose, the output says so:
- TRL keeps its defaults for the algorithm (loss_type, scale_rewards, gradient checkpointing); the values
  it used are printed.
- Our step skips the forward/backward of a group whose rewards are all equal (zero advantage, beta=0);
  TRL trains on it. The share of such groups is printed for both, so a speed-up that comes from it is
  visible. With `--model tiny` most groups are such, so only smollm2-135m figures mean anything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

TARGET_STEP_RATIO = 0.5
TARGET_STEP_RATIO_VLLM = 0.2  # issue 5: the step with vLLM rollouts
TARGET_RSS_RATIO = 0.5
IMPLS = ("ours", "trl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, or a local model folder")
    p.add_argument("--rounds", type=int, default=2, help="A/B rounds; each runs both implementations")
    p.add_argument("--steps", type=int, default=3, help="steps per worker; the first is warm-up")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="our compute dtype")
    p.add_argument("--trl-bf16", action="store_true", help="run TRL with bf16=True (default: fp32)")
    p.add_argument("--micro-batch", type=int, default=8, help="our micro_batch_size (completions per pass)")
    p.add_argument(
        "--engine",
        choices=("transformers", "vllm"),
        default="transformers",
        help="our rollout engine (vllm: new weights are copied into it after each step, inside the step time)",
    )
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    p.add_argument("--json-out", default="", help="also write the summary here as JSON")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2: the first step of each worker is warm-up")
    if args.rounds < 1 or args.prompts < 1 or args.num_generations < 2:
        p.error("--rounds and --prompts must be >= 1 and --num-generations >= 2")
    return args


# ---------------------------------------------------------------- workers (one implementation each)


def worker_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = run_ours(args) if args.worker == "ours" else run_trl(args)
    result["impl"] = args.worker
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result), flush=True)


def task_config():
    from swarmgrpo.trainer.tasks import TaskConfig

    return TaskConfig(name="arithmetic", reward_weights={"correctness": 1.0, "brevity": 0.1})


def bench_examples(args: argparse.Namespace):
    """The prompts of all steps, in order: the first `prompts × steps` of the task's training stream."""
    from swarmgrpo.trainer.tasks import make_task

    task = make_task(task_config())
    return task, list(itertools.islice(task.train_examples(0), args.prompts * args.steps))


def run_ours(args: argparse.Namespace) -> dict:
    from swarmgrpo.core.configtree import load_config
    from swarmgrpo.node.engines.choose import build_engine
    from swarmgrpo.node.solo import rollout
    from swarmgrpo.trainer.config import TrainConfig
    from swarmgrpo.trainer.models import load_model
    from swarmgrpo.trainer.step import GRPOStep

    batch = args.prompts * args.num_generations
    overrides = [
        f"model={json.dumps(args.model_dir)}",
        f"generation_batch_size={batch}",
        f"num_generations={args.num_generations}",
        f"micro_batch_size={args.micro_batch}",
        f"max_completion_length={args.max_completion_length}",
        f"learning_rate={args.lr}",
        "beta=0.0",
        f"dtype={json.dumps(args.dtype)}",
        f"max_steps={args.steps}",
        "task.reward_weights={correctness = 1.0, brevity = 0.1}",
    ]
    cfg = load_config(TrainConfig, None, overrides)
    task, examples = bench_examples(args)
    model, tokenizer = load_model(cfg.model, seed=cfg.seed)
    step = GRPOStep(model, cfg, tokenizer.pad_token_id)
    engine = build_engine(args.engine, cfg, lambda: (model, tokenizer))
    step_s, gen_s, zero_std = [], [], []
    for i in range(args.steps):
        chunk = examples[i * args.prompts : (i + 1) * args.prompts]
        t0 = time.perf_counter()
        groups, gen, _ = rollout(engine, tokenizer, task, chunk, cfg, step.version, seed=cfg.seed + i)
        step.train(groups)
        engine.sync_from(model)  # vLLM: the new weights into the engine; transformers: nothing to do
        step_s.append(time.perf_counter() - t0)
        gen_s.append(gen)
        zero_std.append(sum(len(set(g.rewards)) == 1 for g in groups) / len(groups))
    settings = {
        "loss_type": cfg.loss_type,
        "advantage_estimator": cfg.advantage_estimator,
        "micro_batch_size": cfg.micro_batch_size,
        "dtype": cfg.dtype,
        "gradient_checkpointing": False,
        "engine": args.engine,
    }
    engine.close()
    return {"step_s": step_s, "gen_s": gen_s, "zero_std_frac": zero_std, "settings": settings}


def trl_reward_func(task, tokenizer, examples, max_tokens: int):
    """A TRL reward function that scores with our task's reward, found by the prompt's user message."""
    by_prompt = {ex.messages[-1]["content"]: ex for ex in examples}

    def swarmgrpo_task_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        rewards = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            example = by_prompt[prompt[-1]["content"]]
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            if completion_ids is not None:
                n_tokens = len(completion_ids[i])
            else:
                n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            rewards.append(task.reward(text, example, n_tokens, max_tokens))
        return rewards

    return swarmgrpo_task_reward


def run_trl(args: argparse.Namespace) -> dict:
    import datasets
    import transformers
    import trl

    transformers.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    task, examples = bench_examples(args)
    dataset = datasets.Dataset.from_list([{"prompt": [dict(m) for m in ex.messages]} for ex in examples])
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out_dir:
        config = trl.GRPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=args.prompts * args.num_generations,  # TRL counts completions
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            learning_rate=args.lr,
            beta=0.0,
            bf16=args.trl_bf16,
            use_cpu=True,
            max_steps=args.steps,
            report_to="none",
            logging_steps=1,
            save_strategy="no",
            temperature=1.0,
            # The same optimizer as ours; neither changes the cost of a step.
            adam_beta2=0.99,
            lr_scheduler_type="constant",
            # Our prompts in our order; shuffling costs nothing but would change which prompts a step sees.
            shuffle_dataset=False,
            disable_tqdm=True,
            log_level="warning",
            seed=0,
        )
        reward = trl_reward_func(task, tokenizer, examples, args.max_completion_length)
        trainer = trl.GRPOTrainer(
            model=args.model_dir,
            reward_funcs=reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.remove_callback(transformers.PrinterCallback)  # it prints every log dict to stdout
        timer = attach_step_timer(trainer)
        trainer.train()
    settings = trl_settings(trainer)
    return {
        "step_s": timer.step_s,
        "gen_s": timer.gen_s,
        "zero_std_frac": timer.zero_std,
        "settings": settings,
    }


TRL_SETTINGS = (
    "gradient_checkpointing",
    "loss_type",
    "scale_rewards",
    "optim",
    "bf16",
    "steps_per_generation",
    "num_iterations",
    "gradient_accumulation_steps",
)


def trl_settings(trainer) -> dict:
    """The values TRL actually ran with, its defaults included."""
    settings = {k: _plain(getattr(trainer.args, k)) for k in TRL_SETTINGS}
    settings["model_dtype"] = str(trainer.model.dtype)
    return settings


def _plain(value):
    return value if isinstance(value, bool | int | float | str | type(None)) else str(value)


def attach_step_timer(trainer):
    """Time each optimizer step (on_step_begin → on_step_end) and the generation inside it.

    TRL 1.16 logs no generation time unless a tracker (wandb, trackio) is on, so `_generate`
    (tokenise the prompts, sample, decode) is wrapped; with our settings it runs once per step.
    """
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.step_s: list[float] = []
            self.gen_s: list[float] = []
            self.zero_std: list[float] = []
            self._t0 = 0.0
            self._gen = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._gen = 0.0
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_s.append(time.perf_counter() - self._t0)
            self.gen_s.append(self._gen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "frac_reward_zero_std" in logs:
                self.zero_std.append(float(logs["frac_reward_zero_std"]))

    timer = StepTimer()
    generate = trainer._generate

    def timed_generate(prompts):
        t0 = time.perf_counter()
        try:
            return generate(prompts)
        finally:
            timer._gen += time.perf_counter() - t0

    trainer._generate = timed_generate
    trainer.add_callback(timer)
    return timer


# ---------------------------------------------------------------- parent: A/B rounds and the summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        model_dir = prepare_model(args.model, Path(tmp))
        runs = run_rounds(args, model_dir)
    summary = summarize(args, runs)
    summary["command"] = command
    print_summary(summary)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {args.json_out}")
    return 0


def prepare_model(name: str, tmp: Path) -> str:
    """The folder both sides load: the built-in cache, or for `tiny` a copy saved with its tokenizer."""
    from transformers import logging as hf_logging

    from swarmgrpo.trainer.models import TINY, load_model, resolve_model_path

    if name != TINY:
        return resolve_model_path(name)
    model, tokenizer = load_model(TINY)
    hf_logging.disable_progress_bar()  # after the load: load_model turns the bars back on when it ends
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return str(tmp)


def run_rounds(args: argparse.Namespace, model_dir: str) -> list[dict]:
    runs = []
    for r in range(args.rounds):
        order = IMPLS if r % 2 == 0 else IMPLS[::-1]  # alternate who goes first
        for impl in order:
            print(f"round {r + 1}/{args.rounds}: {impl}, {args.steps} steps ...", flush=True)
            result = run_worker(args, impl, model_dir)
            result["round"] = r + 1
            runs.append(result)
    return runs


def run_worker(args: argparse.Namespace, impl: str, model_dir: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--model-dir", model_dir]
    cmd += ["--model", args.model, "--steps", str(args.steps), "--prompts", str(args.prompts)]
    cmd += ["--num-generations", str(args.num_generations), "--lr", str(args.lr), "--dtype", args.dtype]
    cmd += ["--max-completion-length", str(args.max_completion_length), "--threads", str(args.threads)]
    cmd += ["--micro-batch", str(args.micro_batch), "--engine", args.engine]
    cmd += ["--trl-bf16"] if args.trl_bf16 else []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")  # both sides load a local folder; never reach for the Hub
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            if proc.returncode == 0 and result.get("impl") == impl:
                return result
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise SystemExit(f"the {impl} worker failed (exit {proc.returncode}); its last output:\n{tail}")


def summarize(args: argparse.Namespace, runs: list[dict]) -> dict:
    results = {}
    for impl in IMPLS:
        mine = [r for r in runs if r["impl"] == impl]
        timed = [(s, g) for r in mine for s, g in zip(r["step_s"][1:], r["gen_s"][1:], strict=True)]
        zero_std = [z for r in mine for z in r["zero_std_frac"]]
        results[impl] = {
            "warmup_s": statistics.median(r["step_s"][0] for r in mine),
            "step_s": statistics.median(s for s, _ in timed),
            "gen_s": statistics.median(g for _, g in timed),
            "rest_s": statistics.median(s - g for s, g in timed),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "zero_std_frac": statistics.fmean(zero_std) if zero_std else None,
            "timed_steps": len(timed),
            "settings": mine[0]["settings"],
        }
    ours, trl = results["ours"], results["trl"]
    return {
        "machine": machine_info(args),
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "model_dir")},
        "results": results,
        "ratios": {
            "step_s": ours["step_s"] / trl["step_s"],
            "peak_rss_mb": ours["peak_rss_mb"] / trl["peak_rss_mb"],
        },
        "targets": {
            "step_s": TARGET_STEP_RATIO_VLLM if args.engine == "vllm" else TARGET_STEP_RATIO,
            "peak_rss_mb": TARGET_RSS_RATIO,
        },
        "runs": runs,
    }


def machine_info(args: argparse.Namespace) -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if "model name" in ln]
        cpu = names[0] if names else cpu
    versions = {}
    for pkg in ("torch", "transformers", "trl", "swarmgrpo"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "cpu": cpu or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        "python": platform.python_version(),
        **versions,
    }


def print_summary(summary: dict) -> None:
    m, c, res = summary["machine"], summary["config"], summary["results"]
    print()
    print(
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), torch threads {m['threads']}; "
        f"torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, python {m['python']}"
    )
    print(
        f"config: model={c['model']} prompts={c['prompts']} G={c['num_generations']} "
        f"({c['prompts'] * c['num_generations']} completions/step) max_completion_length={c['max_completion_length']} "
        f"lr={c['lr']} rounds={c['rounds']} steps/worker={c['steps']} (first is warm-up)"
    )
    for impl in IMPLS:
        settings = " ".join(f"{k}={v}" for k, v in res[impl]["settings"].items())
        print(f"{impl} settings: {settings}")
    print()
    header = ("impl", "warm-up s", "step s", "gen s", "rest s", "peak RSS MB", "zero-std groups", "steps")
    print("{:<5} {:>10} {:>8} {:>8} {:>8} {:>12} {:>16} {:>6}".format(*header))
    for impl in IMPLS:
        r = res[impl]
        zero = "n/a" if r["zero_std_frac"] is None else f"{r['zero_std_frac']:.0%}"
        print(
            f"{impl:<5} {r['warmup_s']:>10.2f} {r['step_s']:>8.2f} {r['gen_s']:>8.2f} {r['rest_s']:>8.2f} "
            f"{r['peak_rss_mb']:>12.0f} {zero:>16} {r['timed_steps']:>6}"
        )
    print("(medians over the timed steps; peak RSS is the largest of the rounds' worker processes)")
    print()
    ratios = summary["ratios"]
    target = summary["targets"]["step_s"]
    print(
        f"ratio step time ours ({c['engine']} rollouts)/TRL: {ratios['step_s']:.2f} (target <= {target:.2f})"
    )
    print(f"ratio peak RSS ours/TRL: {ratios['peak_rss_mb']:.2f} (target <= {TARGET_RSS_RATIO:.2f})")
    print(
        "note: TRL runs with its own defaults for gradient checkpointing, loss_type and scale_rewards (above); "
        "our step skips zero-std groups (zero advantage, beta=0) while TRL trains on them."
    )


if __name__ == "__main__":
    sys.exit(main())
