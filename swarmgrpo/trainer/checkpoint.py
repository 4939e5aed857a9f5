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
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from swarmgrpo.core.configtree import render_toml
from swarmgrpo.core.errors import UserError

PREFIX = "checkpoint-"


@dataclass
class TrainerState:
    step: int
    version: int
    prompts_consumed: int


def node_checkpoints(state_dir: str | Path, run_id: str) -> Path:
    """Where a trainer node keeps a run's checkpoints: one folder per run, since a volunteer's state
    folder outlives runs, and one run's checkpoints must neither be taken for another's nor crowd
    them out of `save_total_limit`."""
    return Path(state_dir) / "checkpoints" / re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


SOLO_FIX = "Free space on that disk, point output_dir at another, or lower save_total_limit"


def save_checkpoint(
    output_dir: str | Path,
    model,
    tokenizer,
    optimizer,
    cfg,
    state: TrainerState,
    keep: int = 0,
    fix: str = SOLO_FIX,
) -> Path:
    """Write `checkpoint-<step>`, then remove older ones so that `keep` remain with it (0: all). The
    one just written is always kept, even beside checkpoints with higher steps (a reused folder).

    A write that fails (a full disk, a file-size limit, no permission) raises CheckpointError naming
    the folder, the cause, the room it needs and `fix`; nothing half-written is left, and no other
    checkpoint is removed."""
    out = Path(output_dir)
    target = out / f"{PREFIX}{state.step}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        for leftover in out.glob(f".{PREFIX}*"):  # a save or a removal that a kill cut short
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{PREFIX}"))
    except OSError as e:
        raise CheckpointError(target, e, model, optimizer, fix) from e
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "train_config.toml").write_text(render_toml(cfg))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, staging / "rng.pt")
        (staging / "trainer_state.json").write_text(json.dumps(state.__dict__))
        if target.exists():
            _remove(target)
        staging.rename(target)
    except (OSError, RuntimeError, SafetensorError) as e:
        # The writers' errors: torch.save reports a full disk as "unexpected pos 576 vs 534" (a
        # RuntimeError) and safetensors with its own type. Anything else is a bug and stays one.
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(target, e, model, optimizer, fix) from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if keep:
        others = [c for c in _checkpoints(out) if c != target]
        for old in others[: max(0, len(others) - (keep - 1))]:
            _remove(old)
    return target


def _remove(checkpoint: Path) -> None:
    """Out of sight first (a hidden name), then deleted: a removal cut short leaves no folder that
    looks like a checkpoint, and the next save clears what is left."""
    hidden = checkpoint.with_name(f".{checkpoint.name}-removing")
    checkpoint.rename(hidden)
    shutil.rmtree(hidden, ignore_errors=True)


class CheckpointError(UserError):
    """A checkpoint could not be written. A node logs it and trains on; `swarmgrpo train` stops with
    it (its metrics and earlier checkpoints stay, so it resumes from the newest)."""

    def __init__(self, target: Path, cause: Exception, model, optimizer, fix: str):
        tensors = list(model.state_dict().values()) + [
            t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
        ]
        unique = {t.data_ptr(): t for t in tensors}  # a tied head is the embedding, stored once
        need = sum(t.numel() * t.element_size() for t in unique.values())
        try:
            existing = next(p for p in target.parents if p.exists())
            free = f"{shutil.disk_usage(existing).free / 1e9:.1f} GB free there"
        except (OSError, StopIteration):
            free = "free space unknown"
        super().__init__(
            f"could not write checkpoint {target}: {type(cause).__name__}: {cause} ({free}; a checkpoint "
            f"of this model takes ~{need / 1e9:.2f} GB). {fix}"
        )


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
