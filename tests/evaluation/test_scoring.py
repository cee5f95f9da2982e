"""Log-likelihood requests as lm-eval builds them, shared forward rows, greedy stops, answer checks."""

from __future__ import annotations

import pytest
import torch

from evaluation.answers import gsm8k_answer, gsm8k_correct, math_verify_correct
from evaluation.scoring import Request, Unencodable, encode_pair, greedy_generate, loglikelihoods, rows_for


class CharCodec:
    """One token per character (ids 1..), end-of-text 0: what went where is visible in the ids."""

    eot_id = 0

    def encode(self, text):
        return [ord(c) - 31 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 31) for i in ids)


class BigramModel(torch.nn.Module):
    """Logits that depend on the previous token only (a causal model a test can reason about)."""

    def __init__(self, vocab=100):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(vocab, vocab, generator=g)
        self.calls = []

    def forward(self, tokens):
        self.calls.append(tuple(tokens.shape))
        return self.table[tokens]


def test_trailing_whitespace_moves_to_the_continuation_and_empty_context_is_eot():
    codec = CharCodec()
    assert encode_pair(codec, "Answer: ", "B") == (codec.encode("Answer:"), codec.encode(" B"))
    assert encode_pair(codec, "Q\n", "x") == (codec.encode("Q"), codec.encode("\nx"))
    assert encode_pair(codec, "", "abc") == ([0], codec.encode("abc"))


def test_rows_share_identical_inputs_and_prefixes():
    inputs = [(1, 2, 3), (1, 2), (1, 2, 3), (4,), (1, 2, 3, 5), (4, 6), (7,)]
    rows, row_of = rows_for(inputs)
    assert rows == [(1, 2, 3, 5), (4, 6), (7,)]  # longest first
    assert row_of == [0, 0, 0, 1, 0, 1, 2]


def test_batched_shared_rows_equal_one_request_at_a_time():
    codec, model = CharCodec(), BigramModel()
    requests = [Request("Question: 2+2?\nAnswer:", f" {c}") for c in "ABCD"] + [
        Request("Q: sky?\nA:", " blue"), Request("Q: sky?\nA:", " blue sky"), Request("", "start"),
        Request("x" * 40, " long tail")]  # truncated on the left to max_len
    batched = loglikelihoods(model, codec, requests, max_len=20, batch_size=3, device=torch.device("cpu"))
    # 8 requests, 4 rows (the letters share one, " blue" is read from " blue sky"), longest first, padded
    assert model.calls == [(3, 20), (1, 5)]
    for request, got in zip(requests, batched, strict=True):
        ctx, cont = encode_pair(codec, request.context, request.continuation)
        seq = (ctx + cont)[-21:]
        logp = torch.log_softmax(model.table[torch.tensor(seq[:-1])], -1)
        expect = sum(float(logp[i, seq[i + 1]]) for i in range(len(seq) - 1 - len(cont), len(seq) - 1))
        assert got.logprob == pytest.approx(expect, abs=1e-5) and got.tokens == len(cont)


def test_a_continuation_without_tokens_is_refused():
    with pytest.raises(Unencodable, match="encodes to no token"):
        loglikelihoods(BigramModel(), CharCodec(), [Request("Q:", "")], 16, 4, torch.device("cpu"))


def test_greedy_generation_stops_at_a_stop_string_or_eot():
    codec, model = CharCodec(), BigramModel()
    full = greedy_generate(model, codec, "Q", 32, 12, (), torch.device("cpu"))
    assert 0 < len(full) <= 12
    stop = full[3:5]
    cut = greedy_generate(model, codec, "Q", 32, 12, (stop,), torch.device("cpu"))
    assert cut == full[:full.find(stop)]


@pytest.mark.parametrize(("generation", "answer"), [
    ("Janet sells 9 eggs. She makes 9 * 2 = $18. So the answer is 18.", "18"),
    ("So the answer is $1,250.", "1250"),
    ("The total is 7 and then 12", "12"),
    ("no number here", None),
])
def test_gsm8k_answer_extraction(generation, answer):
    assert gsm8k_answer(generation) == answer


def test_answer_checks():
    assert gsm8k_correct("So the answer is 18.", "18") and not gsm8k_correct("So the answer is 17.", "18")
    assert gsm8k_correct("So the answer is 0.50", "0.5")
    solution = r"so the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}.$"
    assert math_verify_correct(r"The final answer is $(3, \frac{\pi}{2})$.", solution)
    assert not math_verify_correct(r"The final answer is $(3, \pi)$.", solution)
    assert not math_verify_correct("I do not know", solution)


def test_a_choice_the_tokenizer_cannot_represent_names_the_task_instance_and_file(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from core.config import ConfigError
    from evaluation.config import TaskConfig
    from evaluation.runner import run_task
    from evaluation.scoring import TokenizerCodec

    letters = "abcdefghijklmnopqrstuvwxyz?:"
    vocab = {"[UNK]": 0, "<|endoftext|>": 1, " ": 2, **{c: i + 3 for i, c in enumerate(letters)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))  # no byte fallback
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "isolated")
    tokenizer.decoder = decoders.Fuse()
    codec = TokenizerCodec(tokenizer, "<|endoftext|>")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": "ok", "query": "which?", "choices": ["yes", "no"], "gold": 0}\n'
                     '{"id": "kanji", "query": "which?", "choices": ["yes", "\u6f22\u5b57"], "gold": 0}\n')
    with pytest.raises(ConfigError, match=rf"task mine: instance kanji of {tasks}: choice ' \u6f22\u5b57' does not "
                                          r"survive encoding \(the tokenizer cannot represent it\)"):
        run_task(TaskConfig(name="mine", path=str(tasks)), BigramModel(), codec, 32, 4, torch.device("cpu"),
                 show=False)
    tasks.write_text('{"id": "ok", "query": "which?", "choices": ["yes", "no"], "gold": 0}\n')
    result = run_task(TaskConfig(name="mine", path=str(tasks)), BigramModel(), codec, 32, 4, torch.device("cpu"),
                      show=False)
    assert result.n == 1 and result.chance == 0.5
