"""Held-out documents never reach training, even when a mixture repeats them, and are scored on their own tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError, RunConfig
from data_pipeline.mixture.mix import MixConfig
from data_pipeline.mixture.mix import run as mix
from data_pipeline.tokens.reader import open_tokens
from pretrain.data import DataLoader
from pretrain.dataset import TrainingData
from pretrain.held_out import touched_windows
from tests.pretrain.fixtures import build_token_dataset

SEQ = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_token_dataset(tmp_path_factory.mktemp("data"), max_modules=30)


@pytest.fixture(scope="module")
def mixture(dataset: Path, tmp_path_factory) -> Path:
    """Every document of the dataset three times over (three epochs)."""
    per_source = open_tokens(dataset).manifest["sources"]
    sources = {name: {"tokens": 3 * entry["tokens"]} for name, entry in per_source.items()}
    cfg = MixConfig(run=RunConfig(dir=str(tmp_path_factory.mktemp("mix") / "mix")), datasets=[str(dataset)],
                    target_tokens=sum(s["tokens"] for s in sources.values()), sources=sources)
    return mix(cfg)


def trained_token_positions(data: TrainingData, global_batch: int = 4) -> np.ndarray:
    loader = DataLoader(data.windows, global_batch, seed=0, held_out=data.held_out.windows)
    windows = np.concatenate([loader.global_windows(b) for b in range(loader.batches_per_epoch)])
    return (windows[:, None] * SEQ + np.arange(SEQ + 1)).reshape(-1)


@pytest.mark.parametrize("which", ["dataset", "mixture"])
def test_no_held_out_token_is_trained_on(which: str, request):
    tokens = open_tokens(request.getfixturevalue(which))
    data = TrainingData(tokens, SEQ, val_sequences=6)
    held = data.held_out
    assert held.n_documents >= 1 and len(held.eval_windows) >= 6
    occ = tokens.occurrences()
    held_keys = np.unique(occ.key[np.isin(occ.start, held.starts)])
    every = np.isin(occ.key, held_keys)  # every occurrence, including a mixture's repeats
    if which == "mixture":
        assert every.sum() > len(held_keys)  # the repeats exist, so the test means something
    held_positions = np.concatenate([np.arange(s, s + n) for s, n in zip(occ.start[every], occ.length[every],
                                                                         strict=True)])
    assert not np.isin(trained_token_positions(data), held_positions).any()
    scored = sum(int((held.scored(int(w)) >= 0).sum()) for w in held.eval_windows)
    first_lengths = (held.ends - held.starts).sum()
    assert scored >= 6 * SEQ and scored <= first_lengths  # only held-out tokens are scored, each once
    assert set(held.sources) <= set(tokens.manifest.get("sources") or {s: 0 for s in held.sources})


def test_the_same_documents_are_held_out_whatever_the_seed_or_container(dataset: Path, mixture: Path):
    """Keys depend on the documents only: the dataset and a mixture over it hold out the same documents."""
    a = TrainingData(open_tokens(dataset), SEQ, val_sequences=6)
    b = TrainingData(open_tokens(mixture), SEQ, val_sequences=6)

    def doc_ids(data: TrainingData) -> set[str]:
        return {data.tokens.locate(int(s)).id for s in data.held_out.starts}

    assert doc_ids(a) == doc_ids(b)


def test_validation_batches_score_the_same_targets_on_any_number_of_ranks(dataset: Path):
    data = TrainingData(open_tokens(dataset), SEQ, val_sequences=5)
    one = [b.scored for b in data.val_batches(0, 1, 2, with_docs=False)]
    three = [[b.scored for b in data.val_batches(r, 3, 2, with_docs=True)] for r in range(3)]
    assert len({len(batches) for batches in three}) == 1  # every rank runs the same number of forwards
    count = sum(int((s >= 0).sum()) for s in one)
    assert count == sum(int((s >= 0).sum()) for batches in three for s in batches)


def test_touched_windows_reads_edges_inclusively():
    # window w reads [wL, wL+L]: a document starting exactly at wL+L is read (as w's last target) by w.
    assert touched_windows(np.array([32]), np.array([33]), 32, 10).tolist() == [0, 1]
    assert touched_windows(np.array([33]), np.array([64]), 32, 10).tolist() == [1]
    assert touched_windows(np.array([0]), np.array([1]), 32, 10).tolist() == [0]


def test_holding_out_everything_is_refused(dataset: Path):
    n = open_tokens(dataset).n_tokens
    with pytest.raises(ConfigError, match="data.val_sequences"):
        TrainingData(open_tokens(dataset), SEQ, val_sequences=n // SEQ)


def test_inherited_documents_stay_held_out(dataset: Path):
    """Mid-training keeps its parent's validation documents out, on top of its own (fewer) picks."""
    tokens = open_tokens(dataset)
    parent = TrainingData(tokens, SEQ, val_sequences=6).held_out
    child = TrainingData(tokens, SEQ, val_sequences=1, inherited=parent.keys).held_out
    own = TrainingData(tokens, SEQ, val_sequences=1).held_out
    assert len(own.keys) < len(parent.keys)
    assert set(parent.keys.tolist()) <= set(child.keys.tolist())
    assert set(parent.windows.tolist()) <= set(child.windows.tolist())
    assert child.n_documents == len(set(parent.keys.tolist()) | set(own.keys.tolist()))
    nothing_new = TrainingData(tokens, SEQ, val_sequences=0, inherited=parent.keys).held_out
    assert np.array_equal(nothing_new.keys, parent.keys) and np.array_equal(nothing_new.windows, parent.windows)
