"""Train a byte-level BPE tokenizer on a curated run and save it for `transformers` and for tokenization.

Output (in run.dir): `tokenizer.json` (the `tokenizers` model), `tokenizer_config.json` and
`special_tokens_map.json` (what `AutoTokenizer.from_pretrained(dir)` reads, offline), and
`manifest.json` (schema atom.tokenizer/1: the tokenizer's sha256, its special token ids, the training
text it saw and the config). Byte-level BPE with no normalizer decodes every string back exactly.
Training reads documents in the curated run's fixed order, so the same input and config give the same
`tokenizer.json` bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from core.config import ConfigError, ConfigModel, StageConfig
from core.manifest import code_version, file_record, recorded_config, sha256_file
from core.rundir import RunDir, recorded_inputs, write_atomic, write_json
from core.stage import Stage
from data_pipeline.tokens.curated import open_curated

SCHEMA = "atom.tokenizer/1"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE)
BYTE_ALPHABET = 256

# The split rule of GPT-4/Llama-3/OLMo-2 tokenizers: contractions, letters, numbers in groups of at most
# three digits, punctuation runs, newlines and other whitespace are pre-tokens that merges never cross.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class SpecialTokens(ConfigModel):
    """Special tokens get the lowest ids, in this order: eos, pad, then `extra`."""

    eos: str = "<|endoftext|>"
    pad: str = "<|pad|>"
    extra: list[str] = Field(default_factory=lambda: ["<|im_start|>", "<|im_end|>", "<think>", "</think>"])

    def ordered(self) -> list[str]:
        return [self.eos, self.pad, *self.extra]


class TokenizerConfig(StageConfig):
    input: str  # a curated run directory (contract: curated/*.parquet + manifest.json)
    vocab_size: int = Field(32768, ge=BYTE_ALPHABET + 2)
    min_frequency: int = Field(2, ge=1)
    max_train_chars: int | None = Field(None, ge=1)  # stop feeding text after this many characters
    special_tokens: SpecialTokens = Field(default_factory=SpecialTokens)
    chat_template: bool = True  # ChatML (<|im_start|>role ... <|im_end|>) for mid-training
    model_max_length: int = Field(4096, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        tokens = self.special_tokens.ordered()
        if len(set(tokens)) != len(tokens) or not all(tokens):
            raise ValueError(f"special tokens must be distinct and non-empty, got {tokens}")
        if self.vocab_size < BYTE_ALPHABET + len(tokens):
            raise ValueError(
                f"vocab_size {self.vocab_size} is below the 256 byte tokens + {len(tokens)} special tokens"
            )
        return self


def build_tokenizer():
    """An untrained byte-level BPE tokenizer: split rule, byte mapping, byte decoder, no normalizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def plan(config: TokenizerConfig) -> list[str]:
    return [
        f"read curated documents from {config.input}",
        f"train byte-level BPE, vocab {config.vocab_size}, min_frequency {config.min_frequency}"
        + (f", first {config.max_train_chars} characters" if config.max_train_chars else ""),
        f"special tokens {config.special_tokens.ordered()}",
        f"write {', '.join(FILES)} and manifest.json to {config.run.dir}",
    ]


def _texts(curated, limit: int | None, seen: dict[str, Any]):
    chars = 0
    for _, batch in curated.batches(1024, columns=("text", "source")):
        for text, source in zip(batch.column("text").to_pylist(), batch.column("source").to_pylist(),
                                strict=True):
            if limit is not None and chars >= limit:
                return
            if limit is not None and chars + len(text) > limit:
                text = text[: limit - chars]
            chars += len(text)
            seen["docs"] += 1
            seen["chars"] += len(text)
            seen["sources"][source] = seen["sources"].get(source, 0) + 1
            yield text


def tokenizer_files(config: TokenizerConfig, special: list[str]) -> dict[str, Any]:
    sp = config.special_tokens
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": sp.eos,
        "pad_token": sp.pad,
        "bos_token": None,
        "unk_token": None,
        "additional_special_tokens": list(sp.extra),
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "model_max_length": config.model_max_length,
    }
    if config.chat_template:
        tok_config["chat_template"] = CHATML_TEMPLATE
    special_map = {"eos_token": sp.eos, "pad_token": sp.pad, "additional_special_tokens": list(sp.extra)}
    return {TOKENIZER_CONFIG_FILE: tok_config, SPECIAL_TOKENS_FILE: special_map}


