"""The verifier: parse a trace's final answer and check it exactly against the reference.

The fixed format of a trace (what the generator writes and what a model is asked for):

    <think>
    ...step-by-step reasoning...
    </think>
    Answer: X

Parsing (malformed when any rule fails):
- one `</think>` closes the reasoning, at most one `<think>` opens it (before the close); with
  `require_think=False` a trace without them is read whole (servers that drop special tokens);
- after the reasoning, exactly one line `Answer: X` (case-insensitive `answer`), and it is the last
  non-empty line; a trailing `<|im_end|>`/`<|endoftext|>` is ignored;
- X is a number as `numbers.parse_number` reads it, optionally followed by the problem's unit (`3500 m`).

Checking (numbers compared as exact fractions):
- integers and fractions must equal the reference exactly (`6/4` equals `3/2`; `2` is not `2.5`);
- a decimal equals the reference exactly (`0.50` is `1/2`), or, when it has at least
  `MIN_ROUNDED_DECIMALS` (2) places and the reference has no exact decimal of that many places, it is
  accepted when it is the reference rounded to that many places: |x - ref| <= 0.5 * 10^-d
  (`0.33` and `0.333` for 1/3, `13.89` for 125/9; `0.3` for 1/3 is wrong).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from evaluation.numbers import format_number, parse_number

MIN_ROUNDED_DECIMALS = 2
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
_ANSWER_LINE = re.compile(r"^\s*answer\s*:(.*)$", re.IGNORECASE)

CORRECT = "correct"
WRONG = "wrong"
MALFORMED = "malformed"


@dataclass(frozen=True)
class Verdict:
    status: str  # correct | wrong | malformed
    answer: str | None  # the answer text as written (None when there is no Answer line)
    parsed: str | None  # its canonical value (None when it does not parse)
    reason: str  # why, in words

    @property
    def correct(self) -> bool:
        return self.status == CORRECT


def extract_answer(trace: str, require_think: bool = True) -> tuple[str | None, str]:
    """(answer text, "") from a well-formed trace, or (None, why it is malformed)."""
    text = trace.strip()
    for marker in END_MARKERS:
        while text.endswith(marker):
            text = text[: -len(marker)].rstrip()
    closes = text.count(THINK_CLOSE)
    opens = text.count(THINK_OPEN)
    if closes > 1 or opens > 1:
        return None, f"{closes} '{THINK_CLOSE}' and {opens} '{THINK_OPEN}' (expected one block)"
    if closes == 1:
        if opens == 1 and text.index(THINK_OPEN) > text.index(THINK_CLOSE):
            return None, f"'{THINK_OPEN}' after '{THINK_CLOSE}'"
        tail = text.split(THINK_CLOSE, 1)[1]
    elif require_think:
        return None, f"no '{THINK_CLOSE}' (the reasoning block is required)"
    elif opens:
        return None, f"'{THINK_OPEN}' never closed"
    else:
        tail = text
    lines = [line for line in tail.splitlines() if line.strip()]
    answers = [i for i, line in enumerate(lines) if _ANSWER_LINE.match(line)]
    if not answers:
        return None, "no 'Answer:' line"
    if len(answers) > 1:
        return None, f"{len(answers)} 'Answer:' lines (expected one)"
    if answers[0] != len(lines) - 1:
        return None, "text after the 'Answer:' line"
    matched = _ANSWER_LINE.match(lines[answers[0]])
    assert matched is not None  # answers holds the lines that match
    answer = matched.group(1).strip()
    if not answer:
        return None, "empty 'Answer:' line"
    return answer, ""


def check_answer(answer: str, expected: Fraction, unit: str | None = None) -> Verdict:
    """Compare one answer text with the exact reference (rules in the module docstring)."""
    text = answer.strip()
    if unit and text.endswith(unit) and text[: -len(unit)].strip():
        text = text[: -len(unit)].strip()
    parsed = parse_number(text)
    if parsed is None:
        return Verdict(MALFORMED, answer, None, f"answer {answer!r} is not a number")
    canonical = format_number(parsed.value)
    if parsed.value == expected:
        return Verdict(CORRECT, answer, canonical, "exact")
    d = parsed.decimals
    if d is not None and d >= MIN_ROUNDED_DECIMALS:
        scale = 10**d
        if (expected * scale).denominator != 1 and abs(parsed.value - expected) * scale * 2 <= 1:
            return Verdict(CORRECT, answer, canonical, f"reference rounded to {d} decimals")
    return Verdict(WRONG, answer, canonical, f"expected {format_number(expected)}")


def verify(trace: str, expected: Fraction, unit: str | None = None, require_think: bool = True) -> Verdict:
    """Parse `trace`'s final answer and check it against `expected`."""
    answer, why = extract_answer(trace, require_think)
    if answer is None:
        return Verdict(MALFORMED, None, None, why)
    return check_answer(answer, expected, unit)
