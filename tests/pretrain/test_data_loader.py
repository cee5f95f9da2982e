"""The loader: windows cover the stream exactly, order is fixed by seed and independent of world size."""

from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.tokens.reader import TokenSpan
from pretrain.data import DataLoader, TokenWindows


@pytest.fixture
def stream(tmp_path: Path) -> tuple[list[TokenSpan], np.ndarray]:
    """Two shard files; the second used from an offset, with document indexes."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 60000, size=1000).astype(np.uint16)
    b = rng.integers(0, 60000, size=700).astype(np.uint16)
    a.tofile(tmp_path / "a.bin")
    b.tofile(tmp_path / "b.bin")
    np.array([300, 1000], dtype=np.uint64).tofile(tmp_path / "a.idx")
    np.array([100, 450, 700], dtype=np.uint64).tofile(tmp_path / "b.idx")
    spans = [TokenSpan(tmp_path / "a.bin", "uint16", 0, 1000, tmp_path / "a.idx"),
             TokenSpan(tmp_path / "b.bin", "uint16", 100, 700, tmp_path / "b.idx")]
    return spans, np.concatenate([a, b[100:]]).astype(np.int64)


def test_windows_read_across_files_with_doc_ids(stream):
    spans, flat = stream
    windows = TokenWindows(spans, seq_len=64)
    assert windows.n_tokens == 1600 and windows.n_windows == (1600 - 1) // 64
    for w in range(windows.n_windows):
        tokens, docs = windows.read(w, with_docs=True)
        assert np.array_equal(tokens, flat[w * 64:w * 64 + 65])
    tokens, docs = windows.read(15, with_docs=True)  # stream tokens 960..1024: a's doc 1 then b's docs
    starts = 960 + np.flatnonzero(np.diff(docs)) + 1
    assert starts.tolist() == [1000]  # b's span starts at its offset 100, which is a document boundary
    tokens, docs = windows.read(20, with_docs=True)  # stream 1280..1345 = b tokens 380..445: one doc
    assert len(set(docs.tolist())) == 1


def test_order_is_independent_of_world_size_and_resumable(stream):
    windows = TokenWindows(stream[0], seq_len=32)
    one = DataLoader(windows, global_batch=4, seed=7)
    two = [DataLoader(windows, global_batch=4, seed=7, rank=r, world_size=2) for r in range(2)]
    for _ in range(30):  # crosses an epoch boundary (49 windows -> 12 batches per epoch)
        full = one.next_batch()
        parts = [loader.next_batch() for loader in two]
        assert torch.equal(full.inputs, torch.cat([p.inputs for p in parts]))
        assert torch.equal(full.targets[:, :-1], full.inputs[:, 1:])
    resumed = DataLoader(windows, global_batch=4, seed=7)
    resumed.load_state_dict(one.state_dict())
    assert torch.equal(resumed.next_batch().inputs, one.next_batch().inputs)


def test_each_epoch_covers_every_training_window_once(stream):
    windows = TokenWindows(stream[0], seq_len=32)
    held_out = np.array([0, 5, 9])
    loader = DataLoader(windows, global_batch=2, seed=1, held_out=held_out)
    seen = np.concatenate([loader.global_windows(b) for b in range(loader.batches_per_epoch)])
    assert len(set(seen.tolist())) == len(seen) and not set(held_out.tolist()) & set(seen.tolist())
    assert len(seen) == (windows.n_windows - 3) // 2 * 2
    other_seed = DataLoader(windows, global_batch=2, seed=2, held_out=held_out)
    assert not np.array_equal(other_seed.global_windows(0), loader.global_windows(0))


def test_bad_layouts_are_refused(stream):
    windows = TokenWindows(stream[0], seq_len=32)
    with pytest.raises(ValueError, match="not divisible by world size"):
        DataLoader(windows, global_batch=3, seed=0, world_size=2)
    with pytest.raises(ValueError, match="cannot fill"):
        DataLoader(windows, global_batch=1000, seed=0)
    loader = DataLoader(windows, global_batch=2, seed=0)
    with pytest.raises(ValueError, match="data order changed"):
        loader.load_state_dict({"batches_consumed": 3, "seed": 1, "global_batch": 2})
