"""Problem generators: deterministic, every reference trace verifies, wrong answers fail, levels scale."""

from __future__ import annotations

import statistics
from fractions import Fraction

import pytest

from data_pipeline.synthetic.problems import GENERATORS, LEVELS, generate_problems, make_problem
from evaluation.numbers import format_number
from evaluation.verify import CORRECT, WRONG, verify

PER_CELL = 60  # problems per (generator, level)


@pytest.fixture(scope="module")
def problems():
    return generate_problems(PER_CELL * len(GENERATORS) * len(LEVELS), seed=11, generators=list(GENERATORS),
                             difficulties=list(LEVELS))


def test_same_seed_same_problems_other_seed_others():
    a = generate_problems(200, 5, list(GENERATORS), [1, 2, 3])
    b = generate_problems(200, 5, list(GENERATORS), [1, 2, 3])
    c = generate_problems(200, 6, list(GENERATORS), [1, 2, 3])
    assert [(p.question, p.trace()) for p in a] == [(p.question, p.trace()) for p in b]
    assert sum(x.question != y.question for x, y in zip(a, c, strict=True)) > 150


def test_a_problem_depends_only_on_its_seed():
    p = generate_problems(50, 3, ["linear", "sequence"], [2])[-1]
    assert make_problem(p.generator, p.difficulty, p.seed) == p


def test_round_robin_covers_every_generator_and_level(problems):
    cells = {(p.generator, p.difficulty) for p in problems}
    assert cells == {(g, lv) for g in GENERATORS for lv in LEVELS}
    assert all(p.template.startswith(p.generator + "/") for p in problems)


def test_every_reference_trace_verifies(problems):
    failures = [(p.template, p.seed, verify(p.trace(), p.answer, p.unit).reason) for p in problems
                if verify(p.trace(), p.answer, p.unit).status != CORRECT]
    assert not failures
    # the last reasoning line states the answer the Answer line gives
    assert all(p.steps and p.answer_text in p.steps[-1] for p in problems if p.generator != "word_problem")


def _perturbations(answer: Fraction) -> list[str]:
    out = [answer + 1, answer - 1, answer * 2 if answer else Fraction(3), answer + Fraction(1, 7)]
    if answer:
        out.append(-answer)
    return [format_number(x) for x in out]


def test_perturbed_answers_fail(problems):
    for p in problems:
        for wrong in _perturbations(p.answer):
            bad = p.trace().rsplit("Answer: ", 1)[0] + f"Answer: {wrong}"
            assert verify(bad, p.answer, p.unit).status == WRONG, (p.template, p.answer_text, wrong)


def test_answers_include_negatives_fractions_and_decimals(problems):
    texts = [p.answer_text for p in problems]
    assert any(t.startswith("-") for t in texts)
    assert any("/" in t for t in texts)
    assert any("." in t for t in texts)


def _mean(problems, generator, level, measure):
    return statistics.mean(measure(p) for p in problems if p.generator == generator and p.difficulty == level)


@pytest.mark.parametrize("generator", list(GENERATORS))
def test_difficulty_adds_steps_and_size(problems, generator):
    steps = [_mean(problems, generator, lv, lambda p: len(p.steps)) for lv in LEVELS]
    assert steps[0] < steps[1] < steps[2], steps
    key = next(iter(make_problem(generator, 1, 0).size))
    size = [_mean(problems, generator, lv, lambda p: p.size[key]) for lv in LEVELS]
    assert size[0] < size[1] < size[2], (key, size)


def test_arithmetic_levels_grow_operands_and_operators():
    ops = {lv: {p.question.count(" * ") + p.question.count(" / ") > 0
                for p in generate_problems(30, 0, ["arithmetic"], [lv])} for lv in LEVELS}
    assert ops[1] == {False} and ops[2] == {True}
    n = {lv: {len(make_problem("arithmetic", lv, s).question.split()) for s in range(20)} for lv in LEVELS}
    assert max(n[1]) < min(n[2]) and max(n[2]) < min(n[3])


def test_unknown_generator_and_level():
    with pytest.raises(KeyError, match="unknown generator 'calculus'.*known: arithmetic"):
        make_problem("calculus", 1, 0)
    with pytest.raises(ValueError, match="difficulty"):
        make_problem("arithmetic", 4, 0)
