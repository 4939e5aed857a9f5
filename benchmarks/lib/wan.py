"""An emulated wide-area network on one machine: one network namespace per peer, links shaped with
`tc tbf`, and a delaying TCP relay of our own (this kernel has no `netem` qdisc to add latency).

    hub namespace:  veth h<i> (10.77.<i>.2)  ── tbf <rate> ──►  peer i's eth0
    peer i:         eth0 (10.77.<i>.1)        ── tbf <rate> ──►  hub
                    default route via 10.77.<i>.2; the hub does not forward between peers

Every peer reaches the others only through the relay, which runs in the hub namespace, listens on
10.77.<i>.2:<port of i> for each peer i and forwards to peer i's own address, holding every chunk
for `delay_ms` in each direction (2 x delay_ms of round-trip time). Peers announce the relay's
address; a peer's real address is unreachable from the others (no forwarding in the hub), so no
traffic bypasses the shaping or the delay.

The relay is a split TCP connection: it reads as fast as the sending link allows and writes after
the delay, so the sender's TCP sees a short RTT and the delay adds to every message's latency
rather than throttling a window; the link speeds are the tbf rates.

Needs root (`ip netns`, `tc`). `Wan` sets everything up and tears it down (also on errors); the
relay is `python benchmarks/lib/wan.py relay --delay-ms D LISTEN_HOST:PORT=TARGET_HOST:PORT ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time

CHUNK = 1 << 18


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


class Wan:
    """`n` peer namespaces behind a hub, each link shaped to `rate_mbit` both ways."""

    def __init__(self, n: int, rate_mbit: float, delay_ms: float):
        if os.geteuid() != 0:
            raise SystemExit("the emulated WAN needs root (ip netns, tc): run as root or drop --wan")
        self.n, self.rate_mbit, self.delay_ms = n, rate_mbit, delay_ms
        tag = f"sgw{os.getpid() % 100000}"
        self.hub = f"{tag}h"
        self.peers = [f"{tag}p{i}" for i in range(n)]
        self.relay: subprocess.Popen | None = None
        self._made: list[str] = []
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def peer_ip(self, i: int) -> str:
        return f"10.77.{i}.1"

    def relay_ip(self, i: int) -> str:
        return f"10.77.{i}.2"

    def exec_prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program inside peer i's namespace."""
        return ["ip", "netns", "exec", self.peers[i]]

    def _shape(self, ns: str, dev: str) -> None:
        # burst: enough for the rate at a 1 ms timer tick, never below 32 KB; queue: 100 ms worth.
        burst = max(32 * 1024, int(self.rate_mbit * 1e6 / 8 / 1000))
        _run(
            "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
            "rate", f"{self.rate_mbit}mbit", "burst", str(burst), "latency", "100ms",
        )  # fmt: skip

    def _setup(self) -> None:
        _run("ip", "netns", "add", self.hub)
        self._made.append(self.hub)
        _run("ip", "netns", "exec", self.hub, "ip", "link", "set", "lo", "up")
        for i, ns in enumerate(self.peers):
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
            outer, inner = f"{self.hub[:-1]}v{i}", f"{self.hub[:-1]}e{i}"
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", outer, "netns", self.hub)
            _run("ip", "link", "set", inner, "netns", ns)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", inner, "name", "eth0")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.peer_ip(i)}/30", "dev", "eth0")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            _run("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", self.relay_ip(i))
            _run("ip", "netns", "exec", self.hub, "ip", "addr", "add", f"{self.relay_ip(i)}/30", "dev", outer)
            _run("ip", "netns", "exec", self.hub, "ip", "link", "set", outer, "up")
            self._shape(ns, "eth0")  # the peer's upload
            self._shape(self.hub, outer)  # its download
        _run("ip", "netns", "exec", self.hub, "sysctl", "-qw", "net.ipv4.ip_forward=0")

    def start_relay(self, routes: list[tuple[str, int, str, int]]) -> None:
        """Relay (listen host, listen port) -> (target host, target port), in the hub namespace."""
        spec = [f"{lh}:{lp}={th}:{tp}" for lh, lp, th, tp in routes]
        cmd = ["ip", "netns", "exec", self.hub, sys.executable, os.path.abspath(__file__), "relay"]
        self.relay = subprocess.Popen(
            [*cmd, "--delay-ms", str(self.delay_ms), *spec], stdout=subprocess.PIPE, text=True
        )
        if self.relay.stdout.readline().strip() != "ready":
            raise RuntimeError("the WAN relay did not start")

    def close(self) -> None:
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.relay.wait(10)
        for ns in reversed(self._made):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()

    def __enter__(self) -> Wan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- the delaying relay


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy reader -> writer, each chunk written `delay_s` after it was read, in order."""
    queue: asyncio.Queue = asyncio.Queue()

    async def feed():
        while chunk := await reader.read(CHUNK):
            queue.put_nowait((time.monotonic() + delay_s, chunk))
        queue.put_nowait((time.monotonic() + delay_s, b""))

    feeder = asyncio.create_task(feed())
    try:
        while True:
            due, chunk = await queue.get()
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
    finally:
        feeder.cancel()
        with contextlib.suppress(Exception):
            writer.write_eof()


async def _serve_relay(routes: list[tuple[str, int, str, int]], delay_s: float) -> None:
    async def handle(target_host, target_port, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer, delay_s), _pump(up_reader, writer, delay_s))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            up_writer.close()

    servers = []
    for lh, lp, th, tp in routes:
        servers.append(await asyncio.start_server(lambda r, w, th=th, tp=tp: handle(th, tp, r, w), lh, lp))
    print("ready", flush=True)
    await asyncio.Event().wait()


def relay_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="lib/wan.py relay")
    p.add_argument("--delay-ms", type=float, required=True, help="added one-way delay")
    p.add_argument("routes", nargs="+", help="LISTEN_HOST:PORT=TARGET_HOST:PORT")
    args = p.parse_args(argv)
    routes = []
    for spec in args.routes:
        listen, target = spec.split("=")
        lh, lp = listen.rsplit(":", 1)
        th, tp = target.rsplit(":", 1)
        routes.append((lh, int(lp), th, int(tp)))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_relay(routes, args.delay_ms / 1000))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        relay_main(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
