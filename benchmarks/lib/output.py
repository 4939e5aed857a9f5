"""What a benchmark reads from the processes it starts and writes for `--json-out`."""

from __future__ import annotations

import json
from pathlib import Path


def json_answer(stdout: str):
    """A child's answer: the last line of its output, as JSON (what it printed before is its log)."""
    return json.loads(stdout.strip().splitlines()[-1])


def write_json(path: str, data) -> None:
    """`data` as JSON at `path`; nothing when no path was given (`--json-out` unset)."""
    if path:
        Path(path).write_text(json.dumps(data, indent=1) + "\n")
