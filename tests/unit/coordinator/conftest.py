import pytest

from tests.unit.coordinator.fakes import Clock, new_store


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock, monkeypatch):
    return new_store(tmp_path, clock, monkeypatch)
