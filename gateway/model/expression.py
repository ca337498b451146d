"""A small, safe expression language for derived indicators. Never `eval`.

    expression := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | atom
    atom       := number | "true" | "false" | indicator | function "(" expression ("," expression)* ")"
                | "(" expression ")"
    function   := "min" | "max" | "abs" | "if"

Indicator ids contain hyphens (`active-power`), so a hyphen between two letters
or digits belongs to the name; subtraction needs spaces: `a - b`.
A parsed expression is compiled once into nested closures; evaluating it is a
few Python calls, with no access to anything but the values it is given.

An expression is at most `MAX_LENGTH` characters and `MAX_NESTING` levels deep
(parentheses, function calls, `-` and `not` inside each other), so neither parsing
nor evaluating it can exhaust Python's stack; a chain such as `a + b + c ...`
is evaluated in a loop, so its length costs no depth.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

# What a name stands for is a reading's value, which may be a state or text (or missing); arithmetic and
# ordering need numbers and raise EvaluationError for anything else, equality takes anything.
Operand = float | int | bool | str | None
Evaluator = Callable[[Mapping[str, Operand]], Operand]

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:\[[a-z][a-z0-9]*(?:-[a-z0-9]+)*\])?)
  | (?P<op><=|>=|==|!=|[-+*/<>(),])
""", re.VERBOSE)

_KEYWORDS = {"and", "or", "not", "true", "false"}

# Real formulas are a line long and a few levels deep. Each level costs the parser about ten Python frames,
# and `check` runs it under pydantic and the loader, so 32 levels stay far from Python's 1,000-frame limit.
MAX_NESTING = 32
MAX_LENGTH = 4096


def _ordering(compare: Callable[[float, float], bool], what: str) -> Callable[[Operand, Operand], bool]:
    # Ordering needs numbers (a missing or text value must not crash the processor); equality takes anything.
    return lambda a, b: compare(_number(a, what), _number(b, what))


_COMPARISONS: dict[str, Callable[[Operand, Operand], bool]] = {
    "<": _ordering(operator.lt, "<"), "<=": _ordering(operator.le, "<="),
    ">": _ordering(operator.gt, ">"), ">=": _ordering(operator.ge, ">="),
    "==": operator.eq, "!=": operator.ne}


class EvaluationError(ValueError):
    """The expression has no value for these inputs (division by zero, wrong type, not finite)."""


@dataclass(frozen=True)
class Expression:
    text: str
    names: frozenset[str]  # the indicators it reads
    _evaluate: Evaluator

    def evaluate(self, values: Mapping[str, Operand]) -> Operand:
        """The value for `values` (every name must be present); raises EvaluationError."""
        result = self._evaluate(values)
        if result is None:
            raise EvaluationError(f"{self.text!r} has no value for these inputs")
        if isinstance(result, float) and not math.isfinite(result):
            raise EvaluationError(f"{self.text!r} is not finite for these inputs")
        return result


def parse(text: str) -> Expression:
    """Parse and compile `text`; raise ValueError saying where it is wrong."""
    parser = _Parser(text)
    evaluate = parser.expression()
    if parser.peek() is not None:
        raise parser.error(f"unexpected {parser.peek()!r}")
    return Expression(text, frozenset(parser.names), evaluate)


