"""`swarmgrpo` command line: thin wrappers that parse arguments and call into the packages.

A `UserError` (bad config, missing file, unknown model) prints one line and exits 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from swarmgrpo.protocol.errors import UserError


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
    from swarmgrpo.protocol.configtree import load_config, render_toml
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
    from swarmgrpo.node.engines.transformers_engine import TransformersEngine
    from swarmgrpo.node.evaluate import evaluate
    from swarmgrpo.protocol.configtree import from_dict, parse_override, set_dotted
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


if __name__ == "__main__":
    sys.exit(main())
