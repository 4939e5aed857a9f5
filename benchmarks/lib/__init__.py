"""What several benchmarks share; the benchmarks are the scripts in benchmarks/, and none imports another.

- `wan`: the emulated wide-area network (network namespaces, `tc tbf` links, a delaying relay);
- `parity`: the seeded tiny-model GRPO run that `compression_parity` trains and `ef_under_adam` replays;
- `output`: a child's JSON answer, and `--json-out` files.

A script runs as `python benchmarks/NAME.py` from the repository's root: Python puts benchmarks/
first on sys.path, so `from lib.wan import Wan` finds this package with no path edits.
"""
