"""The evals score known answers right: models whose replies are scripted, through the real tokenizer,
greedy decoder and verifier. A model that always scores 0 cannot tell a broken eval from a weak model."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from core.config import RunConfig
from data_pipeline.synthetic.problems import Problem, chatml, generate_problems
from data_pipeline.tokenizer.train import TokenizerConfig, load_tokenizer
from data_pipeline.tokenizer.train import run as train_tokenizer
from evaluation.numbers import format_number
from midtrain.config import EvalConfig
from midtrain.evals import ASSISTANT, Generator, passkey_accuracy, passkey_prompt, reasoning_accuracy, run_evals
from pretrain.model.transformer import ModelOutput
from tests.data_pipeline.tokens_fixtures import stdlib_documents, write_curated_run

QUESTION = "What is the pass key? The pass key is"
NEEDLE = re.compile(r"The pass key is (\d{5})\. Remember it\.")
CPU = torch.device("cpu")

# (start of the reply in the window, the reply's token ids); the script ends with a stop token
Reply = Callable[[list[int]], tuple[int, list[int]]]


class ScriptedModel(nn.Module):
    """Greedy decoding from it yields `reply(window)`, then <|im_end|>; it keeps every window's length."""

    def __init__(self, tokenizer: Any, reply: Reply) -> None:
        super().__init__()
        self.vocab = tokenizer.get_vocab_size()
        self.stop = tokenizer.token_to_id("<|im_end|>")
        self.reply = reply
        self.windows: list[int] = []

    def forward(self, tokens: torch.Tensor) -> ModelOutput:
        ids = tokens[0].tolist()
        self.windows.append(len(ids))
        start, reply = self.reply(ids)
        script = [*reply, self.stop]
        logits = torch.zeros(1, len(ids), self.vocab)
        logits[0, -1, script[min(len(ids) - start, len(script) - 1)]] = 1.0
        return ModelOutput(logits, torch.zeros(()), torch.zeros(()))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("tok")
    curated = write_curated_run(root / "curated", stdlib_documents(20))
    path = train_tokenizer(TokenizerConfig(run=RunConfig(dir=str(root / "tokenizer")), input=str(curated),
                                           vocab_size=512))
    return load_tokenizer(path)


def reasoning_replies(tokenizer: Any, cfg: EvalConfig, answer: Callable[[int, Problem], str]) -> Reply:
    """The reply `answer(i, problem)` to the i-th held-out problem's prompt (the window holds it whole)."""
    gen = Generator(nn.Identity(), tokenizer, CPU, 10_000)
    problems = generate_problems(cfg.reasoning_problems, cfg.reasoning_seed, cfg.reasoning_generators,
                                 cfg.reasoning_difficulties)
    script = {tuple(gen.encode(chatml(p.messages()) + ASSISTANT)): gen.encode(answer(i, p))
              for i, p in enumerate(problems)}
    assert len(script) == len(problems)

    def reply(window: list[int]) -> tuple[int, list[int]]:
        prompt = next(p for p in script if tuple(window[:len(p)]) == p)
        return len(prompt), script[prompt]

    return reply


def passkey_reader(tokenizer: Any, shift: int = 0) -> Reply:
    """Answers with the key it finds in the window (plus `shift`), nothing if the key is not in view."""
    gen = Generator(nn.Identity(), tokenizer, CPU, 10_000)
    question = gen.encode(QUESTION)

    def reply(window: list[int]) -> tuple[int, list[int]]:
        end = max(i for i in range(len(question), len(window) + 1) if window[i - len(question):i] == question)
        found = NEEDLE.search(tokenizer.decode(window[:end], skip_special_tokens=False))
        return end, gen.encode(f" {int(found.group(1)) + shift}") if found else []

    return reply


def right(i: int, p: Problem) -> str:
    return f"<think>\nadd them up\n</think>\nAnswer: {p.answer_text}"


def wrong(i: int, p: Problem) -> str:
    return f"<think>\nadd them up\n</think>\nAnswer: {format_number(p.answer + 1)}"


def malformed(i: int, p: Problem) -> str:
    return f"Answer: {p.answer_text}"  # no reasoning block


