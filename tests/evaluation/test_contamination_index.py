"""The benchmarks' n-gram index: what it matches, and its per-machine cache."""

from __future__ import annotations

import numpy as np

from evaluation.catalog import get_task
from evaluation.contamination import EvalText, NgramIndex, benchmark_index, words
from evaluation.instances import task_items


def test_first_owner_wins_and_every_owner_is_found():
    index = NgramIndex([EvalText("A", "1", "one two three four"), EvalText("B", "2", "three four five six")], 3)
    assert index.first_hit(words("x one two three y")) == ("A", "1", 1)
    assert index.owners_hit(words("one two three four five six")) == [("A", "1"), ("B", "2")]
    assert index.first_hit(words("two three five")) is None and index.owners_hit(["short"]) == []
    assert NgramIndex([], 3).first_hit(words("one two three")) is None


def test_benchmark_index_is_built_once_and_read_back_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_CACHE_DIR", str(tmp_path))
    built = benchmark_index(12)
    (saved,) = (tmp_path / "decontamination").iterdir()
    assert saved.name.startswith("benchmarks-12gram-") and (saved / "hashes.npy").is_file()
    loaded = benchmark_index(12)
    assert isinstance(loaded.hashes, np.memmap) and np.array_equal(loaded.hashes, built.hashes)
    assert np.array_equal(loaded.owner_of, built.owner_of) and loaded.owners == built.owners
    question = task_items(get_task("gsm8k:cot_8shot"), [], limit=1)[0].text
    assert loaded.first_hit(words(f"Posted on a forum: {question}"))[:2] == ("GSM8K", "0")
    assert len(list((tmp_path / "decontamination").iterdir())) == 1  # read, not rebuilt
    benchmark_index(8)
    assert len(list((tmp_path / "decontamination").iterdir())) == 2  # another n, another index
