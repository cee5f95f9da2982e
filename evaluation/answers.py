"""Checking a generated answer against the reference.

- GSM8K: the answer is what follows the last "answer is" of the generation (the few-shot examples end
  "So the answer is N."), else its last number; `$`, thousands commas and a final period are removed (the
  OLMES normalisation) and the number is checked exactly by the synthetic-data verifier (`check_answer`).
- MATH-500: `math-verify` (Hugging Face's answer parser and equivalence checker) parses the reference
  solution's boxed answer and the generation's final answer and compares them symbolically.
Both tasks also report `math_verify` (the same equivalence check on GSM8K's number), so the two methods
can be compared.
"""

from __future__ import annotations

import re
from fractions import Fraction

from evaluation.verify import check_answer

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE)


def gsm8k_answer(generation: str) -> str | None:
    said = ANSWER_IS.findall(generation)
    text = said[-1] if said else generation
    numbers = NUMBER.findall(text.replace("$", ""))
    if not numbers:
        return None
    return (numbers[0] if said else numbers[-1]).replace(",", "").rstrip(".")


def gsm8k_correct(generation: str, reference: str) -> bool:
    answer = gsm8k_answer(generation)
    if answer is None:
        return False
    try:
        expected = Fraction(reference.replace(",", "").strip())
    except ValueError:
        return False
    return check_answer(answer, expected).correct


def math_verify_correct(generation: str, reference_solution: str) -> bool:
    """Symbolic equivalence of the final answers (False when either cannot be parsed)."""
    from math_verify import parse, verify

    gold = parse(reference_solution)
    predicted = parse(generation)
    return bool(gold) and bool(predicted) and bool(verify(gold, predicted))
