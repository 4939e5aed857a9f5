"""The answer checker on the worst completions known for it: CPU per completion and per submission.

    python benchmarks/checker_worst.py                           # 1024 tokens, arithmetic, countdown, uppercase
    python benchmarks/checker_worst.py --tokens 4096 --tasks arithmetic

Each completion is token ids of the run's tokenizer (SmolLM2's, as the tiny model), a head, a filler
repeated until the completion holds --tokens tokens, and a tail kept at the end: runs of whitespace
reach 64 characters a token. The coordinator decodes and scores each one; the figure is the best of
--repeat runs of process CPU time, and "submission" is 2 prompts x 4 completions (the tests' lease).
"""

import argparse
import time

from swarmgrpo.trainer.models import load_tokenizer
from swarmgrpo.trainer.tasks import make_task
from swarmgrpo.trainer.tasks.config import TaskConfig

WORST = {
    "= spaces x": ("=", " ", "x"),
    "= 5 spaces x": ("= 5", " ", "x"),
    "answer is spaces :x": ("the answer is", " ", ":x"),
    "unclosed \\boxed{": ("", "\\boxed{", ""),
    "unclosed <answer>": ("", "<answer>", ""),
    "####": ("", "####", ""),
    "malformed thousands": ("1", ",100", "1"),
    "= and 64 spaces": ("", "=" + " " * 64, ""),
    "newlines": ("", "\n", ""),
    "1 x 1 x": ("", "1 x ", ""),
}
SUBMISSION = 8


def completion(tokenizer, head: str, filler: str, tail: str, tokens: int) -> list[int]:
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    room = tokens - len(encode(head)) - len(encode(tail))
    return encode(head) + encode(filler * 100 * tokens)[:room] + encode(tail)


def cpu_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=1024, help="tokens per completion (max_completion_length)")
    p.add_argument("--tasks", nargs="+", default=["arithmetic", "countdown", "uppercase"])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    tokenizer = load_tokenizer("tiny")
    print(f"{'task':11} {'completion':22} {'chars':>7} {'decode ms':>9} {'score ms':>9}")
    for name in args.tasks:
        task = make_task(TaskConfig(name=name))
        example = next(iter(task.train_examples(0)))
        worst = 0.0
        for label, parts in WORST.items():
            ids = completion(tokenizer, *parts, args.tokens)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            decode = cpu_ms(lambda: tokenizer.decode(ids, skip_special_tokens=True), args.repeat)  # noqa: B023
            score = cpu_ms(lambda: task.reward(text, example, len(ids), args.tokens), args.repeat)  # noqa: B023
            worst = max(worst, decode + score)
            print(f"{name:11} {label:22} {len(text):7d} {decode:9.2f} {score:9.2f}")
        print(
            f"{name:11} worst submission ({SUBMISSION} x the costliest): {SUBMISSION * worst:.1f} ms of CPU\n"
        )


if __name__ == "__main__":
    main()
