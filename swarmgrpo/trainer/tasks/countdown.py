"""Countdown: reach a target from 3-4 numbers with + - * /, each number used at most once.

Problems are built backwards from a random expression over all the numbers (division only when exact),
so every problem is solvable; the reference solution is kept in `meta["solution"]`. A completion is
checked by the safe parser in `expr`, never by eval: it must use only the given numbers (each no more
often than given) and equal the target exactly.
"""

import random
import re
from collections import Counter

from swarmgrpo.trainer.tasks.base import Example
from swarmgrpo.trainer.tasks.expr import ExpressionError, evaluate
from swarmgrpo.trainer.tasks.extract import last_answer_tag, last_boxed
from swarmgrpo.trainer.tasks.registry import register_task
from swarmgrpo.trainer.tasks.synthetic import SyntheticTask

NUMBER_RANGE = (1, 99)
TARGET_RANGE = (1, 999)
COUNTS = (3, 4)

_EXPR_RUN = re.compile(r"[\d\s+\-*/()=]+")
_BINARY_OP = re.compile(r"[\d)]\s*+[-+*/]")
# Possessive, and starting with the operand it keeps (not a look-behind), so that the regex engine skips
# to candidates at C speed: completions are untrusted and may be long runs of whitespace.
_TIMES_X = re.compile(r"([\d)])\s*+[xX]\s*+(?=[\d(])")


def build_solution(rng: random.Random, numbers: list[int]) -> tuple[int, str]:
    """Combine all numbers in random pairs with random valid operators; return (value, expression)."""
    items = [(n, str(n)) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (a, ta), (b, tb) = items[i], items[j]
        ta = f"({ta})" if " " in ta else ta
        tb = f"({tb})" if " " in tb else tb
        choices = [(a + b, f"{ta} + {tb}"), (a * b, f"{ta} * {tb}")]
        choices.append((a - b, f"{ta} - {tb}") if a >= b else (b - a, f"{tb} - {ta}"))
        if b != 0 and a % b == 0:
            choices.append((a // b, f"{ta} / {tb}"))
        if a != 0 and b % a == 0:
            choices.append((b // a, f"{tb} / {ta}"))
        merged = rng.choice(choices)
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [merged]
    return items[0]


def draw_problem(rng: random.Random) -> tuple[list[int], int, str]:
    """(sorted numbers, target, a solution) with the target in TARGET_RANGE and not one of the numbers."""
    while True:
        numbers = [rng.randint(*NUMBER_RANGE) for _ in range(rng.choice(COUNTS))]
        target, solution = build_solution(rng, numbers)
        if TARGET_RANGE[0] <= target <= TARGET_RANGE[1] and target not in numbers:
            return sorted(numbers), target, solution


def _normalize_ops(text: str) -> str:
    text = text.replace("\u00d7", "*").replace("\u00f7", "/").replace("\u2212", "-").replace("\u2217", "*")
    return _TIMES_X.sub(r"\1 * ", text)


def extract_expression(completion: str) -> str | None:
    """The proposed expression: the last <answer> (or \\boxed) block, else the last expression-like text.

    "expr = target" is accepted: the side of "=" that has an operator is the expression.
    """
    text = _normalize_ops(completion)
    candidate = last_answer_tag(text)
    if candidate is None:
        candidate = last_boxed(text)
    if candidate is None:
        for line in reversed(text.splitlines()):
            runs = [r for r in _EXPR_RUN.findall(line) if _BINARY_OP.search(r)]
            if runs:
                candidate = runs[-1]
                break
    if candidate is None:
        return None
    sides = [s.strip() for s in candidate.split("=")]
    with_op = [s for s in sides if _BINARY_OP.search(s)]
    return with_op[0] if with_op else sides[0]


def check_expression(expression: str, numbers: list[int], target: int) -> bool:
    """Whether `expression` uses only the given numbers (multiset) and equals `target` exactly."""
    try:
        result = evaluate(expression)
    except ExpressionError:
        return False
    if Counter(result.numbers) - Counter(numbers):
        return False
    return result.value == target


@register_task("countdown")
class CountdownTask(SyntheticTask):
    """Reach the target; the answer is an expression, graded by exact evaluation."""

    def draw(self, rng: random.Random) -> Example:
        numbers, target, solution = draw_problem(rng)
        listed = ", ".join(map(str, numbers))
        prompt = (
            f"Using the numbers {listed}, make {target}. Use + - * / and each number at most once. "
            "Write the expression inside <answer></answer>."
        )
        return Example(
            id=f"countdown:{','.join(map(str, numbers))}->{target}",
            messages=self.user_messages(prompt),
            answer=str(target),
            meta={"numbers": numbers, "target": target, "solution": solution},
        )

    def eval_key(self) -> tuple[object, ...]:
        return (NUMBER_RANGE, TARGET_RANGE, COUNTS)

    def is_correct(self, completion: str, example: Example) -> bool:
        expression = extract_expression(completion)
        if expression is None:
            return False
        return check_expression(expression, example.meta["numbers"], example.meta["target"])

    def has_format(self, completion: str) -> bool:
        return last_answer_tag(completion) is not None or last_boxed(completion) is not None
