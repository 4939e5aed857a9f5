"""The command line's entry: `python -m swarmgrpo` and `python -m swarmgrpo.cli` (run in-process by
runpy, the machinery `python -m` uses, so the module runs as `__main__` exactly as from a shell), and
`swarmgrpo bench`, which finds the benchmarks in the checkout it runs from."""

import runpy
import sys
import warnings

import pytest

from swarmgrpo.cli import main

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


def test_bench_finds_the_benchmarks_in_the_checkout_it_runs_from(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "benchmarks"
    (folder / "lib").mkdir(parents=True)
    (folder / "README.md").write_text("# benchmarks\n")
    (folder / "speed.py").write_text(
        '"""How fast it goes.\n\nMore."""\nif __name__ == "__main__":\n    pass\n'
    )
    (folder / "lib" / "shared.py").write_text('if __name__ == "__main__":\n    pass\n')  # not a benchmark
    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["speed", "How", "fast", "it", "goes."]
    assert "shared" not in out


def test_bench_outside_a_checkout_says_where_the_benchmarks_are(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 2
    assert "run `swarmgrpo bench` from the root of a clone of the repository" in capsys.readouterr().err
