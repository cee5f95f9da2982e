"""Training data as the trainer sees it: the token stream of a dataset or mixture, minus a held-out set.

`TrainingData` wraps `TokenWindows` with the source of each span, picks `val_sequences` held-out windows
by seed (the same whatever the world size), and yields validation batches tagged with their source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.config import ConfigError
from data_pipeline.manifest import sha256_file
from data_pipeline.tokens.format import MANIFEST
from data_pipeline.tokens.reader import TokenDataset, TokenMixture, open_tokens
from pretrain.config import DataConfig
from pretrain.data import TokenWindows
from pretrain.model.config import MoEModelConfig

VAL_SEED_SALT = 0x7A11  # held-out windows are drawn from their own stream, apart from the training order


class TrainingData:
    def __init__(self, tokens: TokenDataset | TokenMixture, seq_len: int, val_sequences: int, seed: int):
        self.tokens = tokens
        self.windows = TokenWindows(tokens.spans(), seq_len)
        tokenizer = tokens.manifest["tokenizer"]
        self.vocab_size: int = tokenizer["vocab_size"]
        self.tokenizer_sha256: str = tokenizer["sha256"]
        if val_sequences >= self.windows.n_windows:
            raise ConfigError(f"data.val_sequences={val_sequences} leaves no training data "
                              f"({self.windows.n_windows} sequences in all)")
        rng = np.random.default_rng([seed, VAL_SEED_SALT])
        self.val_windows = np.sort(rng.choice(self.windows.n_windows, size=val_sequences, replace=False))
        self.val_sources = [tokens.locate(int(w) * seq_len).source for w in self.val_windows]

    def unigram_loss(self, max_tokens: int = 20_000_000) -> float:
        """Cross-entropy (nats) of the held-out targets under the stream's unigram distribution (add-one
        smoothed, counted over the first `max_tokens` tokens): the bar a model must clear to have learnt
        anything beyond token frequencies."""
        counts = np.ones(self.vocab_size, dtype=np.float64)
        seen = 0
        for span in self.windows.spans:
            take = min(span.n_tokens, max_tokens - seen)
            tokens = np.memmap(span.path, dtype=np.dtype(span.dtype), mode="r")[span.start:span.start + take]
            counts += np.bincount(tokens, minlength=self.vocab_size)[: self.vocab_size]
            seen += take
            if seen >= max_tokens:
                break
        log_p = np.log(counts / counts.sum())
        targets = np.concatenate([self.windows.read(int(w), False)[0][1:] for w in self.val_windows])
        return float(-log_p[targets].mean())

    def describe(self) -> dict[str, Any]:
        """What the training manifest records about the stream: enough to find every token again."""
        manifest = self.tokens.root / MANIFEST
        return {"path": str(self.tokens.root), "manifest_sha256": sha256_file(manifest),
                "schema": self.tokens.manifest["schema"], "n_tokens": self.windows.n_tokens,
                "tokenizer_sha256": self.tokenizer_sha256, "held_out": self.val_windows.tolist()}

    def val_batches(self, rank: int, world_size: int, batch: int,
                    with_docs: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[str]]]:
        """This rank's share of the held-out windows (strided), `batch` at a time, with their sources."""
        mine = list(zip(self.val_windows, self.val_sources, strict=True))[rank::world_size]
        for i in range(0, len(mine), batch):
            rows = [self.windows.read(int(w), with_docs) for w, _ in mine[i:i + batch]]
            tokens = torch.from_numpy(np.stack([t for t, _ in rows]))
            docs = torch.from_numpy(np.stack([d[:-1] for _, d in rows])) if with_docs else None
            yield tokens, docs, [source for _, source in mine[i:i + batch]]


def open_training_data(cfg: DataConfig, model: MoEModelConfig, seed: int) -> TrainingData:
    """The dataset or mixture at `cfg.path`, checked against the model (vocabulary and tokenizer)."""
    path = Path(cfg.path)
    if not path.exists():
        raise ConfigError(f"data.path: {path} does not exist")
    data = TrainingData(open_tokens(path), cfg.seq_len, cfg.val_sequences, seed)
    if data.vocab_size > model.vocab_size:
        raise ConfigError(f"data.path: the tokenizer of {path} has {data.vocab_size} tokens, more than "
                          f"model.vocab_size={model.vocab_size}")
    if cfg.tokenizer_sha256 and cfg.tokenizer_sha256 != data.tokenizer_sha256:
        raise ConfigError(f"data.tokenizer_sha256: {path} was tokenized with tokenizer {data.tokenizer_sha256}, "
                          f"not {cfg.tokenizer_sha256}")
    return data
