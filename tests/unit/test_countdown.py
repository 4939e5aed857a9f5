"""Countdown: the safe expression evaluator, answer extraction, grading and problem generation."""

import itertools
import random
from fractions import Fraction

import pytest

from swarmgrpo.trainer.tasks import TaskConfig, make_task
from swarmgrpo.trainer.tasks.countdown import (
    check_expression,
    draw_problem,
    extract_expression,
)
from swarmgrpo.trainer.tasks.expr import MAX_CHARS, ExpressionError, evaluate


@pytest.mark.parametrize(
    ("text", "value", "numbers"),
    [
        ("2 + 3 * 4", Fraction(14), (2, 3, 4)),
        ("(2 + 3) * 4", Fraction(20), (2, 3, 4)),
        ("10 - 2 - 3", Fraction(5), (10, 2, 3)),
        ("8 / 4 / 2", Fraction(1), (8, 4, 2)),
        ("7 / 2", Fraction(7, 2), (7, 2)),
        ("-3 + 5", Fraction(2), (3, 5)),
        ("--3", Fraction(3), (3,)),
        ("6 / (1 - 3 / 4)", Fraction(24), (6, 1, 3, 4)),
        ("  42  ", Fraction(42), (42,)),
    ],
)
def test_evaluate(text, value, numbers):
    result = evaluate(text)
    assert result.value == value
    assert result.numbers == numbers


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo hacked')",
        "2**999999",
        "2 ** 3",
        "5 // 2",
        "5 % 2",
        "1e9",
        "0x10",
        "1_000",
        "True",
        "lambda: 1",
        "[1] * 9",
        "\u0661\u0662 + 1",
        "1 / 0",
        "4 / (2 - 2)",
        "(1 + 2",
        "1 + 2)",
        "1 +",
        "()",
        "",
        "   ",
        "1 2",
        "1234567 + 1",
        "(" * 17 + "1" + ")" * 17,
        "-" * 17 + "1",
        "1+" * 100 + "1",
        "9" * 1_000_000,
        "(" * 100_000 + "1" + ")" * 100_000,
    ],
)
def test_evaluate_rejects_unsafe_or_invalid(text):
    with pytest.raises(ExpressionError):
        evaluate(text)


def test_depth_and_length_limits_allow_reasonable_nesting():
    assert evaluate("(" * 16 + "1" + ")" * 16).value == 1
    long_sum = "+".join(["1"] * 100)
    assert len(long_sum) <= MAX_CHARS
    assert evaluate(long_sum).value == 100


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>(50 + 25) * 2</answer>", "(50 + 25) * 2"),
        ("<answer>(50 + 25) * 2 = 150</answer>", "(50 + 25) * 2"),
        ("Let me try.\n(50 + 25) * 2 = 150", "(50 + 25) * 2"),
        ("150 = (50+25)*2.", "(50+25)*2"),
        ("\\boxed{50 \u00d7 3}", "50 * 3"),
        ("So 50 x 3 = 150", "50 * 3"),
        ("I used 50 + 25 = 75, then 75 * 2 = 150.", "75 * 2"),
        ("<answer>1 + 1</answer>\nActually 50 + 100", "1 + 1"),
        ("<answer></answer>", ""),
        ("I cannot solve this.", None),
        ("The target is 150.", None),
    ],
)
def test_extract_expression(completion, expected):
    assert extract_expression(completion) == expected


@pytest.mark.parametrize(
    ("expression", "numbers", "target", "expected"),
    [
        ("(50 + 25) * 2", [2, 5, 25, 50], 150, True),
        ("25 * 5 + 50 / 2", [2, 5, 25, 50], 150, True),
        ("50 * 2 + 25 * 2", [2, 5, 25, 50], 150, False),
        ("50 * 3", [2, 5, 25, 50], 150, False),
        ("50 * 2 + 50", [2, 5, 25, 50], 150, False),
        ("50 * 2 + 50", [2, 50, 50], 150, True),
        ("(50 + 25) * 2", [2, 5, 25, 50], 151, False),
        ("6 / (1 - 3 / 4)", [1, 3, 4, 6], 24, True),
        ("2 / (5 - 5)", [2, 5, 5], 0, False),
        ("150", [2, 5, 25, 50], 150, False),
        ("__import__('os')", [2, 5, 25, 50], 150, False),
        ("2**999999", [2, 5, 25, 50], 150, False),
    ],
)
def test_check_expression(expression, numbers, target, expected):
    assert check_expression(expression, numbers, target) is expected


def test_generated_problems_are_solvable_and_in_range():
    rng = random.Random(7)
    for _ in range(300):
        numbers, target, solution = draw_problem(rng)
        assert 3 <= len(numbers) <= 4
        assert numbers == sorted(numbers)
        assert all(1 <= n <= 99 for n in numbers)
        assert 1 <= target <= 999 and target not in numbers
        assert check_expression(solution, numbers, target)
        assert sorted(evaluate(solution).numbers) == numbers


def test_countdown_task_grades_and_rewards():
    task = make_task(TaskConfig(name="countdown", reward_weights={"correctness": 1.0, "format": 0.5}))
    example = next(task.train_examples(seed=3))
    numbers, target = example.meta["numbers"], example.meta["target"]
    assert example.answer == str(target)
    assert example.id == f"countdown:{','.join(map(str, numbers))}->{target}"
    prompt = example.messages[-1]["content"]
    assert f"make {target}." in prompt and ", ".join(map(str, numbers)) in prompt

    solution = example.meta["solution"]
    good = f"<answer>{solution}</answer>"
    assert task.is_correct(good, example)
    assert task.reward_components(good, example, 10, 100) == {
        "correctness": 1.0,
        "format": 1.0,
        "brevity": 0.9,
    }
    assert task.reward(good, example, 10, 100) == pytest.approx(1.5)

    plain = f"{solution} = {target}"
    assert task.is_correct(plain, example)
    assert task.reward(plain, example, 10, 100) == pytest.approx(1.0)

    assert not task.is_correct(f"<answer>{target}</answer>", example)
    assert task.reward(f"<answer>{solution} + 1</answer>", example, 10, 100) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>" + "9" * 1_000_000 + "</answer>",
        "<answer>" + "(" * 100_000 + "50" + ")" * 100_000 + "</answer>",
        "50 + " * 200_000 + "50",
        "<answer>__import__('os').system('echo hacked')</answer>",
        "<answer>2**999999</answer>",
    ],
)
def test_countdown_task_rejects_malicious_completions(completion):
    task = make_task(TaskConfig(name="countdown"))
    example = next(task.train_examples(seed=0))
    assert not task.is_correct(completion, example)
    assert task.reward_components(completion, example, 5, 10)["correctness"] == 0.0


def test_countdown_train_and_eval_are_disjoint():
    task = make_task(TaskConfig(name="countdown"))
    train_ids = {e.id for e in itertools.islice(task.train_examples(0), 2000)}
    eval_ids = {e.id for e in task.eval_examples(100)}
    assert len(eval_ids) == 100
    assert not train_ids & eval_ids
