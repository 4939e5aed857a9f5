"""The extractors against random and crafted completions: same answers as a plain reference, linear cost.

Completions come from untrusted nodes and the coordinator scores every one, so a pattern that
backtracks (quadratic or cubic in the text) lets one submission stall it. The references below are
the straightforward versions (nested scans, backtracking regexes of the same grammar): correct but
slow, so they only see short strings.
"""

import random
import re
import string
import time

import pytest

from swarmgrpo.trainer.tasks.countdown import extract_expression
from swarmgrpo.trainer.tasks.extract import (
    extract_answer,
    has_answer_format,
    last_answer_tag,
    last_boxed,
    last_number,
    parse_fraction,
)
from swarmgrpo.trainer.tasks.uppercase import uppercase_share

ALPHABET = [*"0123456789,.-/=$:#{} \n\tx", "\\boxed{", "<answer>", "</answer>", "the answer is ", "final "]

_NUM = r"-?(?:[1-9]\d{0,2}(?:,\d{3})+(?!,?\d)|\d+)(?:\.\d+)?(?:/\d+)?"
_REF_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.])-?(?:(?<!\d,)[1-9]\d{0,2}(?:,\d{3})+(?!,?\d)|\d+)(?:\.\d+)?(?:/\d+)?(?!\d)"
)
_REF_PHRASE = re.compile(
    rf"(?:the\s+(?:final\s+)?answer\s+is|=)\s*:?\s*\$?\s*{_NUM}\s*\$?\s*\.?\s*$", re.IGNORECASE
)
_UPPERCASE = frozenset(string.ascii_uppercase + " ")
_REF_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def ref_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    while start != -1:
        depth, i = 0, start + len("\\boxed{") - 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i + 1 : j].strip()
        start = text.rfind("\\boxed{", 0, start)
    return None


def ref_tag(text: str) -> str | None:
    found = _REF_TAG.findall(text)
    return found[-1].strip() if found else None


def ref_number(text: str) -> str | None:
    found = _REF_NUMBER_IN_TEXT.findall(text)
    return found[-1] if found else None


def ref_has_format(text: str) -> bool:
    stripped = text.strip()
    if ref_boxed(stripped) is not None or ref_tag(stripped) is not None:
        return True
    hashes = re.findall(r"####\s*([^\n]*)", stripped)
    if hashes and ref_number(hashes[-1]) is not None:
        return True
    return bool(_REF_PHRASE.search(stripped)) or parse_fraction(stripped) is not None


NUMBERISH = [*"0000123456789,,,..--// =$x"]


def random_text(rng: random.Random, n: int, alphabet: list[str] = ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


@pytest.mark.parametrize("seed", range(4))
def test_extractors_agree_with_the_reference_on_random_text(seed):
    rng = random.Random(seed)
    for i in range(1000):
        text = random_text(rng, rng.randint(0, 40), ALPHABET if i % 2 else NUMBERISH)
        assert last_boxed(text) == ref_boxed(text), text
        assert last_answer_tag(text) == ref_tag(text), text
        assert last_number(text) == ref_number(text), text
        assert has_answer_format(text) is ref_has_format(text), text


def test_the_final_phrase_agrees_with_the_reference():
    rng = random.Random(7)
    pieces = ["=", " ", "  ", ":", "$", ".", "1", "0", ",", "000", "-", "/", "the answer is", "x", "\n"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
        assert has_answer_format(text) is ref_has_format(text), text


WORST = {
    "= then spaces": lambda n: "=" + " " * n + "x",
    "= number then spaces": lambda n: "= 5" + " " * n + "x",
    "answer is then spaces": lambda n: "the answer is" + " \t" * (n // 2) + ":x",
    "many = and spaces": lambda n: ("=" + " " * 30) * (n // 31),
    "unclosed boxed": lambda n: "\\boxed{" * (n // 7),
    "unclosed answer tags": lambda n: "<answer>" * (n // 8),
    "malformed thousands run": lambda n: "1" + ",100" * (n // 4) + "1",
    "digits and dots": lambda n: "1." * (n // 2),
    "hashes": lambda n: "####" * (n // 4),
    "hashes and blank lines": lambda n: "####\n" * (n // 5),
    "expression run": lambda n: "1" + " " * n + "x" + " " * n,
    "random": lambda n: random_text(random.Random(n), n // 3),
}


def _cpu_s(fn, text: str) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        fn(text)
        best = min(best, time.process_time() - t0)
    return best


def _score_all(text: str) -> None:
    extract_answer(text)
    has_answer_format(text)
    extract_expression(text)
    uppercase_share(text)


@pytest.mark.parametrize("name", sorted(WORST))
def test_cost_grows_linearly_with_the_text(name):
    """8x the text costs at most ~8x (with room for noise); quadratic would be 64x, cubic 512x."""
    make = WORST[name]
    small, large = make(4000), make(32000)
    assert _cpu_s(_score_all, large) <= 24 * _cpu_s(_score_all, small) + 0.002, name


def test_uppercase_share_agrees_with_counting_each_character():
    rng = random.Random(3)
    for _ in range(2000):
        text = random_text(rng, rng.randint(0, 30), [*"aAzZ  \t\n.!", "\u00e9", "\u00c9"])
        stripped = text.strip()
        expected = sum(ch in _UPPERCASE for ch in stripped) / len(stripped) if stripped else 0.0
        assert uppercase_share(text) == expected, text
