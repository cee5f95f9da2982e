"""Mixtures: realised ratios and repetitions, determinism, the repetition cap, the reader."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from core.config import ConfigError, RunConfig
from data_pipeline.mixture.mix import MixConfig, run
from data_pipeline.tokens.reader import TokenDataset, TokenMixture, open_tokens
from tests.data_pipeline.tokens_fixtures import MIX, built, hashes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return built(tmp_path_factory)


def _config(out, data, **kw):
    return MixConfig(run=RunConfig(dir=str(out), seed=kw.pop("seed", 0)), datasets=[str(data["dataset"])],
                     **{**MIX, **kw})


def test_realised_ratios_and_repetitions_are_recorded(data):
    manifest = json.loads((data["mixture"] / "manifest.json").read_text())
    assert manifest["schema"] == "atom.mixture/1"
    longest = 20_000  # no fixture document is longer than this many tokens
    assert MIX["target_tokens"] <= manifest["n_tokens"] < MIX["target_tokens"] + 2 * longest
    for name, entry in manifest["sources"].items():
        assert entry["target_tokens"] <= entry["tokens"] < entry["target_tokens"] + longest
        assert entry["ratio"] == pytest.approx(MIX["sources"][name]["ratio"], abs=0.03)
        assert entry["repetitions"] == pytest.approx(entry["tokens"] / entry["available_tokens"])
        assert entry["repetitions"] <= entry["max_repetitions"] + longest / entry["available_tokens"]
    # the small source is repeated, the big one is not
    assert manifest["sources"]["stdlib-module-docs"]["max_epoch"] >= 1
    assert manifest["sources"]["stdlib-api-docs"]["repetitions"] < 1.0


def test_documents_repeat_only_after_a_full_pass_and_sources_interleave(data):
    mx = TokenMixture(data["mixture"])
    seq = np.asarray(mx.sequence)
    for epoch in range(int(seq["epoch"].max()) + 1):
        docs = seq["doc"][seq["epoch"] == epoch]
        assert len(np.unique(docs)) == len(docs)  # no repeat within a pass
    sources = [mx.locate(int(e) - 1).source for e in seq["end"][: len(seq) // 4]]
    assert len(set(sources)) == 2  # both sources already in the first quarter


def test_mixture_reader_gives_the_dataset_tokens(data):
    mx = open_tokens(data["mixture"])
    ds = TokenDataset(data["dataset"])
    assert isinstance(mx, TokenMixture)
    spans = mx.spans()
    assert sum(s.n_tokens for s in spans) == mx.n_tokens
    stream = np.concatenate([np.fromfile(s.path, dtype="<u2")[s.start:s.end] for s in spans])
    assert np.array_equal(stream, mx.read(0, mx.n_tokens))
    rng = np.random.default_rng(1)
    for t in rng.integers(0, mx.n_tokens, 100).tolist():
        ref = mx.locate(t)
        assert ref.mixture_start <= t < ref.mixture_start + (ref.token_end - ref.token_start)
        offset = t - ref.mixture_start
        assert stream[t] == ds.read(ref.token_start + offset, 1)[0]


def test_rebuild_is_identical_and_seed_changes_order(data, tmp_path):
    # same relative layout (the manifest records the dataset's path relative to the mixture)
    again = data["base"] / "mixture-rebuilt"
    assert hashes(run(_config(again, data))) == hashes(data["mixture"])
    shutil.rmtree(again)
    other = run(_config(tmp_path / "seed1", data, seed=1))
    a = np.load(data["mixture"] / "sequence.npy")
    b = np.load(other / "sequence.npy")
    assert not np.array_equal(a["doc"], b["doc"])


def test_cap_exceeded_is_an_error_before_writing(data, tmp_path):
    out = tmp_path / "capped"
    with pytest.raises(ConfigError, match=r"stdlib-module-docs.*passes.*repetition cap of 2"):
        run(_config(out, data, max_repetitions=2.0, target_tokens=400_000,
                    sources={"stdlib-api-docs": {"ratio": 0.5}, "stdlib-module-docs": {"ratio": 0.5}}))
    assert not out.exists()


def test_per_source_cap_unknown_source_and_bad_ratios(data, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="repetition cap of 1.0"):
        run(_config(out, data, sources={"stdlib-api-docs": {"ratio": 0.75},
                                        "stdlib-module-docs": {"ratio": 0.25, "max_repetitions": 1.0}}))
    with pytest.raises(ConfigError, match="'wikipedia' has no documents"):
        run(_config(out, data, sources={"stdlib-api-docs": {"ratio": 0.5}, "wikipedia": {"ratio": 0.5}}))
    with pytest.raises(ValidationError, match="ratios must sum to 1"):  # refused when the config is loaded
        _config(out, data, sources={"stdlib-api-docs": {"ratio": 0.5}, "stdlib-module-docs": {"ratio": 0.2}})
    assert not out.exists()
    # absolute token targets work too
    got = run(_config(tmp_path / "abs", data, target_tokens=50_000,
                      sources={"stdlib-api-docs": {"tokens": 40_000}, "stdlib-module-docs": {"tokens": 10_000}}))
    sources = json.loads((got / "manifest.json").read_text())["sources"]
    assert sources["stdlib-module-docs"]["tokens"] >= 10_000


def test_spans_merge_contiguous_pieces_like_a_walk_over_the_sequence(data):
    """The vectorised span index equals the per-document walk it replaced (same spans, same merges)."""
    from data_pipeline.tokens.reader import TokenSpan

    mixture = TokenMixture(data["mixture"])
    walked: list[TokenSpan] = []
    for rec in mixture.sequence:
        shard = mixture.datasets[rec["dataset"]].shards[rec["shard"]]
        start, end = int(rec["start"]), int(rec["start"]) + int(rec["length"])
        if walked and walked[-1].path == shard.path and walked[-1].end == start:
            walked[-1] = TokenSpan(shard.path, mixture.dtype, walked[-1].start, end, shard.index_path)
        else:
            walked.append(TokenSpan(shard.path, mixture.dtype, start, end, shard.index_path))
    assert mixture.spans() == walked
    assert sum(s.n_tokens for s in walked) == mixture.n_tokens
