"""Exact numbers for problems and answers: every quantity is a `Fraction`, never a float.

Writing (`format_number`): an integer as `28` / `-3`; a value with a terminating decimal expansion of at
most 6 places as a decimal (`2.5`, `-0.125`); anything else as a reduced fraction (`-7/3`).

Reading (`parse_number`), the forms an answer may take:
- an integer `42`, `-42`, `+42`, with an optional thousands grouping `1,234,567`;
- a decimal `2.5`, `-0.125`, `.5`;
- a fraction `7/3`, `-7/3`, `7 / -3` (denominator not zero); mixed numbers (`2 1/3`) are not accepted;
- surrounding whitespace, a trailing full stop and the Unicode minus sign (U+2212) are tolerated.
Anything else (words, expressions, `1e3`, several numbers) does not parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_DECIMALS = 6

_INT = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)"
_INTEGER = re.compile(rf"^{_INT}$")
_DECIMAL = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?\.(\d+)$")
_FRACTION = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")


@dataclass(frozen=True)
class ParsedNumber:
    value: Fraction
    decimals: int | None  # digits after the point when written as a decimal, else None


def parse_number(text: str) -> ParsedNumber | None:
    """The number `text` spells (rules in the module docstring), or None."""
    s = text.strip().replace("\u2212", "-")
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    if not s:
        return None
    if _INTEGER.match(s):
        return ParsedNumber(Fraction(int(s.replace(",", ""))), None)
    m = _DECIMAL.match(s)
    if m:
        return ParsedNumber(Fraction(s.replace(",", "")), len(m.group(1)))
    m = _FRACTION.match(s)
    if m:
        den = int(m.group(2))
        if den == 0:
            return None
        return ParsedNumber(Fraction(int(m.group(1)), den), None)
    return None


def format_number(value: Fraction | int) -> str:
    """The canonical spelling of an exact value (rules in the module docstring)."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    scaled = value * 10**MAX_DECIMALS
    if scaled.denominator == 1:
        sign = "-" if value < 0 else ""
        whole, frac = divmod(abs(scaled.numerator), 10**MAX_DECIMALS)
        return f"{sign}{whole}.{str(frac).rjust(MAX_DECIMALS, '0').rstrip('0')}"
    return f"{value.numerator}/{value.denominator}"
