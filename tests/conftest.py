"""Shared fixtures. The `gpu` marker skips without CUDA; built-in model caches go to one place."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny():
    from swarmgrpo.trainer.models import load_model

    return load_model("tiny")
