"""The pretraining data loader: fixed-length windows over memory-mapped token spans.

The corpus is a logical stream: the concatenation of `TokenSpan`s (token ranges of shard files, in the
mixture's order, from `data_pipeline.tokens.reader`). Window i covers stream tokens [i*L, i*L + L + 1):
inputs are its first L tokens and targets its last L, so every token is predicted once per epoch.
The order of windows is a permutation fixed by the seed; global batch b is windows order[b*B:(b+1)*B],
and rank r reads only its contiguous slice of that batch. The order therefore does not depend on the
number of ranks, and the loader's whole state is one integer: the number of global batches consumed.

Nothing is loaded whole: files are np.memmap'd (a bounded number open at a time) and only the bytes of
the requested windows are read, so memory stays flat as the corpus grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.tokens.reader import MemmapCache, TokenSpan


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor  # [rows, L] int64
    targets: torch.Tensor  # [rows, L] int64
    doc_ids: torch.Tensor | None  # [rows, L] int64: equal ids attend to each other; None without masking
    windows: np.ndarray  # [rows] global window indices, for the training manifest


def window_count(n_tokens: int, seq_len: int) -> int:
    """Windows [w*L, w*L+L+1) of a stream of `n_tokens`: consecutive windows share one token."""
    return (n_tokens - 1) // seq_len


class WindowOrder:
    """Which windows each global batch reads: the training windows (all but the held-out ones) in a numpy
    PCG64 permutation seeded with [seed, epoch]; global batch b takes its slice of epoch b // per_epoch.

    The one definition of the order, used by the loader while training and by the release's lineage and
    audit when they recompute, from a training manifest's header, the tokens each step read."""

    def __init__(self, n_windows: int, global_batch: int, seed: int, held_out: np.ndarray | None = None):
        everything = np.arange(n_windows, dtype=np.int64)
        self.train_windows = everything if held_out is None else np.setdiff1d(everything, held_out)
        self.global_batch = global_batch
        self.seed = seed
        self.batches_per_epoch = len(self.train_windows) // global_batch
        if self.batches_per_epoch < 1:
            raise ValueError(f"{len(self.train_windows)} training sequences cannot fill one global batch of "
                             f"{global_batch}")
        self._epoch = -1
        self._order: np.ndarray | None = None

    @classmethod
    def from_header(cls, header: dict) -> WindowOrder:
        """The order a training manifest's header (train_tokens.jsonl line 1) records."""
        stream = header["stream"]
        return cls(window_count(int(stream["n_tokens"]), int(header["seq_len"])), int(header["global_batch"]),
                   int(header["seed"]), np.asarray(stream.get("held_out") or [], dtype=np.int64))

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = self.train_windows[rng.permutation(len(self.train_windows))]
            self._epoch = epoch
        assert self._order is not None
        return self._order

    def global_windows(self, batch: int) -> np.ndarray:
        """Window indices of global batch `batch` (all ranks)."""
        epoch, b = divmod(batch, self.batches_per_epoch)
        return self.epoch_order(epoch)[b * self.global_batch:(b + 1) * self.global_batch]


class TokenWindows:
    """Random access to window i of the stream: its L+1 tokens and the document id of each token."""

    def __init__(self, spans: list[TokenSpan], seq_len: int):
        if not spans:
            raise ValueError("no token spans: the dataset or mixture is empty")
        self.spans = spans
        self.seq_len = seq_len
        self.starts = np.cumsum([0] + [s.n_tokens for s in spans], dtype=np.int64)
        self.n_tokens = int(self.starts[-1])
        self.n_windows = window_count(self.n_tokens, seq_len)
        if self.n_windows < 1:
            raise ValueError(f"the stream has {self.n_tokens} tokens, fewer than one sequence of {seq_len + 1}")
        self._cache = MemmapCache()

    def read(self, window: int, with_docs: bool) -> tuple[np.ndarray, np.ndarray | None]:
        lo = window * self.seq_len
        hi = lo + self.seq_len + 1
        tokens = np.empty(hi - lo, dtype=np.int64)
        docs = np.empty(hi - lo, dtype=np.int64) if with_docs else None
        k = int(np.searchsorted(self.starts, lo, side="right")) - 1
        pos = lo
        while pos < hi:
            span = self.spans[k]
            a = pos - int(self.starts[k]) + span.start
            b = min(span.end, a + (hi - pos))
            out = slice(pos - lo, pos - lo + (b - a))
            tokens[out] = self._cache.get(span.path, span.dtype)[a:b]
            if docs is not None:
                docs[out] = self._doc_ids(k, a, b)
            pos += b - a
            k += 1
        return tokens, docs

    def _doc_ids(self, k: int, a: int, b: int) -> np.ndarray:
        """Document ids unique across the stream: (span number, document within the file)."""
        span = self.spans[k]
        if span.doc_index is None:
            return np.full(b - a, k << 32, dtype=np.int64)
        ends = self._cache.get(span.doc_index, "uint64")
        within = np.searchsorted(ends, np.arange(a, b, dtype=np.uint64), side="right").astype(np.int64)
        return (k << 32) + within


class DataLoader:
    """Yields this rank's part of each global batch, in a seed-fixed order independent of world size."""

    def __init__(self, windows: TokenWindows, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 document_masking: bool = False, held_out: np.ndarray | None = None):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        self.windows = windows
        self.global_batch = global_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.document_masking = document_masking
        self.order = WindowOrder(windows.n_windows, global_batch, seed, held_out)
        self.batches_consumed = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.order.batches_per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"batches_consumed": self.batches_consumed, "seed": self.seed, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed or state["global_batch"] != self.global_batch:
            raise ValueError(f"data order changed: checkpoint has seed={state['seed']}, global_batch="
                             f"{state['global_batch']}; config has seed={self.seed}, global_batch={self.global_batch}")
        self.batches_consumed = int(state["batches_consumed"])

    def global_windows(self, batch: int) -> np.ndarray:
        """Window indices of global batch `batch` (all ranks)."""
        return self.order.global_windows(batch)

    def next_batch(self) -> Batch:
        rows = self.global_batch // self.world_size
        mine = self.global_windows(self.batches_consumed)[self.rank * rows:(self.rank + 1) * rows]
        self.batches_consumed += 1
        tokens = np.empty((rows, self.windows.seq_len + 1), dtype=np.int64)
        docs = np.empty_like(tokens) if self.document_masking else None
        for i, w in enumerate(mine):
            window, window_docs = self.windows.read(int(w), self.document_masking)
            tokens[i] = window
            if docs is not None:
                assert window_docs is not None  # read with document masking gives the window's document ids
                docs[i] = window_docs
        rows_t = torch.from_numpy(tokens)
        doc_ids = torch.from_numpy(docs[:, :-1].copy()) if docs is not None else None
        return Batch(inputs=rows_t[:, :-1].contiguous(), targets=rows_t[:, 1:].contiguous(), doc_ids=doc_ids,
                     windows=mine)
