"""A safe parser and exact evaluator for integer arithmetic expressions.

Model output is untrusted, so nothing here calls eval/exec or Python's parser: a hand-written tokenizer
accepts only digits, `+ - * /`, parentheses and spaces, and a recursive-descent parser evaluates with
`fractions.Fraction`. Length, literal size and nesting depth are capped before any work, so "2**9999",
"__import__('os')" or a megabyte of parentheses fail fast with `ExpressionError`.

Grammar:  expr := term (("+" | "-") term)* ;  term := unary (("*" | "/") unary)* ;
          unary := "-" unary | atom ;          atom := INT | "(" expr ")"
"""

from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 200
MAX_DIGITS = 6
MAX_DEPTH = 16
_OPERATORS = frozenset("+-*/()")


class ExpressionError(ValueError):
    """The text is not an acceptable expression (bad token, too long, too deep, division by zero)."""


@dataclass(frozen=True)
class Evaluated:
    """An expression's exact value and the integer literals it used, in order of appearance."""

    value: Fraction
    numbers: tuple[int, ...]


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"expression longer than {MAX_CHARS} characters")
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _OPERATORS:
            tokens.append(ch)
            i += 1
        elif "0" <= ch <= "9":
            j = i
            while j < len(text) and "0" <= text[j] <= "9":
                j += 1
            if j - i > MAX_DIGITS:
                raise ExpressionError(f"number longer than {MAX_DIGITS} digits")
            tokens.append(text[i:j])
            i = j
        else:
            raise ExpressionError(f"unexpected character {ch!r}")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("expression ends too early")
        self.pos += 1
        return token

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:
        value = self.unary(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.unary(depth)
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ExpressionError("division by zero")
            else:
                value /= rhs
        return value

    def unary(self, depth: int) -> Fraction:
        if self.peek() == "-":
            self.take()
            if depth >= MAX_DEPTH:
                raise ExpressionError(f"nested deeper than {MAX_DEPTH}")
            return -self.unary(depth + 1)
        return self.atom(depth)

    def atom(self, depth: int) -> Fraction:
        token = self.take()
        if token == "(":
            if depth >= MAX_DEPTH:
                raise ExpressionError(f"nested deeper than {MAX_DEPTH}")
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise ExpressionError("unbalanced parentheses")
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ExpressionError(f"unexpected {token!r}")


def evaluate(text: str) -> Evaluated:
    """Parse and evaluate `text` exactly; raises ExpressionError if it is not a valid expression."""
    tokens = _tokenize(text)
    if not tokens:
        raise ExpressionError("empty expression")
    parser = _Parser(tokens)
    value = parser.expr(0)
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r}")
    return Evaluated(value=value, numbers=tuple(parser.numbers))
