"""Synthetic arithmetic: "What is 23 + 45? Give only the final number."

Sized for a very weak model (SmolLM2-135M): level 1 two-digit addition starts near 10% accuracy and is
learnable; higher levels add digits, operands and operators. The answer is computed by the safe
evaluator in `expr`, so `*` binds tighter than `+`/`-` exactly as the model is expected to read it.
"""

import random
from collections.abc import Callable

from swarmgrpo.core.errors import ConfigError
from swarmgrpo.trainer.tasks.base import Example
from swarmgrpo.trainer.tasks.config import TaskConfig
from swarmgrpo.trainer.tasks.expr import evaluate
from swarmgrpo.trainer.tasks.extract import answers_match, extract_answer
from swarmgrpo.trainer.tasks.registry import register_task
from swarmgrpo.trainer.tasks.synthetic import SyntheticTask

LEVELS = {
    1: "two 2-digit operands",
    2: "two 3-digit operands",
    3: "three 2-digit operands",
    4: "2-3 operands of 2-4 digits",
}
ALLOWED_OPS = "+-*"


def draw_operands(rng: random.Random, level: int) -> list[int]:
    """The operands of one problem at this level."""
    if level == 1:
        return [rng.randint(10, 99) for _ in range(2)]
    if level == 2:
        return [rng.randint(100, 999) for _ in range(2)]
    if level == 3:
        return [rng.randint(10, 99) for _ in range(3)]
    digits = [rng.randint(2, 4) for _ in range(rng.choice((2, 3)))]
    return [rng.randint(10 ** (d - 1), 10**d - 1) for d in digits]


def make_example(
    operands: list[int], ops: list[str], messages_for: Callable[[str], tuple[dict, ...]]
) -> Example:
    """The example for `operands[0] ops[0] operands[1] ...`; id and answer depend only on the problem."""
    expression = str(operands[0]) + "".join(f" {op} {x}" for op, x in zip(ops, operands[1:], strict=True))
    value = evaluate(expression).value
    return Example(
        id="arith:" + expression.replace(" ", ""),
        messages=messages_for(f"What is {expression}? Give only the final number."),
        answer=str(value.numerator),
        meta={"expression": expression},
    )


@register_task("arithmetic")
class ArithmeticTask(SyntheticTask):
    """Integer expressions over `task.operations` at difficulty `task.level`."""

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        if cfg.level not in LEVELS or isinstance(cfg.level, bool):
            levels = ", ".join(f"{k} = {v}" for k, v in LEVELS.items())
            raise ConfigError("task.level", f"{cfg.level!r} is not a known arithmetic level", f"use {levels}")
        ops = cfg.operations
        if not isinstance(ops, str) or not ops or any(op not in ALLOWED_OPS for op in ops):
            raise ConfigError(
                "task.operations",
                f"{ops!r} is not a non-empty subset of '{ALLOWED_OPS}'",
                "use e.g. '+' or '+-*'",
            )
        self.ops = "".join(sorted(set(ops), key=ALLOWED_OPS.index))

    def draw(self, rng: random.Random) -> Example:
        operands = draw_operands(rng, self.cfg.level)
        ops = [rng.choice(self.ops) for _ in operands[1:]]
        return make_example(operands, ops, self.user_messages)

    def eval_key(self) -> tuple[object, ...]:
        return (self.cfg.level, self.ops)

    def is_correct(self, completion: str, example: Example) -> bool:
        return answers_match(extract_answer(completion), example.answer)
