"""Training data as the trainer sees it: the token stream of a dataset or mixture, minus held-out documents.

`TrainingData` wraps `TokenWindows` with the held-out documents (`pretrain.held_out`: whole documents,
never trained on) and yields validation batches with, for every target, which held-out document (and so
which source) it belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from core.config import ConfigError
from core.manifest import sha256_file
from data_pipeline.tokens.format import MANIFEST
from data_pipeline.tokens.reader import TokenDataset, TokenMixture, open_tokens
from pretrain.checkpoint import TRAINER_STATE
from pretrain.config import DataConfig
from pretrain.data import TokenWindows
from pretrain.held_out import HeldOut, hold_out, parse_keys
from pretrain.model.config import MoEModelConfig
from pretrain.train_manifest import TRAIN_MANIFEST, read_train_manifest


@dataclass(frozen=True)
class ValBatch:
    tokens: torch.Tensor  # [rows, L+1]
    doc_ids: torch.Tensor | None  # [rows, L] for document masking
    scored: torch.Tensor  # [rows, L] index into `TrainingData.held_out.sources` per target, -1 if not scored


class TrainingData:
    def __init__(self, tokens: TokenDataset | TokenMixture, seq_len: int, val_sequences: int,
                 inherited: np.ndarray | None = None):
        self.tokens = tokens
        self.windows = TokenWindows(tokens.spans(), seq_len)
        tokenizer = tokens.manifest["tokenizer"]
        self.vocab_size: int = tokenizer["vocab_size"]
        self.tokenizer_sha256: str = tokenizer["sha256"]
        self.held_out: HeldOut = hold_out(tokens.occurrences(), seq_len, self.windows.n_windows, val_sequences,
                                          lambda token: tokens.locate(token).source, inherited)

    def tokenizer_dir(self) -> Path:
        """Where the stream's tokenizer files are (a dataset's, or a mixture's first dataset with one)."""
        roots = [self.tokens.root] + [d.root for d in getattr(self.tokens, "datasets", [])]
        for root in roots:
            if (root / "tokenizer").is_dir():
                return root / "tokenizer"
        raise FileNotFoundError(f"{self.tokens.root}: no tokenizer/ directory in the data")

    def unigram_loss(self, max_tokens: int = 20_000_000) -> float:
        """Cross-entropy (nats) of the scored held-out targets under the stream's unigram distribution
        (add-one smoothed, counted over the first `max_tokens` tokens): the bar a model must clear to have
        learnt anything beyond token frequencies."""
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
        targets = [self.windows.read(int(w), False)[0][1:][self.held_out.scored(int(w)) >= 0]
                   for w in self.held_out.eval_windows]
        return float(-log_p[np.concatenate(targets)].mean())

    def describe(self) -> dict[str, Any]:
        """What the training manifest records about the stream: enough to find every token again."""
        manifest = self.tokens.root / MANIFEST
        return {"path": str(self.tokens.root), "manifest_sha256": sha256_file(manifest),
                "schema": self.tokens.manifest["schema"], "n_tokens": self.windows.n_tokens,
                "tokenizer_sha256": self.tokenizer_sha256, **self.held_out.describe()}

    def val_batches(self, rank: int, world_size: int, batch: int, with_docs: bool) -> Iterator[ValBatch]:
        """This rank's share of the validation windows (strided), `batch` at a time. Every rank yields the
        same number of batches (a sharded model needs every rank in every forward): short ranks repeat a
        window with nothing scored."""
        windows = self.held_out.eval_windows
        per_rank = -(-len(windows) // world_size)
        mine = [int(w) for w in windows[rank::world_size]]
        padded = mine + [None] * (per_rank - len(mine))
        for i in range(0, per_rank, batch):
            rows = padded[i:i + batch]
            read = [self.windows.read(windows[0] if w is None else w, with_docs) for w in rows]
            scored = [np.full(self.windows.seq_len, -1) if w is None else self.held_out.scored(w) for w in rows]
            yield ValBatch(torch.from_numpy(np.stack([t for t, _ in read])),
                           torch.from_numpy(np.stack([cast(np.ndarray, d)[:-1] for _, d in read]))
                           if with_docs else None,
                           torch.from_numpy(np.stack(scored)))


def inherited_held_out(init_from: str | None) -> np.ndarray | None:
    """The documents held out by the run(s) behind checkpoint `init_from`: its run's, or for a checkpoint
    averaged from others (`soup_of` in its trainer state) the union of theirs."""
    return None if not init_from else _held_out_behind(Path(init_from).resolve(), 0)


def _held_out_behind(ckpt: Path, depth: int) -> np.ndarray:
    if depth > 16:
        raise ConfigError(f"init_from: checkpoint lineage deeper than 16 at {ckpt} (a cycle?)")
    ckpt = ckpt if (ckpt / TRAINER_STATE).is_file() else ckpt.parent  # init_from may name the dcp/ directory
    state = json.loads((ckpt / TRAINER_STATE).read_text()) if (ckpt / TRAINER_STATE).is_file() else {}
    if state.get("soup_of"):
        parts = [_held_out_behind(Path(p).resolve(), depth + 1) for p in state["soup_of"]]
        return np.unique(np.concatenate(parts)).astype(np.uint64)
    manifest = ckpt.parent.parent / TRAIN_MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"init_from: {manifest} does not exist (the training manifest of the run behind "
                          f"{ckpt}, naming the documents it held out)")
    header, _ = read_train_manifest(manifest)
    return parse_keys(header["stream"].get("held_out_keys") or [])


def open_training_data(cfg: DataConfig, model: MoEModelConfig, init_from: str | None = None) -> TrainingData:
    """The dataset or mixture at `cfg.path`, checked against the model (vocabulary and tokenizer). A run
    started from another run's checkpoint keeps that run's held-out documents out of training too."""
    path = Path(cfg.path)
    if not path.exists():
        raise ConfigError(f"data.path: {path} does not exist")
    data = TrainingData(open_tokens(path), cfg.seq_len, cfg.val_sequences, inherited_held_out(init_from))
    if data.vocab_size > model.vocab_size:
        raise ConfigError(f"data.path: the tokenizer of {path} has {data.vocab_size} tokens, more than "
                          f"model.vocab_size={model.vocab_size}")
    if cfg.tokenizer_sha256 and cfg.tokenizer_sha256 != data.tokenizer_sha256:
        raise ConfigError(f"data.tokenizer_sha256: {path} was tokenized with tokenizer {data.tokenizer_sha256}, "
                          f"not {cfg.tokenizer_sha256}")
    return data
