"""Gradient all-reduce between N peer processes: bytes on the wire and seconds per round, per compression.

    python benchmarks/allreduce.py                                  # SmolLM2-135M's gradients, N = 2, 3, 4
    python benchmarks/allreduce.py --model tiny --peers 2 --rounds 2  # smoke test

Each peer is its own process with its own libp2p host (loopback), holding random gradients shaped like
the model's parameters (no weights are loaded: only the shapes matter). For every (compression, N)
the peers run `--rounds` averaging rounds through `GradientAverager`, the same code gradient workers
use; the table gives, per peer and round, the medians of bytes sent and of seconds, and the byte
ratio against the float32 all-reduce of the same gradients.

With `--wan` (root), every peer runs in its own network namespace behind links shaped to
`--rate-mbit` both ways, reaching the others only through a relay that adds `--rtt-ms` of round-trip
time (`benchmarks/lib/wan.py`); each row then also gives the physical limit of the round, the bytes the
busiest peer sends over its link plus one round trip per all-reduce (a slice must reach its owner
and its mean come back; PowerSGD runs two all-reduces in turn), and the measured time's ratio to it.

    python benchmarks/allreduce.py --wan --rate-mbit 100 --rtt-ms 50
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lib.output import write_json
from lib.wan import Wan

from swarmgrpo.trainer.config import GRAD_COMPRESSIONS as COMPRESSIONS

ROOT = Path(__file__).resolve().parents[1]
RELAY_PORT = 40000
TARGET_POWERSGD_RATIO = 400
TARGET_X_LIMIT = 1.5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="smollm2-135m", help="smollm2-135m or tiny: whose parameter shapes to use"
    )
    p.add_argument("--peers", default="2,3,4", help="comma-separated group sizes N")
    p.add_argument("--compressions", default=",".join(COMPRESSIONS))
    p.add_argument("--rank", type=int, default=1, help="PowerSGD rank")
    p.add_argument("--rounds", type=int, default=3, help="rounds per (compression, N); the first is warm-up")
    p.add_argument("--wan", action="store_true", help="emulated WAN: namespaces, tbf, delaying relay")
    p.add_argument("--rate-mbit", type=float, default=100.0, help="--wan: each peer's link, both ways")
    p.add_argument("--rtt-ms", type=float, default=50.0, help="--wan: round-trip time added by the relay")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a round fails")
    p.add_argument("--json-out", default="")
    p.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2: the first round is warm-up")
    return args


def _shapes(model: str):
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    if model == "tiny":
        from swarmgrpo.trainer.models import TinyShape

        s = TinyShape()
        config = LlamaConfig(
            vocab_size=49152,
            hidden_size=s.hidden_size,
            num_hidden_layers=s.num_hidden_layers,
            num_attention_heads=s.num_attention_heads,
            num_key_value_heads=s.num_key_value_heads,
            intermediate_size=s.intermediate_size,
            tie_word_embeddings=True,
        )
    else:
        from swarmgrpo.trainer.models import resolve_model_path

        config = AutoConfig.from_pretrained(resolve_model_path(model))
    with torch.device("meta"):
        net = LlamaForCausalLM(config)
    return [tuple(p.shape) for p in net.parameters()]


def peer_main(args) -> None:
    """One peer: print its address; per command line, run rounds and print their figures."""
    import torch

    from swarmgrpo.p2p.allreduce import AllReduceError, Member
    from swarmgrpo.p2p.gradients import GradientAverager
    from swarmgrpo.p2p.host import PeerHost

    torch.set_num_threads(1)
    logging.basicConfig(format=f"peer {os.getpid()}: %(message)s")
    logging.getLogger("swarmgrpo.p2p.allreduce").setLevel(logging.INFO)  # retried sends, if any
    shapes = _shapes(args.model)
    params = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s)) for s in shapes])
    host = PeerHost([args.listen])
    print(json.dumps({"peer_id": host.peer_id, "addrs": host.addrs}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        members = [Member(p, tuple(a)) for p, a in cmd["members"]]
        averager = GradientAverager(
            host, params, compression=cmd["compression"], powersgd_rank=args.rank, timeout=args.timeout
        )
        gen = torch.Generator().manual_seed(cmd["me"])
        results = []
        for r in range(cmd["rounds"]):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) * 1e-3
            try:
                results.append(averager.average(f"{cmd['tag']}/{r}", members, cmd["me"], 1.0))
            except AllReduceError as e:  # counted in the table, not hidden
                results.append({"error": str(e)[:300]})
        averager.close()
        print(json.dumps(results), flush=True)
    host.close()


def _readline(proc, timeout=900):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"peer {proc.pid} said nothing in {timeout} s")
    return json.loads(line)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.peer:
        peer_main(args)
        return 0
    sizes = [int(x) for x in args.peers.split(",")]
    compressions = args.compressions.split(",")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--peer",
        "--model",
        args.model,
        "--rank",
        str(args.rank),
        "--timeout",
        str(args.timeout),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # so the finally below cleans up
    wan = Wan(max(sizes), args.rate_mbit, args.rtt_ms / 2) if args.wan else None
    procs, rows = [], None
    try:
        for i in range(max(sizes)):
            prefix = wan.exec_prefix(i) if wan else []
            listen = ["--listen", f"/ip4/{wan.peer_ip(i)}/tcp/0"] if wan else []
            procs.append(
                subprocess.Popen(
                    [*prefix, *cmd, *listen],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        infos = [_readline(p) for p in procs]
        if wan:  # peers know each other only by the relay's addresses
            routes = []
            for i, info in enumerate(infos):
                port = int(
                    next(a for a in info["addrs"] if wan.peer_ip(i) in a).split("/tcp/")[1].split("/")[0]
                )
                routes.append((wan.relay_ip(i), RELAY_PORT, wan.peer_ip(i), port))
                info["addrs"] = [f"/ip4/{wan.relay_ip(i)}/tcp/{RELAY_PORT}"]
            wan.start_relay(routes)
        rows = _measure(args, sizes, compressions, procs, infos)
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
                if rows is None:  # interrupted mid-round: don't wait for the round to end
                    p.kill()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        if wan:
            wan.close()
    _report(args, rows)
    return 0


def _measure(args, sizes, compressions, procs, infos) -> list[dict]:
    rows = []
    for n in sizes:
        members = [[i["peer_id"], i["addrs"]] for i in infos[:n]]
        for comp in compressions:
            tag = f"{comp}-{n}-{time.time()}"
            for me, p in enumerate(procs[:n]):
                line = {
                    "members": members,
                    "me": me,
                    "compression": comp,
                    "rounds": args.rounds,
                    "tag": tag,
                }
                p.stdin.write(json.dumps(line) + "\n")
                p.stdin.flush()
            per_peer = [_readline(p)[1:] for p in procs[:n]]  # drop the warm-up round
            failed = [r["error"] for peer in per_peer for r in peer if "error" in r]
            rounds = [r for peer in per_peer for r in peer if "error" not in r]
            for e in sorted(set(failed)):
                print(f"N={n} {comp}: a round failed: {e}", flush=True)
            if not rounds:
                continue
            rows.append(
                {
                    "compression": comp if comp != "powersgd" else f"powersgd r{args.rank}",
                    "peers": n,
                    "bytes_per_peer": statistics.median(r["allreduce_bytes"] for r in rounds),
                    "bytes_busiest": max(r["allreduce_bytes"] for r in rounds),
                    "seconds": statistics.median(r["allreduce_s"] for r in rounds),
                    "failed_rounds": len(failed),
                    # streams reset before their acknowledgment, whose ranges went again (codecs only)
                    "resent": sum(r.get("allreduce_resent", 0) for r in rounds),
                    "streams": sum(r.get("allreduce_streams", 0) for r in rounds),
                    # medians per phase of the all-reduce (codecs only; see AllReduce.last_phases)
                    "phases": {
                        k[len("allreduce_") : -len("_s")]: statistics.median(r[k] for r in rounds)
                        for k in rounds[0]
                        if k.startswith("allreduce_") and k.endswith("_s") and k != "allreduce_s"
                    },
                }
            )
            if args.wan:  # PowerSGD is two all-reduces in turn (P, then Q): two round trips
                trips = 2 if comp == "powersgd" else 1
                wire_s = rows[-1]["bytes_busiest"] * 8 / (args.rate_mbit * 1e6)
                rows[-1]["limit_s"] = wire_s + trips * args.rtt_ms / 1000
            print(
                f"N={n} {rows[-1]['compression']:12} {rows[-1]['bytes_per_peer'] / 1e6:10.3f} MB "
                f"{rows[-1]['seconds']:8.2f} s  "
                + " ".join(f"{k} {v:.2f}" for k, v in rows[-1]["phases"].items())
                + (
                    f"  resent {rows[-1]['resent']:.0f} of {rows[-1]['streams']:.0f} streams"
                    if rows[-1]["streams"]
                    else ""
                ),
                flush=True,
            )
    return rows


def _report(args, rows) -> None:
    fp32 = {r["peers"]: r["bytes_per_peer"] for r in rows if r["compression"] == "none"}
    where = (
        f"emulated WAN: {args.rate_mbit:g} Mbit/s per peer each way, {args.rtt_ms:g} ms RTT"
        if args.wan
        else "loopback"
    )
    print(
        f"\nmodel {args.model}: {len(_shapes(args.model))} tensors; {where}; one libp2p host per peer process"
    )
    head = f"{'compression':14} {'N':>2} {'MB sent/peer':>13} {'x fewer':>8} {'s/round':>8}"
    print(head + (f" {'limit s':>8} {'x limit':>8}" if args.wan else ""))
    for r in rows:
        ratio = fp32.get(r["peers"], 0) / r["bytes_per_peer"] if r["bytes_per_peer"] else 0
        r["ratio_vs_fp32"] = ratio
        line = f"{r['compression']:14} {r['peers']:>2} {r['bytes_per_peer'] / 1e6:>13.3f} {ratio:>8.1f} {r['seconds']:>8.2f}"
        if args.wan:
            r["x_limit"] = r["seconds"] / r["limit_s"]
            line += f" {r['limit_s']:>8.2f} {r['x_limit']:>8.2f}"
        print(line)
    psgd = [r["ratio_vs_fp32"] for r in rows if r["compression"].startswith("powersgd")]
    if psgd:
        print(
            f"PowerSGD r{args.rank} sends {min(psgd):.0f}x fewer bytes than fp32 (target >= {TARGET_POWERSGD_RATIO}x)"
        )
    failures = sum(r["failed_rounds"] for r in rows)
    if failures:
        print(f"{failures} peer-rounds failed (timeout {args.timeout:g} s): see the lines above")
    if args.wan:
        worst = max(r["x_limit"] for r in rows)
        print(f"slowest round against its physical limit: {worst:.2f}x (target <= {TARGET_X_LIMIT})")
    write_json(args.json_out, {"rows": rows, "argv": sys.argv[1:]})


if __name__ == "__main__":
    sys.exit(main())
