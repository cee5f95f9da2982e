"""Encoding documents with the dataset's tokenizer: the one definition tokenize's tasks, the audits and the
release share (which ids a document becomes, where the end-of-document token goes)."""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ConfigError
from data_pipeline.tokenizer.train import load_tokenizer, read_special
from data_pipeline.tokens import format as fmt


def open_tokenizer(path: str | Path, dtype: str, special_tokens_in_text: bool = False
                   ) -> tuple[Any, dict[str, Any], str]:
    """The tokenizer for encoding documents (special-token strings inside text stay plain text unless
    `special_tokens_in_text`)."""
    tokenizer = load_tokenizer(path)
    special = read_special(path)
    eos = special.get("eos_token")
    eos_id = tokenizer.token_to_id(eos) if eos else None
    if eos_id is None:
        raise ConfigError(f"{path}: tokenizer has no end-of-document token (eos_token {eos!r})")
    resolved = fmt.choose_dtype(tokenizer.get_vocab_size(), dtype)
    # A document that contains the text "<|endoftext|>" must not end early: encode it as bytes.
    tokenizer.encode_special_tokens = not special_tokens_in_text
    info = {
        "eos_token": eos,
        "eos_id": eos_id,
        "pad_token": special.get("pad_token"),
        "pad_id": tokenizer.token_to_id(special["pad_token"]) if special.get("pad_token") else None,
        "vocab_size": tokenizer.get_vocab_size(),
    }
    return tokenizer, info, resolved


def encode_documents(tokenizer, texts: list[str], eos_id: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of `texts` back to back, EOS after each, and each document's length (EOS included)."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    ids = [e.ids for e in encode(texts, add_special_tokens=False)]
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lens.sum()))
    return np.insert(flat, np.cumsum(lens), eos_id), lens + 1
