"""Final-answer extraction, number parsing, matching and the format check, on hand-made strings."""

import pytest

from swarmgrpo.trainer.tasks.extract import (
    answers_match,
    extract_answer,
    has_answer_format,
    last_boxed,
    parse_number,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("68", "68"),
        ("The sum is 68.", "68"),
        ("23 + 45 = 68", "68"),
        ("I think 12, no wait, 13", "13"),
        ("It costs $1,000 in total", "1,000"),
        ("The temperature is -5 degrees", "-5"),
        ("10-5=5", "5"),
        ("x=-7", "-7"),
        ("pi is about 3.14", "3.14"),
        ("three quarters: 3/4", "3/4"),
        ("First \\boxed{12} then \\boxed{68} and finally 99", "68"),
        ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("\\boxed{{1}+{2}}", "{1}+{2}"),
        ("<answer>41</answer> then 99", "41"),
        ("<answer>1</answer> <ANSWER> 2 </ANSWER>", "2"),
        ("\\boxed{7} beats <answer>8</answer>", "7"),
        ("Work: 3 * 4 = 12\n#### 12 apples\nbye 5", "12"),
        ("#### 1,234", "1,234"),
        ("no digits here", None),
        ("", None),
        ("1,2,3", "3"),
        ("the pair is 0,186", "186"),
        ("\\boxed{0,186}", "0,186"),
        ("1,000,00 apples", "00"),
        ("12,345,678", "12,345,678"),
        ("version v2 of x3", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_unclosed_boxed_falls_back_to_an_earlier_one():
    assert last_boxed("\\boxed{5} and \\boxed{6") == "5"
    assert last_boxed("\\boxed{6") is None


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("68", 68.0),
        ("68.0", 68.0),
        ("68.", 68.0),
        (" -12 ", -12.0),
        ("+4", 4.0),
        ("1,000", 1000.0),
        ("$1,234,567.5", 1234567.5),
        ("3/4", 0.75),
        ("-1/8", -0.125),
        ("\\frac{3}{4}", 0.75),
        ("\\dfrac{1}{2}", 0.5),
        ("\u22123", -3.0),
        ("1/0", None),
        ("1,00", None),
        ("0,186", None),
        ("01,000", None),
        ("1,000,00", None),
        ("1,0000", None),
        ("12,345,678", 12345678.0),
        ("nan", None),
        ("inf", None),
        ("1e5", None),
        ("12 apples", None),
        ("3 4", None),
        ("", None),
        ("9" * 100, None),
    ],
)
def test_parse_number(s, expected):
    assert parse_number(s) == expected


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("68", "68", True),
        ("68.0", "68", True),
        ("1,000", "1000", True),
        ("-5", "-5", True),
        ("5", "-5", False),
        ("3/4", "0.75", True),
        ("0.75", "3/4", True),
        ("0.3333333", "1/3", True),
        ("0.33", "1/3", False),
        ("99980000", "99980001", False),
        ("99980001.0000001", "99980001", False),
        ("69", "68", False),
        (None, "68", False),
        ("Paris", "paris.", True),
        ("", "", False),
        ("68 apples", "68", False),
        ("0,186", "186", False),
        ("186", "0,186", False),
        ("0,186", "0,186", True),
    ],
)
def test_answers_match(pred, ref, expected):
    assert answers_match(pred, ref) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("68", True),
        ("  -3.5\n", True),
        ("So the result is \\boxed{68}.", True),
        ("<answer>68</answer>", True),
        ("work\n#### 68", True),
        ("The answer is 68.", True),
        ("the final answer is: $1,000", True),
        ("23 + 45 = 68", True),
        ("x = 0,186", False),
        ("x = 186,000", True),
        ("=" + " " * 5000 + "x", False),
        ("the   Final\nanswer  is :  $ 12 $ .", True),
        ("I believe it is 68", False),
        ("The answer is 68, I think", False),
        ("#### soon", False),
        ("", False),
    ],
)
def test_has_answer_format(text, expected):
    assert has_answer_format(text) is expected
