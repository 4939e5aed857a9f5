"""Checkpoints: the newest `save_total_limit` are kept, and a failed save removes nothing."""

import pytest
import torch

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.checkpoint import CheckpointError, TrainerState, latest_checkpoint, save_checkpoint
from swarmgrpo.trainer.config import TrainConfig
from tests.limits import file_size_limit


def _save(out, tiny, step, keep):
    model, tok = tiny
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        optimizer.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return save_checkpoint(out, model, tok, optimizer, TrainConfig(), TrainerState(step, step, 0), keep=keep)


def _names(out):
    return sorted(p.name for p in out.iterdir())


def test_only_the_newest_checkpoints_are_kept(tiny, tmp_path):
    (tmp_path / "checkpoint-best").mkdir()  # not ours: left alone
    for step in (2, 4, 6, 10):
        _save(tmp_path, tiny, step, keep=2)
    assert _names(tmp_path) == ["checkpoint-10", "checkpoint-6", "checkpoint-best"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"


def test_the_checkpoint_just_written_is_kept_beside_higher_steps(tiny, tmp_path):
    """A reused folder (an earlier run's steps 400 and 500): pruning must not take the new one."""
    for step in (400, 500):
        _save(tmp_path, tiny, step, keep=2)
    path = _save(tmp_path, tiny, 2, keep=2)
    assert path.is_dir() and _names(tmp_path) == ["checkpoint-2", "checkpoint-500"]


def test_what_a_killed_save_or_removal_left_is_cleared_by_the_next_save(tiny, tmp_path):
    (tmp_path / ".checkpoint-abc123").mkdir()  # staging of a save cut short
    (tmp_path / ".checkpoint-7-removing").mkdir()  # a removal cut short
    _save(tmp_path, tiny, 8, keep=2)
    assert _names(tmp_path) == ["checkpoint-8"]


def test_a_bug_in_the_saving_code_stays_a_bug(tiny, tmp_path):
    """Only the writers' errors are a full disk's sentence; anything else keeps its own traceback."""
    model, _ = tiny

    class Broken:
        def save_pretrained(self, path):
            raise TypeError("a programming error")

    with pytest.raises(TypeError, match="a programming error"):
        save_checkpoint(
            tmp_path,
            model,
            Broken(),
            torch.optim.AdamW(model.parameters()),
            TrainConfig(),
            TrainerState(1, 1, 0),
        )
    assert _names(tmp_path) == []  # its staging folder is gone too


def test_zero_keeps_every_checkpoint(tiny, tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, tiny, step, keep=0)
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_a_save_that_fails_names_the_cause_and_removes_nothing(tiny, tmp_path):
    for step in (1, 2):
        _save(tmp_path, tiny, step, keep=2)
    with pytest.raises(CheckpointError) as failed, file_size_limit(1 << 20):  # the tiny model is 13 MB
        _save(tmp_path, tiny, 3, keep=2)
    message = str(failed.value)
    assert f"could not write checkpoint {tmp_path / 'checkpoint-3'}" in message
    assert "File too large" in message and "GB free there" in message, message
    assert "a checkpoint of this model takes ~0.04 GB" in message  # fp32 weights + both AdamW moments
    assert "lower save_total_limit" in message
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-2"]  # nor a half-written one


def test_a_negative_limit_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"save_total_limit.*set save_total_limit to 0 or more"):
        TrainConfig(save_total_limit=-1).validate()
