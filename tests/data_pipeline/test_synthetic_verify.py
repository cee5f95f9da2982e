"""The verifier: number forms, tolerance rules, and malformed traces (hand-written bad traces)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from evaluation.numbers import format_number, parse_number
from evaluation.verify import CORRECT, MALFORMED, WRONG, extract_answer, verify


def trace(answer: str, think: str = "2 + 2 = 4.") -> str:
    return f"<think>\n{think}\n</think>\nAnswer: {answer}"


@pytest.mark.parametrize("written, value", [
    ("42", Fraction(42)), ("-42", Fraction(-42)), ("+7", Fraction(7)), ("\u22125", Fraction(-5)),
    ("1,234,567", Fraction(1234567)), ("2.5", Fraction(5, 2)), ("-0.125", Fraction(-1, 8)), (".5", Fraction(1, 2)),
    ("7/3", Fraction(7, 3)), ("-7/3", Fraction(-7, 3)), ("7 / -3", Fraction(-7, 3)), ("6/4", Fraction(3, 2)),
    ("  12  ", Fraction(12)), ("12.", Fraction(12)),
])
def test_parse_number_forms(written, value):
    assert parse_number(written).value == value


@pytest.mark.parametrize("written", ["", "x", "1/0", "2 1/3", "1e3", "3 + 4", "12,34", "1.2.3", "five", "--4"])
def test_parse_number_rejects(written):
    assert parse_number(written) is None


@pytest.mark.parametrize("value, text", [
    (Fraction(28), "28"), (Fraction(-3), "-3"), (Fraction(5, 2), "2.5"), (Fraction(-1, 8), "-0.125"),
    (Fraction(7, 3), "7/3"), (Fraction(-7, 3), "-7/3"), (Fraction(0), "0"), (Fraction(1, 10**7), "1/10000000"),
])
def test_format_number_round_trips(value, text):
    assert format_number(value) == text
    assert parse_number(text).value == value


@pytest.mark.parametrize("answer, expected, status", [
    ("3/2", Fraction(3, 2), CORRECT),
    ("6/4", Fraction(3, 2), CORRECT),          # equal fractions, not equal strings
    ("1.5", Fraction(3, 2), CORRECT),
    ("1.50", Fraction(3, 2), CORRECT),
    ("2", Fraction(5, 2), WRONG),              # integers are exact: no rounding
    ("2.4", Fraction(5, 2), WRONG),
    ("2.49", Fraction(5, 2), WRONG),           # 2.5 has an exact 2-place decimal: no tolerance
    ("0.33", Fraction(1, 3), CORRECT),         # rounded to 2 places
    ("0.333", Fraction(1, 3), CORRECT),
    ("0.3", Fraction(1, 3), WRONG),            # 1 place is too few
    ("0.34", Fraction(1, 3), WRONG),           # not the rounding
    ("0.67", Fraction(2, 3), CORRECT),
    ("0.66", Fraction(2, 3), WRONG),
    ("13.89", Fraction(125, 9), CORRECT),
    ("1/3", Fraction(1, 3), CORRECT),
    ("-6", Fraction(-6), CORRECT),
    ("\u22126", Fraction(-6), CORRECT),        # Unicode minus
    ("6", Fraction(-6), WRONG),                # sign matters
    ("-0.125", Fraction(-1, 8), CORRECT),
    ("-0.13", Fraction(-1, 8), CORRECT),       # 2-place rounding of a 3-place decimal (tie rounds either way)
    ("-0.12", Fraction(-1, 8), CORRECT),
    ("-0.14", Fraction(-1, 8), WRONG),
    ("1,234", Fraction(1234), CORRECT),
    ("  17  ", Fraction(17), CORRECT),         # whitespace
    ("17.", Fraction(17), CORRECT),            # a full stop after the number
])
def test_answer_rules(answer, expected, status):
    assert verify(trace(answer), expected).status == status


def test_unit_after_the_number_is_accepted_only_when_it_is_the_problems_unit():
    assert verify(trace("3500 m"), Fraction(3500), unit="m").status == CORRECT
    assert verify(trace("3500 km"), Fraction(3500), unit="m").status == MALFORMED
    assert verify(trace("3500 m"), Fraction(3500)).status == MALFORMED


@pytest.mark.parametrize("text, why", [
    ("<think>\n2 + 2 = 4\n</think>\n", "no 'Answer:' line"),
    ("<think>\n2 + 2 = 4\n</think>\nThe answer is 4.", "no 'Answer:' line"),
    ("Answer: 4", "no '</think>'"),                                         # reasoning block required
    ("<think>\nAnswer: 4\n", "no '</think>'"),                              # answer inside an open block
    ("<think>\nAnswer: 4\n</think>\n", "no 'Answer:' line"),                # answer only inside the block
    ("<think>\nx\n</think>\nAnswer: 4\nAnswer: 5", "2 'Answer:' lines"),    # hedging
    ("<think>\nx\n</think>\nAnswer: 4\nbecause reasons", "text after"),
    ("<think>\nx\n</think>\nAnswer:   ", "empty 'Answer:' line"),
    ("<think>a</think><think>b</think>\nAnswer: 4", "expected one block"),
    ("</think><think>\nAnswer: 4", "after"),
    ("<think>\nx\n</think>\nAnswer: four", "not a number"),
    ("<think>\nx\n</think>\nAnswer: 2 + 2", "not a number"),
    ("", "no '</think>'"),
])
def test_malformed_traces(text, why):
    verdict = verify(text, Fraction(4))
    assert verdict.status == MALFORMED
    assert why in verdict.reason


def test_tolerated_layout():
    # end-of-turn markers, blank lines, case, spaces around the colon, Windows newlines
    text = "<think>\r\n2 + 2 = 4\r\n</think>\r\n\r\n  answer :  4  \r\n<|im_end|>"
    assert verify(text, Fraction(4)).status == CORRECT
    # a template that opened <think> in the prompt: the answer starts inside the block
    assert verify("2 + 2 = 4\n</think>\nAnswer: 4", Fraction(4)).status == CORRECT


def test_require_think_false_reads_the_whole_text():
    assert verify("Answer: 4", Fraction(4), require_think=False).status == CORRECT
    assert verify("2+2\nAnswer: 5", Fraction(4), require_think=False).status == WRONG
    assert verify("<think>\nAnswer: 4", Fraction(4), require_think=False).status == MALFORMED


def test_extract_answer():
    assert extract_answer(trace("-7/3")) == ("-7/3", "")
    assert extract_answer("nothing")[0] is None
