"""Final-answer extraction and comparison for free-text completions.

A completion's answer is, in priority order: the last `\\boxed{...}` (balanced braces), the last
`<answer>...</answer>`, the number after the last `####`, else the last number anywhere in the text.
Numbers compare exactly as rationals ("68.0" == "68", "0.75" == "3/4", "1,000" == "1000"); only a
non-integer reference allows a 1e-6 relative tolerance, so a large integer sum is never "close enough".
"""

import math
import re
from fractions import Fraction

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_NUMBER = rf"-?{_INT}(?:\.\d+)?(?:/\d+)?"
# A number not glued to the word or decimal before it ("x2", "3.14" -> "14") nor running into more digits.
_NUMBER_IN_TEXT = re.compile(rf"(?<![\w.]){_NUMBER}(?!\d)")
_NUMBER_FULL = re.compile(rf"[+-]?{_INT}(?:\.\d+)?(?:/\d+)?")
_FRAC_LATEX = re.compile(r"\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_HASHES = re.compile(r"####\s*([^\n]*)")
_FINAL_PHRASE = re.compile(
    rf"(?:the\s+(?:final\s+)?answer\s+is|=)\s*:?\s*\$?\s*{_NUMBER}\s*\$?\s*\.?\s*$", re.IGNORECASE
)
_MAX_NUMBER_CHARS = 64


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, matching nested braces; None if absent or unclosed."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        i = start + len("\\boxed{") - 1
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
        start = text.rfind("\\boxed{", 0, start)
    return None


def last_answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` block, or None."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def last_number(text: str) -> str | None:
    """The last number written in the text (ints, decimals, negatives, "1,000", "3/4"), or None."""
    found = _NUMBER_IN_TEXT.findall(text)
    return found[-1] if found else None


def extract_answer(text: str) -> str | None:
    """The completion's final answer as a string, or None when it gives none."""
    for container in (last_boxed(text), last_answer_tag(text)):
        if container is not None:
            return container
    hashes = _HASHES.findall(text)
    if hashes:
        tail = hashes[-1].strip()
        number = last_number(tail)
        return number if number is not None else tail or None
    return last_number(text)


def parse_fraction(s: str) -> Fraction | None:
    """The exact value of a number string ("1,000", "-2.5", "3/4", "\\frac{3}{4}", "$12."), or None."""
    t = s.replace("\u2212", "-").replace("$", "").strip()
    if t.endswith("."):
        t = t[:-1]
    if len(t) > _MAX_NUMBER_CHARS:
        return None
    latex = _FRAC_LATEX.fullmatch(t)
    if latex:
        num, den = int(latex.group(1)), int(latex.group(2))
        return Fraction(num, den) if den != 0 else None
    if not _NUMBER_FULL.fullmatch(t):
        return None
    t = t.replace(",", "")
    if "/" in t:
        num, den = t.split("/")
        return Fraction(Fraction(num), int(den)) if int(den) != 0 else None
    return Fraction(t)


def parse_number(s: str) -> float | None:
    """`parse_fraction` as a float, for callers that want a plain number."""
    value = parse_fraction(s)
    return float(value) if value is not None else None


def _normalize(s: str) -> str:
    return " ".join(s.strip().rstrip(".").replace("$", "").lower().split())


def answers_match(pred: str | None, ref: str) -> bool:
    """Whether a predicted answer equals the reference: numerically if both parse, else as normalized text."""
    if pred is None:
        return False
    p, r = parse_fraction(pred), parse_fraction(ref)
    if p is not None and r is not None:
        if p == r:
            return True
        return r.denominator != 1 and math.isclose(p, r, rel_tol=1e-6, abs_tol=0.0)
    return _normalize(pred) == _normalize(ref) != ""


def has_answer_format(text: str) -> bool:
    """Whether the completion states its final answer explicitly (boxed, tagged, ####, "answer is N", "= N", bare N)."""
    stripped = text.strip()
    if last_boxed(stripped) is not None or last_answer_tag(stripped) is not None:
        return True
    hashes = _HASHES.findall(stripped)
    if hashes and last_number(hashes[-1]) is not None:
        return True
    return bool(_FINAL_PHRASE.search(stripped)) or parse_fraction(stripped) is not None
