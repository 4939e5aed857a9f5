"""`swarmgrpo` command line: thin wrappers that parse arguments and call into the packages.

A `UserError` (bad config, missing file, unknown model) prints one line and exits 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from swarmgrpo.core.errors import UserError
from swarmgrpo.node.options import NodeOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarmgrpo", description="GRPO training on volunteered compute")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="single-process GRPO run (the node's solo mode)")
    p.add_argument("--config", help="TOML or YAML run config")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. task.level=2 learning_rate=3e-6")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="held-out greedy accuracy of a model on a task")
    p.add_argument("--model", default="smollm2-135m", help="built-in name, local folder or checkpoint")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--n", type=int, default=200, help="held-out problems to score")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("overrides", nargs="*", help="task overrides, e.g. level=2 dataset=gsm8k.jsonl")
    p.set_defaults(func=_eval)

    p = sub.add_parser("coordinator", help="run a training run's coordinator (gRPC + HTTP status)")
    p.add_argument("--config", help="TOML or YAML run config")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. max_staleness=0 train.max_steps=50")
    p.set_defaults(func=_coordinator)

    p = sub.add_parser("node", help="contribute this machine to a run")
    p.add_argument("--join", required=True, metavar="HOST:PORT", help="the coordinator's gRPC address")
    p.add_argument("--token", required=True, help="the run's join token")
    p.add_argument("--roles", choices=("auto", "rollout", "train"), help="what to do (auto: ask the run)")
    p.add_argument("--state-dir", help="node key and trainer checkpoints")
    p.add_argument("--weights-dir", help="shared folder for weights (default: fetch from peers over libp2p)")
    p.add_argument("--initial-peers", nargs="*", help="DHT multiaddrs to bootstrap from")
    p.add_argument("--p2p-listen", nargs="+", help="libp2p multiaddrs to serve weights on")
    p.add_argument(
        "--coordinator-patience",
        dest="coordinator_patience_s",
        type=_seconds_or_forever,
        metavar="SECONDS",
        help="how long to wait for a coordinator that does not answer (a restart, an outage) before "
        "leaving; the node retries every few seconds meanwhile (default: forever)",
    )
    p.add_argument("--max-prompts", type=int, help="prompts per lease")
    p.add_argument("--threads", type=int, help="torch threads (0: torch's default)")
    p.add_argument(
        "--engine",
        choices=("", "auto", "vllm", "transformers"),
        help="rollout engine of this node (default: the run config's `engine`, itself auto by default)",
    )
    p.add_argument(
        "--device",
        choices=("", "auto", "cpu", "cuda"),
        help="where this node trains or samples with transformers (default: the run config's `device`, "
        "itself auto: the GPU where there is one)",
    )
    p.add_argument(
        "--weights-format",
        choices=("auto", "bf16", "fp8"),
        help="weights a rollout node fetches when the run ships FP8 (weights_fp8): fp8 (~0.6x the bytes), "
        "bf16, or auto (fp8 when this node rolls out in FP8)",
    )
    # The defaults are NodeOptions' own: one place for them.
    p.set_defaults(func=_node, **NodeOptions.defaults())

    p = sub.add_parser("demo", help="a whole network on this machine: coordinator, trainer, rollout nodes")
    p.add_argument("--config", default="deploy/demo.toml", help="run config")
    p.add_argument(
        "--out", default="runs/demo", help="folder for logs, state and the checkpoint (wiped first)"
    )
    p.add_argument("--rollout-nodes", type=int, default=2)
    p.add_argument("--weights", choices=("p2p", "file"), default="p2p", help="weight transport between nodes")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=6")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "bench",
        help="run one of the benchmarks (benchmarks/ of the source checkout you are in): no name lists them",
        description="Runs benchmarks/NAME.py with this Python; what follows NAME goes to it "
        "(swarmgrpo bench fp8 --help shows its options).",
    )
    p.add_argument("name", nargs="?", help="a benchmark, e.g. fp8 or allreduce")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its own arguments")
    p.set_defaults(func=_bench)

    p = sub.add_parser("status", help="show a running network's state")
    p.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=_status)

    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _train(args) -> int:
    from swarmgrpo.core.configtree import load_config, render_toml
    from swarmgrpo.trainer.config import TrainConfig

    cfg = load_config(TrainConfig, args.config, args.overrides)
    if args.print_config:
        print(render_toml(cfg), end="")
        return 0
    from swarmgrpo.node.solo import train

    summary = train(cfg, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _eval(args) -> int:
    from swarmgrpo.core.configtree import from_dict, parse_override, set_dotted
    from swarmgrpo.node.engines.transformers_engine import TransformersEngine
    from swarmgrpo.node.evaluate import evaluate
    from swarmgrpo.trainer.models import load_model
    from swarmgrpo.trainer.tasks import TaskConfig, make_task

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    data: dict = {"name": args.task}
    for item in args.overrides:
        set_dotted(data, *parse_override(item))
    task = make_task(from_dict(TaskConfig, data, prefix="task."))
    model, tokenizer = load_model(args.model)
    result = evaluate(TransformersEngine(model, tokenizer), tokenizer, task, args.n, args.max_tokens)
    if args.json:
        print(
            json.dumps(
                {
                    "accuracy": result.accuracy,
                    "n": result.n,
                    "correct": result.correct,
                    "mean_reward": result.mean_reward,
                    "model": args.model,
                    "task": args.task,
                }
            )
        )
    else:
        print(
            f"{args.model} on {args.task}: held-out accuracy {result.accuracy:.1%} ({result.correct}/{result.n})"
        )
        for answer, text, ok in result.samples:
            print(f"  [{'ok' if ok else '--'}] want {answer}: {text.strip()[:80]!r}")
    return 0


def _seconds_or_forever(text: str) -> float:
    if text == "forever":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds > 0 or 'forever'")
    return value


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _coordinator(args) -> int:
    from swarmgrpo.coordinator.config import RunConfig
    from swarmgrpo.core.configtree import load_config, render_toml

    cfg = load_config(RunConfig, args.config, args.overrides)
    if args.print_config:
        print(render_toml(cfg), end="")
        return 0
    _logging()
    from swarmgrpo.coordinator.server import main as serve

    serve(cfg)
    return 0


def _node(args) -> int:
    _logging()
    from swarmgrpo.node.daemon import main as run_node

    if args.max_prompts < 1:
        raise UserError("--max-prompts must be at least 1")
    run_node(NodeOptions.from_namespace(args))
    return 0


def _demo(args) -> int:
    from pathlib import Path

    from swarmgrpo.coordinator.config import RunConfig
    from swarmgrpo.core.configtree import load_config
    from swarmgrpo.demo import run

    if args.rollout_nodes < 1:
        raise UserError("--rollout-nodes must be at least 1")
    cfg = load_config(RunConfig, args.config, args.overrides)
    summary = run(cfg, Path(args.out), args.rollout_nodes, args.weights)
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if before and after:
        print(
            f"held-out accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%} in {summary['wall_s'] / 60:.1f} min"
        )
    return 0


def _status(args) -> int:
    from swarmgrpo.protocol.client import CoordinatorError, status

    try:
        snap = json.loads(status(args.coordinator))
    except CoordinatorError as e:
        raise UserError(f"no coordinator answered at {args.coordinator} ({e}); check the address") from None
    if args.json:
        print(json.dumps(snap, indent=1))
        return 0
    from swarmgrpo.coordinator.view import render

    print(render(snap))
    return 0


def _bench(args) -> int:
    """The benchmarks are scripts in a source checkout, not part of the package: they are looked
    for in the current directory, the checkout's root."""
    import ast
    import subprocess
    from pathlib import Path

    folder = Path.cwd() / "benchmarks"
    if not (folder / "README.md").is_file():
        raise UserError(
            f"no benchmarks/ in {Path.cwd()}: the benchmarks come with the source checkout, not the "
            "installed package; run `swarmgrpo bench` from the root of a clone of the repository"
        )
    scripts = {}
    for path in sorted(folder.glob("*.py")):
        text = path.read_text()
        if 'if __name__ == "__main__":' in text:
            doc = ast.get_docstring(ast.parse(text)) or ""
            scripts[path.stem] = (path, doc.split("\n\n")[0].replace("\n", " "))
    if args.name is None:
        for name, (_, summary) in scripts.items():
            print(f"{name:20} {summary}")
        print(
            f"\nswarmgrpo bench NAME [its arguments]; NAME --help for its options; {folder / 'results'} for the figures"
        )
        return 0
    if args.name not in scripts:
        raise UserError(f"no benchmark '{args.name}'; there are: {', '.join(scripts)}")
    path = scripts[args.name][0]
    return subprocess.run([sys.executable, str(path), *args.args], cwd=folder.parent).returncode


if __name__ == "__main__":
    sys.exit(main())
