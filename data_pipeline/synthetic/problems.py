"""Generators of verifiable problems, each with a step-by-step reference trace and an exact answer.

Five generators (`GENERATORS`), three difficulty levels each; a level adds reasoning steps (and usually
operands or magnitude), never only wording:

| generator      | level 1                  | level 2                        | level 3                          |
|----------------|--------------------------|--------------------------------|----------------------------------|
| arithmetic     | 2 operands, + -          | 3 operands, + - *              | 4 operands, + - * /, negatives   |
| word_problem   | 2 events                 | 3 events                       | 4 events                         |
| linear         | ax + b = c               | ax + b = cx + d                | a(x + b) = cx + d (fractions)    |
| unit_conversion| one factor (km -> m)     | two factors (km -> cm)         | a rate (km/h -> m/s)             |
| sequence       | arithmetic, next term    | geometric, next term           | quadratic (2nd differences)      |

Every problem is drawn from its own `random.Random(seed)`, the seed derived from (run seed, generator,
difficulty, index) by sha256: the same run seed gives the same problems, byte for byte, whatever
else the run generates. A generator's `VERSION` changes whenever its output for a seed changes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

from evaluation.numbers import format_number as fmt

LEVELS = (1, 2, 3)
INSTRUCTION = (
    "Think step by step inside <think> </think>, then give the final answer alone on the last line "
    'as "Answer: <number>".'
)


@dataclass(frozen=True)
class Problem:
    generator: str
    version: int
    template: str  # "<generator>/<template name>"
    difficulty: int
    seed: int
    question: str
    steps: tuple[str, ...]
    answer: Fraction
    unit: str | None = None
    size: dict[str, int] = field(default_factory=dict)  # what the difficulty scales (operands, events...)

    @property
    def answer_text(self) -> str:
        return fmt(self.answer)

    @property
    def generator_id(self) -> str:
        return f"{self.generator}@{self.version}"

    def prompt(self) -> str:
        return f"{self.question}\n{INSTRUCTION}"

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt()}]

    def trace(self) -> str:
        """The reference trace in the fixed format (what a model's answer is checked like)."""
        return "<think>\n" + "\n".join(self.steps) + f"\n</think>\nAnswer: {self.answer_text}"


def chatml(messages: list[dict[str, str]]) -> str:
    """Messages as ChatML text, as the tokenizer's chat template writes them."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ---------------------------------------------------------------------------------------------
# arithmetic
# ---------------------------------------------------------------------------------------------

def _term(x: Fraction) -> str:
    return f"({fmt(x)})" if x < 0 else fmt(x)


def _expr(nums: list[Fraction], ops: list[str]) -> str:
    out = _term(nums[0])
    for op, n in zip(ops, nums[1:], strict=True):
        out += f" {op} {_term(n)}"
    return out


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]


def arithmetic(rng: random.Random, level: int) -> tuple[str, str, list[str], Fraction, dict]:
    n = level + 1
    high = (20, 100, 200)[level - 1]
    ops_allowed = (["+", "-"], ["+", "-", "*"], ["+", "-", "*", "/"])[level - 1]
    nums = [Fraction(rng.randint(1, high)) for _ in range(n)]
    if level == 3:
        i = rng.randrange(n)
        nums[i] = -nums[i]
    ops = [rng.choice(ops_allowed) for _ in range(n - 1)]
    if level >= 2 and "*" not in ops and "/" not in ops:
        ops[rng.randrange(n - 1)] = "*"  # every level-2+ expression exercises precedence
    for i, op in enumerate(ops):
        if op in "*/":
            nums[i + 1] = Fraction(rng.randint(2, 12)) * (1 if nums[i + 1] > 0 else -1)
    question = f"Compute {_expr(nums, ops)}."
    steps = []
    nums, ops = list(nums), list(ops)
    for group in ("*/", "+-"):
        while any(op in group for op in ops):
            i = next(k for k, op in enumerate(ops) if op in group)
            value = _apply(nums[i], ops[i], nums[i + 1])
            first = "Multiplication and division come first: " if group == "*/" else ""
            part = f"{_term(nums[i])} {ops[i]} {_term(nums[i + 1])} = {fmt(value)}"
            nums[i: i + 2] = [value]
            del ops[i]
            rest = f", leaving {_expr(nums, ops)}." if ops else "."
            steps.append(f"{first}{part}{rest}")
    return "expression", question, steps, nums[0], {"operands": n}


# ---------------------------------------------------------------------------------------------
# multi-step word problems
# ---------------------------------------------------------------------------------------------

NAMES = ("Ada", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena")
ITEMS = ("apples", "marbles", "stamps", "books", "pencils", "stickers", "cards", "shells")


def word_problem(rng: random.Random, level: int) -> tuple[str, str, list[str], Fraction, dict]:
    events = level + 1
    kind = rng.choice(("inventory", "money", "distance"))
    name = rng.choice(NAMES)
    if kind == "distance":
        speeds = [rng.randint(3, 12) * 10 for _ in range(events)]
        hours = [rng.randint(1, 4) for _ in range(events)]
        legs = [f"{s} km/h for {h} hour{'s' if h > 1 else ''}" for s, h in zip(speeds, hours, strict=True)]
        question = (f"{name} drives at " + ", then at ".join(legs)
                    + f". How many kilometres does {name} drive in total?")
        steps = [f"Leg {i + 1}: {s} km/h x {h} h = {s * h} km." for i, (s, h) in enumerate(zip(speeds, hours,
                                                                                           strict=True))]
        total = sum(s * h for s, h in zip(speeds, hours, strict=True))
        steps.append("Total: " + " + ".join(str(s * h) for s, h in zip(speeds, hours, strict=True))
                     + f" = {total} km.")
        return "distance", question, steps, Fraction(total), {"events": events}

    unit, item = ("dollars", "dollars") if kind == "money" else ("items", rng.choice(ITEMS))
    have = rng.randint(10, 60) * (5 if kind == "money" else 1)
    opening = f"{name} has ${have}." if kind == "money" else f"{name} has {have} {item}."
    sentences, steps = [opening], []
    for _ in range(events):
        op = rng.choice(("gain_groups", "lose", "gain", "double")) if have > 0 else "gain"
        if kind == "money":
            if op == "gain_groups":
                k, each = rng.randint(2, 6), rng.randint(3, 15)
                sentences.append(f"{name.split()[0]} works {k} hours at ${each} an hour.")
                steps.append(f"Earned {k} x {each} = {k * each}; {have} + {k * each} = {have + k * each}.")
                have += k * each
            elif op == "lose":
                k, each = rng.randint(1, 4), rng.randint(1, max(1, have // 4))
                if k * each > have:
                    k = 1
                sentences.append(f"Then {name} buys {k} ticket{'s' if k > 1 else ''} at ${each} each.")
                steps.append(f"Spent {k} x {each} = {k * each}; {have} - {k * each} = {have - k * each}.")
                have -= k * each
            elif op == "gain":
                g = rng.randint(5, 50)
                sentences.append(f"A friend pays back ${g}.")
                steps.append(f"{have} + {g} = {have + g}.")
                have += g
            else:
                sentences.append(f"Then {name}'s savings double.")
                steps.append(f"{have} x 2 = {have * 2}.")
                have *= 2
        else:
            if op == "gain_groups":
                k, each = rng.randint(2, 6), rng.randint(2, 12)
                sentences.append(f"{name} buys {k} boxes with {each} {item} in each box.")
                steps.append(f"Bought {k} x {each} = {k * each}; {have} + {k * each} = {have + k * each}.")
                have += k * each
            elif op == "lose":
                g = rng.randint(1, have)
                sentences.append(f"Then {name} gives {g} {item} to a friend.")
                steps.append(f"{have} - {g} = {have - g}.")
                have -= g
            elif op == "gain":
                g = rng.randint(1, 30)
                sentences.append(f"{name} finds {g} more {item}.")
                steps.append(f"{have} + {g} = {have + g}.")
                have += g
            else:
                sentences.append(f"Then the number of {item} {name} has doubles.")
                steps.append(f"{have} x 2 = {have * 2}.")
                have *= 2
    asked = "How many dollars does {n} have now?" if kind == "money" else "How many {i} does {n} have now?"
    question = " ".join(sentences) + " " + asked.format(n=name, i=item)
    steps.append(f"So {name} has {have} {unit if kind == 'money' else item}.")
    return kind, question, steps, Fraction(have), {"events": events}


# ---------------------------------------------------------------------------------------------
# linear equations
# ---------------------------------------------------------------------------------------------

def _lin(a: Fraction | int, b: Fraction | int) -> str:
    """`ax + b` written the usual way (1x -> x, + -5 -> - 5, zero terms left out)."""
    a, b = Fraction(a), Fraction(b)
    parts = []
    if a:
        coef = "" if a == 1 else "-" if a == -1 else fmt(a)
        parts.append(f"{coef}x")
    if b or not parts:
        if parts:
            parts.append(f"{'-' if b < 0 else '+'} {fmt(abs(b))}")
        else:
            parts.append(fmt(b))
    return " ".join(parts)


def _remove(b: int | Fraction) -> str:
    """The words for taking the constant `b` off both sides."""
    return f"Subtract {fmt(b)} from" if b > 0 else f"Add {fmt(-b)} to"


def _nonzero(rng: random.Random, low: int, high: int) -> int:
    while True:
        v = rng.randint(low, high)
        if v:
            return v


def linear(rng: random.Random, level: int) -> tuple[str, str, list[str], Fraction, dict]:
    if level == 1:
        x, a, b = rng.randint(-12, 12), rng.randint(2, 9), _nonzero(rng, -20, 20)
        c = a * x + b
        steps = [f"{_remove(b)} both sides: {_lin(a, 0)} = {fmt(c - b)}.",
                 f"Divide both sides by {a}: x = {fmt(Fraction(c - b, a))}."]
        return "one_side", f"Solve for x: {_lin(a, b)} = {c}.", steps, Fraction(x), {"terms": 3}
    if level == 2:
        x, a, c = rng.randint(-15, 15), rng.randint(2, 12), rng.randint(1, 12)
        while c == a:
            c = rng.randint(1, 12)
        b = _nonzero(rng, -30, 30)
        d = (a - c) * x + b
        steps = [f"Subtract {_lin(c, 0)} from both sides: {_lin(a - c, b)} = {d}.",
                 f"{_remove(b)} both sides: {_lin(a - c, 0)} = {fmt(d - b)}.",
                 f"Divide both sides by {a - c}: x = {fmt(Fraction(d - b, a - c))}."]
        return "both_sides", f"Solve for x: {_lin(a, b)} = {_lin(c, d)}.", steps, Fraction(x), {"terms": 4}
    a, b = rng.randint(2, 9), _nonzero(rng, -10, 10)
    c = rng.randint(1, 12)
    while c == a:
        c = rng.randint(1, 12)
    d = _nonzero(rng, -40, 40)
    root = Fraction(d - a * b, a - c)
    inner = f"x {'+' if b > 0 else '-'} {abs(b)}"
    steps = [f"Expand the left side: {a}({inner}) = {_lin(a, a * b)}, so {_lin(a, a * b)} = {_lin(c, d)}.",
             f"Subtract {_lin(c, 0)} from both sides: {_lin(a - c, a * b)} = {d}.",
             f"{_remove(a * b)} both sides: {_lin(a - c, 0)} = {d - a * b}.",
             f"Divide both sides by {a - c}: x = {fmt(root)}."]
    return "parentheses", f"Solve for x: {a}({inner}) = {_lin(c, d)}.", steps, root, {"terms": 5}


# ---------------------------------------------------------------------------------------------
# unit conversion
# ---------------------------------------------------------------------------------------------

# Each quantity: units from large to small with their size in the smallest-but-one base unit.
UNITS = {
    "length": [("km", Fraction(1000)), ("m", Fraction(1)), ("cm", Fraction(1, 100)), ("mm", Fraction(1, 1000))],
    "mass": [("t", Fraction(1000)), ("kg", Fraction(1)), ("g", Fraction(1, 1000)), ("mg", Fraction(1, 10**6))],
    "time": [("h", Fraction(3600)), ("min", Fraction(60)), ("s", Fraction(1))],
    "volume": [("kL", Fraction(1000)), ("L", Fraction(1)), ("mL", Fraction(1, 1000))],
}


def _convert_step(value: Fraction, src: tuple[str, Fraction], dst: tuple[str, Fraction]) -> tuple[str, Fraction]:
    ratio = src[1] / dst[1]
    out = value * ratio
    if ratio.denominator == 1:
        text = f"1 {src[0]} = {fmt(ratio)} {dst[0]}, so {fmt(value)} {src[0]} = {fmt(value)} x {fmt(ratio)}"
    else:
        text = f"1 {dst[0]} = {fmt(1 / ratio)} {src[0]}, so {fmt(value)} {src[0]} = {fmt(value)} / {fmt(1 / ratio)}"
    return f"{text} = {fmt(out)} {dst[0]}.", out


def _amount(rng: random.Random, decimals: int) -> Fraction:
    return Fraction(rng.randint(1, 999), 10**decimals) if decimals else Fraction(rng.randint(1, 99))


def unit_conversion(rng: random.Random, level: int) -> tuple[str, str, list[str], Fraction, dict, str]:
    if level == 3:
        km_h = rng.random() < 0.5
        value = Fraction(rng.randint(1, 40) * 9) if km_h else Fraction(rng.randint(1, 60) * 5)
        if km_h:
            metres = value * 1000
            question = f"Convert {fmt(value)} km/h to m/s."
            steps = [f"{fmt(value)} km = {fmt(value)} x 1000 = {fmt(metres)} m, so the speed is {fmt(metres)} m/h.",
                     "1 h = 60 min = 60 x 60 s = 3600 s.",
                     f"{fmt(metres)} m per 3600 s: {fmt(metres)} / 3600 = {fmt(metres / 3600)} m/s."]
            return "rate", question, steps, metres / 3600, {"factors": 3}, "m/s"
        per_hour = value * 3600
        question = f"Convert {fmt(value)} m/s to km/h."
        steps = ["1 h = 60 min = 60 x 60 s = 3600 s.",
                 f"In 3600 s: {fmt(value)} x 3600 = {fmt(per_hour)} m, so the speed is {fmt(per_hour)} m/h.",
                 f"{fmt(per_hour)} m = {fmt(per_hour)} / 1000 = {fmt(per_hour / 1000)} km, "
                 f"so {fmt(per_hour / 1000)} km/h."]
        return "rate", question, steps, per_hour / 1000, {"factors": 3}, "km/h"
    quantity = rng.choice(sorted(UNITS))
    units = UNITS[quantity]
    hops = level  # unit pairs that many places apart, converted one place at a time
    start = rng.randrange(len(units) - hops)
    path = units[start: start + hops + 1]
    if rng.random() < 0.5:
        path = path[::-1]
    if path[0][1] < path[-1][1]:  # to a larger unit: whole amounts, so the answer has <= 6 decimals
        value = Fraction(rng.randint(1, 10 ** (2 + 2 * level)))
    else:
        value = _amount(rng, rng.choice((0, 1, 2)))
    question = f"Convert {fmt(value)} {path[0][0]} to {path[-1][0]}."
    steps = []
    for src, dst in zip(path, path[1:], strict=False):
        text, value = _convert_step(value, src, dst)
        steps.append(text)
    return ("direct" if level == 1 else "chain"), question, steps, value, {"factors": hops}, path[-1][0]


# ---------------------------------------------------------------------------------------------
# sequences
# ---------------------------------------------------------------------------------------------

def _seq(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def sequence(rng: random.Random, level: int) -> tuple[str, str, list[str], Fraction, dict]:
    if level == 1:
        a, d = rng.randint(-20, 50), _nonzero(rng, -9, 12)
        terms = [a + d * k for k in range(5)]
        nxt = terms[-1] + d
        diffs = [terms[k + 1] - terms[k] for k in range(4)]
        steps = [f"Differences between neighbours: {_seq(diffs)}; the difference is always {d}.",
                 f"Next term: {terms[-1]} + {_term(Fraction(d))} = {nxt}."]
        name = "arithmetic"
    elif level == 2:
        a, r = rng.randint(1, 9) * rng.choice((1, -1)), rng.choice((2, 3, 4, -2, -3))
        terms = [a * r**k for k in range(5)]
        nxt = terms[-1] * r
        diffs = [terms[k + 1] - terms[k] for k in range(4)]
        steps = [f"Differences between neighbours: {_seq(diffs)}; not constant.",
                 f"Ratios between neighbours: each term is the previous one times {r}.",
                 f"Next term: {terms[-1]} x {_term(Fraction(r))} = {nxt}."]
        name = "geometric"
    else:
        a, b, c = _nonzero(rng, -3, 4), rng.randint(-6, 6), rng.randint(-10, 10)
        terms = [a * n * n + b * n + c for n in range(1, 7)]
        d1 = [terms[k + 1] - terms[k] for k in range(5)]
        d2 = [d1[k + 1] - d1[k] for k in range(4)]
        nd = d1[-1] + d2[-1]
        nxt = terms[-1] + nd
        steps = [f"Differences between neighbours: {_seq(d1)}; not constant.",
                 f"Differences of those: {_seq(d2)}; always {d2[0]}.",
                 f"Next difference: {d1[-1]} + {_term(Fraction(d2[0]))} = {nd}.",
                 f"Next term: {terms[-1]} + {_term(Fraction(nd))} = {nxt}."]
        name = "quadratic"
    question = f"What is the next number in the sequence {_seq(terms)}, ...?"
    # relations examined: differences; + ratios; + second differences and the next difference
    return name, question, steps, Fraction(nxt), {"relations": level, "terms": len(terms)}


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Generator:
    name: str
    version: int
    make: Callable[[random.Random, int], tuple]


GENERATORS: dict[str, Generator] = {
    g.name: g for g in (
        Generator("arithmetic", 1, arithmetic),
        Generator("word_problem", 1, word_problem),
        Generator("linear", 1, linear),
        Generator("unit_conversion", 1, unit_conversion),
        Generator("sequence", 1, sequence),
    )
}


def unknown_generators(names: list[str]) -> list[str]:
    return [n for n in names if n not in GENERATORS]


def make_problem(generator: str, difficulty: int, seed: int) -> Problem:
    """One problem of `generator` at `difficulty`, fully determined by `seed`."""
    if generator not in GENERATORS:
        raise KeyError(f"unknown generator {generator!r} (known: {', '.join(GENERATORS)})")
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {LEVELS}, got {difficulty}")
    gen = GENERATORS[generator]
    template, question, steps, answer, size, *unit = gen.make(random.Random(seed), difficulty)
    return Problem(gen.name, gen.version, f"{gen.name}/{template}", difficulty, seed, question,
                   tuple(steps), Fraction(answer), unit[0] if unit else None, dict(size))


def generate_problems(count: int, seed: int, generators: list[str], difficulties: list[int]) -> list[Problem]:
    """`count` problems: generators round-robin, difficulties cycling per round; seeds per (generator,
    difficulty, index), so the same arguments always give the same list."""
    problems = []
    for i in range(count):
        name = generators[i % len(generators)]
        level = difficulties[(i // len(generators)) % len(difficulties)]
        problems.append(make_problem(name, level, derive_seed(seed, name, level, i)))
    return problems
