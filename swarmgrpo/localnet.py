"""Named `python -m swarmgrpo ...` child processes on this machine, each with its own log file.

Used by `swarmgrpo demo`, the network tests and the benchmarks. Everything started here is stopped
through its own handle (terminate, then kill), never by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class Processes:
    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    def start(self, name: str, args: list[str], cpu: int | None = None) -> subprocess.Popen:
        """Start `swarmgrpo <args>` logging to root/<name>.log, pinned to core `cpu` if given."""
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        with (self.root / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*pin, sys.executable, "-m", "swarmgrpo", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def failed(self) -> str | None:
        """A sentence about the first process that exited with an error, with its log's end."""
        for name, p in self.procs.items():
            if p.poll() not in (None, 0):
                return f"{name} exited with {p.returncode}; its log ends:\n{self.log(name)[-1500:]}"
        return None

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
