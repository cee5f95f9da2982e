"""Tokenizer training: loads offline with AutoTokenizer, encodes like `tokenizers`, round-trips exactly."""

from __future__ import annotations

import json

import pytest

from core.config import ConfigError, RunConfig, load_config
from data_pipeline.tokenizer.train import TokenizerConfig, load_tokenizer, run
from tests.data_pipeline.tokens_fixtures import built, hashes, write_curated_run

SAMPLES = [
    "Return the number of items in a container.",
    "  leading spaces,\ttabs\tand\r\nCRLF line ends\n\n\n",
    "Unicode: naïve café, Straße, 日本語のテキスト, emoji 🙂 and math ∑ x² ≤ 1",
    "def f(x):\n    return x ** 2  # comment\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>2+2=4</think>4<|im_end|>",
    "",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return built(tmp_path_factory)


def test_files_and_special_token_ids(data):
    tok_dir = data["tokenizer"]
    manifest = json.loads((tok_dir / "manifest.json").read_text())
    assert manifest["schema"] == "atom.tokenizer/1"
    assert manifest["special_tokens"] == {"<|endoftext|>": 0, "<|pad|>": 1, "<|im_start|>": 2, "<|im_end|>": 3,
                                          "<think>": 4, "</think>": 5}
    assert manifest["vocab_size"] == 1024
    assert manifest["training_data"]["docs"] > 200
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / name).is_file()


def test_autotokenizer_offline_matches_tokenizers_and_round_trips(data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(data["tokenizer"]))
    raw = load_tokenizer(data["tokenizer"])
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 0
    assert hf.pad_token == "<|pad|>" and hf.pad_token_id == 1
    for text in SAMPLES:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert hf.decode(ids) == text
        assert raw.decode(ids, skip_special_tokens=False) == text
    # chat markers are single tokens, and the ChatML template is there for mid-training
    assert hf("<think>", add_special_tokens=False)["input_ids"] == [4]
    chat = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_training_is_deterministic(data, tmp_path):
    config = TokenizerConfig(run=RunConfig(dir=str(tmp_path / "again")), input=str(data["curated"]), vocab_size=1024)
    again = run(config)
    first = hashes(data["tokenizer"])
    assert hashes(again) == first
    assert set(first) >= {"tokenizer.json", "tokenizer_config.json", "manifest.json"}


def test_vocab_too_small_is_a_config_error(tmp_path):
    cfg = tmp_path / "tok.yaml"
    cfg.write_text(f"run: {{dir: {tmp_path / 'out'}}}\ninput: x\nvocab_size: 100\n")
    with pytest.raises(ConfigError, match="vocab_size"):
        load_config(TokenizerConfig, cfg)
    assert not (tmp_path / "out").exists()


def test_bad_curated_input_writes_nothing(tmp_path):
    from tests.data_pipeline.tokens_fixtures import COLUMNS, copy_docs

    curated = write_curated_run(tmp_path / "cur", copy_docs()[:20], n_files=1,
                                columns=tuple(c for c in COLUMNS if c != "license"))
    with pytest.raises(ConfigError, match="missing column.*license"):
        run(TokenizerConfig(run=RunConfig(dir=str(tmp_path / "out")), input=str(curated), vocab_size=512))
    assert not (tmp_path / "out").exists()
