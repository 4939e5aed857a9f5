"""The WAN benchmark's delaying relay (benchmarks/lib/wan.py) forwards every byte, in order, late."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
WAN = Path(__file__).resolve().parents[2] / "benchmarks" / "lib" / "wan.py"


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_relay_delays_each_direction_and_loses_nothing():
    server, target = _echo_server()
    port = _free_port()
    relay = subprocess.Popen(
        [sys.executable, str(WAN), "relay", "--delay-ms", "100", f"127.0.0.1:{port}=127.0.0.1:{target}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout.readline().strip() == "ready"
        payload = bytes(range(256)) * 4096  # 1 MiB
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            t0 = time.monotonic()
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            rtt = time.monotonic() - t0
            c.sendall(payload)
            got = bytearray()
            while len(got) < len(payload):
                got += c.recv(1 << 16)
        assert bytes(got) == payload
        assert rtt >= 0.2, f"100 ms each way, but the echo came back after {rtt * 1000:.0f} ms"
    finally:
        relay.terminate()
        relay.wait(10)
        server.close()