@pytest.mark.parametrize(("answer", "accuracy", "malformed_share"), [
    (right, 1.0, 0.0), (wrong, 0.0, 0.0), (malformed, 0.0, 1.0),
    (lambda i, p: (right, right, wrong, malformed)[i](i, p), 0.5, 0.25),
], ids=["right", "wrong", "malformed", "mixed"])
def test_reasoning_accuracy_scores_known_answers(tokenizer: Any, answer: Callable[[int, Problem], str],
                                                 accuracy: float, malformed_share: float) -> None:
    cfg = EvalConfig(reasoning_problems=4, max_new_tokens=64)
    model = ScriptedModel(tokenizer, reasoning_replies(tokenizer, cfg, answer))
    result = reasoning_accuracy(Generator(model, tokenizer, CPU, 10_000), cfg)
    assert result["problems"] == 4
    assert result["accuracy"] == accuracy and result["malformed"] == malformed_share


def test_reasoning_decoding_stops_at_the_stop_token_or_max_new_tokens(tokenizer: Any) -> None:
    cfg = EvalConfig(reasoning_problems=2, max_new_tokens=64)
    model = ScriptedModel(tokenizer, reasoning_replies(tokenizer, cfg, right))
    reasoning_accuracy(Generator(model, tokenizer, CPU, 10_000), cfg)
    problems = generate_problems(2, cfg.reasoning_seed, cfg.reasoning_generators, cfg.reasoning_difficulties)
    replies = [len(tokenizer.encode(right(i, p), add_special_tokens=False).ids) for i, p in enumerate(problems)]
    assert len(model.windows) == sum(n + 1 for n in replies)  # each reply, then the step that gives the stop
    cfg.max_new_tokens = 3
    model = ScriptedModel(tokenizer, reasoning_replies(tokenizer, cfg, right))
    result = reasoning_accuracy(Generator(model, tokenizer, CPU, 10_000), cfg)
    assert result["accuracy"] == 0.0 and result["malformed"] == 1.0  # the answer was cut off
    assert len(model.windows) == 2 * 3


def test_passkey_prompt_has_the_asked_length_and_the_key(tokenizer: Any) -> None:
    gen = Generator(nn.Identity(), tokenizer, CPU, 10_000)
    for length in (128, 256, 512):
        prompt, key = passkey_prompt(gen, length, random.Random(length))
        assert len(prompt) == length - 8  # room left for the 8 answer tokens
        text = tokenizer.decode(prompt, skip_special_tokens=False)
        assert NEEDLE.search(text).group(1) == key and text.endswith(QUESTION)


def test_passkey_accuracy_scores_a_reader_by_what_it_sees(tokenizer: Any) -> None:
    reader = ScriptedModel(tokenizer, passkey_reader(tokenizer))
    assert passkey_accuracy(Generator(reader, tokenizer, CPU, 128), [64, 128], 4, 0) == {"64": 1.0, "128": 1.0}
    assert max(reader.windows) > 120  # the long prompt was read whole
    liar = ScriptedModel(tokenizer, passkey_reader(tokenizer, shift=1))
    assert passkey_accuracy(Generator(liar, tokenizer, CPU, 128), [64, 128], 4, 0) == {"64": 0.0, "128": 0.0}
    # a 64-token context on 128-token prompts: the reader misses the keys hidden before its window
    short = ScriptedModel(tokenizer, passkey_reader(tokenizer))
    found = passkey_accuracy(Generator(short, tokenizer, CPU, 64), [128], 4, 0)
    assert found["128"] < 1.0 and max(short.windows) == 64


def test_run_evals_reports_a_perfect_model_perfectly(tokenizer: Any) -> None:
    cfg = EvalConfig(reasoning_problems=3, max_new_tokens=64, passkey_trials=2)
    reasoning, passkey = reasoning_replies(tokenizer, cfg, right), passkey_reader(tokenizer)

    def reply(window: list[int]) -> tuple[int, list[int]]:
        text = tokenizer.decode(window, skip_special_tokens=False)
        return passkey(window) if QUESTION in text else reasoning(window)

    model = ScriptedModel(tokenizer, reply).train()
    val = {"val/loss": 2.0, "val/loss/web": 3.0}
    result = run_evals(model, tokenizer, CPU, cfg, 128, [64, 128], val)
    assert result["reasoning"]["accuracy"] == 1.0 and result["reasoning"]["problems"] == 3
    assert result["passkey"] == {"64": 1.0, "128": 1.0}
    assert result["perplexity"] == {"ppl": math.exp(2.0), "ppl/web": math.exp(3.0)} and result["val_loss"] == val
    assert model.training  # evaluated in eval mode, handed back as it came

