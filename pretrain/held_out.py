"""Held-out documents: whole documents kept out of training wherever they occur, scored on their own tokens.

Held-out windows drawn from the training stream would leak: a mixture repeats documents, and a window
shares its edges with its neighbours. So validation holds out documents, not windows. Documents are
ranked by their key (`data_pipeline.tokens.reader.document_keys`: a hash of dataset and index, the same
in every dataset or mixture that holds the document and independent of the run's seed) and the first
ones in that order are held out until their tokens fill `val_sequences` windows; documents an earlier stage
held out (mid-training's parent, `inherited`) stay held out when this stream holds them. Every window that reads
any token of any occurrence of a held-out document is left out of training, so no held-out token is ever
a training input or target. Validation reads the windows over each held-out document's first occurrence
and scores only the targets inside held-out documents; the tokens around them are context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.config import ConfigError
from data_pipeline.tokens.reader import Occurrences


@dataclass(frozen=True)
class HeldOut:
    windows: np.ndarray  # sorted windows left out of training (int64)
    eval_windows: np.ndarray  # sorted windows read for validation
    starts: np.ndarray  # stream ranges [start, end) of the held-out documents' first occurrences, by start
    ends: np.ndarray
    sources: list[str]  # source of each range
    seq_len: int
    keys: np.ndarray  # uint64 keys of the held-out documents (new and inherited), sorted

    @property
    def n_documents(self) -> int:
        return len(self.starts)

    def scored(self, window: int) -> np.ndarray:
        """For each of window `window`'s L targets: the index of its held-out range, or -1 if not scored."""
        positions = window * self.seq_len + 1 + np.arange(self.seq_len, dtype=np.int64)
        idx = np.searchsorted(self.starts, positions, side="right") - 1
        inside = (idx >= 0) & (positions < self.ends[np.maximum(idx, 0)])
        return np.where(inside, idx, -1)

    def describe(self) -> dict:
        """What the training manifest records: the excluded windows and the held-out documents' ranges."""
        return {"held_out": self.windows.tolist(),
                "held_out_documents": [[int(s), int(e)] for s, e in zip(self.starts, self.ends, strict=True)],
                "held_out_keys": [f"{int(k):016x}" for k in self.keys]}


def parse_keys(values: list[str]) -> np.ndarray:
    """Keys as a training manifest records them (16 hex digits) back to uint64."""
    return np.array(sorted(int(v, 16) for v in values), dtype=np.uint64)


def touched_windows(starts: np.ndarray, ends: np.ndarray, seq_len: int, n_windows: int) -> np.ndarray:
    """Sorted windows that read any token of the ranges [start, end): window w reads tokens [wL, wL+L]."""
    first = np.maximum(0, -(-starts // seq_len) - 1)
    last = np.minimum(n_windows - 1, (ends - 1) // seq_len)
    keep = first <= last
    marks = np.zeros(n_windows + 1, dtype=np.int64)
    np.add.at(marks, first[keep], 1)
    np.add.at(marks, last[keep] + 1, -1)
    return np.flatnonzero(np.cumsum(marks[:-1]) > 0).astype(np.int64)


def hold_out(occurrences: Occurrences, seq_len: int, n_windows: int, val_sequences: int,
             source_of: Callable[[int], str], inherited: np.ndarray | None = None) -> HeldOut:
    """Hold out the first documents in key order whose tokens fill `val_sequences` windows, and the
    `inherited` keys present in the stream. `source_of(token)` names the source of the document holding
    stream token `token`."""
    keys, first = np.unique(occurrences.key, return_index=True)  # keys ascending: the hold-out order
    picked = np.zeros(len(keys), dtype=bool)
    if val_sequences:
        covered = np.cumsum(occurrences.length[first])
        wanted = val_sequences * seq_len
        n_docs = int(np.searchsorted(covered, wanted)) + 1
        if n_docs >= len(keys):
            raise ConfigError(f"data.val_sequences={val_sequences}: holding out {wanted} tokens would take every "
                              f"document of the stream ({len(keys)} documents, {int(covered[-1])} tokens)")
        picked[:n_docs] = True
    if inherited is not None and len(inherited):
        picked |= np.isin(keys, inherited)
    empty = np.zeros(0, dtype=np.int64)
    if not picked.any():
        return HeldOut(empty, empty, empty, empty, [], seq_len, np.zeros(0, dtype=np.uint64))
    chosen = np.isin(occurrences.key, keys[picked])
    starts, ends = occurrences.start[chosen], occurrences.start[chosen] + occurrences.length[chosen]
    windows = touched_windows(starts, ends, seq_len, n_windows)
    if len(windows) >= n_windows:
        raise ConfigError(f"data.val_sequences={val_sequences}: the held-out documents touch all {n_windows} "
                          "windows of the stream, leaving nothing to train on")
    firsts = np.sort(first[picked])
    first_starts = occurrences.start[firsts]
    first_ends = first_starts + occurrences.length[firsts]
    eval_windows = touched_windows(first_starts, first_ends, seq_len, n_windows)
    return HeldOut(windows, eval_windows, first_starts, first_ends, [source_of(int(s)) for s in first_starts],
                   seq_len, keys[picked])
