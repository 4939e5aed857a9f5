"""Child peer processes for the libp2p tests: run a function of a test module in its own process, talk
JSON lines over its stdin/stdout, and stop it through its handle (never by name)."""

import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def spawn(module: str, function: str, *args: str) -> subprocess.Popen:
    """`module.function()` in a child process (argv[1:] = args), one torch thread, stderr kept aside."""
    stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (closed in stop)
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from {module} import {function}; {function}()", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    proc.stderr_file = stderr
    return proc


def send(proc: subprocess.Popen, message: dict) -> None:
    proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()


def readline(proc: subprocess.Popen, timeout: float = 90) -> dict:
    """The child's next JSON line; fails the test with the child's stderr if none comes in time."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        proc.stderr_file.seek(0)
        pytest.fail(
            f"peer process said nothing in {timeout} s; its stderr:\n{proc.stderr_file.read()[-3000:]}"
        )
    return json.loads(line)


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Close its stdin (the children's signal to finish), wait, kill if it hangs."""
    if proc.poll() is None:
        proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stderr_file.close()