def stage_inputs(config: TokenizerConfig) -> dict[str, str]:
    """The curated run the tokenizer is trained on."""
    return {"input": config.input}


def run(config: TokenizerConfig) -> Path:
    from tokenizers import pre_tokenizers, trainers

    curated = open_curated(config.input)  # contract errors before anything is written
    special = config.special_tokens.ordered()
    rundir = RunDir.claim(config.run.dir, "tokenizer", config, overwrite=config.run.overwrite,
                          inputs=stage_inputs(config))
    log = rundir.logger()
    tokenizer = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen: dict[str, Any] = {"docs": 0, "chars": 0, "sources": {}}
    tokenizer.train_from_iterator(_texts(curated, config.max_train_chars, seen), trainer)
    for i, token in enumerate(special):
        if tokenizer.token_to_id(token) != i:
            raise RuntimeError(f"special token {token!r} did not get id {i}")

    out = rundir.path
    write_atomic(out / TOKENIZER_FILE, tokenizer.to_str(pretty=True) + "\n")
    for name, obj in tokenizer_files(config, special).items():
        write_json(out / name, obj)
    manifest = {
        "schema": SCHEMA,
        "code_version": code_version(),
        "config": recorded_config(config),
        "tokenizer_sha256": sha256_file(out / TOKENIZER_FILE),
        "vocab_size": tokenizer.get_vocab_size(),
        "special_tokens": {token: i for i, token in enumerate(special)},
        "eos_id": 0,
        "pad_id": 1,
        "training_data": {
            "curation_manifest_sha256": curated.manifest_sha256,
            "docs": seen["docs"],
            "chars": seen["chars"],
            "sources": dict(sorted(seen["sources"].items())),
        },
        "files": [file_record(out / name, out) for name in FILES],
        "inputs": recorded_inputs(out),
    }
    write_json(out / "manifest.json", manifest)
    log.info("tokenizer: vocab %d from %d documents (%d chars) -> %s",
             manifest["vocab_size"], seen["docs"], seen["chars"], out)
    print_summary(out, manifest)
    return out


def print_summary(out: Path, manifest: dict[str, Any]) -> None:
    """What the stage wrote, on the console: a successful run would otherwise be silent."""
    data = manifest["training_data"]
    print(f"atom tokenizer: {out}")
    print(f"  vocab: {manifest['vocab_size']:,} tokens ({len(manifest['special_tokens'])} special)")
    print(f"  trained on: {data['docs']:,} documents, {data['chars']:,} characters of "
          f"{manifest['config']['input']}")
    print("  documents per source: " + ", ".join(f"{k}={v:,}" for k, v in data["sources"].items()))
    print(f"  files: {', '.join(FILES)}, manifest.json")


def eos_token(path: str | Path) -> str:
    """The end-of-text token a tokenizer directory's tokenizer_config.json names."""
    file = Path(path) / TOKENIZER_CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{path}: no {TOKENIZER_CONFIG_FILE} (train one with `atom tokenizer`)")
    return json.loads(file.read_text(encoding="utf-8"))["eos_token"]


def load_tokenizer(path: str | Path):
    """The `tokenizers.Tokenizer` in a tokenizer directory (or a tokenizer.json path)."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path}: no {TOKENIZER_FILE} (train one with `atom tokenizer`)")
    return Tokenizer.from_file(str(file))


def read_special(path: str | Path) -> dict[str, Any]:
    """eos/pad tokens of a tokenizer directory, from its tokenizer_config.json."""
    path = Path(path)
    cfg = path / TOKENIZER_CONFIG_FILE
    if not cfg.is_file():
        raise ConfigError(f"{path}: no {TOKENIZER_CONFIG_FILE}")
    return json.loads(cfg.read_text(encoding="utf-8"))


STAGE = Stage(
    name="tokenizer",
    summary="train a byte-level BPE tokenizer on a curated run",
    config_cls=TokenizerConfig,
    plan=plan,
    run=run,
    inputs=stage_inputs,
)
