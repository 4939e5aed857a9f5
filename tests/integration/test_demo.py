"""`make demo` end to end, on the tiny model: what a newcomer runs first must not be the one command
nothing tests. The demo's own config, with overrides only for size."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_trains_a_network_and_scores_the_checkpoint(tmp_path):
    out = tmp_path / "demo"
    stale = out / "left-from-an-earlier-demo"
    stale.mkdir(parents=True)
    demo = [sys.executable, "-m", "swarmgrpo", "demo", "--config", str(ROOT / "deploy/demo.toml")]
    sizes = ["train.model=tiny", "train.max_steps=2", "train.eval_n=4", "train.max_completion_length=8"]
    result = subprocess.run(
        [*demo, "--out", str(out), "--rollout-nodes", "1", *sizes, "train.generation_batch_size=16"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["version"] for s in summary["steps"]] == [1, 2]
    assert summary["eval_before"]["n"] == summary["eval_after"]["n"] == 4
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint == out / "trainer" / "checkpoints" / "demo" / "checkpoint-2"  # the run's own folder
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert "held-out accuracy before" in result.stdout and "held-out accuracy after" in result.stdout
    assert "step   2/2" in result.stdout
    assert not stale.exists()  # --out is wiped first, as its help says
    for name in ("coordinator", "trainer", "rollout0"):  # every process left a log, and no traceback
        log = (out / f"{name}.log").read_text()
        assert "Traceback" not in log, log[-3000:]
