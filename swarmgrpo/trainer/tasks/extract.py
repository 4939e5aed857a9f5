"""Final-answer extraction and comparison for free-text completions.

A completion's answer is, in priority order: the last `\\boxed{...}` (balanced braces), the last
`<answer>...</answer>`, the number after the last `####`, else the last number anywhere in the text.
Numbers compare exactly as rationals ("68.0" == "68", "0.75" == "3/4", "1,000" == "1000"); only a
non-integer reference allows a 1e-6 relative tolerance, so a large integer sum is never "close enough".

A comma between digits is a thousands separator only where the whole run is well formed: a first
group of 1-3 digits not starting with 0, then groups of exactly 3 ("1,000", "12,345,678"). Anywhere
else it separates list items: "0,186" is the list 0, 186 (never the number 186), so it is not a
number as a whole answer, and in free text its last number is its last item, as in "1,2,3".

Completions are untrusted and the coordinator scores every one, so every function here runs in time
linear in the text: the patterns use possessive quantifiers (no backtracking) and containers are
found by single forward scans.
"""

import math
import re
from fractions import Fraction

# Thousands groups only when the whole run is well formed (nothing glued to it: no ",\d", no digit);
# not starting right after "digit," so that one long malformed run is scanned once, not once per group.
_THOUSANDS = r"[1-9]\d{0,2}(?:,\d{3})++(?!,?\d)"
_INT = rf"(?:(?<!\d,){_THOUSANDS}|\d++)"
_FRACTION_PART = r"(?:\.\d++)?(?:/\d++)?"
# A number not glued to the word or decimal before it ("x2", "3.14" -> "14") nor running into more digits.
# It reads as `(?<![\w.])-?{_INT}{_FRACTION_PART}(?!\d)`, written to consume its first character ("-" or a
# digit) before any check: the regex engine then skips to candidates at C speed instead of trying the
# look-behind at every position (9x faster on long runs of spaces).
_NUMBER_IN_TEXT = re.compile(
    r"[-\d](?<![\w.][-\d])"
    rf"(?:(?<=-){_INT}|(?<=[1-9])(?<!\d,\d)\d{{0,2}}(?:,\d{{3}})++(?!,?\d)|(?<=\d)\d*+)"
    rf"{_FRACTION_PART}(?!\d)"
)
_NUMBER_FULL = re.compile(rf"[+-]?{_INT}(?:\.\d+)?(?:/\d+)?")
_FRAC_LATEX = re.compile(r"\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}")
_ANSWER_OPEN = re.compile(re.escape("<answer>"), re.IGNORECASE)
_ANSWER_CLOSE = re.compile(re.escape("</answer>"), re.IGNORECASE)
_HASHES = re.compile(r"####\s*+([^\n]*+)")
_BRACES = re.compile(r"[{}]")
# "(the (final) answer is | =) : $ NUMBER $ ." at the very end, matched on the reversed text from its
# start, so only the text's tail is read. Possessive throughout: each piece stops at a character the
# next cannot take, so nothing is retried.
_FINAL_PHRASE_REVERSED = re.compile(
    r"\s*+\.?\s*+\$?\s*+"
    r"(?:\d++/)?(?:\d++\.)?(?:(?:\d{3},)++\d{0,2}[1-9]|\d++)-?"
    r"\s*+\$?\s*+:?\s*+(?:=|si\s++rewsna\s++(?:lanif\s++)?eht)",
    re.IGNORECASE,
)
_MAX_NUMBER_CHARS = 64
_BOXED = "\\boxed{"


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each "{" that closes -> index of its "}" (one pass over the braces only)."""
    pairs: dict[int, int] = {}
    open_at: list[int] = []
    for m in _BRACES.finditer(text):
        if m.group() == "{":
            open_at.append(m.start())
        elif open_at:
            pairs[open_at.pop()] = m.start()
    return pairs


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, matching nested braces; None if absent or unclosed."""
    start = text.rfind(_BOXED)
    if start == -1:
        return None
    pairs = _matching_braces(text)
    while start != -1:
        brace = start + len(_BOXED) - 1
        if brace in pairs:
            return text[brace + 1 : pairs[brace]].strip()
        start = text.rfind(_BOXED, 0, start)
    return None


def last_answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` block, or None.

    Blocks are read left to right, each from its "<answer>" to the first "</answer>" after it.
    """
    found, pos = None, 0
    while (opened := _ANSWER_OPEN.search(text, pos)) is not None:
        closed = _ANSWER_CLOSE.search(text, opened.end())
        if closed is None:
            break
        found, pos = text[opened.end() : closed.start()], closed.end()
    return found.strip() if found is not None else None


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
    return bool(_FINAL_PHRASE_REVERSED.match(stripped[::-1])) or parse_fraction(stripped) is not None
