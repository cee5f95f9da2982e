"""Evaluations of a checkpoint: held-out perplexity per source, verified reasoning accuracy, passkey.

- Perplexity: exp of the trainer's held-out cross-entropy per source (`Trainer.evaluate`).
- Reasoning: held-out generated problems (seeds the training data never used), greedy decoding from the
  ChatML prompt, the answer checked by the synthetic-data verifier.
- Passkey retrieval: a 5-digit key hidden at a random depth in filler text of a given token length;
  correct when greedy decoding reproduces it. Run at the parent's and the new context length.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
from torch import nn

from data_pipeline.synthetic.problems import chatml, generate_problems
from evaluation.verify import verify
from midtrain.config import EvalConfig

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
ASSISTANT = "<|im_start|>assistant\n"
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")  # the end of a chat turn, the end of a document


class Generator:
    """Greedy decoding with our model and the dataset's tokenizer. ChatML and <think> markers in prompts
    are their special tokens, as in chat data tokenized with `special_tokens_in_text: true`."""

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device, max_len: int):
        self.model = model
        self.tok = tokenizer
        self.tok.encode_special_tokens = False
        self.device = device
        self.max_len = max_len
        self.stop_ids = {i for i in map(tokenizer.token_to_id, STOP_TOKENS) if i is not None}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    @torch.no_grad()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> str:
        """The continuation of `prompt_ids` up to a stop token (not included) or `max_new_tokens`."""
        ids = list(prompt_ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            window = torch.tensor([ids[-self.max_len:]], device=self.device)
            next_id = int(self.model(window).logits[0, -1].argmax())
            if next_id in self.stop_ids:
                break
            ids.append(next_id)
            out.append(next_id)
        return self.tok.decode(out, skip_special_tokens=False)


def reasoning_accuracy(gen: Generator, cfg: EvalConfig) -> dict[str, Any]:
    problems = generate_problems(cfg.reasoning_problems, cfg.reasoning_seed, cfg.reasoning_generators,
                                 cfg.reasoning_difficulties)
    correct, malformed = 0, 0
    for problem in problems:
        prompt = chatml(problem.messages()) + ASSISTANT
        answer = gen.greedy(gen.encode(prompt), cfg.max_new_tokens)
        verdict = verify(answer, problem.answer, problem.unit)
        correct += verdict.correct
        malformed += verdict.status == "malformed"
    n = max(1, len(problems))
    return {"problems": len(problems), "accuracy": correct / n, "malformed": malformed / n,
            "generators": cfg.reasoning_generators, "difficulties": cfg.reasoning_difficulties}


def passkey_prompt(gen: Generator, length: int, rng: random.Random) -> tuple[list[int], str]:
    """A prompt of about `length` tokens with the key at a random depth."""
    key = f"{rng.randrange(10_000, 100_000)}"
    needle = gen.encode(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    question = gen.encode("What is the pass key? The pass key is")
    filler = gen.encode(FILLER)
    budget = max(0, length - len(needle) - len(question) - 8)
    body = (filler * (budget // len(filler) + 1))[:budget]
    depth = rng.randrange(0, budget + 1)
    return body[:depth] + needle + body[depth:] + question, key


def passkey_accuracy(gen: Generator, lengths: list[int], trials: int, seed: int) -> dict[str, float]:
    result = {}
    for length in lengths:
        rng = random.Random(seed + length)
        hits = 0
        for _ in range(trials):
            prompt, key = passkey_prompt(gen, length, rng)
            hits += gen.greedy(prompt, 8).strip().startswith(key)
        result[str(length)] = hits / max(1, trials)
    return result


def perplexities(val_losses: dict[str, float]) -> dict[str, float]:
    return {key.replace("val/loss", "ppl"): math.exp(value) for key, value in val_losses.items()}


def run_evals(model: nn.Module, tokenizer: Any, device: torch.device, cfg: EvalConfig, max_len: int,
              lengths: list[int], val_losses: dict[str, float]) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    gen = Generator(model, tokenizer, device, max_len)
    result = {"perplexity": perplexities(val_losses), "val_loss": val_losses,
              "reasoning": reasoning_accuracy(gen, cfg) if cfg.reasoning_problems else None,
              "passkey": passkey_accuracy(gen, lengths, cfg.passkey_trials, cfg.reasoning_seed)
              if cfg.passkey_trials else None}
    model.train(was_training)
    return result
