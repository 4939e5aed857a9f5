"""Checkpoints: the newest `save_total_limit` are kept, and a failed save removes nothing."""

import pytest
import torch

from swarmgrpo.protocol.errors import ConfigError
from swarmgrpo.trainer.checkpoint import TrainerState, latest_checkpoint, save_checkpoint
from swarmgrpo.trainer.config import TrainConfig


def _save(out, tiny, step, keep):
    model, tok = tiny
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint(out, model, tok, optimizer, TrainConfig(), TrainerState(step, step, 0), keep=keep)


def _names(out):
    return sorted(p.name for p in out.iterdir())


def test_only_the_newest_checkpoints_are_kept(tiny, tmp_path):
    (tmp_path / "checkpoint-best").mkdir()  # not ours: left alone
    for step in (2, 4, 6, 10):
        _save(tmp_path, tiny, step, keep=2)
    assert _names(tmp_path) == ["checkpoint-10", "checkpoint-6", "checkpoint-best"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"


def test_zero_keeps_every_checkpoint(tiny, tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, tiny, step, keep=0)
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_a_save_that_fails_removes_no_older_checkpoint(tiny, tmp_path, monkeypatch):
    for step in (1, 2):
        _save(tmp_path, tiny, step, keep=2)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path, tiny, 3, keep=2)
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-2"]  # nor a half-written one


def test_a_negative_limit_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"save_total_limit.*set save_total_limit to 0 or more"):
        TrainConfig(save_total_limit=-1).validate()
