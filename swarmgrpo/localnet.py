"""Named `python -m swarmgrpo ...` child processes on this machine, each with its own log file.

Used by `swarmgrpo demo`, the network tests and the benchmarks. Everything started here is stopped
through its own handle (terminate, then kill), never by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from swarmgrpo.core.errors import UserError


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

    def start_coordinator(self, config: Path, state_dir: Path, timeout: float = 120.0) -> dict:
        """Start `swarmgrpo coordinator --config config` as "coordinator" and wait until it is bound:
        the addresses it wrote to state_dir/ports.json ("grpc", "http", ...)."""
        ports = state_dir / "ports.json"
        ports.unlink(missing_ok=True)
        proc = self.start("coordinator", ["coordinator", "--config", str(config)])
        deadline = time.monotonic() + timeout
        while not ports.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UserError(
                    f"the coordinator did not start within {timeout:.0f} s; its log ends:\n"
                    + self.log("coordinator")[-1500:]
                )
            time.sleep(0.1)
        return json.loads(ports.read_text())

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
