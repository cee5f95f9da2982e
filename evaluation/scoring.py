"""A causal LM as evaluations need it: log-likelihoods of continuations, and greedy generations.

Log-likelihood requests are encoded as lm-evaluation-harness encodes them (trailing whitespace of the context moves
to the continuation; the context+continuation string is tokenized whole and the continuation is what follows
the context's tokens; an empty context is the end-of-text token), then truncated on the left to the model's
context. Requests whose model input is the same token sequence, or a prefix of another request's input,
share one forward row: the lettered choices of an MC task (" A", " B", ...) are one row, and so is a short
continuation that is the start of a longer one. Rows are sorted by length and right-padded, which a causal
model cannot see.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

Logits = Callable[[torch.Tensor], torch.Tensor]  # tokens [batch, seq] -> logits [batch, seq, vocab]


class Codec(Protocol):
    """Text <-> token ids, without special tokens added (what the tokenizer of a release does)."""

    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class TokenizerCodec:
    """A `tokenizers.Tokenizer` (the tokenizer.json of a run or release) as a `Codec`."""

    def __init__(self, tokenizer, eot_token: str):
        self.tok = tokenizer
        eot = tokenizer.token_to_id(eot_token)
        if eot is None:
            raise ValueError(f"the tokenizer has no {eot_token!r} token")
        self.eot_id = eot

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


@dataclass(frozen=True)
class Loglikelihood:
    logprob: float  # sum over the continuation's tokens
    greedy: bool  # every continuation token is the argmax
    tokens: int


def encode_pair(codec: Codec, context: str, continuation: str) -> tuple[list[int], list[int]]:
    if not context:
        return [codec.eot_id], codec.encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = codec.encode(context + continuation)
    head = codec.encode(context)
    return head, whole[len(head):]


class Progress:
    """A line on stderr: rewritten as work advances on a terminal, written once when done elsewhere (logs)."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled and total > 0
        self.live = sys.stderr.isatty()
        self.started = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        finished = self.done >= self.total
        if self.enabled and (self.live or finished):
            rate = self.done / max(1e-9, time.monotonic() - self.started)
            print(f"\r  {self.label}: {self.done}/{self.total} ({rate:.1f}/s)", end="\n" if finished else "",
                  file=sys.stderr, flush=True)


def rows_for(inputs: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """Distinct forward rows and, per input, its row: an input that is a prefix of another is read from it
    (causal attention: the longer row's first positions are the shorter input's). In lexicographic order an
    input's extensions follow it directly, so comparing neighbours finds every prefix."""
    order = sorted(range(len(inputs)), key=lambda i: inputs[i])
    host: dict[int, int] = {}
    for pos in range(len(order) - 1, -1, -1):
        i = order[pos]
        nxt = order[pos + 1] if pos + 1 < len(order) else None
        if nxt is not None and inputs[nxt][:len(inputs[i])] == inputs[i]:
            host[i] = host[nxt]
        else:
            host[i] = i
    rows = sorted(set(host.values()), key=lambda i: (-len(inputs[i]), inputs[i]))
    index = {i: r for r, i in enumerate(rows)}
    return [inputs[i] for i in rows], [index[host[i]] for i in range(len(inputs))]


class Unencodable(ValueError):
    """Request `index`'s continuation encodes to no token, or to tokens that do not decode back to it: the
    tokenizer cannot represent the choice, and its score would be that of some other text."""

    def __init__(self, index: int, continuation: str, why: str) -> None:
        super().__init__(f"continuation {continuation!r} {why}")
        self.index, self.continuation, self.why = index, continuation, why


@torch.no_grad()
def loglikelihoods(logits: Logits, codec: Codec, requests: Sequence[Request], max_len: int, batch_size: int,
                   device: torch.device, progress: Progress | None = None) -> list[Loglikelihood]:
    encoded = [encode_pair(codec, r.context, r.continuation) for r in requests]
    checked: set[str] = set()  # choices repeat across instances (MC letters): each distinct one is checked once
    for i, (r, (_, cont)) in enumerate(zip(requests, encoded, strict=True)):
        if not cont:
            raise Unencodable(i, r.continuation, "encodes to no token after its context")
        if r.continuation not in checked:
            if codec.decode(codec.encode(r.continuation)) != r.continuation:
                raise Unencodable(i, r.continuation, "does not survive encoding (the tokenizer cannot represent it)")
            checked.add(r.continuation)
    inputs = [tuple((ctx + cont)[-(max_len + 1):][:-1]) for ctx, cont in encoded]
    rows, row_of = rows_for(inputs)
    by_row: dict[int, list[int]] = {}
    for i, row_index in enumerate(row_of):
        by_row.setdefault(row_index, []).append(i)
    out: list[Loglikelihood | None] = [None] * len(requests)
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = len(batch[0])
        tokens = torch.zeros((len(batch), width), dtype=torch.long)
        for b, row in enumerate(batch):
            tokens[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        scores = logits(tokens.to(device))
        for b in range(len(batch)):
            hosted = by_row[start + b]
            lo = min(len(inputs[i]) - len(encoded[i][1]) for i in hosted)  # only the scored positions
            logprobs = torch.log_softmax(scores[b, lo:len(batch[b])].float(), dim=-1).cpu()
            for i in hosted:
                cont = encoded[i][1]
                n, end = len(cont), len(inputs[i]) - lo
                lp = logprobs[end - n:end]
                target = torch.tensor(cont, dtype=torch.long)
                out[i] = Loglikelihood(float(lp.gather(1, target[:, None]).sum()),
                                       bool((lp.argmax(-1) == target).all()), n)
        if progress:
            progress.advance(sum(len(by_row[start + b]) for b in range(len(batch))))
    return [o for o in out if o is not None]


@torch.no_grad()
def greedy_generate(logits: Logits, codec: Codec, context: str, max_len: int, max_new_tokens: int,
                    stop: Sequence[str], device: torch.device) -> str:
    """Greedy continuation of `context`, cut before the first stop string (or the end-of-text token); the
    context is truncated on the left so that it and the new tokens fit the model's context."""
    ids = codec.encode(context)[-max(1, max_len - max_new_tokens):]
    new: list[int] = []
    text = ""
    for _ in range(max_new_tokens):
        window = torch.tensor([(ids + new)[-max_len:]], dtype=torch.long, device=device)
        next_id = int(logits(window)[0, -1].argmax())
        if next_id == codec.eot_id:
            break
        new.append(next_id)
        text = codec.decode(new)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            return text[:cut]
    return text
