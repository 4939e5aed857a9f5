"""`python -m swarmgrpo` and `python -m swarmgrpo.cli` reach the command line (run in-process by
runpy, the machinery `python -m` uses, so the module runs as `__main__` exactly as from a shell)."""

import runpy
import sys
import warnings

import pytest

SUBCOMMANDS = ("train", "eval", "demo", "bench", "status", "coordinator", "node")


@pytest.mark.parametrize("module", ["swarmgrpo", "swarmgrpo.cli"])
def test_python_m_help_lists_the_subcommands(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as done:
        warnings.simplefilter("ignore", RuntimeWarning)  # swarmgrpo.cli is already imported: runpy says so
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: swarmgrpo")
    assert all(name in out for name in SUBCOMMANDS), out