def _quoted(text: str) -> str:
    """The expression as an error message shows it: whole when short, its start when long."""
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def _number(value: Operand, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EvaluationError(f"{what} needs numbers, found {value!r}")
    return value


def _divide(left: Operand, right: Operand) -> float:
    divisor = _number(right, "/")
    if divisor == 0:
        raise EvaluationError("division by zero")
    return _number(left, "/") / divisor


_ARITHMETIC: dict[str, Callable[[Operand, Operand], Operand]] = {
    "+": lambda a, b: _number(a, "+") + _number(b, "+"),
    "-": lambda a, b: _number(a, "-") - _number(b, "-"),
    "*": lambda a, b: _number(a, "*") * _number(b, "*"),
    "/": _divide,
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        # Tokens are read as the parser needs them, so a problem near the start of a huge text (nesting too
        # deep, or the text too long) is found after a few tokens, not after reading all of it.
        self.tokens: list[tuple[str, int]] = []  # (token, position)
        self.scanned = 0  # where reading tokens has got to in the text
        self.index = 0
        self.depth = 0  # parentheses, calls, `-` and `not` open around the current token
        self.names: set[str] = set()

    def scan(self) -> None:
        """Read tokens until the one at `index` is read or the text ends."""
        while len(self.tokens) <= self.index and self.scanned < len(self.text):
            position = self.scanned
            match = _TOKEN.match(self.text, position)
            if match is None:
                raise ValueError(f"in {_quoted(self.text)} at column {position + 1}: "
                                 f"unexpected {self.text[position]!r}")
            if match.lastgroup != "space":
                if match.end() > MAX_LENGTH:
                    raise ValueError(f"in {_quoted(self.text)} at column {MAX_LENGTH + 1}: longer than "
                                     f"{MAX_LENGTH:,} characters; expected at most {MAX_LENGTH:,} (split it into "
                                     "derived indicators that use each other)")
                self.tokens.append((match.group(), position))
            self.scanned = match.end()

    def error(self, message: str) -> ValueError:
        column = self.tokens[self.index][1] + 1 if self.index < len(self.tokens) else len(self.text) + 1
        return ValueError(f"in {_quoted(self.text)} at column {column}: {message}")

    def peek(self) -> str | None:
        self.scan()
        return self.tokens[self.index][0] if self.index < len(self.tokens) else None

    @contextmanager
    def deeper(self) -> Iterator[None]:
        """One level deeper, opened by the current token; refused past MAX_NESTING, before recursing."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"nesting deeper than {MAX_NESTING} (parentheses, function calls, `-` and `not` "
                             f"inside each other); expected at most {MAX_NESTING}")
        yield
        self.depth -= 1

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            wanted = repr(expected) if expected is not None else "a value"
            raise self.error(f"expected {wanted}, found {repr(token) if token else 'the end'}")
        self.index += 1
        return token

    def expression(self) -> Evaluator:
        return self.either()

    def either(self) -> Evaluator:
        operands = [self.both()]
        while self.peek() == "or":
            self.take()
            operands.append(self.both())
        return operands[0] if len(operands) == 1 else _any(operands)

    def both(self) -> Evaluator:
        operands = [self.negation()]
        while self.peek() == "and":
            self.take()
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else _all(operands)

    def negation(self) -> Evaluator:
        if self.peek() == "not":
            with self.deeper():
                self.take()
                inner = self.negation()
            return lambda values: not inner(values)
        return self.comparison()

    def comparison(self) -> Evaluator:
        left = self.sum()
        token = self.peek()
        if token in _COMPARISONS:
            self.take()
            return _binary(_COMPARISONS[token], left, self.sum())
        return left

    def sum(self) -> Evaluator:
        first, rest = self.product(), []
        while (token := self.peek()) in ("+", "-"):
            self.take()
            rest.append((_ARITHMETIC[token], self.product()))
        return _fold(first, rest)

    def product(self) -> Evaluator:
        first, rest = self.unary(), []
        while (token := self.peek()) in ("*", "/"):
            self.take()
            rest.append((_ARITHMETIC[token], self.unary()))
        return _fold(first, rest)

    def unary(self) -> Evaluator:
        if self.peek() == "-":
            with self.deeper():
                self.take()
                inner = self.unary()
            return lambda values: -_number(inner(values), "-")
        return self.atom()

    def atom(self) -> Evaluator:
        if self.peek() == "(":
            with self.deeper():
                self.take()
                inner = self.expression()
                self.take(")")
            return inner
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            constant = float(token)
            return lambda values: constant
        if token in ("true", "false"):
            truth = token == "true"
            return lambda values: truth
        if not token[0].isalpha() or token in _KEYWORDS:
            self.index -= 1
            raise self.error(f"unexpected {token!r}")
        if self.peek() == "(":
            with self.deeper():
                return self.call(token)
        self.names.add(token)
        return lambda values: values[token]

    def call(self, function: str) -> Evaluator:
        self.take("(")
        arguments = [self.expression()]
        while self.peek() == ",":
            self.take()
            arguments.append(self.expression())
        self.take(")")
        if function in ("min", "max"):
            pick = min if function == "min" else max
            return lambda values: pick(_number(a(values), function) for a in arguments)
        if function == "abs" and len(arguments) == 1:
            (argument,) = arguments
            return lambda values: abs(_number(argument(values), "abs"))
        if function == "if" and len(arguments) == 3:
            condition, then, otherwise = arguments
            return lambda values: then(values) if condition(values) else otherwise(values)
        self.index -= 1
        raise self.error(f"unknown function {function}() with {len(arguments)} arguments; "
                         "expected min(a, b, ...), max(a, b, ...), abs(a) or if(condition, a, b)")


def _binary(function: Callable[[Operand, Operand], Operand], left: Evaluator, right: Evaluator) -> Evaluator:
    return lambda values: function(left(values), right(values))


def _fold(first: Evaluator, rest: list[tuple[Callable[[Operand, Operand], Operand], Evaluator]]) -> Evaluator:
    """`a - b + c` as one loop, left to right: a long chain nests no deeper than one operation."""
    if not rest:
        return first

    def evaluate(values: Mapping[str, Operand]) -> Operand:
        result = first(values)
        for function, operand in rest:
            result = function(result, operand(values))
        return result

    return evaluate


def _any(operands: list[Evaluator]) -> Evaluator:
    return lambda values: any(bool(operand(values)) for operand in operands)


def _all(operands: list[Evaluator]) -> Evaluator:
    return lambda values: all(bool(operand(values)) for operand in operands)
