"""Checkpoints: `output_dir/checkpoint-<step>/` holding safetensors weights, the HF config and
tokenizer, the run config (TOML), the optimizer state and the trainer state (step, version, RNG).

A checkpoint is written to a hidden staging folder and renamed into place, so a crash mid-write
never leaves a half checkpoint that `latest_checkpoint` would pick up. Only once the new one is in
place are the oldest removed, down to `keep` (SmolLM2-135M's checkpoint is ~1.6 GB with its AdamW
moments: a node that kept every one would fill a volunteer's disk in a long run).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from swarmgrpo.protocol.configtree import render_toml

PREFIX = "checkpoint-"


@dataclass
class TrainerState:
    step: int
    version: int
    prompts_consumed: int


def save_checkpoint(
    output_dir: str | Path, model, tokenizer, optimizer, cfg, state: TrainerState, keep: int = 0
) -> Path:
    """Write `checkpoint-<step>`, then remove the oldest so that the newest `keep` remain (0: all)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{PREFIX}{state.step}"
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{PREFIX}"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "train_config.toml").write_text(render_toml(cfg))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, staging / "rng.pt")
        (staging / "trainer_state.json").write_text(json.dumps(state.__dict__))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if keep:
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints in `out`, oldest first."""
    found = [
        p
        for p in out.glob(f"{PREFIX}*")
        if p.name[len(PREFIX) :].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    out = Path(output_dir)
    if not out.is_dir():
        return None
    found = _checkpoints(out)
    return found[-1] if found else None


def load_trainer_state(checkpoint: Path, optimizer) -> TrainerState:
    # on the CPU first: load_state_dict moves each state tensor to its parameter's device
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True, map_location="cpu"))
    rng = torch.load(checkpoint / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return TrainerState(**json.loads((checkpoint / "trainer_state.json").read_text()))
