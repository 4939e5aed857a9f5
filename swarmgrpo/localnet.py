"""A whole network on this machine: a coordinator and nodes, each a named `python -m swarmgrpo`
child process on loopback with its own log file.

`LocalNetwork` is what `swarmgrpo demo`, the network tests and the benchmarks build their networks
with. It writes the run's config into its folder (the coordinator's state goes to root/coordinator),
starts the coordinator and waits until it is bound, starts nodes joined to it, and stops what it
started through each process's own handle (terminate, then kill), never by name.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from swarmgrpo.coordinator.config import RunConfig
from swarmgrpo.core.configtree import from_dict, render_toml
from swarmgrpo.core.errors import UserError

LOOPBACK_P2P = "/ip4/127.0.0.1/tcp/0"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for a coordinator that must come back on
    the same address after a restart)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment of every process started here: one OpenMP thread, quiet tokenizers."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_config(*layers: dict) -> RunConfig:
    """A RunConfig from nested dicts of settings ({"max_staleness": 1, "train": {"task": {...}}}),
    each later layer overriding the earlier ones key by key."""
    merged: dict = {}
    for layer in layers:
        _merge_into(merged, layer)
    return from_dict(RunConfig, merged)


def _merge_into(base: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


class LocalNetwork:
    """The processes of one run under `root`: root/run.toml, root/<name>.log for each process,
    root/coordinator (the coordinator's state), root/<node> (each node's state), root/weights."""

    def __init__(self, root: Path, config: RunConfig | dict, env: dict[str, str] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.run = config if isinstance(config, RunConfig) else run_config(config)
        self.state_dir = self.root / "coordinator"
        self.run.state_dir = str(self.state_dir)
        self.config = self.root / "run.toml"
        self.config.write_text(render_toml(self.run))
        port = self.run.listen.rsplit(":", 1)[1]
        self.address: str | None = self.run.listen if port != "0" else None
        self.http: str | None = None
        self.env = env or child_env()
        self.procs: dict[str, subprocess.Popen] = {}
        self.coordinator: subprocess.Popen | None = None

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

    def start_coordinator(self, timeout: float = 120.0) -> dict:
        """Start the coordinator (again, after a kill) as "coordinator" and wait until it is bound:
        the addresses it wrote to state_dir/ports.json ("grpc", "http", "dht")."""
        ports = self.state_dir / "ports.json"
        ports.unlink(missing_ok=True)
        proc = self.coordinator = self.start("coordinator", ["coordinator", "--config", str(self.config)])
        deadline = time.monotonic() + timeout
        while not ports.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UserError(
                    f"the coordinator did not start within {timeout:.0f} s; its log ends:\n"
                    + self.log("coordinator")[-1500:]
                )
            time.sleep(0.1)
        bound = json.loads(ports.read_text())
        self.address, self.http = bound["grpc"], bound.get("http")
        return bound

    def start_node(
        self,
        name: str,
        roles: str = "auto",
        *extra: str,
        weights: str = "file",
        state: str = "",
        cpu: int | None = None,
    ) -> subprocess.Popen:
        """`swarmgrpo node` joined to the coordinator, its libp2p host on loopback, its state in
        root/<state or name>; new weights over libp2p ("p2p") or through root/weights ("file")."""
        args = ["node", "--join", self.address, "--token", self.run.join_token, "--roles", roles]
        args += ["--state-dir", str(self.root / (state or name)), "--p2p-listen", LOOPBACK_P2P]
        if weights == "file":
            args += ["--weights-dir", str(self.root / "weights")]
        return self.start(name, [*args, *extra], cpu)

    def kill9_coordinator(self) -> None:
        """The coordinator dies at once (SIGKILL), as in a crash or a power cut."""
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait(10)

    def wait(self, proc: subprocess.Popen, timeout: float, name: str = "") -> int:
        """The exit status of `proc`; past `timeout` an error with every log's end."""
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{name or proc.args} still running after {timeout}s:\n{self.logs()}"
            ) from None

    def failed(self) -> str | None:
        """A sentence about the first process that exited with an error, with its log's end."""
        for name, p in self.procs.items():
            if p.poll() not in (None, 0):
                return f"{name} exited with {p.returncode}; its log ends:\n{self.log(name)[-1500:]}"
        return None

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        """The end of every log under root, for a failure's message."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def db(self) -> sqlite3.Connection:
        """The coordinator's database, for what its public status does not show."""
        return sqlite3.connect(self.state_dir / "run.sqlite")

    def close(self) -> None:
        """Stop every process started here: terminate, then kill what is left after 20 s."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def __enter__(self) -> LocalNetwork:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
