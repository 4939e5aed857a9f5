"""Real coordinator and node processes on loopback, for the network tests and benchmarks.

Everything started here is a child process of the test (`swarmgrpo.localnet.Processes`), stopped
through its handle, never by name.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

from swarmgrpo.localnet import Processes

TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(value) -> str:
    """A value as TOML: JSON's form, but a dict as an inline table."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_run_config(path: Path, state_dir: Path, port: int, **overrides) -> Path:
    train = {
        "model": "tiny",
        "max_steps": 4,
        "num_generations": 4,
        "generation_batch_size": 8,
        "max_completion_length": 8,
        "learning_rate": 0.03,
        "seed": 0,
    }
    train.update(overrides.pop("train", {}))
    top = {
        "run_id": "test-run",
        "join_token": TOKEN,
        "listen": f"127.0.0.1:{port}",
        "http_listen": "127.0.0.1:0",
        "dht_listen": ["/ip4/127.0.0.1/tcp/0"],
        "state_dir": str(state_dir),
        "max_staleness": 1,
        "heartbeat_interval_s": 1.0,
        "prompts_per_lease": 2,
    }
    top.update(overrides)
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    lines.append("[train]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in train.items()]
    lines += ["[train.task]", 'name = "uppercase"']
    path.write_text("\n".join(lines) + "\n")
    return path


class Network:
    def __init__(self, root: Path, **overrides):
        self.root = root
        self.port = free_port()
        self.state_dir = root / "coordinator"
        self.config = write_run_config(root / "run.toml", self.state_dir, self.port, **overrides)
        self.address = f"127.0.0.1:{self.port}"
        self.procs = Processes(root)
        self.env = self.procs.env
        self.coordinator: subprocess.Popen | None = None

    def start_coordinator(self, timeout: float = 60.0) -> subprocess.Popen:
        self.http = self.procs.start_coordinator(self.config, self.state_dir, timeout).get("http")
        self.coordinator = self.procs.procs["coordinator"]
        return self.coordinator

    def start_node(
        self, name: str, roles: str = "auto", *extra: str, weights: str = "file", state: str = ""
    ) -> subprocess.Popen:
        """`swarmgrpo node` logging to root/<name>.log, its state in root/<state or name>."""
        args = [
            "node",
            "--join",
            self.address,
            "--token",
            TOKEN,
            "--roles",
            roles,
            "--state-dir",
            str(self.root / (state or name)),
        ]
        args += ["--p2p-listen", "/ip4/127.0.0.1/tcp/0"]
        if weights == "file":
            args += ["--weights-dir", str(self.root / "weights")]
        args += extra
        return self.procs.start(name, args)

    def log(self, name: str) -> str:
        return self.procs.log(name)

    def kill9_coordinator(self) -> None:
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait(10)

    def wait(self, proc: subprocess.Popen, timeout: float, name: str = "") -> int:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{name or proc.args} still running after {timeout}s:\n{self.logs()}"
            ) from None

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def close(self) -> None:
        self.procs.stop()
