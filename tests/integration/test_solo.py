"""Solo training end to end on the tiny model: it learns, it resumes, it refuses bad input cleanly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swarmgrpo.core.configtree import load_config
from swarmgrpo.node.solo import train
from swarmgrpo.trainer.config import TrainConfig
from swarmgrpo.trainer.models import SMOLLM2, load_model, resolve_model_path
from tests.limits import file_size_limit

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

# The toy task rewards the share of capital letters: the random tiny model starts near 0.15 and,
# at a learning rate only a random 3M-parameter model tolerates, reaches ~1.0 within 15 steps
# (fixed seed, so the run is repeatable).
LEARN = [
    "model=tiny",
    "task.name=uppercase",
    "task.reward_weights={correctness=1.0}",
    "max_completion_length=8",
    "num_generations=8",
    "generation_batch_size=64",
    "micro_batch_size=64",
    "learning_rate=3e-2",
    "max_steps=20",
    "resume=false",
]


def _cfg(tmp_path, overrides):
    return load_config(TrainConfig, None, [*overrides, f"output_dir={tmp_path}"])


def _rewards(path):
    return [json.loads(line)["reward_mean"] for line in path.read_text().splitlines()]


def test_tiny_model_learns_the_toy_task(tmp_path):
    summary = train(_cfg(tmp_path, LEARN), log=lambda _: None, progress=False)
    rewards = _rewards(tmp_path / "metrics.jsonl")
    assert summary["final_step"] == 20 and len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, f"mean reward {first:.3f} -> {last:.3f}: no learning"
    assert (tmp_path / "checkpoint-20" / "model.safetensors").is_file()


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    base = [
        "model=tiny",
        "task.name=uppercase",
        "max_completion_length=6",
        "generation_batch_size=16",
        "learning_rate=1e-3",
        "save_steps=2",
    ]
    straight = tmp_path / "straight"
    train(_cfg(straight, [*base, "max_steps=4"]), log=lambda _: None, progress=False)
    split = tmp_path / "split"
    train(_cfg(split, [*base, "max_steps=2"]), log=lambda _: None, progress=False)
    summary = train(_cfg(split, [*base, "max_steps=4"]), log=lambda _: None, progress=False)
    assert summary["start_step"] == 2 and summary["final_step"] == 4
    assert _rewards(split / "metrics.jsonl") == _rewards(straight / "metrics.jsonl")
    a, _ = load_model(str(straight / "checkpoint-4"))
    b, _ = load_model(str(split / "checkpoint-4"))
    start, _ = load_model(str(split / "checkpoint-2"))
    # Same samples and rewards bit for bit (above). The weights agree to float rounding only: the
    # resumed process multiplies weights read back from safetensors, the straight one weights it
    # updated in place, and the CPU GEMM kernels' summation order can differ between such buffers
    # (seen here: 4e-9 on weights of size 2e-2). Two optimizer steps move them ~1e6 times more.
    for (name, x), y, x0 in zip(
        a.state_dict().items(), b.state_dict().values(), start.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(y, x, atol=1e-7, rtol=0, msg=name)
        assert (x - x0).abs().max() > 1e-4, f"{name} did not move in steps 3-4"


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "swarmgrpo", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["train", "learning_rat=1e-5"],
            "config field 'learning_rat': unknown key; did you mean 'learning_rate'?",
        ),
        (["train", "num_generations=x"], "config field 'num_generations': expected an integer"),
        (["train", "generation_batch_size=30"], "not divisible by num_generations=8"),
        (["train", "--config", "missing.toml"], "config file 'missing.toml' does not exist"),
        (["train", "model=tiny", "task.name=jsonl", "task.dataset=nope.jsonl"], "nope.jsonl"),
        (["train", "model=no/such-model"], "model 'no/such-model' not found"),
        (["eval", "--model", "tiny", "--n", "0"], "--n must be at least 1"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, words):
    result = _cli(*args, f"output_dir={tmp_path / 'out'}" if args[0] == "train" else "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def _train_tiny(out, *overrides):
    """`swarmgrpo train` on the tiny model and the toy task, small enough for a few seconds."""
    tiny = ["model=tiny", "task.name=uppercase", "generation_batch_size=8", "max_completion_length=4"]
    return _cli("train", *tiny, *overrides, f"output_dir={out}", cwd=REPO)


def _one_error_line(result) -> str:
    """The one `error:` line of a run that stopped on bad input: exit 2, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_reward_function_that_raises_stops_with_a_clear_error(tmp_path):
    result = _train_tiny(tmp_path / "out", "task.reward_fn=tests.unit.reward_fns_for_tests:raises")
    error = _one_error_line(result)
    assert "reward function" in error and "unset task.reward_fn" in error
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_a_checkpoint_that_cannot_be_written_stops_with_the_fix_and_keeps_the_metrics(tmp_path):
    resolve_model_path(SMOLLM2)  # the tokenizer's cache is built before the limit, not under it
    out = tmp_path / "out"
    with file_size_limit(8 << 20):  # the tiny model's weights are 13 MB: as on a disk that is full
        result = _train_tiny(out, "max_steps=3", "save_steps=1")
    error = _one_error_line(result)
    assert f"could not write checkpoint {out / 'checkpoint-1'}" in error
    assert "File too large" in error and "lower save_total_limit" in error
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # the step it took is recorded
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]  # nothing half-written


def test_print_config_shows_resolved_values():
    result = _cli("train", "--print-config", "task.level=2", "beta=0.04")
    assert result.returncode == 0
    assert "beta = 0.04" in result.stdout and "level = 2" in result.stdout


def test_eval_json(tmp_path):
    result = _cli(
        "eval", "--model", "tiny", "--task", "arithmetic", "--n", "5", "--max-tokens", "4", "--json"
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["n"] == 5 and 0.0 <= out["accuracy"] <= 1.0


def test_bench_lists_the_benchmarks_runs_one_and_refuses_an_unknown_name():
    listed = _cli("bench", cwd=REPO)  # the benchmarks are found in the checkout it runs from
    assert listed.returncode == 0, listed.stderr
    names = [
        line.split()[0]
        for line in listed.stdout.splitlines()[: len(list((REPO / "benchmarks").glob("*.py")))]
    ]
    assert names == sorted(p.stem for p in (REPO / "benchmarks").glob("*.py"))
    assert "FP8 linear layers against bf16" in listed.stdout
    shown = _cli("bench", "fp8", "--help", cwd=REPO)  # what follows the name is the benchmark's own
    assert shown.returncode == 0 and shown.stdout.startswith("usage: fp8.py"), shown.stderr
    unknown = _cli("bench", "fp9", cwd=REPO)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "error: no benchmark 'fp9'; there are: allreduce," in unknown.stderr
